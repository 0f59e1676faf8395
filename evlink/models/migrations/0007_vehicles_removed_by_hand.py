from tortoise import migrations
from tortoise.migrations import operations as ops
from tortoise import fields

class Migration(migrations.Migration):
    dependencies = [('evlink', '0006_simulator_cars')]

    initial = False

    operations = [
        ops.AddField(
            model_name='Vehicle',
            name='removed_at',
            field=fields.DatetimeField(null=True, auto_now=False, auto_now_add=False),
        ),
    ]

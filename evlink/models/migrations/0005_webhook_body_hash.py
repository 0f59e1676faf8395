from tortoise import migrations
from tortoise.migrations import operations as ops
from tortoise import fields

class Migration(migrations.Migration):
    dependencies = [('evlink', '0004_one_pending_command_per_vehicle')]

    initial = False

    operations = [
        ops.AddField(
            model_name='WebhookDelivery',
            name='body_sha256',
            field=fields.CharField(null=True, unique=True, max_length=64),
        ),
    ]

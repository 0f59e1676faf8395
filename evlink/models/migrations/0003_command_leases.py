from tortoise import migrations
from tortoise.migrations import operations as ops
from tortoise import fields

class Migration(migrations.Migration):
    dependencies = [('evlink', '0002_enode_links_and_webhook_deliveries')]

    initial = False

    operations = [
        ops.AddField(
            model_name='ChargingCommand',
            name='lease_expires_at',
            field=fields.DatetimeField(null=True, auto_now=False, auto_now_add=False),
        ),
        ops.AddField(
            model_name='ChargingCommand',
            name='lease_owner',
            field=fields.CharField(null=True, db_index=True, max_length=128),
        ),
    ]

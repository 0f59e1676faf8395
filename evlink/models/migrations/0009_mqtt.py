from tortoise import migrations
from tortoise.migrations import operations as ops
from tortoise.fields.base import OnDelete
from tortoise import fields

class Migration(migrations.Migration):
    dependencies = [('evlink', '0008_charging_sessions')]

    initial = False

    operations = [
        ops.CreateModel(
            name='MqttLease',
            fields=[
                ('name', fields.CharField(primary_key=True, unique=True, db_index=True, max_length=32)),
                ('owner', fields.CharField(null=True, max_length=128)),
                ('expires_at', fields.DatetimeField(null=True, auto_now=False, auto_now_add=False)),
            ],
            options={'table': 'mqtt_leases', 'app': 'evlink', 'pk_attr': 'name', 'table_description': 'Which instance publishes state to the broker, until when (compare-and-set).'},
            bases=['Model'],
        ),
        ops.CreateModel(
            name='MqttUser',
            fields=[
                ('user', fields.OneToOneField('evlink.User', source_field='user_id', primary_key=True, db_index=True, db_constraint=True, to_field='id', related_name='mqtt', on_delete=OnDelete.CASCADE)),
                ('topic_id', fields.CharField(unique=True, max_length=32)),
                ('enabled', fields.BooleanField(default=True)),
                ('created_at', fields.DatetimeField(auto_now=False, auto_now_add=True)),
            ],
            options={'table': 'mqtt_users', 'app': 'evlink', 'pk_attr': 'user_id', 'table_description': 'A user whose cars evlink publishes over MQTT, under a random topic id.'},
            bases=['Model'],
        ),
    ]

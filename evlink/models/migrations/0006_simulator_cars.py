from tortoise import migrations
from tortoise.migrations import operations as ops
import functools
from json import dumps, loads
from tortoise.fields.base import OnDelete
from tortoise import fields

class Migration(migrations.Migration):
    dependencies = [('evlink', '0005_webhook_body_hash')]

    initial = False

    operations = [
        ops.CreateModel(
            name='SimulatorCar',
            fields=[
                ('id', fields.CharField(primary_key=True, unique=True, db_index=True, max_length=128)),
                ('state', fields.JSONField(encoder=functools.partial(dumps, separators=(',', ':')), decoder=loads)),
                ('version', fields.IntField(default=0)),
                ('step_owner', fields.CharField(null=True, db_index=True, max_length=128)),
                ('step_until', fields.DatetimeField(null=True, auto_now=False, auto_now_add=False)),
                ('created_at', fields.DatetimeField(auto_now=False, auto_now_add=True)),
            ],
            options={'table': 'simulator_cars', 'app': 'evlink', 'pk_attr': 'id'},
            bases=['Model'],
        ),
        ops.CreateModel(
            name='SimulatorAction',
            fields=[
                ('id', fields.CharField(primary_key=True, unique=True, db_index=True, max_length=64)),
                ('car', fields.ForeignKeyField('evlink.SimulatorCar', source_field='car_id', db_constraint=True, to_field='id', related_name='actions', on_delete=OnDelete.CASCADE)),
            ],
            options={'table': 'simulator_actions', 'app': 'evlink', 'pk_attr': 'id', 'table_description': 'Which car a simulated charge action belongs to (get_action, cancel_action).'},
            bases=['Model'],
        ),
    ]

from tortoise import migrations
from tortoise.migrations import operations as ops
import functools
from evlink.models.commands import CommandState
from evlink.models.users import Tier
from evlink.domain import ChargingAction
from json import dumps, loads
from tortoise.fields.base import OnDelete
from uuid import uuid4
from tortoise import fields

class Migration(migrations.Migration):
    initial = True

    operations = [
        ops.CreateModel(
            name='User',
            fields=[
                ('id', fields.IntField(generated=True, primary_key=True, unique=True, db_index=True)),
                ('email', fields.CharField(unique=True, max_length=254)),
                ('tier', fields.CharEnumField(default=Tier.FREE, description='FREE: FREE\nBASIC: BASIC\nPRO: PRO', enum_type=Tier, max_length=8)),
                ('created_at', fields.DatetimeField(auto_now=False, auto_now_add=True)),
            ],
            options={'table': 'users', 'app': 'evlink', 'pk_attr': 'id'},
            bases=['Model'],
        ),
        ops.CreateModel(
            name='ApiKey',
            fields=[
                ('id', fields.IntField(generated=True, primary_key=True, unique=True, db_index=True)),
                ('user', fields.ForeignKeyField('evlink.User', source_field='user_id', db_constraint=True, to_field='id', related_name='api_keys', on_delete=OnDelete.CASCADE)),
                ('name', fields.CharField(default='', max_length=100)),
                ('prefix', fields.CharField(db_index=True, max_length=16)),
                ('hash', fields.CharField(unique=True, max_length=64)),
                ('created_at', fields.DatetimeField(auto_now=False, auto_now_add=True)),
                ('last_used_at', fields.DatetimeField(null=True, auto_now=False, auto_now_add=False)),
                ('revoked_at', fields.DatetimeField(null=True, auto_now=False, auto_now_add=False)),
            ],
            options={'table': 'api_keys', 'app': 'evlink', 'pk_attr': 'id'},
            bases=['Model'],
        ),
        ops.CreateModel(
            name='Vehicle',
            fields=[
                ('id', fields.UUIDField(primary_key=True, default=uuid4, unique=True, db_index=True)),
                ('user', fields.ForeignKeyField('evlink.User', source_field='user_id', db_constraint=True, to_field='id', related_name='vehicles', on_delete=OnDelete.CASCADE)),
                ('provider', fields.CharField(max_length=32)),
                ('provider_vehicle_id', fields.CharField(null=True, db_index=True, max_length=128)),
                ('provider_user_id', fields.CharField(null=True, max_length=128)),
                ('name', fields.CharField(null=True, max_length=100)),
                ('vendor', fields.CharField(null=True, max_length=64)),
                ('information', fields.JSONField(default=dict, encoder=functools.partial(dumps, separators=(',', ':')), decoder=loads)),
                ('capabilities', fields.JSONField(default=dict, encoder=functools.partial(dumps, separators=(',', ':')), decoder=loads)),
                ('smart_charging_policy', fields.JSONField(default=dict, encoder=functools.partial(dumps, separators=(',', ':')), decoder=loads)),
                ('location', fields.JSONField(null=True, encoder=functools.partial(dumps, separators=(',', ':')), decoder=loads)),
                ('odometer', fields.JSONField(null=True, encoder=functools.partial(dumps, separators=(',', ':')), decoder=loads)),
                ('last_seen', fields.DatetimeField(null=True, auto_now=False, auto_now_add=False)),
                ('is_reachable', fields.BooleanField(null=True)),
                ('refreshed_at', fields.DatetimeField(null=True, auto_now=False, auto_now_add=False)),
                ('created_at', fields.DatetimeField(auto_now=False, auto_now_add=True)),
                ('deleted_at', fields.DatetimeField(null=True, auto_now=False, auto_now_add=False)),
            ],
            options={'table': 'vehicles', 'app': 'evlink', 'unique_together': (('provider', 'provider_vehicle_id'),), 'pk_attr': 'id'},
            bases=['Model'],
        ),
        ops.CreateModel(
            name='ChargeState',
            fields=[
                ('vehicle', fields.OneToOneField('evlink.Vehicle', source_field='vehicle_id', primary_key=True, db_index=True, db_constraint=True, to_field='id', related_name='charge_state', on_delete=OnDelete.CASCADE)),
                ('power_delivery_state', fields.CharField(default='UNKNOWN', max_length=64)),
                ('battery_level', fields.IntField(null=True)),
                ('range', fields.FloatField(null=True)),
                ('is_plugged_in', fields.BooleanField(null=True)),
                ('is_charging', fields.BooleanField(null=True)),
                ('is_fully_charged', fields.BooleanField(null=True)),
                ('battery_capacity', fields.FloatField(null=True)),
                ('charge_limit', fields.IntField(null=True)),
                ('charge_rate', fields.FloatField(null=True)),
                ('charge_time_remaining', fields.IntField(null=True)),
                ('max_current', fields.FloatField(null=True)),
                ('plugged_in_charger_id', fields.CharField(null=True, max_length=128)),
                ('last_updated', fields.DatetimeField(null=True, auto_now=False, auto_now_add=False)),
            ],
            options={'table': 'charge_states', 'app': 'evlink', 'pk_attr': 'vehicle_id'},
            bases=['Model'],
        ),
        ops.CreateModel(
            name='ChargingCommand',
            fields=[
                ('id', fields.UUIDField(primary_key=True, default=uuid4, unique=True, db_index=True)),
                ('vehicle', fields.ForeignKeyField('evlink.Vehicle', source_field='vehicle_id', db_constraint=True, to_field='id', related_name='charging_commands', on_delete=OnDelete.CASCADE)),
                ('user', fields.ForeignKeyField('evlink.User', source_field='user_id', db_constraint=True, to_field='id', related_name='charging_commands', on_delete=OnDelete.CASCADE)),
                ('action', fields.CharEnumField(description='START: START\nSTOP: STOP', enum_type=ChargingAction, max_length=8)),
                ('state', fields.CharEnumField(default=CommandState.PENDING, description='PENDING: PENDING\nCONFIRMED: CONFIRMED\nFAILED: FAILED\nCANCELLED: CANCELLED\nTIMED_OUT: TIMED_OUT', enum_type=CommandState, max_length=16)),
                ('attempts', fields.IntField(default=0)),
                ('provider_action_id', fields.CharField(null=True, db_index=True, max_length=128)),
                ('provider_action', fields.JSONField(null=True, encoder=functools.partial(dumps, separators=(',', ':')), decoder=loads)),
                ('idempotency_key', fields.CharField(null=True, max_length=255)),
                ('failure_reason', fields.TextField(null=True, unique=False)),
                ('next_attempt_at', fields.DatetimeField(null=True, auto_now=False, auto_now_add=False)),
                ('deadline_at', fields.DatetimeField(auto_now=False, auto_now_add=False)),
                ('created_at', fields.DatetimeField(auto_now=False, auto_now_add=True)),
                ('updated_at', fields.DatetimeField(auto_now=True, auto_now_add=False)),
                ('completed_at', fields.DatetimeField(null=True, auto_now=False, auto_now_add=False)),
            ],
            options={'table': 'charging_commands', 'app': 'evlink', 'unique_together': (('user', 'idempotency_key'),), 'pk_attr': 'id'},
            bases=['Model'],
        ),
    ]

from tortoise import migrations
from tortoise.migrations import operations as ops
import functools
from evlink.models.sessions import EndReason, StartedBy
from json import dumps, loads
from tortoise.fields.base import OnDelete
from uuid import uuid4
from tortoise import fields


class Migration(migrations.Migration):
    """Charging sessions, their samples and users' tariffs.

    At most one open session per vehicle (a partial unique index, as 0004 does for
    pending commands): two instances seeing a car start charging open one.
    """

    dependencies = [('evlink', '0007_vehicles_removed_by_hand')]

    initial = False

    operations = [
        ops.CreateModel(
            name='ChargingSession',
            fields=[
                ('id', fields.UUIDField(primary_key=True, default=uuid4, unique=True, db_index=True)),
                ('vehicle', fields.ForeignKeyField('evlink.Vehicle', source_field='vehicle_id', db_constraint=True, to_field='id', related_name='charging_sessions', on_delete=OnDelete.CASCADE)),
                ('started_at', fields.DatetimeField(auto_now=False, auto_now_add=False)),
                ('ended_at', fields.DatetimeField(null=True, auto_now=False, auto_now_add=False)),
                ('end_reason', fields.CharEnumField(null=True, description='STOPPED: STOPPED\nCOMPLETE: COMPLETE\nUNPLUGGED: UNPLUGGED\nUNREACHABLE: UNREACHABLE', enum_type=EndReason, max_length=16)),
                ('started_by', fields.CharEnumField(default=StartedBy.OTHER, description='EVLINK: EVLINK\nOTHER: OTHER', enum_type=StartedBy, max_length=8)),
                ('command_id', fields.UUIDField(null=True)),
                ('battery_start', fields.IntField(null=True)),
                ('battery_end', fields.IntField(null=True)),
                ('range_start', fields.FloatField(null=True)),
                ('range_end', fields.FloatField(null=True)),
                ('battery_capacity', fields.FloatField(null=True)),
                ('energy_from_power', fields.FloatField(default=0.0)),
                ('cost_from_power', fields.FloatField(null=True)),
                ('peak_power', fields.FloatField(null=True)),
                ('sample_count', fields.IntField(default=0)),
                ('rated_sample_count', fields.IntField(default=0)),
                ('last_sample_at', fields.DatetimeField(auto_now=False, auto_now_add=False)),
                ('last_rate', fields.FloatField(null=True)),
                ('last_recorded_at', fields.DatetimeField(auto_now=False, auto_now_add=False)),
                ('tariff', fields.JSONField(null=True, encoder=functools.partial(dumps, separators=(',', ':')), decoder=loads)),
                ('location', fields.JSONField(null=True, encoder=functools.partial(dumps, separators=(',', ':')), decoder=loads)),
                ('created_at', fields.DatetimeField(auto_now=False, auto_now_add=True)),
            ],
            options={'table': 'charging_sessions', 'app': 'evlink', 'indexes': [('vehicle_id', 'started_at')], 'pk_attr': 'id'},
            bases=['Model'],
        ),
        ops.CreateModel(
            name='ChargingSample',
            fields=[
                ('id', fields.BigIntField(generated=True, primary_key=True, unique=True, db_index=True)),
                ('session', fields.ForeignKeyField('evlink.ChargingSession', source_field='session_id', db_constraint=True, to_field='id', related_name='samples', on_delete=OnDelete.CASCADE)),
                ('at', fields.DatetimeField(auto_now=False, auto_now_add=False)),
                ('battery_level', fields.IntField(null=True)),
                ('range', fields.FloatField(null=True)),
                ('charge_rate', fields.FloatField(null=True)),
                ('is_plugged_in', fields.BooleanField(null=True)),
                ('is_charging', fields.BooleanField(null=True)),
            ],
            options={'table': 'charging_samples', 'app': 'evlink', 'unique_together': (('session', 'at'),), 'pk_attr': 'id'},
            bases=['Model'],
        ),
        ops.CreateModel(
            name='UserTariff',
            fields=[
                ('user', fields.OneToOneField('evlink.User', source_field='user_id', primary_key=True, db_index=True, db_constraint=True, to_field='id', related_name='tariff', on_delete=OnDelete.CASCADE)),
                ('price_per_kwh', fields.FloatField()),
                ('currency', fields.CharField(max_length=3)),
                ('periods', fields.JSONField(default=list, encoder=functools.partial(dumps, separators=(',', ':')), decoder=loads)),
                ('time_zone', fields.CharField(default='UTC', max_length=64)),
                ('updated_at', fields.DatetimeField(auto_now=True, auto_now_add=False)),
            ],
            options={'table': 'tariffs', 'app': 'evlink', 'pk_attr': 'user_id'},
            bases=['Model'],
        ),
        # Tortoise's autodetector sets a one-to-one primary key's pk_attr afterwards.
        ops.AlterModelOptions(
            name='UserTariff',
            options={'table': 'tariffs', 'app': 'evlink', 'pk_attr': 'user_id'},
        ),
        ops.RunSQL(
            "CREATE UNIQUE INDEX uq_charging_sessions_one_open "
            "ON charging_sessions (vehicle_id) WHERE ended_at IS NULL",
            reverse_sql="DROP INDEX uq_charging_sessions_one_open",
        ),
    ]

from tortoise import migrations
from tortoise.migrations import operations as ops


class Migration(migrations.Migration):
    """At most one PENDING command per vehicle, guaranteed by the database itself.

    A partial unique index (SQLite and PostgreSQL both have them): two instances
    taking a request for one car at the same moment cannot both create one.
    """

    dependencies = [("evlink", "0003_command_leases")]

    initial = False

    operations = [
        ops.RunSQL(
            "CREATE UNIQUE INDEX uq_charging_commands_one_pending "
            "ON charging_commands (vehicle_id) WHERE state = 'PENDING'",
            reverse_sql="DROP INDEX uq_charging_commands_one_pending",
        ),
    ]

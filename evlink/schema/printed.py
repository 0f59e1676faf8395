"""``python -m evlink.schema.printed > schema.graphql`` writes the schema as served."""

from __future__ import annotations

import sys

from evlink.schema import build_schema


def printed_schema() -> str:
    return build_schema().as_str() + "\n"


if __name__ == "__main__":
    sys.stdout.write(printed_schema())

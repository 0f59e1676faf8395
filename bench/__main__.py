"""`make bench`: runs every benchmark under bench/."""

from __future__ import annotations

import sys


def main() -> int:
    sys.stdout.write(
        "No benchmarks yet: the REST/GraphQL throughput and subscription benchmarks "
        "come with issue #10.\n"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

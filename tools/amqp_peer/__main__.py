"""``python -m tools.amqp_peer`` is ``python -m cerbistream_spool.testing``."""

import sys

from cerbistream_spool.testing.cli import apply_command, main, record_to_json

__all__ = ["apply_command", "main", "record_to_json"]

if __name__ == "__main__":
    sys.exit(main())

"""``python -m cerbistream_spool.testing``: run the local AMQP peer (see cli.py)."""

import sys

from cerbistream_spool.testing.cli import main

if __name__ == "__main__":
    sys.exit(main())

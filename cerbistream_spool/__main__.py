"""``python -m cerbistream_spool``: the ``cerbispool`` command line."""

from cerbistream_spool.cli import main

if __name__ == "__main__":
    main(prog_name="cerbispool")

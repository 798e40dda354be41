"""`cerbispool`: the command line (CONTRACT §5). Commands only print library results."""

from __future__ import annotations

import json
import os
import sys

import click

from cerbistream_spool.spool.chain import ENV_KEY
from cerbistream_spool.verify import verify as verify_spool

__all__ = ["main"]


@click.group()
@click.version_option(package_name="cerbistream_spool")
def main() -> None:
    """Spool governance log events to disk and ship them to Azure Service Bus."""


@main.command("verify")
@click.argument("spool_dir", type=click.Path(file_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.option(
    "--key-env",
    default=ENV_KEY,
    show_default=True,
    help="Environment variable holding the HMAC signing key.",
)
def verify_cmd(spool_dir: str, as_json: bool, key_env: str) -> None:
    """Check framing, checksums, chain, sequence, cursor and clean-close tail."""
    if not os.path.isdir(spool_dir):
        raise click.UsageError(f"{spool_dir} is not a directory")
    raw_key = os.environ.get(key_env)
    report = verify_spool(spool_dir, key=raw_key.encode("utf-8") if raw_key else None)
    if as_json:
        click.echo(json.dumps(report.to_dict()))
    else:
        state = "intact" if report.valid else f"{len(report.problems)} problem(s)"
        click.echo(
            f"{spool_dir}: {state}; {report.records} records in {report.segments} segments,"
            f" {report.pending} pending, signatures {report.signatures}"
        )
        for p in report.problems:
            click.echo(f"  {p.kind}: lane {p.lane} {p.segment} @{p.offset} seq {p.seq}: {p.detail}")
        for gap in report.gaps:
            click.echo(
                f"  gap (lane {gap['lane']} seq {gap['seq']}): {gap.get('reason')}"
                f" {gap.get('count')} record(s) {gap.get('first_seq')}..{gap.get('last_seq')}"
            )
        for name in report.quarantined:
            click.echo(f"  quarantined: {name}")
    sys.exit(0 if report.valid else 1)

"""loguru → SpoolHandler: loguru accepts a stdlib handler as a sink.

loguru hands the handler a LogRecord whose ``extra`` attribute holds the bound fields
(``logger.bind(...)`` and the keyword arguments of a call); the SpoolHandler governs them
as fields (docs/GOVERNANCE.md, field model). ``format="{message}"`` keeps loguru's own
prefix (time, level, location) out of the message: the event carries those already.
Offline: spools to ./spool-example, ships nothing.

    python examples/loguru_app.py
"""

from __future__ import annotations

from pathlib import Path

from loguru import logger

from cerbistream_spool import SpoolHandler

GOVERNANCE = Path(__file__).resolve().parent.parent / "cerbi_governance.json"


def main() -> None:
    handler = SpoolHandler(
        "./spool-example",
        tenant_id="example-tenant",
        app_name="loguru-example",
        governance_config_path=str(GOVERNANCE),
        drain=False,  # spool only; ship later with `cerbispool drain`
    )
    sink = logger.add(handler, format="{message}", level="INFO")
    log = logger.bind(user_id=42)
    log.info("user logged in", email="bob@example.com")  # email: Redact
    log.bind(password="hunter2").warning("password reset")  # noqa: S106 - Block keeps it off disk
    logger.remove(sink)  # loguru closes the handler: flushed, close marker written
    stats = handler.stats()
    print(f"loguru example: {stats['accepted']} events spooled to ./spool-example")


if __name__ == "__main__":
    main()

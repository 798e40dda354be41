"""structlog → SpoolHandler, the way structlog documents its stdlib integration.

structlog renders nothing itself: ``ProcessorFormatter.wrap_for_formatter`` hands the
event dict to stdlib logging, and the SpoolHandler governs its keys like any extras
(docs/GOVERNANCE.md, field model). Offline: spools to ./spool-example, ships nothing.

    python examples/structlog_app.py
"""

from __future__ import annotations

import logging
from pathlib import Path

import structlog

from cerbistream_spool import SpoolHandler

GOVERNANCE = Path(__file__).resolve().parent.parent / "cerbi_governance.json"


def main() -> None:
    handler = SpoolHandler(
        "./spool-example",
        tenant_id="example-tenant",
        app_name="structlog-example",
        governance_config_path=str(GOVERNANCE),
        drain=False,  # spool only; ship later with `cerbispool drain`
    )
    # other handlers (a console, say) format with structlog's renderers; the SpoolHandler
    # reads the event dict itself
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(processors=[structlog.processors.JSONRenderer()])
    )
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    structlog.configure(
        processors=[
            structlog.stdlib.add_log_level,
            structlog.stdlib.add_logger_name,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
    )
    log = structlog.get_logger("structlog_app")
    log.info("user logged in", user_id=42, email="bob@example.com")  # email: Redact
    log.warning("password reset", user_id=42, password="hunter2")  # noqa: S106 - blocked
    handler.close()
    root.removeHandler(handler)
    stats = handler.stats()
    print(f"structlog example: {stats['accepted']} events spooled to ./spool-example")


if __name__ == "__main__":
    main()

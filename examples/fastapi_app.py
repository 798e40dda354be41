"""FastAPI on uvicorn: app logs and uvicorn's access log through SpoolHandler.

    python examples/fastapi_app.py

uvicorn takes a ``logging.config.dictConfig`` dict (``--log-config`` on the
command line, ``log_config=`` here); the one below sends the app's logger and
``uvicorn.access`` (one record per request) to the spool. The script serves the
app on a free 127.0.0.1 port, sends it one request with httpx and stops.
Offline (``drain=False``): the spool goes to ``./spool-example``; ship it with
``cerbispool drain ./spool-example``. The endpoint logs a password; governance
(``cerbi_governance.json``, rule SEC-001) blocks it before it reaches the disk.
Prints one summary line.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from pathlib import Path
from typing import Any, Dict

import httpx
import uvicorn
from fastapi import FastAPI, Request
from pydantic import BaseModel

from cerbistream_spool import SpoolHandler, set_correlation_id

GOVERNANCE = Path(__file__).resolve().parent.parent / "cerbi_governance.json"
SPOOL_DIR = "./spool-example"

LOG_CONFIG: Dict[str, Any] = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {
        "spool": {
            "class": "cerbistream_spool.SpoolHandler",
            "spool_dir": SPOOL_DIR,
            "tenant_id": "my-tenant",
            "app_name": "fastapi-app",
            "environment": "example",
            "governance_config_path": str(GOVERNANCE),
            "drain": False,  # offline; True ships to CERBISTREAM_SERVICEBUS_CONNECTION
        },
    },
    "loggers": {
        "shop": {"handlers": ["spool"], "level": "INFO"},
        "uvicorn.access": {"handlers": ["spool"], "level": "INFO", "propagate": False},
        "uvicorn.error": {"level": "WARNING"},
    },
}

app = FastAPI()
log = logging.getLogger("shop")


class Login(BaseModel):
    user: str
    password: str


@app.post("/login")
async def login(form: Login, request: Request) -> Dict[str, bool]:
    set_correlation_id(request.headers.get("x-request-id"))
    log.info("login attempt", extra={"user_id": form.user, "password": form.password})
    return {"ok": True}


async def serve_one_request() -> int:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))  # a free loopback port, held until uvicorn takes it
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_config=LOG_CONFIG, lifespan="off"))
    task = asyncio.ensure_future(server.serve(sockets=[sock]))
    for _ in range(200):  # up to 10 s
        if server.started or task.done():
            break
        await asyncio.sleep(0.05)
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            response = await client.post(
                "/login",
                json={"user": "alice", "password": "hunter2"},
                headers={"x-request-id": "req-1"},
            )
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 10)
        sock.close()
    return response.status_code


def main() -> int:
    status = asyncio.run(serve_one_request())
    [handler] = [h for h in log.handlers if isinstance(h, SpoolHandler)]
    stats = handler.stats()
    handler.close()
    print(
        f"fastapi_app: POST /login -> {status}; "
        f"accepted={stats['accepted']} pending={stats['pending_records']} spool={SPOOL_DIR}"
    )
    return 0 if status == 200 and stats["accepted"] == 2 else 1  # the app's record + access log


if __name__ == "__main__":
    raise SystemExit(main())

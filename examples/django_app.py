"""Django: SpoolHandler from the ``LOGGING`` setting, the way Django configures logging.

    python examples/django_app.py

Django hands ``settings.LOGGING`` to ``logging.config.dictConfig`` in
``django.setup()``; this is that, with a one-view URLconf and Django's test
client standing in for a real request. Offline (``drain=False``): the spool
goes to ``./spool-example``; ship it with ``cerbispool drain ./spool-example``.
The view logs a password; governance (``cerbi_governance.json``, rule
SEC-001) blocks it before it reaches the disk. Prints one summary line.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import django
from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.test import Client
from django.urls import path

from cerbistream_spool import SpoolHandler, set_correlation_id

GOVERNANCE = Path(__file__).resolve().parent.parent / "cerbi_governance.json"
SPOOL_DIR = "./spool-example"

# What goes in settings.py.
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {
        "spool": {
            "class": "cerbistream_spool.SpoolHandler",
            "spool_dir": SPOOL_DIR,
            "tenant_id": "my-tenant",
            "app_name": "django-app",
            "environment": "example",
            "governance_config_path": str(GOVERNANCE),
            "drain": False,  # offline; True ships to CERBISTREAM_SERVICEBUS_CONNECTION
        },
    },
    "loggers": {
        "shop": {"handlers": ["spool"], "level": "INFO"},
        "django.request": {"handlers": ["spool"], "level": "WARNING"},  # 4xx/5xx
    },
}

log = logging.getLogger("shop")


def login(request: HttpRequest) -> HttpResponse:
    set_correlation_id(request.headers.get("X-Request-Id"))
    form = json.loads(request.body)
    log.info("login attempt", extra={"user_id": form["user"], "password": form["password"]})
    return JsonResponse({"ok": True})


urlpatterns = [path("login", login)]


def main() -> int:
    settings.configure(
        DEBUG=False,
        ALLOWED_HOSTS=["testserver"],
        ROOT_URLCONF=__name__,
        MIDDLEWARE=[],
        INSTALLED_APPS=[],
        LOGGING_CONFIG="logging.config.dictConfig",  # Django's default, named for clarity
        LOGGING=LOGGING,
    )
    django.setup()  # configures logging from LOGGING, as manage.py and wsgi.py do
    response = Client().post(
        "/login",
        data=json.dumps({"user": "alice", "password": "hunter2"}),
        content_type="application/json",
        HTTP_X_REQUEST_ID="req-1",
    )
    [handler] = [h for h in log.handlers if isinstance(h, SpoolHandler)]
    stats = handler.stats()
    handler.close()
    print(
        f"django_app: POST /login -> {response.status_code}; "
        f"accepted={stats['accepted']} pending={stats['pending_records']} spool={SPOOL_DIR}"
    )
    return 0 if response.status_code == 200 and stats["accepted"] == 1 else 1


if __name__ == "__main__":
    raise SystemExit(main())

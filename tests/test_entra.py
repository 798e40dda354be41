"""Entra ID: a namespace and a token credential instead of a connection string.

The SDK's documented form, ``ServiceBusClient(fully_qualified_namespace,
credential)``, against the local peer: it answers the CBS put-token of a JWT
(what a credential's ``get_token`` returns) as it answers a SAS token. No
azure-identity network: credentials here are objects with ``get_token``, and
``DefaultAzureCredential`` is a stand-in module where the default is tested.

The fast tier keeps one SDK session (the handler with a token credential) and runs
the CLI's argument checks in-process (tests/clikit.py); the CLI's sign-in runs in
real processes are ``slow`` (CI runs them).
"""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
import time
import types
from pathlib import Path
from typing import Any, Dict, Iterator, List, Tuple

import pytest

pytest.importorskip("proton")
pytest.importorskip("azure.servicebus")

from azure.core.credentials import AccessToken
from clikit import invoke
from spoolkit import wait_until

from cerbistream_spool import SpoolHandler
from cerbistream_spool.diagnostics import Reporter
from cerbistream_spool.errors import SpoolConfigError
from tools.amqp_peer import LocalPeer

REPO = Path(__file__).resolve().parent.parent
CLI = [sys.executable, "-m", "cerbistream_spool"]
SCOPE = "https://servicebus.azure.net/"

# A stand-in azure.identity for the CLI's subprocess: DefaultAzureCredential hands out
# a JWT-shaped token and writes each scope it was asked for to $STUB_LOG.
STUB = """
import json, os, time
from azure.core.credentials import AccessToken

class DefaultAzureCredential:
    def get_token(self, *scopes, **kwargs):
        with open(os.environ["STUB_LOG"], "a") as fh:
            fh.write(json.dumps(scopes) + "\\n")
        return AccessToken("eyJhbGciOiJub25lIn0.eyJhdWQiOiJzYiJ9.", int(time.time()) + 3600)
"""


class TokenCredential:
    """What azure-identity's credentials are to the SDK: ``get_token(*scopes)``."""

    def __init__(self) -> None:
        self.scopes: List[Tuple[str, ...]] = []

    def get_token(self, *scopes: str, **_kwargs: Any) -> AccessToken:
        self.scopes.append(scopes)
        return AccessToken("eyJhbGciOiJub25lIn0.eyJhdWQiOiJzYiJ9.", int(time.time()) + 3600)


@pytest.fixture
def peer() -> Iterator[LocalPeer]:
    with LocalPeer.start() as running:
        yield running


@pytest.fixture(autouse=True)
def _no_connection_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CERBISTREAM_SERVICEBUS_CONNECTION", raising=False)


def namespace_of(peer: LocalPeer) -> str:
    return f"amqp://127.0.0.1:{peer.port}"  # plain AMQP on the peer's port


def log_to(handler: SpoolHandler, n: int) -> None:
    logger = logging.getLogger(f"entra.{id(handler)}")
    logger.propagate = False
    logger.handlers = [handler]
    logger.setLevel(logging.INFO)
    for i in range(n):
        logger.info("event %d", i)


def test_handler_ships_with_a_namespace_and_a_token_credential(
    spool_dir: str, peer: LocalPeer
) -> None:
    credential = TokenCredential()
    handler = SpoolHandler(
        spool_dir,
        tenant_id="t",
        app_name="a",
        fully_qualified_namespace=namespace_of(peer),
        credential=credential,
    )
    try:
        log_to(handler, 5)
        assert wait_until(lambda: handler.stats()["delivered"] == 5, timeout=20), handler.stats()
    finally:
        handler.close()
    assert credential.scopes, "the SDK never asked the credential for a token"
    assert all(scope[0].startswith(SCOPE) for scope in credential.scopes)
    assert peer.stats()["cbs_requests"] >= 1
    assert len(peer.accepted()) == 5


@pytest.mark.slow  # the fast tier: test_handler_ships_with_a_namespace_and_a_token_credential
def test_without_a_credential_the_handler_uses_default_azure_credential_made_once(
    spool_dir: str, peer: LocalPeer, monkeypatch: pytest.MonkeyPatch
) -> None:
    made: List[TokenCredential] = []

    def default_credential() -> TokenCredential:
        made.append(TokenCredential())
        return made[-1]

    identity = types.ModuleType("azure.identity")
    identity.DefaultAzureCredential = default_credential  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "azure.identity", identity)
    handler = SpoolHandler(
        spool_dir, tenant_id="t", app_name="a", fully_qualified_namespace=namespace_of(peer)
    )
    try:
        log_to(handler, 3)
        assert wait_until(lambda: handler.stats()["delivered"] == 3, timeout=20), handler.stats()
    finally:
        handler.close()
    assert len(made) == 1  # one credential (one token cache) for every reconnect
    assert made[0].scopes


def test_a_missing_identity_extra_is_one_clear_line_and_the_app_keeps_spooling(
    spool_dir: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "azure.identity", None)  # import fails: extra not installed
    stream = io.StringIO()
    handler = SpoolHandler(
        spool_dir,
        tenant_id="t",
        app_name="a",
        fully_qualified_namespace="example.servicebus.windows.net",
        reporter=Reporter(stream=stream),
    )
    try:
        log_to(handler, 2)
        assert handler.stats()["accepted"] == 2
        assert handler.stats()["pending_records"] == 2
    finally:
        handler.close()
    assert "pip install 'cerbistream_spool[identity]'" in stream.getvalue()


def test_connection_string_and_namespace_are_mutually_exclusive(spool_dir: str) -> None:
    with pytest.raises(SpoolConfigError, match="not both"):
        SpoolHandler(
            spool_dir,
            tenant_id="t",
            app_name="a",
            connection_string="Endpoint=sb://x/;SharedAccessKeyName=k;SharedAccessKey=v",
            fully_qualified_namespace="x.servicebus.windows.net",
        )
    with pytest.raises(SpoolConfigError, match="credential needs fully_qualified_namespace"):
        SpoolHandler(spool_dir, tenant_id="t", app_name="a", credential=TokenCredential())


def test_namespace_wins_over_the_connection_string_environment_variable(
    spool_dir: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CERBISTREAM_SERVICEBUS_CONNECTION", "Endpoint=sb://x/;SharedAccessKey=v")
    handler = SpoolHandler(
        spool_dir,
        tenant_id="t",
        app_name="a",
        fully_qualified_namespace="x.servicebus.windows.net",
        credential=TokenCredential(),
        drain=False,
    )
    handler.close()
    assert handler.connection_string is None


# ---------------------------------------------------------------------------
# cerbispool drain / verify --replay --namespace


def make_spool(spool_dir: str, n: int) -> None:
    handler = SpoolHandler(spool_dir, tenant_id="t", app_name="a", drain=False)
    log_to(handler, n)
    handler.close()


def cli_env(tmp_path: Path, with_stub: bool) -> Dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CERBISTREAM_")}
    paths = [str(REPO)]
    if with_stub:
        stub = tmp_path / "stub" / "azure" / "identity"
        stub.mkdir(parents=True)
        (stub / "__init__.py").write_text(STUB)
        paths.insert(0, str(tmp_path / "stub"))
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env["STUB_LOG"] = str(tmp_path / "tokens.log")
    return env


def cli(env: Dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *args],
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


# the fast tier: the handler's sign-in with a credential (above) and --namespace's argument
# checks (below, in-process)
@pytest.mark.slow
def test_cli_drain_namespace_signs_in_with_default_azure_credential(
    tmp_path: Path, spool_dir: str, peer: LocalPeer
) -> None:
    make_spool(spool_dir, 4)
    env = cli_env(tmp_path, with_stub=True)
    done = cli(env, "drain", spool_dir, "--namespace", namespace_of(peer), "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.splitlines()[-1])["delivered"] == 4
    assert len(peer.accepted()) == 4
    scopes = [json.loads(line) for line in (tmp_path / "tokens.log").read_text().splitlines()]
    assert scopes
    assert scopes[0][0].startswith(SCOPE)


@pytest.mark.slow  # as test_cli_drain_namespace_signs_in_with_default_azure_credential
def test_cli_verify_replay_namespace_ships_a_copied_spool(
    tmp_path: Path, spool_dir: str, peer: LocalPeer
) -> None:
    make_spool(spool_dir, 3)
    env = cli_env(tmp_path, with_stub=True)
    done = cli(env, "verify", spool_dir, "--replay", "--namespace", namespace_of(peer), "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["replayed"] == 3
    assert len(peer.accepted()) == 3


def test_cli_namespace_without_the_identity_extra_exits_2_with_the_install_line(
    spool_dir: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_spool(spool_dir, 1)
    monkeypatch.setitem(sys.modules, "azure.identity", None)  # import fails: extra not installed
    done = invoke("drain", spool_dir, "--namespace", "example.servicebus.windows.net")
    assert done.code == 2, done.err
    assert "pip install 'cerbistream_spool[identity]'" in done.err
    assert "Traceback" not in done.err


@pytest.mark.parametrize("command", ["drain", "verify"])
def test_cli_connection_string_and_namespace_together_exit_2(
    tmp_path: Path, spool_dir: str, command: str
) -> None:
    make_spool(spool_dir, 1)
    extra = ["--replay"] if command == "verify" else []
    done = invoke(
        command,
        spool_dir,
        *extra,
        "--connection-string",
        "Endpoint=sb://x/;SharedAccessKeyName=k;SharedAccessKey=v",
        "--namespace",
        "x.servicebus.windows.net",
    )
    assert done.code == 2, done.err
    assert "not both" in done.err

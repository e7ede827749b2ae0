"""The Optimove and Netmera connection types: their forms in Airflow's Connections UI and the Test button."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from fastapi import FastAPI, Request
from fastapi.testclient import TestClient
from optimove_netmera.hooks import NetmeraHook, OptimoveHook
from optimove_netmera.sandbox.process import SandboxProcess
from optimove_netmera.ui.connection_test import PortlessConnectionTestMiddleware

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def hook_meta() -> dict[str, Any]:
    """What the Connections form gets from Airflow's API for our two types."""
    from airflow.api_fastapi.core_api.services.ui.connections import HookMetaService

    return {
        m.connection_type: m for m in HookMetaService.hook_meta_data() if m.connection_type in ("optimove", "netmera")
    }


def test_both_types_have_a_labelled_form(hook_meta: dict[str, Any]) -> None:
    optimove, netmera = hook_meta["optimove"], hook_meta["netmera"]
    assert (optimove.hook_name, netmera.hook_name) == ("Optimove", "Netmera")
    assert optimove.standard_fields.host.title == "Base URL"
    assert optimove.standard_fields.port.hidden and optimove.standard_fields.url_schema.hidden
    assert not optimove.standard_fields.login.hidden  # the legacy login flow needs it
    assert netmera.standard_fields.password.title == "REST API key"
    assert netmera.standard_fields.login.hidden  # Netmera has a key, no user
    fields = optimove.extra_fields
    assert fields["api_key"]["schema"]["format"] == "password"  # shown as a secret, masked
    assert fields["api_key"]["schema"]["title"] == "API key"
    assert fields["page_size"]["schema"]["maximum"] == 10000
    assert {"rate_limit_calls", "rate_limit_period", "timeout", "max_attempts"} <= set(fields)
    assert netmera.extra_fields["max_batch"]["schema"]["maximum"] == 1000


def _set(monkeypatch: pytest.MonkeyPatch, name: str, conn: dict[str, Any]) -> None:
    monkeypatch.setenv(f"AIRFLOW_CONN_{name.upper()}", json.dumps(conn))


def test_a_form_saved_with_empty_fields_means_the_defaults(
    monkeypatch: pytest.MonkeyPatch, sandbox: SandboxProcess
) -> None:
    """The form stores unfilled fields as null: they must read as "not set", never crash or become 0."""
    empty = {"page_size": None, "rate_limit_calls": None, "rate_limit_period": None, "timeout": None}
    empty |= {"max_attempts": None, "retry_base_delay": None, "retry_max_delay": None}
    _set(monkeypatch, "optimove_default", {"conn_type": "optimove", "host": sandbox.optimove_url, "extra": {
        **empty, "api_key": sandbox.optimove_api_key}})  # fmt: skip
    _set(monkeypatch, "netmera_default", {"conn_type": "netmera", "host": sandbox.netmera_url, "password":
        sandbox.netmera_api_key, "extra": {**empty, "max_batch": None, "api_key": ""}})  # fmt: skip
    optimove = OptimoveHook().get_conn()
    assert optimove.page_size == 10_000
    assert (optimove.limiter.calls, optimove.limiter.period) == (50, 10.0)  # Optimove's documented limit
    netmera = NetmeraHook().get_conn()
    assert netmera.max_batch == 1000 and netmera.limiter is None


def test_optimove_test_button_says_what_the_key_reaches(
    monkeypatch: pytest.MonkeyPatch, sandbox: SandboxProcess
) -> None:
    _set(monkeypatch, "optimove_default", {"conn_type": "optimove", "host": sandbox.optimove_url, "extra": {
        "api_key": sandbox.optimove_api_key}})  # fmt: skip
    monkeypatch.setenv("OPTIMOVE_NETMERA__CAMPAIGNS__CHANNELS", "[506]")
    ok, message = OptimoveHook().test_connection()
    assert ok, message
    assert "mapped attributes: all 18 present" in message  # config/optimove_netmera.yaml maps 18
    assert "channel 506 (Push Notification)" in message and "template(s)" in message

    monkeypatch.setenv("OPTIMOVE_NETMERA__CAMPAIGNS__CHANNELS", "[506, 9999]")
    monkeypatch.setenv(
        "OPTIMOVE_NETMERA__ATTRIBUTES", "[{optimove: FirstName, netmera: name}, {optimove: Shoe, netmera: shoe}]"
    )
    ok, message = OptimoveHook().test_connection()
    assert not ok
    assert "NOT reachable with this key: Shoe" in message and "NOT available to this key: 9999" in message


def test_optimove_test_button_checks_the_channel_templates_cover_the_mapping(
    monkeypatch: pytest.MonkeyPatch, sandbox_reset: SandboxProcess, tmp_path: Path
) -> None:
    sandbox = sandbox_reset  # other tests' campaigns add templates (e.g. 9) to the shared sandbox's channel 506
    _set(monkeypatch, "optimove_default", {"conn_type": "optimove", "host": sandbox.optimove_url, "extra": {
        "api_key": sandbox.optimove_api_key}})  # fmt: skip
    monkeypatch.setenv("OPTIMOVE_NETMERA__CAMPAIGNS__CHANNELS", "[506]")
    # the sandbox's channel 506 holds templates 1-4; map 1 and 77 (not there), leave 2-4 unmapped
    config = yaml.safe_load((REPO / "config" / "optimove_netmera.yaml").read_text())
    config["campaigns"]["templates"] = {1: "101", 77: {"key": "107", "name": "New Push"}}
    (tmp_path / "settings.yaml").write_text(yaml.safe_dump(config))
    monkeypatch.setenv("OPTIMOVE_NETMERA_CONFIG", str(tmp_path / "settings.yaml"))
    ok, message = OptimoveHook().test_connection()
    assert not ok, message
    assert "mapped template(s) NOT on the channel: 77 (run optimove_setup)" in message
    assert "unmapped (their recipients are skipped): 2, 3, 4" in message
    monkeypatch.delenv("OPTIMOVE_NETMERA_CONFIG")
    ok, message = OptimoveHook().test_connection()
    assert ok and "NOT on the channel" not in message and "unmapped" not in message, message


@pytest.mark.parametrize("kind", ["optimove", "netmera"])
def test_a_wrong_key_fails_the_test_naming_the_answer(
    monkeypatch: pytest.MonkeyPatch, sandbox: SandboxProcess, kind: str
) -> None:
    if kind == "optimove":
        _set(monkeypatch, "optimove_default", {"conn_type": "optimove", "host": sandbox.optimove_url, "extra": {
            "api_key": "wrong-key", "max_attempts": 1}})  # fmt: skip
        ok, message = OptimoveHook().test_connection()
    else:
        _set(monkeypatch, "netmera_default", {"conn_type": "netmera", "host": sandbox.netmera_url,
             "password": "wrong-key", "extra": {"max_attempts": 1}})  # fmt: skip
        ok, message = NetmeraHook().test_connection()
    assert not ok
    assert "HTTP 401" in message or "HTTP 403" in message
    assert "wrong-key" not in message  # the key is never echoed


def test_netmera_test_button_accepts_the_right_key(monkeypatch: pytest.MonkeyPatch, sandbox: SandboxProcess) -> None:
    _set(monkeypatch, "netmera_default", {"conn_type": "netmera", "host": sandbox.netmera_url,
         "password": sandbox.netmera_api_key})  # fmt: skip
    assert NetmeraHook().test_connection() == (True, "Connected to Netmera; the REST API key was accepted")


# --- the Test button's request on Airflow 3.3.2 (apache/airflow#73298): "port": 0 for a connection without a port ---


def _echo_app() -> FastAPI:
    """An app standing in for Airflow's test route: it answers with the body and Content-Length it received."""
    app = FastAPI()

    @app.post("/api/v2/connections/test")
    @app.post("/api/v2/connections")
    async def echo(request: Request) -> dict[str, Any]:
        body = await request.body()
        return {"body": json.loads(body), "length": int(request.headers["content-length"]), "read": len(body)}

    app.add_middleware(PortlessConnectionTestMiddleware)
    return app


@pytest.mark.parametrize("kind", ["optimove", "netmera"])
def test_the_test_button_request_of_our_types_gets_no_port(kind: str) -> None:
    sent = {"connection_id": f"{kind}_x", "conn_type": kind, "host": "http://h", "password": "***", "port": 0}
    answer = TestClient(_echo_app()).post("/api/v2/connections/test", json=sent).json()
    assert answer["body"] == {**sent, "port": None}
    assert answer["length"] == answer["read"]  # Content-Length follows the rewritten body


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/api/v2/connections/test", {"connection_id": "h", "conn_type": "http", "port": 0}),  # not our type
        ("/api/v2/connections/test", {"connection_id": "o", "conn_type": "optimove", "port": 443}),  # a real port
        ("/api/v2/connections/test", {"connection_id": "o", "conn_type": "optimove", "port": False}),
        ("/api/v2/connections", {"connection_id": "o", "conn_type": "optimove", "port": 0}),  # not the test route
    ],
)
def test_any_other_request_passes_untouched(path: str, body: dict[str, Any]) -> None:
    assert TestClient(_echo_app()).post(path, json=body).json()["body"] == body

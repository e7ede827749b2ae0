"""Failure notifications: one message per failed run, through the notifier the settings name."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from optimove_netmera.notify import failure_callbacks
from optimove_netmera.settings import REPO_CONFIG, SettingsError, load_settings
from sends_helpers import configure, run_dag, task_states

NOTIFIER = "recording_notifier.RecordingNotifier"
pytestmark = pytest.mark.usefixtures("airflow_db")


@pytest.fixture
def env(sandbox_reset: Any, db_url: str, monkeypatch: pytest.MonkeyPatch) -> Any:
    configure(sandbox_reset, db_url, monkeypatch, chunk_size=50)
    return sandbox_reset


def _notify_to(monkeypatch: pytest.MonkeyPatch, path: Path) -> None:
    monkeypatch.setenv("OPTIMOVE_NETMERA__NOTIFICATIONS__NOTIFIER", NOTIFIER)
    kwargs = {"path": str(path), "subject": "{{ optimove_netmera_subject }}", "text": "{{ optimove_netmera_message }}"}
    monkeypatch.setenv("OPTIMOVE_NETMERA__NOTIFICATIONS__KWARGS", json.dumps(kwargs))


def test_a_failed_run_sends_one_message_saying_what_failed_and_the_next_step(
    env: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    box = env
    sent = tmp_path / "messages.jsonl"
    _notify_to(monkeypatch, sent)
    bad = {"conn_type": "netmera", "host": box.netmera_url, "password": "not-the-key"}
    monkeypatch.setenv("AIRFLOW_CONN_NETMERA_DEFAULT", json.dumps(bad))
    monkeypatch.setenv("OPTIMOVE_NETMERA__SYNC__CHECK_UNKNOWN_EXT_IDS", "false")  # reach the load with a bad key
    dr = run_dag("optimove_user_sync")
    assert dr.state == "failed", task_states(dr)
    failed = [k for k, v in task_states(dr).items() if v == "failed"]
    assert len(failed) >= 2, failed  # the load and the failure record: still one message for the run
    messages = [json.loads(line) for line in sent.read_text().splitlines()]
    assert len(messages) == 1, messages
    message = messages[0]
    assert message["subject"] == f"[optimove-netmera] optimove_user_sync run {dr.run_id} failed"
    assert "Next step:" in message["text"] and "clear the failed task" in message["text"]
    assert "not-the-key" not in json.dumps(message)


def test_no_notifier_no_callback_and_a_wrong_one_fails_at_parse(monkeypatch: pytest.MonkeyPatch) -> None:
    assert failure_callbacks(load_settings(REPO_CONFIG, env={})) is None  # no callback: nothing to run
    bad = load_settings(REPO_CONFIG, env={"OPTIMOVE_NETMERA__NOTIFICATIONS__NOTIFIER": "no.such.Notifier"})
    with pytest.raises(SettingsError, match=r"notifications\.notifier"):
        failure_callbacks(bad)
    not_a_notifier = load_settings(REPO_CONFIG, env={"OPTIMOVE_NETMERA__NOTIFICATIONS__NOTIFIER": "json.JSONDecoder"})
    with pytest.raises(SettingsError, match="not an Airflow notifier"):
        failure_callbacks(not_a_notifier)

"""Registering with Optimove over HTTP against the sandbox: listeners and channel templates, through real runs of
the ``optimove_setup`` DAG (``dag.test()``) and the ``python -m optimove_netmera.campaigns setup`` command.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import yaml
from sends_helpers import REPO, configure, optimove_client, run_dag, task_states, xcom

pytestmark = pytest.mark.usefixtures("airflow_db")

PUBLIC = "https://airflow.example.com"
URL = f"{PUBLIC}/rest/optimove/event/optimove-netmera"
CHANGING = (
    "POST /current/general/RegisterEventListener",
    "POST /current/general/UnregisterEventListener",
    "POST /current/integrations/AddChannelTemplates",
    "POST /current/integrations/DeleteChannelTemplates",
)


def write_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, **campaigns: Any) -> None:
    """The repository's settings with ``campaigns`` keys replaced (not deep-merged), as a new settings file (the
    settings are cached per file path)."""
    config = yaml.safe_load((REPO / "config" / "optimove_netmera.yaml").read_text())
    config["campaigns"].update(campaigns)
    path = tmp_path / f"optimove_netmera_{len(list(tmp_path.glob('optimove_netmera_*.yaml')))}.yaml"
    path.write_text(yaml.safe_dump(config))
    monkeypatch.setenv("OPTIMOVE_NETMERA_CONFIG", str(path))


@pytest.fixture
def env(sandbox_reset: Any, db_url: str, monkeypatch: pytest.MonkeyPatch) -> Any:
    configure(sandbox_reset, db_url, monkeypatch)
    monkeypatch.setenv("OPTIMOVE_NETMERA__INBOUND__PUBLIC_URL", PUBLIC + "/")
    return sandbox_reset


def changing_calls(box: Any) -> dict[str, dict[str, int]]:
    counts = box.admin.optimove.requests()["counts"]
    return {k: counts[k] for k in CHANGING if k in counts}


def listeners(box: Any) -> set[tuple[int, int | None, str]]:
    return {(li["EventTypeID"], li["ChannelID"], li["ListenerURL"]) for li in box.admin.optimove.listeners()}


def setup(**params: Any) -> Any:
    dr = run_dag("optimove_setup", params)
    assert dr.state == "success", task_states(dr)
    return xcom(dr, "setup")


def test_register_twice_second_run_changes_nothing(env: Any) -> None:
    box = env
    channels = [506, 459, 481]  # the repository's campaigns.channels
    expected = {(e, ch, URL) for ch in channels for e in (13, 11, 4)} | {(3, None, URL)}

    first = setup()
    assert listeners(box) == expected
    assert first["changes"] == len(expected) == 10
    assert changing_calls(box) == {"POST /current/general/RegisterEventListener": {"200": 10}}

    second = setup()
    assert second["changes"] == 0 and second["listeners"]["registered"] == []
    assert len(second["listeners"]["ok"]) == 10
    assert changing_calls(box) == {"POST /current/general/RegisterEventListener": {"200": 10}}  # no new call
    assert listeners(box) == expected


def test_listener_urls_listed_url_encoded_are_compared_decoded(env: Any) -> None:
    box = env
    box.admin.optimove.config(listener_urls_as_sent=True)  # list ListenerURL as registered: URL-encoded
    assert setup()["changes"] == 10
    listed = optimove_client(box).get("general", "GetRegisteredEventListeners")
    assert {li["ListenerURL"] for li in listed} == {quote(URL, safe="")}  # what the documentation's fixture sends
    second = setup()
    assert second["changes"] == 0 and second["listeners"]["stale"] == []


def test_stale_listener_is_reported_then_removed(env: Any) -> None:
    box = env
    client = optimove_client(box)
    client.register_event_listener(4, "https://old-vendor.example.com/hook")  # every channel: shadows ours
    client.register_event_listener(13, "https://old-vendor.example.com/hook", 506)
    client.register_event_listener(13, "https://sms.example.com/hook", 505)  # another channel: not ours
    before = changing_calls(box)["POST /current/general/RegisterEventListener"]["200"]

    first = setup()
    stale = sorted(first["listeners"]["stale"])
    assert stale == [
        "event 13 channel 506 -> https://old-vendor.example.com/hook",
        "event 4 (no channel) -> https://old-vendor.example.com/hook",
    ]
    assert first["listeners"]["removed"] == []
    assert (4, None, "https://old-vendor.example.com/hook") in listeners(box)  # reported, left alone

    second = setup()
    assert second["changes"] == 0
    assert second["listeners"]["stale"] == ["event 4 (no channel) -> https://old-vendor.example.com/hook"]

    third = setup(remove_stale=True)
    assert third["listeners"]["removed"] == ["event 4 (no channel)"]
    ours = {(e, ch, URL) for ch in (506, 459, 481) for e in (13, 11, 4)} | {(3, None, URL)}
    assert listeners(box) == ours | {(13, 505, "https://sms.example.com/hook")}
    assert changing_calls(box)["POST /current/general/UnregisterEventListener"] == {"200": 1}

    fourth = setup(remove_stale=True)
    assert fourth["changes"] == 0 and fourth["listeners"]["stale"] == []
    registered = changing_calls(box)["POST /current/general/RegisterEventListener"]["200"] - before
    assert registered == 10 + 3  # all ten, then the three event-4 listeners the unregister took with it


def test_templates_added_in_chunks_of_100_renamed_and_only_ours_deleted(
    env: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    box = env
    client = optimove_client(box)
    # channel 506 holds 1-4 (Welcome Push, ...) put there by someone else
    many = {1000 + i: {"key": str(5000 + i), "name": f"Bulk {i}"} for i in range(130)}
    write_settings(
        tmp_path,
        monkeypatch,
        channels=[506],
        templates={1: {"key": "101", "name": "Renamed Welcome"}, 2: "102", 7: {"key": "105", "name": "Flash"}, **many},
    )
    first = setup()
    listed = {t.template_id: t.name for t in client.get_channel_templates(506)}
    assert listed[7] == "Flash" and all(listed[t] == v["name"] for t, v in many.items())
    assert listed[1] == "Welcome Push" and listed[2] == "Win-back Push"  # not ours: never renamed
    assert first["templates"]["added"] == {"506": [7, *many]}
    assert any(
        "template 1 is on the channel as 'Welcome Push', not ours" in n for n in first["templates"]["foreign"]["506"]
    )
    assert changing_calls(box)["POST /current/integrations/AddChannelTemplates"] == {"200": 2}  # 131 = 100 + 31

    assert setup()["changes"] == 0

    # 7 renamed (ours), the 130 and template 2 unmapped: ours are deleted, 2, 3 and 4 (not ours) stay
    write_settings(tmp_path, monkeypatch, channels=[506], templates={1: "101", 7: {"key": "105", "name": "Flash!"}})
    third = setup()
    listed = {t.template_id: t.name for t in client.get_channel_templates(506)}
    assert listed == {1: "Welcome Push", 2: "Win-back Push", 3: "Weekly Offers Push", 4: "Birthday Push", 7: "Flash!"}
    assert third["templates"]["deleted"] == {"506": sorted(many)}
    assert third["templates"]["renamed"] == {"506": [7]}
    assert changing_calls(box)["POST /current/integrations/DeleteChannelTemplates"] == {"200": 2}
    assert setup()["changes"] == 0


def test_setup_without_public_url_fails_naming_the_setting(env: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPTIMOVE_NETMERA__INBOUND__PUBLIC_URL")
    dr = run_dag("optimove_setup")
    assert dr.state == "failed"
    assert env.admin.optimove.listeners() == []


def test_setup_command_dry_run_then_real(env: Any) -> None:
    box = env
    command = [sys.executable, "-m", "optimove_netmera.campaigns", "setup"]
    dry = subprocess.run([*command, "--dry-run"], capture_output=True, text=True, env=os.environ.copy(), timeout=120)
    assert dry.returncode == 0, dry.stderr
    report = json.loads(dry.stdout.strip().splitlines()[-1])
    assert len(report["listeners"]["registered"]) == 10 and report["changes"] == 0
    assert box.admin.optimove.listeners() == [] and changing_calls(box) == {}

    real = subprocess.run(command, capture_output=True, text=True, env=os.environ.copy(), timeout=120)
    assert real.returncode == 0, real.stderr
    assert json.loads(real.stdout.strip().splitlines()[-1])["changes"] == 10
    assert len(box.admin.optimove.listeners()) == 10
    assert box.optimove_api_key not in real.stdout + real.stderr

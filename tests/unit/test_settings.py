"""Settings: the repository file loads; bad values fail with messages that name the setting."""

from __future__ import annotations

from pathlib import Path

import pytest
from optimove_netmera.settings import REPO_CONFIG, ExtIdTransform, SettingsError, load_settings


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "settings.yaml"
    path.write_text(text)
    return path


def test_repository_settings_load() -> None:
    s = load_settings(REPO_CONFIG, env={})
    assert s.connections.optimove == "optimove_default"
    assert {a.type for a in s.attributes} == {"string", "number", "boolean", "date"}
    assert all(isinstance(k, str) for k in s.campaigns.templates.values())
    assert s.sync.batch_size <= 1000


def test_env_overrides_are_yaml_values(tmp_path: Path) -> None:
    path = write(tmp_path, "attributes: [{optimove: A, netmera: a}]\n")
    s = load_settings(
        path, env={"OPTIMOVE_NETMERA__SYNC__BATCH_SIZE": "250", "OPTIMOVE_NETMERA__CAMPAIGNS__CHANNELS": "[1, 2]"}
    )
    assert s.sync.batch_size == 250
    assert s.campaigns.channels == [1, 2]


def test_overlay_deep_merges(tmp_path: Path) -> None:
    path = write(tmp_path, "sync: {batch_size: 500, pool: p}\n")
    s = load_settings(path, env={}, overlay={"sync": {"batch_size": 10}})
    assert (s.sync.batch_size, s.sync.pool) == (10, "p")


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("sync: {schedule: 'every night'}\n", "sync.schedule"),
        ("sync: {batch_size: 5000}\n", "sync.batch_size"),
        ("attributes: [{optimove: A, netmera: a, type: colour}]\n", "attributes.0.type"),
        ("attributes: [{optimove: 'bad name', netmera: a}]\n", "attributes.0.optimove"),
        ("attributes: [{optimove: A, netmera: a}, {optimove: B, netmera: a}]\n", "mapped more than once"),
        ("ext_id: {case: title}\n", "ext_id.case"),
        ("surprise: 1\n", "surprise"),
        ("campaigns: {params: {FirstName: name}, required_params: [surname]}\n", "required_params"),
        ("campaigns: {templates: {x1: '101'}}\n", "TemplateID 'x1' is not an integer"),
        ("campaigns: {templates: {0: '101'}}\n", "TemplateID 0 must be >= 1"),
        ("campaigns: {templates: {1: ''}}\n", "templates.1: the notificationKey must be a non-empty string"),
        ("campaigns: {templates: {1: {key: '101', name: ' '}}}\n", "templates.1: name must be a non-empty string"),
        ("campaigns: {templates: {1: {name: Welcome}}}\n", "templates.1: key is required"),
        ("campaigns: {templates: {1: {key: '1', title: x}}}\n", "unknown field(s) ['title']"),
        ("campaigns: {metric_ids: {sent: 0, failed: 0}}\n", "MetricID(s) [0] used for more than one count"),
        ("campaigns: {metric_ids: {colour: 3}}\n", "campaigns.metric_ids.colour"),
        ("campaigns: {stats_days: -1}\n", "campaigns.stats_days"),
        ("campaigns: {requests_in_flight: 0}\n", "campaigns.requests_in_flight: Value error, must be between 1"),
        ("campaigns: {requests_in_flight: 9}\n", "campaigns.requests_in_flight: Value error, must be between 1"),
        ("campaigns: {requests_in_flight: four}\n", "campaigns.requests_in_flight"),
        ("inbound: {public_url: 'ftp://example.com'}\n", "inbound.public_url"),
        ("inbound: {public_url: 'https://example.com/?x=1'}\n", "base address only"),
    ],
)
def test_bad_settings_name_the_setting(tmp_path: Path, text: str, needle: str) -> None:
    with pytest.raises(SettingsError) as err:
        load_settings(write(tmp_path, text), env={})
    assert needle in str(err.value)


def test_missing_file_and_bad_yaml(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="not found"):
        load_settings(tmp_path / "nope.yaml", env={})
    with pytest.raises(SettingsError, match="not valid YAML"):
        load_settings(write(tmp_path, "a: [1,\n"), env={})
    with pytest.raises(SettingsError, match="OPTIMOVE_NETMERA__SYNC__POOL"):
        load_settings(write(tmp_path, "{}\n"), env={"OPTIMOVE_NETMERA__SYNC__POOL": "[unclosed"})


def test_ext_id_transform(tmp_path: Path) -> None:
    s = load_settings(write(tmp_path, "ext_id: {prefix: 'om-', case: lower}\n"), env={})
    assert s.ext_id.apply(" C0001 ") == "om-c0001"


@pytest.mark.parametrize(
    "transform",
    [{}, {"case": "lower"}, {"case": "upper", "suffix": "-x"}, {"prefix": "om-", "case": "lower"}, {"prefix": "p"}],
)
def test_ext_id_transform_of_many_ids_is_each_ids_own(transform: dict[str, str]) -> None:
    ids = [" C0001 ", "c0002", "\tMiXeD\u00c9\n", ""]
    t = ExtIdTransform(**transform)
    case = {"lower": str.lower, "upper": str.upper}.get(transform.get("case", ""), str)
    expected = [f"{transform.get('prefix', '')}{case(i.strip())}{transform.get('suffix', '')}" for i in ids]
    assert t.apply_all(ids) == expected == [t.apply(i) for i in ids]


def test_templates_take_a_key_or_a_key_and_name(tmp_path: Path) -> None:
    s = load_settings(
        write(tmp_path, "campaigns: {templates: {1: '101', 2: {key: 102, name: ' Win-back '}}}\n"), env={}
    )
    assert s.campaigns.templates == {1: "101", 2: "102"}
    assert s.campaigns.template_names == {2: "Win-back"}


def test_reporting_defaults_and_listener_url(tmp_path: Path) -> None:
    s = load_settings(write(tmp_path, "inbound: {app_key: my-app, public_url: 'https://af.example.com/'}\n"), env={})
    assert s.campaigns.report_metrics is True and s.campaigns.dry_run is False and s.campaigns.stats_days == 7
    assert s.campaigns.metric_ids.items() == [
        ("sent", 0),
        ("failed", 9),
        ("skipped", 5),
        ("delivered", 1),
        ("opened", 2),
    ]
    assert s.inbound.listener_url() == "https://af.example.com/rest/optimove/event/my-app"
    off = load_settings(write(tmp_path, "campaigns: {metric_ids: {skipped: null}}\n"), env={})
    assert "skipped" not in dict(off.campaigns.metric_ids.items())
    with pytest.raises(ValueError, match=r"inbound\.public_url is not set"):
        off.inbound.listener_url()


def test_requests_in_flight_default_and_override(tmp_path: Path) -> None:
    assert load_settings(write(tmp_path, "{}\n"), env={}).campaigns.requests_in_flight == 4
    s = load_settings(write(tmp_path, "{}\n"), env={"OPTIMOVE_NETMERA__CAMPAIGNS__REQUESTS_IN_FLIGHT": "1"})
    assert s.campaigns.requests_in_flight == 1

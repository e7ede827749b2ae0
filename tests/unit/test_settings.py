"""Settings: the repository file loads; bad values fail with messages that name the setting."""

from __future__ import annotations

from pathlib import Path

import pytest
from optimove_netmera.settings import REPO_CONFIG, SettingsError, load_settings


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

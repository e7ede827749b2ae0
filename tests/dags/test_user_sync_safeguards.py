"""User-sync safeguards that a test must catch when their code is removed: the ``since``/``until`` params, the
CSV export branch and the extId transform. Expected values come from ``sync_oracle`` or literals.
"""

from __future__ import annotations

import csv
import datetime as dt
import threading
from pathlib import Path
from typing import Any

import pytest
from optimove_netmera.optimove import OptimoveClient
from sync_oracle import ext_id, profile, read_csv_export
from test_user_sync import (
    ALL_IDS,
    CUSTOMERS,
    KNOWN,
    SMALL_MAPPING,
    first_sync,
    last_run,
    netmera_profiles,
    profile_of,
    run_sync,
    set_values,
    states,
    sync_env,  # noqa: F401  (the fixture)
)

pytestmark = pytest.mark.usefixtures("airflow_db")
SMALL = [("FirstName", "name", "string"), ("LTV", "ltv", "number"), ("IsVIP", "isVip", "boolean")]


@pytest.fixture
def changers_windows(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str]]:
    """Every (StartDate, EndDate) the sync's Optimove client asks the changers API for, in this process."""
    seen: list[tuple[str, str]] = []
    lock = threading.Lock()
    real = OptimoveClient.iter_customer_attribute_changers

    def spy(self: OptimoveClient, attribute: str, start: Any, end: Any, *args: Any, **kwargs: Any) -> Any:
        with lock:
            seen.append((str(start)[:10], str(end)[:10]))
        return real(self, attribute, start, end, *args, **kwargs)

    monkeypatch.setattr(OptimoveClient, "iter_customer_attribute_changers", spy)
    return seen


def test_since_and_until_params_choose_the_changers_window(
    sync_env: Any,  # noqa: F811
    db_url: str,
    monkeypatch: pytest.MonkeyPatch,
    changers_windows: list[tuple[str, str]],
) -> None:
    """A run with ``since``/``until`` reads exactly that window: a change inside it is sent, one after it is not."""
    box = sync_env
    monkeypatch.setenv("OPTIMOVE_NETMERA__ATTRIBUTES", SMALL_MAPPING)
    first_sync(box, db_url)
    k1, k2 = [c for c in ALL_IDS if KNOWN.netmera_known(c)][:2]
    before_k2 = profile_of(box, k2)
    y = dt.datetime.now(dt.UTC).date() - dt.timedelta(days=1)  # the sandbox's data date
    set_values(box, {k1: {"FirstName": "InWindow", "LTV": "1.25"}}, (y - dt.timedelta(days=3)).isoformat())
    set_values(box, {k2: {"FirstName": "AfterWindow"}}, y.isoformat())
    since, until = y - dt.timedelta(days=4), y - dt.timedelta(days=2)
    changers_windows.clear()
    dr = run_sync({"since": since.isoformat(), "until": until.isoformat()})
    assert dr.state == "success", states(dr)
    assert set(changers_windows) == {
        (since.isoformat(), until.isoformat()),
        ((since + dt.timedelta(days=1)).isoformat(), until.isoformat()),
    }
    run = last_run(db_url)
    assert (run["window_start"], run["window_end"]) == (since, until) and run["params"]["mode"] == "incremental"
    assert profile_of(box, k1)["name"] == "InWindow" and profile_of(box, k1)["ltv"] == 1.25
    assert profile_of(box, k2) == before_k2  # changed after `until`: not in this run
    assert run["counts"]["plan"]["changed"] == 1


def _rewrite_rows(path: Path, rows: dict[str, dict[str, str]]) -> None:
    """Overwrite some customers' values in a CSV export in place (other rows and columns unchanged)."""
    with path.open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        fields, data = list(reader.fieldnames or []), list(reader)
    for row in data:
        row.update(rows.get(row["CustomerID"], {}))
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields)
        writer.writeheader()
        writer.writerows(data)


def test_full_refresh_from_a_csv_export_delivers_exact_values(sync_env: Any, db_url: str, tmp_path: Path) -> None:  # noqa: F811
    """``full_refresh`` + a ``.csv`` ``export_path``: every known customer's profile is exactly the file's row."""
    box = sync_env
    export = tmp_path / "customers.csv"
    box.admin.optimove.export(str(export))
    k1, k2 = [c for c in ALL_IDS if KNOWN.netmera_known(c)][:2]
    _rewrite_rows(
        export,
        {
            k1: {"FirstName": "  Zoë, \"Z\"  ", "LTV": " 12.50 ", "Age": "NULL", "IsVIP": "Yes", "OptIn": "n",
                 "BirthDate": "1990-02-03 00:00:00", "City": "", "Country": "NA"},
            k2: {"LTV": "twelve", "IsVIP": "maybe", "BirthDate": "1990-02-30", "Score": "1e2", "FirstName": "Nan"},
        },
    )  # fmt: skip
    dr = run_sync({"full_refresh": True, "export_path": str(export)})
    assert dr.state == "success", states(dr)
    assert last_run(db_url)["params"]["mode"] == "export"
    got = netmera_profiles(box)
    assert got[k1]["name"] == 'Zoë, "Z"' and got[k1]["ltv"] == 12.5 and got[k1]["isVip"] is True
    assert got[k1]["optIn"] is False and got[k1]["dateOfBirth"] == 634003200000  # date -u -d 1990-02-03 +%s
    assert "age" not in got[k1] and "city" not in got[k1]
    assert got[k1]["country"] == "NA"  # Namibia: pandas reads "NA" as missing unless told not to
    assert got[k2]["name"] == "Nan" and got[k2]["score"] == 100 and not {"ltv", "isVip", "dateOfBirth"} & set(got[k2])
    from optimove_netmera.settings import load_settings

    mapping = [(a.optimove, a.netmera, a.type) for a in load_settings().attributes]
    want = {c: profile(raw, mapping) for c, raw in read_csv_export(export).items() if KNOWN.netmera_known(c)}
    assert set(got) == set(want)
    diffs = {c: (got[c], want[c]) for c in want if got[c] != want[c]}
    assert not diffs, list(diffs.items())[:3]


def test_ext_id_transform_on_the_sync_path(sync_env: Any, db_url: str, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    """Profiles land under the transformed extIds, and the existence probe and verify read use them too."""
    box = sync_env
    monkeypatch.setenv("OPTIMOVE_NETMERA__ATTRIBUTES", SMALL_MAPPING)
    monkeypatch.setenv("OPTIMOVE_NETMERA__EXT_ID__PREFIX", "app-")
    monkeypatch.setenv("OPTIMOVE_NETMERA__EXT_ID__SUFFIX", ".m")
    monkeypatch.setenv("OPTIMOVE_NETMERA__EXT_ID__CASE", "lower")
    c1, c2, c3 = ALL_IDS[:3]
    set_values(box, {c1: {"FirstName": "Ada", "LTV": "3", "IsVIP": "true"}})
    registered = {c: ext_id(c, "app-", ".m", "lower") for c in (c1, c2, c3)}
    assert registered[c1] == "app-c0000001.m"  # literal
    box.admin.netmera.add_users(list(registered.values()))  # only the transformed extIds are Netmera users
    dr = run_sync()
    assert dr.state == "success", states(dr)
    run = last_run(db_url)
    assert run["counts"]["changes"] == {"delivered": 3, "not_found": CUSTOMERS - 3}  # the probe asked for them
    assert run["counts"]["verify"]["profiles_read"] == 3
    got = netmera_profiles(box)
    assert set(got) == set(registered.values())  # nothing under the raw CustomerIDs
    assert got["app-c0000001.m"] == {"name": "Ada", "ltv": 3, "isVip": True}
    for c in (c2, c3):
        raw = box.admin.optimove.customer(c)["attributes"]
        assert got[registered[c]] == profile(raw, SMALL)

    set_values(box, {c2: {"FirstName": "Grace"}})  # an incremental change goes to the same transformed extId
    dr = run_sync()
    assert dr.state == "success", states(dr)
    assert profile_of(box, "app-c0000002.m")["name"] == "Grace" and profile_of(box, c2) == {}

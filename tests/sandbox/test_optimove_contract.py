"""Contract tests for the Optimove sandbox: real HTTP against the sandbox subprocess (``sandbox`` fixture)."""

from __future__ import annotations

import datetime as dt
import http.server
import json
import threading
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import numpy as np
import pandas as pd
import pytest
import requests
from optimove_netmera.sandbox.data import Dataset
from optimove_netmera.sandbox.optimove_admin import OptimoveAdmin, OptimoveAdminError

RATE_BODY = {
    "status": 429,
    "error": "Too Many Requests",
    "message": "You have exceeded the rate limit for this API group. Please retry later.",
}
CHANGERS = "/current/customers/GetCustomerAttributeChangers"
EXEC = "/current/customers/GetCustomerExecutionDetailsByCampaign"


@pytest.fixture(autouse=True)
def _clean(sandbox: Any) -> Iterator[None]:
    sandbox.admin.optimove.reset()
    yield
    sandbox.admin.optimove.reset()


@pytest.fixture
def admin(sandbox: Any) -> OptimoveAdmin:
    return sandbox.admin.optimove


def call(sandbox: Any, path: str, method: str = "GET", headers: dict[str, str] | None = None, **kw: Any) -> Any:
    """One real API call with the API key (unless ``headers`` replaces it)."""
    hdrs = {"X-API-KEY": sandbox.optimove_api_key} if headers is None else headers
    return requests.request(method, sandbox.optimove_url + path, headers=hdrs, timeout=30, **kw)


def login(sandbox: Any, key: str = "Username") -> str:
    r = requests.post(
        sandbox.optimove_url + "/current/general/login",
        json={key: sandbox.optimove_user, "Password": sandbox.optimove_password},
        timeout=10,
    )
    assert r.status_code == 200, r.text
    return r.json()


def base_window(admin: OptimoveAdmin) -> dict[str, str]:
    """A changers window that contains the base date (so every non-empty customer is returned)."""
    lud = dt.date.fromisoformat(admin.get_config()["last_data_update"])
    return {"StartDate": (lud - dt.timedelta(days=365)).isoformat(), "EndDate": lud.isoformat()}


# ----------------------------------------------------------------------------------------------- auth
def test_health_and_api_key(sandbox: Any) -> None:
    assert requests.get(sandbox.optimove_url + "/_sandbox/health", timeout=5).json() == {
        "status": "ok",
        "service": "optimove",
    }
    ok = call(sandbox, "/current/general/GetLastDataUpdate", headers={"x-api-key": sandbox.optimove_api_key})
    assert ok.status_code == 200
    assert dt.date.fromisoformat(ok.json()["Date"]) == dt.date.today() - dt.timedelta(days=1)
    wrong = call(sandbox, "/current/general/GetLastDataUpdate", headers={"X-API-KEY": "nope"})
    assert wrong.status_code == 401
    missing = call(sandbox, "/current/general/GetLastDataUpdate", headers={})
    assert missing.status_code == 401
    unknown = call(sandbox, "/current/general/GetLastDataUpdate", headers={"Authorization-Token": "bogus"})
    assert (unknown.status_code, unknown.text) == (403, "Unauthorized User")


def test_login_token_flow(sandbox: Any, admin: OptimoveAdmin) -> None:
    r = requests.post(
        sandbox.optimove_url + "/current/general/login",
        json={"UserName": sandbox.optimove_user, "password": sandbox.optimove_password},
        timeout=10,
    )
    assert r.status_code == 200
    assert r.text.startswith('"') and r.text.endswith('"')  # the token is a quoted JSON string
    token = r.json()
    ok = call(sandbox, "/current/general/GetLastDataUpdate", headers={"authorization-token": token})
    assert ok.status_code == 200
    again = requests.post(
        sandbox.optimove_url + "/current/general/login",
        json={"Username": sandbox.optimove_user, "Password": sandbox.optimove_password},
        timeout=10,
    )
    assert again.status_code == 429  # at most one login per second
    bad = requests.post(
        sandbox.optimove_url + "/current/general/login",
        json={"Username": sandbox.optimove_user, "Password": "wrong"},
        timeout=10,
    )
    assert bad.status_code == 401
    assert admin.expire_tokens() >= 1
    expired = call(sandbox, "/current/general/GetLastDataUpdate", headers={"Authorization-Token": token})
    assert (expired.status_code, expired.text) == (403, "Authorization-Token Expired")
    assert requests.get(sandbox.optimove_url + "/current/general/login", timeout=5).status_code == 405


def test_token_sliding_expiry(sandbox: Any, admin: OptimoveAdmin) -> None:
    """A call refreshes the token's expiry: valid 2 s after its last use even when issued longer ago than that.

    Only lower bounds on elapsed time decide the outcome: the sleeps guarantee that the token is older than the
    TTL since login (so only a refresh keeps it valid) and, at the end, idle for longer than the TTL.
    """
    ttl = 2.0
    token = login(sandbox)
    headers = {"Authorization-Token": token}
    time.sleep(ttl)
    assert call(sandbox, "/current/general/GetLastDataUpdate", headers=headers).status_code == 200  # refreshes
    admin.config(token_ttl_seconds=ttl)  # issued >= ttl ago, last used just now
    assert call(sandbox, "/current/general/GetLastDataUpdate", headers=headers).status_code == 200
    time.sleep(ttl + 0.1)
    r = call(sandbox, "/current/general/GetLastDataUpdate", headers=headers)
    assert (r.status_code, r.text) == (403, "Authorization-Token Expired")


# ----------------------------------------------------------------------------------------------- routing
def test_paths_and_methods(sandbox: Any) -> None:
    for path in (
        "/current/general/GetLastDataUpdate",
        "/general/GetLastDataUpdate",
        "/CURRENT/General/getlastdataupdate",
        "/General/GetLastDataUpdate/",
    ):
        assert call(sandbox, path).status_code == 200, path
    assert call(sandbox, "/current/general/NoSuchFunction").status_code == 404
    assert call(sandbox, "/current/nosuch/GetLastDataUpdate").status_code == 404
    assert call(sandbox, "/current/general/GetLastDataUpdate", method="POST", json={}).status_code == 405
    assert call(sandbox, "/current/general/RegisterEventListener").status_code == 405


def test_rate_limit_body_and_window(sandbox: Any, admin: OptimoveAdmin) -> None:
    admin.config(rate_limit={"calls": 3, "period": 1})
    for _ in range(3):
        assert call(sandbox, "/current/general/GetLastDataUpdate").status_code == 200
    limited = call(sandbox, "/current/general/GetLastDataUpdate")
    assert limited.status_code == 429
    assert limited.json() == RATE_BODY
    assert "retry-after" not in limited.headers
    token = login(sandbox)  # login is not counted, and a token's user has its own window
    assert call(sandbox, "/current/general/GetLastDataUpdate", headers={"Authorization-Token": token}).ok
    time.sleep(1.1)
    assert call(sandbox, "/current/general/GetLastDataUpdate").status_code == 200
    counts = admin.requests()["counts"]["GET /current/general/GetLastDataUpdate"]
    assert counts == {"200": 5, "429": 1}
    assert admin.count("/current/general/GetLastDataUpdate", 429) == 1


def test_injected_faults_are_counted(sandbox: Any, admin: OptimoveAdmin) -> None:
    admin.set_faults([{"endpoint": "/current/general/*", "storm_429": 2}])
    statuses = [call(sandbox, "/current/general/GetLastDataUpdate").status_code for _ in range(3)]
    assert statuses == [429, 429, 200]
    assert admin.requests()["counts"]["GET /current/general/GetLastDataUpdate"] == {"429": 2, "200": 1}
    admin.set_faults([{"endpoint": "/current/general/*", "reset_rate": 1.0, "count": 1}])
    with pytest.raises(requests.ConnectionError):  # a real TCP reset, not an HTTP 500
        call(sandbox, "/current/general/GetLastDataUpdate")
    assert admin.requests()["counts"]["GET /current/general/GetLastDataUpdate"]["reset"] == 1
    admin.reset()
    assert admin.faults()["rules"] == []
    assert admin.requests()["total"] == 0


# ----------------------------------------------------------------------------------------------- customers
def test_changers_paging_and_clamping(sandbox: Any, admin: OptimoveAdmin) -> None:
    params = {"ChangedCustomerAttribute": "FirstName", **base_window(admin)}
    everyone = call(sandbox, CHANGERS, params=params).json()
    assert len(everyone) == 1000  # FirstName is never empty: every customer "changed" on the base date
    assert everyone[0] == {"CustomerID": "C0000001", "InitialCustomerAttribute": "NULL",
                           "FinalCustomerAttribute": everyone[0]["FinalCustomerAttribute"]}  # fmt: skip
    pages = [call(sandbox, CHANGERS, params={**params, "$top": 300, "$skip": s}).json() for s in (0, 300, 600, 900)]
    assert [len(p) for p in pages] == [300, 300, 300, 100]
    assert [r["CustomerID"] for p in pages for r in p] == [r["CustomerID"] for r in everyone]
    assert call(sandbox, CHANGERS, params={**params, "$skip": 1000}).json() == []
    email = call(sandbox, CHANGERS, params={**params, "ChangedCustomerAttribute": "Email"}).json()
    assert 900 < len(email) < 1000  # some customers have no e-mail
    admin.config(max_page_size=100)
    assert len(call(sandbox, CHANGERS, params={**params, "$top": 500}).json()) == 100
    bad = call(sandbox, CHANGERS, params={**params, "$top": "ten"})
    assert bad.status_code == 400 and "$top" in bad.text


def test_attribute_shapes(sandbox: Any, admin: OptimoveAdmin) -> None:
    params = {"ChangedCustomerAttribute": "FirstName", **base_window(admin), "$top": 200}
    rows = call(sandbox, CHANGERS, params={**params, "CustomerAttributes": "Gender;FirstName;Age"}).json()
    assert all(len(r["CustomerAttributes"]) == 3 for r in rows)
    first = admin.customer(rows[0]["CustomerID"])["attributes"]
    assert rows[0]["CustomerAttributes"] == [first["Gender"] or "NULL", first["FirstName"], first["Age"] or "NULL"]
    assert rows[0]["FinalCustomerAttribute"] == first["FirstName"]
    assert any(r["CustomerAttributes"][0] == "NULL" for r in rows)  # ~10% have no Gender
    comma = call(
        sandbox,
        CHANGERS,
        params={**params, "CustomerAttributes": "Gender,FirstName,Age", "CustomerAttributesDelimiter": ","},
    ).json()
    assert [r["CustomerAttributes"] for r in comma] == [r["CustomerAttributes"] for r in rows]
    admin.config(legacy_attributes=True)
    legacy = call(
        sandbox,
        CHANGERS,
        params={**params, "CustomerAttributes": "Gender;FirstName;Age", "CustomerAttributesDelimiter": ";"},
    ).json()
    assert "CustomerAttributes" not in legacy[0]
    assert [r["CustomerAttribute"] for r in legacy] == [";".join(r["CustomerAttributes"]) for r in rows]
    bad_delim = call(
        sandbox, CHANGERS, params={**params, "CustomerAttributes": "Age", "CustomerAttributesDelimiter": "|"}
    )
    assert bad_delim.status_code == 400 and "CustomerAttributesDelimiter" in bad_delim.text
    unknown = call(sandbox, CHANGERS, params={**params, "CustomerAttributes": "Age;ShoeSize"})
    assert unknown.status_code == 400 and "ShoeSize" in unknown.text
    no_attr = call(sandbox, CHANGERS, params={**params, "ChangedCustomerAttribute": "ShoeSize"})
    assert no_attr.status_code == 400 and "ChangedCustomerAttribute" in no_attr.text


def test_date_validation(sandbox: Any) -> None:
    base = {"ChangedCustomerAttribute": "Country", "StartDate": "2024-01-01", "EndDate": "2024-01-31"}
    assert call(sandbox, CHANGERS, params=base).status_code == 200
    bad = call(sandbox, CHANGERS, params={**base, "StartDate": "2024/01/01"})
    assert bad.status_code == 400 and "StartDate" in bad.text and "YYYY-MM-DD" in bad.text
    missing = call(sandbox, CHANGERS, params={"ChangedCustomerAttribute": "Country", "StartDate": "2024-01-01"})
    assert missing.status_code == 400 and "EndDate" in missing.text
    bad_date = call(
        sandbox, "/current/actions/GetExecutedCampaignsByChannel", params={"ChannelID": 506, "Date": "01-01-2024"}
    )
    assert bad_date.status_code == 400 and "Date" in bad_date.text


def test_admin_changes_show_in_changers_window(sandbox: Any, admin: OptimoveAdmin) -> None:
    lud = dt.date.fromisoformat(admin.get_config()["last_data_update"])
    day = (lud + dt.timedelta(days=1)).isoformat()
    before = {cid: admin.customer(cid)["attributes"]["Country"] for cid in ("C0000010", "C0000020")}
    result = admin.change_customers(changes=[
        {"customer_id": "C0000010", "attributes": {"Country": "ZZ"}},
        {"customer_id": "C0000020", "attributes": {"Country": None, "FirstName": "Ann"}},
    ], date=day)  # fmt: skip
    assert result == {"date": day, "changed": ["C0000010", "C0000020"], "emptied": {"C0000020": ["Country"]}}
    assert admin.get_config()["last_data_update"] == day  # advanced to the change date
    assert call(sandbox, "/current/general/GetLastDataUpdate").json() == {"Date": day}
    params = {
        "ChangedCustomerAttribute": "Country",
        "StartDate": day,
        "EndDate": day,
        "CustomerAttributes": "FirstName",
    }
    rows = call(sandbox, CHANGERS, params=params).json()
    assert rows == [
        {"CustomerID": "C0000010", "InitialCustomerAttribute": before["C0000010"], "FinalCustomerAttribute": "ZZ",
         "CustomerAttributes": [admin.customer("C0000010")["attributes"]["FirstName"]]},
        {"CustomerID": "C0000020", "InitialCustomerAttribute": before["C0000020"], "FinalCustomerAttribute": "NULL",
         "CustomerAttributes": ["Ann"]},
    ]  # fmt: skip
    assert (
        call(sandbox, CHANGERS, params={**params, "EndDate": lud.isoformat(), "StartDate": lud.isoformat()}).json()
        == []
    )
    assert admin.customer("C0000020")["attributes"]["Country"] is None

    random = admin.change_customers(10, empty=3, attributes=["Segment", "City"], date=day)
    assert len(random["changed"]) == 10 and len(random["emptied"]) == 3
    seg = call(
        sandbox, CHANGERS, params={"ChangedCustomerAttribute": "Segment", "StartDate": day, "EndDate": day}
    ).json()
    city = call(sandbox, CHANGERS, params={"ChangedCustomerAttribute": "City", "StartDate": day, "EndDate": day}).json()
    assert {r["CustomerID"] for r in seg} | {r["CustomerID"] for r in city} == set(random["changed"])
    assert len(seg) + len(city) == 20  # each of the 10 changed both attributes (3 had one emptied)
    emptied_finals = [r for r in seg + city if r["FinalCustomerAttribute"] == "NULL"]
    assert len(emptied_finals) == 3
    with pytest.raises(OptimoveAdminError) as err:
        admin.change_customers(changes=[{"customer_id": "C0000001", "attributes": {"ShoeSize": 1}}])
    assert err.value.status == 400 and "ShoeSize" in err.value.body


def test_reset_restores_seed_and_determinism(sandbox: Any, admin: OptimoveAdmin) -> None:
    local = Dataset(seed=7, customers=1000)
    assert admin.customer("C0000042")["attributes"] == local.customer(41)
    admin.change_customers(changes=[{"customer_id": "C0000042", "attributes": {"FirstName": "Zed"}}])
    assert admin.customer("C0000042")["attributes"]["FirstName"] == "Zed"
    admin.reset()
    assert admin.customer("C0000042")["attributes"] == local.customer(41)
    first = admin.change_customers(5)
    admin.reset()
    assert admin.change_customers(5) == first  # same seed, same sequence -> same picks and values
    other = Dataset(seed=8, customers=1000)
    assert other.customer(41) != local.customer(41)
    assert Dataset(seed=7, customers=10).customer(3) == local.customer(3)  # values independent of the size
    with pytest.raises(OptimoveAdminError):
        admin.customer("C9999999")


def test_netmera_known_is_deterministic() -> None:
    ds = Dataset(seed=7, customers=1000)
    known = [ds.netmera_known(ds.customer_id(i)) for i in range(1000)]
    assert 0.92 < sum(known) / 1000 < 0.98
    assert known == [Dataset(seed=7, customers=1000).netmera_known(ds.customer_id(i)) for i in range(1000)]
    assert ds.netmera_known_many([ds.customer_id(i) for i in range(1000)]) == known
    assert not ds.netmera_known("C0001001") and not ds.netmera_known("nobody") and not ds.netmera_known("C00000001")


def test_page_at_one_million_customers() -> None:
    """A page deep into a 1M-customer dataset is computed by index, the same values as one customer at a time.

    (How fast that is belongs to the benchmarks, not here.)
    """
    ds = Dataset(seed=7, customers=1_000_000)
    rows = ds.rows(np.arange(500_000, 510_000), ds.attribute_names)
    ids, _ = ds.changers("Email", ds.base_date, ds.base_date)
    assert len(rows) == 10_000 and len(rows[0]) == 20 and 970_000 < ids.size < 990_000
    for offset in (0, 4_321, 9_999):
        assert dict(zip(ds.attribute_names, rows[offset], strict=True)) == ds.customer(500_000 + offset)


def test_export_csv_and_parquet(sandbox: Any, admin: OptimoveAdmin, tmp_path: Any) -> None:
    admin.change_customers(changes=[{"customer_id": "C0000003", "attributes": {"City": "Trabzon", "Gender": None}}])
    for name in ("customers.csv", "customers.parquet"):
        path = str(tmp_path / name)
        assert admin.export(path) == {"rows": 1000, "path": path}
        frame = pd.read_csv(path, dtype=str) if name.endswith(".csv") else pd.read_parquet(path)
        assert list(frame.columns) == ["CustomerID", *[a["name"] for a in admin.attributes()]]
        row = frame[frame["CustomerID"] == "C0000003"].iloc[0]
        assert row["City"] == "Trabzon" and pd.isna(row["Gender"])
    with pytest.raises(OptimoveAdminError):
        admin.export("relative.csv")


# ----------------------------------------------------------------------------------------------- metadata
def test_metadata_endpoints(sandbox: Any) -> None:
    attrs = call(sandbox, "/current/model/GetCustomerAttributeList").json()
    assert len(attrs) == 20 and set(attrs[0]) == {"RealFieldName", "Description"}
    assert {"FirstName", "Country", "Email", "Age", "LTV", "IsVIP", "BirthDate"} <= {a["RealFieldName"] for a in attrs}
    channels = call(sandbox, "/current/actions/GetExecutionChannels").json()
    assert {c["ChannelID"]: c["ChannelName"] for c in channels} == {
        504: "Email", 505: "SMS", 502: "Call Center", 506: "Push Notification", 510: "Web Push", 511: "In-Platform",
        459: "Netmera Push", 481: "Netmera Push (secondary)",
    }  # fmt: skip
    templates = call(sandbox, "/current/integrations/GetChannelTemplates", params={"ChannelID": 506}).json()
    assert templates[0] == {"TemplateID": 1, "TemplateName": "Welcome Push"}
    assert call(sandbox, "/current/integrations/GetChannelTemplates").status_code == 400
    details = call(sandbox, "/current/actions/GetCampaignDetails", params={"CampaignID": 1001}).json()
    assert set(details) == {
        "TestGroupSize", "ControlGroupSize", "Channels", "Tags", "TargetGroupID", "CampaignType", "Duration",
        "LeadTime", "Notes", "IsMultiChannel", "IsRecurrence", "Error",
    }  # fmt: skip
    assert details["Channels"] == [{"Id": 506}] and details["ControlGroupSize"] == 20
    missing = call(sandbox, "/current/actions/GetCampaignDetails", params={"CampaignID": 999})
    assert missing.status_code == 400 and "CampaignID" in missing.text


def test_listeners(sandbox: Any, admin: OptimoveAdmin) -> None:
    url = "http://127.0.0.1:9/optimove/event?app=1"
    body = {"EventTypeID": 13, "ListenerURL": quote(url, safe=""), "ChannelID": 506}
    r = call(sandbox, "/current/general/RegisterEventListener", method="POST", json=body)
    assert (r.status_code, r.content) == (200, b"")
    call(sandbox, "/current/general/RegisterEventListener", method="POST", json={"eventTypeId": 4, "listenerUrl": url})
    listed = call(sandbox, "/current/general/GetRegisteredEventListeners").json()
    assert {"EventTypeID": 13, "ListenerURL": url, "ChannelID": 506} in listed and len(listed) == 2
    assert admin.listeners() == listed
    bad = call(sandbox, "/current/general/RegisterEventListener", method="POST", json={"EventTypeID": 13})
    assert bad.status_code == 400 and "ListenerURL" in bad.text
    call(sandbox, "/current/general/UnregisterEventListener", method="POST", json={"EventTypeID": 13, "ChannelID": 506})
    assert [li["EventTypeID"] for li in admin.listeners()] == [4]


def test_update_campaign_metrics(sandbox: Any, admin: OptimoveAdmin) -> None:
    row = {"ChannelID": 506, "CampaignID": 1001, "TemplateID": 1, "MetricID": 0, "MetricValue": 180}
    path = "/current/integrations/UpdateCampaignMetrics"
    r = call(sandbox, path, method="POST", json=[row, {**row, "MetricID": 9, "MetricValue": 2}])
    assert (r.status_code, r.content) == (200, b"")
    assert [(m["MetricID"], m["MetricValue"]) for m in admin.metrics()] == [(0, 180), (9, 2)]
    too_many = call(sandbox, path, method="POST", json=[row] * 101)
    assert too_many.status_code == 400
    assert call(sandbox, path, method="POST", json=[{"ChannelID": 506}]).status_code == 400
    assert call(sandbox, path, method="POST", json=row).status_code == 400  # must be an array
    assert len(admin.metrics()) == 2


# ----------------------------------------------------------------------------------------------- campaigns
def test_campaign_rows_control_and_duplicates(sandbox: Any, admin: OptimoveAdmin) -> None:
    today = dt.date.today().isoformat()
    created = admin.create_campaign(recipients=50, control_fraction=0.2, duplicates=5, templates=[2, 77],
                                    missing_data_fraction=0.1, scheduled_time=f"{today} 12:00:00")  # fmt: skip
    cid = created["campaign_id"]
    assert cid == 1004 and created["rows"] == 55
    params = {"CampaignID": cid, "ChannelID": 506, "CustomerAttributes": "FirstName;Country", "$top": 20}
    rows = [r for s in (0, 20, 40, 60) for r in call(sandbox, EXEC, params={**params, "$skip": s}).json()]
    assert len(rows) == 55
    assert list(rows[0]) == ["CustomerID", "ActionID", "ChannelID", "TemplateID", "TemplateName", "ScheduleTime",
                             "PromoCode", "CustomerAttributes"]  # fmt: skip
    distinct = {r["CustomerID"]: r for r in rows}
    assert len(distinct) == 50
    assert sum(1 for r in distinct.values() if r["ActionID"] == 1) == 10
    assert {r["TemplateID"] for r in rows} <= {2, 77} and all(r["ScheduleTime"] == f"{today} 12:00:00" for r in rows)
    assert sum(1 for r in distinct.values() if r["CustomerAttributes"] == ["NULL", "NULL"]) == 5
    names = {t["TemplateID"]: t["TemplateName"] for t in call(sandbox, "/current/integrations/GetChannelTemplates",
                                                               params={"ChannelID": 506}).json()}  # fmt: skip
    assert names[77] == "Template 77"
    details = call(sandbox, "/current/actions/GetCampaignDetails", params={"CampaignID": cid}).json()
    assert (details["TestGroupSize"], details["ControlGroupSize"]) == (40, 10)
    executed = call(sandbox, "/current/actions/GetExecutedCampaignsByChannel", params={"ChannelID": 506, "Date": today})
    assert {"CampaignID": cid} in executed.json()
    assert call(sandbox, EXEC, params={**params, "ChannelID": 505}).json() == []
    admin.config(schedule_time_key="ScheduledTime")
    assert "ScheduledTime" in call(sandbox, EXEC, params=params).json()[0]
    with pytest.raises(OptimoveAdminError) as err:
        admin.create_campaign(campaign_id=cid)
    assert err.value.status == 409
    assert [c["campaign_id"] for c in admin.campaigns()] == [1001, 1002, 1003, cid]


def test_seeded_campaigns(sandbox: Any) -> None:
    yday = (dt.date.today() - dt.timedelta(days=1)).isoformat()
    executed = call(sandbox, "/current/actions/GetExecutedCampaignsByChannel", params={"ChannelID": 506, "Date": yday})
    assert executed.json() == [{"CampaignID": 1001}]
    rows = call(sandbox, EXEC, params={"CampaignID": 1001, "ChannelID": 506}).json()
    assert len(rows) == 200 and any(r["ActionID"] == 1 for r in rows)
    dup_rows = call(sandbox, EXEC, params={"CampaignID": 1002, "ChannelID": 506}).json()
    assert len(dup_rows) == 103 and len({r["CustomerID"] for r in dup_rows}) == 100


def test_cancel_window(sandbox: Any, admin: OptimoveAdmin) -> None:
    path = "/current/customers/GetCanceledCampaignCustomers"
    assert call(sandbox, path, params={"CampaignID": 1001}).json() == []
    assert admin.cancel_campaign(1001, customers=5)["cancelled"] == 5
    rows = call(sandbox, path, params={"CampaignID": 1001}).json()
    assert len(rows) == 5 and set(rows[0]) == {"CustomerID", "ActionID", "PromoCode"}
    assert all(r["ActionID"] != "1" and isinstance(r["ActionID"], str) for r in rows)
    assert admin.cancel_campaign(1001)["cancelled"] == 180  # every non-control recipient
    admin.config(cancel_window_seconds=0.3)
    time.sleep(0.4)
    assert call(sandbox, path, params={"CampaignID": 1001}).json() == []  # only available for a while


# ----------------------------------------------------------------------------------------------- webhooks
class _Listener(http.server.BaseHTTPRequestHandler):
    received: list[dict[str, Any]] = []

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length", 0))
        _Listener.received.append(
            {"path": self.path, "headers": dict(self.headers), "body": json.loads(self.rfile.read(length))}
        )
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        return


@pytest.fixture
def listener() -> Iterator[str]:
    _Listener.received = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Listener)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_webhooks_fire_to_listeners(sandbox: Any, admin: OptimoveAdmin, listener: str) -> None:
    register = {"EventTypeID": 13, "ListenerURL": quote(f"{listener}/bulk", safe=""), "ChannelID": 506}
    assert call(sandbox, "/current/general/RegisterEventListener", method="POST", json=register).ok
    other = {"EventTypeID": 13, "ListenerURL": f"{listener}/sms", "ChannelID": 505}
    assert call(sandbox, "/current/general/RegisterEventListener", method="POST", json=other).ok
    out = admin.fire_webhook(13, 1001, headers={"X-netmera-api-key": "secret"})
    assert out["deliveries"] == [{"url": f"{listener}/bulk", "status": 200, "error": None}]
    got = _Listener.received[-1]
    assert got["path"] == "/bulk"
    assert got["headers"]["Content-Type"] == "application/json" and got["headers"]["X-netmera-api-key"] == "secret"
    assert set(got["body"]) == {"eventTypeId", "timeStamp", "campaignId", "channelId"}
    assert (got["body"]["eventTypeId"], got["body"]["campaignId"], got["body"]["channelId"]) == (13, 1001, 506)
    dt.datetime.strptime(got["body"]["timeStamp"], "%Y-%m-%d %H:%M:%S")

    admin.fire_webhook(4, 1001, url=f"{listener}/direct", style="optimove")
    assert set(_Listener.received[-1]["body"]) == {"EventTypeID", "TimeStamp", "CampaignID", "ChannelID"}
    single = admin.fire_webhook(11, 1001, url=f"{listener}/rt", customer_id="C0000007", template_id=2)
    body = _Listener.received[-1]["body"]
    assert body["customerID"] == "C0000007" and body["templateID"] == 2 and body["promoCode"] == "PUSH10"
    assert single["deliveries"][0]["status"] == 200
    dead = admin.fire_webhook(13, 1001, url="http://127.0.0.1:9/nothing")
    assert dead["deliveries"][0]["status"] is None and dead["deliveries"][0]["error"]
    assert admin.fire_webhook(1)["deliveries"] == []  # nobody listens to event 1
    again = admin.fire_webhook(13, 1001, url=f"{listener}/direct", time_stamp="2022-09-19 05:04:54")
    assert again["body"]["timeStamp"] == "2022-09-19 05:04:54"  # a repeat of the same event
    with pytest.raises(requests.HTTPError):
        admin.fire_webhook(13, 1001, url=f"{listener}/direct", time_stamp="2022-09-19T05:04:54Z")


def test_templates_send_details_and_bodies(sandbox: Any, admin: OptimoveAdmin) -> None:
    add = "/current/integrations/AddChannelTemplates"
    r = call(sandbox, add, method="POST", params={"ChannelID": 506}, json=[{"TemplateID": 90, "TemplateName": "New"}])
    assert (r.status_code, r.content) == (200, b"")
    listed = call(sandbox, "/current/integrations/GetChannelTemplates", params={"ChannelID": 506}).json()
    assert {"TemplateID": 90, "TemplateName": "New"} in listed
    too_many = [{"TemplateID": i, "TemplateName": f"T{i}"} for i in range(101)]
    assert call(sandbox, add, method="POST", params={"ChannelID": 506}, json=too_many).status_code == 400
    text_body = call(
        sandbox,
        add,
        method="POST",
        params={"ChannelID": 506},
        data=json.dumps([{"TemplateID": 91, "TemplateName": "x"}]),
    )
    assert text_body.status_code == 400 and "Content-Type" in text_body.text  # JSON content type is required
    delete = [{"ChannelID": 506, "TemplateID": 90}]
    assert call(sandbox, "/current/integrations/DeleteChannelTemplates", method="POST", json=delete).ok
    listed = call(sandbox, "/current/integrations/GetChannelTemplates", params={"ChannelID": 506}).json()
    assert all(t["TemplateID"] != 90 for t in listed)

    send = call(
        sandbox,
        "/current/customers/GetCustomerSendDetailsByChannel",
        params={"ChannelID": 506, "CampaignID": 1001, "CustomerAttributes": "Country"},
    ).json()
    assert len(send) == 180 and set(send[0]) == {"CustomerID", "TemplateID", "ScheduledTime", "CustomerAttributes"}
    admin.config(legacy_attributes=True)
    created = admin.create_campaign(recipients=10, control_fraction=0.0, missing_data_fraction=1.0)
    rows = call(
        sandbox,
        EXEC,
        params={"CampaignID": created["campaign_id"], "ChannelID": 506, "CustomerAttributes": "FirstName;Age"},
    ).json()
    assert {r["CustomerAttribute"] for r in rows} == {"NULL,NULL"}  # legacy string, default delimiter ","
    assert requests.get(sandbox.optimove_url + "/_sandbox/nothing", timeout=5).status_code == 404


def test_admin_validation(sandbox: Any, admin: OptimoveAdmin) -> None:
    for bad in ({"no_such_knob": 1}, {"rate_limit": {"calls": 0, "period": 1}}, {"schedule_time_key": "Time"}):
        r = requests.post(sandbox.optimove_url + "/_sandbox/config", json=bad, timeout=5)
        assert r.status_code == 400, bad
    assert (
        "no_such_knob"
        in requests.post(sandbox.optimove_url + "/_sandbox/config", json={"no_such_knob": 1}, timeout=5).text
    )
    r = requests.post(sandbox.optimove_url + "/_sandbox/campaigns", json={"recipients": 5, "colour": "red"}, timeout=5)
    assert r.status_code == 400 and "colour" in r.text
    config = admin.get_config()
    assert config["rate_limit"] == {"calls": 50, "period": 10} and config["max_page_size"] == 10000
    assert config["token_ttl_seconds"] == 1200 and config["login_min_interval"] == 1.0

"""OptimoveClient: pure parsing checks, then the real Optimove sandbox over HTTP.

Sandbox tests assert exact request counts from ``/_sandbox/requests`` (per endpoint and status), so
an extra page, a missing retry or a needless login makes them fail.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import threading
import time
from typing import Any

import pytest
from optimove_netmera.http import AuthError, ClientError, RateLimitedError, RateLimiter, RetryPolicy
from optimove_netmera.optimove import (
    CampaignDetails,
    CampaignMetric,
    ExecutionDetail,
    OptimoveClient,
)
from optimove_netmera.optimove.models import AttributeChange, ChangerRow, decode_changers_page, parse_attributes

FAST_RETRY = RetryPolicy(max_attempts=6, base_delay=0.01, max_delay=0.05)
LOGIN = "POST /current/general/login"
LAST = "GET /current/general/GetLastDataUpdate"
DETAILS = "GET /current/customers/GetCustomerExecutionDetailsByCampaign"
ATTRS = ["FirstName", "Country", "Email"]

# --------------------------------------------------------------------------------------------------
# pure


def test_exactly_one_auth_mode_and_argument_checks() -> None:
    with pytest.raises(ValueError):
        OptimoveClient("http://x")
    with pytest.raises(ValueError):
        OptimoveClient("http://x", api_key="k", username="u", password="p")
    with pytest.raises(ValueError):
        OptimoveClient("http://x", username="u")
    with pytest.raises(ValueError):
        OptimoveClient("http://x", api_key="k", page_size=10_001)
    with pytest.raises(ValueError):
        OptimoveClient("http://x", api_key="k", attribute_delimiter="&")
    for base in ("http://x", "http://x/", "http://x/current", "http://x/current/"):
        assert OptimoveClient(base, api_key="k").base_url == "http://x"


def test_parse_attributes_every_shape() -> None:
    names = ["A", "B", "C"]
    assert parse_attributes({"CustomerAttributes": ["1", "NULL", "x"]}, names, ";") == {"A": "1", "B": None, "C": "x"}
    assert parse_attributes({"CustomerAttribute": "1;NULL;x"}, names, ";") == {"A": "1", "B": None, "C": "x"}
    assert parse_attributes({"customerattributes": "1,,x"}, names, ",") == {"A": "1", "B": "", "C": "x"}
    assert parse_attributes({"CustomerAttribute": "a;b"}, ["Only"], ";") == {"Only": "a;b"}
    assert parse_attributes({"CustomerAttributes": {"a": 1, "c": "NULL"}}, names, ";") == {"A": 1, "B": None, "C": None}
    assert parse_attributes({}, names, ";") is None
    assert parse_attributes({}, [], ";") == {}
    with pytest.raises(ValueError, match="expected 3 attribute values, got 2"):
        parse_attributes({"CustomerAttributes": ["1", "2"]}, names, ";")


def test_changers_page_typed_fast_path_and_generic_fallback() -> None:
    names = ["A", "B"]

    def parsed(body: bytes, skip: frozenset[str] = frozenset()) -> list[AttributeChange]:
        page = decode_changers_page(body)
        build = AttributeChange.from_typed_rows if isinstance(page[0], ChangerRow) else AttributeChange.from_rows
        return build(page, "A", names, ";", skip)

    documented = (
        b'[{"CustomerID":"C1","InitialCustomerAttribute":"NULL","FinalCustomerAttribute":"x",'
        b'"CustomerAttributes":["x","NULL"]},'
        b'{"CustomerID":7,"InitialCustomerAttribute":"y","FinalCustomerAttribute":"NULL","CustomerAttributes":null}]'
    )
    page = decode_changers_page(documented)
    assert all(isinstance(r, ChangerRow) for r in page), "the documented spelling takes the typed path"
    assert parsed(documented) == [
        AttributeChange("C1", "A", None, "x", {"A": "x", "B": None}),
        AttributeChange("7", "A", "y", None, {}),
    ]
    assert parsed(documented, frozenset({"C1"})) == [AttributeChange("7", "A", "y", None, {})]
    # other spellings (and the legacy delimited string) are read generically, to the same result
    legacy = (
        b'[{"customerId":"C1","initialCustomerAttribute":"NULL",'
        b'"FinalCustomerAttribute":"x","CustomerAttribute":"x;NULL"}]'
    )
    assert isinstance(decode_changers_page(legacy)[0], dict)
    assert parsed(legacy) == [AttributeChange("C1", "A", None, "x", {"A": "x", "B": None})]
    # the same errors as before for malformed pages
    with pytest.raises(ValueError, match="row without CustomerID"):
        parsed(b'[{"CustomerID":"","CustomerAttributes":["1","2"]}]')
    with pytest.raises(ValueError, match="expected 2 attribute values, got 1"):
        parsed(b'[{"CustomerID":"C1","CustomerAttributes":["1"]}]')
    assert decode_changers_page(b"[1, 2]") == [1, 2], "not objects: left for the caller to reject"
    with pytest.raises(ValueError):
        decode_changers_page(b'[{"CustomerID": ')


def test_execution_detail_is_case_insensitive_and_reads_both_time_keys() -> None:
    row = {
        "customerid": "C1",
        "ActionId": 1,
        "ChannelId": "506",
        "TemplateID": 3,
        "TemplateName": "T",
        "ScheduledTime": "2026-03-01 10:30",
        "PromoCode": ["A", "B"],
        "CustomerAttributes": ["Ann"],
    }
    detail = ExecutionDetail.from_row(row, ["FirstName"], ";")
    assert detail.customer_id == "C1" and detail.channel_id == 506 and detail.is_control
    assert detail.scheduled_time == dt.datetime(2026, 3, 1, 10, 30)
    assert detail.promo_code == "A,B" and detail.attributes == {"FirstName": "Ann"}
    other = ExecutionDetail.from_row(
        {"CustomerID": "C2", "ScheduleTime": "2026-03-01 10:30:05", "PromoCode": ""}, [], ";"
    )
    assert other.scheduled_time == dt.datetime(2026, 3, 1, 10, 30, 5) and other.promo_code is None

    expected = ExecutionDetail(  # the dataclass's own constructor: every field, nothing else
        customer_id="C1",
        action_id=1,
        channel_id=506,
        template_id=3,
        template_name="T",
        scheduled_time=dt.datetime(2026, 3, 1, 10, 30),
        promo_code="A,B",
        recipient_group_id=None,
        attributes={"FirstName": "Ann"},
    )
    assert detail == expected and vars(detail) == vars(expected)
    with pytest.raises(dataclasses.FrozenInstanceError):
        detail.customer_id = "C9"  # type: ignore[misc]


def test_campaign_details_parsing() -> None:
    details = CampaignDetails.from_row(
        {"Channels": [{"Id": 506}, {"id": "505"}], "IsMultiChannel": "false", "IsRecurrence": True, "Duration": "7"},
        42,
    )
    assert details.campaign_id == 42 and details.channels == [506, 505]
    assert details.is_multichannel is False and details.is_recurrence is True and details.duration == 7


# --------------------------------------------------------------------------------------------------
# sandbox fixtures


@pytest.fixture
def box(sandbox_reset: Any) -> Any:
    return sandbox_reset


@pytest.fixture
def admin(box: Any) -> Any:
    return box.admin.optimove


def make_client(box: Any, *, login: bool = False, **kw: Any) -> OptimoveClient:
    """A client with its own 50/10 limiter (the sandbox's windows are emptied per test, so is this one)."""
    kw.setdefault("rate_limit", RateLimiter(50, 10.0))
    kw.setdefault("retry", FAST_RETRY)
    if login:
        return OptimoveClient(box.optimove_url, username=box.optimove_user, password=box.optimove_password, **kw)
    return OptimoveClient(box.optimove_url, api_key=box.optimove_api_key, **kw)


def counts(admin: Any, endpoint: str) -> dict[str, int]:
    return admin.requests()["counts"].get(endpoint, {})


# --------------------------------------------------------------------------------------------------
# auth


def test_api_key_mode(box: Any, admin: Any) -> None:
    admin.config(last_data_update="2026-01-15")
    client = make_client(box)
    assert client.get_last_data_update() == dt.date(2026, 1, 15)
    assert counts(admin, LAST) == {"200": 1}
    assert counts(admin, LOGIN) == {}


def test_login_mode(box: Any, admin: Any) -> None:
    admin.config(last_data_update="2026-01-16")
    client = make_client(box, login=True)
    assert client.get_last_data_update() == dt.date(2026, 1, 16)
    assert client.get_last_data_update() == dt.date(2026, 1, 16)
    assert counts(admin, LOGIN) == {"200": 1}, "one login, the token is reused"
    assert counts(admin, LAST) == {"200": 2}


def test_bad_credentials_are_auth_errors_without_secrets(box: Any, admin: Any) -> None:
    wrong_password = "wrong-password-123"
    client = OptimoveClient(box.optimove_url, username=box.optimove_user, password=wrong_password, retry=FAST_RETRY)
    with pytest.raises(AuthError) as info:
        client.get_last_data_update()
    assert info.value.status == 401 and info.value.endpoint == LOGIN
    assert wrong_password not in str(info.value) and box.optimove_password not in str(info.value)
    assert counts(admin, LOGIN) == {"401": 1}, "a 401 is not retried"
    assert counts(admin, LAST) == {}

    wrong_key = "wrong-optimove-key-456"
    with pytest.raises(AuthError) as info2:
        OptimoveClient(box.optimove_url, api_key=wrong_key, retry=FAST_RETRY).get_last_data_update()
    assert info2.value.status == 401 and wrong_key not in str(info2.value)
    assert counts(admin, LAST) == {"401": 1}


def test_token_expiry_relogs_in_transparently(box: Any, admin: Any) -> None:
    client = make_client(box, login=True)
    client.get_last_data_update()
    first_token = client._token
    assert admin.expire_tokens() >= 1
    client.get_last_data_update()  # 403 Authorization-Token Expired -> login -> same call again
    assert client._token and client._token != first_token
    assert counts(admin, LOGIN) == {"200": 2}
    assert counts(admin, LAST) == {"200": 2, "403": 1}
    assert client.stats.reauths == 1 and client.stats.retries == 0


def test_concurrent_expiry_logs_in_once(box: Any, admin: Any) -> None:
    client = make_client(box, login=True)
    client.get_last_data_update()
    admin.expire_tokens()
    errors: list[BaseException] = []

    def call() -> None:
        try:
            client.get_last_data_update()
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=call) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert counts(admin, LOGIN) == {"200": 2}, "threads share one re-login"
    assert counts(admin, LAST).get("200") == 5


def test_proactive_relogin_after_idle(box: Any, admin: Any) -> None:
    admin.config(token_ttl_seconds=1)
    client = make_client(box, login=True, token_ttl=1.0)
    client.get_last_data_update()
    time.sleep(1.3)
    client.get_last_data_update()
    assert counts(admin, LOGIN) == {"200": 2}
    assert counts(admin, LAST) == {"200": 2}, "no 403: the idle token was replaced before use"


def test_token_and_password_never_in_error_text(box: Any, admin: Any) -> None:
    client = make_client(box, login=True)
    with pytest.raises(ClientError) as info:
        client.get_campaign_details(987654)
    token = client._token
    assert token
    text = str(info.value) + repr(info.value)
    assert token not in text and box.optimove_password not in text
    assert "GET /current/actions/GetCampaignDetails" in text and "HTTP 400" in text
    assert "987654" in text  # the API's own message is kept
    assert counts(admin, "GET /current/actions/GetCampaignDetails") == {"400": 1}, "a 400 is not retried"


# --------------------------------------------------------------------------------------------------
# paging


def campaign(admin: Any, recipients: int, **kw: Any) -> int:
    kw.setdefault("control_fraction", 0.0)
    return admin.create_campaign(recipients=recipients, channel_id=506, **kw)["campaign_id"]


@pytest.mark.parametrize(
    ("recipients", "pages", "requests"),
    [
        (0, [], 1),  # empty: one request, no page
        (20, [5, 5, 5, 5], 5),  # exact multiple: the 5th request comes back empty
        (23, [5, 5, 5, 5, 3], 5),  # short last page: stop without asking again
        (4, [4], 1),
    ],
)
def test_paging_edges(box: Any, admin: Any, recipients: int, pages: list[int], requests: int) -> None:
    cid = campaign(admin, recipients)
    client = make_client(box, page_size=5)
    got = list(client.iter_campaign_recipients(cid, 506, ATTRS))
    assert [len(p) for p in got] == pages
    rows = [r for p in got for r in p]
    assert len({r.customer_id for r in rows}) == recipients
    assert all(set(r.attributes or {}) == set(ATTRS) for r in rows)
    assert counts(admin, DETAILS) == {"200": requests}


def test_recipients_match_sandbox_values_and_control_group(box: Any, admin: Any) -> None:
    cid = campaign(admin, 40, control_fraction=0.25)
    client = make_client(box, page_size=7)
    rows = [r for page in client.iter_campaign_recipients(cid, 506, ATTRS) for r in page]
    assert len(rows) == 40 and sum(r.is_control for r in rows) == 10
    assert all(r.channel_id == 506 and r.template_id is not None and r.scheduled_time for r in rows)
    for r in rows[:5]:
        expected = admin.customer(r.customer_id)["attributes"]
        assert r.attributes == {name: expected[name] for name in ATTRS}


def test_legacy_attribute_string_and_scheduled_time_key(box: Any, admin: Any) -> None:
    cid = campaign(admin, 12, missing_data_fraction=0.25)
    client = make_client(box, page_size=5)
    modern = [r for p in client.iter_campaign_recipients(cid, 506, ATTRS) for r in p]
    admin.config(legacy_attributes=True, schedule_time_key="ScheduledTime")
    legacy = [r for p in client.iter_campaign_recipients(cid, 506, ATTRS) for r in p]
    assert modern == legacy
    assert sum(1 for r in modern if all(v is None for v in (r.attributes or {}).values())) == 3  # "NULL" -> None
    assert all(r.scheduled_time is not None for r in legacy)


def test_attribute_changers(box: Any, admin: Any) -> None:
    day = admin.config()["last_data_update"]
    change = admin.change_customers(9, empty=3, attributes=["FirstName"], date=day)
    client = make_client(box, page_size=4)
    pages = list(client.iter_customer_attribute_changers("FirstName", day, day, ["FirstName", "Country"]))
    rows = [r for p in pages for r in p]
    assert sorted(r.customer_id for r in rows) == sorted(change["changed"])
    assert [len(p) for p in pages] == [4, 4, 1]
    emptied = {cid for cid, names in change["emptied"].items() if "FirstName" in names}
    assert len(emptied) == 3
    for r in rows:
        assert r.changed_attribute == "FirstName"
        assert (r.attributes["FirstName"] is None) == (r.customer_id in emptied)
        assert r.final_value == r.attributes["FirstName"]
    assert counts(admin, "GET /current/customers/GetCustomerAttributeChangers") == {"200": 3}
    # Customers already handled are dropped unparsed, and paging still walks every page.
    skip = set(sorted(change["changed"])[:5])
    pages = client.iter_customer_attribute_changers("FirstName", day, day, ["FirstName"], skip_customers=skip)
    rest = [r for p in pages for r in p]
    assert sorted(r.customer_id for r in rest) == sorted(set(change["changed"]) - skip)
    assert counts(admin, "GET /current/customers/GetCustomerAttributeChangers") == {"200": 6}
    # The legacy delimited string is read through the generic path, to the same rows.
    admin.config(legacy_attributes=True)
    legacy = [
        r for p in client.iter_customer_attribute_changers("FirstName", day, day, ["FirstName", "Country"]) for r in p
    ]
    assert legacy == rows


def test_page_size_never_exceeds_the_server_cap(box: Any, admin: Any) -> None:
    admin.config(max_page_size=10_000)
    cid = campaign(admin, 1000)
    rows = [r for p in make_client(box).iter_campaign_recipients(cid, 506, []) for r in p]
    assert len(rows) == 1000 and counts(admin, DETAILS) == {"200": 1}


# --------------------------------------------------------------------------------------------------
# other typed wrappers


def test_metadata_wrappers(box: Any, admin: Any) -> None:
    client = make_client(box)
    names = [a.name for a in client.get_customer_attribute_list()]
    assert {"FirstName", "Country", "Email"} <= set(names)
    channels = {c.channel_id: c.name for c in client.get_execution_channels()}
    assert channels[506] == "Push Notification"
    assert client.get_channel_templates(506)
    today = dt.date.today()
    cid = campaign(admin, 10, date=today.isoformat())
    assert cid in client.get_executed_campaigns_by_channel(506, today)
    details = client.get_campaign_details(cid)
    assert details.campaign_id == cid and details.channels == [506]


def test_canceled_customers(box: Any, admin: Any) -> None:
    cid = campaign(admin, 30)
    admin.cancel_campaign(cid, customers=7)
    rows = make_client(box).get_canceled_campaign_customers(cid)
    assert len(rows) == 7 and len({r.customer_id for r in rows}) == 7


def test_update_campaign_metrics_in_chunks_of_100(box: Any, admin: Any) -> None:
    rows = [
        CampaignMetric(campaign_id=1, channel_id=506, template_id=1, metric_id=0, metric_value=i) for i in range(250)
    ]
    assert make_client(box).update_campaign_metrics(rows) == 250
    assert counts(admin, "POST /current/integrations/UpdateCampaignMetrics") == {"200": 3}
    assert len(admin.metrics()) == 250


def test_register_event_listener(box: Any, admin: Any) -> None:
    client = make_client(box)
    client.register_event_listener(13, "https://example.test/rest/optimove/event/app?x=1", channel_id=506)
    client.register_event_listener(4, "https://example.test/rest/optimove/event/app")
    listeners = {(li["EventTypeID"], li["ChannelID"]): li["ListenerURL"] for li in admin.listeners()}
    assert listeners[(13, 506)] == "https://example.test/rest/optimove/event/app?x=1"
    assert (4, None) in listeners


# --------------------------------------------------------------------------------------------------
# pacing and retries


def test_limiter_keeps_a_burst_of_200_calls_free_of_429s(box: Any, admin: Any) -> None:
    calls, period = 20, 1.0
    admin.config(rate_limit={"calls": calls, "period": period})
    client = make_client(box, rate_limit=RateLimiter(calls, period), retry=RetryPolicy(max_attempts=1))
    errors: list[BaseException] = []

    def worker(n: int) -> None:
        try:
            for _ in range(n):
                client.get_last_data_update()
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(50,)) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[:1]
    assert counts(admin, LAST) == {"200": 200}, "zero 429s counted by the sandbox"
    assert client.stats.rate_limited == 0
    assert client.stats.throttled > 0, "the limiter did the pacing, not luck"
    # how close to the ceiling it runs is a benchmark (tests/perf/bench_clients.py), not a test


def test_backoff_through_429_retry_after_5xx_and_reset(box: Any, admin: Any) -> None:
    endpoint = "/current/general/GetLastDataUpdate"
    admin.set_faults(
        [
            {"endpoint": endpoint, "storm_429": 2, "retry_after": 1},
            {"endpoint": endpoint, "error_rate": 1.0, "error_status": 503, "count": 1},
            {"endpoint": endpoint, "reset_rate": 1.0, "count": 1},
        ]
    )
    client = make_client(box)
    sleeps: list[float] = []
    client._sleep = sleeps.append  # the retry loop's sleep, recorded instead of slept
    client.get_last_data_update()
    assert sleeps[:2] == [1.0, 1.0], "Retry-After: 1 honoured twice"
    assert all(s < 1.0 for s in sleeps[2:]), "the 503 and the reset back off by the (fast) policy"
    assert counts(admin, LAST) == {"429": 2, "503": 1, "reset": 1, "200": 1}
    stats = client.stats.snapshot()
    assert stats["retries"] == 4 and stats["rate_limited"] == 2
    assert stats["errors"] == {"429": 2, "503": 1, "transport": 1}


def test_429_without_retry_after_backs_off_then_gives_up(box: Any, admin: Any) -> None:
    admin.set_faults([{"endpoint": "/current/general/GetLastDataUpdate", "storm_429": 10}])
    client = make_client(box, retry=RetryPolicy(max_attempts=3, base_delay=0.01, max_delay=0.02))
    with pytest.raises(RateLimitedError) as info:
        client.get_last_data_update()
    assert info.value.status == 429 and info.value.attempts == 3
    assert "exceeded the rate limit" in str(info.value)
    assert counts(admin, LAST) == {"429": 3}


def test_login_rate_limit_is_respected(box: Any, admin: Any) -> None:
    first = make_client(box, login=True)
    second = make_client(box, login=True)
    first.get_last_data_update()
    second.get_last_data_update()  # a second login within 1 s would be a 429: the login limiter waits
    assert counts(admin, LOGIN) == {"200": 2}

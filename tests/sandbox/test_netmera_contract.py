"""Contract tests for the Netmera sandbox, over real HTTP against the ``sandbox`` subprocess.

Every request a test means to be valid is first checked against ``netmera-rest-api.yaml`` (request schema and
query parameters), and every response the sandbox gives is checked against the documented response of that
operation: its schema, ``no body at all`` where the spec says so, or the ``{code, error}`` envelope / RFC 9457
problem detail for errors. ``registerUsers`` is not in the spec; its responses are checked against the
reference (empty 200, ``{code, error}`` errors).
"""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
import requests
from optimove_netmera.sandbox.netmera_admin import NetmeraAdmin
from optimove_netmera.sandbox.spec import NetmeraSpec, SpecViolation, load_spec

REST = "/rest/3.0"
_NO_BODY = object()
_NOT_IN_SPEC = {"registerUsers": ("post", f"{REST}/registerUsers")}


class Netmera:
    """Calls the sandbox's real endpoints and checks both directions against the spec."""

    def __init__(self, base_url: str, api_key: str, spec: NetmeraSpec) -> None:
        self.base_url = base_url
        self.api_key = api_key
        self.spec = spec
        self.session = requests.Session()

    def route(self, op: str) -> tuple[str, str]:
        if op in _NOT_IN_SPEC:
            return _NOT_IN_SPEC[op]
        method, path, _ = self.spec.operation(op)
        return method, path

    def call(
        self,
        op: str,
        body: Any = _NO_BODY,
        *,
        params: dict[str, Any] | None = None,
        raw: bytes | None = None,
        headers: dict[str, str] | None = None,
        valid_request: bool = True,
    ) -> requests.Response:
        """Send ``body`` (JSON) or ``raw`` bytes to ``op``; validate request (if meant valid) and response."""
        method, path = self.route(op)
        in_spec = op not in _NOT_IN_SPEC
        if valid_request and in_spec:
            if body is not _NO_BODY:
                self.spec.validate_request(op, body)
            if params is not None:
                self.spec.validate_query(op, params)
        sent = {"X-netmera-api-key": self.api_key, "Content-Type": "application/json"}
        sent.update(headers or {})
        sent = {k: v for k, v in sent.items() if v is not None}
        data = raw if raw is not None else (None if body is _NO_BODY else json.dumps(body).encode())
        resp = self.session.request(
            method.upper(), self.base_url + path, data=data, params=params, headers=sent, timeout=30
        )
        if in_spec:
            self.spec.check(op, resp)
        elif resp.status_code >= 400:
            self.spec.validate_error(resp.content, resp.headers.get("content-type"))
        else:
            assert resp.content == b"", f"{op} must answer 200 with no body"
        return resp


def error_of(resp: requests.Response) -> tuple[int, int, str]:
    body = resp.json()
    return resp.status_code, body["code"], body["error"]


def assert_no_body(resp: requests.Response) -> None:
    assert resp.status_code == 200, resp.text
    assert resp.content == b""
    assert resp.headers.get("content-length") == "0"
    assert "content-type" not in resp.headers


# ----------------------------------------------------------------------------------------------------------------
# fixtures


@pytest.fixture(scope="module")
def spec() -> NetmeraSpec:
    return load_spec()


@pytest.fixture(scope="module")
def admin(sandbox: Any) -> NetmeraAdmin:
    return NetmeraAdmin(sandbox.netmera_url)


@pytest.fixture(scope="module")
def users(sandbox: Any, admin: NetmeraAdmin) -> dict[str, list[str]]:
    """Seeded customers the dataset marks as Netmera users (``known``) and ones it does not (``unknown``)."""
    known: list[str] = []
    unknown: list[str] = []
    for i in range(1, 400):
        ext_id = f"C{i:07d}"
        (known if admin.user(ext_id) else unknown).append(ext_id)
        if len(known) >= 20 and len(unknown) >= 3:
            break
    assert len(known) >= 20 and len(unknown) >= 3
    return {"known": known, "unknown": unknown}


@pytest.fixture(autouse=True)
def _fresh(sandbox_reset: Any) -> None:
    """Every test starts from the seed's state."""


@pytest.fixture
def api(sandbox: Any, spec: NetmeraSpec) -> Netmera:
    return Netmera(sandbox.netmera_url, sandbox.netmera_api_key, spec)


# ----------------------------------------------------------------------------------------------------------------
# auth, framework errors, JSON


@pytest.mark.parametrize(
    ("op", "body", "params"),
    [
        ("setProfileAttributes", [{"extId": "C0000001", "profile": {"name": "A"}}], None),
        ("sendNotification", {"notificationKey": "101", "target": {"extId": "C0000001"}}, None),
        ("getProfileAttributes", _NO_BODY, {"extId": "C0000001"}),
        ("getPushStats", _NO_BODY, {"notificationKey": 101}),
    ],
)
@pytest.mark.parametrize("key", [None, "wrong-key"])
def test_missing_or_bad_api_key_is_2010(api: Netmera, op: str, body: Any, params: Any, key: str | None) -> None:
    resp = api.call(op, body, params=params, headers={"X-netmera-api-key": key})
    assert error_of(resp) == (403, 2010, "API key is invalid")


def test_api_key_header_name_is_case_insensitive(api: Netmera, users: dict[str, list[str]]) -> None:
    ext_id = users["known"][0]
    for name in ("x-netmera-api-key", "X-NETMERA-API-KEY", "X-Netmera-Api-Key"):
        headers = {"X-netmera-api-key": None, name: api.api_key}
        resp = api.call("getProfileAttributes", params={"extId": ext_id}, headers=headers)
        assert resp.status_code == 200


def test_unmatched_route_and_wrong_method_are_problem_details(api: Netmera, spec: NetmeraSpec) -> None:
    headers = {"X-netmera-api-key": api.api_key}
    resp = requests.get(f"{api.base_url}{REST}/noSuchEndpoint", headers=headers, timeout=10)
    assert resp.status_code == 404
    assert resp.headers["content-type"] == "application/problem+json"
    problem = spec.validate_error(resp.content, resp.headers["content-type"])
    assert problem["status"] == 404 and problem["instance"] == f"{REST}/noSuchEndpoint"
    resp = requests.get(f"{api.base_url}{REST}/setProfileAttributes", headers=headers, timeout=10)
    assert resp.status_code == 405
    assert spec.validate_error(resp.content, resp.headers["content-type"])["status"] == 405


@pytest.mark.parametrize("op", ["setProfileAttributes", "unsetProfileAttributes", "sendNotification", "fireEvents"])
def test_invalid_json_is_2009(api: Netmera, op: str) -> None:
    resp = api.call(op, raw=b'[{"extId": "C0000001", ', valid_request=False)
    assert error_of(resp)[:2] == (400, 2009)


_NOT_STRICT_JSON: dict[str, Any] = {  # a setProfileAttributes body for one extId that Python's json module would take
    "nan": lambda e: b'[{"extId": "%s", "profile": {"ltv": NaN}}]' % e,  # RFC 8259 has no NaN
    "lone-surrogate": lambda e: b'[{"extId": "%s", "profile": {"name": "\\ud800"}}]' % e,  # no character
    "utf-16": lambda e: b'[{"extId": "%s", "profile": {"name": "Ann"}}]'.decode() % e.decode(),  # not UTF-8
    "bad-utf-8": lambda e: b'[{"extId": "%s", "profile": {"name": "\xff"}}]' % e,
}


@pytest.mark.parametrize("case", list(_NOT_STRICT_JSON))
def test_a_body_that_is_not_strict_json_is_2009_and_writes_nothing(
    api: Netmera, users: dict[str, list[str]], case: str
) -> None:
    """The sandbox reads bodies as strict JSON, so a client that sends any of these learns it here, not from
    Netmera."""
    ext_id = users["known"][0]
    body = _NOT_STRICT_JSON[case](ext_id.encode())
    raw = body.encode("utf-16") if isinstance(body, str) else body
    resp = api.call("setProfileAttributes", raw=raw, valid_request=False)
    assert error_of(resp)[:2] == (400, 2009)
    assert api.call("getProfileAttributes", params={"extId": ext_id}).json()["profile"] == {}


def test_json_body_needs_json_content_type(api: Netmera) -> None:
    resp = api.call(
        "setProfileAttributes",
        raw=b'[{"extId": "C0000001", "profile": {}}]',
        headers={"Content-Type": "text/plain"},
        valid_request=False,
    )
    assert resp.status_code == 415
    assert resp.headers["content-type"] == "application/problem+json"


# ----------------------------------------------------------------------------------------------------------------
# setProfileAttributes / getProfileAttributes / unsetProfileAttributes


def test_set_profile_attributes_empty_body_and_only_sent_keys_change(
    api: Netmera, admin: NetmeraAdmin, users: dict[str, list[str]]
) -> None:
    a, b = users["known"][:2]
    resp = api.call("setProfileAttributes", [{"extId": a, "profile": {"name": "Ann", "age": 31}}])
    assert_no_body(resp)
    assert_no_body(api.call("setProfileAttributes", [{"extId": a, "profile": {"surname": "Brown", "age": 32}}]))
    assert_no_body(api.call("setProfileAttributes", [{"extId": b, "profile": {"tags": ["x", "y"]}}]))
    got = api.call("getProfileAttributes", params={"extId": a})
    assert got.json() == {"extId": a, "profile": {"name": "Ann", "surname": "Brown", "age": 32}}
    assert admin.profile(b) == {"extId": b, "profile": {"tags": ["x", "y"]}}  # arrays allowed, replaced wholesale
    assert admin.profiles()["total"] == 2


def test_undefined_keys_wrong_types_and_nulls_are_dropped_silently(
    api: Netmera, admin: NetmeraAdmin, users: dict[str, list[str]]
) -> None:
    admin.config(profile_attributes={"firstName": "string", "ltv": "number", "isVIP": "boolean", "since": "date"})
    ext_id = users["known"][0]
    profile = {
        "firstName": "Ann",
        "FirstName": "case differs",  # keys are case-sensitive
        "ltv": "12.5",  # wrong type
        "isVIP": True,
        "since": "2024-02-30",  # not a date
        "name": None,  # null
        "nosuch": 1,  # undefined
        "age": 40,  # a standard attribute
    }
    assert_no_body(api.call("setProfileAttributes", [{"extId": ext_id, "profile": profile}]))
    assert admin.profile(ext_id)["profile"] == {"firstName": "Ann", "isVIP": True, "age": 40}
    assert_no_body(api.call("setProfileAttributes", [{"extId": ext_id, "profile": {"since": 624315600000}}]))
    assert admin.profile(ext_id)["profile"]["since"] == 624315600000  # epoch millis is a date
    dropped = admin.stats()["endpoints"]["setProfileAttributes"]["dropped_keys"]
    assert dropped == {
        "FirstName": {"undefined": 1},
        "ltv": {"wrong_type": 1},
        "since": {"wrong_type": 1},
        "name": {"null": 1},
        "nosuch": {"undefined": 1},
    }
    # A stored attribute that stops being defined is no longer returned (the default "*" accepts any key).
    admin.config(profile_attributes={"ltv": "number"})
    got = api.call("getProfileAttributes", params={"extId": ext_id}).json()
    assert got["profile"] == {"age": 40}


def test_dataset_preset_defines_camel_case_dataset_attributes(admin: NetmeraAdmin) -> None:
    defined = admin.config(profile_attributes="dataset") and admin.attributes()["defined"]
    assert defined["firstName"] == "string" and defined["ltv"] == "number" and defined["isVIP"] == "boolean"
    assert defined["birthDate"] == "date" and defined["name"] == "string"
    assert admin.attributes()["any_custom_key"] is False


def test_invalid_entries_are_skipped_and_all_invalid_is_2009(
    api: Netmera, admin: NetmeraAdmin, users: dict[str, list[str]]
) -> None:
    a, b = users["known"][:2]
    mixed = [{"extId": a, "profile": {"name": "Ann"}}, {"extId": "", "profile": {}}, {"extId": b, "profile": "x"}, 7]
    assert_no_body(api.call("setProfileAttributes", mixed, valid_request=False))
    assert admin.profile(a)["profile"] == {"name": "Ann"} and admin.profile(b) is None
    resp = api.call("setProfileAttributes", [{"extId": b}, {"profile": {"name": "x"}}], valid_request=False)
    assert error_of(resp)[:2] == (400, 2009)
    resp = api.call("setProfileAttributes", {"extId": a, "profile": {"name": "x"}}, valid_request=False)
    assert error_of(resp)[:2] == (400, 2009)  # an object, not an array
    assert_no_body(api.call("setProfileAttributes", []))


def test_reject_invalid_entries_fails_the_whole_request(
    api: Netmera, admin: NetmeraAdmin, users: dict[str, list[str]]
) -> None:
    a, b = users["known"][:2]
    admin.config(reject_invalid_entries=True, profile_attributes={"firstName": "string"})
    good = {"extId": a, "profile": {"firstName": "Ann"}}
    resp = api.call("setProfileAttributes", [good, {"extId": b}], valid_request=False)
    assert error_of(resp)[:2] == (400, 2009)
    resp = api.call("setProfileAttributes", [good, {"extId": b, "profile": {"FirstName": "Bob"}}])
    assert error_of(resp)[:2] == (400, 2009)
    assert admin.profile(a) is None and admin.profile(b) is None  # nothing written
    assert_no_body(api.call("setProfileAttributes", [good]))
    assert admin.profile(a)["profile"] == {"firstName": "Ann"}


def test_at_most_1000_unique_ext_ids_per_request(api: Netmera, admin: NetmeraAdmin) -> None:
    entries = [{"extId": f"C{i:07d}", "profile": {"name": f"N{i}"}} for i in range(1, 1001)]
    assert_no_body(api.call("setProfileAttributes", [*entries, entries[0]]))  # 1001 entries, 1000 unique
    resp = api.call("setProfileAttributes", [*entries, {"extId": "C0001001", "profile": {}}])
    status, code, message = error_of(resp)
    assert (status, code) == (400, 2009) and "1000" in message
    admin.config(max_ext_ids=10)
    resp = api.call("setProfileAttributes", entries[:11])
    assert error_of(resp)[:2] == (400, 2009)


def test_unknown_ext_ids_are_skipped_and_get_answers_5016(
    api: Netmera, admin: NetmeraAdmin, users: dict[str, list[str]]
) -> None:
    known, unknown = users["known"][0], users["unknown"][0]
    body = [{"extId": known, "profile": {"name": "K"}}, {"extId": unknown, "profile": {"name": "U"}}]
    assert_no_body(api.call("setProfileAttributes", body))
    assert admin.profile(unknown) is None
    assert admin.stats()["endpoints"]["setProfileAttributes"]["unknown_ext_ids"] == 1
    resp = api.call("getProfileAttributes", params={"extId": unknown})
    assert error_of(resp) == (400, 5016, "The external id is not found in the current application")
    # a known user without attributes is distinguishable from an unknown one
    assert api.call("getProfileAttributes", params={"extId": users["known"][1]}).json()["profile"] == {}
    # only unknown users: still not an "invalid entry", so 200 and nothing stored
    assert_no_body(api.call("setProfileAttributes", [{"extId": unknown, "profile": {"name": "U"}}]))
    admin.add_users([unknown])
    assert_no_body(api.call("setProfileAttributes", [{"extId": unknown, "profile": {"name": "U"}}]))
    assert api.call("getProfileAttributes", params={"extId": unknown}).json() == {
        "extId": unknown,
        "profile": {"name": "U"},
    }
    admin.remove_users([unknown])
    assert api.call("getProfileAttributes", params={"extId": unknown}).status_code == 400


def test_get_profile_attributes_needs_ext_id(api: Netmera) -> None:
    resp = api.call("getProfileAttributes", params={}, valid_request=False)
    assert error_of(resp)[:2] == (400, 2020)


def test_unset_profile_attributes(api: Netmera, admin: NetmeraAdmin, users: dict[str, list[str]]) -> None:
    a = users["known"][0]
    profile = {"name": "Ann", "surname": "Brown", "email": "ann@example.com", "age": 3}
    assert_no_body(api.call("setProfileAttributes", [{"extId": a, "profile": profile}]))
    assert_no_body(api.call("unsetProfileAttributes", [{"extId": a, "profile": ["age", "email", "nosuch"]}]))
    assert admin.profile(a)["profile"] == {"name": "Ann", "surname": "Brown", "email": "ann@example.com"}
    resp = api.call("unsetProfileAttributes", [{"extId": a, "profile": "age"}], valid_request=False)
    assert error_of(resp)[:2] == (400, 2009)


# ----------------------------------------------------------------------------------------------------------------
# registerUsers


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({"extId": "NEW-1", "platform": "IOS", "deviceToken": "t"}, 2009),  # an object, not an array
        ([], 2020),
        ([{"extId": "NEW-1", "deviceToken": "t"}], 2020),  # neither platform nor msisdn
        ([{"extId": "NEW-1", "platform": "WINDOWS_PHONE", "deviceToken": "t"}], 2004),
        ([{"extId": "NEW-1", "msisdn": "+905551112233", "tags": "vip"}], 2004),
        ([{"extId": "NEW-1", "msisdn": "+905551112233", "profile": "name=Ann"}], 2009),
    ],
)
def test_register_users_validates_the_whole_request(api: Netmera, admin: NetmeraAdmin, body: Any, code: int) -> None:
    good = {"extId": "NEW-0", "platform": "ANDROID", "deviceToken": "tok-0"}
    payload = [good, *body] if isinstance(body, list) and body else body
    resp = api.call("registerUsers", payload)
    assert error_of(resp)[:2] == (400, code)
    assert admin.user("NEW-0") is None  # nothing registered


def test_register_users_creates_and_updates_users(api: Netmera, admin: NetmeraAdmin, users: dict[str, list]) -> None:
    unknown = users["unknown"][0]
    body = [
        {"extId": "NEW-1", "platform": "IOS", "deviceToken": "tok-1", "tags": ["vip"], "profile": {"name": "Ann"}},
        {"extId": unknown, "msisdn": "+905551112233", "profile": {"surname": "Brown", "bad": None}},
    ]
    assert_no_body(api.call("registerUsers", body))
    user = admin.user("NEW-1")
    assert user["registered"] is True and user["platform"] == "IOS" and user["tags"] == ["vip"]
    assert api.call("getProfileAttributes", params={"extId": unknown}).json()["profile"] == {"surname": "Brown"}
    again = [{"extId": "NEW-1", "platform": "IOS", "tags": ["gold", "vip"], "profile": {"age": 30}}]
    assert_no_body(api.call("registerUsers", again))
    assert admin.user("NEW-1")["tags"] == ["vip", "gold"]  # tags are added
    assert admin.profile("NEW-1")["profile"] == {"name": "Ann", "age": 30}  # profile is merged
    # a user registered by device token can be targeted by that token
    resp = api.call("sendNotification", {"notificationKey": "101", "target": {"deviceToken": "tok-1"}})
    assert resp.json() == {}
    assert admin.deliveries(ext_id="NEW-1")["total"] == 1


# ----------------------------------------------------------------------------------------------------------------
# notifications


def test_send_notification_answers_empty_object_and_records_deliveries(
    api: Netmera, admin: NetmeraAdmin, users: dict[str, list[str]]
) -> None:
    a, b, c, d = users["known"][:4]
    assert_no_body(api.call("setProfileAttributes", [{"extId": a, "profile": {"name": "Ann"}}]))
    single = {"notificationKey": "101", "message": {"params": {"promo": "X1"}}, "target": {"extId": a}}
    resp = api.call("sendNotification", single)
    assert resp.status_code == 200 and resp.json() == {}
    assert resp.headers["content-type"] == "application/json"
    same = {"notificationKey": "102", "message": {"params": {"p": 1}}, "target": {"extId": [b, c, b]}}
    chunks = [
        {"notificationKey": "103", "message": {"params": {"price": 25}}, "target": {"extId": d}},
        {"notificationKey": "104", "target": {"extId": a}, "lastActiveDevice": True},
    ]
    assert api.call("sendNotification", same).json() == {}
    assert api.call("sendNotification", chunks).json() == {}
    rows = admin.deliveries()["deliveries"]
    assert [(r["extId"], r["notificationKey"], r["params"]) for r in rows] == [
        (a, "101", {"promo": "X1"}),
        (b, "102", {"p": 1}),
        (c, "102", {"p": 1}),
        (d, "103", {"price": 25}),
        (a, "104", {}),
    ]
    assert rows[0]["text"] == "Hi Ann, sandbox push 101"  # personalizedMessage from the stored profile
    assert rows[4]["text"] == "Hi Ann, sandbox push 104"
    seqs = [r["request_seq"] for r in rows]
    assert seqs[0] < seqs[1] == seqs[2] < seqs[3] == seqs[4]
    assert all(r["received_at"].endswith("Z") and r["status"] == "delivered" for r in rows)
    assert admin.deliveries(ext_id=a, notification_key=104)["total"] == 1


def test_notification_key_must_be_a_string(api: Netmera, spec: NetmeraSpec, users: dict[str, list[str]]) -> None:
    body = {"notificationKey": 101, "target": {"extId": users["known"][0]}}
    with pytest.raises(SpecViolation):
        spec.validate_request("sendNotification", body)  # the spec agrees: integer keys are invalid
    resp = api.call("sendNotification", body, valid_request=False)
    assert error_of(resp) == (400, 2004, "Field 'notificationKey' should be a text")
    resp = api.call("sendNotification", [{**body, "notificationKey": "101"}, body], valid_request=False)
    assert error_of(resp)[:2] == (400, 2004)


def test_send_notification_errors(api: Netmera, admin: NetmeraAdmin, users: dict[str, list[str]]) -> None:
    ext_id = users["known"][0]
    resp = api.call("sendNotification", {"notificationKey": "999", "target": {"extId": ext_id}})
    assert error_of(resp)[:2] == (400, 5003)
    resp = api.call("sendNotification", {"target": {"extId": ext_id}}, valid_request=False)
    assert error_of(resp)[:2] == (400, 2020)
    resp = api.call("sendNotification", {"notificationKey": "101"})
    assert error_of(resp)[:2] == (400, 2020)
    resp = api.call("sendNotification", [], valid_request=False)
    assert error_of(resp)[:2] == (400, 2020)
    resp = api.call("sendNotification", {"notificationKey": "101", "target": {"extId": 5}}, valid_request=False)
    assert error_of(resp)[:2] == (400, 2004)
    assert admin.deliveries(status="all")["total"] == 0


def test_send_notification_caps_unique_ext_ids_across_the_array(api: Netmera, admin: NetmeraAdmin) -> None:
    ids = [f"C{i:07d}" for i in range(1, 1002)]
    per_user = [{"notificationKey": "101", "target": {"extId": i}} for i in ids]
    resp = api.call("sendNotification", per_user)
    status, code, message = error_of(resp)
    assert (status, code) == (400, 2009) and "1000" in message
    resp = api.call("sendNotification", {"notificationKey": "101", "target": {"extId": ids}})
    assert error_of(resp)[:2] == (400, 2009)
    assert admin.deliveries(status="all")["total"] == 0
    assert api.call("sendNotification", per_user[:1000]).json() == {}
    stats = admin.stats()
    assert stats["deliveries"] + stats["failed_deliveries"] == 1000


def test_send_notification_to_unknown_users(api: Netmera, admin: NetmeraAdmin, users: dict[str, list[str]]) -> None:
    known, (u1, u2, *_) = users["known"][0], users["unknown"]
    resp = api.call("sendNotification", {"notificationKey": "101", "target": {"extId": u1}})
    assert error_of(resp) == (400, 5016, "The external id is not found in the current application")
    resp = api.call("sendNotification", {"notificationKey": "101", "target": {"extId": [known, u1, u2]}})
    assert resp.json() == {}
    assert [d["extId"] for d in admin.deliveries()["deliveries"]] == [known]
    failed = admin.deliveries(status="failed")["deliveries"]
    assert [d["extId"] for d in failed] == [u1, u2] and all(d["reason"].startswith("5016") for d in failed)
    admin.config(unknown_target_error=False)
    assert api.call("sendNotification", {"notificationKey": "101", "target": {"extId": u1}}).json() == {}
    assert admin.deliveries(status="failed")["total"] == 3


def test_create_notification_definition_then_send(api: Netmera, admin: NetmeraAdmin, users: dict) -> None:
    definition = {
        "title": "Order shipped",
        "message": "Your order is on its way",
        "personalizedMessage": "@{name}, order @{orderId} is on its way",
        "platforms": ["IOS", "ANDROID"],
        "click": {"deeplink": "app://orders/@{orderId}"},
    }
    resp = api.call("createNotificationDefinition", definition)
    key = resp.json()["notificationKey"]
    assert type(key) is int and resp.json() == {"notificationKey": key}
    assert admin.notifications()[str(key)]["source"] == "api"
    a, b = users["known"][:2]
    assert_no_body(api.call("setProfileAttributes", [{"extId": a, "profile": {"name": "Ann"}}]))
    resp = api.call("sendNotification", {"notificationKey": key, "target": {"extId": a}}, valid_request=False)
    assert error_of(resp)[:2] == (400, 2004)
    body = [
        {"notificationKey": str(key), "message": {"params": {"orderId": "A-1"}}, "target": {"extId": a}},
        {"notificationKey": str(key), "target": {"extId": b}},  # no orderId for the deeplink: delivery fails
    ]
    assert api.call("sendNotification", body).json() == {}
    [row] = admin.deliveries(notification_key=key)["deliveries"]
    assert row["extId"] == a and row["text"] == "Ann, order A-1 is on its way"
    [failed] = admin.deliveries(notification_key=key, status="failed")["deliveries"]
    assert failed["extId"] == b and "deeplink" in failed["reason"]
    resp = api.call("createNotificationDefinition", {"title": "mixed", "platforms": ["IOS", "CHROME"]})
    assert error_of(resp)[:2] == (400, 2021)


def test_notification_keys_are_configurable(api: Netmera, admin: NetmeraAdmin, users: dict) -> None:
    assert sorted(admin.notifications()) == ["101", "102", "103", "104", "105"]
    admin.config(notification_keys=[1, "2", 3])
    assert sorted(admin.notifications()) == ["1", "2", "3"]
    ext_id = users["known"][0]
    assert api.call("sendNotification", {"notificationKey": "2", "target": {"extId": ext_id}}).json() == {}
    resp = api.call("sendNotification", {"notificationKey": "101", "target": {"extId": ext_id}})
    assert error_of(resp)[:2] == (400, 5003)


def test_get_push_stats(api: Netmera, admin: NetmeraAdmin, users: dict[str, list[str]]) -> None:
    known = users["known"][:10]
    t0 = int(time.time() * 1000) - 1
    target = {"extId": [*known, users["unknown"][0]]}
    assert api.call("sendNotification", {"notificationKey": "105", "target": target}).json() == {}
    resp = api.call("getPushStats", params={"notificationKey": 105})
    stats = resp.json()
    assert stats["notificationKey"] == 105 and stats["status"] == "FINISHED"
    assert stats["startDate"] <= stats["endDate"]
    by_platform = {s["platform"]: s for s in stats["stats"]}
    platforms = [d["platform"] for d in admin.deliveries(notification_key=105)["deliveries"]]
    assert {p: by_platform[p]["sent"] for p in by_platform} == {p: platforms.count(p) for p in ("IOS", "ANDROID")}
    assert sum(s["sent"] for s in stats["stats"]) == 10
    empty = api.call("getPushStats", params={"notificationKey": 101}).json()
    assert sum(s["sent"] for s in empty["stats"]) == 0
    ranged = api.call("getPushStats", params={"start": t0, "end": int(time.time() * 1000) + 1}).json()
    assert [m["notificationKey"] for m in ranged["messages"]] == [105]
    resp = api.call("getPushStats", params={"notificationKey": 9999})
    assert error_of(resp)[:2] == (400, 5003)
    resp = api.call("getPushStats", params={})
    assert error_of(resp)[:2] == (400, 2020)


# ----------------------------------------------------------------------------------------------------------------
# events, counters, faults, admin


def test_fire_events(api: Netmera, admin: NetmeraAdmin) -> None:
    events = [{"extId": "C0000001", "name": "ShareEvent", "itemId": "4234", "channel": "Facebook"}]
    assert_no_body(api.call("fireEvents", events))
    assert_no_body(api.call("fireEvents", [{"name": "no extId"}], valid_request=False))  # rejected, still 200
    assert admin.events()["total"] == 1 and admin.events()["events"][0]["event"] == events[0]
    resp = api.call("fireEvents", events[0], valid_request=False)
    assert error_of(resp)[:2] == (400, 2009)


def test_requests_are_counted_including_injected_faults(
    api: Netmera, admin: NetmeraAdmin, users: dict[str, list[str]]
) -> None:
    ext_id = users["known"][0]
    admin.set_faults([{"endpoint": f"{REST}/sendNotification", "storm_429": 2, "retry_after": 1}])
    body = {"notificationKey": "101", "target": {"extId": ext_id}}
    first = api.session.post(
        f"{api.base_url}{REST}/sendNotification",
        json=body,
        headers={"X-netmera-api-key": api.api_key},
        timeout=10,
    )
    assert first.status_code == 429 and first.headers["retry-after"] == "1"
    assert first.json() == {"code": 429, "error": "Too Many Requests"}
    assert api.session.post(f"{api.base_url}{REST}/sendNotification", json=body, timeout=10).status_code == 429
    assert api.call("sendNotification", body).json() == {}
    assert_no_body(api.call("setProfileAttributes", [{"extId": ext_id, "profile": {"name": "A"}}]))
    api.call("getProfileAttributes", params={"extId": ext_id})
    api.call("sendNotification", {"notificationKey": "101"}, valid_request=False)
    counts = admin.requests()
    assert counts["counts"] == {
        f"POST {REST}/sendNotification": {"429": 2, "200": 1, "400": 1},
        f"POST {REST}/setProfileAttributes": {"200": 1},
        f"GET {REST}/getProfileAttributes": {"200": 1},
    }
    assert counts["total"] == 6
    assert admin.write_calls() == 2
    assert admin.deliveries()["total"] == 1
    admin.reset()
    assert admin.requests() == {"counts": {}, "total": 0} and admin.faults()["rules"] == []


def test_admin_config_rejects_unknown_keys(admin: NetmeraAdmin) -> None:
    from optimove_netmera.sandbox.netmera_admin import SandboxAdminError

    with pytest.raises(SandboxAdminError, match="nosuch"):
        admin.config(nosuch=1)
    with pytest.raises(SandboxAdminError, match="profile_attributes"):
        admin.config(profile_attributes={"x": "uuid"})
    config = admin.config()
    assert config == {
        "max_ext_ids": 1000,
        "reject_invalid_entries": False,
        "profile_attributes": "*",
        "notification_keys": [101, 102, 103, 104, 105],
        "unknown_target_error": True,
        "existence_answer": "list",
    }
    with pytest.raises(SandboxAdminError, match="existence_answer"):
        admin.config(existence_answer="maybe")
    assert admin.health() == {"status": "ok", "service": "netmera"}


def test_thousand_entry_set_profile_attributes_is_accepted_whole(api: Netmera, admin: NetmeraAdmin) -> None:
    """A full 1000-entry write is answered 200 with an empty body, repeatedly, and every entry is stored.

    (How fast: ``tests/perf/bench_clients.py`` measures Netmera writes at 1000 a request; no timing here.)
    """
    keys = ["name", "surname", "email", "gender", *[f"custom{i}" for i in range(15)]]
    body = [
        {"extId": f"C{i:07d}", "profile": {"age": 30, **{k: f"{k}-{i % 37}" for k in keys}}} for i in range(1, 1001)
    ]
    raw = json.dumps(body).encode()
    headers = {"X-netmera-api-key": api.api_key, "Content-Type": "application/json"}
    url = f"{api.base_url}{REST}/setProfileAttributes"
    for _ in range(7):
        resp = api.session.post(url, data=raw, headers=headers, timeout=30)
        assert resp.status_code == 200 and resp.content == b""
    assert admin.stats()["profiles"] > 900
    stored = admin.profile("C0001000")
    assert stored is not None and stored["profile"]["custom3"] == "custom3-1"  # 1000 % 37 == 1


def test_injected_reset_drops_the_connection_and_is_counted(api: Netmera, admin: NetmeraAdmin) -> None:
    admin.set_faults([{"endpoint": f"{REST}/fireEvents", "reset_rate": 1.0, "count": 1}])
    events = [{"extId": "C0000001", "name": "ShareEvent"}]
    with pytest.raises(requests.ConnectionError):
        requests.post(
            f"{api.base_url}{REST}/fireEvents",
            json=events,
            headers={"X-netmera-api-key": api.api_key},
            timeout=10,
        )
    assert_no_body(api.call("fireEvents", events))
    assert admin.requests()["counts"] == {f"POST {REST}/fireEvents": {"reset": 1, "200": 1}}
    assert admin.events()["total"] == 1


def test_check_existence_answers_the_not_exist_list(api: Netmera, admin: NetmeraAdmin, users: dict) -> None:
    """REF §3.4: ``checkExistence: true`` lists the unknown extIds in ``notExist`` (``[]`` when all exist); without
    it the answer has no body. ``existence_answer`` makes the sandbox answer without the list (a fault)."""
    known, unknown = users["known"][:2], users["unknown"][:1]
    headers = {"X-netmera-api-key": api.api_key, "Content-Type": "application/json"}

    def untag(ext_ids: list[str], check: bool | None) -> requests.Response:
        body: dict[str, Any] = {"tag": "probe", "extIds": ext_ids}
        if check is not None:
            body["checkExistence"] = check
        url = f"{api.base_url}{REST}/untagUsers"
        return api.session.post(url, data=json.dumps(body), headers=headers, timeout=30)

    for endpoint in ("untagUsers", "tagUsers"):
        url = f"{api.base_url}{REST}/{endpoint}"
        body = {"tag": "probe", "extIds": [*known, *unknown], "checkExistence": True}
        resp = api.session.post(url, data=json.dumps(body), headers=headers, timeout=30)
        assert resp.status_code == 200 and resp.json() == {"notExist": unknown}
    resp = untag(known, True)
    assert resp.status_code == 200 and resp.json() == {"notExist": []}  # the list is there even when empty
    assert_no_body(untag([*known, *unknown], None))
    assert_no_body(untag([*known, *unknown], False))
    assert error_of(untag(known, "yes"))[:2] == (400, 2004)  # type: ignore[arg-type]

    admin.config(existence_answer="empty")
    assert_no_body(untag([*known, *unknown], True))
    admin.config(existence_answer="object")
    resp = untag([*known, *unknown], True)
    assert resp.status_code == 200 and resp.json() == {}

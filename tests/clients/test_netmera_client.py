"""NetmeraClient against the Netmera sandbox over real HTTP (plus a few pure checks).

Every sandbox test asserts exact request counts from ``/_sandbox/requests``, so a client that retried
too much, too little, or sent a request it should have refused fails here.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from optimove_netmera.http import AuthError, ClientError, RetryPolicy, ServerError, TransportError
from optimove_netmera.netmera import (
    ExistenceUnknown,
    NetmeraClient,
    ProfileUnset,
    ProfileUpdate,
    UserRegistration,
    chunked,
    notification_key_str,
)

FAST_RETRY = RetryPolicy(max_attempts=5, base_delay=0.01, max_delay=0.05)
SET = "POST /rest/3.0/setProfileAttributes"
SEND = "POST /rest/3.0/sendNotification"


def ids(n: int, start: int = 1) -> list[str]:
    return [f"C{i:07d}" for i in range(start, start + n)]


@pytest.fixture
def box(sandbox_reset: Any) -> Any:
    return sandbox_reset


@pytest.fixture
def admin(box: Any) -> Any:
    return box.admin.netmera


@pytest.fixture
def client(box: Any) -> NetmeraClient:
    with NetmeraClient(box.netmera_url, box.netmera_api_key, retry=FAST_RETRY) as c:
        yield c


def counts(admin: Any, endpoint: str) -> dict[str, int]:
    return admin.requests()["counts"].get(endpoint, {})


# --------------------------------------------------------------------------------------------------
# pure


def test_notification_key_normalisation() -> None:
    assert notification_key_str(96) == "96"
    assert notification_key_str(96.0) == "96"
    assert notification_key_str(" 101 ") == "101"
    for bad in (None, True, "", 1.5):
        with pytest.raises(ValueError):
            notification_key_str(bad)


def test_constructor_validation() -> None:
    with pytest.raises(ValueError):
        NetmeraClient("http://x", "")
    with pytest.raises(ValueError):
        NetmeraClient("ftp://x", "k")
    with pytest.raises(ValueError):
        NetmeraClient("http://x", "k", max_batch=0)
    assert NetmeraClient("http://x/rest/3.0/", "k").base_url == "http://x"


def test_over_cap_is_refused_before_any_request() -> None:
    client = NetmeraClient("http://127.0.0.1:9", "k")  # nothing listens there: a request would fail loudly
    with pytest.raises(ValueError, match="at most 1000"):
        client.set_profile_attributes([{"extId": e, "profile": {"a": 1}} for e in ids(1001)])
    with pytest.raises(ValueError, match="at most 1000"):
        client.send_notification({"notificationKey": 101, "target": {"extId": ids(1001)}})
    with pytest.raises(ValueError, match="at most 1000"):
        client.send_notification([{"notificationKey": 101, "target": {"extId": e}} for e in ids(1001)])
    with pytest.raises(ValueError, match="at most 1000"):
        client.unset_profile_attributes([ProfileUnset(e, ["a"]) for e in ids(1001)])
    assert client.stats.calls == 0
    assert client.set_profile_attributes([]) == 0 and client.send_notification([]) == 0
    assert [len(c) for c in chunked(ids(2500), 1000)] == [1000, 1000, 500]


# --------------------------------------------------------------------------------------------------
# profiles


def test_set_get_unset_profile_attributes(client: NetmeraClient, admin: Any) -> None:
    users = ids(3)
    admin.add_users(users)
    sent = client.set_profile_attributes(
        [
            ProfileUpdate(users[0], {"name": "Ann", "age": 31}),
            {"extId": users[1], "profile": {"name": "Bob"}},
            ProfileUpdate(users[2], {"isVip": True}),
        ]
    )
    assert sent == 3
    assert counts(admin, SET) == {"200": 1}  # one request, empty-bodied 200 handled
    assert admin.profile(users[0])["profile"] == {"name": "Ann", "age": 31}
    got = client.get_profile_attributes(users[0])
    assert got is not None and got.ext_id == users[0] and got.profile == {"name": "Ann", "age": 31}

    assert client.unset_profile_attributes([ProfileUnset(users[0], ["age"])]) == 1
    assert admin.profile(users[0])["profile"] == {"name": "Ann"}
    assert counts(admin, "POST /rest/3.0/unsetProfileAttributes") == {"200": 1}


def test_an_encoded_batch_is_sent_as_it_is_and_checked_only_for_its_count(client: NetmeraClient, admin: Any) -> None:
    """The sync's load sends each batch as the body the state DB built: it reaches Netmera byte for byte; more
    entries than Netmera takes, another call or a body that is not an array is refused before any request."""
    users = ids(2)
    admin.add_users(users)
    body = json.dumps([{"extId": users[0], "profile": {"name": "Ann", "age": 31}}, {"extId": users[1], "profile": {}}])
    for call, size, bad, why in (
        ("setProfileAttributes", 1001, body, "at most 1000"),
        ("sendNotification", 2, body, "is not one of"),
        ("setProfileAttributes", 2, '{"extId": "C0000001"}', "must be a JSON array"),
    ):
        with pytest.raises(ValueError, match=why):
            client.write_encoded_profiles(call, bad.encode(), size)
    assert client.write_encoded_profiles("setProfileAttributes", b"[]", 0) == 0
    assert client.stats.calls == 0

    assert client.write_encoded_profiles("setProfileAttributes", body.encode(), 2) == 2
    assert admin.profile(users[0])["profile"] == {"name": "Ann", "age": 31}
    unset = json.dumps([{"extId": users[0], "profile": ["age"]}]).encode()
    assert client.write_encoded_profiles("unsetProfileAttributes", unset, 1) == 1
    assert admin.profile(users[0])["profile"] == {"name": "Ann"}
    assert counts(admin, SET) == {"200": 1}


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf"), object()])
def test_a_body_that_is_not_json_is_refused_before_any_request(client: NetmeraClient, admin: Any, bad: object) -> None:
    """JSON has no NaN or infinity (the encoder would write null, which Netmera reads as "no value") and no
    arbitrary objects: the client refuses the body, names the call, and sends nothing; a null sends as null."""
    users = ids(2)
    admin.add_users(users)
    profile = {"name": "Ann", "scores": [1.5, {"last": bad}]}
    with pytest.raises(ValueError, match="setProfileAttributes: invalid request"):
        client.set_profile_attributes([{"extId": users[0], "profile": profile}])
    assert counts(admin, SET) == {}
    assert client.set_profile_attributes([{"extId": users[1], "profile": {"name": "Bob", "note": None}}]) == 1
    assert counts(admin, SET) == {"200": 1}


def test_get_profile_of_unknown_user_is_none(client: NetmeraClient, admin: Any) -> None:
    admin.remove_users(["C0000042"])
    assert client.get_profile_attributes("C0000042") is None
    admin.add_users(["C0000043"])
    known = client.get_profile_attributes("C0000043")
    assert known is not None and known.profile == {}


def test_1000_unique_ext_ids_pass_duplicates_do_not_count(client: NetmeraClient, admin: Any) -> None:
    batch = ids(1000)
    entries = [{"extId": e, "profile": {"score": 1}} for e in batch] + [{"extId": batch[0], "profile": {"score": 2}}]
    assert client.set_profile_attributes(entries) == 1001
    assert counts(admin, SET) == {"200": 1}


def test_server_side_cap_is_a_client_error_not_retried(box: Any, admin: Any) -> None:
    loose = NetmeraClient(box.netmera_url, box.netmera_api_key, retry=FAST_RETRY, max_batch=5000)
    with pytest.raises(ClientError) as info:
        loose.set_profile_attributes([{"extId": e, "profile": {"a": 1}} for e in ids(1001)])
    assert info.value.status == 400 and info.value.code == 2009
    assert counts(admin, SET) == {"400": 1}


def test_register_users_then_known(client: NetmeraClient, admin: Any) -> None:
    assert client.register_users([UserRegistration("NEW-USER-1", platform="ANDROID", device_token="tok-1")]) == 1
    assert admin.user("NEW-USER-1")["registered"] is True
    assert client.get_profile_attributes("NEW-USER-1") is not None


# --------------------------------------------------------------------------------------------------
# notifications


def test_send_notification_sends_key_as_string(client: NetmeraClient, admin: Any) -> None:
    admin.add_users(ids(2))
    # an int key would be rejected by Netmera with 2004; the client always sends a string
    assert client.send_notification({"notificationKey": 101, "target": {"extId": ids(2)}}) == 1
    assert counts(admin, SEND) == {"200": 1}
    delivered = admin.deliveries(notification_key="101")
    assert delivered["total"] == 2
    assert {d["notificationKey"] for d in delivered["deliveries"]} == {"101"}


def test_send_notification_array_body_with_params(client: NetmeraClient, admin: Any) -> None:
    users = ids(3, start=10)
    admin.add_users(users)
    body = [
        {"notificationKey": 102, "message": {"params": {"name": f"N{i}"}}, "target": {"extId": e}}
        for i, e in enumerate(users)
    ]
    original = [dict(b) for b in body]
    assert client.send_notification(body) == 3
    assert body == original, "the caller's objects are not mutated"
    assert counts(admin, SEND) == {"200": 1}
    rows = admin.deliveries(notification_key="102")["deliveries"]
    assert sorted((r["extId"], r["params"]["name"]) for r in rows) == [(e, f"N{i}") for i, e in enumerate(users)]


def test_an_encoded_send_is_sent_as_it_is_and_checked_only_for_its_count(client: NetmeraClient, admin: Any) -> None:
    """The campaign send posts each chunk's body as the state DB built it: it reaches Netmera whole (params
    included); more objects than Netmera takes or a body that is not an array is refused before any request, and a
    body the sandbox finds wrong (an integer key) is refused by it, not let through."""
    users = ids(2, start=20)
    admin.add_users(users)
    body = json.dumps(
        [
            {"notificationKey": "102", "target": {"extId": users[0]}, "message": {"params": {"name": "Zoë 😀"}}},
            {"notificationKey": "102", "target": {"extId": users[1]}},
        ]
    ).encode()
    with pytest.raises(ValueError, match="at most 1000"):
        client.send_encoded_notifications(body, 1001)
    with pytest.raises(ValueError, match="must be a JSON array"):
        client.send_encoded_notifications(b' {"notificationKey": "102"}', 1)
    assert client.send_encoded_notifications(b"[]", 0) == 0
    assert client.stats.calls == 0

    assert client.send_encoded_notifications(body, 2) == 2
    assert counts(admin, SEND) == {"200": 1}
    rows = admin.deliveries(notification_key="102")["deliveries"]
    assert sorted((r["extId"], r["params"].get("name")) for r in rows) == [(users[0], "Zoë 😀"), (users[1], None)]
    with pytest.raises(ClientError):
        client.send_encoded_notifications(
            json.dumps([{"notificationKey": 102, "target": {"extId": users[0]}}]).encode(), 1
        )
    assert counts(admin, SEND) == {"200": 1, "400": 1}


def test_create_definition_returns_string_key_usable_for_send(client: NetmeraClient, admin: Any) -> None:
    key = client.create_notification_definition(
        {"title": "T", "message": "Hello", "personalizedMessage": "Hi @{name}", "platforms": ["IOS", "ANDROID"]}
    )
    assert isinstance(key, str) and key.isdigit()
    admin.add_users(["C0000100"])
    client.send_notification(
        {"notificationKey": key, "target": {"extId": "C0000100"}, "message": {"params": {"name": "Z"}}}
    )
    assert counts(admin, SEND) == {"200": 1}
    stats = client.get_push_stats(key)
    assert stats.notification_key == key and stats.sent == 1


def test_send_to_only_unknown_users_is_a_client_error(client: NetmeraClient, admin: Any) -> None:
    admin.remove_users(["C0000200"])
    with pytest.raises(ClientError) as info:
        client.send_notification({"notificationKey": "101", "target": {"extId": "C0000200"}})
    assert info.value.code == 5016 and not info.value.ambiguous
    assert counts(admin, SEND) == {"400": 1}


def test_fire_events(client: NetmeraClient, admin: Any) -> None:
    assert client.fire_events([{"extId": "C0000001", "name": "Purchase", "amount": 3}]) == 1
    assert admin.events()["total"] == 1
    assert counts(admin, "POST /rest/3.0/fireEvents") == {"200": 1}


# --------------------------------------------------------------------------------------------------
# errors and retries


def test_bad_api_key_is_auth_error_without_the_key(box: Any, admin: Any) -> None:
    wrong = "definitely-wrong-netmera-key"
    bad = NetmeraClient(box.netmera_url, wrong, retry=FAST_RETRY)
    with pytest.raises(AuthError) as info:
        bad.set_profile_attributes([{"extId": "C0000001", "profile": {"a": 1}}])
    err = info.value
    assert err.status == 403 and err.code == 2010
    assert wrong not in str(err) and box.netmera_api_key not in str(err)
    assert "POST /rest/3.0/setProfileAttributes" in str(err) and "API key is invalid" in str(err)
    assert counts(admin, SET) == {"403": 1}


def test_problem_detail_is_parsed(client: NetmeraClient, admin: Any) -> None:
    with pytest.raises(ClientError) as info:
        client._call("GET", "noSuchEndpoint")
    assert info.value.status == 404 and "Not Found" in (info.value.api_message or "")


def test_retries_through_429_5xx_and_resets(client: NetmeraClient, admin: Any) -> None:
    admin.add_users(["C0000001"])
    admin.set_faults(
        [
            {"endpoint": "/rest/3.0/setProfileAttributes", "storm_429": 2},
            {"endpoint": "/rest/3.0/setProfileAttributes", "error_rate": 1.0, "error_status": 503, "count": 1},
        ]
    )
    assert client.set_profile_attributes([{"extId": "C0000001", "profile": {"name": "X"}}]) == 1
    assert counts(admin, SET) == {"429": 2, "503": 1, "200": 1}
    assert client.stats.retries == 3 and client.stats.rate_limited == 2
    admin.set_faults([{"endpoint": "/rest/3.0/setProfileAttributes", "reset_rate": 1.0, "count": 2}])
    assert client.set_profile_attributes([{"extId": "C0000001", "profile": {"name": "Y"}}]) == 1
    assert counts(admin, SET) == {"429": 2, "503": 1, "reset": 2, "200": 2}
    assert client.stats.errors["transport"] == 2, "the sandbox resets the TCP connection"
    assert admin.profile("C0000001")["profile"]["name"] == "Y"


def test_send_notification_does_not_retry_ambiguous_failures(client: NetmeraClient, admin: Any) -> None:
    admin.add_users(["C0000001"])
    admin.set_faults([{"endpoint": "/rest/3.0/sendNotification", "error_rate": 1.0, "error_status": 502, "count": 1}])
    with pytest.raises(ServerError) as info:
        client.send_notification({"notificationKey": "101", "target": {"extId": "C0000001"}})
    assert info.value.ambiguous and info.value.status == 502
    assert counts(admin, SEND) == {"502": 1}
    admin.set_faults([{"endpoint": "/rest/3.0/sendNotification", "reset_rate": 1.0, "count": 1}])
    with pytest.raises(TransportError) as info2:
        client.send_notification({"notificationKey": "101", "target": {"extId": "C0000001"}})
    assert info2.value.ambiguous
    # 429 is unambiguous (not processed): retried; and retry_ambiguous=True opts in to retrying a 5xx
    admin.set_faults(
        [
            {"endpoint": "/rest/3.0/sendNotification", "storm_429": 1},
            {"endpoint": "/rest/3.0/sendNotification", "error_rate": 1.0, "error_status": 503, "count": 1},
        ]
    )
    client.send_notification({"notificationKey": "101", "target": {"extId": "C0000001"}}, retry_ambiguous=True)
    assert counts(admin, SEND) == {"502": 1, "reset": 1, "429": 1, "503": 1, "200": 1}
    assert admin.deliveries(ext_id="C0000001")["total"] == 1


def test_tag_and_untag_users_with_check_existence(client: NetmeraClient, admin: Any) -> None:
    admin.add_users(["C0000001", "C0000002"])
    admin.remove_users(["C0000003"])
    assert client.tag_users("optimove", ["C0000001", "C0000002"]) == []  # empty 200 body
    assert "optimove" in admin.user("C0000001")["tags"]
    missing = client.untag_users("optimove", ["C0000001", "C0000003"], check_existence=True)
    assert missing == ["C0000003"]
    assert "optimove" not in admin.user("C0000001")["tags"]
    assert counts(admin, "POST /rest/3.0/tagUsers") == {"200": 1}
    assert counts(admin, "POST /rest/3.0/untagUsers") == {"200": 1}
    assert client.untag_users("optimove", ["C0000001"], check_existence=True) == []  # {"notExist": []}
    with pytest.raises(ValueError, match="at most 1000"):
        client.tag_users("optimove", ids(1001))


@pytest.mark.parametrize("answer", ["empty", "object"])
def test_check_existence_without_the_list_is_unknown_not_all_known(
    client: NetmeraClient, admin: Any, answer: str
) -> None:
    admin.remove_users(["C0000003"])
    admin.config(existence_answer=answer)
    with pytest.raises(ExistenceUnknown, match="notExist"):
        client.untag_users("optimove", ["C0000001", "C0000003"], check_existence=True)
    with pytest.raises(ExistenceUnknown):
        client.tag_users("optimove", ["C0000003"], check_existence=True)
    assert client.untag_users("optimove", ["C0000003"]) == []  # without the flag no list is expected

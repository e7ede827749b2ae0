"""Netmera REST API client (pure: requests only, no Airflow imports).

Facts it handles: ``X-netmera-api-key`` auth; most writes answer 200 with an empty body,
``sendNotification`` answers ``{}``, ``createNotificationDefinition`` answers ``{"notificationKey": 96}``
(an int, while ``sendNotification`` requires a string, else error 2004); errors are ``{code, error}``
or an RFC 9457 problem detail; at most 1000 unique extIds per request.

Batching choice: a call with more than ``max_batch`` unique extIds is a caller error and raises
ValueError before any request (nothing is split silently, so one call is one request and the caller's
ledger stays exact). Split with :func:`~optimove_netmera.http.chunked`.

Retry choice: idempotent writes (profile set/unset, registerUsers) retry 429, 5xx, timeouts and
connection errors. ``sendNotification`` and ``fireEvents`` are not idempotent: by default they retry
only when the server certainly did not act (429, connection never established); after a 5xx, a read
timeout or a dropped connection they raise with ``error.ambiguous = True`` (the push may have gone out),
unless ``retry_ambiguous=True``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import msgspec
import requests

from optimove_netmera.http import (
    BaseHttpClient,
    ClientError,
    RateLimiter,
    Redactor,
    ResponseFormatError,
    RetryPolicy,
    Timeout,
    body_text,
    get_rate_limiter,
)
from optimove_netmera.netmera.models import (
    ProfileAttributes,
    ProfileUnset,
    ProfileUpdate,
    PushStats,
    UserRegistration,
)

__all__ = ["API_PREFIX", "MAX_EXT_IDS", "ExistenceUnknown", "NetmeraClient"]

API_PREFIX = "/rest/3.0"
MAX_EXT_IDS = 1000
PROFILE_WRITES = ("setProfileAttributes", "unsetProfileAttributes")
UNKNOWN_EXT_ID_CODE = 5016


class ExistenceUnknown(ResponseFormatError):
    """A ``checkExistence`` answer without the documented ``notExist`` list (REF §3.4): existence is unknown."""


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    if isinstance(value, list | tuple | set | frozenset):
        return list(value)
    return [value]


def notification_key_str(value: Any) -> str:
    """Normalise a notification key to the JSON string Netmera requires (``96`` -> ``"96"``)."""
    if value is None or isinstance(value, bool):
        raise ValueError("notificationKey is required (a string or an integer)")
    if isinstance(value, float):
        if not value.is_integer():
            raise ValueError(f"notificationKey must be integral, got {value!r}")
        value = int(value)
    text = str(value).strip()
    if not text:
        raise ValueError("notificationKey must not be empty")
    return text


def _encoded(value: Any, opening: bytes) -> bool:
    """Whether ``value`` is pre-encoded JSON (``msgspec.Raw``) that starts with ``opening`` (``{`` or ``[``)."""
    return isinstance(value, msgspec.Raw) and bytes(value).lstrip()[:1] == opening


class NetmeraClient(BaseHttpClient):
    """Client for ``{base_url}/rest/3.0/...``.

    ``rate_limit`` is None (Netmera documents no limit), ``(calls, period_seconds)`` for a
    process-wide limiter shared by all clients of the same base URL and key, or a :class:`RateLimiter`.
    """

    service = "netmera"

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        timeout: Timeout = (5, 60),
        retry: RetryPolicy = RetryPolicy(),  # noqa: B008 - frozen dataclass, safe as a default
        rate_limit: tuple[int, float] | RateLimiter | None = None,
        pool_size: int = 8,
        max_batch: int = MAX_EXT_IDS,
    ) -> None:
        if not api_key:
            raise ValueError("NetmeraClient: api_key is required")
        if int(max_batch) != max_batch or max_batch < 1:
            raise ValueError("max_batch must be a positive integer")
        base = base_url.rstrip("/")
        if base.endswith(API_PREFIX):
            base = base[: -len(API_PREFIX)]
        if isinstance(rate_limit, RateLimiter) or rate_limit is None:
            limiter = rate_limit
        else:
            account = hashlib.sha256(api_key.encode()).hexdigest()[:12]
            calls, period = rate_limit
            limiter = get_rate_limiter(f"netmera:{base.lower()}:{account}", calls, period)
        super().__init__(
            base,
            timeout=timeout,
            retry=retry,
            limiter=limiter,
            pool_size=pool_size,
            redactor=Redactor([api_key]),
            headers={"X-netmera-api-key": api_key},
        )
        self.max_batch = int(max_batch)

    def __repr__(self) -> str:
        return f"NetmeraClient({self.base_url!r})"

    # --- plumbing ----------------------------------------------------------------------------------
    def _parse_error(self, response: requests.Response) -> tuple[Any, str | None]:
        try:
            body = response.json()
        except ValueError:
            return None, body_text(response)
        if isinstance(body, Mapping):
            if "code" in body or "error" in body:
                message = body.get("error", body.get("message"))
                return body.get("code"), (str(message) if message is not None else None)
            if "title" in body or "detail" in body:  # RFC 9457 problem detail
                title, detail = body.get("title"), body.get("detail")
                text = ": ".join(str(p) for p in (title, detail) if p)
                problem_type = body.get("type")
                code = problem_type if problem_type and problem_type != "about:blank" else None
                return code, text or None
        if isinstance(body, str):
            return None, body
        return None, body_text(response)

    def _call(
        self,
        method: str,
        name: str,
        *,
        params: Mapping[str, Any] | None = None,
        json_body: Any = None,
        encoded_body: bytes | None = None,
        idempotent: bool = True,
    ) -> Any:
        path = f"{API_PREFIX}/{name}"
        response = self._request(
            method, path, params=params, json_body=json_body, encoded_body=encoded_body, idempotent=idempotent
        )
        return self._decode(response, method, path)

    def _check_batch(self, what: str, ext_ids: Iterable[Any], tokens: Iterable[Any] = ()) -> None:
        unique_ids = {str(x) for x in ext_ids if x is not None}
        unique_tokens = {str(x) for x in tokens if x is not None}
        for label, unique in (("extIds", unique_ids), ("device tokens", unique_tokens)):
            if len(unique) > self.max_batch:
                raise ValueError(
                    f"{what}: {len(unique)} unique {label} in one request; Netmera accepts at most "
                    f"{self.max_batch}. Split the batch (optimove_netmera.http.chunked)."
                )

    @staticmethod
    def _entries(entries: Iterable[Any], model: type) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for entry in entries:
            if isinstance(entry, model):
                out.append(entry.to_json())  # type: ignore[attr-defined]
            elif isinstance(entry, Mapping):
                if not entry.get("extId"):
                    raise ValueError("every entry needs an extId")
                out.append(dict(entry))
            else:
                raise TypeError(f"expected {model.__name__} or dict, got {type(entry).__name__}")
        return out

    # --- profiles ----------------------------------------------------------------------------------
    def set_profile_attributes(self, entries: Sequence[ProfileUpdate | Mapping[str, Any]]) -> int:
        """``setProfileAttributes`` for ≤ ``max_batch`` users; returns the entries sent (0: no request).

        An entry's ``profile`` may be JSON encoded already (``msgspec.Raw`` of an object: sent as it is, e.g. the
        text a sync stored), likewise the key list of :meth:`unset_profile_attributes` (``msgspec.Raw`` of an array).

        Netmera drops unknown keys, wrong types and nulls silently; to clear a value use
        :meth:`unset_profile_attributes`.
        """
        body = self._entries(entries, ProfileUpdate)
        if not body:
            return 0
        for item in body:
            profile = item.get("profile")
            if not (isinstance(profile, Mapping) or _encoded(profile, b"{")):
                raise ValueError("setProfileAttributes entries need a profile object")
        self._check_batch("setProfileAttributes", (e["extId"] for e in body))
        self._call("POST", "setProfileAttributes", json_body=body)
        return len(body)

    def unset_profile_attributes(self, entries: Sequence[ProfileUnset | Mapping[str, Any]]) -> int:
        """``unsetProfileAttributes`` (entries ``{"extId", "profile": [keys]}``); returns the entries sent."""
        body = self._entries(entries, ProfileUnset)
        if not body:
            return 0
        for item in body:
            keys = item.get("profile")
            if (isinstance(keys, str) or not isinstance(keys, Sequence)) and not _encoded(keys, b"["):
                raise ValueError("unsetProfileAttributes entries need a list of attribute names")
        self._check_batch("unsetProfileAttributes", (e["extId"] for e in body))
        self._call("POST", "unsetProfileAttributes", json_body=body)
        return len(body)

    def write_encoded_profiles(self, call: str, body: bytes, count: int) -> int:
        """``setProfileAttributes`` or ``unsetProfileAttributes`` (``call``) with the whole request body already
        encoded: a JSON array of ``count`` entries ``{"extId", "profile"}``, e.g. built by the state database from
        the changes a sync stored, so not one entry passes through Python. The caller vouches for the entries'
        form; the count is checked against ``max_batch`` and the body must be an array. Returns ``count`` (0: no
        request)."""
        if call not in PROFILE_WRITES:
            raise ValueError(f"write_encoded_profiles: {call!r} is not one of {', '.join(PROFILE_WRITES)}")
        return self._post_encoded(call, body, count, "entries", idempotent=True)

    def _post_encoded(self, call: str, body: bytes, count: int, items: str, *, idempotent: bool) -> int:
        """POST ``call`` with a JSON array of ``count`` ``items`` already encoded: the count is checked against
        ``max_batch`` and the body must be an array, before any request. Returns ``count`` (0: no request)."""
        if count > self.max_batch:
            raise ValueError(
                f"{call}: {count} {items} in one request; Netmera accepts at most {self.max_batch}. "
                "Split the batch (optimove_netmera.http.chunked)."
            )
        if not count:
            return 0
        if not body.lstrip().startswith(b"["):
            raise ValueError(f"{call}: the encoded body must be a JSON array of {items}")
        self._call("POST", call, encoded_body=body, idempotent=idempotent)
        return count

    def get_profile_attributes(self, ext_id: str) -> ProfileAttributes | None:
        """``getProfileAttributes?extId=``: the user's current profile.

        Returns None when Netmera does not know the extId (HTTP 400, code 5016), so a caller can tell an
        unknown user from a known one without attributes (an empty ``profile``).
        """
        try:
            body = self._call("GET", "getProfileAttributes", params={"extId": ext_id})
        except ClientError as exc:
            if exc.status == 400 and str(exc.code) == str(UNKNOWN_EXT_ID_CODE):
                return None
            raise
        if body is None:
            return ProfileAttributes(ext_id=ext_id, profile={})
        if not isinstance(body, Mapping):
            raise ResponseFormatError(
                "expected a JSON object",
                service=self.service,
                method="GET",
                path=f"{API_PREFIX}/getProfileAttributes",
                redactor=self._redact,
            )
        return ProfileAttributes.from_json(body, ext_id)

    def register_users(self, entries: Sequence[UserRegistration | Mapping[str, Any]]) -> int:
        """``registerUsers`` (upsert by extId, processed asynchronously); returns the entries sent."""
        body = self._entries(entries, UserRegistration)
        if not body:
            return 0
        self._check_batch("registerUsers", (e["extId"] for e in body), (e.get("deviceToken") for e in body))
        self._call("POST", "registerUsers", json_body=body)
        return len(body)

    # --- tags --------------------------------------------------------------------------------------
    def _tag_call(
        self, name: str, tag: str | Sequence[str], ext_ids: Sequence[str], check_existence: bool
    ) -> list[str]:
        if isinstance(ext_ids, str):
            raise TypeError("ext_ids must be a sequence of extIds, not a string")
        ids = [str(x) for x in ext_ids]
        if not ids:
            return []
        if not tag:
            raise ValueError(f"{name}: tag is required")
        self._check_batch(name, ids)
        body: dict[str, Any] = {"tag": tag if isinstance(tag, str) else list(tag), "extIds": ids}
        if check_existence:
            body["checkExistence"] = True
        result = self._call("POST", name, json_body=body)
        if not check_existence:
            return []
        missing = result.get("notExist") if isinstance(result, Mapping) else None
        if not isinstance(missing, list):  # no list is no answer: never read it as "everyone exists"
            raise ExistenceUnknown(
                f"checkExistence was asked but the answer carried no notExist list ({type(result).__name__}); "
                "which of these extIds Netmera knows is unknown",
                service=self.service,
                method="POST",
                path=f"{API_PREFIX}/{name}",
                redactor=self._redact,
            )
        return [str(x) for x in missing]

    def tag_users(
        self, tag: str | Sequence[str], ext_ids: Sequence[str], *, check_existence: bool = False
    ) -> list[str]:
        """``tagUsers``; with ``check_existence`` returns the extIds Netmera does not know (``notExist``).

        An answer without the ``notExist`` list raises :class:`ExistenceUnknown` (it tells nothing about who exists).
        """
        return self._tag_call("tagUsers", tag, ext_ids, check_existence)

    def untag_users(
        self, tag: str | Sequence[str], ext_ids: Sequence[str], *, check_existence: bool = False
    ) -> list[str]:
        """``untagUsers``; with ``check_existence`` returns the extIds Netmera does not know (``notExist``).

        An answer without the ``notExist`` list raises :class:`ExistenceUnknown` (it tells nothing about who exists).
        """
        return self._tag_call("untagUsers", tag, ext_ids, check_existence)

    # --- notifications -----------------------------------------------------------------------------
    def send_notification(
        self,
        requests: Mapping[str, Any] | Sequence[Mapping[str, Any]],
        *,
        retry_ambiguous: bool = False,
    ) -> int:
        """``sendNotification`` (transactional): one request object, or an array of them.

        ``notificationKey`` is always sent as a JSON string. More than ``max_batch`` unique extIds
        (or device tokens) across the body raises ValueError before any request. Returns the number
        of request objects sent (0 for an empty sequence: no request). See the module docstring for
        the retry rules (``retry_ambiguous``).
        """
        single = isinstance(requests, Mapping)
        items = [requests] if single else list(requests)
        if not items:
            return 0
        body: list[dict[str, Any]] = []
        ext_ids: list[Any] = []
        tokens: list[Any] = []
        for item in items:
            if not isinstance(item, Mapping):
                raise TypeError("sendNotification request objects must be dicts")
            obj = dict(item)
            obj["notificationKey"] = notification_key_str(obj.get("notificationKey"))
            target = obj.get("target")
            if not isinstance(target, Mapping) or not target:
                raise ValueError("sendNotification request objects need a non-empty target")
            ext_ids.extend(_as_list(target.get("extId")))
            tokens.extend(_as_list(target.get("deviceToken")))
            body.append(obj)
        self._check_batch("sendNotification", ext_ids, tokens)
        self._call("POST", "sendNotification", json_body=body[0] if single else body, idempotent=retry_ambiguous)
        return len(body)

    def send_encoded_notifications(self, body: bytes, count: int, *, retry_ambiguous: bool = False) -> int:
        """``sendNotification`` with the whole array body already encoded: ``count`` request objects, e.g. built by
        the state database from a claimed chunk of the send ledger (see
        :func:`~optimove_netmera.campaigns.recipients.claim_chunk`), so not one object passes through Python. The
        caller vouches for the objects' form (a string ``notificationKey``, a non-empty ``target``); ``count`` is
        checked against ``max_batch`` (it bounds the unique extIds) and the body must be an array. Returns ``count``
        (0: no request). Retries as :meth:`send_notification`."""
        return self._post_encoded("sendNotification", body, count, "request objects", idempotent=retry_ambiguous)

    def create_notification_definition(self, body: Mapping[str, Any]) -> str:
        """``createNotificationDefinition``; returns the new notificationKey as a string."""
        path = f"{API_PREFIX}/createNotificationDefinition"
        result = self._call("POST", "createNotificationDefinition", json_body=dict(body))
        key = result.get("notificationKey") if isinstance(result, Mapping) else None
        if key is None:
            raise ResponseFormatError(
                "no notificationKey in the response",
                service=self.service,
                method="POST",
                path=path,
                redactor=self._redact,
            )
        return notification_key_str(key)

    def get_push_stats(self, notification_key: str | int) -> PushStats:
        """``getPushStats?notificationKey=``."""
        key = notification_key_str(notification_key)
        body = self._call("GET", "getPushStats", params={"notificationKey": key})
        if not isinstance(body, Mapping):
            raise ResponseFormatError(
                "expected a JSON object",
                service=self.service,
                method="GET",
                path=f"{API_PREFIX}/getPushStats",
                redactor=self._redact,
            )
        return PushStats.from_json(body, key)

    # --- events ------------------------------------------------------------------------------------
    def fire_events(self, events: Sequence[Mapping[str, Any]], *, retry_ambiguous: bool = False) -> int:
        """``fireEvents``: entries ``{"extId", "name", ...attributes}``; returns the events sent."""
        body = [dict(e) for e in events]
        if not body:
            return 0
        for event in body:
            if not event.get("name"):
                raise ValueError("every event needs a name")
        self._check_batch("fireEvents", (e.get("extId") for e in body))
        self._call("POST", "fireEvents", json_body=body, idempotent=retry_ambiguous)
        return len(body)

"""Contract-faithful Netmera REST API sandbox (FastAPI app factory :func:`create_netmera_app`).

Real endpoints live under ``/rest/3.0/`` and keep the documented contract (``../shared/reference/netmera-api.md``,
below "REF", and ``../shared/specs/netmera-rest-api.yaml``, below "SPEC"): ``X-netmera-api-key`` auth (403 code
2010), the ``{code, error}`` envelope, RFC 9457 problem details for unmatched routes and other framework errors,
no body at all on most writes, ``{}`` from ``sendNotification``, ``{"notificationKey": <int>}`` from
``createNotificationDefinition``, ``notificationKey`` as a string (400 code 2004 otherwise) and the
1000-unique-extIds-per-request cap (REF §2.2-§2.4, §3, §4). Sandbox-only endpoints live under ``/_sandbox/``
(no auth, no faults, not counted): see :class:`~optimove_netmera.sandbox.netmera_admin.NetmeraAdmin`.

Decisions where the documents are silent or ambiguous (each is observable through the admin API):

* **extIds unknown to Netmera.** A user is known when ``dataset.netmera_known(ext_id)`` says so (the ~95% of
  Optimove customers that installed the app), or after ``registerUsers`` / ``POST /_sandbox/users``.

  - ``setProfileAttributes`` / ``unsetProfileAttributes``: entries for unknown users are well-formed, so they are
    *not* "invalid entries"; they are skipped silently (nothing stored, 200). REF §3.4 and §3.3 document exactly
    this for the sibling writes ("unknown extIds silently ignored" for ``tagUsers``; "unknown id -> 200, nothing
    changes" for ``enablePush``), and REF §9.5 warns that a successful write proves nothing. A user is only created
    by ``registerUsers`` (REF §3.1 "matched to an existing user by extId, else a new user is created").
  - ``getProfileAttributes`` for an unknown user: HTTP 400 ``{"code": 5016, "error": "The external id is not found
    in the current application"}`` (SPEC error table, code 5016). A known user without attributes answers
    ``{"extId": .., "profile": {}}``, so the two cases are distinguishable; this is how a client observes that a
    write was skipped.
  - ``sendNotification``: unknown targets are not delivered (recorded as ``failed`` deliveries with the reason, see
    ``GET /_sandbox/deliveries?status=failed``). When *no* target of the whole request is a known user, the request
    fails with HTTP 400 code 5016 (same table row), so a single-target send to an unknown user is visible to the
    caller; a chunk with some known users answers ``{}`` like the real API, which reports per-user failures only
    asynchronously (SPEC sendNotification "delivery to that user fails even when the user matches the target").
    Config ``unknown_target_error: false`` turns the 5016 off (always ``{}``).
* **Profile attribute keys.** The defined attributes are the standard ones (:data:`STANDARD_PROFILE_ATTRIBUTES`)
  plus a configurable custom set. ``profile_attributes`` (``POST /_sandbox/config``) is ``"*"`` (the default:
  any custom key is accepted, values must be a string, number, boolean or array of those) or a dict
  ``{name: "string"|"number"|"boolean"|"date"|"array"}`` (strict: only those names, case-sensitive, exact types;
  ``"date"`` accepts ``YYYY-MM-DD`` / ISO-8601 strings or epoch milliseconds). ``"dataset"`` defines the
  camelCase names of the dataset's attributes (``FirstName`` -> ``firstName``, ``LTV`` -> ``ltv``, see
  :data:`DATASET_PROFILE_ATTRIBUTES`) with their types, strictly. Undefined keys,
  wrong-type values and nulls are dropped silently and counted in ``GET /_sandbox/stats`` (REF §3.2
  setProfileAttributes). Values are stored as sent (dates are not converted to epoch ms). ``email``/``msisdn`` are
  system fields: ``unsetProfileAttributes`` does not clear them (REF §3.2 "unsetProfileAttributes won't clear
  email").
* **Invalid entries.** An entry is invalid when it is not an object, ``extId`` is not a non-empty string, or
  ``profile`` has the wrong type. Invalid entries are skipped; HTTP 400 code 2009 only when every entry is invalid
  (an empty array is a 200 no-op). With ``reject_invalid_entries: true`` one invalid entry - including one that
  holds an undefined key, a wrong-type value or a null, which is what that panel setting is for - fails the whole
  request with 400 code 2009 and nothing is written (REF §3.2).
* **Faults.** ``FaultMiddleware`` wraps the whole built stack (outside Starlette's error middleware) so that an
  injected connection reset is a real TCP reset; injected faults are counted in ``/_sandbox/requests`` as well.
* **Codes the documents do not give.** Over the 1000-extId cap: 400 code 2009 with a message naming the limit
  (REF §2.4 gives the limit, not the code; 2009 is the code Netmera uses for unprocessable bodies, REF §3.2, §4.1).
  Unknown ``notificationKey`` (sendNotification, getPushStats): 400 code 5003 "Message with given messageId could not
  be found". Missing ``notificationKey``/``target``/``extId``: 400 code 2020. ``registerUsers`` follows REF §3.1
  (any invalid entry -> 400 and nothing registered, empty array -> 2020, single object -> 400 code 2009).
  A JSON body with a ``Content-Type`` other than ``application/json`` gets a 415 problem detail (REF §1
  "Content-Type: application/json required").
* **Notification definitions.** Panel definitions are seeded for :data:`DEFAULT_NOTIFICATION_KEYS` (101-105;
  the integration config maps the Optimove push template IDs to them); ``POST /_sandbox/config
  {"notification_keys": [...]}`` replaces that set. ``createNotificationDefinition`` adds API definitions with the
  next free key. A definition's ``personalizedMessage`` is rendered per delivery from ``message.params`` then the
  stored profile (REF §4.1, §4.2: users lacking a referenced value get the default ``message``); an unresolved
  placeholder in ``click.deeplink`` makes that delivery fail (SPEC "Deeplink placeholders").
* ``getPushStats`` is computed from the recorded deliveries; a delivered user's platform is the registered one, or
  IOS/ANDROID derived from ``(seed, extId)``; web platforms report as ``WP`` (SPEC Platform).

Performance: handlers are plain ``async def`` working on the body decoded by ``msgspec`` (strict RFC 8259 JSON:
UTF-8, no ``NaN``, no lone surrogates; anything else is 2009) with no per-entry models, so a 1000-entry
``setProfileAttributes`` of 20 values each takes ~8 ms of the sandbox's CPU; profiles are one dict per user
with shared (canonical) key strings and de-duplicated short string values, so 1,000,000 profiles x 20 attributes fit
in memory.
"""

from __future__ import annotations

import functools
import hmac
import itertools
import json
import re
import time
import zlib
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from datetime import UTC, datetime
from typing import Any, Protocol

import msgspec
from fastapi import FastAPI, Request
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from optimove_netmera.sandbox.faults import FaultInjectingApp, FaultInjector

__all__ = [
    "DATASET_PROFILE_ATTRIBUTES",
    "DEFAULT_NOTIFICATION_KEYS",
    "STANDARD_PROFILE_ATTRIBUTES",
    "KnownUsers",
    "NetmeraState",
    "create_netmera_app",
]

REST = "/rest/3.0"
ADMIN = "/_sandbox"

#: Netmera's standard profile attributes (REF §3.2 getProfileAttributes example, Netmera user guide).
STANDARD_PROFILE_ATTRIBUTES: dict[str, str] = {
    "name": "string",
    "surname": "string",
    "email": "string",
    "msisdn": "string",
    "gender": "string",
    "dateOfBirth": "date",
    "age": "number",
}
#: Standard fields that ``unsetProfileAttributes`` never clears (REF §3.2).
SYSTEM_FIELDS = frozenset({"email", "msisdn"})
#: camelCase Netmera names for the sandbox dataset's Optimove attributes (``profile_attributes: "dataset"``).
DATASET_PROFILE_ATTRIBUTES: dict[str, str] = {
    "firstName": "string",
    "lastName": "string",
    "email": "string",
    "mobilePhone": "string",
    "country": "string",
    "city": "string",
    "language": "string",
    "gender": "string",
    "segment": "string",
    "favoriteCategory": "string",
    "age": "number",
    "ltv": "number",
    "score": "number",
    "totalOrders": "number",
    "isVIP": "boolean",
    "optIn": "boolean",
    "pushEnabled": "boolean",
    "birthDate": "date",
    "registrationDate": "date",
    "lastOrderDate": "date",
}
#: Panel-defined transactional definitions present at start. The integration config maps Optimove push templates
#: (the dataset's channel 506 has template IDs 1-4) to these keys; ``notification_keys`` config replaces the set.
DEFAULT_NOTIFICATION_KEYS: tuple[int, ...] = (101, 102, 103, 104, 105)
ATTRIBUTE_TYPES = ("string", "number", "boolean", "date", "array")
PLATFORMS = frozenset(
    {"IOS", "ANDROID", "CHROME", "FIREFOX", "SAFARI", "EDGE", "OPERA", "YANDEX", "MACOS", "EMAIL", "SMS"}
)
_WEB_PLATFORMS = frozenset({"CHROME", "FIREFOX", "SAFARI", "EDGE", "OPERA", "YANDEX"})
_PLACEHOLDER = re.compile(r"@\{([^}]+)\}")
_SHORT_VALUE = 32  # string values up to this length are de-duplicated in memory
_VALUE_CACHE_LIMIT = 500_000

MSG_UNKNOWN_EXT_ID = "The external id is not found in the current application"
MSG_UNKNOWN_USER = "The user with given identifier is not found"
MSG_UNKNOWN_KEY = "Message with given messageId could not be found"

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class KnownUsers(Protocol):
    """What the Netmera sandbox needs from the dataset: which customers exist as Netmera users.

    Optional extras are used when present: ``netmera_known_many(ext_ids) -> list[bool]`` (batch lookups) and
    ``attribute_types() -> {name: type}`` (for ``profile_attributes: "dataset"``).
    """

    def netmera_known(self, ext_id: str) -> bool:
        """True when ``ext_id`` is a user of the Netmera app at the seed's start."""
        ...


# --------------------------------------------------------------------------------------------------------------
# value checks


def _is_str(v: Any) -> bool:
    return type(v) is str


def _is_number(v: Any) -> bool:
    return type(v) is int or type(v) is float


def _is_bool(v: Any) -> bool:
    return type(v) is bool


def _is_date(v: Any) -> bool:
    if type(v) is int:
        return True  # epoch milliseconds, as Netmera returns dates (REF §3.2 "dateOfBirth": 624315600000)
    if type(v) is not str or len(v) < 10:
        return False
    try:
        datetime.fromisoformat(v)
    except ValueError:
        return False
    return True


_SCALARS = (str, int, float, bool)


def _is_array(v: Any) -> bool:
    return type(v) is list and all(type(x) in _SCALARS for x in v)


def _is_any(v: Any) -> bool:
    t = type(v)
    return t in _SCALARS or (t is list and all(type(x) in _SCALARS for x in v))


_CHECKS: dict[str, Callable[[Any], bool]] = {
    "string": _is_str,
    "number": _is_number,
    "boolean": _is_bool,
    "date": _is_date,
    "array": _is_array,
}


# --------------------------------------------------------------------------------------------------------------
# responses


def _json(obj: Any, status: int = 200) -> Response:
    return Response(json.dumps(obj, separators=(",", ":")).encode(), status, media_type="application/json")


def _error(code: int, message: str, status: int = 400) -> Response:
    return _json({"code": code, "error": message}, status)


def _empty() -> Response:
    """HTTP 200 with no body at all (zero length, no content type), as Netmera's writes answer (SPEC)."""
    return Response(status_code=200)


def _problem(status: int, title: str, detail: str, instance: str) -> Response:
    body = {"type": "about:blank", "title": title, "status": status, "detail": detail, "instance": instance}
    return Response(json.dumps(body, separators=(",", ":")).encode(), status, media_type="application/problem+json")


def _admin_error(message: str, status: int = 400) -> Response:
    return _json({"detail": message}, status)


class _Rejected(Exception):
    """A request-level Netmera error (becomes the ``{code, error}`` envelope)."""

    def __init__(self, code: int, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.code, self.message, self.status = code, message, status

    def response(self) -> Response:
        return _error(self.code, self.message, self.status)


def _ms(ts: float) -> int:
    return int(ts * 1000)


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


# --------------------------------------------------------------------------------------------------------------
# state


#: How ``checkExistence: true`` is answered: ``list`` (documented, REF §3.4: ``{"notExist": [...]}``, empty list
#: when everyone exists), ``empty`` (no body, as the SPEC's untagUsers/tagUsers answer, i.e. a Netmera that ignored
#: the flag) or ``object`` (``{}``). The last two are faults for testing clients: neither says who exists.
EXISTENCE_ANSWERS = ("list", "empty", "object")


def _default_config() -> dict[str, Any]:
    return {
        "max_ext_ids": 1000,
        "reject_invalid_entries": False,
        "profile_attributes": "*",
        "notification_keys": list(DEFAULT_NOTIFICATION_KEYS),
        "unknown_target_error": True,
        "existence_answer": "list",
    }


def _validate_config(patch: Any) -> dict[str, Any]:
    """Check a ``POST /_sandbox/config`` body; raises ValueError naming the bad key."""
    if not isinstance(patch, dict):
        raise ValueError("config must be a JSON object")
    allowed = _default_config()
    unknown = sorted(set(patch) - set(allowed))
    if unknown:
        raise ValueError(f"unknown config key(s): {', '.join(unknown)}; allowed: {', '.join(sorted(allowed))}")
    out: dict[str, Any] = {}
    for key, value in patch.items():
        if key == "max_ext_ids":
            if type(value) is not int or value < 1:
                raise ValueError("max_ext_ids must be a positive integer")
        elif key in ("reject_invalid_entries", "unknown_target_error"):
            if type(value) is not bool:
                raise ValueError(f"{key} must be true or false")
        elif key == "existence_answer":
            if value not in EXISTENCE_ANSWERS:
                raise ValueError(f"existence_answer must be one of {', '.join(EXISTENCE_ANSWERS)}, got {value!r}")
        elif key == "profile_attributes":
            if value in ("*", "dataset"):
                pass
            elif isinstance(value, dict):
                for name, kind in value.items():
                    if not name or kind not in ATTRIBUTE_TYPES:
                        raise ValueError(
                            f"profile_attributes[{name!r}] must be one of {', '.join(ATTRIBUTE_TYPES)}, got {kind!r}"
                        )
                value = dict(value)
            else:
                raise ValueError('profile_attributes must be "*", "dataset" or {name: type}')
        elif key == "notification_keys":
            if not isinstance(value, list) or not all(_key_int(k) is not None for k in value):
                raise ValueError("notification_keys must be a list of integer keys (numbers or numeric strings)")
            value = sorted({_key_int(k) for k in value})  # type: ignore[type-var]
        out[key] = value
    return out


def camel_case(name: str) -> str:
    """Optimove RealFieldName -> Netmera-style attribute name: ``FirstName`` -> ``firstName``, ``LTV`` -> ``ltv``."""
    if name.isupper():
        return name.lower()
    return name[:1].lower() + name[1:]


def _key_int(value: Any) -> int | None:
    if type(value) is int and value > 0:
        return value
    if type(value) is str and value.isdigit() and int(value) > 0:
        return int(value)
    return None


class NetmeraState:
    """All mutable state of one Netmera sandbox app (single event loop: no locks needed)."""

    def __init__(self, dataset: KnownUsers, seed: int) -> None:
        self.dataset = dataset
        self.seed = seed
        self.reset()

    # ---- lifecycle -------------------------------------------------------------------------------------------

    def reset(self) -> None:
        """Back to the seed's state: no profiles, no deliveries, seeded definitions, default config, zero counts."""
        self.config: dict[str, Any] = _default_config()
        self.profiles: dict[str, dict[str, Any]] = {}
        self.registered: dict[str, dict[str, Any]] = {}
        self.forgotten: set[str] = set()
        self.tags: dict[str, list[str]] = {}
        self.by_token: dict[str, str] = {}
        self.by_email: dict[str, str] = {}
        self.by_msisdn: dict[str, str] = {}
        self.definitions: dict[int, dict[str, Any]] = {}
        self.api_definitions: dict[int, dict[str, Any]] = {}
        # deliveries: (extId, notificationKey, params, received_ts, request_seq, platform, status, reason, text,
        #              non-extId target as given)
        self.deliveries: list[tuple[Any, ...]] = []
        self.deliveries_by_key: dict[int, list[tuple[Any, ...]]] = {}
        self.events: list[dict[str, Any]] = []
        self.counts: dict[str, dict[str, int]] = {}
        self.total = 0
        self.seq = itertools.count(1)
        self.stats: dict[str, Any] = {}
        self._canon: dict[str, str] = {}
        self.short_values: dict[str, str] = {}
        self._apply_config()

    def dataset_attributes(self) -> dict[str, str]:
        """camelCase Netmera names and types of the dataset's attributes (``profile_attributes: "dataset"``)."""
        types = getattr(self.dataset, "attribute_types", None)
        if types is None:
            return dict(DATASET_PROFILE_ATTRIBUTES)
        return {camel_case(name): kind for name, kind in types().items() if kind in _CHECKS}

    def configure(self, patch: dict[str, Any]) -> None:
        """Apply an already validated config patch."""
        self.config.update(patch)
        self._apply_config()

    def _apply_config(self) -> None:
        attrs = self.config["profile_attributes"]
        if attrs == "*":
            custom: dict[str, str] = {}
        elif attrs == "dataset":
            custom = self.dataset_attributes()
        else:
            custom = attrs
        defined = {**STANDARD_PROFILE_ATTRIBUTES, **custom}
        self.wildcard = attrs == "*"
        self.checks: dict[str, Callable[[Any], bool]] = {k: _CHECKS[t] for k, t in defined.items()}
        self.defined_types = defined
        created = time.time()
        panel: dict[int, dict[str, Any]] = {}
        for key in self.config["notification_keys"]:
            panel[key] = self.definitions.get(key) or _seed_definition(key, created)
        self.definitions = {**panel, **self.api_definitions}

    # ---- counters --------------------------------------------------------------------------------------------

    def record(self, method: str, path: str, status: str) -> None:
        """Count one request to a real endpoint (``FaultMiddleware`` also reports injected faults here)."""
        per = self.counts.setdefault(f"{method} {path}", {})
        per[status] = per.get(status, 0) + 1
        self.total += 1

    def bump(self, endpoint: str, **counters: int) -> None:
        """Add to the per-endpoint ingest counters shown by ``GET /_sandbox/stats``."""
        per = self.stats.setdefault(endpoint, {})
        for name, n in counters.items():
            if n:
                per[name] = per.get(name, 0) + n

    def dropped(self, endpoint: str, key: str, reason: str) -> None:
        """Count one silently dropped profile value."""
        per = self.stats.setdefault(endpoint, {}).setdefault("dropped_keys", {}).setdefault(key, {})
        per[reason] = per.get(reason, 0) + 1

    # ---- users -----------------------------------------------------------------------------------------------

    def known(self, ext_id: str) -> bool:
        """Whether ``ext_id`` is a user of the Netmera app."""
        if ext_id in self.registered:
            return True
        return ext_id not in self.forgotten and self.dataset.netmera_known(ext_id)

    def known_many(self, ext_ids: list[str]) -> list[bool]:
        """:meth:`known` for many extIds at once (one vectorised dataset call when the dataset offers one)."""
        out: list[bool] = [False] * len(ext_ids)
        ask: list[str] = []
        where: list[int] = []
        registered, forgotten = self.registered, self.forgotten
        for i, ext_id in enumerate(ext_ids):
            if ext_id in registered:
                out[i] = True
            elif ext_id not in forgotten:
                ask.append(ext_id)
                where.append(i)
        if ask:
            many = getattr(self.dataset, "netmera_known_many", None)
            answers = many(ask) if many is not None else [self.dataset.netmera_known(e) for e in ask]
            for i, answer in zip(where, answers, strict=True):
                out[i] = bool(answer)
        return out

    def platform(self, ext_id: str) -> str:
        """The platform of the user's device, for push stats."""
        reg = self.registered.get(ext_id)
        platform = reg.get("platform") if reg else None
        if platform:
            return "WP" if platform in _WEB_PLATFORMS else platform
        return "IOS" if zlib.crc32(f"{self.seed}:{ext_id}".encode()) % 2 == 0 else "ANDROID"

    def add_users(self, ext_ids: Iterable[str]) -> int:
        """Make ``ext_ids`` known users (as if registered by the SDK); returns how many were new."""
        new = 0
        for ext_id in ext_ids:
            self.forgotten.discard(ext_id)
            if ext_id not in self.registered:
                new += 0 if self.dataset.netmera_known(ext_id) else 1
                self.registered[ext_id] = {"platform": None, "tags": []}
        return new

    def forget_users(self, ext_ids: Iterable[str]) -> int:
        """Make ``ext_ids`` unknown (their profiles are dropped); returns how many were known."""
        gone = 0
        for ext_id in ext_ids:
            gone += self.known(ext_id)
            self.registered.pop(ext_id, None)
            self.profiles.pop(ext_id, None)
            self.tags.pop(ext_id, None)
            self.forgotten.add(ext_id)
        return gone

    # ---- profiles --------------------------------------------------------------------------------------------

    def canon_key(self, key: str) -> str:
        """One shared string object per attribute name (saves memory across a million profiles)."""
        c = self._canon.get(key)
        if c is None:
            c = self._canon[key] = key
        return c

    def canon_value(self, value: Any) -> Any:
        """De-duplicate short string values (countries, segments, first names...)."""
        if type(value) is str and len(value) <= _SHORT_VALUE:
            c = self.short_values.get(value)
            if c is not None:
                return c
            if len(self.short_values) < _VALUE_CACHE_LIMIT:
                self.short_values[value] = value
        return value

    def key_info(self, key: str) -> tuple[str, Callable[[Any], bool] | None]:
        """The canonical key string and the value check for ``key`` (check None: the key is not defined)."""
        check = self.checks.get(key)
        if check is None and self.wildcard:
            check = _is_any
        return self.canon_key(key), check

    def check_value(self, key: str, value: Any) -> str | None:
        """Why ``key: value`` would be dropped (``undefined``, ``null``, ``wrong_type``), or None when accepted."""
        check = self.checks.get(key)
        if check is None:
            if not self.wildcard:
                return "undefined"
            check = _is_any
        if value is None:
            return "null"
        return None if check(value) else "wrong_type"

    def visible_profile(self, ext_id: str) -> dict[str, Any]:
        """The stored attributes of a user that are still defined (REF §3.2 getProfileAttributes)."""
        profile = self.profiles.get(ext_id) or {}
        if self.wildcard:
            return dict(profile)
        return {k: v for k, v in profile.items() if k in self.checks}

    # ---- deliveries ------------------------------------------------------------------------------------------

    def delivery_dict(self, d: tuple[Any, ...]) -> dict[str, Any]:
        """A recorded delivery as JSON."""
        out = {
            "extId": d[0],
            "notificationKey": d[1],
            "params": d[2],
            "received_at": _iso(d[3]),
            "request_seq": d[4],
            "platform": d[5],
            "status": d[6],
            "text": d[8],
        }
        if d[7]:
            out["reason"] = d[7]
        if d[9]:
            out["target"] = d[9]
        return out


def _seed_definition(key: int, created: float) -> dict[str, Any]:
    return {
        "notificationKey": key,
        "source": "panel",
        "created_at": _iso(created),
        "created_ts": created,
        "definition": {
            "title": f"Sandbox push {key}",
            "message": f"Sandbox push {key}",
            "personalizedMessage": f"Hi @{{name}}, sandbox push {key}",
            "platforms": ["IOS", "ANDROID"],
        },
    }


# --------------------------------------------------------------------------------------------------------------
# middleware


class _CountingMiddleware:
    """Counts every request that reaches the app (inside the fault middleware) and numbers it."""

    def __init__(self, app: ASGIApp, state: NetmeraState) -> None:
        self.app = app
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or path.startswith(ADMIN + "/"):
            await self.app(scope, receive, send)
            return
        state = self.state
        scope["sandbox.seq"] = next(state.seq)
        status = "500"

        async def _send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = str(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, _send)
        finally:
            state.record(scope.get("method", ""), path, status)


# --------------------------------------------------------------------------------------------------------------
# the app


def create_netmera_app(dataset: KnownUsers, *, api_key: str, faults: FaultInjector, seed: int) -> FastAPI:
    """The Netmera sandbox: real ``/rest/3.0`` endpoints plus ``/_sandbox`` admin endpoints."""
    state = NetmeraState(dataset, seed)
    key_bytes = api_key.encode()
    app = FaultInjectingApp(title="Netmera sandbox", docs_url=None, redoc_url=None, openapi_url=None)
    app.inject_faults(faults, "netmera", recorder=state.record)
    app.state.netmera = state

    # Inner: counts requests that reach the app. Outer: faults, which report injected ones via ``recorder``.
    app.add_middleware(_CountingMiddleware, state=state)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
        path = request.url.path
        if path.startswith(ADMIN + "/"):
            return _admin_error(str(exc.detail), exc.status_code)
        if exc.status_code == 404:
            return _problem(404, "Not Found", f"No static resource {path.lstrip('/')}.", path)
        if exc.status_code == 405:
            return _problem(405, "Method Not Allowed", f"Method '{request.method}' is not supported.", path)
        return _problem(exc.status_code, str(exc.detail), str(exc.detail), path)

    @app.exception_handler(Exception)
    async def _crash(request: Request, exc: Exception) -> Response:
        return _error(2001, "Internal server error", 500)

    # ---- helpers ---------------------------------------------------------------------------------------------

    def auth(request: Request) -> Response | None:
        given = request.headers.get("x-netmera-api-key")
        if given is None or not hmac.compare_digest(given.encode(), key_bytes):
            return _error(2010, "API key is invalid", 403)
        return None

    async def json_body(request: Request) -> Any:
        """The parsed JSON body, or raise :class:`_Rejected` (2009) / return a 415 problem response."""
        ctype = request.headers.get("content-type", "")
        if ctype.split(";", 1)[0].strip().lower() != "application/json":
            shown = ctype or "application/octet-stream"
            raise _Unsupported(
                _problem(415, "Unsupported Media Type", f"Content-Type '{shown}' is not supported.", request.url.path)
            )
        raw = await request.body()
        try:
            return msgspec.json.decode(raw)  # strict RFC 8259: UTF-8 only, no NaN, no lone surrogates
        except msgspec.DecodeError as exc:
            raise _Rejected(2009, "Invalid JSON") from exc

    def cap(unique: int) -> None:
        limit = state.config["max_ext_ids"]
        if unique > limit:
            raise _Rejected(2009, f"A maximum of {limit} unique external ids is allowed per request, got {unique}")

    async def guarded(request: Request, handler: Callable[[Any, Request], Response]) -> Response:
        denied = auth(request)
        if denied is not None:
            return denied
        try:
            body = await json_body(request)
            return handler(body, request)
        except _Rejected as exc:
            return exc.response()
        except _Unsupported as exc:
            return exc.response

    # ---- profile attributes ----------------------------------------------------------------------------------

    def set_profile_attributes(body: Any, request: Request) -> Response:
        if type(body) is not list:
            raise _Rejected(2009, "Invalid JSON")
        valid: list[tuple[str, dict[str, Any]]] = []
        ids: set[str] = set()
        invalid = 0
        for entry in body:
            if type(entry) is not dict:
                invalid += 1
                continue
            ext_id, profile = entry.get("extId"), entry.get("profile")
            if type(ext_id) is str and ext_id:
                ids.add(ext_id)
                if type(profile) is dict:
                    valid.append((ext_id, profile))
                    continue
            invalid += 1
        cap(len(ids))
        ep = "setProfileAttributes"
        strict = state.config["reject_invalid_entries"]
        if strict:
            if invalid:
                raise _Rejected(2009, f"{invalid} invalid entries; the application rejects invalid entries")
            for i, (_ext_id, profile) in enumerate(valid):
                for key, value in profile.items():
                    reason = state.check_value(key, value)
                    if reason is not None:
                        raise _Rejected(
                            2009,
                            f"Invalid entry at index {i}: profile attribute '{key}' ({reason}); "
                            "the application rejects invalid entries",
                        )
        if body and not valid:
            state.bump(ep, requests_rejected=1, invalid_entries=invalid)
            raise _Rejected(2009, "Invalid JSON")
        applied = unknown = values = dropped = 0
        profiles, short_values = state.profiles, state.short_values
        room = _VALUE_CACHE_LIMIT - len(short_values)
        keyinfo: dict[str, tuple[str, Callable[[Any], bool] | None]] = {}  # per request: key -> (canonical, check)
        known = state.known_many([ext_id for ext_id, _ in valid])
        shared_value = short_values.get
        for (ext_id, profile), is_known in zip(valid, known, strict=True):
            if not is_known:
                unknown += 1
                continue
            accepted: dict[str, Any] = {}  # the entry's kept values, stored in one update
            for key, value in profile.items():
                info = keyinfo.get(key)
                if info is None:
                    info = keyinfo[key] = state.key_info(key)
                check = info[1]
                if check is None or value is None or not check(value):
                    dropped += 1
                    state.dropped(ep, key, "undefined" if check is None else "null" if value is None else "wrong_type")
                    continue
                if type(value) is str and len(value) <= _SHORT_VALUE:
                    shared = shared_value(value)
                    if shared is not None:
                        value = shared
                    elif room > 0:
                        short_values[value] = value
                        room -= 1
                accepted[info[0]] = value
            if accepted:
                stored = profiles.get(ext_id)
                if stored is None:
                    profiles[ext_id] = accepted
                else:
                    stored.update(accepted)
                values += len(accepted)
            applied += 1
        state.bump(
            ep,
            requests=1,
            entries=len(body),
            applied_entries=applied,
            unknown_ext_ids=unknown,
            invalid_entries=invalid,
            values_set=values,
            values_dropped=dropped,
        )
        return _empty()

    def unset_profile_attributes(body: Any, request: Request) -> Response:
        if type(body) is not list:
            raise _Rejected(2009, "Invalid JSON")
        valid: list[tuple[str, list[Any]]] = []
        ids: set[str] = set()
        invalid = 0
        for entry in body:
            if type(entry) is dict:
                ext_id, keys = entry.get("extId"), entry.get("profile")
                if type(ext_id) is str and ext_id:
                    ids.add(ext_id)
                    if type(keys) is list and all(type(k) is str for k in keys):
                        valid.append((ext_id, keys))
                        continue
            invalid += 1
        cap(len(ids))
        ep = "unsetProfileAttributes"
        if state.config["reject_invalid_entries"] and invalid:
            raise _Rejected(2009, f"{invalid} invalid entries; the application rejects invalid entries")
        if body and not valid:
            state.bump(ep, requests_rejected=1, invalid_entries=invalid)
            raise _Rejected(2009, "Invalid JSON")
        applied = unknown = removed = 0
        known = state.known_many([ext_id for ext_id, _ in valid])
        for (ext_id, keys), is_known in zip(valid, known, strict=True):
            if not is_known:
                unknown += 1
                continue
            applied += 1
            stored = state.profiles.get(ext_id)
            if not stored:
                continue
            for key in keys:
                if key not in SYSTEM_FIELDS and stored.pop(key, None) is not None:
                    removed += 1
            if not stored:
                del state.profiles[ext_id]
        state.bump(
            ep,
            requests=1,
            entries=len(body),
            applied_entries=applied,
            unknown_ext_ids=unknown,
            invalid_entries=invalid,
            values_removed=removed,
        )
        return _empty()

    # ---- tags ------------------------------------------------------------------------------------------------

    def tag_users(body: Any, request: Request, *, add: bool) -> Response:
        """``tagUsers`` / ``untagUsers`` ``{tag, extIds[, checkExistence]}`` (REF §3.4, SPEC TagUsersRequest).

        Unknown extIds are ignored silently; with ``checkExistence: true`` the answer lists them in ``notExist``
        (REF §3.4, from the "remove tags from users" reference page; accepted on both endpoints here), always present
        (``[]`` when everyone exists); otherwise the answer has no body. Config ``existence_answer`` (``empty`` /
        ``object``) answers without the list, like a Netmera that ignored the flag.
        """
        if type(body) is not dict:
            raise _Rejected(2009, "Invalid JSON: the body must be an object {tag, extIds}")
        tag, ext_ids, check = body.get("tag"), body.get("extIds"), body.get("checkExistence", False)
        if tag is None or ext_ids is None:
            raise _Rejected(2020, f"Missing required parameter: {'tag' if tag is None else 'extIds'}")
        tags = [tag] if type(tag) is str else tag
        if type(tags) is not list or not tags or not all(type(t) is str and t for t in tags):
            raise _Rejected(2004, "Field 'tag' should be a text or an array of texts")
        if type(ext_ids) is not list or not all(type(e) is str and e for e in ext_ids):
            raise _Rejected(2004, "Field 'extIds' should be an array of texts")
        if type(check) is not bool:
            raise _Rejected(2004, "Field 'checkExistence' should be a boolean")
        unique = list(dict.fromkeys(ext_ids))
        cap(len(unique))
        not_exist: list[str] = []
        for ext_id, is_known in zip(unique, state.known_many(unique), strict=True):
            if not is_known:
                not_exist.append(ext_id)
                continue
            have = state.tags.setdefault(ext_id, [])
            for t in tags:
                if add and t not in have:
                    have.append(t)
                elif not add and t in have:
                    have.remove(t)
        state.bump("tagUsers" if add else "untagUsers", requests=1, entries=len(unique), unknown_ext_ids=len(not_exist))
        if not check or state.config["existence_answer"] == "empty":
            return _empty()
        return _json({"notExist": not_exist} if state.config["existence_answer"] == "list" else {})

    @app.post(f"{REST}/tagUsers")
    async def tag_users_route(request: Request) -> Response:
        return await guarded(request, functools.partial(tag_users, add=True))

    @app.post(f"{REST}/untagUsers")
    async def untag_users_route(request: Request) -> Response:
        return await guarded(request, functools.partial(tag_users, add=False))

    # ---- users -----------------------------------------------------------------------------------------------

    def register_users(body: Any, request: Request) -> Response:
        if type(body) is not list:
            raise _Rejected(2009, "Invalid JSON: the body must be an array of registrations")
        if not body:
            raise _Rejected(2020, "Missing required parameter: at least one registration is required")
        ids: set[str] = set()
        for i, entry in enumerate(body):
            if type(entry) is not dict:
                raise _Rejected(2009, f"Invalid JSON: registration {i} is not an object")
            platform, msisdn, ext_id = entry.get("platform"), entry.get("msisdn"), entry.get("extId")
            if platform is None and msisdn is None:
                raise _Rejected(2020, f"Missing required parameter: registration {i} needs platform or msisdn")
            if platform is not None and (type(platform) is not str or platform not in PLATFORMS):
                raise _Rejected(2004, f"Field 'platform' of registration {i} is not a known platform")
            if msisdn is not None and type(msisdn) is not str:
                raise _Rejected(2004, "Field 'msisdn' should be a text")
            if "tags" in entry and not (type(entry["tags"]) is list and all(type(t) is str for t in entry["tags"])):
                raise _Rejected(2004, "Field 'tags' should be an array")
            if "profile" in entry and type(entry["profile"]) is not dict:
                raise _Rejected(2009, f"Invalid JSON: the profile of registration {i} cannot be read")
            if ext_id is not None:
                if type(ext_id) is not str or not ext_id:
                    raise _Rejected(2004, "Field 'extId' should be a text")
                ids.add(ext_id)
            for name in ("deviceToken", "email"):
                if entry.get(name) is not None and type(entry[name]) is not str:
                    raise _Rejected(2004, f"Field '{name}' should be a text")
        cap(len(ids))
        ep = "registerUsers"
        created = values = 0
        for entry in body:
            ext_id = entry.get("extId")
            if ext_id is None:
                continue  # an anonymous registration: Netmera keeps it, the sandbox cannot address it later
            state.forgotten.discard(ext_id)
            user = state.registered.get(ext_id)
            if user is None:
                created += 0 if state.dataset.netmera_known(ext_id) else 1
                user = state.registered[ext_id] = {"platform": None, "tags": []}
            for name, index in (
                ("deviceToken", state.by_token),
                ("email", state.by_email),
                ("msisdn", state.by_msisdn),
            ):
                value = entry.get(name)
                if value:
                    user[name] = value
                    index[value] = ext_id
            if entry.get("platform"):
                user["platform"] = entry["platform"]
            for tag in entry.get("tags") or ():
                if tag not in user["tags"]:
                    user["tags"].append(tag)
            profile = entry.get("profile") or {}
            stored = state.profiles.get(ext_id)
            for key, value in profile.items():
                reason = state.check_value(key, value)
                if reason is not None:
                    state.dropped(ep, key, reason)
                    continue
                if stored is None:
                    stored = state.profiles[ext_id] = {}
                stored[state.canon_key(key)] = state.canon_value(value)
                values += 1
        state.bump(ep, requests=1, entries=len(body), new_users=created, values_set=values)
        return _empty()

    # ---- notifications ---------------------------------------------------------------------------------------

    def create_definition(body: Any, request: Request) -> Response:
        if type(body) is not dict:
            raise _Rejected(2009, "Invalid JSON")
        platforms = body.get("platforms")
        if platforms is not None:
            if type(platforms) is not list or not all(type(p) is str and p in PLATFORMS for p in platforms):
                raise _Rejected(2004, "Field 'platforms' should be an array of platforms")
            web = {p in _WEB_PLATFORMS for p in platforms if p not in ("EMAIL", "SMS")}
            if len(web) > 1:
                raise _Rejected(2021, "Invalid configuration: web and mobile platforms cannot be mixed")
        key = max([*state.definitions, 0]) + 1
        created = time.time()
        definition = {
            "notificationKey": key,
            "source": "api",
            "created_at": _iso(created),
            "created_ts": created,
            "definition": body,
        }
        state.api_definitions[key] = definition
        state.definitions[key] = definition
        return _json({"notificationKey": key})

    def send_notification(body: Any, request: Request) -> Response:
        items = body if type(body) is list else [body]
        if not items:
            raise _Rejected(2020, "Missing required parameter: at least one notification request is required")
        plan: list[tuple[str, dict[str, Any], list[tuple[str | None, str | None]], dict[str, Any]]] = []
        ids: set[str] = set()
        for item in items:
            if type(item) is not dict:
                raise _Rejected(2009, "Invalid JSON")
            if item.get("notificationKey") is None:
                raise _Rejected(2020, "Missing required parameter: notificationKey")
            key = item["notificationKey"]
            if type(key) is not str:
                raise _Rejected(2004, "Field 'notificationKey' should be a text")
            key_int = _key_int(key)
            definition = state.definitions.get(key_int) if key_int is not None else None
            if definition is None:
                raise _Rejected(5003, MSG_UNKNOWN_KEY)
            message = item.get("message")
            if message is None:
                message = {}
            elif type(message) is not dict:
                raise _Rejected(2004, "Field 'message' should be an object")
            params = message.get("params")
            if params is None:
                params = {}
            elif type(params) is not dict:
                raise _Rejected(2004, "Field 'params' should be an object")
            target = item.get("target")
            if type(target) is not dict or not target:
                raise _Rejected(2020, "Missing required parameter: target")
            plan.append((key, params, _targets(target, ids), definition))
        cap(len(ids))
        now = time.time()
        seq = request.scope.get("sandbox.seq", 0)
        rows: list[tuple[Any, ...]] = []
        delivered = unknown = 0
        by_ext_id = False
        resolved = list({ext_id for _k, _p, targets, _d in plan for ext_id, _o in targets if ext_id is not None})
        known = {e for e, ok in zip(resolved, state.known_many(resolved), strict=True) if ok}
        for key, params, targets, definition in plan:
            for ext_id, other in targets:
                by_ext_id = by_ext_id or other is None
                if ext_id not in known:
                    reason = f"5016 {MSG_UNKNOWN_EXT_ID if other is None else MSG_UNKNOWN_USER}"
                    rows.append((ext_id, key, params, now, seq, None, "failed", reason, None, other))
                    unknown += 1
                    continue
                text, problem = _render(definition["definition"], params, state.profiles.get(ext_id) or {})
                status = "failed" if problem else "delivered"
                rows.append((ext_id, key, params, now, seq, state.platform(ext_id), status, problem, text, other))
                delivered += problem is None
        if rows and unknown == len(rows) and state.config["unknown_target_error"]:
            state.bump("sendNotification", requests_rejected=1, unknown_targets=unknown)
            raise _Rejected(5016, MSG_UNKNOWN_EXT_ID if by_ext_id else MSG_UNKNOWN_USER)
        state.deliveries.extend(rows)
        for row in rows:
            state.deliveries_by_key.setdefault(_key_int(row[1]) or 0, []).append(row)
        state.bump(
            "sendNotification",
            requests=1,
            objects=len(items),
            delivered=delivered,
            failed=len(rows) - delivered,
            unknown_targets=unknown,
        )
        return _json({})

    def _targets(target: dict[str, Any], ids: set[str]) -> list[tuple[str | None, str | None]]:
        """``(extId, None)`` per extId target, ``(resolved extId or None, "kind:value")`` for other identifiers."""
        if "extId" in target:
            ext = target["extId"]
            if type(ext) is str:
                ext_ids = [ext]
            elif type(ext) is list and all(type(x) is str for x in ext):
                ext_ids = list(dict.fromkeys(ext))
            else:
                raise _Rejected(2004, "Field 'extId' should be a text")
            if not ext_ids or not all(ext_ids):
                raise _Rejected(2020, "Missing required parameter: extId")
            ids.update(ext_ids)
            return [(e, None) for e in ext_ids]
        if "deviceToken" in target:
            tok = target["deviceToken"]
            tokens = [tok] if type(tok) is str else tok
            if type(tokens) is not list or not tokens or not all(type(t) is str and t for t in tokens):
                raise _Rejected(2004, "Field 'deviceToken' should be a text")
            tokens = list(dict.fromkeys(tokens))
            ids.update(f"deviceToken:{t}" for t in tokens)
            return [(state.by_token.get(t), f"deviceToken:{t}") for t in tokens]
        for name, index in (("email", state.by_email), ("msisdn", state.by_msisdn)):
            if name in target:
                value = target[name]
                if type(value) is not str or not value:
                    raise _Rejected(2004, f"Field '{name}' should be a text")
                return [(index.get(value), f"{name}:{value}")]
        return []  # pa / iid / wpNumber / sendToAll targeting is accepted but not emulated: nothing recorded

    # ---- events ----------------------------------------------------------------------------------------------

    def fire_events(body: Any, request: Request) -> Response:
        if type(body) is not list:
            raise _Rejected(2009, "Invalid JSON")
        now = time.time()
        accepted = rejected = 0
        for event in body:
            # REF §7: unknown/invalid events are rejected, but "the call still returns 200".
            if type(event) is dict and type(event.get("extId")) is str and type(event.get("name")) is str:
                state.events.append({"received_at": _iso(now), "event": event})
                accepted += 1
            else:
                rejected += 1
        state.bump("fireEvents", requests=1, accepted=accepted, rejected=rejected)
        return _empty()

    # ---- routes: writes --------------------------------------------------------------------------------------

    @app.post(f"{REST}/setProfileAttributes")
    async def set_profile_attributes_route(request: Request) -> Response:
        return await guarded(request, set_profile_attributes)

    @app.post(f"{REST}/unsetProfileAttributes")
    async def unset_profile_attributes_route(request: Request) -> Response:
        return await guarded(request, unset_profile_attributes)

    @app.post(f"{REST}/registerUsers")
    async def register_users_route(request: Request) -> Response:
        return await guarded(request, register_users)

    @app.post(f"{REST}/sendNotification")
    async def send_notification_route(request: Request) -> Response:
        return await guarded(request, send_notification)

    @app.post(f"{REST}/createNotificationDefinition")
    async def create_definition_route(request: Request) -> Response:
        return await guarded(request, create_definition)

    @app.post(f"{REST}/fireEvents")
    async def fire_events_route(request: Request) -> Response:
        return await guarded(request, fire_events)

    # ---- routes: reads ---------------------------------------------------------------------------------------

    @app.get(f"{REST}/getProfileAttributes")
    async def get_profile_attributes(request: Request) -> Response:
        denied = auth(request)
        if denied is not None:
            return denied
        ext_id = request.query_params.get("extId")
        if not ext_id:
            return _error(2020, "Missing required parameter: extId")
        if not state.known(ext_id):
            return _error(5016, MSG_UNKNOWN_EXT_ID)
        return _json({"extId": ext_id, "profile": state.visible_profile(ext_id)})

    @app.get(f"{REST}/getPushStats")
    async def get_push_stats(request: Request) -> Response:
        denied = auth(request)
        if denied is not None:
            return denied
        q = request.query_params
        if q.get("notificationKey") is not None:
            key = _key_int(q["notificationKey"])
            if key is None:
                return _error(2004, "Field 'notificationKey' should be a number")
            definition = state.definitions.get(key)
            if definition is None:
                return _error(5003, MSG_UNKNOWN_KEY)
            rows = state.deliveries_by_key.get(key, [])
            return _json(_push_stats(key, definition, rows))
        if q.get("start") is None or q.get("end") is None:
            return _error(2020, "Missing required parameter: notificationKey, or start and end")
        try:
            start, end = int(q["start"]), int(q["end"])
        except ValueError:
            return _error(2004, "Fields 'start' and 'end' should be numbers")
        by_key: dict[int, list[tuple[Any, ...]]] = {}
        for d in state.deliveries:
            if start <= _ms(d[3]) <= end:
                k = _key_int(d[1])
                if k is not None:
                    by_key.setdefault(k, []).append(d)
        messages = [
            _push_stats(k, state.definitions.get(k) or {"created_ts": rows[0][3]}, rows)
            for k, rows in sorted(by_key.items(), reverse=True)
        ]
        return _json({"messages": messages})

    # ---- admin -----------------------------------------------------------------------------------------------

    @app.get(f"{ADMIN}/health")
    async def health() -> Response:
        return _json({"status": "ok", "service": "netmera"})

    @app.post(f"{ADMIN}/reset")
    async def reset() -> Response:
        state.reset()
        faults.clear()
        return _json({"status": "reset", "service": "netmera"})

    @app.get(f"{ADMIN}/requests")
    async def requests_() -> Response:
        return _json({"counts": state.counts, "total": state.total})

    @app.get(f"{ADMIN}/config")
    async def get_config() -> Response:
        return _json(_config_view(state))

    @app.post(f"{ADMIN}/config")
    async def post_config(request: Request) -> Response:
        try:
            patch = _validate_config(json.loads(await request.body() or b"{}"))
        except ValueError as exc:
            return _admin_error(str(exc))
        state.configure(patch)
        return _json(_config_view(state))

    @app.get(f"{ADMIN}/profiles")
    async def list_profiles(request: Request) -> Response:
        try:
            offset, limit = _paging(request, 1000)
        except ValueError as exc:
            return _admin_error(str(exc))
        page = itertools.islice(state.profiles.items(), offset, offset + limit)
        return _json({"total": len(state.profiles), "profiles": [{"extId": k, "profile": dict(v)} for k, v in page]})

    @app.get(ADMIN + "/profiles/{ext_id:path}")
    async def get_profile(ext_id: str) -> Response:
        profile = state.profiles.get(ext_id)
        if profile is None:
            return _admin_error(f"no profile stored for extId {ext_id!r}", 404)
        return _json({"extId": ext_id, "profile": dict(profile)})

    @app.get(f"{ADMIN}/deliveries")
    async def deliveries(request: Request) -> Response:
        q = request.query_params
        status = q.get("status", "delivered")
        if status not in ("delivered", "failed", "all"):
            return _admin_error("status must be delivered, failed or all")
        try:
            offset, limit = _paging(request, 100_000)
        except ValueError as exc:
            return _admin_error(str(exc))
        ext_id, key = q.get("extId"), q.get("notificationKey")
        rows = [
            d
            for d in state.deliveries
            if (status == "all" or d[6] == status)
            and (ext_id is None or d[0] == ext_id)
            and (key is None or d[1] == key)
        ]
        return _json(
            {"total": len(rows), "deliveries": [state.delivery_dict(d) for d in rows[offset : offset + limit]]}
        )

    @app.get(f"{ADMIN}/notifications")
    async def notifications() -> Response:
        return _json(
            {
                str(k): {kk: vv for kk, vv in v.items() if kk != "created_ts"}
                for k, v in sorted(state.definitions.items())
            }
        )

    @app.post(f"{ADMIN}/users")
    async def add_users(request: Request) -> Response:
        try:
            raw = json.loads(await request.body() or b"null")
        except ValueError:
            return _admin_error("body must be JSON")
        if not isinstance(raw, dict) or set(raw) - {"ext_ids", "known"}:
            return _admin_error('body must be {"ext_ids": [...], "known": true|false}')
        ext_ids, known = raw.get("ext_ids"), raw.get("known", True)
        if not isinstance(ext_ids, list) or not all(isinstance(e, str) and e for e in ext_ids):
            return _admin_error("ext_ids must be a list of non-empty strings")
        if type(known) is not bool:
            return _admin_error("known must be true or false")
        if known:
            return _json({"added": state.add_users(ext_ids), "ext_ids": len(ext_ids)})
        return _json({"removed": state.forget_users(ext_ids), "ext_ids": len(ext_ids)})

    @app.get(ADMIN + "/users/{ext_id:path}")
    async def get_user(ext_id: str) -> Response:
        if not state.known(ext_id):
            return _admin_error(f"extId {ext_id!r} is not a Netmera user", 404)
        reg = state.registered.get(ext_id) or {}
        return _json(
            {
                "extId": ext_id,
                "known": True,
                "registered": ext_id in state.registered,
                "platform": state.platform(ext_id),
                "tags": list(dict.fromkeys([*(reg.get("tags") or []), *state.tags.get(ext_id, [])])),
                **{k: reg[k] for k in ("deviceToken", "email", "msisdn") if reg.get(k)},
            }
        )

    @app.get(f"{ADMIN}/attributes")
    async def attributes() -> Response:
        return _json(
            {
                "standard": dict(STANDARD_PROFILE_ATTRIBUTES),
                "defined": dict(state.defined_types),
                "any_custom_key": state.wildcard,
            }
        )

    @app.get(f"{ADMIN}/events")
    async def events() -> Response:
        return _json({"total": len(state.events), "events": state.events})

    @app.get(f"{ADMIN}/stats")
    async def stats() -> Response:
        return _json(
            {
                "profiles": len(state.profiles),
                "registered_users": len(state.registered),
                "deliveries": sum(1 for d in state.deliveries if d[6] == "delivered"),
                "failed_deliveries": sum(1 for d in state.deliveries if d[6] == "failed"),
                "events": len(state.events),
                "endpoints": state.stats,
            }
        )

    return app


class _Unsupported(Exception):
    """A request whose Content-Type is not JSON (answered with a 415 problem detail)."""

    def __init__(self, response: Response) -> None:
        super().__init__("unsupported media type")
        self.response = response


def _render(
    definition: dict[str, Any], params: dict[str, Any], profile: dict[str, Any]
) -> tuple[str | None, str | None]:
    """The push text a user gets, and why delivery fails (an unresolved deeplink placeholder) or None."""
    default = definition.get("message")
    if not isinstance(default, str):
        default = definition.get("text") if isinstance(definition.get("text"), str) else None

    def value(name: str) -> Any:
        v = params.get(name)
        return profile.get(name) if v is None else v

    click = definition.get("click")
    deeplink = click.get("deeplink") if isinstance(click, dict) else None
    if isinstance(deeplink, str):
        missing = [n for n in _PLACEHOLDER.findall(deeplink) if value(n) is None]
        if missing:
            return None, f"deeplink placeholder @{{{missing[0]}}} has no value for this user"
    personalized = definition.get("personalizedMessage")
    if isinstance(personalized, str):
        names = _PLACEHOLDER.findall(personalized)
        if all(value(n) is not None for n in names):
            return _PLACEHOLDER.sub(lambda m: str(value(m.group(1))), personalized), None
    return default, None


def _push_stats(key: int, definition: dict[str, Any], rows: list[tuple[Any, ...]]) -> dict[str, Any]:
    """``getPushStats`` shape (REF §4.5) from recorded deliveries."""
    per: dict[str, dict[str, int]] = {p: {"sent": 0, "failed": 0} for p in ("IOS", "ANDROID")}
    for d in rows:
        if d[5] is None:
            continue  # unknown user: no device, so no platform to report it under
        bucket = per.setdefault(d[5], {"sent": 0, "failed": 0})
        bucket["sent" if d[6] == "delivered" else "failed"] += 1
    start = _ms(rows[0][3]) if rows else _ms(definition.get("created_ts", time.time()))
    end = _ms(rows[-1][3]) if rows else start
    return {
        "notificationKey": key,
        "status": "FINISHED",
        "startDate": start,
        "endDate": end,
        "stats": [{"platform": p, "sent": v["sent"], "failed": v["failed"], "clicked": 0} for p, v in per.items()],
    }


def _paging(request: Request, default_limit: int) -> tuple[int, int]:
    try:
        offset = int(request.query_params.get("offset", 0))
        limit = int(request.query_params.get("limit", default_limit))
    except ValueError as exc:
        raise ValueError("offset and limit must be integers") from exc
    if offset < 0 or limit < 0:
        raise ValueError("offset and limit must be >= 0")
    return offset, limit


def _config_view(state: NetmeraState) -> dict[str, Any]:
    return {
        k: (list(v) if isinstance(v, list) else dict(v) if isinstance(v, dict) else v) for k, v in state.config.items()
    }

"""Integration settings: one YAML file, environment overrides, validated on load with clear errors.

Where they come from, later sources winning:

1. the YAML file named by ``OPTIMOVE_NETMERA_CONFIG``, else ``config/optimove_netmera.yaml`` in the repository;
2. environment variables ``OPTIMOVE_NETMERA__<SECTION>__<KEY>=<YAML value>``, e.g.
   ``OPTIMOVE_NETMERA__SYNC__BATCH_SIZE=500`` or ``OPTIMOVE_NETMERA__CAMPAIGNS__CHANNELS='[506, 510]'``;
3. at task run time only, the Airflow Variable ``optimove_netmera_config`` (a JSON object, deep-merged), so
   ops can change batch sizes or guards without a deploy. DAG files never read Variables while parsing.

Secrets never live here: API keys are in Airflow Connections, the inbound key in an env var or Variable.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote, urlsplit

import yaml
from croniter import croniter
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

ENV_PREFIX = "OPTIMOVE_NETMERA__"
CONFIG_ENV = "OPTIMOVE_NETMERA_CONFIG"
STATE_DB_ENV = "OPTIMOVE_NETMERA_STATE_DB_URL"
VARIABLE_NAME = "optimove_netmera_config"
REPO_CONFIG = Path(__file__).resolve().parents[2] / "config" / "optimove_netmera.yaml"

MAX_REQUESTS_IN_FLIGHT = 8
"""Upper bound of ``campaigns.requests_in_flight``: each request in flight holds its own HTTP connection and, for
its bookkeeping, a state-DB connection; 8 stays within the PostgreSQL engine's pool (5 + 10 overflow)."""

AttributeType = Literal["string", "number", "boolean", "date"]
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class SettingsError(ValueError):
    """The integration settings are invalid; the message says which setting and what to do."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class AttributeMapping(_Model):
    """One Optimove customer attribute and the Netmera profile attribute ("pretty name") it feeds."""

    optimove: str = Field(description="Optimove RealFieldName, e.g. FirstName")
    netmera: str = Field(description="Netmera profile attribute name (case-sensitive), e.g. name")
    type: AttributeType = "string"

    @field_validator("optimove", "netmera")
    @classmethod
    def _valid_name(cls, value: str) -> str:
        if not _NAME.match(value):
            raise ValueError(f"{value!r} is not a valid attribute name (letters, digits, underscore)")
        return value


class ExtIdTransform(_Model):
    """How an Optimove CustomerID becomes a Netmera extId (identity by default)."""

    prefix: str = ""
    suffix: str = ""
    case: Literal["preserve", "lower", "upper"] = "preserve"

    def apply(self, customer_id: str) -> str:
        """The extId for ``customer_id``."""
        value = customer_id.strip()
        if self.case == "lower":
            value = value.lower()
        elif self.case == "upper":
            value = value.upper()
        return f"{self.prefix}{value}{self.suffix}"

    def apply_all(self, customer_ids: list[str]) -> list[str]:
        """The extId of each of ``customer_ids`` (:meth:`apply` on each, without its per-call overhead)."""
        values = [c.strip() for c in customer_ids]
        if self.case == "lower":
            values = [v.lower() for v in values]
        elif self.case == "upper":
            values = [v.upper() for v in values]
        if self.prefix or self.suffix:
            prefix, suffix = self.prefix, self.suffix
            values = [f"{prefix}{v}{suffix}" for v in values]
        return values


class ConnectionIds(_Model):
    """Airflow Connection ids of the two APIs."""

    optimove: str = "optimove_default"
    netmera: str = "netmera_default"


class SyncSettings(_Model):
    """The nightly user sync."""

    schedule: str = "0 3 * * *"
    timezone: str = "UTC"
    batch_size: int = Field(1000, ge=1, le=1000)
    batches_per_task: int = Field(
        250,
        ge=1,
        description="batches a mapped load task delivers: each task keeps load_concurrency requests in flight and "
        "costs the executor a task start, so fewer, larger tasks load faster (250: a 1M-customer sync is 4 tasks, "
        "one wave of a 4-slot pool)",
    )
    max_change_ratio: float = Field(0.5, gt=0, le=1)
    guard_timeout_hours: float = Field(
        12, gt=0, description="how long a tripped change guard waits for Approve/Reject (then: Reject, task fails)"
    )
    pool: str = "netmera_api"
    data_ready_poke_seconds: int = Field(300, ge=1)
    data_ready_timeout_hours: float = Field(12, gt=0)
    extract_concurrency: int = Field(4, ge=1, le=16, description="attributes fetched at once (one rate limit)")
    memory_budget_mb: int = Field(
        256,
        ge=8,
        description="memory a plan task's customer chunks may take (on top of Airflow's own): the customers are "
        "read, diffed and written in chunks sized to fit it, whatever the tenant's size",
    )
    load_concurrency: int = Field(4, ge=1, le=16, description="profile writes in flight at once in one load task")
    retries: int = Field(3, ge=0, description="task retries (exponential backoff from retry_delay_seconds)")
    retry_delay_seconds: float = Field(60, ge=0)
    check_unknown_ext_ids: bool = Field(
        True, description="check that extIds new to the snapshot exist in Netmera before writing (untagUsers probe)"
    )
    verify_sample: int = Field(
        50, ge=0, description="profiles read back after each load (getProfileAttributes) to catch silent drops"
    )
    verify_first_run_cap: int = Field(
        1000, ge=0, description="profiles read back on the first run of a new attribute mapping (all, up to this)"
    )

    @field_validator("schedule")
    @classmethod
    def _valid_cron(cls, value: str) -> str:
        if not croniter.is_valid(value):
            raise ValueError(f"{value!r} is not a valid cron expression (e.g. '0 3 * * *' for 03:00 daily)")
        return value


METRIC_NAMES = ("sent", "failed", "skipped", "delivered", "opened")


class MetricIds(_Model):
    """Optimove ``UpdateCampaignMetrics`` MetricIDs per count reported; null: that count is not reported.

    Defaults from the integrators the reference cites (SENT 0, DELIVERED 1, OPENED 2, DROPPED 5, BOUNCED 9).
    """

    sent: int | None = Field(0, ge=0, description="recipients Netmera accepted (ledger: sent)")
    failed: int | None = Field(9, ge=0, description="recipients Netmera refused (ledger: failed), as bounced")
    skipped: int | None = Field(5, ge=0, description="recipients skipped (not control group), as dropped")
    delivered: int | None = Field(1, ge=0, description="getPushStats 'sent': pushes that reached a device")
    opened: int | None = Field(2, ge=0, description="getPushStats 'clicked': pushes opened")

    @model_validator(mode="after")
    def _distinct(self) -> MetricIds:
        ids = [v for v in (getattr(self, n) for n in METRIC_NAMES) if v is not None]
        dupes = sorted({i for i in ids if ids.count(i) > 1})
        if dupes:
            raise ValueError(f"metric_ids: MetricID(s) {dupes} used for more than one count")
        return self

    def items(self) -> list[tuple[str, int]]:
        """``(count name, MetricID)`` of the counts reported."""
        return [(n, v) for n in METRIC_NAMES if (v := getattr(self, n)) is not None]


class CampaignSettings(_Model):
    """Campaign sends: channels handled, template -> notificationKey, personalisation params, reporting."""

    channels: list[int] = Field(
        default_factory=lambda: [506, 459, 481],
        description="Optimove ChannelIDs handled (459 and 481: Netmera's guide; 506: Optimove's sandbox push)",
    )
    templates: dict[int, str] = Field(default_factory=dict, description="Optimove TemplateID -> notificationKey")
    unknown_timeout_hours: float = Field(
        24, gt=0, description="how long the re-send/accept question for unknown outcomes waits (then: task fails)"
    )
    template_names: dict[int, str] = Field(
        default_factory=dict,
        description="TemplateID -> the name offered to Optimove (from the {key, name} form of templates)",
    )
    params: dict[str, str] = Field(default_factory=dict, description="Optimove attribute -> Netmera message param")
    required_params: list[str] = Field(default_factory=list)
    chunk_size: int = Field(1000, ge=1, le=1000)
    requests_in_flight: int = Field(
        4,
        description="sendNotification requests one send task keeps in flight at once (1: one after another), "
        f"1 to {MAX_REQUESTS_IN_FLIGHT}",
    )
    report_metrics: bool = Field(True, description="report sent/failed/skipped back with UpdateCampaignMetrics")
    metric_ids: MetricIds = Field(default_factory=MetricIds)
    stats_days: int = Field(7, ge=0, description="days after a send its Netmera push stats are reported (0: never)")
    dry_run: bool = Field(False, description="campaign runs stage and report what they would send, sending nothing")

    @model_validator(mode="before")
    @classmethod
    def _template_forms(cls, data: Any) -> Any:
        """``templates`` values: a notificationKey, or ``{key: "101", name: "Welcome Push"}`` (name offered)."""
        if not isinstance(data, Mapping) or not isinstance(data.get("templates"), Mapping):
            return data
        keys: dict[int, str] = {}
        names: dict[int, str] = dict(data.get("template_names") or {})
        for raw_id, value in data["templates"].items():
            try:
                template_id = int(raw_id)
            except (TypeError, ValueError):
                raise ValueError(f"templates: TemplateID {raw_id!r} is not an integer") from None
            if template_id < 1:
                raise ValueError(f"templates: TemplateID {template_id} must be >= 1")
            if isinstance(value, Mapping):
                unknown = sorted(set(value) - {"key", "name"})
                if unknown or "key" not in value:
                    raise ValueError(
                        f"templates.{template_id}: give a notificationKey, or {{key: ..., name: ...}} "
                        f"(unknown field(s) {unknown})"
                        if unknown
                        else f"templates.{template_id}: key is required"
                    )
                name = value.get("name")
                if name is not None:
                    if not isinstance(name, str) or not name.strip():
                        raise ValueError(f"templates.{template_id}: name must be a non-empty string")
                    names[template_id] = name.strip()
                value = value["key"]
            if value is None or isinstance(value, bool | Mapping | list) or not str(value).strip():
                raise ValueError(f"templates.{template_id}: the notificationKey must be a non-empty string")
            keys[template_id] = str(value).strip()
        return {**data, "templates": keys, "template_names": names}

    @field_validator("requests_in_flight")
    @classmethod
    def _valid_in_flight(cls, value: int) -> int:
        if not 1 <= value <= MAX_REQUESTS_IN_FLIGHT:
            raise ValueError(
                f"must be between 1 (one request at a time) and {MAX_REQUESTS_IN_FLIGHT} (each request in flight "
                f"holds an HTTP and a state-DB connection), got {value}"
            )
        return value

    @model_validator(mode="after")
    def _required_are_params(self) -> CampaignSettings:
        unknown = sorted(set(self.required_params) - set(self.params.values()) - {"promoCode"})
        if unknown:
            raise ValueError(
                f"required_params {unknown} are not among the mapped params {sorted(self.params.values())}"
            )
        return self


class InboundSettings(_Model):
    """The event endpoint: the app key in its path and where its API key comes from."""

    app_key: str = "optimove-netmera"
    api_key_env: str = "OPTIMOVE_NETMERA_INBOUND_API_KEY"
    max_body_bytes: int = Field(65_536, ge=1024)
    body_timeout_seconds: float = Field(
        10.0, gt=0, le=300, description="a body not fully received by then is answered 408 (slow or stalled clients)"
    )
    max_concurrent_requests: int = Field(
        64, ge=1, description="event requests in progress per API server process; more are answered 503 (retry)"
    )
    public_url: str | None = Field(
        None, description="the Airflow API server's address as Optimove reaches it (listener registration)"
    )

    @field_validator("public_url")
    @classmethod
    def _valid_public_url(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        parsed = urlsplit(value.strip())
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise ValueError(f"{value!r} is not an http(s) URL (e.g. https://airflow.example.com)")
        if parsed.query or parsed.fragment or parsed.username or parsed.password:
            raise ValueError(f"{value!r}: give the base address only (no query, fragment or credentials)")
        return value.strip().rstrip("/")

    def listener_url(self) -> str:
        """``{public_url}/rest/optimove/event/{app_key}``: the URL Optimove's listeners call."""
        if not self.public_url:
            raise ValueError(
                "inbound.public_url is not set: set it to the Airflow API server's address as Optimove reaches it "
                "(e.g. https://airflow.example.com), the listener URL is {public_url}/rest/optimove/event/{app_key}"
            )
        return f"{self.public_url}/rest/optimove/event/{quote(self.app_key, safe='')}"


class NotificationSettings(_Model):
    """Failure notifications: an Airflow notifier class and its arguments (see :mod:`optimove_netmera.notify`)."""

    notifier: str | None = Field(None, description="dotted path of an Airflow BaseNotifier subclass; null: none")
    kwargs: dict[str, Any] = Field(default_factory=dict)


class Settings(_Model):
    """All integration settings."""

    connections: ConnectionIds = Field(default_factory=ConnectionIds)
    state_db_url: str | None = None
    attributes: list[AttributeMapping] = Field(default_factory=list)
    ext_id: ExtIdTransform = Field(default_factory=ExtIdTransform)
    sync: SyncSettings = Field(default_factory=SyncSettings)
    campaigns: CampaignSettings = Field(default_factory=CampaignSettings)
    inbound: InboundSettings = Field(default_factory=InboundSettings)
    notifications: NotificationSettings = Field(default_factory=NotificationSettings)

    @model_validator(mode="after")
    def _unique_attributes(self) -> Settings:
        for side in ("optimove", "netmera"):
            names = [getattr(a, side) for a in self.attributes]
            dupes = sorted({n for n in names if names.count(n) > 1})
            if dupes:
                raise ValueError(f"attributes: {side} name(s) {dupes} mapped more than once")
        return self

    def resolved_state_db_url(self) -> str:
        """The state DB URL: env ``OPTIMOVE_NETMERA_STATE_DB_URL``, else ``state_db_url``, else a SQLite file
        under ``AIRFLOW_HOME``. Raises :class:`~optimove_netmera.topology.SharedStateError` (naming the env
        var) when that is a SQLite file while Airflow runs a distributed executor: one state for every process.
        """
        from optimove_netmera.store.engine import default_state_db_url
        from optimove_netmera.topology import check_shared_state

        url = os.environ.get(STATE_DB_ENV, "").strip() or self.state_db_url or default_state_db_url()
        check_shared_state(url)
        return url

    @property
    def optimove_attributes(self) -> list[str]:
        """Optimove RealFieldNames of the mapped attributes, in mapping order."""
        return [a.optimove for a in self.attributes]


def _deep_merge(base: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def _env_overrides(env: Mapping[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, raw in env.items():
        if not name.startswith(ENV_PREFIX):
            continue
        path = [p.lower() for p in name[len(ENV_PREFIX) :].split("__") if p]
        if not path:
            continue
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError as exc:
            raise SettingsError(f"{name}: not a valid YAML value ({exc.__class__.__name__})") from exc
        node = out
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = value
    return out


def config_path(env: Mapping[str, str] | None = None) -> Path:
    """The settings file in use: ``$OPTIMOVE_NETMERA_CONFIG``, else the source checkout's ``config/`` file.

    An installed (non-editable) package, as in a Docker image, has no source checkout: it needs the env var.
    """
    env = os.environ if env is None else env
    return Path(env.get(CONFIG_ENV) or REPO_CONFIG)


def _format_errors(exc: ValidationError, source: str) -> str:
    lines = [f"invalid optimove-netmera settings ({source}):"]
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"]) or "(top level)"
        lines.append(f"  - {where}: {err['msg']}")
    lines.append(f"Fix the file (or the {ENV_PREFIX}* override) and try again.")
    return "\n".join(lines)


def load_settings(
    path: str | Path | None = None,
    env: Mapping[str, str] | None = None,
    overlay: Mapping[str, Any] | None = None,
) -> Settings:
    """Read, merge and validate the settings; raises :class:`SettingsError` with every problem listed."""
    env = os.environ if env is None else env
    file = Path(path) if path is not None else config_path(env)
    if not file.is_file():
        if file == REPO_CONFIG and not env.get(CONFIG_ENV):
            raise SettingsError(
                f"no settings file: {CONFIG_ENV} is not set and this installation has no source checkout with "
                f"{REPO_CONFIG.relative_to(REPO_CONFIG.parents[1])} (looked for {file}). Set {CONFIG_ENV} to the "
                "path of your optimove_netmera.yaml in every Airflow process (the repository's "
                "config/optimove_netmera.yaml is the template; the Docker image sets it)"
            )
        raise SettingsError(f"settings file {file} not found: create it or point {CONFIG_ENV} at one")
    try:
        data = yaml.safe_load(file.read_text()) or {}
    except yaml.YAMLError as exc:
        raise SettingsError(f"settings file {file} is not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise SettingsError(f"settings file {file} must hold a mapping at the top level")
    data = _deep_merge(data, _env_overrides(env))
    if overlay:
        data = _deep_merge(data, overlay)
    try:
        return Settings.model_validate(data)
    except ValidationError as exc:
        raise SettingsError(_format_errors(exc, str(file))) from None


@lru_cache(maxsize=8)
def _cached(path: str, env_items: tuple[tuple[str, str], ...]) -> Settings:
    return load_settings(path, dict(env_items))


def get_settings() -> Settings:
    """The settings from file and environment, cached per (file, relevant env); cheap enough for DAG parsing."""
    relevant = tuple(sorted((k, v) for k, v in os.environ.items() if k.startswith(ENV_PREFIX) or k == CONFIG_ENV))
    return _cached(str(config_path()), relevant)


def get_runtime_settings() -> Settings:
    """Settings for a running task: file + env + the Airflow Variable ``optimove_netmera_config`` (if set)."""
    import json

    from airflow.sdk import Variable

    raw = Variable.get(VARIABLE_NAME, default=None)
    if not raw:
        return get_settings()
    try:
        overlay = json.loads(raw) if isinstance(raw, str) else raw
    except json.JSONDecodeError as exc:
        raise SettingsError(f"Airflow Variable {VARIABLE_NAME} is not valid JSON: {exc.msg}") from exc
    if not isinstance(overlay, dict):
        raise SettingsError(f"Airflow Variable {VARIABLE_NAME} must be a JSON object")
    return load_settings(config_path(), overlay=overlay)

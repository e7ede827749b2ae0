"""Personalisation: an Optimove recipient row -> a send-ledger row -> a ``sendNotification`` request object.

Pure functions (no database, no HTTP, no Airflow). The rules:

* control-group rows (ActionID 1) are skipped, reason :data:`REASON_CONTROL`;
* a template without a ``campaigns.templates`` mapping is skipped, reason ``no notificationKey mapped for
  template <id>`` (a row without any TemplateID likewise);
* ``message.params`` = the ``campaigns.params`` mapping (Optimove attribute -> Netmera param) applied to the
  row's attributes, empty values left out, plus ``promoCode`` when Optimove gave one;
* a recipient lacking one of ``campaigns.required_params`` is skipped, reason ``missing required param(s): ...``
  (it would otherwise get a half-rendered push);
* a recipient whose CustomerID, promo code or a param holds a NUL character is skipped (:func:`nul_reason`); its
  text is stored with U+FFFD in place of the NUL (PostgreSQL cannot store a NUL in text).

Optimove's timestamps are naive; they are read as UTC (what Optimove's API uses for event and schedule times).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from typing import Any

from optimove_netmera.optimove.models import ExecutionDetail
from optimove_netmera.settings import Settings
from optimove_netmera.store.models import RecipientStatus

__all__ = [
    "NO_TEMPLATE_ID",
    "PROMO_PARAM",
    "REASON_CONTROL",
    "build_params",
    "ledger_row",
    "ledger_rows",
    "missing_required",
    "no_mapping_reason",
    "nul_reason",
    "request_object",
    "to_utc",
]

PROMO_PARAM = "promoCode"
REASON_CONTROL = "control group (ActionID 1)"
NO_TEMPLATE_ID = 0
"""``template_id`` stored for a recipient row that came without a TemplateID (it is skipped)."""


def to_utc(value: dt.datetime | None) -> dt.datetime | None:
    """Optimove's naive timestamp as an aware UTC datetime (aware values are converted)."""
    if value is None:
        return None
    if value.tzinfo is None:
        return value.replace(tzinfo=dt.UTC)
    return value.astimezone(dt.UTC)


def _present(value: Any) -> bool:
    return value is not None and not (isinstance(value, str) and not value.strip())


def build_params(
    attributes: Mapping[str, Any] | None, mapping: Mapping[str, str], promo_code: str | None
) -> dict[str, Any]:
    """Netmera ``message.params`` from a customer's Optimove attributes and the promo code."""
    values = attributes or {}
    params = {netmera: values[optimove] for optimove, netmera in mapping.items() if _present(values.get(optimove))}
    if _present(promo_code):
        params[PROMO_PARAM] = promo_code
    return params


def missing_required(params: Mapping[str, Any], required: list[str]) -> list[str]:
    """The required params that ``params`` lacks (in the configured order)."""
    return [name for name in required if not _present(params.get(name))]


def no_mapping_reason(template_id: int | None) -> str:
    """The skip reason of a recipient whose template has no notificationKey mapping."""
    if template_id is None or template_id == NO_TEMPLATE_ID:
        return "no TemplateID in Optimove's row"
    return f"no notificationKey mapped for template {template_id}"


NUL = "\x00"


def _nul_fields(customer_id: str, params: Mapping[str, Any]) -> list[str]:
    """The fields of a recipient row whose text holds a NUL character: ``CustomerID`` and the params' names (the
    promo code is the ``promoCode`` param)."""
    fields = ["CustomerID"] if NUL in customer_id else []
    return fields + [name for name, value in params.items() if isinstance(value, str) and NUL in value]


def nul_reason(fields: list[str]) -> str:
    """The skip reason of a recipient whose text holds a NUL character (names the fields, never the values)."""
    return (
        f"text with a NUL character (U+0000) in {', '.join(fields)}: not sent (PostgreSQL cannot store it and no "
        "push should carry it); correct the value in Optimove"
    )


def without_nul(value: Any) -> Any:
    """A text with U+FFFD in place of each NUL (what the state DB stores of it); any other value as it is."""
    return value.replace(NUL, "\ufffd") if isinstance(value, str) else value


def ledger_row(detail: ExecutionDetail, settings: Settings) -> dict[str, Any]:
    """The ledger columns for one recipient row: pending with its request data, or skipped with a reason."""
    return ledger_rows([detail], settings)[0]


_PENDING, _SKIPPED = RecipientStatus.PENDING.value, RecipientStatus.SKIPPED.value


def ledger_rows(details: Iterable[ExecutionDetail], settings: Settings) -> list[dict[str, Any]]:
    """:func:`ledger_row` for a page of rows, the settings read once (staging runs this on every recipient).

    The rules of :func:`build_params`, :func:`missing_required` and :func:`_nul_fields`, written out in one loop:
    a million calls of each cost staging more than the rules themselves.
    """
    campaigns = settings.campaigns
    pairs = tuple(campaigns.params.items())
    templates, required = campaigns.templates, tuple(campaigns.required_params)
    ext_id = settings.ext_id.apply
    times: dict[dt.datetime | None, dt.datetime | None] = {}  # a page repeats a few scheduled times
    no_attributes: Mapping[str, Any] = {}
    out: list[dict[str, Any]] = []
    for detail in details:
        values = detail.attributes or no_attributes
        params: dict[str, Any] = {}
        has_nul = NUL in detail.customer_id
        for optimove, netmera in pairs:
            value = values.get(optimove)
            if value is None:
                continue
            if isinstance(value, str):
                if not value.strip():
                    continue
                if NUL in value:
                    has_nul = True
            params[netmera] = value
        promo_code = detail.promo_code
        if _present(promo_code):
            params[PROMO_PARAM] = promo_code
            if isinstance(promo_code, str) and NUL in promo_code:
                has_nul = True
        template_id = detail.template_id if detail.template_id is not None else NO_TEMPLATE_ID
        key = templates.get(template_id) if template_id != NO_TEMPLATE_ID else None
        status, reason = _PENDING, None
        if detail.action_id == ExecutionDetail.CONTROL_GROUP_ACTION_ID:
            status, reason = _SKIPPED, REASON_CONTROL
        elif key is None:
            status, reason = _SKIPPED, no_mapping_reason(detail.template_id)
        else:
            missing = [name for name in required if name not in params]  # params holds present values only
            if missing:
                status, reason = _SKIPPED, f"missing required param(s): {', '.join(missing)}"
        customer_id = detail.customer_id
        if has_nul:  # neither PostgreSQL nor a push can carry it: kept (as U+FFFD) for the record, never sent
            if status == _PENDING:  # a row skipped already keeps its reason (the control group stays counted as such)
                status, reason = _SKIPPED, nul_reason(_nul_fields(customer_id, params))
            customer_id, promo_code = without_nul(customer_id), without_nul(promo_code)
            params = {k: without_nul(v) for k, v in params.items()}
        scheduled = detail.scheduled_time
        if scheduled not in times:
            times[scheduled] = to_utc(scheduled)
        out.append(
            {
                "customer_id": customer_id,
                "template_id": template_id,
                "ext_id": ext_id(customer_id),
                "scheduled_time": times[scheduled],
                "notification_key": key,
                "params": params,
                "promo_code": promo_code,
                "status": status,
                "reason": reason,
            }
        )
    return out


def request_object(notification_key: str, ext_id: str, params: Mapping[str, Any] | None) -> dict[str, Any]:
    """One element of a ``sendNotification`` array body (one user, their own params)."""
    body: dict[str, Any] = {"notificationKey": str(notification_key), "target": {"extId": ext_id}}
    if params:
        body["message"] = {"params": dict(params)}
    return body

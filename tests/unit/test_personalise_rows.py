"""Staging's ledger rows: the one-loop :func:`personalise.ledger_rows` applies the same rules as the single-purpose
functions that define them (:func:`build_params`, :func:`missing_required`, the NUL rule), and a page's rows go
into the ledger in the order its chunks take them."""

from __future__ import annotations

import datetime as dt
import itertools
import random
from typing import Any

from optimove_netmera.campaigns import personalise
from optimove_netmera.campaigns.recipients import _in_chunk_order
from optimove_netmera.optimove.models import ExecutionDetail
from optimove_netmera.settings import Settings, load_settings

NUL = "\x00"
VALUES: list[Any] = [None, "", "   ", "Ann", " Ann ", f"A{NUL}n", 0, 0.0, False, True, 42, 3.5]
PROMOS: list[Any] = [None, "", "  ", "SAVE10", f"S{NUL}"]


def settings() -> Settings:
    """Two mapped params, one of them required, and a mapped and an unmapped template."""
    base = load_settings()
    campaigns = base.campaigns.model_copy(
        update={
            "params": {"FirstName": "name", "Country": "country"},
            "required_params": ["name"],
            "templates": {1: "101", 2: "102"},
        }
    )
    return base.model_copy(update={"campaigns": campaigns})


def expected_row(detail: ExecutionDetail, s: Settings) -> dict[str, Any]:
    """The row the rules give, composed from the single-purpose functions (what ledger_rows did, row by row)."""
    c = s.campaigns
    template_id = detail.template_id if detail.template_id is not None else personalise.NO_TEMPLATE_ID
    params = personalise.build_params(detail.attributes, c.params, detail.promo_code)
    key = c.templates.get(template_id) if template_id != personalise.NO_TEMPLATE_ID else None
    status, reason = "pending", None
    if detail.is_control:
        status, reason = "skipped", personalise.REASON_CONTROL
    elif key is None:
        status, reason = "skipped", personalise.no_mapping_reason(detail.template_id)
    elif missing := personalise.missing_required(params, c.required_params):
        status, reason = "skipped", f"missing required param(s): {', '.join(missing)}"
    customer_id, promo_code = detail.customer_id, detail.promo_code
    nul = ["CustomerID"] if NUL in customer_id else []
    nul += [name for name, value in params.items() if isinstance(value, str) and NUL in value]
    if nul:
        if status == "pending":
            status, reason = "skipped", personalise.nul_reason(nul)
        customer_id, promo_code = customer_id.replace(NUL, "\ufffd"), personalise.without_nul(promo_code)
        params = {k: personalise.without_nul(v) for k, v in params.items()}
    return {
        "customer_id": customer_id,
        "template_id": template_id,
        "ext_id": s.ext_id.apply(customer_id),
        "scheduled_time": personalise.to_utc(detail.scheduled_time),
        "notification_key": key,
        "params": params,
        "promo_code": promo_code,
        "status": status,
        "reason": reason,
    }


def test_ledger_rows_follow_the_rules_for_every_combination_of_values() -> None:
    s = settings()
    details = []
    combos = itertools.product(VALUES, VALUES, PROMOS, [None, 1, 2, 7], [0, 1, None], ["C1", f"C{NUL}2"])
    for i, (name, country, promo, template, action, cid) in enumerate(combos):
        attributes = None if i % 97 == 0 else {"FirstName": name, "Country": country}
        when = [None, dt.datetime(2030, 1, 1, 9, 30), dt.datetime(2030, 1, 1, 12, tzinfo=dt.UTC)][i % 3]
        details.append(ExecutionDetail(f"{cid}-{i}", action, 506, template, "T", when, promo, None, attributes))
    got = personalise.ledger_rows(details, s)
    want = [expected_row(d, s) for d in details]
    assert len(got) == len(want) == len(details)
    for detail, g, w in zip(details, got, want, strict=True):
        assert g == w, detail
    statuses = {(w["status"], (w["reason"] or "").split(":")[0][:24]) for w in want}
    assert len(statuses) >= 5  # pending, control, unmapped, missing required, NUL: every rule was reached


def test_a_page_goes_into_the_ledger_in_chunk_order_keeping_the_order_within_a_chunk() -> None:
    """Pending rows first, by scheduled time (rows without one first) and template; the rest after; ties keep their
    order."""
    rng = random.Random(13)
    times = [None, dt.datetime(2030, 1, 2, tzinfo=dt.UTC), dt.datetime(2030, 1, 1, tzinfo=dt.UTC)]
    rows = [
        {
            "n": n,
            "status": rng.choice(["pending", "pending", "skipped", "cancelled"]),
            "scheduled_time": rng.choice(times),
            "template_id": rng.choice([0, 1, 2]),
        }
        for n in range(500)
    ]

    def rank(row: dict[str, Any]) -> tuple[Any, ...]:
        when = row["scheduled_time"]
        timed = when is not None
        return (row["status"] != "pending", timed, when.timestamp() if timed else 0.0, row["template_id"], row["n"])

    assert [r["n"] for r in _in_chunk_order(rows)] == [r["n"] for r in sorted(rows, key=rank)]

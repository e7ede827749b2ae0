"""Send ledger chunks with ``sendNotification``, checking cancellation before every request (no Airflow imports).

Per chunk (at most ``campaigns.chunk_size`` recipients of one template and scheduled time):

1. read the campaign's cancel state (one primary-key read). Cancelled and not yet narrowed: ask Optimove
   (``GetCanceledCampaignCustomers``) whether it is partial; partial -> go on without the listed customers,
   otherwise stop: the pending rows become ``cancelled`` and the outcome says ``cancelled``;
2. claim the chunk: one conditional ``UPDATE`` pending -> in_flight that also requires the campaign not to
   be cancelled, so a cancel committed after step 1 still leaves nothing to send; then one last look at the
   cancel state right before the request (a cancel committed in between puts the rows back and stops), which
   leaves a window of well under a millisecond between that read and the request going out;
3. one ``sendNotification`` request with an array body (one object per recipient, its own params);
4. in_flight -> ``sent``; Netmera 400 code 5016 (no target known) -> ``skipped``; the data refused (another
   400, 413, 422) -> ``failed`` plus a dead letter; a 5xx / timeout / dropped connection (the push may have gone
   out) -> ``unknown`` and the task fails (its retry carries on with the other chunks); a failure where the request
   certainly was not processed (429 after retries, connection refused, or a 401/403/404 that a configuration fix
   cures) -> back to ``pending`` and the task fails.

A process that dies between claim and step 4 leaves the rows ``in_flight``; the next attempt marks them
``unknown`` (:data:`~optimove_netmera.campaigns.recipients.ORPHAN_REASON`) and re-sends them only with
``resend_unknown``.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from sqlalchemy.engine import Engine

from optimove_netmera.campaigns import personalise, recipients
from optimove_netmera.campaigns.state import (
    CANCEL_ALL_REASON,
    CANCEL_REASON,
    apply_cancel_list,
    cancel_pending,
    cancel_status,
    set_state,
)
from optimove_netmera.http import ApiError, ClientError, is_payload_rejection
from optimove_netmera.netmera import NetmeraClient
from optimove_netmera.optimove import OptimoveClient
from optimove_netmera.store import CampaignState, RecipientStatus

__all__ = [
    "UNKNOWN_EXT_ID_REASON",
    "SendOutcome",
    "is_unknown_target",
    "narrow_cancel",
    "send_chunks",
]

log = logging.getLogger(__name__)

UNKNOWN_EXT_ID_REASON = "unknown extId (Netmera 5016: no target of the request is a known user)"


def is_unknown_target(exc: ApiError) -> bool:
    """Netmera's 400 code 5016: none of the request's targets is a known user."""
    return isinstance(exc, ClientError) and not exc.ambiguous and str(exc.code) == "5016"


@dataclass
class SendOutcome:
    """What one send task did (counts and timings only)."""

    chunks: int = 0
    requests: int = 0
    sent: int = 0
    failed: int = 0
    skipped: int = 0
    unknown: int = 0
    orphans_marked_unknown: int = 0
    unknown_released: int = 0
    cancelled: bool = False
    cancelled_recipients: int = 0
    cancel_scope: str | None = None
    cancel_seen_at: str | None = None
    first_request_at: str | None = None
    last_request_at: str | None = None
    request_seconds: float = 0.0
    errors: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return asdict(self)


def narrow_cancel(engine: Engine, client: OptimoveClient | None, campaign_id: int, channel_id: int) -> str:
    """Ask Optimove which customers were cancelled and narrow the stored cancel: ``"all"`` or ``"partial"``.

    Without a client, or when the call fails, returns ``"unconfirmed"``: the cancel is treated as whole for
    now (safe side) and stays open to narrowing later.
    """
    if client is None:
        return "unconfirmed"
    try:
        listed = client.get_canceled_campaign_customers(int(campaign_id))
    except ApiError as exc:
        log.warning("GetCanceledCampaignCustomers failed, treating the cancel as whole for now: %s", exc)
        return "unconfirmed"
    return apply_cancel_list(
        engine, campaign_id, channel_id, [c.customer_id for c in listed], fetched_at=dt.datetime.now(dt.UTC)
    )


def _stop(engine: Engine, campaign_id: int, channel_id: int, out: SendOutcome, confirmed: bool) -> SendOutcome:
    out.cancelled = True
    out.cancel_scope = "all"
    out.cancel_seen_at = dt.datetime.now(dt.UTC).isoformat()
    out.cancelled_recipients += cancel_pending(
        engine, campaign_id, channel_id, CANCEL_ALL_REASON if confirmed else CANCEL_REASON
    )
    log.info(
        "campaign %s channel %s is cancelled: stopping before the next request (%d pending recipient(s) cancelled)",
        campaign_id,
        channel_id,
        out.cancelled_recipients,
    )
    return out


def send_chunks(
    engine: Engine,
    netmera: NetmeraClient,
    campaign_id: int,
    channel_id: int,
    chunks: Sequence[int],
    *,
    optimove: Callable[[], OptimoveClient | None] = lambda: None,
    resend_unknown: bool = False,
) -> SendOutcome:
    """Send ``chunks`` of the campaign's ledger; see the module docstring. Raises on a retryable failure."""
    cid, ch = int(campaign_id), int(channel_id)
    out = SendOutcome()
    out.orphans_marked_unknown = recipients.mark_orphans_unknown(engine, cid, ch, chunks)
    if out.orphans_marked_unknown:
        log.warning("%d recipient(s) were in flight when a worker died: marked unknown", out.orphans_marked_unknown)
    if resend_unknown:
        out.unknown_released = recipients.release_unknown(engine, cid, ch, chunks)
        if out.unknown_released:
            log.warning("resend_unknown: %d unknown recipient(s) will be sent again", out.unknown_released)
    set_state(
        engine,
        cid,
        ch,
        CampaignState.SENDING.value,
        from_states=[CampaignState.RECEIVED.value, CampaignState.STAGED.value, CampaignState.WAITING.value],
    )
    client: OptimoveClient | None = None
    for chunk in chunks:
        while True:
            status = cancel_status(engine, cid, ch)
            if status.cancelled:
                scope = "all"
                if status.needs_narrowing:
                    client = client or optimove()
                    scope = narrow_cancel(engine, client, cid, ch)
                if scope == "partial":
                    out.cancel_scope = "partial"
                    continue
                return _stop(engine, cid, ch, out, confirmed=scope == "all")
            request_id = uuid.uuid4().hex
            started = dt.datetime.now(dt.UTC)
            rows = recipients.claim_chunk(engine, cid, ch, chunk, request_id, started)
            if not rows:
                if cancel_status(engine, cid, ch).cancelled:
                    continue  # a cancel landed between the check and the claim
                break
            if cancel_status(engine, cid, ch).cancelled:  # the last look, right before the request
                recipients.finish_request(engine, cid, ch, chunk, request_id, RecipientStatus.PENDING.value)
                continue
            _send_one(engine, netmera, cid, ch, chunk, request_id, rows, out)
        out.chunks += 1
    return out


def _send_one(
    engine: Engine,
    netmera: NetmeraClient,
    cid: int,
    ch: int,
    chunk: int,
    request_id: str,
    rows: Sequence[Any],
    out: SendOutcome,
) -> None:
    bodies = [personalise.request_object(r.notification_key, r.ext_id, r.params) for r in rows]
    out.requests += 1
    started = dt.datetime.now(dt.UTC)  # the request's start, recorded as the rows' sent_at
    out.first_request_at = out.first_request_at or started.isoformat()
    out.last_request_at = started.isoformat()
    clock = time.monotonic()
    try:
        netmera.send_notification(bodies)
    except ApiError as exc:
        out.request_seconds += time.monotonic() - clock
        _failed_request(engine, cid, ch, chunk, request_id, rows, bodies, exc, out)
        return
    except ValueError as exc:  # refused before any request (e.g. too many extIds): nothing was sent
        recipients.finish_request(engine, cid, ch, chunk, request_id, RecipientStatus.PENDING.value)
        raise RuntimeError(f"chunk {chunk} could not be sent: {exc}") from exc
    out.request_seconds += time.monotonic() - clock
    done = recipients.finish_request(
        engine, cid, ch, chunk, request_id, RecipientStatus.SENT.value, values={"sent_at": started}
    )
    out.sent += done
    log.info("chunk %d: %d recipient(s) sent in %.0f ms", chunk, done, 1000 * (time.monotonic() - clock))


def _failed_request(
    engine: Engine,
    cid: int,
    ch: int,
    chunk: int,
    request_id: str,
    rows: Sequence[Any],
    bodies: Sequence[dict[str, Any]],
    exc: ApiError,
    out: SendOutcome,
) -> None:
    if is_unknown_target(exc):
        out.skipped += recipients.finish_request(
            engine, cid, ch, chunk, request_id, RecipientStatus.SKIPPED.value, UNKNOWN_EXT_ID_REASON
        )
        log.info("chunk %d: no recipient is a known Netmera user (5016): skipped", chunk)
        return
    reason = str(exc)
    if is_payload_rejection(exc):
        out.failed += recipients.finish_request(
            engine, cid, ch, chunk, request_id, RecipientStatus.FAILED.value, reason
        )
        recipients.dead_letter(engine, cid, ch, rows, bodies, reason)
        out.errors.append(f"chunk {chunk}: {reason}")
        log.error("chunk %d refused by Netmera, dead-lettered: %s", chunk, reason)
        return
    if exc.ambiguous:
        out.unknown += recipients.finish_request(
            engine, cid, ch, chunk, request_id, RecipientStatus.UNKNOWN.value, f"outcome unknown: {reason}"
        )
        log.error("chunk %d: outcome unknown (%s); marked unknown, not re-sent without resend_unknown", chunk, reason)
    else:
        recipients.finish_request(engine, cid, ch, chunk, request_id, RecipientStatus.PENDING.value)
        log.error("chunk %d: not sent (%s); back to pending", chunk, reason)
    raise exc

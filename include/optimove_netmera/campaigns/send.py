"""Send ledger chunks with ``sendNotification``, checking cancellation before every request (no Airflow imports).

Per chunk (at most ``campaigns.chunk_size`` recipients of one template and scheduled time):

1. read the campaign's cancel state (one primary-key read). Cancelled and not yet narrowed: ask Optimove
   (``GetCanceledCampaignCustomers``) whether it is partial; partial -> go on without the listed customers,
   otherwise stop: the pending rows become ``cancelled`` and the outcome says ``cancelled``;
2. claim the chunk: one conditional ``UPDATE`` of its row (pending -> in_flight) that also requires the campaign
   not to be cancelled, so a cancel committed after step 1 still leaves nothing to send; then one last look at the
   cancel state right before the request (a cancel committed in between, or narrowed meanwhile by another
   worker, puts the chunk back, re-applies the cancel to its rows and starts over), which leaves a window of well
   under a millisecond between that read and the request going out (a few milliseconds with several requests in
   flight, while a worker waits for the interpreter lock);
3. one ``sendNotification`` request with an array body (one object per recipient, its own params), built by the
   state database from the chunk's rows still pending (:class:`~optimove_netmera.campaigns.recipients.Claim`);
4. the chunk (and so each recipient it carried) in_flight -> ``sent``; Netmera 400 code 5016 (no target known)
   -> ``skipped``; the data refused (another 400, 413, 422) -> ``failed`` plus a dead letter; a 5xx / timeout /
   dropped connection (the push may have gone out) -> ``unknown`` and the task fails (its retry carries on with the
   other chunks); a failure where the request certainly was not processed (429 after retries, connection refused,
   or a 401/403/404 that a configuration fix cures) -> back to ``pending`` and the task fails.

A send task keeps up to ``campaigns.requests_in_flight`` requests in flight: that many worker threads take the
chunks in order, each doing steps 1-4 for its own request. The first worker to see a whole cancel (or a retryable
failure) stops the others from claiming; the requests already in flight finish their step 4, then the pending rows
are cancelled once (a cancel) and the first failure is raised. Narrowing a cancel is done by one worker at a time.
Each worker thread talks to Netmera through its own ``requests.Session`` (see
:meth:`~optimove_netmera.http.BaseHttpClient._thread_session`) and to the state DB through pooled connections: one
checkout for steps 1-2 (read, claim, body, last look: each its own short transaction), a fresh one for step 4, so
a connection lost while the request was out is replaced (pinged) before the outcome is written (SQLite: WAL and a
30 s busy timeout let the writers queue).

A process that dies between claim and step 4 leaves the chunk ``in_flight``; the next attempt marks it
``unknown`` (:data:`~optimove_netmera.campaigns.recipients.ORPHAN_REASON`) and re-sends them only with
``resend_unknown``.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any

from sqlalchemy.engine import Connection, Engine

from optimove_netmera.campaigns import recipients
from optimove_netmera.campaigns.state import (
    CANCEL_ALL_REASON,
    CANCEL_REASON,
    CancelStatus,
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
    request_seconds: float = 0.0  # summed over the requests (with several in flight, more than the wall time)
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
    out.cancel_seen_at = out.cancel_seen_at or dt.datetime.now(dt.UTC).isoformat()
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
    requests_in_flight: int = 1,
) -> SendOutcome:
    """Send ``chunks`` of the campaign's ledger; see the module docstring. Raises on a retryable failure.

    ``requests_in_flight`` workers (``campaigns.requests_in_flight``) take the chunks in order, each running the
    per-chunk steps for its own request. Once one of them sees a whole cancel or a retryable failure, no worker
    claims another chunk; the requests in flight finish and record their outcome, then the pending rows are
    cancelled (a cancel) and the first failure is raised.
    """
    cid, ch = int(campaign_id), int(channel_id)
    if requests_in_flight < 1:
        raise ValueError(f"requests_in_flight must be >= 1, got {requests_in_flight}")
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
    run = _Run(engine, netmera, cid, ch, out, optimove, iter(chunks))
    workers = min(requests_in_flight, len(chunks))
    if workers <= 1:
        run.work()
    else:
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix=f"send-{cid}-{ch}") as pool:
            try:
                for done in [pool.submit(run.work) for _ in range(workers)]:
                    done.result()  # work() records its errors instead of raising
            except BaseException:  # e.g. the task's timeout or SIGTERM in this thread: the requests in flight
                run.stopping.set()  # finish their bookkeeping (the pool's exit waits), nothing more is claimed
                raise
    if run.cancelled is not None:
        _stop(engine, cid, ch, out, confirmed=run.cancelled)
    if run.errors:
        for later in run.errors[1:]:
            log.error("another request failed in the same send: %s", later)
        raise run.errors[0]
    return out


class _Run:
    """What the workers of one :func:`send_chunks` call share; ``lock`` guards ``out``, the chunk iterator and
    the stop decision, ``narrowing`` makes one worker at a time ask Optimove about a cancel."""

    def __init__(
        self,
        engine: Engine,
        netmera: NetmeraClient,
        cid: int,
        ch: int,
        out: SendOutcome,
        optimove: Callable[[], OptimoveClient | None],
        chunks: Iterator[int],
    ) -> None:
        self.engine, self.netmera, self.cid, self.ch, self.out = engine, netmera, cid, ch, out
        self.optimove = optimove
        self.client: OptimoveClient | None = None
        self.chunks = chunks
        self.lock = threading.Lock()
        self.narrowing = threading.Lock()
        self.stopping = threading.Event()  # a whole cancel was seen or a request failed: claim nothing more
        self.cancelled: bool | None = None  # a whole cancel was seen: True if Optimove confirmed it whole
        self.errors: list[BaseException] = []

    def work(self) -> None:
        """One worker: take the next chunk and send it, until none is left or the run stops."""
        try:
            while True:  # stopping is checked right before each claim (_send_chunk)
                with self.lock:
                    chunk = next(self.chunks, None)
                if chunk is None or not self._send_chunk(chunk):
                    return
                with self.lock:
                    self.out.chunks += 1
        except BaseException as exc:
            with self.lock:
                self.errors.append(exc)
            self.stopping.set()
        finally:
            self.netmera.close_thread_session()

    def _send_chunk(self, chunk: int) -> bool:
        """Send one chunk (steps 1-4 of the module docstring); False when the run stopped before its request."""
        engine, cid, ch = self.engine, self.cid, self.ch
        while True:
            with engine.connect() as conn:  # one checkout for the steps before the request
                status, request_id, claim, last = self._claim(conn, chunk)
            if status.cancelled:
                if self._cancel_is_partial():
                    continue
                return False
            if claim is None or last is None:  # the run is stopping: nothing was claimed
                return False
            if not claim:
                if last.cancelled:
                    continue  # a cancel landed between the check and the claim
                return True
            if last.cancelled or last.cancelled_at != status.cancelled_at:  # the last look, right before the request
                recipients.finish_request(engine, cid, ch, chunk, request_id, RecipientStatus.PENDING.value)
                # a cancel that another worker narrowed meanwhile: its listed customers must not go back to pending
                recipients.reapply_cancel(engine, cid, ch)
                continue
            _send_one(engine, self.netmera, cid, ch, chunk, request_id, claim, self.out, self.lock)
            return True  # the claim took every pending row of the chunk: none is left for another look

    def _claim(
        self, conn: Connection, chunk: int
    ) -> tuple[CancelStatus, str, recipients.Claim | None, CancelStatus | None]:
        """Steps 1-2 on one held connection: the cancel read; unless it reads cancelled or the run is stopping, the
        claim under a new request id and the last look at the cancel right after it (for an empty claim: did a
        cancel land before it?)."""
        status = cancel_status(conn, self.cid, self.ch)
        if status.cancelled:
            return status, "", None, None
        if self.stopping.is_set():  # another worker saw a cancel or failed: claim nothing more
            return status, "", None, None
        request_id = uuid.uuid4().hex
        claim = recipients.claim_chunk(conn, self.cid, self.ch, chunk, request_id, dt.datetime.now(dt.UTC))
        return status, request_id, claim, cancel_status(conn, self.cid, self.ch)

    def _cancel_is_partial(self) -> bool:
        """The campaign reads cancelled: narrow it (once, whichever worker gets here first); True when the send
        goes on (the cancel proved partial, here or in another worker), False when it stops."""
        with self.narrowing:
            if self.cancelled is not None:
                return False
            status = cancel_status(self.engine, self.cid, self.ch)  # another worker may have narrowed meanwhile
            if not status.cancelled:
                return True
            scope = "all"
            if status.needs_narrowing:
                self.client = self.client or self.optimove()
                scope = narrow_cancel(self.engine, self.client, self.cid, self.ch)
            if scope == "partial":
                with self.lock:
                    self.out.cancel_scope = "partial"
                return True
            with self.lock:
                self.out.cancel_seen_at = dt.datetime.now(dt.UTC).isoformat()
            self.cancelled = scope == "all"
            self.stopping.set()
            return False


def _send_one(
    engine: Engine,
    netmera: NetmeraClient,
    cid: int,
    ch: int,
    chunk: int,
    request_id: str,
    claim: recipients.Claim,
    out: SendOutcome,
    lock: threading.Lock,
) -> None:
    started = dt.datetime.now(dt.UTC)  # the request's start, recorded as the rows' sent_at
    with lock:
        out.requests += 1
        out.first_request_at = min(out.first_request_at or started.isoformat(), started.isoformat())
        out.last_request_at = max(out.last_request_at or started.isoformat(), started.isoformat())
    clock = time.monotonic()
    try:
        netmera.send_encoded_notifications(claim.body, claim.count)
    except ApiError as exc:
        with lock:
            out.request_seconds += time.monotonic() - clock
        _failed_request(engine, cid, ch, chunk, request_id, exc, out, lock)
        return
    except ValueError as exc:  # refused before any request (e.g. too many extIds): nothing was sent
        recipients.finish_request(engine, cid, ch, chunk, request_id, RecipientStatus.PENDING.value)
        raise RuntimeError(f"chunk {chunk} could not be sent: {exc}") from exc
    elapsed = time.monotonic() - clock
    done = recipients.finish_request(
        engine, cid, ch, chunk, request_id, RecipientStatus.SENT.value, values={"sent_at": started}, count=claim.count
    )
    with lock:
        out.request_seconds += elapsed
        out.sent += done
    log.info("chunk %d: %d recipient(s) sent in %.0f ms", chunk, done, 1000 * elapsed)


def _failed_request(
    engine: Engine,
    cid: int,
    ch: int,
    chunk: int,
    request_id: str,
    exc: ApiError,
    out: SendOutcome,
    lock: threading.Lock,
) -> None:
    if is_unknown_target(exc):
        skipped = recipients.finish_request(
            engine, cid, ch, chunk, request_id, RecipientStatus.SKIPPED.value, UNKNOWN_EXT_ID_REASON
        )
        with lock:
            out.skipped += skipped
        log.info("chunk %d: no recipient is a known Netmera user (5016): skipped", chunk)
        return
    reason = str(exc)
    if is_payload_rejection(exc):
        failed = recipients.finish_request(engine, cid, ch, chunk, request_id, RecipientStatus.FAILED.value, reason)
        recipients.dead_letter(engine, cid, ch, request_id, reason)
        with lock:
            out.failed += failed
            out.errors.append(f"chunk {chunk}: {reason}")
        log.error("chunk %d refused by Netmera, dead-lettered: %s", chunk, reason)
        return
    if exc.ambiguous:
        unknown = recipients.finish_request(
            engine, cid, ch, chunk, request_id, RecipientStatus.UNKNOWN.value, f"outcome unknown: {reason}"
        )
        with lock:
            out.unknown += unknown
        log.error("chunk %d: outcome unknown (%s); marked unknown, not re-sent without resend_unknown", chunk, reason)
    else:
        recipients.finish_request(engine, cid, ch, chunk, request_id, RecipientStatus.PENDING.value)
        log.error("chunk %d: not sent (%s); back to pending", chunk, reason)
    raise exc

"""Delete each safeguard once and watch its test fail (``make safeguards``; not part of ``make test``).

A hand-written complement to ``make mutation``: mutmut mutates every expression of a module (thousands of
mutants, hours for the DAG-run tests of the send path), this removes exactly the safeguards the project promises
(cancellation checks, the claim, the deferral, the 400 rule, the rate limit, the extId transform, ...), one at a
time, in a staged copy of the package (``build/safeguards/include``; ``include/`` is never touched), and runs the
test that defends it. A safeguard is *killed* when its test fails (pytest exit code 1) with the safeguard removed;
it *survived* when the test still passes, which makes this command exit 1. Each edit must match the code exactly
once, so the table cannot silently rot when the code changes.

Usage: ``python scripts/safeguards.py [-k NAME_SUBSTRING] [--list]`` (SQLite variants of the tests).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STAGE = ROOT / "build" / "safeguards"
PKG = "include/optimove_netmera"
SEND_TESTS = "tests/campaigns/test_send_safeguards.py"
CAMPAIGN_TESTS = "tests/campaigns/test_campaign_send.py"
IN_FLIGHT_TESTS = "tests/campaigns/test_send_in_flight.py"
RAW_TESTS = "tests/unit/test_sync_raw_fingerprint.py"
SETTLE_TESTS = "tests/unit/test_sync_settle.py"


@dataclass(frozen=True)
class Safeguard:
    name: str
    path: str  # under include/optimove_netmera
    find: str  # must occur exactly once
    replace: str
    tests: tuple[str, ...]  # pytest node ids
    select: str = "not postgres"  # pytest -k: the SQLite variant where a test has both


SAFEGUARDS = (
    Safeguard(
        "deferral until Optimove's ScheduleTime",
        "campaigns/tasks.py",
        "            if when > dt.datetime.now(dt.UTC):\n",
        "            if False:\n",
        (f"{SEND_TESTS}::test_send_task_defers_until_the_scheduled_time",),
    ),
    Safeguard(
        "cancellation check at the top of the send loop",
        "campaigns/send.py",
        "        status = cancel_status(conn, self.cid, self.ch)\n        if status.cancelled:\n",
        "        status = cancel_status(conn, self.cid, self.ch)\n        if False:\n",
        (f"{SEND_TESTS}::test_cancel_seen_at_the_top_of_the_loop",),
    ),
    Safeguard(
        "cancellation check after an empty claim",
        "campaigns/send.py",
        "                if last.cancelled:\n"
        "                    continue  # a cancel landed between the check and the claim",
        "                if False:\n                    continue  # a cancel landed between the check and the claim",
        (f"{SEND_TESTS}::test_cancel_committed_between_the_check_and_the_claim",),
    ),
    Safeguard(
        "the last cancellation look before the request",
        "campaigns/send.py",
        "            if last.cancelled or last.cancelled_at != status.cancelled_at:  # the last look",
        "            if False:  # the last look",
        (f"{SEND_TESTS}::test_cancel_committed_between_the_claim_and_the_request",),
    ),
    Safeguard(
        "the claim refuses a cancelled campaign",
        "campaigns/recipients.py",
        "        not_cancelled,\n        key=_CHUNK,\n",
        "        key=_CHUNK,\n",
        (f"{SEND_TESTS}::test_cancel_committed_between_the_check_and_the_claim",),
    ),
    Safeguard(
        "the claim takes only a pending chunk (two workers never send one chunk twice)",
        "campaigns/recipients.py",
        "from_status=RecipientStatus.PENDING.value,  # two workers never claim one chunk",
        "from_status=[RecipientStatus.PENDING.value, RecipientStatus.IN_FLIGHT.value, RecipientStatus.SENT.value],",
        (f"{CAMPAIGN_TESTS}::test_two_workers_sending_the_same_chunks_never_double_send",),
    ),
    Safeguard(
        "a cancel moves only the rows of chunks never claimed (a claimed chunk's rows have its outcome)",
        "campaigns/state.py",
        "    return ~sa.exists().where(*mine, k.c.status != RecipientStatus.PENDING.value)\n",
        "    return sa.true()\n",
        ("tests/campaigns/test_send_in_flight.py::test_cancel_while_requests_are_in_flight_stops_every_worker",),
    ),
    Safeguard(
        "a cancel share-locks the chunks first, so it waits for a claim in progress and then sees it (PostgreSQL)",
        "campaigns/state.py",
        "        .with_for_update(read=True)\n",
        "",
        (
            "tests/campaigns/test_chunk_ledger.py::test_a_cancel_waits_for_a_claim_in_progress_and_leaves_its_chunk_alone",
        ),
        select="postgres",
    ),
    Safeguard(
        "a restored row of a claimed chunk leaves it (the chunk's outcome is not its own) and is chunked again",
        "campaigns/state.py",
        '"chunk_no": sa.case((unclaimed(), rtable.c.chunk_no), else_=sa.null())',
        '"chunk_no": rtable.c.chunk_no',
        ("tests/campaigns/test_chunk_ledger.py::test_a_restored_row_of_a_settled_chunk_gets_a_chunk_of_its_own",),
    ),
    Safeguard(
        "only the request that holds a chunk settles it (a worker thought dead cannot settle a chunk claimed again)",
        "campaigns/recipients.py",
        '    holder = _K.c.request_id == sa.bindparam("holder")\n',
        "    holder = sa.true()\n",
        ("tests/campaigns/test_chunk_ledger.py::test_only_the_request_that_holds_the_chunk_settles_it",),
    ),
    Safeguard(
        "a chunk in flight when its worker died becomes unknown (never pending again, unless an operator re-sends)",
        "campaigns/recipients.py",
        "        transition(session, _K, *chunk_criteria, **orphaned)\n",
        "        transition(session, _K, *chunk_criteria, "
        '**{**orphaned, "to_status": RecipientStatus.PENDING.value})\n',
        (f"{CAMPAIGN_TESTS}::test_crash_leaves_rows_in_flight_they_become_unknown_and_resend_on_request",),
        select="sqlite and chunk",
    ),
    Safeguard(
        "a claim that finds no row left to send gives the chunk back",
        "campaigns/recipients.py",
        "        if not count:\n",
        "        if False:\n",
        ("tests/campaigns/test_chunk_ledger.py::test_a_chunk_with_nothing_left_to_send_is_given_back",),
    ),
    Safeguard(
        "a partial cancel arriving mid-send is narrowed, the rest still sent",
        "campaigns/send.py",
        '            if scope == "partial":\n',
        "            if False:\n",
        (f"{SEND_TESTS}::test_partial_cancel_arriving_mid_send_is_narrowed",),
    ),
    Safeguard(
        "the last look also catches a cancel that another worker narrowed meanwhile (a newer cancelled_at)",
        "campaigns/send.py",
        "if last.cancelled or last.cancelled_at != status.cancelled_at:",
        "if last.cancelled:",
        (f"{IN_FLIGHT_TESTS}::test_cancel_narrowed_by_another_worker_around_the_last_look",),
        "not postgres and before_the_last_look",
    ),
    Safeguard(
        "rows the last look puts back re-get the cancel (narrowed by another worker meanwhile)",
        "campaigns/send.py",
        "                recipients.reapply_cancel(engine, cid, ch)\n",
        "",
        (f"{IN_FLIGHT_TESTS}::test_cancel_narrowed_by_another_worker_around_the_last_look",),
        "not postgres and before_the_rows_go_back",
    ),
    Safeguard(
        "no worker claims a chunk once another saw a whole cancel or a failure",
        "campaigns/send.py",
        "        if self.stopping.is_set():  # another worker",
        "        if False:  # another worker",
        (f"{IN_FLIGHT_TESTS}::test_failure_in_one_request_stops_claiming_and_raises_after_the_others_finish",),
    ),
    Safeguard(
        "the pending rows are cancelled (once) after the requests in flight finished",
        "campaigns/send.py",
        "        _stop(engine, cid, ch, out, confirmed=run.cancelled)\n",
        "        pass\n",
        (f"{IN_FLIGHT_TESTS}::test_cancel_while_requests_are_in_flight_stops_every_worker",),
    ),
    Safeguard(
        "one worker at a time narrows a cancel",
        "campaigns/send.py",
        "        with self.narrowing:\n",
        "        if True:\n",
        (f"{IN_FLIGHT_TESTS}::test_partial_cancel_seen_by_several_workers_is_narrowed_once",),
    ),
    Safeguard(
        "each thread talks HTTP through its own requests.Session",
        "http.py",
        '        session: requests.Session | None = getattr(self._local, "session", None)\n'
        "        if session is None:\n",
        "        session: requests.Session | None = self.session\n        if session is None:\n",
        ("tests/clients/test_http.py::test_each_thread_uses_its_own_session",),
        "",
    ),
    Safeguard(
        "a Netmera 400 dead-letters the chunk and fails it without retry",
        "campaigns/send.py",
        "    if is_payload_rejection(exc):\n",
        "    if False:\n",
        (f"{SEND_TESTS}::test_netmera_400_dead_letters_and_fails_the_chunk_without_retry",),
    ),
    Safeguard(
        "the Optimove hook's default rate limit (50 calls / 10 s)",
        "hooks.py",
        '"rate_limit": _rate_limit(extra, (50, 10.0)),',
        '"rate_limit": _rate_limit(extra, None),',
        (f"{SEND_TESTS}::test_optimove_hook_defaults_to_50_calls_per_10_seconds",),
    ),
    Safeguard(
        "the extId transform on the campaign path",
        "campaigns/personalise.py",
        '"ext_id": ext_id(customer_id),',
        '"ext_id": customer_id,',
        (f"{SEND_TESTS}::test_campaign_recipients_get_the_configured_ext_id",),
    ),
    Safeguard(
        "the extId transform on the single-target path",
        "campaigns/realtime.py",
        "personalise.request_object(key, settings.ext_id.apply(row.customer_id), params)",
        "personalise.request_object(key, row.customer_id, params)",
        ("tests/campaigns/test_realtime.py::test_single_target_events_get_the_configured_ext_id",),
    ),
    Safeguard(
        "the group commit's limit on flushes at once (database connections)",
        "campaigns/events/group.py",
        "        if queue.in_flight < self._max_in_flight:",
        "        if True:",
        (
            "tests/campaigns/test_group_commit.py::test_at_most_max_in_flight_flushes_of_at_most_max_batch_items_and_each_its_own_outcome",
        ),
    ),
    Safeguard(
        "staging keeps an existing ledger row (SQLite's direct insert: ON CONFLICT DO NOTHING)",
        "campaigns/recipients.py",
        "ON CONFLICT ({', '.join(LEDGER_KEY)}) DO NOTHING\"",
        "ON CONFLICT ({', '.join(LEDGER_KEY)}) DO UPDATE SET params = excluded.params\"",
        (
            "tests/campaigns/test_ledger_insert.py::test_the_driver_insert_stores_what_the_orm_upsert_stores_and_keeps_the_first_row",
        ),
    ),
    Safeguard(
        "staging skips a recipient whose text holds a NUL and stores it without the NUL",
        "campaigns/personalise.py",
        "        if has_nul:  # neither PostgreSQL nor a push can carry it",
        "        if False:  # neither PostgreSQL nor a push can carry it",
        (
            "tests/campaigns/test_ledger_insert.py::test_a_nul_in_optimove_text_skips_the_recipient_and_is_stored_on_both_databases",
        ),
        select="",
    ),
    Safeguard(
        "a request body with NaN or an infinity is refused before any request",
        "http.py",
        "        if _NULL in body and _has_non_finite(value):",
        "        if False:",
        ("tests/clients/test_netmera_client.py::test_a_body_that_is_not_json_is_refused_before_any_request",),
    ),
    Safeguard(
        "a failing plan waits for the chunk being written before it deletes what it wrote",
        "sync/plan.py",
        "        writer.close()  # no write may follow the delete\n",
        "",
        ("tests/unit/test_sync_stream.py::test_a_plan_failing_while_a_chunk_is_written_leaves_nothing",),
    ),
    Safeguard(
        "reading ahead stays one item ahead (staging fetches one page ahead, no more)",
        "read_ahead.py",
        "                wanted.acquire()\n",
        "",
        (f"{SEND_TESTS}::test_a_write_failure_stops_the_paging",),
    ),
    Safeguard(
        "the extId transform on the sync path",
        "sync/plan.py",
        "    ext_ids = settings.ext_id.apply_all(customer_ids)",
        "    ext_ids = list(customer_ids)",
        ("tests/dags/test_user_sync_safeguards.py::test_ext_id_transform_on_the_sync_path",),
    ),
    Safeguard(
        "the runtime Variable override (optimove_netmera_config)",
        "settings.py",
        "    raw = Variable.get(VARIABLE_NAME, default=None)\n",
        "    raw = None\n",
        (f"{SEND_TESTS}::test_runtime_variable_overrides_settings_deep_merged",),
    ),
    Safeguard(
        "the sync's since parameter",
        "sync/runs.py",
        '    since = _as_date(params.get("since"), "since")\n',
        "    since = None\n",
        ("tests/dags/test_user_sync_safeguards.py::test_since_and_until_params_choose_the_changers_window",),
    ),
    Safeguard(
        "the sync's until parameter",
        "sync/runs.py",
        '    until = _as_date(params.get("until"), "until") or data_date\n',
        "    until = data_date\n",
        ("tests/dags/test_user_sync_safeguards.py::test_since_and_until_params_choose_the_changers_window",),
    ),
    Safeguard(
        "the API server's re-dispatch sweep",
        "campaigns/api.py",
        "            await run_in_threadpool(_sweep, runtime, options, dispatcher)\n",
        "            pass\n",
        (
            "tests/campaigns/test_event_dispatcher.py::"
            "test_an_event_stored_by_a_killed_server_is_dispatched_by_the_next_ones_sweep",
        ),
        select="",
    ),
    Safeguard(
        "the CSV export branch of a full refresh",
        "sync/extract.py",
        '    if suffix in (".csv", ".txt"):\n        return list(pd.read_csv(file, nrows=0, dtype=str).columns)\n',
        "",
        ("tests/dags/test_user_sync_safeguards.py::test_full_refresh_from_a_csv_export_delivers_exact_values",),
    ),
    Safeguard(
        "the raw fingerprint's seed holds the mapping (a changed mapping coerces every customer again)",
        "sync/transform.py",
        "[[a.optimove, a.netmera, a.type] for a in mapping]",
        "[]",
        (f"{RAW_TESTS}::test_a_changed_mapping_diffs_every_customer_again",),
    ),
    Safeguard(
        "the raw fingerprint mixes in each value's length (a separator inside a value, missing against empty)",
        "sync/transform.py",
        "            layout += (lengths + 1).astype(np.uint64) * mult\n",
        "            pass\n",
        (f"{RAW_TESTS}::test_raw_fingerprints_tell_apart_what_joined_text_would_not",),
    ),
    Safeguard(
        "a customer whose raw values changed but not its coerced ones gets its new fingerprint stored",
        "sync/plan.py",
        "            _refresh_raw(conn, fingerprints or [])\n",
        "            pass\n",
        (
            f"{RAW_TESTS}::test_only_raw_changes_are_coerced_and_a_cosmetic_one_stores_its_new_fingerprint",
            f"{RAW_TESTS}::test_a_snapshot_without_raw_fingerprints_is_diffed_by_coerced_values",
        ),
    ),
    Safeguard(
        "a dry run stores no new fingerprint",
        "sync/plan.py",
        "[] if dry_run else refresh",
        "refresh",
        (f"{RAW_TESTS}::test_only_raw_changes_are_coerced_and_a_cosmetic_one_stores_its_new_fingerprint",),
    ),
    Safeguard(
        "the snapshot comparison of ids with a NUL runs in Python (json_each would cut them short)",
        "sync/plan.py",
        '        if b"\\\\u0000" in document:  # json_each would cut an id at a NUL: compare in Python\n',
        "        if False:\n",
        (f"{RAW_TESTS}::test_ids_holding_a_nul_are_compared_and_stored_whole_on_sqlite",),
        select="",
    ),
    Safeguard(
        "no stored fingerprint for an id with a NUL on SQLite (it would land on another customer's row)",
        "sync/plan.py",
        '        pairs = [p for p in pairs if "\\x00" not in p[0]]',
        "        pass",
        (f"{RAW_TESTS}::test_ids_holding_a_nul_are_compared_and_stored_whole_on_sqlite",),
        select="",
    ),
    Safeguard(
        "the chunk is coerced as it is only when the database answered its customers in order",
        "sync/plan.py",
        "    everyone = len(pos) == len(raw) and bool((pos == np.arange(len(raw))).all())\n",
        "    everyone = len(pos) == len(raw)\n",
        (f"{RAW_TESTS}::test_each_customer_gets_its_own_values_whatever_order_the_database_answers_in",),
    ),
    Safeguard(
        "the customers to coerce are gathered across chunks (a set a chunk costs nearly a full chunk's coercion)",
        "sync/plan.py",
        "        buffer = _CandidateBuffer(max(1, rows // 2))",
        "        buffer = _CandidateBuffer(1)",
        ("tests/unit/test_sync_stream.py::test_a_changed_share_is_diffed_per_chunk_and_a_tripped_guard_is_recorded",),
    ),
    Safeguard(
        "ids with a NUL are looked up by keyed queries on SQLite (json_each would cut them short)",
        "sync/plan.py",
        '    if b"\\\\u0000" in document:\n        return column.in_(ids)\n',
        "    if False:\n        return column.in_(ids)\n",
        ("tests/unit/test_sync_carry.py::test_a_write_deletes_only_its_customers_rows_of_this_run",),
        select="",
    ),
    Safeguard(
        "the existence probe asks about new and resynced customers only, in full calls",
        "sync/plan.py",
        "                    queue.extend(r for r in changes if r[_FRESH])\n"
        "                    changes = [r for r in changes if not r[_FRESH]]\n",
        "                    queue.extend(changes)\n                    changes = []\n",
        ("tests/unit/test_sync_stream.py::test_a_changed_share_is_diffed_per_chunk_and_a_tripped_guard_is_recorded",),
    ),
    Safeguard(
        "a set's rows are written only once the probe answered for them (the calls overlap the next set's diff)",
        "sync/plan.py",
        "                _mark(block, answer.result(), plan)\n",
        "                pass\n",
        ("tests/unit/test_sync_stream.py::test_first_sync_of_many_chunks_holds_one_chunk_and_plans_exactly",),
    ),
    Safeguard(
        "the carried customers the diff replaced are found by their hashes",
        "sync/plan.py",
        "            replaced = [c for c, h in zip(replacing_carried, hit.tolist(), strict=True) if h]\n",
        "            replaced = []\n",
        ("tests/unit/test_sync_carry.py::test_the_customers_the_diff_replaced_are_not_carried",),
    ),
    Safeguard(
        "a write deletes the carried copies of the customers the diff replaced, before their new rows go in",
        "sync/plan.py",
        "            self.carried -= _delete_replaced(conn, self._run_id, replaced)\n",
        "            pass\n",
        ("tests/unit/test_sync_carry.py::test_the_customers_the_diff_replaced_are_not_carried",),
    ),
    Safeguard(
        "the carried changes' check sets only rows still carried (the diff may have replaced one meanwhile)",
        "sync/plan.py",
        "                        SyncChange.reason == CARRIED,\n                        _among(",
        "                        _among(",
        ("tests/unit/test_sync_carry.py::test_the_check_never_sets_a_row_the_diff_wrote_meanwhile",),
    ),
    Safeguard(
        "the carried changes' check and the writer write one transaction at a time (no deadlock on PostgreSQL)",
        "sync/plan.py",
        "        with self._one_at_a_time, self._checkpoints.transaction() as conn:\n",
        "        with self._checkpoints.transaction() as conn:\n",
        ("tests/unit/test_sync_carry.py::test_the_check_writes_only_between_the_writers_transactions",),
    ),
    Safeguard(
        "an unknown customer whose raw values and extId are its carried change's keeps that change, not coerced again",
        "sync/plan.py",
        "        return _in_sorted(keys, self._standing_keys)\n",
        "        return np.zeros(len(customer_ids), dtype=bool)\n",
        (
            "tests/unit/test_sync_stream.py::test_an_unknown_customer_whose_data_did_not_change_keeps_its_carried_change",
        ),
    ),
    Safeguard(
        "a carried change stands only for the same extId (a changed extId transform diffs the unknown ones again)",
        "sync/plan.py",
        "        for part in (ext_ids, raw_texts):\n",
        "        for part in (raw_texts,):\n",
        (
            "tests/unit/test_sync_stream.py::test_an_unknown_customer_whose_data_did_not_change_keeps_its_carried_change",
        ),
    ),
    Safeguard(
        "a resynced customer is diffed again, even when its carried change would stand",
        "sync/plan.py",
        "np.flatnonzero(is_new & ~forced_all[pos])",
        "np.flatnonzero(is_new)",
        (
            "tests/unit/test_sync_stream.py::test_an_unknown_customer_whose_data_did_not_change_keeps_its_carried_change",
        ),
    ),
    Safeguard(
        "a full refresh keeps the carried changes that stand (their customers are read, not replaced)",
        "sync/plan.py",
        "            if covered is not None and left:\n",
        "            if False:\n",
        (
            "tests/unit/test_sync_stream.py::test_an_unknown_customer_whose_data_did_not_change_keeps_its_carried_change",
        ),
    ),
    Safeguard(
        "the export's duplicate check strips the ids it hashes (a padded id is the same customer)",
        "sync/extract.py",
        "            stripped = pc.utf8_trim_whitespace(column.cast(pa.large_string()))\n",
        "            stripped = column.cast(pa.large_string())\n",
        ("tests/unit/test_sync_stream.py::test_first_sync_of_many_chunks_holds_one_chunk_and_plans_exactly",),
    ),
    Safeguard(
        "a carried change sends only the parts it had (an empty set or unset part stays without a batch)",
        "sync/plan.py",
        'text.in_([empty, "null"])',
        "sa.false()",
        ("tests/unit/test_sync_carry.py::test_not_found_changes_are_carried_with_the_parts_they_had_to_send",),
    ),
    Safeguard(
        "a pending change counts as delivered only when every part's batch is delivered",
        "sync/load.py",
        "        still_open = conn.execute(sa.select(sa.func.count()).select_from(union)).scalar_one()\n",
        "        still_open = 0\n",
        (f"{SETTLE_TESTS}::test_settle_advances_changes_whose_batches_are_all_delivered",),
    ),
    Safeguard(
        "the verify step reads back only changes whose every part's batch is delivered",
        "sync/load.py",
        "        SyncChange.status == ChangeStatus.PENDING.value,\n"
        "        *(_part_delivered(run_id, kind, column) for kind, column in _PARTS),\n",
        "        SyncChange.status == ChangeStatus.PENDING.value,\n",
        (f"{SETTLE_TESTS}::test_settle_advances_changes_whose_batches_are_all_delivered",),
    ),
    Safeguard(
        "a customer's snapshot advances only once the batch of its other part is delivered too",
        "sync/load.py",
        "            advanced += _advance_snapshot(conn, run_id, _pending(True), column.in_(numbers), *other)\n",
        "            advanced += _advance_snapshot(conn, run_id, _pending(True), column.in_(numbers))\n",
        (f"{SETTLE_TESTS}::test_a_customer_advances_once_every_part_is_delivered",),
    ),
    Safeguard(
        "the settle pass leaves a customer whose snapshot this or a later run advanced",
        "sync/load.py",
        "            ~sa.exists().where(*advanced),\n",
        "",
        (f"{SETTLE_TESTS}::test_settle_advances_changes_whose_batches_are_all_delivered",),
    ),
    Safeguard(
        "a group of delivered batches that could not be recorded fails the load (its retry sends them again)",
        "sync/load.py",
        "                    if (exc := future.exception()) is not None:\n                        fail(exc)\n",
        "                    if (exc := future.exception()) is not None:\n                        pass\n",
        ("tests/unit/test_sync_load_recording.py::test_a_group_not_recorded_fails_the_load_and_the_retry_resends_it",),
    ),
    Safeguard(
        "an encoded profile batch or send over Netmera's cap is refused before any request",
        "netmera/client.py",
        '        if count > self.max_batch:\n            raise ValueError(\n                f"{call}: {count} {items}',
        '        if False:\n            raise ValueError(\n                f"{call}: {count} {items}',
        (
            "tests/clients/test_netmera_client.py::test_an_encoded_batch_is_sent_as_it_is_and_checked_only_for_its_count",
            "tests/clients/test_netmera_client.py::test_an_encoded_send_is_sent_as_it_is_and_checked_only_for_its_count",
        ),
    ),
    Safeguard(
        "a claim's request body holds only the chunk's rows still pending on their own (not cancelled or settled)",
        "campaigns/recipients.py",
        "chunk_no = :chunk AND status = 'pending' ORDER BY id))\"",
        'chunk_no = :chunk ORDER BY id))"',
        (
            "tests/campaigns/test_claim_body.py::test_a_claim_s_body_holds_exactly_the_request_objects_of_the_rows_it_won",
        ),
    ),
    Safeguard(
        "a string holding a character JSON escapes (a control character, a quote, a backslash) is written escaped",
        "sync/json_text.py",
        '_ESCAPED_BYTES[[*range(0x20), ord(\'"\'), ord("\\\\")]] = True',
        "_ESCAPED_BYTES[[ord('\"')]] = True",
        ("tests/unit/test_json_text.py::test_cells_and_empty_frames",),
    ),
    Safeguard(
        "a customer with no value keeps its place among the set_attrs (Arrow's null-skipping join drops it)",
        "sync/json_text.py",
        "joined = pc.binary_join_element_wise(*parts, _NOTHING, options=_NO_NULLS)",
        "joined = pc.binary_join_element_wise(*parts, _NOTHING, null_handling='skip')",
        ("tests/unit/test_json_text.py::test_objects_are_what_msgspec_writes_for_each_rows_dict",),
    ),
    Safeguard(
        "the snapshot comparison's document holds each customer id JSON-escaped (a backslash in an id is its own)",
        "sync/json_text.py",
        '    texts = _string_texts(values, ",")',
        "    texts = pc.binary_join_element_wise(pa.scalar(',\"', _TEXT), values.cast(_TEXT), _QUOTE, _NOTHING)",
        (
            "tests/unit/test_json_text.py::test_a_json_array_is_what_msgspec_writes_for_the_list",
            f"{RAW_TESTS}::test_ids_json_escapes_are_compared_whole_on_sqlite",
        ),
    ),
    Safeguard(
        "a connection that wrote with its checkpoints off goes back to the pool with them on (the log cannot grow)",
        "store/wal.py",
        'conn.exec_driver_sql(f"PRAGMA wal_autocheckpoint = {int(before)}")',
        'conn.exec_driver_sql("SELECT 1")',
        (
            "tests/store/test_wal.py::test_commits_leave_the_copy_to_the_thread_and_the_connection_as_it_was",
            "tests/store/test_wal.py::test_a_failed_transaction_is_rolled_back_and_the_connection_restored",
        ),
    ),
    Safeguard(
        "a connection whose checkpoints cannot be turned back on is closed, not pooled",
        "store/wal.py",
        "                    conn.invalidate()  # never back in the pool with its checkpoints off\n",
        "",
        ("tests/store/test_wal.py::test_a_connection_whose_checkpoints_cannot_be_turned_back_on_is_closed_not_pooled",),
    ),
    Safeguard(
        "a body read on a connection not in UTF-8 is sent as UTF-8 (decoded and encoded, not taken as bytes)",
        "store/queries.py",
        "        if dbapi.encoding in UTF8_ENCODINGS:  # type: ignore[union-attr]\n",
        "        if True:\n",
        ("tests/unit/test_sync_load_body.py::test_a_body_is_utf8_on_a_connection_in_another_encoding",),
        select="postgres",
    ),
    Safeguard(
        "a customer planned as new whose snapshot row exists is upserted (the savepoint's fallback)",
        "sync/load.py",
        "        except sa.exc.IntegrityError as exc:\n",
        "        except ZeroDivisionError as exc:\n",
        ("tests/unit/test_sync_snapshot_insert.py::test_a_customer_planned_new_whose_row_exists_is_upserted",),
        select="postgres",
    ),
    Safeguard(
        "only a unique violation sends a group's snapshot insert to the upsert (any other error fails the load)",
        "sync/load.py",
        "            if not _unique_violation(exc):\n",
        "            if False:\n",
        ("tests/unit/test_sync_snapshot_insert.py::test_a_failure_other_than_a_row_found_is_not_retried_as_an_upsert",),
        select="postgres",
    ),
    Safeguard(
        "the plan flags the customers the snapshot lacks, and only them (new_customer: inserted, not upserted)",
        "sync/plan.py",
        "    new_flags = is_new[idx].tolist()",
        "    new_flags = [True] * len(idx)",
        ("tests/unit/test_sync_stream.py::test_a_changed_share_is_diffed_per_chunk_and_a_tripped_guard_is_recorded",),
    ),
    Safeguard(
        "the plan unsets what the snapshot's attribute bits say was delivered (present_bits decoded)",
        "sync/plan.py",
        "        delivered = decode(bits) if bits else ()\n",
        "        delivered = ()\n",
        ("tests/unit/test_sync_stream.py::test_a_changed_share_is_diffed_per_chunk_and_a_tripped_guard_is_recorded",),
    ),
    Safeguard(
        "revision 0009 writes a stored list's bits most significant digit first (SQLite)",
        "store/migrations/versions/0009_attribute_sets.py",
        "FROM k ORDER BY k.k DESC)",
        "FROM k ORDER BY k.k ASC)",
        ("tests/store/test_attribute_sets.py::test_stored_lists_become_bits_and_come_back",),
    ),
    Safeguard(
        "a name keeps its bit: only names without one are inserted",
        "store/attribute_sets.py",
        "        missing = sorted(set(names) - bits.keys())\n",
        "        missing = sorted(set(names))\n",
        ("tests/store/test_attribute_sets.py::test_a_name_keeps_its_bit_and_only_new_names_are_added",),
        select="postgres",
    ),
    Safeguard(
        "a multi-row VALUES insert into SQLite binds no more values a statement than the connection allows",
        "store/queries.py",
        "    largest = max(1, min(SQLITE_MAX_ROWS_PER_INSERT, limit // width))\n",
        "    largest = SQLITE_MAX_ROWS_PER_INSERT\n",
        ("tests/store/test_store.py::test_sqlite_values_insert_fits_each_statement_under_the_variable_limit",),
    ),
    Safeguard(
        "a multi-row VALUES insert into SQLite uses statements of few distinct sizes (each one compiled is kept)",
        "store/queries.py",
        "    size = 1 << max(0, largest.bit_length() - 1)\n    while rest:\n        if rest >= size:\n"
        "            yield size\n            rest -= size\n        size >>= 1\n",
        "    if rest:\n        yield rest\n",
        ("tests/store/test_store.py::test_sqlite_values_insert_compiles_few_distinct_statements_whatever_the_counts",),
    ),
    Safeguard(
        "the rest of a multi-row VALUES insert goes in one statement per binary digit, not row by row",
        "store/queries.py",
        "            rest -= size\n        size >>= 1\n",
        "            rest -= size\n        size = 1\n",
        ("tests/store/test_store.py::test_sqlite_values_insert_compiles_few_distinct_statements_whatever_the_counts",),
    ),
    Safeguard(
        "a blank attribute is no param (a recipient whose required param is blank is skipped, not half-rendered)",
        "campaigns/personalise.py",
        "                if not value.strip():\n                    continue\n",
        "",
        ("tests/unit/test_personalise_rows.py::test_ledger_rows_follow_the_rules_for_every_combination_of_values",),
    ),
)


def stage() -> Path:
    """A fresh copy of include/ under build/safeguards (the package the tests import through PYTHONPATH)."""
    target = STAGE / "include"
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(ROOT / "include", target, ignore=shutil.ignore_patterns("__pycache__"))
    return target


def environment(staged: Path) -> dict[str, str]:
    """The tests' environment: the staged package first on the path, the repository's settings file."""
    config = os.environ.get("OPTIMOVE_NETMERA_CONFIG") or str(ROOT / "config" / "optimove_netmera.yaml")
    return os.environ | {"PYTHONPATH": str(staged), "PYTHONDONTWRITEBYTECODE": "1", "OPTIMOVE_NETMERA_CONFIG": config}


def run(guard: Safeguard, staged: Path) -> tuple[str, float, str]:
    original = (ROOT / PKG / guard.path).read_text()
    if original.count(guard.find) != 1:
        raise SystemExit(f"{guard.name}: the edit matches {original.count(guard.find)} times in {guard.path}")
    target = staged / "optimove_netmera" / guard.path
    target.write_text(original.replace(guard.find, guard.replace))
    started = time.monotonic()
    try:
        result = subprocess.run(
            [sys.executable, "-m", "pytest", "-p", "no:randomly", "-q", "-x", "-k", guard.select, *guard.tests],
            cwd=ROOT,
            env=environment(staged),
            capture_output=True,
            text=True,
            timeout=900,
        )
    finally:
        target.write_text(original)
    seconds = time.monotonic() - started
    if result.returncode == 1:
        failed = [line for line in result.stdout.splitlines() if line.startswith(("FAILED", "ERROR"))]
        return "killed", seconds, (failed[0][:200] if failed else "")
    if result.returncode == 0:
        return "SURVIVED", seconds, ""
    raise SystemExit(f"{guard.name}: pytest exited {result.returncode}, not a test failure:\n{result.stdout[-3000:]}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-k", default="", help="only the safeguards whose name contains this")
    parser.add_argument("--list", action="store_true", help="list the safeguards and their tests")
    args = parser.parse_args()
    chosen = [g for g in SAFEGUARDS if args.k.lower() in g.name.lower()]
    if not chosen:  # pytest with no test named would run the whole suite as the "baseline"
        print(f"no safeguard's name contains {args.k!r} (see --list)", file=sys.stderr)
        return 2
    if args.list:
        for g in chosen:
            print(f"{g.name}\n    {g.path}: {' '.join(g.tests)}")
        return 0
    staged = stage()
    tests = {t for g in chosen for t in g.tests}
    # the unmodified copy passes first: a failure with a safeguard removed then means the safeguard's removal
    baseline = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:randomly", "-q", *sorted(tests)],
        cwd=ROOT,
        env=environment(staged),
        capture_output=True,
        text=True,
        timeout=1800,
    )
    if baseline.returncode != 0:
        print(baseline.stdout[-4000:])
        raise SystemExit("the tests fail with every safeguard in place: fix them first")
    results = []
    for guard in chosen:
        outcome, seconds, failure = run(guard, staged)
        results.append(outcome)
        print(f"{outcome:<9} {seconds:6.1f} s  {guard.name}  ({guard.path})", flush=True)
        if failure:
            print(f"          {failure}", flush=True)  # what the test said: the safeguard's effect, not a crash
    killed = results.count("killed")
    print(f"safeguards killed: {killed}/{len(results)}")
    return 0 if killed == len(results) else 1


if __name__ == "__main__":
    sys.exit(main())

"""Read back what a sync run wrote, to catch the values Netmera dropped silently.

``setProfileAttributes`` answers 200 while Netmera drops every key that is not defined in its panel or has another
type. After the load, a sample of the profiles this run wrote is read back with ``getProfileAttributes`` and
compared with what the load sent (the planned ``set_attrs``: already coerced, exactly the request's values):

- the sample: ``sync.verify_sample`` written profiles (a seeded random sample), plus, for every mapped attribute
  written in this run that the sample did not cover, up to three profiles that were written it;
- the **first run of a mapping** reads every written profile, up to ``sync.verify_first_run_cap``. A mapping is
  its sorted (Netmera name, type) pairs, fingerprinted into the run's ``counts.verify.mapping``; a run is the
  first of its mapping when no earlier successful, non-dry run recorded the same fingerprint.

An attribute whose value Netmera did not keep fails the check naming it. Before the task fails, the run's batches
that wrote that attribute go back to ``failed`` and the snapshot of their customers is marked unverified, so
clearing the run (after defining the attribute in Netmera) sends them again, and a later run re-sends them too.
Customers Netmera answers as unknown (code 5016) are counted, not compared. Only names and counts are logged.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import random
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import msgspec
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import Engine

from optimove_netmera.netmera import NetmeraClient
from optimove_netmera.settings import AttributeMapping, Settings
from optimove_netmera.store.models import (
    BatchKind,
    BatchStatus,
    ChangeStatus,
    CustomerSnapshot,
    SyncBatch,
    SyncChange,
    SyncRun,
    SyncRunStatus,
)
from optimove_netmera.sync.load import delivered_changes

UNVERIFIED_HASH = "unverified"  # not a fingerprint: the next plan sees these customers as changed
BACKUPS_PER_ATTRIBUTE = 3
KEYS = 10_000  # rows a fetch, ids an IN list


@dataclass(frozen=True)
class Written:
    """One customer's profile write of this run."""

    customer_id: str
    ext_id: str
    set_attrs: dict[str, Any]


@dataclass
class Verification:
    """What the read-back found (counts and attribute names only)."""

    mapping: str
    first_run: bool
    written: int = 0
    profiles_read: int = 0
    unknown_users: int = 0
    checked: dict[str, int] = field(default_factory=dict)
    not_kept: dict[str, int] = field(default_factory=dict)
    unverified: list[str] = field(default_factory=list)

    def counts(self) -> dict[str, Any]:
        """The run's ``counts.verify``."""
        return {
            "mapping": self.mapping,
            "first_run": self.first_run,
            "written": self.written,
            "profiles_read": self.profiles_read,
            "unknown_users": self.unknown_users,
            "checked": dict(sorted(self.checked.items())),
            "not_kept": dict(sorted(self.not_kept.items())),
            "unverified": self.unverified,
        }

    def message(self, types: dict[str, str]) -> str:
        """The failure: each dropped attribute, its likely cause and the next step."""
        parts = [
            f"Netmera did not keep `{name}` ({n} of {self.checked.get(name, n)} values read back): it is not defined "
            f"in the Netmera panel, or defined with another type: define `{name}` as {types.get(name, 'string')} "
            "in Netmera, then clear"
            for name, n in sorted(self.not_kept.items())
        ]
        return "; ".join(parts) + " this run (the batches that wrote it are sent again; nothing else is lost)"


def mapping_fingerprint(mapping: Sequence[AttributeMapping]) -> str:
    """A stable id of the mapped Netmera names and types (the order of the settings does not matter)."""
    pairs = sorted([a.netmera, a.type] for a in mapping)
    return "m1:" + hashlib.sha256(json.dumps(pairs).encode()).hexdigest()[:16]


def is_first_run(engine: Engine, run_id: int, fingerprint: str) -> bool:
    """True when no earlier successful, non-dry run verified the same mapping."""
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(SyncRun.counts).where(
                SyncRun.status == SyncRunStatus.SUCCESS.value, SyncRun.dry_run.is_(False), SyncRun.id < run_id
            )
        ).scalars()
        return not any(((c or {}).get("verify") or {}).get("mapping") == fingerprint for c in rows)


def _delivered_writes(run_id: int) -> tuple[Any, ...]:
    """This run's delivered changes that set at least one attribute. ``set_attrs`` is the text the plan wrote (an
    empty set is ``{}``) on both databases, so the text is compared; nothing is printed again."""
    sets = sa.cast(SyncChange.set_attrs, sa.Text) != "{}"
    return (*delivered_changes(run_id), sets)


def select_sample(engine: Engine, run_id: int, size: int) -> tuple[list[Written], int]:
    """A seeded uniform sample of ``size`` of this run's profile writes (in customer order), and how many writes
    there were.

    The writes are counted, ``size`` ranks among them drawn (seeded by the run id), and the customers at those ranks
    in customer order picked by the database (``row_number()``): only the sampled rows reach Python, so a
    million-write run costs two passes inside the database, not a million ids streamed through the interpreter."""
    where = _delivered_writes(run_id)
    with engine.connect() as conn:
        seen = conn.execute(sa.select(sa.func.count()).select_from(SyncChange).where(*where)).scalar_one()
        ranks = sorted(random.Random(run_id).sample(range(seen), min(size, seen)))
        ranked = (
            sa.select(
                SyncChange.customer_id,
                (sa.func.row_number().over(order_by=SyncChange.customer_id) - 1).label("rank"),
            )
            .where(*where)
            .subquery()
        )
        chosen: list[str] = []
        for start in range(0, len(ranks), KEYS):
            part = ranks[start : start + KEYS]
            chosen.extend(conn.execute(sa.select(ranked.c.customer_id).where(ranked.c.rank.in_(part))).scalars())
        rows: dict[str, Written] = {}
        for start in range(0, len(chosen), KEYS):
            for cid, ext_id, attrs in conn.execute(
                sa.select(SyncChange.customer_id, SyncChange.ext_id, SyncChange.set_attrs).where(
                    SyncChange.sync_run_id == run_id, SyncChange.customer_id.in_(chosen[start : start + KEYS])
                )
            ):
                rows[cid] = Written(cid, ext_id, dict(attrs))
    return [rows[c] for c in sorted(chosen)], seen


def written_with(engine: Engine, run_id: int, name: str, limit: int = BACKUPS_PER_ATTRIBUTE) -> list[Written]:
    """The first ``limit`` of this run's profile writes (customer order) that set attribute ``name``."""
    if engine.dialect.name == "postgresql":
        # set_attrs is the text the plan wrote (msgspec's encoding): only a row whose text holds the quoted name is
        # parsed to check that it is a key. Parsing every row took 10 times ``jsonb``'s ``?`` (1.6 s against
        # 0.13-0.2 s over 300k rows for a name set nowhere); with the look first, 0.36 s.
        quoted = msgspec.json.encode(name).decode()
        text = sa.cast(SyncChange.set_attrs, sa.Text)
        has = sa.case(
            (sa.func.strpos(text, quoted) > 0, sa.cast(SyncChange.set_attrs, postgresql.JSONB).has_key(name)),
            else_=sa.false(),
        )
    else:  # SQLite: json_type is NULL only where the key is missing
        has = sa.func.json_type(SyncChange.set_attrs, sa.literal(f'$."{name}"', sa.Text)).is_not(None)
    q = (
        sa.select(SyncChange.customer_id, SyncChange.ext_id, SyncChange.set_attrs)
        .where(*_delivered_writes(run_id), has)
        .order_by(SyncChange.customer_id)
        .limit(limit)
    )
    with engine.connect() as conn:
        return [Written(cid, ext_id, dict(attrs)) for cid, ext_id, attrs in conn.execute(q) if name in attrs]


def kept(got: Any, sent: Any, kind: str) -> bool:
    """Whether Netmera's stored value is the value sent (numbers by value; dates as epoch ms or ISO-8601)."""
    if got is None:
        return False
    if kind == "number":
        return type(got) in (int, float) and float(got) == float(sent)
    if kind == "boolean":
        return type(got) is bool and got is sent
    if kind == "date" and type(got) is str:
        try:
            parsed = dt.datetime.fromisoformat(got.replace("Z", "+00:00"))
        except ValueError:
            return False
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=dt.UTC)
        return int(parsed.timestamp() * 1000) == sent
    return type(got) is type(sent) and got == sent


def verify_run(engine: Engine, run_id: int, settings: Settings, client: NetmeraClient) -> Verification:
    """Read back a sample of this run's writes and compare (see the module docstring)."""
    types = {a.netmera: a.type for a in settings.attributes}
    fingerprint = mapping_fingerprint(settings.attributes)
    first = is_first_run(engine, run_id, fingerprint)
    size = settings.sync.verify_first_run_cap if first else settings.sync.verify_sample
    result = Verification(mapping=fingerprint, first_run=first)
    sample, result.written = select_sample(engine, run_id, size)
    done: set[str] = set()

    def check(w: Written, read: Any = None) -> None:
        done.add(w.customer_id)
        profile = client.get_profile_attributes(w.ext_id) if read is None else read.result()
        result.profiles_read += 1
        if profile is None:  # Netmera does not know the user (only when check_unknown_ext_ids is off)
            result.unknown_users += 1
            return
        for name, value in w.set_attrs.items():
            result.checked[name] = result.checked.get(name, 0) + 1
            if not kept(profile.profile.get(name), value, types.get(name, "string")):
                result.not_kept[name] = result.not_kept.get(name, 0) + 1

    # the sample's profiles are read ``sync.load_concurrency`` at a time (a first run reads up to a thousand)
    with ThreadPoolExecutor(settings.sync.load_concurrency, thread_name_prefix="netmera-verify") as pool:
        reads = [pool.submit(client.get_profile_attributes, w.ext_id) for w in sample]
        try:
            for w, read in zip(sample, reads, strict=True):
                check(w, read)
        except BaseException:
            for read in reads:  # a failed read fails the task: the rest are not sent
                read.cancel()
            raise
    unverified = []
    for name in types:  # every attribute written in this run, at least once
        if result.checked.get(name):
            continue
        backups = written_with(engine, run_id, name)
        for w in backups:
            if result.checked.get(name):
                break
            if w.customer_id not in done:
                check(w)
        if backups and not result.checked.get(name):
            unverified.append(name)
    result.unverified = sorted(unverified)
    return result


def reopen(engine: Engine, run_id: int, dropped: set[str]) -> int:
    """Send again what Netmera dropped: the set batches that wrote any of ``dropped`` go back to ``failed``.

    Their changes go back to ``pending`` and their customers' snapshot (advanced by this run) is marked
    unverified, so a clear of this run re-sends the batches and any later run sees the customers as changed.
    Returns the number of batches reopened.
    """
    batch_nos: set[int] = set()
    for w in _written_with_batches(engine, run_id):
        if dropped & w[1].keys():
            batch_nos.add(w[0])
    if not batch_nos:
        return 0
    nos = sorted(batch_nos)
    with engine.begin() as conn:
        for start in range(0, len(nos), 1000):
            part = nos[start : start + 1000]
            conn.execute(
                sa.update(SyncBatch)
                .where(
                    SyncBatch.sync_run_id == run_id,
                    SyncBatch.kind == BatchKind.SET.value,
                    SyncBatch.batch_no.in_(part),
                )
                .values(status=BatchStatus.FAILED.value, error=f"verify: Netmera dropped {', '.join(sorted(dropped))}")
            )
            customers = sa.select(SyncChange.customer_id).where(
                SyncChange.sync_run_id == run_id, SyncChange.set_batch_no.in_(part)
            )
            conn.execute(
                sa.update(CustomerSnapshot)
                .where(CustomerSnapshot.sync_run_id == run_id, CustomerSnapshot.customer_id.in_(customers))
                .values(attr_hash=UNVERIFIED_HASH)
            )
            conn.execute(  # rows an earlier version marked delivered; the others follow their batch
                sa.update(SyncChange)
                .where(
                    SyncChange.sync_run_id == run_id,
                    SyncChange.set_batch_no.in_(part),
                    SyncChange.status == ChangeStatus.DELIVERED.value,
                )
                .values(status=ChangeStatus.PENDING.value)
            )
    return len(nos)


def _written_with_batches(engine: Engine, run_id: int) -> Any:
    q = sa.select(SyncChange.set_batch_no, SyncChange.set_attrs).where(
        *delivered_changes(run_id), SyncChange.set_batch_no.is_not(None)
    )
    with engine.connect() as conn:
        for part in conn.execution_options(yield_per=10_000).execute(q).partitions():
            for batch_no, attrs in part:
                yield batch_no, attrs or {}

"""Benchmark of the API clients against the sandbox (run: ``python tests/perf/bench_clients.py``).

Not a test module: pytest never collects it (no ``test_`` name, no test functions).

1. Optimove: pages of 10,000 recipient rows per second against the 50 requests / 10 s ceiling (5 req/s),
   with the client's default limiter, reporting the achieved rate as % of the ceiling and the 429s seen.
   The achieved rate is ``k * calls / (start of request k*calls - start of request 0)`` for the largest
   whole number of windows k: request ``k*calls`` is the first the ceiling allows after k windows, so an
   ideal client reaches exactly ``calls / period`` and every delay of the client shows as a lower rate.
   The most requests the client sent in any ``period`` is reported too (must be <= calls).
   Also: the unthrottled page rate (limits off on both sides), to show the client is not the bottleneck.
2. Netmera: profile updates per second with ``setProfileAttributes`` at 1000 entries per request,
   with 1 and 4 threads.
"""

from __future__ import annotations

import argparse
import bisect
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from machine import machine  # tests/perf/machine.py (the script's own folder is on sys.path)
from optimove_netmera.http import Permit, RateLimiter
from optimove_netmera.netmera import NetmeraClient
from optimove_netmera.optimove import OptimoveClient
from optimove_netmera.sandbox import process
from optimove_netmera.sandbox import server as defaults
from optimove_netmera.sandbox.process import SandboxProcess

ATTRIBUTE_CHOICES = ["FirstName", "Country", "Language", "LastName", "Email", "City", "Segment", "Age"]


# --------------------------------------------------------------------------------------------------
# machine and sandbox


def start_sandbox(customers: int, seed: int) -> SandboxProcess:
    log_path = Path(tempfile.mkdtemp(prefix="bench-sandbox-")) / "sandbox.log"
    try:
        return process.start_sandbox(customers, seed, log_path, timeout=180)
    except TimeoutError:
        raise SystemExit(f"sandbox did not start; log: {log_path}") from None


# --------------------------------------------------------------------------------------------------
# measurements


@dataclass
class Run:
    label: str
    requests: int = 0
    rows: int = 0
    seconds: float = 0.0
    steady_rate: float | None = None
    client_429: int = 0
    server_429: int = 0
    latencies: list[float] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)


def percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def server_429s(admin: Any, endpoint: str) -> int:
    return int(admin.requests()["counts"].get(endpoint, {}).get("429", 0))


def optimove_paging(
    box: SandboxProcess, *, customers: int, total_requests: int, workers: int, throttled: bool, attributes: list[str]
) -> Run:
    """Page ~100,000-row campaigns (pages of 10,000) with ``workers`` threads until ``total_requests``.

    Campaigns have 99,999 recipients, so each pass is 9 full pages and one short one (no empty request).
    """
    admin = box.admin.optimove
    admin.reset()
    if not throttled:
        admin.config(rate_limit=None)
    recipients = min(100_000, customers) - 1
    campaign_ids = [
        admin.create_campaign(recipients=recipients, channel_id=506, control_fraction=0.1)["campaign_id"]
        for _ in range(workers)
    ]
    client = OptimoveClient(
        box.optimove_url,
        api_key=defaults.DEFAULT_OPTIMOVE_API_KEY,
        # the default limiter (50 / 10 s, process-wide) or none at all for the unthrottled run
        rate_limit=(50, 10.0) if throttled else None,
        pool_size=max(2, workers),
    )
    starts: list[float] = []
    lock = threading.Lock()
    remaining = [total_requests]
    run = Run(label="")
    limiter = client.limiter
    if isinstance(limiter, RateLimiter):
        acquire = limiter.acquire

        def timed_acquire() -> Permit:
            permit = acquire()
            stamp = time.monotonic()  # when the request is released to the wire
            with lock:
                starts.append(stamp)
            return permit

        limiter.acquire = timed_acquire  # type: ignore[method-assign]

    def take() -> bool:
        with lock:
            if remaining[0] <= 0:
                return False
            remaining[0] -= 1
            return True

    def worker(cid: int) -> None:
        while True:
            pages = client.iter_campaign_recipients(cid, 506, attributes)
            while True:
                if not take():
                    pages.close()
                    return
                t0 = time.monotonic()
                try:
                    page = next(pages)
                except StopIteration:
                    with lock:
                        remaining[0] += 1  # the empty/short end: give the slot back and start over
                    break
                t1 = time.monotonic()
                with lock:
                    run.rows += len(page)
                    run.latencies.append(t1 - t0)

    started = time.monotonic()
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(worker, campaign_ids))
    run.seconds = time.monotonic() - started
    run.requests = client.stats.calls
    run.client_429 = client.stats.rate_limited
    run.server_429 = server_429s(admin, "GET /current/customers/GetCustomerExecutionDetailsByCampaign")
    starts.sort()
    if isinstance(limiter, RateLimiter):
        del limiter.acquire  # back to the class method
        calls, period = limiter.calls, limiter.period
        windows = (len(starts) - 1) // calls
        if windows:
            # request k*calls opens the k-th window: k*calls requests were sent in that time
            run.steady_rate = calls * windows / (starts[calls * windows] - starts[0])
        run.extra["max_per_window"] = max(bisect.bisect_left(starts, t + period) - i for i, t in enumerate(starts))
    run.extra["throttle_s"] = client.stats.throttle_seconds
    client.close()
    return run


def netmera_profiles(
    box: SandboxProcess, *, customers: int, total_requests: int, threads: int, batch: int = 1000
) -> Run:
    """``setProfileAttributes`` with ``batch`` entries per request, ``threads`` in parallel."""
    admin = box.admin.netmera
    admin.reset()
    client = NetmeraClient(box.netmera_url, defaults.DEFAULT_NETMERA_API_KEY, pool_size=max(2, threads))
    bodies: list[list[dict[str, Any]]] = []
    for r in range(total_requests):
        base = (r * batch) % customers
        bodies.append(
            [
                {
                    "extId": f"C{(base + i) % customers + 1:07d}",
                    "profile": {"firstName": f"N{r}", "country": "TR", "score": r % 100, "isVip": bool(i % 2)},
                }
                for i in range(batch)
            ]
        )
    run = Run(label="")
    lock = threading.Lock()

    def send(body: list[dict[str, Any]]) -> None:
        t0 = time.monotonic()
        client.set_profile_attributes(body)
        dt = time.monotonic() - t0
        with lock:
            run.latencies.append(dt)

    started = time.monotonic()
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(send, bodies))
    run.seconds = time.monotonic() - started
    run.requests = client.stats.calls
    run.rows = total_requests * batch
    run.client_429 = client.stats.rate_limited
    run.extra["write_calls"] = admin.write_calls()
    client.close()
    return run


# --------------------------------------------------------------------------------------------------
# report


def table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    line = "+" + "+".join("-" * (w + 2) for w in widths) + "+"
    out = [line, "| " + " | ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)) + " |", line]
    for r in rows:
        out.append("| " + " | ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) + " |")
    out.append(line)
    return "\n".join(out)


def timed(label: str, fn: Callable[[], Run]) -> Run:
    print(f"  running: {label} ...", flush=True)
    run = fn()
    run.label = label
    return run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--customers", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument(
        "--optimove-requests", type=int, default=350, help="pages in the throttled run (350 = ~61 s at 5 req/s)"
    )
    parser.add_argument("--optimove-workers", type=int, default=2, help="threads sharing the one limiter")
    parser.add_argument("--unthrottled-requests", type=int, default=60)
    parser.add_argument(
        "--attributes", type=int, default=3, help=f"customer attributes per recipient row (1-{len(ATTRIBUTE_CHOICES)})"
    )
    parser.add_argument("--netmera-requests", type=int, default=300)
    args = parser.parse_args(argv)
    attributes = ATTRIBUTE_CHOICES[: max(1, min(args.attributes, len(ATTRIBUTE_CHOICES)))]

    print("Machine")
    for key, value in machine().items():
        print(f"  {key:9} {value}")
    print(f"\nStarting sandbox: --customers {args.customers} --seed {args.seed} ...", flush=True)
    t0 = time.monotonic()
    box = start_sandbox(args.customers, args.seed)
    print(f"  ready in {time.monotonic() - t0:.1f}s (log: {box.log_path})")
    try:
        print(
            "\n(1) Optimove paging: GetCustomerExecutionDetailsByCampaign, $top=10000, "
            f"attributes {', '.join(attributes)}"
        )
        unthrottled = timed(
            f"unthrottled, {args.optimove_workers} threads",
            lambda: optimove_paging(
                box,
                customers=args.customers,
                total_requests=args.unthrottled_requests,
                workers=args.optimove_workers,
                throttled=False,
                attributes=attributes,
            ),
        )
        throttled = timed(
            f"default limiter 50/10 s, {args.optimove_workers} threads",
            lambda: optimove_paging(
                box,
                customers=args.customers,
                total_requests=args.optimove_requests,
                workers=args.optimove_workers,
                throttled=True,
                attributes=attributes,
            ),
        )
        ceiling = 50 / 10.0
        rows = []
        for run in (unthrottled, throttled):
            rate = run.requests / run.seconds
            steady = run.steady_rate
            rows.append(
                [
                    run.label,
                    str(run.requests),
                    f"{run.rows:,}",
                    f"{run.seconds:.1f}",
                    f"{rate:.2f}",
                    f"{steady:.3f}" if steady else "-",
                    f"{100 * steady / ceiling:.1f}%" if steady else "-",
                    f"{run.rows / run.seconds:,.0f}",
                    f"{1000 * statistics.median(run.latencies):.0f}/{1000 * percentile(run.latencies, 0.95):.0f}",
                    str(run.extra.get("max_per_window", "-")),
                    f"{run.client_429}/{run.server_429}",
                ]
            )
        print(
            table(
                [
                    "run",
                    "pages",
                    "rows",
                    "s",
                    "pages/s",
                    "paced pages/s",
                    "% of 5/s ceiling",
                    "rows/s",
                    "p50/p95 ms",
                    "max in 10 s",
                    "429s client/server",
                ],
                rows,
            )
        )

        print("\n(2) Netmera: setProfileAttributes, 1000 profiles per request")
        runs = [
            timed(
                f"{threads} thread{'s' if threads > 1 else ''}",
                lambda threads=threads: netmera_profiles(
                    box, customers=args.customers, total_requests=args.netmera_requests, threads=threads
                ),
            )
            for threads in (1, 4)
        ]
        print(
            table(
                ["threads", "requests", "profiles", "s", "requests/s", "profiles/s", "p50/p95 ms", "429s", "200s"],
                [
                    [
                        run.label,
                        str(run.requests),
                        f"{run.rows:,}",
                        f"{run.seconds:.1f}",
                        f"{run.requests / run.seconds:.1f}",
                        f"{run.rows / run.seconds:,.0f}",
                        f"{1000 * statistics.median(run.latencies):.0f}/{1000 * percentile(run.latencies, 0.95):.0f}",
                        str(run.client_429),
                        str(run.extra["write_calls"]),
                    ]
                    for run in runs
                ],
            )
        )
        ok = throttled.steady_rate is not None and throttled.steady_rate / ceiling >= 0.95
        ok = ok and throttled.client_429 == 0 and throttled.server_429 == 0
        print(f"\nOptimove target (>= 95% of the ceiling, zero 429s): {'MET' if ok else 'NOT MET'}")
        return 0 if ok else 1
    finally:
        box.stop()


if __name__ == "__main__":
    sys.exit(main())

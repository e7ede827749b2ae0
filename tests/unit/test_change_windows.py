"""The changers windows of an incremental run (GetCustomerAttributeChangers compares start of StartDate with end of
EndDate)."""

from __future__ import annotations

import datetime as dt

from optimove_netmera.sync.extract import change_windows

D = dt.date(2026, 12, 1)
NEXT = dt.date(2026, 12, 2)
LATER = dt.date(2026, 12, 5)


def test_windows_compare_the_end_of_the_last_covered_day_and_keep_the_overlap() -> None:
    assert change_windows(D, NEXT) == [(D, NEXT), (NEXT, NEXT)]
    assert change_windows(D, LATER) == [(D, LATER), (NEXT, LATER)]


def test_one_window_for_an_initial_run_or_a_single_day() -> None:
    assert change_windows(dt.date(2000, 1, 1), D, initial=True) == [(dt.date(2000, 1, 1), D)]
    assert change_windows(D, D) == [(D, D)]

"""Grandfather-father-son retention: a pure function, checked by properties over random dates."""

from __future__ import annotations

from collections.abc import Callable, Hashable
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from migrator.backup.retention import (
    DAILY,
    MONTHLY,
    NEWEST,
    PERIODS,
    WEEKLY,
    RetentionPolicy,
    select_snapshots,
)
from migrator.errors import BadInputError

START = datetime(2023, 1, 1, tzinfo=UTC)

moments = st.integers(min_value=0, max_value=3 * 365 * 24 * 3600).map(
    lambda seconds: START + timedelta(seconds=seconds)
)
snapshot_times = st.lists(moments, max_size=60, unique=True)
policies = st.builds(
    RetentionPolicy,
    keep_last=st.integers(0, 5),
    keep_daily=st.integers(0, 10),
    keep_weekly=st.integers(0, 6),
    keep_monthly=st.integers(0, 8),
)


def expected_for_rule(
    times: list[datetime], count: int, period_of: Callable[[datetime], Hashable]
) -> set[datetime]:
    """An independent oracle: group by period, take the newest ``count`` periods, newest of each."""
    newest_of: dict[Hashable, datetime] = {}
    for moment in times:
        period = period_of(moment)
        newest_of[period] = max(newest_of.get(period, moment), moment)
    chosen = sorted(newest_of.values(), reverse=True)[:count]
    return set(chosen)


@settings(max_examples=300, deadline=None)
@given(times=snapshot_times, policy=policies)
def test_never_deletes_the_newest(times: list[datetime], policy: RetentionPolicy) -> None:
    decision = select_snapshots(times, policy)
    if times:
        newest = max(times)
        assert newest in decision.keep
        assert NEWEST in decision.keep[newest]
        assert newest not in decision.delete


@settings(max_examples=300, deadline=None)
@given(times=snapshot_times, policy=policies)
def test_keeps_exactly_what_each_rule_asks(times: list[datetime], policy: RetentionPolicy) -> None:
    decision = select_snapshots(times, policy)
    wanted: set[datetime] = {max(times)} if times else set()
    for rule, count in policy.rules():
        chosen = expected_for_rule(times, count, PERIODS[rule])
        for moment in chosen:
            assert rule in decision.keep[moment], (rule, moment)
        wanted |= chosen
    assert set(decision.keep) == wanted
    assert set(decision.delete) == set(times) - wanted
    assert list(decision.delete) == sorted(decision.delete, reverse=True)


@settings(max_examples=300, deadline=None)
@given(times=snapshot_times, policy=policies)
def test_is_idempotent(times: list[datetime], policy: RetentionPolicy) -> None:
    first = select_snapshots(times, policy)
    second = select_snapshots(list(first.keep), policy)
    assert second.delete == ()
    assert second.keep == first.keep


def test_nightly_backups_over_a_year_with_the_defaults() -> None:
    nights = [START + timedelta(days=d, hours=3) for d in range(400)]
    decision = select_snapshots(nights, RetentionPolicy())
    last = nights[-1]
    dailies = {t for t, rules in decision.keep.items() if DAILY in rules}
    assert dailies == set(nights[-7:])
    weeklies = sorted(t for t, rules in decision.keep.items() if WEEKLY in rules)
    assert len(weeklies) == 4 and all(t.isoweekday() == 7 for t in weeklies[:-1])
    monthlies = sorted(t for t, rules in decision.keep.items() if MONTHLY in rules)
    assert len(monthlies) == 6 and monthlies[-1] == last
    assert all((t + timedelta(days=1)).day == 1 for t in monthlies[:-1])  # each month's last night
    assert len(decision.keep) + len(decision.delete) == 400
    assert len(decision.keep) <= 7 + 4 + 6


def test_zero_policy_keeps_only_the_newest_and_naive_times_are_utc() -> None:
    naive = [datetime(2024, 5, d, 3) for d in range(1, 6)]
    decision = select_snapshots(naive, RetentionPolicy(0, 0, 0, 0))
    assert decision.keep == {naive[-1]: (NEWEST,)}
    assert decision.delete == tuple(reversed(naive[:-1]))


def test_negative_counts_are_bad_input() -> None:
    with pytest.raises(BadInputError, match="--keep-daily"):
        RetentionPolicy(keep_daily=-1)

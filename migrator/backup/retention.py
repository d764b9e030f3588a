"""Grandfather-father-son retention: which snapshots to keep, as a pure function of their times.

Each rule keeps the newest snapshot of each of its N newest periods that have a snapshot (the
borg/restic meaning): ``keep_daily=7`` keeps the newest snapshot of each of the 7 most recent
UTC days on which a backup ran, however far apart they are. ``keep_last`` keeps the N newest
snapshots. The newest snapshot is always kept, whatever the policy says, so a misconfigured
policy can never delete the only good copy.

Applying a decision and deciding again keeps the same set (the tests check this property): the
kept set still holds, for every rule, the newest snapshot of the same N periods.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from migrator.errors import BadInputError

NEWEST = "newest"
LAST, DAILY, WEEKLY, MONTHLY = "last", "daily", "weekly", "monthly"


@dataclass(frozen=True)
class RetentionPolicy:
    """How many snapshots each rule keeps; defaults: 7 daily, 4 weekly, 6 monthly."""

    keep_last: int = 0
    keep_daily: int = 7
    keep_weekly: int = 4
    keep_monthly: int = 6

    def __post_init__(self) -> None:
        for name, value in self.rules():
            if value < 0:
                raise BadInputError(f"--keep-{name} must be 0 or more, not {value}")

    def rules(self) -> list[tuple[str, int]]:
        return [
            (LAST, self.keep_last),
            (DAILY, self.keep_daily),
            (WEEKLY, self.keep_weekly),
            (MONTHLY, self.keep_monthly),
        ]

    def describe(self) -> str:
        """``last 0, daily 7, weekly 4, monthly 6``."""
        return ", ".join(f"{name} {value}" for name, value in self.rules())


@dataclass(frozen=True)
class RetentionDecision:
    """What to keep (each time with the rules that keep it) and what to delete, newest first."""

    keep: dict[datetime, tuple[str, ...]] = field(default_factory=dict)
    delete: tuple[datetime, ...] = ()


def _utc(moment: datetime) -> datetime:
    """Times without a zone are UTC (snapshot names are)."""
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _last(moment: datetime) -> Hashable:
    return moment  # every snapshot is its own period


def _day(moment: datetime) -> Hashable:
    return moment.date()


def _week(moment: datetime) -> Hashable:
    iso = moment.isocalendar()
    return (iso.year, iso.week)


def _month(moment: datetime) -> Hashable:
    return (moment.year, moment.month)


PERIODS: dict[str, Callable[[datetime], Hashable]] = {
    LAST: _last,
    DAILY: _day,
    WEEKLY: _week,
    MONTHLY: _month,
}


def select_snapshots(times: Iterable[datetime], policy: RetentionPolicy) -> RetentionDecision:
    """Decide which snapshot times to keep under ``policy``.

    Takes snapshot times (naive ones are UTC; duplicates count once) and returns the decision,
    both lists newest first. Never deletes the newest snapshot. Pure: no I/O, no clock.
    """
    by_utc = {_utc(t): t for t in times}
    newest_first = sorted(by_utc, reverse=True)
    reasons: dict[datetime, list[str]] = {}
    if newest_first:
        reasons[newest_first[0]] = [NEWEST]
    for rule, count in policy.rules():
        period_of = PERIODS[rule]
        seen: set[Hashable] = set()
        for moment in newest_first:
            if len(seen) >= count:
                break
            period = period_of(moment)
            if period not in seen:
                seen.add(period)  # newest first: the first one met is its period's newest
                reasons.setdefault(moment, []).append(rule)
    keep = {by_utc[t]: tuple(reasons[t]) for t in newest_first if t in reasons}
    delete = tuple(by_utc[t] for t in newest_first if t not in reasons)
    return RetentionDecision(keep, delete)

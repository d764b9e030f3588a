"""Cron schedules as a Kubernetes CronJob accepts them, checked before anything is rendered.

Kubernetes parses ``spec.schedule`` with robfig/cron's standard parser: five fields (minute
0-59, hour 0-23, day of month 1-31, month 1-12 or JAN-DEC, day of week 0-6 or SUN-SAT, names
in any case), each a list of ``*``, ``?``, ``N``, ``N-M`` with an optional ``/STEP`` (``N/STEP``
runs to the field's maximum), or one of the macros below. This module accepts the same and
names the first field it cannot, so a bad schedule fails here instead of at the API server
(or, worse, in a CronJob written to a Flux repository).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from migrator.errors import BadInputError

MACROS = ("@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly")
_MONTHS = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
_DAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")


@dataclass(frozen=True)
class _Field:
    name: str
    low: int
    high: int
    names: dict[str, int] = field(default_factory=dict)

    def value(self, text: str, part: str) -> int:
        if text.lower() in self.names:
            return self.names[text.lower()]
        if not text.isdigit() or not text.isascii():
            what = "a number or a name" if self.names else "a number"
            raise ValueError(f"{self.name} {part!r} is not {what}")
        number = int(text)
        if not self.low <= number <= self.high:
            raise ValueError(f"{self.name} {number} is out of range {self.low}-{self.high}")
        return number

    def check(self, part: str) -> None:
        """One element of the field's comma-separated list; ValueError names the problem."""
        span, slash, step = part.partition("/")
        if "/" in step:
            raise ValueError(f"{self.name} {part!r} has more than one '/'")
        if slash and not (step.isdigit() and step.isascii() and int(step) > 0):
            raise ValueError(f"{self.name} step {step!r} must be a whole number above 0")
        if span in ("*", "?"):
            return
        first, dash, last = span.partition("-")
        if "-" in last:
            raise ValueError(f"{self.name} {part!r} has more than one '-'")
        if dash and not (first and last):
            raise ValueError(f"{self.name} {part!r} is not a number")
        start = self.value(first, part)
        end = self.value(last, part) if dash else start
        if start > end:
            raise ValueError(f"{self.name} range {first}-{last} runs backwards")


_FIELDS = (
    _Field("minute", 0, 59),
    _Field("hour", 0, 23),
    _Field("day of month", 1, 31),
    _Field("month", 1, 12, {name: number for number, name in enumerate(_MONTHS, 1)}),
    _Field("day of week", 0, 6, {name: number for number, name in enumerate(_DAYS)}),
)


def schedule_problem(schedule: str) -> str | None:
    """What is wrong with ``schedule`` as a CronJob schedule, or None when nothing is."""
    fields = schedule.split()
    if len(fields) == 1 and fields[0].startswith("@"):
        return None if fields[0] in MACROS else f"unknown macro {fields[0]!r}"
    if len(fields) != len(_FIELDS):
        return f"expected 5 fields, got {len(fields)}"
    try:
        for spec, text in zip(_FIELDS, fields, strict=True):
            for part in text.split(","):
                spec.check(part)
    except ValueError as exc:
        return str(exc)
    return None


def check_schedule(schedule: str) -> str:
    """``schedule`` with its fields single-spaced, when a CronJob accepts it.

    Raises BadInputError naming the first field that it does not accept.
    """
    problem = schedule_problem(schedule)
    if problem is not None:
        raise BadInputError(
            f"schedule {schedule!r} is not a cron expression: {problem}; use five fields like "
            "'0 3 * * *' or a macro like @daily"
        )
    return " ".join(schedule.split())

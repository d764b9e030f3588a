"""``status``: where each volume of the plan stands, read from the journal (read-only)."""

from __future__ import annotations

from typing import Any

from migrator.journal import DONE, FAILED, RUNNING, Journal, on_route
from migrator.plan import Plan, volume_route
from migrator.workflows.swap.bring_back import journal_workloads
from migrator.workflows.swap.context import PARTIAL, ROLLBACK, STEP_ORDER, SWAP

COPY_STEPS = ("preseed", "cutover", "verify")  # recorded with their route; swap's steps are not

STATE_NAMES = {
    ("preseed", DONE): "pre-seeded",
    ("preseed", FAILED): "pre-seed failed",
    ("preseed", RUNNING): "pre-seeding",
    ("cutover", DONE): "cut over",
    ("cutover", FAILED): "cutover failed",
    ("cutover", RUNNING): "cutting over",
    ("verify", FAILED): "verify failed",
    ("verify", RUNNING): "verifying",
    (SWAP, DONE): "swapped",
    (SWAP, FAILED): "swap failed",
    (SWAP, RUNNING): "swapping",
    (SWAP, "rolled back"): "swapped",
    (ROLLBACK, DONE): "rolled back",
    (ROLLBACK, PARTIAL): "partly rolled back",
    (ROLLBACK, RUNNING): "rolling back",
}


def volume_state(entry: dict[str, Any]) -> tuple[str, str, str]:
    """(state, since, detail) of one volume from its journal entry; ``planned`` when empty."""
    best: tuple[str, int, str, str] | None = None
    for order, step in enumerate(STEP_ORDER):
        record = entry.get(step)
        if not record:
            continue
        status = str(record.get("status", ""))
        if step == "verify" and status == DONE:
            state = "verified" if record.get("ok") is True else "verify failed"
        else:
            state = STATE_NAMES.get((step, status), f"{step} {status}")
        candidate = (str(record.get("at", "")), order, state, _detail(step, record))
        if best is None or candidate[:2] > best[:2]:
            best = candidate
    if best is None:
        return "planned", "", ""
    return best[2], best[0], best[3]


def _detail(step: str, record: dict[str, Any]) -> str:
    if step == SWAP:
        message = f": {record['message']}" if record.get("message") else ""
        return f"{record.get('oldClaim')} -> {record.get('newClaim')}{message}"
    if step == ROLLBACK:
        return f"back on {record.get('claim')}" if record.get("claim") else ""
    return str(record.get("message") or "")


def _on_route(entry: dict[str, Any], route: str) -> tuple[dict[str, Any], str | None]:
    """The volume's journal entry without the copy steps made on another route (and that route):
    a plan re-written with another source or target starts its copy steps over."""
    kept: dict[str, Any] = {}
    moved = None
    for step, record in entry.items():
        if step not in COPY_STEPS:
            kept[step] = record
            continue
        counted, elsewhere = on_route(record, route)
        if counted:
            kept[step] = counted
        moved = elsewhere or moved
    return kept, moved


def status(plan: Plan, journal: Journal) -> dict[str, Any]:
    """Where each volume of the plan stands, from the journal."""
    entries = journal.volumes()
    volumes = []
    for volume in plan.volumes:
        entry, moved = _on_route(entries.get(volume["name"], {}), volume_route(plan.spec, volume))
        state, since, detail = volume_state(entry)
        if moved and not detail:
            detail = f"the plan's route changed; the journal's steps copied {moved}"
        volumes.append(
            {
                "volume": volume["name"],
                "role": volume["role"],
                "action": volume["action"],
                "state": state,
                "since": since,
                "detail": detail,
                "steps": {
                    step: entry[step].get("status") for step in STEP_ORDER if entry.get(step)
                },
            }
        )
    return {
        "plan": plan.name,
        "volumes": volumes,
        "releases": journal.releases(),
        "workloads": journal_workloads(journal),
    }

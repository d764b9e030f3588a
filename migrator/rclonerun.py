"""An rclone transfer followed through its JSON log, as the copy agent runs it: each copied file
recorded in the copy state as rclone reports it, progress events, and a first SIGINT/SIGTERM that
stops rclone with what it finished saved."""

from __future__ import annotations

import json
import signal
import subprocess
from typing import Any

from migrator.copystate import StateRecorder
from migrator.errors import InterruptedRunError
from migrator.events import Emit
from migrator.rclone_names import standard_path


class Interrupted(Exception):
    """SIGTERM (a deleted pod) or SIGINT (Ctrl-C) while rclone runs."""


class SignalGuard:
    """The first SIGINT/SIGTERM raises Interrupted; later ones are ignored, so that saving the
    progress is never cut short by a second signal (Ctrl-C and an executor's SIGTERM together)."""

    def __init__(self) -> None:
        self.received: str | None = None
        self.previous: dict[int, Any] = {}

    def __enter__(self) -> SignalGuard:
        for signum in (signal.SIGINT, signal.SIGTERM):
            self.previous[signum] = signal.signal(signum, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.received is None:
            self.received = signal.Signals(signum).name
            raise Interrupted(self.received)

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)


def follow_rclone(
    args: list[str], todo: list[str], todo_bytes: int, recorder: StateRecorder, emit: Emit
) -> tuple[int, str]:
    """Run rclone, recording each copied file; on SIGTERM/SIGINT stop it and save what is done.
    Returns its exit code and the last error it logged."""
    last_error = ""
    names = {standard_path(p): p for p in todo}  # rclone logs names in its standard encoding
    with SignalGuard():
        process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        assert process.stderr is not None
        try:
            for raw in process.stderr:
                last_error = (
                    handle_rclone_line(raw, names, todo_bytes, recorder, emit) or last_error
                )
        except (Interrupted, KeyboardInterrupt):
            process.terminate()
            for raw in process.stderr:  # the files finished before rclone stopped still count
                handle_rclone_line(raw, names, todo_bytes, recorder, emit)
            process.wait()
            recorder.checkpoint()
            emit({"event": "error", "message": "interrupted: progress saved, re-run to resume"})
            raise InterruptedRunError("interrupted: progress saved, re-run to resume") from None
        code = process.wait()
    if code != 0 and last_error:
        emit({"event": "error", "message": f"rclone: {last_error}"})
    return code, last_error


def handle_rclone_line(
    raw: bytes, names: dict[str, str], todo_bytes: int, recorder: StateRecorder, emit: Emit
) -> str | None:
    """Act on one rclone JSON log line; returns an error message when the line is one."""
    try:
        record = json.loads(raw)
    except ValueError:
        return None
    message = str(record.get("msg", ""))
    if message.startswith("Copied"):
        name = str(record.get("object", ""))
        recorder.copied(names.get(name, name))
    elif "stats" in record:
        stats = record["stats"]
        emit(
            {
                "event": "progress",
                "bytes": stats.get("bytes", 0),
                "totalBytes": todo_bytes,
                "files": stats.get("transfers", 0),
                "totalFiles": len(names),
                "speed": stats.get("speed", 0.0),
                "eta": stats.get("eta"),
                "errors": stats.get("errors", 0),
            }
        )
    elif record.get("level") == "error":
        emit({"event": "error", "message": message, "object": record.get("object")})
        return message
    return None

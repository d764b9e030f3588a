"""The event protocol (migrator/events.py) as the agents speak it and the executors read it."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from migrator.errors import OperationFailedError
from migrator.events import FIELDS, VERSION, iter_events, json_lines, problems
from migrator.executors.kubernetes import KubernetesExecutor
from migrator.kube import KubeClient
from migrator.seaweedfs import SeaweedFS
from tests.controlplane.cluster import Cluster
from tests.helpers import run_cli


def events_of(output: str) -> list[dict[str, object]]:
    return list(iter_events(iter(output.splitlines())))


def test_every_event_the_copy_and_verify_agents_emit_keeps_the_contract(
    s3_env: SeaweedFS, bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", s3_env.s3_endpoint)
    source = tmp_path / "config"
    (source / "Backups").mkdir(parents=True)
    (source / "config.xml").write_text("<Config/>")
    (source / "Backups" / "old.zip").write_bytes(b"zip" * 1000)
    copied = run_cli("agent", "copy", "--source", str(source), "--dest", str(tmp_path / "dest"))
    assert copied.exit_code == 0, copied.output
    (tmp_path / "dest" / "config.xml").write_text("<Config changed/>")
    verified = run_cli(
        "agent", "verify", "--source", str(source), "--dest", f"s3://{bucket}/nothing-here"
    )
    assert verified.exit_code == 0, verified.output
    local = run_cli("agent", "verify", "--source", str(source), "--dest", str(tmp_path / "dest"))
    assert local.exit_code == 0, local.output
    events = events_of(copied.output) + events_of(verified.output) + events_of(local.output)
    assert {e["event"] for e in events} >= {"plan", "done", "difference", "verify-done"}
    assert all(e["migrator"] == VERSION for e in events)
    assert [p for e in events for p in problems(e)] == []
    differences = [e for e in events_of(local.output) if e["event"] == "difference"]
    assert [(d["kind"], d["path"]) for d in differences] == [("size", "config.xml")], differences


def test_lines_that_are_not_events_or_are_cut_short_are_skipped() -> None:
    stream = io.StringIO()
    emit = json_lines(stream)
    emit({"event": "progress", "bytes": 1, "files": 1})
    lines = ["rclone: NOTICE: something", stream.getvalue().strip(), '{"migrator": 1, "event": "do']
    assert [e["event"] for e in iter_events(iter(lines))] == ["progress"]


def test_an_event_of_a_newer_protocol_fails_with_one_line_saying_what_to_do() -> None:
    line = json.dumps({"migrator": VERSION + 1, "event": "done"})
    with pytest.raises(OperationFailedError) as caught:
        list(iter_events(iter([line])))
    assert str(caught.value) == (
        f"the agent speaks event protocol {VERSION + 1}, this migrator only {VERSION}: "
        "use the agent image of this migrator's version (plan --image)"
    )


def test_the_contract_names_each_kind_the_agents_emit() -> None:
    emitted = set()
    for module in Path("migrator").rglob("*.py"):
        text = module.read_text()
        emitted |= {part.split('"')[0] for part in text.split('"event": "')[1:]}
    assert emitted <= set(FIELDS), emitted - set(FIELDS)
    assert problems({"event": "nonsense"}) == ["unknown event kind 'nonsense'"]
    assert problems({"event": "error"}) == ["error: no 'message'"]


def test_a_job_whose_agent_speaks_a_newer_protocol_fails_with_that_line(cluster: Cluster) -> None:
    """An agent image newer than the CLI: its Job completes, but what it reported cannot be read,
    so the run must not count it as done (on the real control plane and process kubelet)."""
    line = json.dumps({"migrator": VERSION + 1, "event": "done", "ok": True})
    manifest = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": "newer-agent", "namespace": cluster.namespace},
        "spec": {
            "backoffLimit": 0,
            "template": {
                "spec": {
                    "restartPolicy": "Never",
                    "containers": [
                        {
                            "name": "agent",
                            "image": "busybox:1.36",
                            "command": ["/bin/sh", "-c", f"echo '{line}'"],
                        },
                    ],
                }
            },
        },
    }
    kube = KubeClient.from_kubeconfig(str(cluster.kubeconfig_path))
    events: list[dict[str, object]] = []
    result = KubernetesExecutor(kube, 60).run_job(manifest, lambda _i, e: events.append(e))
    job = cluster.get_object("batch/v1", "Job", cluster.namespace, "newer-agent") or {}
    met = {c["type"] for c in job["status"].get("conditions") or [] if c["status"] == "True"}
    assert met & {"SuccessCriteriaMet", "Complete"}, job["status"]  # the Job itself succeeded
    assert (result.succeeded, events) == (False, [])
    assert result.message.startswith(f"the agent speaks event protocol {VERSION + 1}, ")

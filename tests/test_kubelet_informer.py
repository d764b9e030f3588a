"""The process kubelet's list+watch cache (tests/kubelet/informer.py), against a scripted API:
a watch that ends with an ERROR event (410 Gone) or a dropped connection is followed by a fresh
list, whose items replace the cache."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from typing import Any

from kubernetes import client

from migrator.kube import KubeClient
from tests.kubelet.informer import Informer

Obj = dict[str, Any]


def obj(name: str) -> Obj:
    return {"metadata": {"name": name, "uid": f"uid-{name}", "resourceVersion": "5"}}


class Response:
    """A raw (``_preload_content=False``) answer: a list's body, or a watch's event lines."""

    def __init__(self, body: Obj | None = None, events: list[Obj] | None = None) -> None:
        self.data = json.dumps(body).encode()
        self.events = events or []

    def __iter__(self) -> Iterator[bytes]:
        for event in self.events:
            if event.get("drop"):
                raise ConnectionResetError("dropped")
            yield json.dumps(event).encode()

    def release_conn(self) -> None:
        pass


class ScriptedApi:
    """Answers lists and watches in turn from a script; blocks once it runs out."""

    def __init__(self, answers: list[Response]) -> None:
        self.answers = answers
        self.calls: list[Obj] = []
        self.done = threading.Event()

    def list(self, **kwargs: Any) -> Response:
        self.calls.append(kwargs)
        if not self.answers:
            self.done.set()
            threading.Event().wait()  # the informer's daemon thread parks here
        return self.answers.pop(0)


def items(listed: list[Obj]) -> Obj:
    return {"metadata": {"resourceVersion": "7"}, "items": listed}


def test_a_watch_that_ends_with_gone_or_a_drop_is_followed_by_a_fresh_list() -> None:
    api = ScriptedApi(
        [
            Response(items([obj("a")])),
            Response(
                events=[
                    {"type": "ADDED", "object": obj("b")},
                    {"type": "ERROR", "object": {"code": 410, "message": "too old"}},
                ]
            ),
            Response(items([obj("c")])),
            Response(events=[{"type": "DELETED", "object": obj("c")}, {"drop": True}]),
            Response(items([obj("d")])),
        ]
    )
    changes: list[list[str]] = []
    errors: list[BaseException] = []
    informer = Informer(
        KubeClient(client.ApiClient()),
        "things",
        api.list,
        lambda: changes.append(sorted(o["metadata"]["name"] for o in informer.items())),
        errors,
        field_selector="spec.nodeName=n1",
    )
    informer.start()
    assert api.done.wait(10)
    assert changes == [["a"], ["a", "b"], ["c"], [], ["d"]]
    watches = [c for c in api.calls if c.get("watch")]
    assert [w["resource_version"] for w in watches] == ["7", "7", "7"]
    assert all(c["field_selector"] == "spec.nodeName=n1" for c in api.calls)
    assert errors == []
    informer.stop()

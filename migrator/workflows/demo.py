"""``migrator demo``: the whole story on this machine, with an embedded SeaweedFS and sample data.

plan -> pre-seed (while an app writes its database) -> backup run, list, verify (while an app
writes) -> a change at source -> cutover -> verify -> swap of a sample values file -> a simulated
corruption caught by verify. Every step calls the same library functions as the commands; every process it starts is
stopped at the end, also on Ctrl-C.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from migrator.errors import MigratorError
from migrator.samples import DatabaseWriter, SampleSizes, SampleTree, make_sample_tree
from migrator.seaweedfs import SeaweedFS

BUCKET = "media"
DEMO_SIZES = SampleSizes(
    covers=1000, db_rows=3000, episodes=6, episode_bytes=4 * 2**20, movies=2, movie_bytes=8 * 2**20
)


SAMPLE_HELMRELEASE = """\
# Sonarr, deployed with the bjw-s app-template (what a Flux repository holds)
apiVersion: helm.toolkit.fluxcd.io/v2
kind: HelmRelease
metadata:
  name: sonarr
  namespace: tenant-media
spec:
  interval: 30m
  chart:
    spec:
      chart: app-template
      version: 3.7.3
      sourceRef: {kind: HelmRepository, name: bjw-s, namespace: flux-system}
  values:
    controllers:
      sonarr:
        containers:
          app:
            image: {repository: ghcr.io/onedr0p/sonarr, tag: rolling}
    persistence:
      config:
        existingClaim: sonarr-config   # stays on block storage: SQLite
      media:
        existingClaim: "media"         # the shared library
        globalMounts:
          - path: /media
"""


class DemoNarrator(Protocol):
    def step(self, title: str, detail: str = "") -> None: ...

    def result(self, text: str, ok: bool = True) -> None: ...


@dataclass
class DemoSummary:
    work_dir: str
    kept: bool
    steps: list[dict[str, Any]] = field(default_factory=list)
    verified: bool = False
    corruption_caught: bool = False
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.verified and self.corruption_caught and all(s["ok"] for s in self.steps)

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "workDir": self.work_dir,
            "kept": self.kept,
            "verified": self.verified,
            "corruptionCaught": self.corruption_caught,
            "seconds": round(self.seconds, 1),
            "steps": self.steps,
        }


@contextmanager
def _aws_environment(server: SeaweedFS) -> Iterator[None]:
    """The embedded server's credentials for the local executor, restored afterwards."""
    names = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION", "AWS_ENDPOINT_URL")
    saved = {n: os.environ.get(n) for n in names}
    os.environ.update(
        AWS_ACCESS_KEY_ID=server.access_key,
        AWS_SECRET_ACCESS_KEY=server.secret_key,
        AWS_DEFAULT_REGION="us-east-1",
        AWS_ENDPOINT_URL=server.s3_endpoint,
    )
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


class Demo:
    """One run of the demo in ``work_dir``."""

    def __init__(
        self, work_dir: Path, narrator: DemoNarrator, observer_factory: Callable[..., Any]
    ) -> None:
        self.work = work_dir
        self.narrator = narrator
        self.observer_factory = observer_factory
        self.summary = DemoSummary(str(work_dir), kept=True)

    def _record(self, name: str, ok: bool, **details: Any) -> None:
        self.summary.steps.append({"step": name, "ok": ok, **details})

    def run(self) -> DemoSummary:
        started = time.monotonic()
        self.narrator.step(
            "Starting an embedded SeaweedFS", "weed server -filer -s3 on free loopback ports"
        )
        with SeaweedFS(self.work / "seaweedfs") as server, _aws_environment(server):
            self.narrator.result(f"S3 gateway at {server.s3_endpoint}")
            self._create_bucket(server)
            tree = self._sample_data()
            plan = self._plan(server, tree)
            self._preseed(plan, tree)
            self._backups(plan, tree)  # a safety net before the risky step
            self._change_and_cutover(plan, tree)
            self._verify(plan, expect_ok=True)
            self._swap_values_file(plan)
            self._corrupt_and_catch(plan, server)
        self.summary.seconds = time.monotonic() - started
        return self.summary

    def _create_bucket(self, server: SeaweedFS) -> None:
        from migrator.objectstore import S3Settings, make_client

        make_client(S3Settings.from_environment(server.s3_endpoint)).create_bucket(Bucket=BUCKET)

    def _sample_data(self) -> SampleTree:
        self.narrator.step(
            "Generating a sample arr stack", "Sonarr, Radarr, Prowlarr config + a media library"
        )
        tree = make_sample_tree(self.work / "volumes", DEMO_SIZES)
        files = sum(
            len(files) for path in tree.source_dirs().values() for _r, _d, files in os.walk(path)
        )
        self.narrator.result(
            f"{files} files in {len(tree.source_dirs())} volumes under {self.work / 'volumes'}"
        )
        self._record("sample-data", True, files=files)
        return tree

    def _plan(self, server: SeaweedFS, tree: SampleTree) -> Any:
        from migrator.workflows.plan import make_plan

        self.narrator.step(
            "migrator plan", f"--target s3://{BUCKET}/migrated --source-dir NAME=PATH ..."
        )
        options = {
            "source_dirs": [f"{name}={path}" for name, path in tree.source_dirs().items()],
            "target": f"s3://{BUCKET}/migrated",
            "s3_endpoint": server.s3_endpoint,
            "filer_grpc": server.filer_grpc,
            "backup_target": f"s3://{BUCKET}/backups",
            "out": str(self.work / "plans" / "arr.yaml"),
            "name": "arr",
        }
        result = make_plan(options)
        roles = ", ".join(f"{v['name']}={v['role']}" for v in result.plan.model["spec"]["volumes"])
        self.narrator.result(f"plan {result.plan.path} ({roles}); Jobs in {result.jobs_dir}")
        for finding in result.plan.model["spec"]["warnings"]:
            self.narrator.result(
                f"{finding['severity']}: {finding['message']}", ok=finding["severity"] != "warning"
            )
        self._record("plan", True, volumes=len(result.plan.volumes))
        return result.plan

    def _run(self, plan: Any, cutover: bool) -> Any:
        from migrator.workflows.run import local_context, run_plan

        with self.observer_factory() as observer:
            return run_plan(plan, "all", cutover, local_context(plan, None), observer)

    def _preseed(self, plan: Any, tree: SampleTree) -> None:
        self.narrator.step(
            "migrator run --phase all", "live pre-seed while Sonarr keeps writing its database"
        )
        with DatabaseWriter(tree.config_dirs["sonarr"] / "sonarr.db") as writer:
            summary = self._run(plan, cutover=False)
        copied = sum(v.copied for v in summary.volumes)
        self.narrator.result(
            f"{copied} files copied; live databases left for the cutover ({writer.rows_written} rows written meanwhile)",
            summary.ok,
        )
        self._record("preseed", summary.ok, copied=copied)
        if not summary.ok:
            raise MigratorError(
                "the pre-seed failed: " + "; ".join(v.message for v in summary.volumes if v.message)
            )

    def _change_and_cutover(self, plan: Any, tree: SampleTree) -> None:
        self.narrator.step(
            "A change at source, then migrator run --cutover",
            "new file, deleted file; final delta sync",
        )
        assert tree.media_dir is not None
        (tree.media_dir / "tv" / "The Expanse (2015)" / "Season 01" / "new episode.nfo").write_text(
            "<episode/>"
        )
        nfo = next(tree.media_dir.glob("movies/*/movie.nfo"))
        nfo.unlink()
        summary = self._run(plan, cutover=True)
        copied, deleted = (
            sum(v.copied for v in summary.volumes),
            sum(v.deleted for v in summary.volumes),
        )
        self.narrator.result(
            f"cutover: {copied} files copied (databases included), {deleted} deleted at destination",
            summary.ok,
        )
        self._record("cutover", summary.ok, copied=copied, deleted=deleted)

    def _verify(self, plan: Any, expect_ok: bool) -> Any:
        from migrator.workflows.run import local_context
        from migrator.workflows.verify import verify_plan

        self.narrator.step(
            "migrator verify --strict-metadata",
            "xxh3-128 of every file on both sides, merge-compared; owner, mode and mtime as a "
            "weed mount shows them",
        )
        with self.observer_factory(verify=True) as observer:
            report = verify_plan(
                plan, plan.volumes, local_context(plan, None), observer, strict_metadata=True
            )
        files = sum(v.files for v in report.volumes)
        if report.ok:
            self.narrator.result(f"{files} files identical in {len(report.volumes)} volumes")
        else:
            for difference in report.differences[:5]:
                self.narrator.result(
                    f"{difference['kind']}: {difference['volume']}/{difference['path']}",
                    ok=not expect_ok,
                )
        if expect_ok:
            self.summary.verified = report.ok
        self._record(
            "verify" if expect_ok else "verify-after-corruption",
            report.ok == expect_ok,
            files=files,
            differences=len(report.differences),
        )
        return report

    def _swap_values_file(self, plan: Any) -> None:
        """The GitOps half of ``migrator swap --values-file``: the same rewrite, shown as a diff."""
        from migrator.manifests.swap import swap_claim_name
        from migrator.values import rewrite_claims

        self.narrator.step(
            "migrator swap --values-file",
            "point the HelmRelease at the new claim; every other byte kept",
        )
        media = plan.volume("media")
        values = self.work / "flux" / "sonarr-helmrelease.yaml"
        values.parent.mkdir(parents=True, exist_ok=True)
        values.write_text(SAMPLE_HELMRELEASE)
        rewrite = rewrite_claims(
            values.read_text(), {"media": swap_claim_name(plan.document, media)}, str(values)
        )
        values.write_text(rewrite.text)
        for line in rewrite.diff("flux/sonarr-helmrelease.yaml").splitlines():
            self.narrator.result(line, ok=True)
        self.narrator.result(
            "on a cluster, 'migrator swap' also creates the static PV/PVC over the bucket"
        )
        self._record("swap-values-file", len(rewrite.changes) == 1, changes=len(rewrite.changes))

    def _backups(self, plan: Any, tree: SampleTree) -> None:
        """``migrator backup run``, ``list`` and ``verify`` on the config volumes."""
        from migrator.backup.retention import RetentionPolicy
        from migrator.workflows.backup import (
            config_volumes,
            list_snapshots,
            local_executor,
            open_repository,
            run_backup,
            verify,
        )

        volumes = config_volumes(plan)
        self.narrator.step(
            "migrator backup run", "SQLite-safe snapshots (online backup API) as tar.zst to S3"
        )
        with DatabaseWriter(tree.config_dirs["radarr"] / "radarr.db"):
            outcome = run_backup(
                plan, volumes, RetentionPolicy(), local_executor(plan), "local", lambda _e: None
            )
        self.narrator.result(
            f"{len(outcome.volumes)} snapshots taken while Radarr kept writing", outcome.ok
        )
        self._record("backup-run", outcome.ok, snapshots=len(outcome.volumes))
        repository = open_repository(plan)
        self.narrator.step("migrator backup list")
        for listing in list_snapshots(repository, volumes):
            for snapshot in listing.snapshots:
                self.narrator.result(f"{listing.volume}: {snapshot.id}")
        self.narrator.step(
            "migrator backup verify latest", "every file hash and PRAGMA integrity_check"
        )
        found, report = verify(repository, "radarr-config", "latest")
        self.narrator.result(
            f"radarr-config {found.id}: {report.files} files, databases {', '.join(report.databases)}: "
            + ("intact" if report.ok else "; ".join(report.problems[:3])),
            report.ok,
        )
        self._record("backup-verify", report.ok, files=report.files)

    def _corrupt_and_catch(self, plan: Any, server: SeaweedFS) -> None:
        from migrator.objectstore import S3Settings, make_client

        self.narrator.step(
            "Simulating corruption", "one byte flipped in one object at the destination"
        )
        client = make_client(S3Settings.from_environment(server.s3_endpoint))
        key = next(
            o["Key"]
            for o in client.list_objects_v2(
                Bucket=BUCKET, Prefix="migrated/sonarr-config/MediaCover/"
            )["Contents"]
        )
        body = bytearray(client.get_object(Bucket=BUCKET, Key=key)["Body"].read())
        body[0] ^= 0xFF
        client.put_object(Bucket=BUCKET, Key=key, Body=bytes(body))
        report = self._verify(plan, expect_ok=False)
        self.summary.corruption_caught = any(
            d["kind"] == "checksum" and key.endswith(d["path"]) for d in report.differences
        )
        self.narrator.result(
            "the corruption was caught: verify exits 1 and names the file"
            if self.summary.corruption_caught
            else "the corruption was NOT caught",
            ok=self.summary.corruption_caught,
        )


def run_demo(
    work_dir: Path | None, keep: bool, narrator: DemoNarrator, observer_factory: Callable[..., Any]
) -> DemoSummary:
    """Run the demo; remove the work directory afterwards unless ``keep`` (or it was given)."""
    created = work_dir is None
    work = Path(work_dir or tempfile.mkdtemp(prefix="migrator-demo-"))
    work.mkdir(parents=True, exist_ok=True)
    demo = Demo(work, narrator, observer_factory)
    try:
        summary = demo.run()
    finally:
        if created and not keep:
            shutil.rmtree(work, ignore_errors=True)
    summary.kept = keep or not created
    return summary

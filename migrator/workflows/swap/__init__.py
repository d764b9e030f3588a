"""The ``swap``, ``rollback`` and ``status`` workflows.

swap: gate (the journal shows the cutover and a passed verify after it) -> the new claims (a static
PV/PVC over the bucket through seaweedfs-csi-driver, or the run's new PVC) -> the claim references
rewritten in GitOps files and/or the HelmRelease in the cluster -> releases resumed -> workloads
back at their recorded replicas and Ready. rollback undoes exactly what the journal says swap and
the cutover did. Each change is journaled as soon as it is made, so a re-run continues.

Nothing here deletes data: old volumes stay, new claims stay (PVs are ``Retain``).

- ``context``: options, results and summary; the journal, Lease and cluster of a run
  (``swap_context``, ``open_journal``); the plan's shape (``readiness_problems``, ...).
- ``swap``: new claims, claim references rewritten (files and/or HelmReleases), journaled.
- ``rollback``: the recorded references restored exactly.
- ``bring_back``: releases resumed and workloads scaled back and Ready (also after a failed
  cutover: ``bring_back_after_cutover``).
- ``status``: where each volume stands, read from the journal (read-only).
- ``cluster``: the Kubernetes calls of all of the above, through ``KubeClient``.
"""

"""Pure builders of the Kubernetes manifests a plan runs. Nothing here does I/O; the rendered
manifests are the single truth of what a Job does (the kubernetes executor applies them, the local
executor runs exactly their container command).

- ``pod``: the pieces every agent pod shares: names, labels, mounts, security, the S3 CA.
- ``copy``: copy and sync Jobs, target PVCs, the plan's rendered files and their kustomization.
- ``verify``: verify Jobs (``migrator agent verify``) and the run-time options applied to them.
- ``swap``: the static SeaweedFS PersistentVolumes and claims apps mount after the swap.
- ``backup``: backup and drill CronJobs, restore Jobs.
"""

"""migrator: move Kubernetes workload data between storage systems, prove it, swap, back up."""

__version__ = "0.1.0"

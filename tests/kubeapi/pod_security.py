"""The Pod Security Standards (``baseline`` and ``restricted``, version ``latest``) as Pod Security
admission checks them, with its messages.

Source: https://kubernetes.io/docs/concepts/security/pod-security-standards/ (the policy
tables) and the wording of k8s.io/pod-security-admission's checks. Every check looks at the pod
spec and metadata only, exactly like admission does; nothing here knows what made the pod.

Not checked (Windows-only or not present in anything this test server runs): ``hostProcess``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

Obj = dict[str, Any]
LEVELS = ("privileged", "baseline", "restricted")
ENFORCE_LABEL = "pod-security.kubernetes.io/enforce"

BASELINE_CAPABILITIES = frozenset(
    [
        "AUDIT_WRITE",
        "CHOWN",
        "DAC_OVERRIDE",
        "FOWNER",
        "FSETID",
        "KILL",
        "MKNOD",
        "NET_BIND_SERVICE",
        "SETFCAP",
        "SETGID",
        "SETPCAP",
        "SETUID",
        "SYS_CHROOT",
    ]
)
SAFE_SYSCTLS = frozenset(
    {
        "kernel.shm_rmid_forced",
        "net.ipv4.ip_local_port_range",
        "net.ipv4.ip_unprivileged_port_start",
        "net.ipv4.tcp_syncookies",
        "net.ipv4.ping_group_range",
        "net.ipv4.ip_local_reserved_ports",
        "net.ipv4.tcp_keepalive_time",
        "net.ipv4.tcp_fin_timeout",
        "net.ipv4.tcp_keepalive_intvl",
        "net.ipv4.tcp_keepalive_probes",
    }
)
SELINUX_TYPES = frozenset(
    {"", "container_t", "container_init_t", "container_kvm_t", "container_engine_t"}
)
RESTRICTED_VOLUMES = frozenset(
    {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim",
     "projected", "secret"}
)  # fmt: skip


def _containers(spec: Obj) -> Iterator[Obj]:
    for key in ("initContainers", "containers", "ephemeralContainers"):
        yield from spec.get(key) or []


def _context(container: Obj) -> Obj:
    return container.get("securityContext") or {}


def _names(containers: list[str]) -> str:
    quoted = ", ".join(f'"{name}"' for name in containers)
    return f"container {quoted}" if len(containers) == 1 else f"containers {quoted}"


# --- baseline -----------------------------------------------------------------------------------


def _host_namespaces(meta: Obj, spec: Obj) -> str | None:
    found = [f"{key}=true" for key in ("hostNetwork", "hostPID", "hostIPC") if spec.get(key)]
    return f"host namespaces ({', '.join(found)})" if found else None


def _privileged(meta: Obj, spec: Obj) -> str | None:
    bad = [c["name"] for c in _containers(spec) if _context(c).get("privileged")]
    return (
        f"privileged ({_names(bad)} must not set securityContext.privileged=true)" if bad else None
    )


def _capabilities_baseline(meta: Obj, spec: Obj) -> str | None:
    bad: list[str] = []
    added: list[str] = []
    for container in _containers(spec):
        extra = [
            cap for cap in (_context(container).get("capabilities") or {}).get("add") or []
            if cap not in BASELINE_CAPABILITIES
        ]  # fmt: skip
        if extra:
            bad.append(container["name"])
            added += [cap for cap in extra if cap not in added]
    if not bad:
        return None
    quoted = ", ".join(f'"{cap}"' for cap in added)
    return (
        f"non-default capabilities ({_names(bad)} must not include {quoted} in "
        "securityContext.capabilities.add)"
    )


def _host_path(meta: Obj, spec: Obj) -> str | None:
    bad = [v["name"] for v in spec.get("volumes") or [] if "hostPath" in v]
    if not bad:
        return None
    word = "volume" if len(bad) == 1 else "volumes"
    return f"hostPath volumes ({word} {', '.join(f'{name!r}' for name in bad)})".replace("'", '"')


def _host_ports(meta: Obj, spec: Obj) -> str | None:
    bad = [
        c["name"] for c in _containers(spec)
        if any(p.get("hostPort") for p in c.get("ports") or [])
    ]  # fmt: skip
    return f"hostPort ({_names(bad)} uses hostPort)" if bad else None


def _app_armor(meta: Obj, spec: Obj) -> str | None:
    profiles = [(spec.get("securityContext") or {}).get("appArmorProfile")]
    profiles += [_context(c).get("appArmorProfile") for c in _containers(spec)]
    bad = [
        p["type"] for p in profiles if p and p.get("type") not in ("RuntimeDefault", "Localhost")
    ]
    annotations = meta.get("annotations") or {}
    for key, value in annotations.items():
        container = key.startswith("container.apparmor.security.beta.kubernetes.io/")
        if container and value != "runtime/default" and not value.startswith("localhost/"):
            bad.append(value)
    return f'forbidden AppArmor profile ("{bad[0]}")' if bad else None


def _se_linux(meta: Obj, spec: Obj) -> str | None:
    options = [(spec.get("securityContext") or {}).get("seLinuxOptions")]
    options += [_context(c).get("seLinuxOptions") for c in _containers(spec)]
    for option in filter(None, options):
        if option.get("type", "") not in SELINUX_TYPES or option.get("user") or option.get("role"):
            return "seLinuxOptions (forbidden securityContext.seLinuxOptions)"
    return None


def _proc_mount(meta: Obj, spec: Obj) -> str | None:
    bad = [
        c["name"] for c in _containers(spec) if _context(c).get("procMount", "Default") != "Default"
    ]
    return f"procMount ({_names(bad)} must not set securityContext.procMount)" if bad else None


def _seccomp_baseline(meta: Obj, spec: Obj) -> str | None:
    pod = ((spec.get("securityContext") or {}).get("seccompProfile") or {}).get("type")
    bad = [
        c["name"] for c in _containers(spec)
        if (_context(c).get("seccompProfile") or {}).get("type") == "Unconfined"
    ]  # fmt: skip
    if pod == "Unconfined":
        return (
            'seccompProfile (pod must not set securityContext.seccompProfile.type to "Unconfined")'
        )
    if bad:
        return f'seccompProfile ({_names(bad)} must not set securityContext.seccompProfile.type to "Unconfined")'
    return None


def _sysctls(meta: Obj, spec: Obj) -> str | None:
    sysctls = (spec.get("securityContext") or {}).get("sysctls") or []
    bad = [s["name"] for s in sysctls if s.get("name") not in SAFE_SYSCTLS]
    return f"forbidden sysctls ({', '.join(bad)})" if bad else None


# --- restricted ---------------------------------------------------------------------------------


def _volume_types(meta: Obj, spec: Obj) -> str | None:
    bad: list[str] = []
    for volume in spec.get("volumes") or []:
        kinds = [key for key in volume if key != "name"]
        bad += [f'"{volume["name"]}"' for kind in kinds if kind not in RESTRICTED_VOLUMES]
    if not bad:
        return None
    word = "volume" if len(bad) == 1 else "volumes"
    return f"restricted volume types ({word} {', '.join(bad)} uses a restricted volume type)"


def _privilege_escalation(meta: Obj, spec: Obj) -> str | None:
    bad = [
        c["name"]
        for c in _containers(spec)
        if _context(c).get("allowPrivilegeEscalation") is not False
    ]
    if not bad:
        return None
    return f"allowPrivilegeEscalation != false ({_names(bad)} must set securityContext.allowPrivilegeEscalation=false)"


def _run_as_non_root(meta: Obj, spec: Obj) -> str | None:
    pod = (spec.get("securityContext") or {}).get("runAsNonRoot")
    if pod is False:
        return "runAsNonRoot != true (pod must not set securityContext.runAsNonRoot=false)"
    explicit_false = [
        c["name"] for c in _containers(spec) if _context(c).get("runAsNonRoot") is False
    ]
    if explicit_false:
        return f"runAsNonRoot != true ({_names(explicit_false)} must not set securityContext.runAsNonRoot=false)"
    if pod is True:
        return None
    unset = [c["name"] for c in _containers(spec) if _context(c).get("runAsNonRoot") is not True]
    if unset:
        return f"runAsNonRoot != true (pod or {_names(unset)} must set securityContext.runAsNonRoot=true)"
    return None


def _run_as_user(meta: Obj, spec: Obj) -> str | None:
    if (spec.get("securityContext") or {}).get("runAsUser") == 0:
        return "runAsUser=0 (pod must not set runAsUser=0)"
    bad = [c["name"] for c in _containers(spec) if _context(c).get("runAsUser") == 0]
    return f"runAsUser=0 ({_names(bad)} must not set runAsUser=0)" if bad else None


def _seccomp_restricted(meta: Obj, spec: Obj) -> str | None:
    allowed = ("RuntimeDefault", "Localhost")
    pod = ((spec.get("securityContext") or {}).get("seccompProfile") or {}).get("type")
    if pod is not None and pod not in allowed:
        return f'seccompProfile (pod must not set securityContext.seccompProfile.type to "{pod}")'
    bad = []
    for container in _containers(spec):
        own = (_context(container).get("seccompProfile") or {}).get("type")
        if (own is None and pod is None) or (own is not None and own not in allowed):
            bad.append(container["name"])
    if not bad:
        return None
    return (
        f"seccompProfile (pod or {_names(bad)} must set securityContext.seccompProfile.type to "
        '"RuntimeDefault" or "Localhost")'
    )


def _capabilities_restricted(meta: Obj, spec: Obj) -> str | None:
    no_drop: list[str] = []
    adds: list[str] = []
    for container in _containers(spec):
        caps = _context(container).get("capabilities") or {}
        if "ALL" not in (caps.get("drop") or []):
            no_drop.append(container["name"])
        if any(cap != "NET_BIND_SERVICE" for cap in caps.get("add") or []):
            adds.append(container["name"])
    parts = []
    if no_drop:
        parts.append(f'{_names(no_drop)} must set securityContext.capabilities.drop=["ALL"]')
    if adds:
        parts.append(
            f'{_names(adds)} must not include capabilities other than "NET_BIND_SERVICE" in securityContext.capabilities.add'
        )
    return f"unrestricted capabilities ({'; '.join(parts)})" if parts else None


Check = Callable[[Obj, Obj], "str | None"]
BASELINE: tuple[Check, ...] = (
    _host_namespaces, _privileged, _capabilities_baseline, _host_path, _host_ports, _app_armor,
    _se_linux, _proc_mount, _seccomp_baseline, _sysctls,
)  # fmt: skip
RESTRICTED: tuple[Check, ...] = (
    *BASELINE, _volume_types, _privilege_escalation, _run_as_non_root, _run_as_user,
    _seccomp_restricted, _capabilities_restricted,
)  # fmt: skip


def violations(level: str, metadata: Obj, spec: Obj) -> list[str]:
    """What a pod (its metadata and spec, or a template's) violates at ``level``."""
    if level not in LEVELS:
        raise ValueError(f"unknown Pod Security level {level!r}")
    checks = {"privileged": (), "baseline": BASELINE, "restricted": RESTRICTED}[level]
    found = [check(metadata, spec) for check in checks]
    return [message for message in found if message]


def highest_level(metadata: Obj, spec: Obj) -> str:
    """The strictest level the pod passes."""
    for level in ("restricted", "baseline"):
        if not violations(level, metadata, spec):
            return level
    return "privileged"


def forbidden_message(name: str, level: str, problems: list[str]) -> str:
    """The apiserver's words for a pod Pod Security admission rejects."""
    return (
        f'pods "{name}" is forbidden: violates PodSecurity "{level}:latest": {", ".join(problems)}'
    )


def enforced_level(namespace: Obj | None) -> str:
    """The namespace's ``pod-security.kubernetes.io/enforce`` level (privileged when unset)."""
    labels = ((namespace or {}).get("metadata") or {}).get("labels") or {}
    level = labels.get(ENFORCE_LABEL, "privileged")
    return level if level in LEVELS else "privileged"

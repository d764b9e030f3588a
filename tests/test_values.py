"""GitOps values rewriting: only the claim references change, byte for byte everything else stays,
and restoring gives back the exact original text."""

from __future__ import annotations

import pytest

from migrator.errors import BadInputError, OperationFailedError
from migrator.values import (
    claim_paths,
    find_claim_references,
    merge_patch,
    restore_claims,
    rewrite_claims,
    scalar_text,
)

MOVE = {"media": "media-seaweedfs", "sonarr-config": "sonarr-config-seaweedfs"}

# An app-template HelmRelease as home-ops repos write them: schema comment, anchors reused as
# aliases, an image-policy marker comment, flow mappings, a quoted claim.
APP_TEMPLATE_HELMRELEASE = """\
---
# yaml-language-server: $schema=https://raw.githubusercontent.com/bjw-s/helm-charts/main/charts/other/app-template/schemas/helmrelease-helm-v2.schema.json
apiVersion: helm.toolkit.fluxcd.io/v2
kind: HelmRelease
metadata:
  name: &app sonarr
  namespace: tenant-media
spec:
  interval: 30m
  chart:
    spec:
      chart: app-template
      version: 3.7.3
      sourceRef: {kind: HelmRepository, name: bjw-s, namespace: flux-system}
  install:
    remediation:
      retries: 3
  values:
    defaultPodOptions: &pod
      securityContext:
        runAsUser: 911   # linuxserver PUID
        fsGroup: 911
        fsGroupChangePolicy: OnRootMismatch
    controllers:
      *app :
        containers:
          app:
            image:
              repository: ghcr.io/onedr0p/sonarr
              tag: rolling # {"$imagepolicy": "flux-system:sonarr:tag"}
            env:
              TZ: Europe/Berlin
              SONARR__APP__INSTANCENAME: *app
    service:
      app:
        controller: *app
        ports: {http: {port: 8989}}
    persistence:
      config:
        existingClaim: sonarr-config   # Linstor, replicated
      media:
        type: persistentVolumeClaim
        existingClaim: "media"
        globalMounts:
          - path: /media
      tmp:
        type: emptyDir
"""

# The older k8s-at-home sonarr chart's values.yaml.
K8S_AT_HOME_VALUES = """\
# Default values for sonarr.
image:
  repository: ghcr.io/k8s-at-home/sonarr
  pullPolicy: IfNotPresent
  tag: v3.0.6.1342

env:
  TZ: UTC

service:
  main:
    ports:
      http:
        port: 8989

persistence:
  config:
    enabled: true
    existingClaim: sonarr-config
  media:
    enabled: true
    mountPath: /media
    existingClaim: media
    # accessMode: ReadWriteMany
"""


def changed_lines(diff: str) -> list[str]:
    return [
        line
        for line in diff.splitlines()
        if line.startswith(("+", "-")) and not line.startswith(("+++", "---"))
    ]


def test_app_template_helmrelease_changes_only_the_claim_lines() -> None:
    result = rewrite_claims(APP_TEMPLATE_HELMRELEASE, MOVE, "sonarr.yaml", "tenant-media")
    assert changed_lines(result.diff("sonarr.yaml")) == [
        "-        existingClaim: sonarr-config   # Linstor, replicated",
        "+        existingClaim: sonarr-config-seaweedfs   # Linstor, replicated",
        '-        existingClaim: "media"',
        '+        existingClaim: "media-seaweedfs"',
    ]
    assert result.text == APP_TEMPLATE_HELMRELEASE.replace(
        "existingClaim: sonarr-config ", "existingClaim: sonarr-config-seaweedfs "
    ).replace('existingClaim: "media"', 'existingClaim: "media-seaweedfs"')
    assert [(c.path, c.release, c.line) for c in result.changes] == [
        ("spec.values.persistence.config.existingClaim", "sonarr", 40),
        ("spec.values.persistence.media.existingClaim", "sonarr", 43),
    ]
    restored = restore_claims(result.text, result.changes, "sonarr.yaml")
    assert restored.text == APP_TEMPLATE_HELMRELEASE


def test_k8s_at_home_values_file() -> None:
    result = rewrite_claims(K8S_AT_HOME_VALUES, {"media": "media-seaweedfs"}, "values.yaml")
    assert changed_lines(result.diff("values.yaml")) == [
        "-    existingClaim: media",
        "+    existingClaim: media-seaweedfs",
    ]
    assert result.changes[0].path == "persistence.media.existingClaim"
    assert restore_claims(result.text, result.changes).text == K8S_AT_HOME_VALUES


def test_multi_document_file_with_other_kinds_and_foreign_releases() -> None:
    radarr = APP_TEMPLATE_HELMRELEASE.replace("sonarr", "radarr")
    elsewhere = APP_TEMPLATE_HELMRELEASE.replace(
        "namespace: tenant-media", "namespace: tenant-other"
    )
    kustomization = (
        "---\napiVersion: kustomize.toolkit.fluxcd.io/v1\nkind: Kustomization\n"
        "metadata: {name: apps}\nspec:\n  values:\n    persistence: {media: {existingClaim: media}}\n"
    )
    not_planned = APP_TEMPLATE_HELMRELEASE.replace("&app sonarr", "&app jellyfin")
    text = APP_TEMPLATE_HELMRELEASE + radarr + kustomization + elsewhere + not_planned
    result = rewrite_claims(
        text, {"media": "media-seaweedfs"}, "apps.yaml", "tenant-media", ["sonarr", "radarr"]
    )
    assert [(c.document, c.release) for c in result.changes] == [(0, "sonarr"), (1, "radarr")]
    assert changed_lines(result.diff("apps.yaml")) == [
        '-        existingClaim: "media"',
        '+        existingClaim: "media-seaweedfs"',
        '-        existingClaim: "media"',
        '+        existingClaim: "media-seaweedfs"',
    ]
    assert any("installs in tenant-other" in note for note in result.notes)
    assert any("jellyfin is not among the plan's releases" in note for note in result.notes)
    assert restore_claims(result.text, result.changes).text == text


def test_quoting_styles_flow_mappings_crlf_and_missing_final_newline() -> None:
    text = (
        "persistence:\r\n"
        "  config: {existingClaim: 'sonarr-config', advancedMounts: {}}\r\n"
        '  media: {existingClaim: "media"}  # shared\r\n'
        "  cache:\r\n    existingClaim: media"
    )
    result = rewrite_claims(text, MOVE)
    assert result.text == (
        "persistence:\r\n"
        "  config: {existingClaim: 'sonarr-config-seaweedfs', advancedMounts: {}}\r\n"
        '  media: {existingClaim: "media-seaweedfs"}  # shared\r\n'
        "  cache:\r\n    existingClaim: media-seaweedfs"
    )
    assert restore_claims(result.text, result.changes).text == text


def test_an_alias_is_replaced_in_place_and_restored_exactly() -> None:
    # home-ops style: the PVC is named after the app, so the claim is the release name's alias.
    hr = (
        "apiVersion: helm.toolkit.fluxcd.io/v2\nkind: HelmRelease\nmetadata:\n  name: &app media\n"
        "spec:\n  values:\n    persistence:\n      data:\n        existingClaim: *app # same name\n"
    )
    result = rewrite_claims(hr, {"media": "media-seaweedfs"})
    assert changed_lines(result.diff("hr.yaml")) == [
        "-        existingClaim: *app # same name",
        "+        existingClaim: media-seaweedfs # same name",
    ]
    assert "name: &app media\n" in result.text  # the anchor (the release name) is untouched
    assert restore_claims(result.text, result.changes).text == hr


def test_an_anchored_claim_shared_with_another_key_is_refused() -> None:
    text = "persistence:\n  media:\n    existingClaim: &shared media\nlabels:\n  volume: *shared\n"
    with pytest.raises(OperationFailedError, match="would change other values too"):
        rewrite_claims(text, {"media": "media-seaweedfs"}, "values.yaml")


def test_an_anchored_claim_reused_by_another_claim_changes_both() -> None:
    text = (
        "persistence:\n  media:\n    existingClaim: &media media\n"
        "  downloads:\n    existingClaim: *media\n"
    )
    result = rewrite_claims(text, {"media": "media-seaweedfs"})
    assert result.text == (
        "persistence:\n  media:\n    existingClaim: &media media-seaweedfs\n"
        "  downloads:\n    existingClaim: media-seaweedfs\n"
    )
    assert restore_claims(result.text, result.changes).text == text


def test_values_that_would_not_read_back_as_strings_are_quoted() -> None:
    assert scalar_text("media-seaweedfs", None) == "media-seaweedfs"
    assert scalar_text("1234", None) == '"1234"'
    assert scalar_text("yes", None) == '"yes"'  # a boolean to Helm's YAML 1.1 parser
    assert scalar_text("1e3", "'") == "'1e3'"
    result = rewrite_claims("persistence:\n  data:\n    existingClaim: media\n", {"media": "on"})
    assert result.text == 'persistence:\n  data:\n    existingClaim: "on"\n'


def test_restore_leaves_a_reference_changed_since_alone() -> None:
    result = rewrite_claims(K8S_AT_HOME_VALUES, {"media": "media-seaweedfs"})
    edited = result.text.replace("existingClaim: media-seaweedfs", "existingClaim: media-nfs2")
    restored = restore_claims(edited, result.changes, "values.yaml")
    assert restored.text == edited
    assert restored.changes == []
    assert "changed since the swap, left alone" in restored.notes[0]


def test_invalid_yaml_is_bad_input_with_its_line() -> None:
    with pytest.raises(
        BadInputError, match=r"^values\.yaml is not valid YAML at line 4: expected <block end>"
    ):
        rewrite_claims("a: 1\nb:\n  c: d\n e: f\n", MOVE, "values.yaml")


def test_references_in_other_places_are_not_claims() -> None:
    text = "controllers:\n  main:\n    existingClaim: media\npersistence:\n  existingClaim: media\n"
    assert [r.dotted for r in find_claim_references(text)] == ["persistence.existingClaim"]


def test_values_dicts_for_in_cluster_patches() -> None:
    values = {
        "controllers": {"main": {"containers": {}}},
        "persistence": {
            "config": {"existingClaim": "sonarr-config"},
            "tmp": {"type": "emptyDir"},
            "media": {"existingClaim": "media", "globalMounts": [{"path": "/media"}]},
        },
    }
    assert claim_paths(values) == [
        (("persistence", "config", "existingClaim"), "sonarr-config"),
        (("persistence", "media", "existingClaim"), "media"),
    ]
    patch = merge_patch([(("spec", "values", "persistence", "media", "existingClaim"), "new")])
    assert patch == {"spec": {"values": {"persistence": {"media": {"existingClaim": "new"}}}}}

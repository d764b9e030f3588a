"""Docs stay in step with the code: every command has help and is documented."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import click

from migrator.cli import COMMAND_MODULES, load_commands
from migrator.docgen import generated_docs

ROOT = Path(__file__).resolve().parent.parent


def test_generated_reference_docs_are_up_to_date() -> None:
    for path, text in generated_docs(ROOT).items():
        assert path.read_text(encoding="utf-8") == text, (
            f"{path} drifted: run python -m migrator.docgen"
        )


def test_every_command_has_help_and_is_documented() -> None:
    reference = (ROOT / "docs" / "reference" / "cli.md").read_text()

    def check(group: click.Group, prefix: str) -> None:
        for name, command in group.commands.items():
            assert command.help, f"{prefix} {name} has no help text"
            assert f"## `{prefix} {name}`" in reference
            if isinstance(command, click.Group):
                check(command, f"{prefix} {name}")

    check(load_commands(), "migrator")


def test_the_lazily_loaded_commands_are_exactly_those_the_modules_define() -> None:
    assert sorted(load_commands().commands) == sorted(COMMAND_MODULES)


def test_an_agent_command_starts_without_the_operator_commands() -> None:
    """What a verify Job runs imports neither the other commands nor rich's tables."""
    probe = (
        "import sys\n"
        "from migrator.cli import cli\n"
        "try:\n"
        "    cli(['agent', 'verify', '--help'], prog_name='migrator')\n"
        "except SystemExit:\n"
        "    pass\n"
        "loaded = [m for m in ('migrator.cli.swap', 'migrator.cli.plan', 'migrator.cli.backup',\n"
        "    'migrator.workflows', 'migrator.plan', 'rich.table') if m in sys.modules]\n"
        "print('LOADED', loaded, file=sys.stderr)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    )
    assert "Usage: migrator agent verify" in result.stdout
    assert "LOADED []" in result.stderr, result.stderr


def test_cozystack_how_to_covers_credentials_endpoints_and_offsite_backups() -> None:
    """What an operator needs before the first plan on Cozystack (issue #11, part 5)."""
    how_to = (ROOT / "docs" / "how-to" / "cozystack-migration.md").read_text()
    endpoint = how_to.index("**Which endpoint.**")
    for needed in ("users:", "BucketInfo", "-credentials"):
        assert needed in how_to[:endpoint], needed  # before the endpoint is discussed
    section = how_to[endpoint : how_to.index("**Mounting buckets")]
    assert section.index("public S3 ingress") < section.index("seaweedfs-s3.<namespace>.svc")
    for needed in ("--s3-ca-bundle", "NetworkPolicies"):
        assert needed in section, needed
    for needed in ("global.enableSecurity: true", "tlsSecret", "seaweedfs-client-cert"):
        assert needed in how_to, needed
    backups = (ROOT / "docs" / "how-to" / "backups.md").read_text()
    offsite = backups[backups.index("## Off-site backups (3-2-1)") :]
    for needed in (
        "--backup-credentials-secret",
        "--backup-endpoint",
        "MIGRATOR_BACKUP_AWS_ACCESS_KEY_ID",
    ):
        assert needed in offsite, needed

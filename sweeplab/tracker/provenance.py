"""What a run records about how it was made: git commit, package versions, the exact command."""

from __future__ import annotations

import shlex
import subprocess
import sys
from importlib import metadata
from pathlib import Path

__all__ = ["provenance_tags"]

PACKAGES = ("sweeplab", "torch", "torchvision", "transformers", "optuna", "mlflow", "scikit-learn", "numpy")


def _git_commit(cwd: Path) -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=5, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd, capture_output=True, text=True, timeout=5
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{out}{'-dirty' if dirty else ''}" if out else None


def provenance_tags(argv: list[str] | None = None, cwd: Path | None = None) -> dict[str, str]:
    """Tags for every run: ``sweeplab.command``, ``mlflow.source.git.commit`` (when the working
    directory is in a git repository; ``-dirty`` when tracked files changed) and
    ``sweeplab.version.PACKAGE`` for the packages that decide a result."""
    argv = list(sys.argv if argv is None else argv)
    if argv:
        argv[0] = Path(argv[0]).name
    tags = {"sweeplab.command": shlex.join(argv), "sweeplab.python": sys.version.split()[0]}
    commit = _git_commit(cwd or Path.cwd())
    if commit:
        tags["mlflow.source.git.commit"] = commit
    for package in PACKAGES:
        try:
            tags[f"sweeplab.version.{package}"] = metadata.version(package)
        except metadata.PackageNotFoundError:
            continue
    return tags

"""Where a number came from: code version, library versions, device, date."""

from __future__ import annotations

import datetime as dt
import subprocess
from functools import cache
from pathlib import Path

import torch


@cache
def git_sha() -> str:
    """The suite's commit, with '+dirty' when the work tree has changes; 'unknown' outside git."""
    root = Path(__file__).resolve().parent.parent
    try:
        sha = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=root, check=True,
                             capture_output=True, text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=root, check=True, capture_output=True, text=True,
                               timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return sha + ("+dirty" if dirty else "")


def provenance(device: str = "cpu") -> dict[str, str]:
    return {
        "git_sha": git_sha(),
        "torch_version": torch.__version__,
        "device": device,
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }

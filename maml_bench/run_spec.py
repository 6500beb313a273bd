"""One run of a command: which experiment, method and repetition, with what config, where.

Below the runner and the engines (both plan and place these), so that `devices.py` and the
engines can name the type without importing the runner."""

from __future__ import annotations

from dataclasses import dataclass
from hashlib import sha256
from pathlib import Path
from typing import Any


def derive_seed(experiment: str, method: str, repetition: int) -> int:
    """A seed from (experiment id, method, repetition) alone, stored in every record."""
    digest = sha256(f"{experiment}|{method}|{repetition}".encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


@dataclass(frozen=True)
class RunSpec:
    experiment: str
    method: str
    repetition: int
    config: Any
    out: Path
    #: where it trains (`devices.py`): cpu, auto, cuda, cuda:N. Not part of the config or its
    #: hash: the same run continues on another device, and run.json says which trained it.
    device: str = "cpu"

    @property
    def run_id(self) -> str:
        return f"{self.experiment}/{self.method}/seed-{self.repetition}"

    @property
    def directory(self) -> Path:
        return self.out / self.experiment / "raw" / self.method / f"seed-{self.repetition}"

    @property
    def seed(self) -> int:
        return derive_seed(self.experiment, self.method, self.repetition)

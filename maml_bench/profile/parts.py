"""Each configuration's measurements, saved as soon as that configuration is done, so that a long
profile (hours on a CPU) stopped by Ctrl-C, a kill or the end of a session resumes where it
stopped: a configuration whose saved part was measured with the same settings is read back, not
measured again. Parts are written atomically and checked when read; one that is unreadable or
was measured with other settings is measured again (and replaced)."""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from maml_bench.profile.measure import OpRow, OpsProfile
from maml_bench.profile.peak import Peak
from maml_bench.results import atomic_write_text

log = logging.getLogger(__name__)

#: bump when a part's content changes meaning; older parts are then measured again
#: (2: glibc's mmap is off in every run, memory.py; format-1 parts paid its page faults)
PART_FORMAT = 2


@dataclass(frozen=True)
class Part:
    """One configuration's rows, operator profile and the peak measured in its session."""

    config: str
    settings: dict[str, Any]
    rows: list[dict[str, Any]]
    ops: list[OpsProfile]
    skipped_ops: list[str]
    peak: Peak


def part_path(out: Path, slug: str, config: str) -> Path:
    return out / "parts" / slug / f"{config}.json"


def save_part(path: Path, part: Part) -> None:
    payload = {"format": PART_FORMAT, **dataclasses.asdict(part)}
    atomic_write_text(path, json.dumps(payload, indent=1, allow_nan=True) + "\n")


def load_part(path: Path, settings: dict[str, Any]) -> Part | None:
    """The saved part if it exists, reads whole and was measured with `settings`; else None
    (with a log line saying why, where there was a file)."""
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
        if data.get("format") != PART_FORMAT:
            raise ValueError(f"format {data.get('format')!r}, not {PART_FORMAT}")
        part = Part(
            config=str(data["config"]), settings=dict(data["settings"]),
            rows=[dict(r) for r in data["rows"]],
            ops=[OpsProfile(**{**o, "step_ops": [OpRow(**r) for r in o["step_ops"]],
                               "backward_ops": [OpRow(**r) for r in o["backward_ops"]]})
                 for o in data["ops"]],
            skipped_ops=[str(s) for s in data["skipped_ops"]], peak=Peak(**data["peak"]))
        if not part.rows or any(r.get("config") != part.config for r in part.rows):
            raise ValueError("its rows are not this configuration's")
    except (OSError, ValueError, KeyError, TypeError) as err:  # JSONDecodeError is a ValueError
        log.warning("profile: %s is unreadable (%s); measuring it again", path, err)
        return None
    if part.settings != settings:
        changed = sorted(k for k in settings.keys() | part.settings.keys()
                         if settings.get(k) != part.settings.get(k))
        log.info("profile: %s was measured with other %s; measuring it again", path,
                 ", ".join(changed))
        return None
    return part

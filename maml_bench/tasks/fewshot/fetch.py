"""`maml-bench data fetch`: the official Omniglot files, downloaded where the suite looks.

Omniglot is two zips in Lake's repository (`brendenlake/omniglot`, `python/`), plus the 20
one-shot runs (`python/one-shot-classification/all_runs.zip`). Each download is checked against
the SHA-256 of the release before it is moved into place (atomically), so a partial or changed
file is never left where a run reads it. Without network access, one line names the URLs and
where to put the files. MiniImagenet has no official single download: the message says how
the folder is made and where its parts come from.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

from maml_bench.errors import UserError
from maml_bench.results import file_mode

BASE = "https://raw.githubusercontent.com/brendenlake/omniglot/master/python/"
#: file -> (URL, SHA-256 of the official file)
OMNIGLOT = {
    "images_background.zip": (BASE + "images_background.zip",
                              "ac5edd696d8a129745426c154dfd810b3551a67f82c8bbf9906e9c1045eb4c0c"),
    "images_evaluation.zip": (BASE + "images_evaluation.zip",
                              "5675f7886dacb4d5f6664afded3e0865141ac6277aa4c8ad2d65736cfddeb839"),
    "all_runs.zip": (BASE + "one-shot-classification/all_runs.zip",
                     "437c1eeab0af8484112e1b4cc0f3d541ec727f7c47b9b202da738af9dfd6c325"),
}
MINIIMAGENET_HELP = (
    "MiniImagenet has no official single download: put Ravi & Larochelle's split files "
    "(train.csv, val.csv, test.csv; e.g. yaoyao-liu/mini-imagenet-tools, mini_imagenet_split/"
    "Ravi/) and the 84 x 84 images (images/ or images.zip; or the ImageNet originals, resized "
    "on load) in {folder}, then run `maml-bench data check miniimagenet`")

Opener = Callable[[str], object]


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fetch_omniglot(folder: Path, say: Callable[[str], None] = print,
                   opener: Opener | None = None) -> list[Path]:
    """Download each official file that `folder` lacks (or holds damaged); -> those written."""
    opener = opener or (lambda url: urllib.request.urlopen(url, timeout=60))
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name, (url, sha) in OMNIGLOT.items():
        target = folder / name
        if target.is_file() and _sha256(target) == sha:
            say(f"{target}: already the official file")
            continue
        say(f"downloading {url}")
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{name}.")
        try:
            with os.fdopen(fd, "wb") as out:
                shutil.copyfileobj(opener(url), out, 1 << 20)  # type: ignore[arg-type]
            if _sha256(Path(tmp)) != sha:
                raise UserError(f"{url} did not give the official file (its SHA-256 differs); "
                                f"download it by hand into {folder}")
            os.chmod(tmp, file_mode())  # mkstemp's 0600 would hide it from colleagues
            os.replace(tmp, target)
            written.append(target)
        except (urllib.error.URLError, OSError, TimeoutError) as err:
            urls = ", ".join(u for u, _ in OMNIGLOT.values())
            raise UserError(f"cannot download {name} ({getattr(err, 'reason', err)}); offline, "
                            f"put the official files {', '.join(OMNIGLOT)} ({urls}) in {folder}"
                            ) from None
        finally:
            Path(tmp).unlink(missing_ok=True)
    return written

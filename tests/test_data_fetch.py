"""`maml-bench data fetch` and where the data root is found: the official Omniglot files put in
place only when their SHA-256 is the release's, one line offline, and the working directory's
data/ found before the shared copy."""

from __future__ import annotations

import io
import urllib.error
from pathlib import Path

import pytest
from test_validation import assert_refused, run_cli

from maml_bench.errors import UserError
from maml_bench.tasks.fewshot import data_root as roots
from maml_bench.tasks.fewshot.fetch import OMNIGLOT, fetch_omniglot

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "omniglot"
needs_shared = pytest.mark.skipif(
    not all((SHARED / name).is_file() for name in OMNIGLOT),
    reason=f"needs the official Omniglot files in {SHARED} (`maml-bench data fetch omniglot`)")


def serve(files: dict[str, bytes]):
    """An opener that answers each official URL with the given bytes."""
    by_url = {url: files[name] for name, (url, _) in OMNIGLOT.items() if name in files}
    return lambda url: io.BytesIO(by_url[url])


def offline(url):
    raise urllib.error.URLError("Name or service not known")


def test_offline_is_one_line_with_the_urls_and_the_folder(tmp_path):
    with pytest.raises(UserError) as err:
        fetch_omniglot(tmp_path / "omniglot", say=lambda line: None, opener=offline)
    text = str(err.value)
    assert all(url in text for url, _ in OMNIGLOT.values()) and str(tmp_path) in text
    assert list((tmp_path / "omniglot").iterdir()) == []  # no partial file left


def test_a_file_that_is_not_the_release_is_not_put_in_place(tmp_path):
    with pytest.raises(UserError, match="SHA-256 differs"):
        fetch_omniglot(tmp_path, say=lambda line: None,
                       opener=serve(dict.fromkeys(OMNIGLOT, b"<html>not a zip</html>")))
    assert list(tmp_path.iterdir()) == []


@needs_shared
def test_the_official_files_are_written_once(tmp_path):
    files = {name: (SHARED / name).read_bytes() for name in OMNIGLOT}
    said = []
    written = fetch_omniglot(tmp_path, say=said.append, opener=serve(files))
    assert sorted(p.name for p in written) == sorted(OMNIGLOT)
    assert all((tmp_path / n).read_bytes() == files[n] for n in OMNIGLOT)
    assert all((tmp_path / n).stat().st_mode & 0o044 for n in OMNIGLOT)  # not private (umask 022)
    assert fetch_omniglot(tmp_path, say=said.append, opener=offline) == []  # kept: no download
    assert sum("already the official file" in line for line in said) == len(OMNIGLOT)


def test_miniimagenet_says_how_its_folder_is_made(capsys, tmp_path):
    assert_refused(*run_cli(capsys, ["data", "fetch", "miniimagenet", "--data-root",
                                     str(tmp_path)]), "train.csv", str(tmp_path))


def test_the_data_root_is_found_from_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.delenv(roots.DATA_ENV, raising=False)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(roots, "candidates", lambda: [Path("data"), Path("elsewhere")])
    assert roots.data_root() == (tmp_path / "data").resolve()  # none exists: ./data, named
    (tmp_path / "elsewhere").mkdir()
    assert roots.data_root() == (tmp_path / "elsewhere").resolve()
    (tmp_path / "data").mkdir()
    assert roots.data_root() == (tmp_path / "data").resolve()  # ./data first
    monkeypatch.setenv(roots.DATA_ENV, str(tmp_path / "mine"))
    assert roots.data_root() == tmp_path / "mine"  # the variable wins

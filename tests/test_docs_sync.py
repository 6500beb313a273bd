"""`maml-bench docs`: the numbers in README.md and docs/ are the committed records' numbers.

The committed pages must match what the command writes (so a hand-typed or stale number fails
here), and a page goes stale when a record it draws on changes."""

from __future__ import annotations

import gzip
import io
import json
from pathlib import Path

import pandas as pd
import pytest
from test_validation import assert_refused, run_cli

from maml_bench.cli import main
from maml_bench.report.docs import MARKER, pages, sync_docs
from maml_bench.results import RECORDS_FILE, RUN_INFO_FILE, seal, write_records

REPO = Path(__file__).resolve().parents[1]


def test_the_committed_pages_match_the_committed_records():
    stale = sync_docs(REPO, write=False, report=lambda line: None)
    assert stale == [], f"run `maml-bench docs` and commit: {[str(p) for p in stale]}"


def test_the_pages_hold_generated_numbers():
    """The check above would pass on pages without markers: the main tables are generated."""
    marked = {p.name for p in pages(REPO) if MARKER.search(p.read_text(encoding="utf-8"))}
    assert {"omniglot.md", "miniimagenet.md"} <= marked


@pytest.fixture(scope="module")
def tiny_repo(tmp_path_factory):
    repo = tmp_path_factory.mktemp("repo")
    assert main(["run", "sinusoid-table2-v1", "--scale", "tiny", "--method", "maml",
                 "--out", str(repo / "results")]) == 0
    (repo / "docs").mkdir()
    return repo


def _page(repo: Path) -> Path:
    page = repo / "docs" / "page.md"
    page.write_text(
        "MAML after one step: <!-- value: results sinusoid-table2-v1 maml shots=5 steps=1 "
        "digits=3 -->?<!-- end -->.\n\n"
        "<!-- table: results sinusoid-table2-v1 shots=5 steps=0,1 digits=3 -->\n<!-- end -->\n")
    return page


def _change_one_record(repo: Path) -> None:
    """Another value in one record, resealed as the runner seals (so it still verifies)."""
    run = repo / "results" / "sinusoid-table2-v1" / "raw" / "maml" / "seed-0"
    frame = pd.read_csv(io.BytesIO(gzip.decompress((run / RECORDS_FILE).read_bytes())))
    first = frame.index[(frame["step"] == 1) & (frame["shots"] == 5)][0]
    frame.loc[first, "value"] += 100.0
    write_records(run / RECORDS_FILE, frame)
    info = json.loads((run / RUN_INFO_FILE).read_text())
    info.update(seal(run / RECORDS_FILE))
    (run / RUN_INFO_FILE).write_text(json.dumps(info))


def test_a_changed_record_makes_the_page_stale(tiny_repo, capsys):
    page = _page(tiny_repo)
    assert main(["docs", "--repo", str(tiny_repo)]) == 0
    written = page.read_text()
    assert "?" not in written and "| MAML |" in written and "Scale: tiny" in written
    assert main(["docs", "--repo", str(tiny_repo), "--check"]) == 0
    _change_one_record(tiny_repo)
    assert main(["docs", "--repo", str(tiny_repo), "--check"]) == 1
    assert "stale: docs/page.md" in capsys.readouterr().out
    assert page.read_text() == written  # --check writes nothing
    assert main(["docs", "--repo", str(tiny_repo)]) == 0
    assert page.read_text() != written


@pytest.mark.parametrize("marker, expected", [
    ("<!-- value: results sinusoid-table2-v1 maml shots=5 -->x<!-- end -->", "bad marker"),
    ("<!-- value: results sinusoid-table2-v1 maml shots=5 steps=1 form=odd -->x<!-- end -->",
     "bad marker"),
    ("<!-- table: results sinusoid-table2-v1 shots=5 steps=1 methods=nobody -->\n<!-- end -->",
     "no records or paper values for nobody"),
    ("<!-- table: results nowhere-v1 shots=5 steps=1 -->\n<!-- end -->", "unknown"),
])
def test_a_bad_marker_is_one_line(tiny_repo, capsys, marker, expected):
    (tiny_repo / "docs" / "page.md").write_text(marker + "\n")
    assert_refused(*run_cli(capsys, ["docs", "--repo", str(tiny_repo)]), expected)


def test_committed_result_names_are_portable():
    """Every path under results/ uses letters, digits, '-', '_', '.' (and '/'): no '=' or ','
    that shells, URLs and some file systems handle badly."""
    import re
    import subprocess

    files = subprocess.run(["git", "ls-files", "results"], cwd=REPO, text=True,
                           capture_output=True, check=True).stdout.splitlines()
    assert files, "results/ is committed"
    assert [f for f in files if not re.fullmatch(r"[A-Za-z0-9._/-]+", f)] == []


def test_a_pooled_root_counts_each_folders_tasks(tiny_repo):
    """ROOT with a `*`: the matching folders' records pooled, each folder's tasks its own (the
    five test-episode draws of a grid are 5 x 600 tasks, not 600), and `spread` their means'."""
    import shutil

    from maml_bench.report.docs import Summaries

    for name in ("draw-1", "draw-2"):
        shutil.copytree(tiny_repo / "results", tiny_repo / "pooled" / name)
    summaries = Summaries(tiny_repo)
    one = summaries.get("results", "sinusoid-table2-v1")
    both = summaries.get("pooled/draw-*", "sinusoid-table2-v1")
    pick = (one["method"] == "maml") & (one["shots"] == 5) & (one["steps"] == 1)
    assert int(both[pick]["n"].iloc[0]) == 2 * int(one[pick]["n"].iloc[0])
    assert both[pick]["mean"].iloc[0] == pytest.approx(one[pick]["mean"].iloc[0])
    page = tiny_repo / "docs" / "page.md"
    page.write_text("<!-- value: pooled/draw-* sinusoid-table2-v1 maml shots=5 steps=1 "
                    "form=spread digits=3 -->?<!-- end -->\n")
    sync_docs(tiny_repo, write=True, report=lambda line: None)
    low, high = page.read_text().split("-->")[1].split("<!--")[0].split("-")
    assert low == high  # two copies of one draw

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
    assert {"omniglot.md", "miniimagenet.md", "speed.md", "profile.md", "ci-benchmarks.md",
            "scale-out.md"} <= marked
    kinds = {m.group(1) for p in pages(REPO) for m in MARKER.finditer(p.read_text("utf-8"))}
    assert {"table", "value", "include", "cell"} <= kinds


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


# --- include and cell markers: numbers from committed results files (benchmarks, profiles) ---

BENCH_MD = """# A benchmark

Some prose: 12 ms here is not a table.

| configuration | loop | ours | loop / ours |
|---|---|---|---|
| small | 1329 | 1,249 | **1.06x** |
| big | 10393 | 9059 | 1.15x |

## Second part

| case | path | ms (median) |
|---|---|---|
| a | fused | 2.97 (3.02) |
"""
BENCH_CSV = ("config,steps,so_ms,share\nsmall,1,297.4,0.0096\nsmall,5,1138.2,0.01\n"
             "big,1,2904.9,0.5\n")
BENCH_JSON = {"min_ms": {"ours": 321.58, "loop": 479.57}, "ratio": 1.4913, "steps": [135703.35]}


@pytest.fixture
def bench_repo(tmp_path):
    (tmp_path / "docs").mkdir()
    bench = tmp_path / "results" / "benchmarks"
    bench.mkdir(parents=True)
    (bench / "b.md").write_text(BENCH_MD)
    (bench / "b.csv").write_text(BENCH_CSV)
    (bench / "b.json").write_text(json.dumps(BENCH_JSON))
    return tmp_path


def _render(repo: Path, markers: str) -> str:
    """The page written from `markers` (each with an empty body), regenerated."""
    page = repo / "docs" / "page.md"
    page.write_text(markers)
    sync_docs(repo, write=True, report=lambda line: None)
    return page.read_text()


def _bodies(text: str) -> list[str]:
    return [m.group(3) for m in MARKER.finditer(text)]


def test_an_include_copies_a_results_table(bench_repo):
    text = _render(bench_repo, "<!-- include: results/benchmarks/b.md -->\n<!-- end -->\n\n"
                   "<!-- include: results/benchmarks/b.md after='Second part' -->\n<!-- end -->\n"
                   "<!-- include: results/benchmarks/b.md table=1 "
                   "columns='configuration,loop / ours' where=configuration=big -->\n"
                   "<!-- end -->\n")
    first, second, picked = _bodies(text)
    assert first == "\n" + "\n".join(BENCH_MD.splitlines()[4:8]) + "\n\n"  # verbatim
    assert second == ("\n| case | path | ms (median) |\n|---|---|---|\n"
                      "| a | fused | 2.97 (3.02) |\n\n")
    assert picked == "\n| configuration | loop / ours |\n|---|---|\n| big | 1.15x |\n\n"


@pytest.mark.parametrize("marker, expected", [
    # a Markdown cell as written (emphasis dropped), its nth number, a ratio and a range of rows
    ("results/benchmarks/b.md row=small column='loop / ours'", "1.06x"),
    ("results/benchmarks/b.md row=small column=ours", "1,249"),
    ("results/benchmarks/b.md after='Second part' where=case=a,path=fused column='ms (median)' "
     "nth=2", "3.02"),
    ("results/benchmarks/b.md row=big column=loop scale=1/1000 digits=1 suffix=' s'", "10.4 s"),
    ("results/benchmarks/b.md row='*' column=loop over=ours form=range digits=2 suffix=x",
     "1.06-1.15x"),
    ("results/benchmarks/b.md row='*' column=loop form=max sep=, digits=0", "10,393"),
    # a CSV row by filters, a JSON value by its key, a regular expression's match
    ("results/benchmarks/b.csv where=config=small,steps=1 column=so_ms digits=0", "297"),
    ("results/benchmarks/b.csv where=config=small,steps=1 column=share scale=100 digits=1 "
     "suffix=%", "1.0%"),
    ("results/benchmarks/b.json key=min_ms.ours sig=3", "322"),
    ("results/benchmarks/b.json key=min_ms.loop over=min_ms.ours digits=2 suffix=x", "1.49x"),
    ("results/benchmarks/b.json key=steps.0 sig=4 sep=,", "135,700"),
    ("results/benchmarks/b.json key=ratio sig=2", "1.5"),
    ("results/benchmarks/b.md match='prose: (\\d+) ms'", "12"),
])
def test_a_cell_renders_one_number(bench_repo, marker, expected):
    (body,) = _bodies(_render(bench_repo, f"It took <!-- cell: {marker} -->?<!-- end -->.\n"))
    assert body == expected


def test_a_changed_results_file_makes_the_page_stale(bench_repo, capsys):
    page = bench_repo / "docs" / "page.md"
    written = _render(bench_repo, "<!-- include: results/benchmarks/b.md -->\n<!-- end -->\n"
                      "<!-- cell: results/benchmarks/b.json key=ratio digits=2 -->?<!-- end -->\n")
    assert main(["docs", "--repo", str(bench_repo), "--check"]) == 0
    (bench_repo / "results" / "benchmarks" / "b.json").write_text(
        json.dumps({**BENCH_JSON, "ratio": 1.61}))
    assert main(["docs", "--repo", str(bench_repo), "--check"]) == 1
    assert "stale: docs/page.md" in capsys.readouterr().out
    assert page.read_text() == written
    assert main(["docs", "--repo", str(bench_repo)]) == 0
    assert "-->1.61<!-- end -->" in page.read_text()


@pytest.mark.parametrize("marker, expected", [
    ("<!-- cell: ../outside.json key=a -->x<!-- end -->", "outside the repository"),
    ("<!-- cell: results/benchmarks/nope.json key=a -->x<!-- end -->", "no file"),
    ("<!-- cell: results/benchmarks/b.json key=min_ms.nobody -->x<!-- end -->", "no key"),
    ("<!-- cell: results/benchmarks/b.md row=nobody column=loop -->x<!-- end -->",
     "no row matches"),
    ("<!-- cell: results/benchmarks/b.md row='*' column=loop -->x<!-- end -->", "2 rows match"),
    ("<!-- cell: results/benchmarks/b.md row=small column=nothing -->x<!-- end -->",
     "no column 'nothing'"),
    ("<!-- cell: results/benchmarks/b.csv where=config column=so_ms -->x<!-- end -->",
     "expected COLUMN=VALUE"),
    ("<!-- cell: results/benchmarks/b.md row=small column=loop colour=red -->x<!-- end -->",
     "unknown option(s) colour"),
    ("<!-- include: results/benchmarks/b.md table=3 -->\n<!-- end -->", "not a table 3"),
    ("<!-- include: results/benchmarks/b.md after=Nowhere -->\n<!-- end -->",
     "no heading starting with 'Nowhere'"),
])
def test_a_bad_file_marker_is_one_line(bench_repo, capsys, marker, expected):
    (bench_repo / "docs" / "page.md").write_text(marker + "\n")
    assert_refused(*run_cli(capsys, ["docs", "--repo", str(bench_repo)]),
                   f"docs/page.md: bad marker '{marker.split(' -->')[0]} -->'", expected)

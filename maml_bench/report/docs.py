"""The numbers in the docs, generated from the committed records (`maml-bench docs`).

A page keeps its prose by hand; every number that comes from results/ sits between two markers
that say where it comes from, and this module rewrites what is between them:

    <!-- table: ROOT EXPERIMENT shots=K steps=0,1,3 [methods=a,b] [digits=2] -->
    ...a Markdown table, regenerated...
    <!-- end -->

    <!-- value: ROOT EXPERIMENT METHOD shots=K steps=S [digits=2] [form=ci|marked|...] -->
    99.37 ± 0.32<!-- end -->

    <!-- table: ROOT EXPERIMENT shots=K steps=1,5 methods=M variants=ROOT2:EXP2,ROOT3:EXP3 -->
    ...one method, one row per experiment (the first, then each variant)...
    <!-- end -->

ROOT is a results folder relative to the repository (results, results/long, results/variants/
...); with a `*`, every matching folder, pooled (e.g. the five test-episode draws of a grid).
Tables and values are computed from the verified records with the same statistics as the
experiment's own tables (`report.tables.summarize`), so a changed record changes the page, and
`maml-bench docs --check` (and tests/test_docs_sync.py) fail until the page is regenerated.

Benchmark and profile numbers come from the committed files that hold them (PATH relative to
the repository; words with spaces in quotes):

    <!-- include: PATH [after=HEADING] [table=N] [columns=A,B] [where=COL=V,...] -->
    ...the N-th (default first) Markdown table of PATH, or of its section under the heading
    that starts with HEADING: verbatim, or only the named columns / matching rows...
    <!-- end -->

    <!-- cell: PATH.md row=LABEL column=C -->1.47x<!-- end -->
    <!-- cell: PATH.md [after=HEADING] [table=N] where=COL=V,... column=C -->297<!-- end -->
    <!-- cell: PATH.csv where=COL=V,... column=C -->297<!-- end -->
    <!-- cell: PATH.json key=a.b.c -->1.49<!-- end -->
    <!-- cell: PATH [after=HEADING] match=REGEX -->77.5<!-- end -->

A cell is one number: a Markdown table's row (its first column is LABEL, or each COL matches
its glob V) and column, a CSV row and column, a JSON value (dotted KEY; a list's items by
index), or what a regular expression (its first group) matches in a file's text. Options:
over=C2 (or a KEY: the value divided by that one of the same row); nth=N (the N-th number in
a text such as "17.32 (21.28)"); form=one|range|min|max (range: the matching rows' lowest-
highest, "1.6-1.8"); scale=F (times F: 100 for a percentage, 1/3600 for s in h); digits=N
(decimals, default 2) or sig=N (significant digits); sep=, (thousands); suffix=S ("x", "%",
" ms"). A text read without digits, sig, scale, sep or over is copied as written (its ** and
` dropped: "2.33x", "whole"; with nth=N, that number as written). A path outside the
repository, a missing file, table, column, row, key or match is one line naming the page and
the marker.
"""

from __future__ import annotations

import csv
import fnmatch
import json
import math
import re
import shlex
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from maml_bench.errors import UserError
from maml_bench.report.tables import comparison_mark, steps_name

#: how a value reads: ci "99.37 ± 0.32"; marked "99.37 ± 0.32 ✗" (as the tables); mean
#: "99.37"; range "99.05-99.69" (the interval's ends); vs-paper "99.37 ± 0.32 ✗ against
#: 98.70 ± 0.40"; scale "paper, 60,000 meta-iterations"; spread "99.10-99.40" (a pooled
#: ROOT's lowest and highest folder mean)
FORMS = ("ci", "marked", "mean", "range", "vs-paper", "scale", "spread")
MARKER = re.compile(r"<!-- (table|value|include|cell): ([^\n]*?) -->(.*?)<!-- end -->",
                    re.DOTALL)
_DASH = "–"
#: pooled folders' task ids are shifted by this, so each folder's tasks count as their own
TASK_OFFSET = 1_000_000


@dataclass(frozen=True)
class Source:
    """What one marker asks for."""

    kind: str  # table | value
    root: str
    experiment: str
    method: str | None
    shots: int
    steps: tuple[int, ...]
    methods: tuple[str, ...] = ()
    digits: int = 2
    form: str = "ci"
    variants: tuple[tuple[str, str], ...] = ()  # (root, experiment) rows after the first


def parse_marker(kind: str, text: str, where: str) -> Source:
    """The marker's words -> a Source; a malformed marker is one line naming the page."""
    words = text.split()
    positional = [w for w in words if "=" not in w]
    options = dict(w.split("=", 1) for w in words if "=" in w)
    expected = 2 if kind == "table" else 3
    allowed = {"table": {"shots", "steps", "methods", "digits", "variants"},
               "value": {"shots", "steps", "digits", "form"}}[kind]
    unknown = sorted(set(options) - allowed)
    if len(positional) != expected or unknown or "shots" not in options or "steps" not in options:
        raise UserError(f"{where}: bad marker '<!-- {kind}: {text} -->'; expected "
                        + ("ROOT EXPERIMENT shots=K steps=S[,S] [methods=a,b] [digits=N]"
                           if kind == "table" else
                           "ROOT EXPERIMENT METHOD shots=K steps=S [digits=N] "
                           f"[form={'|'.join(FORMS)}]"))
    try:
        steps = tuple(int(s) for s in options["steps"].split(","))
        source = Source(kind, positional[0], positional[1],
                        positional[2] if kind == "value" else None, int(options["shots"]),
                        steps, tuple(m for m in options.get("methods", "").split(",") if m),
                        int(options.get("digits", 2)), options.get("form", "ci"),
                        tuple(tuple(v.split(":", 1)) for v in options.get("variants", "").split(",")
                              if v))
    except ValueError as err:
        raise UserError(f"{where}: bad marker '<!-- {kind}: {text} -->': {err}") from None
    if source.variants and (len(source.methods) != 1
                            or any(len(v) != 2 for v in source.variants)):
        raise UserError(f"{where}: bad marker '<!-- {kind}: {text} -->': variants=ROOT:EXPERIMENT"
                        ",... needs exactly one method (methods=M)")
    if source.form not in FORMS or (kind == "value" and len(steps) != 1):
        raise UserError(f"{where}: bad marker '<!-- {kind}: {text} -->': a value has one step "
                        f"and a form among {', '.join(FORMS)}")
    return source


class Summaries:
    """Each (root, experiment)'s summary, computed once from its verified records."""

    def __init__(self, repo: Path) -> None:
        self.repo = repo
        self._cache: dict[tuple[str, str], pd.DataFrame] = {}
        self._iterations: dict[tuple[str, str], dict[str, list[int]]] = {}

    def get(self, root: str, experiment: str) -> pd.DataFrame:
        key = (root, experiment)
        if key not in self._cache:
            from maml_bench.experiments import EXPERIMENTS
            from maml_bench.report.experiment import experiment_records, experiment_runs
            from maml_bench.report.tables import summarize

            spec = EXPERIMENTS.get(experiment)
            roots = self.roots(root)
            parts = []
            for i, folder in enumerate(roots):  # pooled: each folder's tasks are other tasks
                part = experiment_records(experiment, self.repo / folder)
                parts.append(part.assign(task=part["task"] + i * TASK_OFFSET))
            records = pd.concat(parts, ignore_index=True)
            self._cache[key] = summarize(records, spec.paper_frame(), include_paper_only=True)
            runs = pd.concat([experiment_runs(experiment, self.repo / r) for r in roots])
            self._iterations[key] = {
                str(m): sorted({int(n) for n in group.dropna()})
                for m, group in runs.groupby("method", sort=False)["iterations"]}
        return self._cache[key]

    def roots(self, root: str) -> list[str]:
        """The folders a ROOT names: itself, or with a `*`, every matching folder (pooled)."""
        if "*" not in root:
            return [root]
        found = sorted(str(p.relative_to(self.repo)) for p in self.repo.glob(root) if p.is_dir())
        if not found:
            raise UserError(f"no folder matches {root} under {self.repo}")
        return found

    def iterations(self, root: str, experiment: str) -> dict[str, list[int]]:
        """method -> the meta-iterations its runs trained for (after `get`)."""
        return self._iterations[(root, experiment)]


def _row(summary: pd.DataFrame, method: str, shots: int, step: int) -> pd.Series | None:
    hit = summary[(summary["method"] == method) & (summary["shots"] == shots)
                  & (summary["steps"] == step) & (summary["n"] > 0)]
    return hit.iloc[0] if len(hit) else None


def _number(value: float, digits: int) -> str:
    from maml_bench.report.tables import format_number  # tiny and huge values as the tables

    return format_number(f"{{:.{digits}f}}", value)


def format_value(row: pd.Series | None, digits: int, form: str) -> str:
    """One result as prose shows it: "99.37 ± 0.32" (ci), "99.37" (mean), "99.05-99.69"
    (range: the interval's ends)."""
    if row is None:
        return _DASH
    if form == "mean":
        return _number(row["mean"], digits)
    if form == "range":
        return f"{_number(row['ci_low'], digits)}-{_number(row['ci_high'], digits)}"
    half = (row["ci_high"] - row["ci_low"]) / 2
    text = f"{_number(row['mean'], digits)} ± {_number(half, digits)}"
    if row["nonfinite"] > 0:  # as the experiment's tables: say how many tasks diverged
        text += f" ({int(row['nonfinite'])}/{int(row['n'])} non-finite)"
    return text


def _marked(row: pd.Series | None, digits: int) -> str:
    """A table cell: the value, with ✓ / ✗ where the experiment's own tables mark it (paper
    scale, a paper value at this step, an interval narrow enough to tell)."""
    return format_value(row, digits, "ci") + ("" if row is None else comparison_mark(row))


def _trained(iterations: dict[str, list[int]], methods: list[str], labels: dict[str, str]
             ) -> str:
    """"60,000 meta-iterations", or per method where they differ."""
    counts = {m: iterations[m] for m in methods if iterations.get(m)}
    if not counts:
        return ""
    if len({tuple(c) for c in counts.values()}) == 1:
        return f" ({_count(next(iter(counts.values())))} meta-iterations)"
    return " (meta-iterations: " + "; ".join(
        f"{labels.get(m, m)} {_count(c)}" for m, c in counts.items()) + ")"


def _count(values: list[int]) -> str:
    return "/".join(f"{v:,}" for v in values)


def _paper_cell(paper: pd.DataFrame, source: Source) -> str:
    """The paper's value at the last step it prints; its values at each shown step, separated
    by " / ", where it prints several of them."""
    if paper.empty:
        return _DASH
    shown = paper[paper["steps"].isin(source.steps)].sort_values("steps")
    if len(shown) > 1:
        at = {int(r["steps"]): _number(r["paper"], source.digits) for _, r in shown.iterrows()}
        return " / ".join(at.get(s, _DASH) for s in source.steps)
    last = paper.sort_values("steps").iloc[-1]
    cell = _number(last["paper"], source.digits)
    if not pd.isna(last["paper_ci"]):
        cell += f" ± {_number(last['paper_ci'], source.digits)}"
    if int(last["steps"]) not in source.steps:
        cell += f" ({steps_name(int(last['steps']))})"
    return cell


def render_table(summary: pd.DataFrame, source: Source,
                 iterations: dict[str, list[int]] | None = None) -> str:
    """Method | one column per step | the paper's value(s), and a caption naming the scale."""
    from maml_bench.experiments import EXPERIMENTS
    from maml_bench.report.tables import describe_scales

    labels = EXPERIMENTS.get(source.experiment).labels()
    rows = summary[summary["shots"] == source.shots]
    ran = rows[rows["n"] > 0]
    # by default the methods that ran; named ones may include a paper-only row
    methods = list(source.methods) or list(dict.fromkeys(ran["method"]))
    missing = [m for m in methods if m not in set(rows["method"])]
    if missing or not methods:
        raise UserError(f"{source.root}/{source.experiment}: no records or paper values for "
                        f"{', '.join(missing) or 'any method'} at K={source.shots}")
    step_names = [steps_name(s) for s in source.steps]
    lines = ["| method | " + " | ".join(step_names) + " | paper |",
             "|---" * (len(step_names) + 2) + "|"]
    for method in methods:
        cells = [_marked(_row(rows, method, source.shots, s), source.digits)
                 for s in source.steps]
        paper_cell = _paper_cell(rows[(rows["method"] == method) & rows["paper"].notna()],
                                 source)
        lines.append(f"| {labels.get(method, method)} | " + " | ".join(cells)
                     + f" | {paper_cell} |")
    scales = dict(zip(ran["method"], ran["scale"], strict=False))
    tasks = sorted({int(n) for n in ran[ran["method"].isin(methods)]["n"]})
    trained = _trained(iterations or {}, methods, labels)
    caption = (f"Scale: {describe_scales({m: scales[m] for m in methods if m in scales})}"
               f"{trained}; "
               f"{'/'.join(map(str, tasks))} test tasks; ± the 95% interval over test tasks; "
               "✓ / ✗: the paper's value inside / outside it (paper scale only); "
               f"from `{source.root}/{source.experiment}`.")
    return "\n" + "\n".join(lines) + "\n\n" + caption + "\n"


def render_variants(source: Source, summaries: Summaries) -> str:
    """One method across experiments (protocol variants): a row each, as `maml-bench compare`."""
    (method,) = source.methods
    step_names = [steps_name(s) for s in source.steps]
    lines = ["| experiment | " + " | ".join(step_names) + " | paper |",
             "|---" * (len(step_names) + 2) + "|"]
    scales = {}
    for root, experiment in ((source.root, source.experiment), *source.variants):
        rows = summaries.get(root, experiment)
        rows = rows[rows["shots"] == source.shots]
        if rows[(rows["method"] == method) & (rows["n"] > 0)].empty:
            raise UserError(f"{root}/{experiment}: no records for {method} at K={source.shots}")
        cells = [_marked(_row(rows, method, source.shots, s), source.digits)
                 for s in source.steps]
        paper = _paper_cell(rows[(rows["method"] == method) & rows["paper"].notna()], source)
        its = summaries.iterations(root, experiment).get(method, [])
        label = f"`{experiment}` ({_count(its)} meta-iterations)" if its else f"`{experiment}`"
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {paper} |")
        ran = rows[(rows["method"] == method) & (rows["n"] > 0)]
        scales[experiment] = str(ran["scale"].iloc[0])
        tasks = int(ran["n"].iloc[0])
    from maml_bench.report.tables import describe_scales

    caption = (f"{method}, K = {source.shots}. Scale: {describe_scales(scales)}; {tasks} test "
               "tasks; ± the 95% interval over test tasks; ✓ / ✗: the paper's value inside / "
               f"outside it (paper scale only); from `{source.root}`.")
    return "\n" + "\n".join(lines) + "\n\n" + caption + "\n"


def render(source: Source, summaries: Summaries) -> str:
    if source.variants:
        return render_variants(source, summaries)
    summary = summaries.get(source.root, source.experiment)
    if source.kind == "table":
        return render_table(summary, source, summaries.iterations(source.root, source.experiment))
    assert source.method is not None
    row = _row(summary, source.method, source.shots, source.steps[0])
    if row is None:
        raise UserError(f"{source.root}/{source.experiment}: no records for {source.method} "
                        f"at K={source.shots}, {steps_name(source.steps[0])}")
    if source.form == "scale":
        its = summaries.iterations(source.root, source.experiment).get(source.method, [])
        return str(row["scale"]) + (f", {_count(its)} meta-iterations" if its else "")
    if source.form == "spread":
        means = [_row(summaries.get(r, source.experiment), source.method, source.shots,
                      source.steps[0]) for r in summaries.roots(source.root)]
        values = [m["mean"] for m in means if m is not None]
        return f"{_number(min(values), source.digits)}-{_number(max(values), source.digits)}"
    if source.form == "marked":
        return _marked(row, source.digits)
    if source.form == "vs-paper":
        paper = summary[(summary["method"] == source.method) & (summary["shots"] == source.shots)
                        & (summary["steps"] == source.steps[0]) & summary["paper"].notna()]
        text = _marked(row, source.digits)
        if len(paper):
            text += " against " + _paper_cell(paper, source)
        return text
    return format_value(row, source.digits, source.form)


# --- numbers from committed results files (benchmarks, profiles): include and cell markers ---

#: the options each file marker takes
FILE_OPTIONS = {
    "include": {"after", "table", "columns", "where"},
    "cell": {"after", "table", "row", "where", "column", "over", "key", "match", "nth", "form",
             "scale", "digits", "sig", "sep", "suffix"},
}
CELL_FORMS = ("one", "range", "min", "max")
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?(?:[eE][-+]?\d+)?")


class MarkerError(Exception):
    """What is wrong with one marker; `regenerate` names the page and the marker."""


@dataclass(frozen=True)
class FileMarker:
    """An include or cell marker: the file and its options."""

    kind: str  # include | cell
    path: str
    options: dict[str, str] = field(default_factory=dict)

    def int_option(self, name: str, default: int | None = None) -> int | None:
        if name not in self.options:
            return default
        try:
            return int(self.options[name])
        except ValueError:
            raise MarkerError(f"{name}={self.options[name]} is not a whole number") from None


@dataclass
class Table:
    """A table read from a results file: header, rows of cell texts and, for a Markdown table,
    its lines as written."""

    header: list[str]
    rows: list[list[str]]
    lines: list[str] = field(default_factory=list)

    def column(self, name: str) -> int:
        names = [_plain(h) for h in self.header]
        if _plain(name) not in names:
            raise MarkerError(f"no column '{name}' (columns: {', '.join(names)})")
        return names.index(_plain(name))


def parse_file_marker(kind: str, text: str) -> FileMarker:
    """'PATH key=value ...' -> a FileMarker; words with spaces are quoted ("a b")."""
    try:
        words = shlex.split(text)
    except ValueError as err:
        raise MarkerError(str(err)) from None
    if not words or "=" in words[0]:
        raise MarkerError("expected a results file (a path from the repository) first")
    if any("=" not in w for w in words[1:]):
        raise MarkerError("expected PATH then key=value options")
    options = dict(w.split("=", 1) for w in words[1:])
    unknown = sorted(set(options) - FILE_OPTIONS[kind])
    if unknown:
        raise MarkerError(f"unknown option(s) {', '.join(unknown)}; {kind} takes "
                          + ", ".join(sorted(FILE_OPTIONS[kind])))
    return FileMarker(kind, words[0], options)


def _plain(text: str) -> str:
    """A cell as compared: without Markdown emphasis, code quotes and outer spaces."""
    return text.replace("**", "").replace("`", "").strip()


def _split_row(line: str) -> list[str]:
    cells = re.split(r"(?<!\\)\|", line.strip().strip("|"))
    return [c.strip() for c in cells]


def section(text: str, after: str | None) -> list[str]:
    """A file's lines; with `after`, those of the section under the first heading that starts
    with it (up to the next heading of its level or above)."""
    lines = text.splitlines()
    if after is None:
        return lines
    start = next((i for i, line in enumerate(lines) if line.startswith("#")
                  and line.lstrip("#").strip().startswith(after)), None)
    if start is None:
        raise MarkerError(f"no heading starting with '{after}'")
    level = len(lines[start]) - len(lines[start].lstrip("#"))
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("#")
                and len(lines[i]) - len(lines[i].lstrip("#")) <= level), len(lines))
    return lines[start + 1:end]


def markdown_tables(text: str, after: str | None = None) -> list[Table]:
    """The Markdown tables of a file (or of its section under `after`), in order."""
    tables, block = [], []
    for line in [*section(text, after), ""]:
        if line.lstrip().startswith("|"):
            block.append(line)
            continue
        if len(block) >= 2 and set(block[1].replace("|", "").strip()) <= set("-: "):
            tables.append(Table(_split_row(block[0]), [_split_row(b) for b in block[2:]], block))
        block = []
    return tables


class ResultFiles:
    """The committed files markers read, each parsed once; paths stay inside the repository."""

    def __init__(self, repo: Path) -> None:
        self.repo = repo.resolve()
        self._text: dict[str, str] = {}

    def text(self, path: str) -> str:
        if path not in self._text:
            full = (self.repo / path).resolve()
            if not full.is_relative_to(self.repo):
                raise MarkerError(f"{path} is outside the repository")
            if not full.is_file():
                raise MarkerError(f"no file {path} in {self.repo}")
            try:
                self._text[path] = full.read_text(encoding="utf-8")
            except UnicodeDecodeError:
                raise MarkerError(f"{path} is not a text file") from None
        return self._text[path]

    def table(self, marker: FileMarker) -> Table:
        """The marker's table: a CSV file whole, or one Markdown table (after=, table=)."""
        text = self.text(marker.path)
        if marker.path.endswith(".csv"):
            header, *rows = list(csv.reader(text.splitlines())) or [[]]
            return Table(header, rows)
        tables = markdown_tables(text, marker.options.get("after"))
        number = marker.int_option("table", 1)
        assert number is not None
        if not 1 <= number <= len(tables):
            raise MarkerError(f"{marker.path} has {len(tables)} table(s)"
                              + (f" under '{marker.options['after']}'"
                                 if "after" in marker.options else "") + f", not a table {number}")
        return tables[number - 1]

    def json_value(self, path: str, key: str) -> object:
        try:
            value = json.loads(self.text(path))
        except json.JSONDecodeError as err:
            raise MarkerError(f"{path} is not JSON: {err}") from None
        for part in key.split("."):
            if isinstance(value, dict) and part in value:
                value = value[part]
            elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
                value = value[int(part)]
            else:
                raise MarkerError(f"{path} has no key {key} (at '{part}')")
        return value


def _filters(text: str) -> list[tuple[str, str]]:
    """'COL=V,COL2=V2' -> [(COL, V), ...]."""
    pairs = [p.split("=", 1) for p in text.split(",") if p]
    if any(len(p) != 2 for p in pairs) or not pairs:
        raise MarkerError(f"where={text}: expected COLUMN=VALUE[,COLUMN=VALUE]")
    return [(c, v) for c, v in pairs]


def select_rows(table: Table, marker: FileMarker) -> list[list[str]]:
    """The rows whose first column is `row`, and whose `where` columns match their globs."""
    wanted = _filters(marker.options["where"]) if "where" in marker.options else []
    if "row" in marker.options:
        wanted.append((_plain(table.header[0]), marker.options["row"]))
    checks = [(table.column(c), v) for c, v in wanted]
    return [r for r in table.rows if len(r) == len(table.header)
            and all(fnmatch.fnmatchcase(_plain(r[i]), v) for i, v in checks)]


def _token(text: str, nth: int) -> str:
    """The nth number in a text, as written ("1,273")."""
    found = _NUMBER.findall(_plain(text))
    if len(found) < nth:
        raise MarkerError(f"'{text}' holds no number {nth}" if nth > 1 else
                          f"'{text}' is not a number")
    return found[nth - 1]


def _number_in(item: object, nth: int = 1) -> float:
    """The nth number in a cell or match, or a JSON number."""
    if isinstance(item, int | float) and not isinstance(item, bool):
        return float(item)
    if not isinstance(item, str):
        raise MarkerError(f"{item!r} is not a number")
    return float(_token(item, nth).replace(",", ""))


def _decimals(value: float, sig: int) -> int:
    """The decimals that show `sig` significant digits of `value` (below 0: tens, hundreds)."""
    return sig - 1 - math.floor(math.log10(abs(value))) if value else sig - 1


def format_cell(value: float, options: dict[str, str]) -> str:
    """A number as prose shows it: scale=, digits= or sig=, sep=, (no suffix)."""
    try:  # scale=100, or a fraction: scale=1/3600 (seconds in hours)
        top, _, bottom = options.get("scale", "1").partition("/")
        value *= float(top) / float(bottom or 1)
        sig = int(options["sig"]) if "sig" in options else None
        digits = int(options.get("digits", 2))
    except ValueError as err:
        raise MarkerError(str(err)) from None
    if sig is not None:  # rounded first: 9.96 at sig=2 is "10", not "10.0"; 135,703 at 4 135,700
        value = round(value, _decimals(value, sig))
        digits = max(0, _decimals(value, sig))
    sep = options.get("sep", "")
    if sep not in ("", ","):
        raise MarkerError(f"sep={sep}: only sep=, (a thousands separator)")
    return f"{value:{sep}.{digits}f}"


def _items(marker: FileMarker, files: ResultFiles) -> list[tuple[object, object | None]]:
    """What the cell marker selects, each with its divisor (over=) or None: the regex's matches
    (its first group), one JSON value, or a column of the selected table rows."""
    over = marker.options.get("over")
    if "match" in marker.options:
        text = "\n".join(section(files.text(marker.path), marker.options.get("after")))
        try:
            found = list(re.finditer(marker.options["match"], text))
        except re.error as err:
            raise MarkerError(f"match={marker.options['match']}: {err}") from None
        return [(m.group(1) if m.re.groups else m.group(0), None) for m in found]
    if marker.path.endswith(".json"):
        if "key" not in marker.options:
            raise MarkerError("a JSON cell needs key=a.b.c (or match=REGEX)")
        divisor = None if over is None else files.json_value(marker.path, over)
        return [(files.json_value(marker.path, marker.options["key"]), divisor)]
    if "column" not in marker.options or not {"row", "where"} & set(marker.options):
        raise MarkerError("a table cell needs column=C and row=LABEL or where=COL=V")
    table = files.table(marker)
    column = table.column(marker.options["column"])
    divisor = None if over is None else table.column(over)
    return [(row[column], None if divisor is None else row[divisor])
            for row in select_rows(table, marker)]


def render_cell(marker: FileMarker, files: ResultFiles) -> str:
    """One number (form=one), or the lowest-highest of several (range), with its suffix."""
    form = marker.options.get("form", "one")
    if form not in CELL_FORMS:
        raise MarkerError(f"form={form}: one of {', '.join(CELL_FORMS)}")
    items = _items(marker, files)
    what = "match" if "match" in marker.options else "row"
    if not items:
        raise MarkerError(f"no {what} matches")
    if form == "one" and len(items) != 1:
        raise MarkerError(f"{len(items)} {what}s match; narrow it down or say "
                          "form=range|min|max")
    nth = marker.int_option("nth")
    suffix = marker.options.get("suffix", "")
    formatted = {"digits", "sig", "scale", "over", "sep"} & set(marker.options)
    if form == "one" and not formatted and isinstance(items[0][0], str):
        text = items[0][0]  # as written: the cell ("2.33x", "whole") or its nth number
        return (_plain(text) if nth is None else _token(text, nth)) + suffix
    values = []
    for item, divisor in items:
        value = _number_in(item, nth or 1)
        if divisor is not None:
            if not (below := _number_in(divisor)):
                raise MarkerError(f"over={marker.options['over']} is 0")
            value /= below
        values.append(value)
    low, high = (format_cell(v, marker.options) for v in (min(values), max(values)))
    text = {"one": low, "min": low, "max": high}.get(form, low if low == high
                                                      else f"{low}-{high}")
    return text + suffix


def render_include(marker: FileMarker, files: ResultFiles) -> str:
    """A Markdown table of a results file: as written, or its named columns / matching rows."""
    if marker.path.endswith((".csv", ".json")):
        raise MarkerError("include takes a Markdown file's table")
    table = files.table(marker)
    lines = table.lines
    if {"columns", "where"} & set(marker.options):
        names = [c for c in marker.options.get("columns", "").split(",") if c] or table.header
        picked = [table.column(c) for c in names]
        rows = select_rows(table, marker) if "where" in marker.options else table.rows
        lines = ["| " + " | ".join(table.header[i] for i in picked) + " |",
                 "|---" * len(picked) + "|"]
        lines += ["| " + " | ".join(r[i] for i in picked) + " |" for r in rows
                  if len(r) == len(table.header)]
    return "\n" + "\n".join(lines) + "\n\n"  # a blank line: `<!-- end -->` is no table row


def render_file_marker(kind: str, text: str, files: ResultFiles) -> str:
    marker = parse_file_marker(kind, text)
    return render_include(marker, files) if kind == "include" else render_cell(marker, files)


def regenerate(text: str, summaries: Summaries, where: str,
               files: ResultFiles | None = None) -> str:
    """The page with every marked number recomputed."""
    files = files or ResultFiles(summaries.repo)

    def replace(match: re.Match[str]) -> str:
        kind, spec = match.group(1), match.group(2)
        if kind in FILE_OPTIONS:
            try:
                body = render_file_marker(kind, spec, files)
            except MarkerError as err:
                raise UserError(f"{where}: bad marker '<!-- {kind}: {spec} -->': {err}") from None
        else:
            body = render(parse_marker(kind, spec, where), summaries)
        return f"<!-- {kind}: {spec} -->{body}<!-- end -->"

    return MARKER.sub(replace, text)


def pages(repo: Path) -> list[Path]:
    """The pages that may hold generated numbers: README.md and docs/*.md."""
    found = [repo / "README.md"] if (repo / "README.md").is_file() else []
    return found + sorted((repo / "docs").glob("*.md"))


def sync_docs(repo: Path, write: bool, report: Callable[[str], None] = print) -> list[Path]:
    """Regenerate every page's numbers; -> the pages whose committed text differs. With
    `write`, those pages are rewritten (atomically)."""
    from maml_bench.results import atomic_write_text

    summaries, files = Summaries(repo), ResultFiles(repo)
    stale = []
    for page in pages(repo):
        text = page.read_text(encoding="utf-8")
        new = regenerate(text, summaries, str(page.relative_to(repo)), files)
        if new != text:
            stale.append(page)
            if write:
                atomic_write_text(page, new)
            report(f"{'rewrote' if write else 'stale'}: {page.relative_to(repo)}")
    return stale

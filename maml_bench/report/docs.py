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
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from maml_bench.errors import UserError
from maml_bench.report.tables import comparison_mark, steps_name

#: how a value reads: ci "99.37 ± 0.32"; marked "99.37 ± 0.32 ✗" (as the tables); mean
#: "99.37"; range "99.05-99.69" (the interval's ends); vs-paper "99.37 ± 0.32 ✗ against
#: 98.70 ± 0.40"; scale "paper, 60,000 meta-iterations"; spread "99.10-99.40" (a pooled
#: ROOT's lowest and highest folder mean)
FORMS = ("ci", "marked", "mean", "range", "vs-paper", "scale", "spread")
MARKER = re.compile(r"<!-- (table|value): ([^\n]*?) -->(.*?)<!-- end -->", re.DOTALL)
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


def regenerate(text: str, summaries: Summaries, where: str) -> str:
    """The page with every marked number recomputed."""

    def replace(match: re.Match[str]) -> str:
        kind, spec = match.group(1), match.group(2)
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

    summaries = Summaries(repo)
    stale = []
    for page in pages(repo):
        text = page.read_text(encoding="utf-8")
        new = regenerate(text, summaries, str(page.relative_to(repo)))
        if new != text:
            stale.append(page)
            if write:
                atomic_write_text(page, new)
            report(f"{'rewrote' if write else 'stale'}: {page.relative_to(repo)}")
    return stale

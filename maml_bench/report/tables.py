"""Summary tables: our mean and CI over test tasks next to the paper's number.

Statistics are over test tasks, as in the paper: the fixed test tasks are the same for every
seed, so each task's value is first averaged over seeds and the interval is taken over tasks
(n = number of tasks). The spread between training seeds is reported beside it: the min and max
of the per-seed means (`seed_min`, `seed_max`, each seed's mean over test tasks) and `seed_std`.

Every row carries the scale its runs were made at (`scale`: "paper", "quick", ..., "custom" for
settings changed with --set). Only paper-scale rows are compared with the paper (`paper_in_ci`,
the ✓ / ✗ marks); other rows keep the paper's value for orientation, and every caption says
which scale the table is at.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from maml_bench.results import atomic_write_text
from maml_bench.stats import ci_label, mean_ci, mean_keep_nan

#: Columns of `summarize`'s output and of the written CSV, in this order.
SUMMARY_COLUMNS = [
    "experiment",
    "method",
    "scale",  # the runs' scale ("paper", "quick", "custom", ...); see report/experiment.py
    "shots",
    "steps",
    "metric",
    "paper",
    "paper_ci",
    "mean",
    "ci_low",
    "ci_high",
    "n",
    "median",  # over tasks, NaN ignored: robust to a few diverged tasks
    "nonfinite",  # tasks whose value is NaN or inf (diverged fine-tuning)
    "n_seeds",
    "seed_min",  # min / max over training seeds of each seed's mean over test tasks
    "seed_max",
    "seed_std",
    "ci_method",
    "paper_in_ci",
]
PAPER_COLUMNS = ["experiment", "method", "shots", "steps", "metric", "paper", "paper_ci"]
_KEYS = ["experiment", "method", "shots", "steps", "metric"]
_GROUP = ["experiment", "method", "shots", "step", "metric"]
_DASH = "–"
SEEDS_HEADER = "seeds: min-max"  # wide tables: "<N steps> seeds: min-max"
PAPER_SCALE = "paper"
#: The scale of records whose runs were not labelled (no `scale` column): never compared.
UNKNOWN_SCALE = "unknown"


def _check_paper(paper: pd.DataFrame) -> pd.DataFrame:
    missing = [c for c in PAPER_COLUMNS if c not in paper.columns and c != "paper_ci"]
    if missing:
        raise ValueError(f"paper frame lacks columns {missing}")
    paper = paper.copy()
    if "paper_ci" not in paper.columns:
        paper["paper_ci"] = np.nan
    paper = paper[PAPER_COLUMNS].astype({"shots": "int64", "steps": "int64"})
    paper = paper.astype({"paper": "float64", "paper_ci": "float64"})
    if paper.duplicated(_KEYS).any():
        raise ValueError("paper frame holds duplicate (experiment, method, shots, steps, metric)")
    return paper


def summarize(
    records: pd.DataFrame,
    paper: pd.DataFrame | None,
    level: float = 0.95,
    ci: str = "normal",
    *,
    include_paper_only: bool = False,
) -> pd.DataFrame:
    """One row per (experiment, method, shots, steps, metric) with SUMMARY_COLUMNS.

    `include_paper_only` adds rows for paper numbers we have no records for (n = 0, NaN mean),
    restricted to the experiments present in `records`, so that tables can show a paper
    baseline that was not run. The CI level is kept in `result.attrs["ci_level"]`.
    """
    mean_ci([], level=level, method=ci)  # validates `level` and `ci` before any work
    paper = _check_paper(pd.DataFrame(columns=PAPER_COLUMNS) if paper is None else paper)

    rows = []
    if len(records):
        per_task = mean_keep_nan(records, [*_GROUP, "task"]).rename("value").reset_index()
        per_seed = mean_keep_nan(records, [*_GROUP, "seed"]).rename("value").reset_index()
        seed_groups = dict(list(per_seed.groupby(_GROUP, sort=False)["value"]))
        for key, values in per_task.groupby(_GROUP, sort=False)["value"]:
            mean, low, high, n = mean_ci(values.to_numpy(), level=level, method=ci)
            seed_means = seed_groups[key].to_numpy()
            rows.append(
                dict(zip(_KEYS, key, strict=True))
                | {
                    "mean": mean,
                    "ci_low": low,
                    "ci_high": high,
                    "n": n,
                    "median": float(np.nanmedian(values)) if values.notna().any() else np.nan,
                    "nonfinite": int((~np.isfinite(values.to_numpy())).sum()),
                    "n_seeds": len(seed_means),
                    **_seed_range(seed_means),
                    # np.std propagates NaN; one seed gives 0, as documented.
                    "seed_std": _std(seed_means),
                }
            )
    stat_cols = ["mean", "ci_low", "ci_high", "n", "median", "nonfinite", "n_seeds",
                 "seed_min", "seed_max", "seed_std"]
    ours = pd.DataFrame(rows, columns=[*_KEYS, *stat_cols])
    ours = ours.astype({"shots": "int64", "steps": "int64", "n": "int64", "n_seeds": "int64"})
    scales = method_scales(records)
    ours["scale"] = [scales[(e, m)] for e, m in zip(ours["experiment"], ours["method"],
                                                     strict=True)]

    how = "outer" if include_paper_only else "left"
    if include_paper_only:
        paper = paper[paper["experiment"].isin(ours["experiment"].unique())]
    out = ours.merge(paper, on=_KEYS, how=how, validate="one_to_one")
    out["n"] = out["n"].fillna(0).astype("int64")
    out["nonfinite"] = out["nonfinite"].fillna(0).astype("int64")
    out["n_seeds"] = out["n_seeds"].fillna(0).astype("int64")
    out["ci_method"] = ci

    # A run below (or other than) the paper's protocol is not a test of the paper's number, and
    # an interval wider than the value cannot tell (`too_wide`).
    valid = (out["paper"].notna() & out["ci_low"].notna() & out["ci_high"].notna()
             & (out["scale"] == PAPER_SCALE) & ~too_wide(out))
    inside = (out["ci_low"] <= out["paper"]) & (out["paper"] <= out["ci_high"])
    out["paper_in_ci"] = inside.astype("boolean").mask(~valid, pd.NA)

    # Paper methods keep the paper's row order; methods the paper lacks follow alphabetically.
    paper_order = list(dict.fromkeys(paper["method"]))
    extra = sorted(set(out["method"]) - set(paper_order))
    rank = {m: i for i, m in enumerate(paper_order + extra)}
    out["_rank"] = out["method"].map(rank)
    out = out.sort_values(["experiment", "_rank", "shots", "steps", "metric"], kind="stable")
    out = out[SUMMARY_COLUMNS].reset_index(drop=True)
    out.attrs["ci_level"] = level
    return out


#: An interval whose half width is this fraction of |mean| or more cannot say whether the paper's
#: value agrees (a mean of 185 +- 362 holds nearly anything): such a cell is not marked ✓ / ✗.
TOO_WIDE = 0.5


def too_wide(summary: pd.DataFrame) -> pd.Series:
    """Rows whose interval is too wide to compare a value with (see TOO_WIDE)."""
    half = (summary["ci_high"] - summary["ci_low"]) / 2
    return (half >= TOO_WIDE * summary["mean"].abs()).fillna(False)


def comparison_mark(row: pd.Series) -> str:
    """" ✓" / " ✗" (the paper's value inside / outside our interval), " (too wide to compare)"
    at the paper's scale when the interval cannot tell (TOO_WIDE), else ""."""
    if not pd.isna(row["paper_in_ci"]):
        return " ✓" if row["paper_in_ci"] else " ✗"
    half = (row["ci_high"] - row["ci_low"]) / 2
    if row["scale"] == PAPER_SCALE and not pd.isna(row["paper"]) and half >= TOO_WIDE * abs(
            row["mean"]):
        return " (too wide to compare)"
    return ""


def method_scales(records: pd.DataFrame) -> dict[tuple[str, str], str]:
    """(experiment, method) -> the scale of its runs: "paper", "quick", ...; a method whose
    seeds ran at several scales reads e.g. "custom+paper" (so it is not paper scale);
    records without a `scale` column are "unknown"."""
    if "scale" not in records.columns:
        keys = records[["experiment", "method"]].drop_duplicates().itertuples(index=False)
        return {(e, m): UNKNOWN_SCALE for e, m in keys}
    scale = records["scale"].fillna(UNKNOWN_SCALE).astype(str)
    grouped = scale.groupby([records["experiment"], records["method"]], sort=False)
    return {key: "+".join(sorted(set(values))) for key, values in grouped}


def describe_scales(scales: dict[str, str]) -> str:
    """The scales of method -> scale as text: "paper", "quick", or, where they differ,
    "paper (maml, fomaml); custom (multitask-mean)" (paper first, methods in the given order)."""
    groups: dict[str, list[str]] = {}
    for method, scale in scales.items():
        groups.setdefault(scale, []).append(method)
    if len(groups) == 1:
        return next(iter(groups))
    order = sorted(groups, key=lambda scale: scale != PAPER_SCALE)  # stable: paper first
    return "; ".join(f"{scale} ({', '.join(groups[scale])})" for scale in order)


def scale_note(scales: dict[str, str]) -> str:
    """Sentences for a caption: the scale of method -> scale, and whether ✓ / ✗ apply."""
    if not scales:
        return ""
    text = describe_scales(scales)
    if all(s == PAPER_SCALE for s in scales.values()):
        return "Scale: paper."
    terms = []
    if any("custom" in s.split("+") for s in scales.values()):
        terms.append("custom: settings changed with --set")
    if any("+" in s for s in scales.values()):
        terms.append("a+b: seeds run at different scales")
    meaning = f" ({'; '.join(terms)})" if terms else ""
    if PAPER_SCALE not in scales.values():
        return (f"Scale: {text}{meaning}. NOT the paper's protocol: the paper's values are shown "
                "for orientation only, not compared (no ✓ / ✗).")
    return (f"Scales: {text}{meaning}. Not all at the paper's protocol: only paper-scale rows "
            "are compared with the paper (✓ / ✗).")


def _summary_scales(summary: pd.DataFrame) -> dict[str, str]:
    """Method -> scale of the rows we have records for (paper-only rows have none)."""
    ran = summary[summary["n"] > 0]
    return dict(zip(ran["method"], ran["scale"], strict=True))


def _seed_range(seed_means: np.ndarray) -> dict[str, float]:
    # min ignores a diverged seed (how good the good ones are); max keeps it (NaN shows it).
    finite = seed_means[~np.isnan(seed_means)]
    low = float(finite.min()) if finite.size else np.nan
    high = float(seed_means.max()) if finite.size == seed_means.size else np.nan
    return {"seed_min": low, "seed_max": high}


def _std(values: np.ndarray) -> float:
    with np.errstate(invalid="ignore", over="ignore"):  # inf - inf: NaN on purpose
        return float(np.std(values, ddof=0))


def steps_name(steps: int) -> str:
    return f"{steps} step" if steps == 1 else f"{steps} steps"


def format_number(fmt: str, value: float) -> str:
    # A diverged mean (1e20) in fixed notation would swamp the table; a tiny one (an oracle's
    # 0.0012) would read as 0.00.
    if np.isfinite(value) and (abs(value) >= 1e4 or 0 < abs(value) < 0.01):
        return f"{value:.2g}"
    return fmt.format(value)


def format_table(
    summary: pd.DataFrame,
    shots: int,
    steps: list[int],
    method_labels: dict[str, str] | None = None,
    metric_fmt: str = "{:.2f}",
    *,
    metric: str | None = None,
    experiment: str | None = None,
    method_steps: dict[str, int] | None = None,
) -> pd.DataFrame:
    """Wide table for one shot setting: a `method` column, then per step "<N step(s)> ours",
    "<N step(s)> seeds: min-max" and "<N step(s)> paper". Ours reads "0.67 ± 0.05 ✓" (± = CI
    half width over test tasks; ✓ / ✗ = paper value inside / outside our CI, paper-scale rows
    only); seeds reads "0.55–0.80 (3 seeds)", the range of the per-seed means, or "1 seed";
    missing values read "–". Rows keep the summary's order.

    `method_steps` (with one step in `steps`): each method at its own protocol's last step,
    method -> step, the others at steps[0]; the table then has a "steps" column saying which
    step each row is, and "ours", "seeds: min-max" and "paper" columns.
    """
    sub = summary[summary["shots"] == shots]
    if metric is not None:
        sub = sub[sub["metric"] == metric]
    if experiment is not None:
        sub = sub[sub["experiment"] == experiment]
    for col in ("metric", "experiment"):
        if sub[col].nunique() > 1:
            raise ValueError(f"summary mixes several {col}s {sorted(sub[col].unique())}; pick one")
    labels = method_labels or {}
    methods = list(dict.fromkeys(sub["method"]))
    if method_steps is not None:
        if len(steps) != 1:
            raise ValueError(f"method_steps needs exactly one default step, got {steps}")
        rows = [{"method": labels.get(m, m), "steps": str(method_steps.get(m, steps[0])),
                 **_cells(sub, m, method_steps.get(m, steps[0]), metric_fmt, "")}
                for m in methods]
        return pd.DataFrame(rows, columns=["method", "steps", "ours", SEEDS_HEADER, "paper"])
    columns = ["method"]
    for s in steps:
        columns += [f"{steps_name(s)} ours", f"{steps_name(s)} {SEEDS_HEADER}",
                    f"{steps_name(s)} paper"]
    rows = []
    for method in methods:
        row = {"method": labels.get(method, method)}
        for s in steps:
            row |= _cells(sub, method, s, metric_fmt, f"{steps_name(s)} ")
        rows.append(row)
    return pd.DataFrame(rows, columns=columns)


def _cells(sub: pd.DataFrame, method: str, step: int, metric_fmt: str, prefix: str
           ) -> dict[str, str]:
    """The ours, seeds and paper cells of `method` after `step` steps, keyed prefix + name."""
    hit = sub[(sub["method"] == method) & (sub["steps"] == step)]
    ours = seeds = paper = _DASH
    if len(hit):
        r = hit.iloc[0]
        if r["n"] > 0:
            half = (r["ci_high"] - r["ci_low"]) / 2
            ours = f"{format_number(metric_fmt, r['mean'])} ± {format_number(metric_fmt, half)}"
            ours += comparison_mark(r)
            if r["nonfinite"] > 0:  # diverged tasks: say how many, not just "nan"
                ours += f" ({int(r['nonfinite'])}/{int(r['n'])} non-finite)"
            seeds = _seeds_cell(r, metric_fmt)
        if not pd.isna(r["paper"]):
            paper = format_number(metric_fmt, r["paper"])
            if not pd.isna(r["paper_ci"]):
                paper += f" ± {format_number(metric_fmt, r['paper_ci'])}"
    return {f"{prefix}ours": ours, f"{prefix}{SEEDS_HEADER}": seeds, f"{prefix}paper": paper}


def _seeds_cell(row: pd.Series, metric_fmt: str) -> str:
    # The interval is over test tasks; this shows whether one training seed is far off.
    n = int(row["n_seeds"])
    if n <= 1:
        return f"{n} seed"
    low, high = (format_number(metric_fmt, row[c]) for c in ("seed_min", "seed_max"))
    return f"{low}–{high} ({n} seeds)"


_LATEX_SPECIAL = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
}
# Applied after escaping, so the math and commands they insert are not escaped again.
_LATEX_UNICODE = {"±": r"$\pm$", "✓": r"\checkmark", "✗": r"$\times$", "–": "--"}


def _latex(text: object) -> str:
    out = "".join(_LATEX_SPECIAL.get(ch, ch) for ch in str(text))
    for uni, tex in _LATEX_UNICODE.items():
        out = out.replace(uni, tex)
    return out


def _ci_note(summary: pd.DataFrame, level: float | None) -> str:
    if level is None:
        level = summary.attrs.get("ci_level", 0.95)
    methods = list(dict.fromkeys(summary["ci_method"].dropna())) or ["normal"]
    label = "; ".join(ci_label(m, level) for m in methods)
    marks = ("✓ / ✗: paper value inside / outside our interval (not marked where the interval's "
             f"half width is {TOO_WIDE:g} x |mean| or more: too wide to compare); "
             if PAPER_SCALE in _summary_scales(summary).values() else "")
    return (
        f"Ours: mean over test tasks (each task averaged over seeds) ± half width of the {label}. "
        "Seeds: min-max over training seeds of each seed's mean over test tasks. "
        "(k/n non-finite): k of the n test tasks diverged to NaN/inf. "
        f"{marks}– : no value."
    )


def write_table(
    summary: pd.DataFrame,
    wide: pd.DataFrame,
    out_dir: Path,
    name: str,
    caption: str,
    *,
    level: float | None = None,
) -> dict[str, Path]:
    """Write `<name>.csv` (long summary), `<name>.md` and `<name>.tex` (wide table) atomically.

    The caption gets the scale of the summary's runs appended (`scale_note`).

    `level` defaults to the one `summarize` stored in `summary.attrs`, else 0.95. The .tex is a
    table float using booktabs rules and `\\checkmark` (amssymb).
    """
    missing = [c for c in SUMMARY_COLUMNS if c not in summary.columns]
    if missing:
        raise ValueError(f"summary lacks columns {missing}")
    out_dir = Path(out_dir)
    note = _ci_note(summary, level)
    # The scale goes into the caption itself, so that a copied table keeps it.
    scale = scale_note(_summary_scales(summary))
    if scale:
        caption = f"{caption.rstrip()}{'' if caption.rstrip()[-1:] in '.!?' else '.'} {scale}"
    paths = {ext: out_dir / f"{name}.{ext}" for ext in ("csv", "md", "tex")}

    atomic_write_text(
        paths["csv"], summary[SUMMARY_COLUMNS].to_csv(index=False, float_format="%.6g")
    )
    # disable_numparse keeps the text as formatted ("2.50", not "2.5").
    markdown = wide.to_markdown(index=False, disable_numparse=True)
    atomic_write_text(paths["md"], f"{caption}\n\n{markdown}\n\n{note}\n")

    tex_frame = wide.map(_latex).rename(columns=_latex)
    latex = tex_frame.style.hide(axis="index").to_latex(
        caption=_latex(f"{caption} {note}"),
        label=f"tab:{name}",
        hrules=True,
        position_float="centering",
        column_format="l" + "r" * (tex_frame.shape[1] - 1),
    )
    header = "% Generated by maml-bench; needs \\usepackage{booktabs,amssymb}.\n"
    atomic_write_text(paths["tex"], header + latex)
    return paths

"""`maml-bench list` (the registered algorithms, benchmarks, experiments and models) and
`maml-bench show` (an experiment's methods, scales and the settings `--set` takes)."""

from __future__ import annotations

import argparse
import dataclasses
import typing
from pathlib import Path

from maml_bench.domains import (
    describe_field,
    domain_of,
    identity_settings,
    readers,
    same_identity,
    show_value,
)
from maml_bench.progress import duration


def add_parser(sub: typing.Any) -> None:
    from maml_bench.experiments import DEFAULT_EXPERIMENT

    p = sub.add_parser("list", help="list registered algorithms, benchmarks, experiments, models")
    p.add_argument("kind", nargs="?", default="all",
                   choices=["all", "algorithms", "benchmarks", "experiments", "models"])
    p.add_argument("--pattern", default="*", help="only ids matching this glob, e.g. 'multi*'")

    p = sub.add_parser("show", help="an experiment's methods, scales and settings (for --set)")
    p.add_argument("experiment", nargs="?", default=DEFAULT_EXPERIMENT)


def cmd_list(args: argparse.Namespace) -> None:
    from maml_bench.algorithms import ALGORITHMS
    from maml_bench.experiments import EXPERIMENTS
    from maml_bench.models import MODELS
    from maml_bench.tasks import BENCHMARKS

    registries = {"algorithms": ALGORITHMS, "benchmarks": BENCHMARKS,
                  "experiments": EXPERIMENTS, "models": MODELS}
    for kind, registry in registries.items():
        if args.kind not in ("all", kind):
            continue
        print(f"{kind}:")
        names = registry.names(args.pattern)
        width = max((len(n) for n in names), default=0) + 2
        for name in names:
            entry = registry.get(name)
            text = getattr(entry, "title", None) or first_sentence(entry.__doc__ or "")
            print(f"  {name:<{width}} {text}")


def _committed_pace(experiment_id: str, method: str) -> tuple[float, Path, dict] | None:
    """The pace of the method's committed run: results/ here, else this checkout's."""
    from maml_bench.report.experiment import measured_pace

    for results in (Path("results"), Path(__file__).resolve().parents[2] / "results"):
        found = measured_pace(experiment_id, results, method) if results.is_dir() else None
        if found:
            return found
    return None


def first_sentence(doc: str) -> str:
    """A docstring's first sentence on one line (its first paragraph if no sentence ends)."""
    import re

    paragraph = " ".join(doc.strip().split("\n\n")[0].split())
    # a full stop before a capital, not the one of "et al." or "App."
    end = re.search(r"(?<!\bal)(?<!\bApp)\.\s+(?=[A-Z])", paragraph)
    return paragraph if end is None else paragraph[:end.start() + 1]


def cmd_show(args: argparse.Namespace) -> None:
    from maml_bench.experiments import EXPERIMENTS

    exp = EXPERIMENTS.get(args.experiment)
    print(f"{exp.id}: {exp.title}\nbenchmark: {exp.benchmark}\n\nmethods (paper-scale seeds):")
    for m in exp.methods:
        own = " ".join(f"{k}={show_value(v)}" for k, v in m.overrides.items())
        print(f"  {m.algorithm:<18} {m.label} ({m.seeds})" + (f"; its settings: {own}" if own
                                                               else ""))
    print("\nscales:")
    first = exp.methods[0]  # MAML (or MAML-TRPO): the method the scales are named for
    pace = _committed_pace(exp.id, first.algorithm)
    for name, scale in exp.scales.items():
        iterations = scale.overrides.get("iterations", getattr(exp.config, "iterations", None))
        guess = (f" [about {duration(pace[0] * iterations)} of {first.label} training]"
                 if pace and iterations and name != "tiny" else "")
        print(f"  {name:<6} {scale.description}{guess}")
    if pace:
        seconds, path, info = pace
        print(f"  (times: {seconds:.3g} s per meta-iteration, measured by the committed run "
              f"{path.parent} ({info['iterations']:,} iterations, {info.get('world_size', 1)} "
              f"process(es), {info.get('date', '?')[:10]}) on the machine that made it; "
              "evaluation not included)")
    print("\nsettings (--set KEY=VALUE; default, then meaning and valid values):")
    docs = _field_docs(type(exp.config))
    methods = {m.algorithm for m in exp.methods}
    fixed = identity_settings(exp.config)  # the experiment's own: not for --set
    for f in dataclasses.fields(exp.config):
        users = set(readers(exp.config, f.name))
        if users and not methods & users:
            continue  # another method's own setting: it would change nothing here
        value = getattr(exp.config, f.name)
        named = {v: w for w, v in (f.metadata.get("words") or {}).items()}  # -1 -> auto
        value = named.get(value, show_value(value))
        doc = " ".join(docs.get(f.name, "").split())
        valid = f"valid: {describe_field(f)}"
        if f.name in fixed:  # a variant of the same thing (the env's time step) is still open
            own = getattr(exp.config, f.name)
            domain = domain_of(f)
            alike = [v for v in getattr(domain, "values", ()) if v != own
                     and same_identity(f.name, v, own)]
            takes = f"takes only {', '.join(alike)}" if alike else "refuses another value"
            valid = (f"fixed: part of what {exp.id} is (--set {takes}; other values are other "
                     "experiments)")
        print(f"  {f.name:<22} {value:<24} {doc}\n  {'':<22} {'':<24} {valid}")
    if exp.notes:
        print(f"\nnotes: {exp.notes}")


def _field_docs(cls: type) -> dict[str, str]:
    """Attribute docstrings (the string under each field) of a dataclass and its bases."""
    import ast
    import inspect

    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        try:
            tree = ast.parse(inspect.getsource(klass))
        except (OSError, TypeError):
            continue
        body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
        for node, nxt in zip(body, body[1:], strict=False):
            if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
                    and isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant)):
                docs[node.target.id] = str(nxt.value.value).strip()
    return docs

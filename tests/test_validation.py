"""Every setting of every registered experiment, and every command-line option, is checked
before any work: a bad value is exit code 2 and one line naming the setting and its valid
domain, with no traceback and nothing written. New experiments are covered without new code."""

from __future__ import annotations

import dataclasses
import math
import uuid

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from maml_bench import cli
from maml_bench.cli.common import NAME, SCALE
from maml_bench.cli.data import CLASSES_PER_SPLIT, IMAGES_PER_CLASS, SYNTH_SEED
from maml_bench.cli.report import CI, LEVEL, SHOTS, STEPS
from maml_bench.cli.run import DEVICE, JOBS, SEEDS
from maml_bench.domains import Domain, Flag, Items, Number, OneOf, Pattern, domain_of
from maml_bench.engines.options import (
    CPUS_PER_RUN,
    ENGINE,
    GPUS_PER_RUN,
    MEM_GB,
    RETRIES,
    TIME_MIN,
)
from maml_bench.experiments import EXPERIMENTS

FIELDS = [(experiment, field.name)
          for experiment in EXPERIMENTS.names()
          for field in dataclasses.fields(EXPERIMENTS.get(experiment).config)]
#: (config class, setting) -> the experiments whose config has it: the property test below
#: draws its bad values per setting and the experiment among these (a setting's domain and
#: its check belong to the config class, so one draw per experiment would repeat the same
#: check ~1,600 times; the exhaustive loop after it still runs every experiment's every setting)
BY_CLASS: dict[tuple[str, str], list[str]] = {}
for _experiment, _name in FIELDS:
    BY_CLASS.setdefault((type(EXPERIMENTS.get(_experiment).config).__name__, _name),
                        []).append(_experiment)
#: printable text (no surrogates, which no command line can carry)
TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=12)
_AS_DECORATED: dict = {}


@pytest.fixture(autouse=True)
def _hypothesis_settings_as_decorated(request):
    """Hypothesis's pytest plugin gives a parametrized test's settings a new child at every
    case (6.170: its differing_executors suppression, parent = the previous one), so the ~950
    cases of `test_bad_setting_is_refused_before_any_work` nest as deep and overflow Python's
    recursion limit; every case starts from the settings the first one saw."""
    fn = getattr(request.function, "__func__", request.function)
    if hasattr(fn, "_hypothesis_internal_use_settings"):
        fn._hypothesis_internal_use_settings = _AS_DECORATED.setdefault(
            fn, fn._hypothesis_internal_use_settings)


def _number_outside(domain: Number, in_list: bool = False) -> st.SearchStrategy[str]:
    """Numbers outside the interval, non-finite floats, and text of the wrong type (an empty
    item is no error inside a list: `5,` is the list (5,))."""
    below = domain.lo if domain.lo_open else domain.lo - (1 if domain.kind is int else 1e-9)
    above = domain.hi if domain.hi_open else domain.hi + (1 if domain.kind is int else 1e-9)
    if domain.kind is int:
        values = st.one_of(st.integers(max_value=int(math.floor(below))),
                           st.integers(min_value=int(math.ceil(above))))
        wrong_type = st.sampled_from(["1.5", "1e3", "nan", "two"] + ([] if in_list else [""]))
        return st.one_of(values.map(str), wrong_type)
    values = st.one_of(st.floats(max_value=below), st.floats(min_value=above),
                       st.sampled_from([math.nan, math.inf, -math.inf]))
    return st.one_of(values.map(repr), st.sampled_from(["fast"] + ([] if in_list else [""])))


def outside(domain: Domain) -> st.SearchStrategy[str]:
    """Command-line texts for a setting that its domain must refuse."""
    declared = st.sampled_from(domain.outside())
    if isinstance(domain, Number):
        return st.one_of(declared, _number_outside(domain))
    if isinstance(domain, Items):
        good = st.just(str(domain.item.hi if domain.item.kind is int else domain.item.hi / 2))
        bad_item = _number_outside(domain.item, in_list=True)
        one_bad = st.tuples(st.lists(good, max_size=2), bad_item).map(
            lambda t: ",".join([*t[0], t[1]]))
        return st.one_of(declared, one_bad.filter(lambda s: s.strip(", ") != ""))
    if isinstance(domain, OneOf | Pattern):
        return st.one_of(declared, TEXT.filter(lambda s: not domain.contains(s.strip())))
    if isinstance(domain, Flag):  # any text that is not one of the words for true or false
        words = {"1", "true", "yes", "on", "0", "false", "no", "off"}
        return st.one_of(declared, TEXT.filter(lambda s: s.strip().lower() not in words))
    raise AssertionError(f"no strategy for {domain!r}")


def run_cli(capsys, argv: list[str]) -> tuple[int, str]:
    capsys.readouterr()
    try:
        code = cli.main(argv)
    except SystemExit as stop:  # argparse's usage errors
        code = stop.code
    return code, capsys.readouterr().err


def assert_refused(code: int, err: str, *names: str) -> None:
    assert code == 2, err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    for name in names:
        assert name in lines[0], (name, err)


def test_every_setting_declares_a_domain():
    for experiment, name in FIELDS:
        config = EXPERIMENTS.get(experiment).config
        field = next(f for f in dataclasses.fields(config) if f.name == name)
        domain = domain_of(field)
        assert domain.contains(getattr(config, name)), (experiment, name)


def test_every_setting_of_every_experiment_refuses_a_bad_value(capsys, tmp_path):
    """Exhaustive: each experiment's each setting, given text that is outside every domain
    (not a number, a word, a flag or a name), is refused in one line naming it and its domain,
    with nothing written."""
    out = tmp_path / "out"
    for experiment, name in FIELDS:
        config = EXPERIMENTS.get(experiment).config
        domain = domain_of(next(f for f in dataclasses.fields(config) if f.name == name))
        code, err = run_cli(capsys, ["run", experiment, "--scale", "tiny", "--no-report",
                                     "--set", f"{name}=nan\x07", "--out", str(out)])
        assert_refused(code, err, name, domain.describe())
    assert not out.exists()


@pytest.mark.parametrize(("config_class", "name"), sorted(BY_CLASS))
@settings(max_examples=12, deadline=None, suppress_health_check=[
    HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_bad_setting_is_refused_before_any_work(config_class, name, data, capsys, tmp_path):
    """Property: values drawn outside the setting's domain (numbers beyond its bounds,
    non-finite ones, other types, unknown words), on experiments drawn among those with it."""
    experiment = data.draw(st.sampled_from(BY_CLASS[(config_class, name)]), label="experiment")
    config = EXPERIMENTS.get(experiment).config
    domain = domain_of(next(f for f in dataclasses.fields(config) if f.name == name))
    text = data.draw(outside(domain), label=name)
    out = tmp_path / f"out-{uuid.uuid4().hex}"  # one per example: tmp_path is shared
    code, err = run_cli(capsys, ["run", experiment, "--scale", "tiny", "--no-report",
                                 "--set", f"{name}={text}", "--out", str(out)])
    assert_refused(code, err, name, domain.describe())
    assert not out.exists()  # nothing written


#: (command line before the option, with {out} where the output goes, option, domain)
SYNTH = ["data", "synth", "miniimagenet", "{out}"]
OPTIONS = [
    (["run", "--scale", "tiny", "--no-report", "--out", "{out}"], "--jobs", JOBS),
    (["run", "--scale", "tiny", "--no-report", "--out", "{out}"], "--seeds", SEEDS),
    (["run", "--scale", "tiny", "--no-report", "--out", "{out}"], "--device", DEVICE),
    (["report", "--scale", "tiny", "--out", "{out}"], "--level", LEVEL),
    (["compare", "sinusoid-table2-v1", "--out", "{out}"], "--shots", SHOTS),
    (["compare", "sinusoid-table2-v1", "--out", "{out}"], "--steps", STEPS),
    (["compare", "sinusoid-table2-v1", "--out", "{out}"], "--name", NAME),
    (["run", "--no-report", "--out", "{out}"], "--scale", SCALE),
    (["report", "--out", "{out}"], "--scale", SCALE),
    (["report", "--scale", "tiny", "--out", "{out}"], "--ci", CI),
    (SYNTH, "--classes-per-split", CLASSES_PER_SPLIT),
    (SYNTH, "--images-per-class", IMAGES_PER_CLASS),
    (SYNTH, "--seed", SYNTH_SEED),
    *[(["run", "--scale", "tiny", "--no-report", "--out", "{out}"], flag, domain)
      for flag, domain in (("--engine", ENGINE), ("--cpus-per-run", CPUS_PER_RUN),
                           ("--gpus-per-run", GPUS_PER_RUN), ("--retries", RETRIES),
                           ("--time", TIME_MIN), ("--mem-gb", MEM_GB),
                           ("--partition", NAME))],
]


@pytest.mark.parametrize(("before", "option", "domain"), OPTIONS,
                         ids=[f"{o[0][0]}-{o[0][1]}{o[1]}" for o in OPTIONS])
@settings(max_examples=15, deadline=None, suppress_health_check=[
    HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_bad_option_is_refused(before, option, domain, data, capsys, tmp_path):
    text = data.draw(outside(domain), label=option)
    out = tmp_path / f"out-{uuid.uuid4().hex}"
    argv = [str(out) if arg == "{out}" else arg for arg in before]
    code, err = run_cli(capsys, [*argv, f"{option}={text}"])
    assert_refused(code, err, option, domain.describe())
    assert not out.exists()


@pytest.mark.parametrize("command", [["run", "--scale", "tiny", "--no-report"],
                                     ["report"], ["plot"], ["compare", "sinusoid-table2-v1"]])
def test_unusable_output_directory_is_refused(command, capsys, tmp_path):
    a_file = tmp_path / "file"
    a_file.write_text("x")
    for out in (a_file, "/proc/maml-bench-x", a_file / "below"):
        code, err = run_cli(capsys, [*command, "--out", str(out)])
        assert_refused(code, err, str(out))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


# The cases seen by hand in the issue, kept as named examples of the classes above.
ISSUE_CASES = [
    "meta_lr=nan", "meta_lr=-1", "test_seed=99999999999999999999999", "hidden=-3,8",
    "hidden=99999999999999,8", "inner_steps=0", "test_query=-1", "grad_clip=nan", "hidden=0,8",
    "inner_lr=nan", "inner_lr=inf", "inner_lr=-0.1", "x_min=nan", "amplitude_max=inf",
    "iterations=10**23", "iterations=100000000000000000000000", "test_tasks=1", "x_min=9",
]


@pytest.mark.parametrize("override", ISSUE_CASES)
def test_issue_cases(override, capsys, tmp_path):
    out = tmp_path / "out"
    code, err = run_cli(capsys, ["run", "--scale", "tiny", "--set", override, "--out", str(out)])
    assert_refused(code, err, override.split("=")[0])
    assert not out.exists()


def test_compare_steps_beyond_the_records_are_refused(capsys, tmp_path):
    out = str(tmp_path)
    assert cli.main(["run", "--scale", "tiny", "--method", "maml", "--no-report",
                     "--out", out]) == 0
    code, err = run_cli(capsys, ["compare", "sinusoid-table2-v1", "--steps", "1,50",
                                 "--out", out])
    assert_refused(code, err, "--steps 50", "steps 0..3 only")
    assert not (tmp_path / "comparisons").exists()


@pytest.mark.parametrize("argv", [["report", "--level", "1.5"], ["report", "--level", "nan"],
                                  ["run", "--jobs", "0"], ["run", "--jobs", "-3"]])
def test_issue_option_cases(argv, capsys):
    code, err = run_cli(capsys, argv)
    assert_refused(code, err, argv[1])


def test_version(capsys):
    from maml_bench import __version__

    with pytest.raises(SystemExit) as stop:
        cli.main(["--version"])
    assert stop.value.code == 0
    assert capsys.readouterr().out.strip() == f"maml-bench {__version__}"

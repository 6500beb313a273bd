"""Settings that `--set` may not give: a value that changes what the experiment is (its dataset,
ways, network, env), one its loader ignores (split on MiniImagenet), a list with empty or
repeated items where the list is a set of values, a number in non-ASCII digits, a key given
twice, and an empty path. Each is one line, exit code 2, before anything is written.

Giving an identity setting the value the experiment already has is accepted: it changes
nothing (the same config and hash), so refusing it would only break scripts that spell out
the defaults."""

from __future__ import annotations

import dataclasses
import re
import unicodedata
import uuid

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_validation import assert_refused, run_cli

from maml_bench import cli
from maml_bench.config import config_hash
from maml_bench.domains import (
    IDENTITY,
    OneOf,
    domain_of,
    identity_settings,
    same_identity,
    show_value,
)
from maml_bench.errors import UserError
from maml_bench.experiments import EXPERIMENTS
from maml_bench.runner import resolve_config

SINUSOID = "sinusoid-table2-v1"
HYPOTHESIS = settings(max_examples=40, deadline=None,
                      suppress_health_check=[HealthCheck.function_scoped_fixture])


def refused_run(capsys, tmp_path, experiment: str, *args: str, names: tuple[str, ...]) -> str:
    """`run EXPERIMENT ARGS` at tiny scale: refused in one line naming `names`, nothing
    written; returns the line."""
    out = tmp_path / f"out-{uuid.uuid4().hex}"  # one per call: tmp_path is shared by examples
    code, err = run_cli(capsys, ["run", experiment, "--scale", "tiny", "--no-report",
                                 "--out", str(out), *args])
    assert_refused(code, err, *names)
    assert not out.exists()
    return err.strip()


# --- the issue's cases, through the command line ----------------------------------------------

ISSUE = [  # (experiment, --set values, what the line names: the setting and the fix)
    ("navigation2d-v1", ["env=maml_bench/AntDir-v0"], ("env", "navigation2d-v1", "ant-dir-v1")),
    ("miniimagenet-5w1s-demo-v1", ["dataset=omniglot"], ("dataset", "omniglot-5w1s-v1")),
    ("omniglot-5w1s-v1", ["dataset=miniimagenet-demo"], ("dataset",
                                                         "miniimagenet-5w1s-demo-v1")),
    ("omniglot-5w1s-v1", ["ways=20"], ("ways", "omniglot-20w1s-v1")),
    ("omniglot-5w1s-v1", ["network=mlp"], ("network", "omniglot-5w1s-noconv-v1")),
    ("miniimagenet-5w1s-v2", ["split=vinyals"], ("split", "split=maml")),
    ("miniimagenet-5w1s-demo-v1", ["split=vinyals"], ("split", "split=maml")),
    # the dataset's refusal comes first, whatever the split
    ("miniimagenet-5w1s-v2", ["dataset=omniglot", "split=vinyals"], ("dataset",)),
    (SINUSOID, ["eval_shots=5,5"], ("eval_shots", "distinct")),
    (SINUSOID, ["finetune_lrs=0.1,1e-1"], ("finetune_lrs", "distinct")),
    (SINUSOID, ["eval_shots=5,,10"], ("eval_shots", "empty items")),
    (SINUSOID, ["eval_shots=5,10,"], ("eval_shots", "empty items")),
    (SINUSOID, ["meta_batch=١٢"], ("meta_batch", "ASCII")),
    (SINUSOID, ["iterations=5", "iterations=7"], ("--set iterations", "twice")),
    (SINUSOID, ["iterations=5", " iterations =7"], ("--set iterations", "twice")),
    # settings the loader or network would ignore there (recorded, changing nothing)
    ("miniimagenet-5w1s-demo-v1", ["rotations=none"], ("rotations", "rotations=per-episode")),
    ("miniimagenet-5w1s-v2", ["padding=tf-same"], ("padding", "padding=torch")),
    ("omniglot-5w1s-noconv-v1", ["filters=32"], ("filters", "network=conv")),
    # the rllab time step of another task family is another experiment
    ("ant-dir-v1", ["env=maml_bench/HalfCheetahDirRllabDt-v0"], ("env", "cheetah-dir-v1")),
]


@pytest.mark.parametrize(("experiment", "values", "names"), ISSUE,
                         ids=[f"{e}-{'-'.join(v)}" for e, v, _ in ISSUE])
def test_issue_settings_are_refused(experiment, values, names, capsys, tmp_path):
    args = [a for value in values for a in ("--set", value)]
    refused_run(capsys, tmp_path, experiment, *args, names=names)


def test_a_grid_over_an_identity_setting_is_refused(capsys, tmp_path):
    refused_run(capsys, tmp_path, "omniglot-5w1s-v1", "--grid", "ways=5,20",
                names=("ways", "omniglot-20w1s-v1"))


#: every path option and positional: (command line with {p} where the path goes, its name)
PATHS = [
    (["run", "--scale", "tiny", "--no-report", "--out", "{p}"], "--out"),
    (["run", "--scale", "tiny", "--no-report", "--logs", "{p}"], "--logs"),
    (["run", "--scale", "tiny", "--no-report", "--data-root", "{p}"], "--data-root"),
    (["run", "--scale", "tiny", "--no-report", "--evaluate-from", "{p}"], "--evaluate-from"),
    (["report", "--out", "{p}"], "--out"),
    (["plot", "--out", "{p}"], "--out"),
    (["compare", SINUSOID, "--out", "{p}"], "--out"),
    (["compare", SINUSOID, "--grid", "{p}"], "--grid"),
    (["profile", "--out", "{p}"], "--out"),
    (["data", "check", "omniglot", "{p}"], "PATH"),
    (["data", "check", "omniglot", "--data-root", "{p}"], "--data-root"),
    (["data", "synth", "miniimagenet", "{p}"], "DIR"),
]


@pytest.mark.parametrize("blank", ["", " "])
@pytest.mark.parametrize(("argv", "name"), PATHS, ids=[f"{a[0]}-{n}" for a, n in PATHS])
def test_an_empty_path_is_refused(argv, name, blank, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # Path("") is here: nothing may appear
    code, err = run_cli(capsys, [blank if a == "{p}" else a for a in argv])
    assert_refused(code, err, name)
    assert list(tmp_path.iterdir()) == []


# --- list syntax -------------------------------------------------------------------------------

SHOTS = st.lists(st.integers(1, 10_000), min_size=1, max_size=8, unique=True)


@HYPOTHESIS
@given(shots=SHOTS, where=st.integers(0, 8))
def test_a_list_with_an_empty_item_is_refused(shots, where):
    items = [str(k) for k in shots]
    items.insert(where % (len(items) + 1), "")
    with pytest.raises(UserError, match="eval_shots.*empty items") as caught:
        resolve_config(EXPERIMENTS.get(SINUSOID), "tiny", [f"eval_shots={','.join(items)}"])
    assert "\n" not in str(caught.value)


@HYPOTHESIS
@given(shots=SHOTS, data=st.data())
def test_a_list_of_values_is_refused_with_a_repeated_item(shots, data):
    experiment = EXPERIMENTS.get(SINUSOID)
    text = ",".join(map(str, shots))
    assert resolve_config(experiment, "tiny", [f"eval_shots={text}"]).eval_shots == tuple(shots)
    again = data.draw(st.sampled_from(shots))
    with pytest.raises(UserError, match="eval_shots=.* distinct"):
        resolve_config(experiment, "tiny", [f"eval_shots={text},{again}"])


@HYPOTHESIS
@given(widths=st.lists(st.integers(1, 64), min_size=1, max_size=4))
def test_layer_widths_may_repeat(widths):
    """Repeats are legitimate where the list is not a set: hidden layers 40,40."""
    text = ",".join(map(str, widths + widths[:1]))
    config = resolve_config(EXPERIMENTS.get(SINUSOID), "tiny", [f"hidden={text}"])
    assert config.hidden == (*widths, widths[0])


# --- numbers in ASCII digits only ----------------------------------------------------------

#: decimal digits of every script (Unicode category Nd), which Python's int() and float() read
DIGITS = st.characters(categories=["Nd"])
NON_ASCII_DIGIT = DIGITS.filter(lambda c: not c.isascii())


@HYPOTHESIS
@given(digits=st.lists(DIGITS, min_size=0, max_size=4), other=NON_ASCII_DIGIT,
       where=st.integers(0, 4), name=st.sampled_from(["meta_batch", "inner_lr", "eval_shots"]))
def test_a_number_with_a_non_ascii_digit_is_refused(digits, other, where, name):
    digits.insert(where % (len(digits) + 1), other)
    text = "".join(digits)
    assert unicodedata.decimal(other) >= 0  # int() would read it as a digit
    with pytest.raises(UserError, match=f"{name}.*ASCII") as caught:
        resolve_config(EXPERIMENTS.get(SINUSOID), "tiny", [f"{name}={text}"])
    assert "\n" not in str(caught.value)


@HYPOTHESIS
@given(batch=st.integers(1, 100_000), lr=st.floats(1e-6, 10.0))
def test_ascii_numbers_parse_as_before(batch, lr):
    config = resolve_config(EXPERIMENTS.get(SINUSOID), "tiny",
                            [f"meta_batch={batch}", f"inner_lr={lr!r}", "iterations=1_000"])
    assert (config.meta_batch, config.inner_lr, config.iterations) == (batch, lr, 1000)


# --- a key given twice -----------------------------------------------------------------------

KEYS = [f.name for f in dataclasses.fields(EXPERIMENTS.get(SINUSOID).config)]


@settings(max_examples=20, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(key=st.sampled_from(KEYS), first=st.text(max_size=5), second=st.text(max_size=5))
def test_a_setting_given_twice_is_refused(key, first, second, capsys, tmp_path):
    refused_run(capsys, tmp_path, SINUSOID, "--set", f"{key}={first}", "--set",
                f"{key}={second}", names=(f"--set {key} given twice",))


# --- identity settings, for every registered experiment ---------------------------------------

IDENTITIES = [(experiment, name) for experiment in EXPERIMENTS.names()
              for name in identity_settings(EXPERIMENTS.get(experiment).config)]


def test_identity_settings_are_those_named():
    assert {name for _, name in IDENTITIES} == set(IDENTITY)
    assert all(identity_settings(EXPERIMENTS.get(e).config) == [] for e in EXPERIMENTS.names()
               if e.startswith("sinusoid"))


def check_value(experiment: str, name: str, value, capsys, tmp_path) -> None:
    """`--set name=value`: accepted as the same experiment, else refused naming experiments
    that have the value (or that none has it)."""
    exp = EXPERIMENTS.get(experiment)
    own = getattr(exp.config, name)
    text = f"{name}={show_value(value)}"
    if same_identity(name, value, own):  # its own value (or its env's time-step variant)
        config = resolve_config(exp, "tiny", [text])
        assert getattr(config, name) == value
        if value == own:  # changes nothing: the same config, the same runs
            assert config_hash(config) == config_hash(resolve_config(exp, "tiny", []))
        return
    line = refused_run(capsys, tmp_path, experiment, "--set", text, names=(text, experiment))
    fix = line.rpartition("cannot change it; ")[2]
    offered = [e for e in re.findall(r"[a-z0-9-]+-v\d+", fix) if e in EXPERIMENTS
               and e != experiment]
    for other in offered:  # every experiment offered has the wanted value
        assert same_identity(name, getattr(EXPERIMENTS.get(other).config, name), value)
    assert offered or "no experiment has" in line


def _domain(experiment: str, name: str):
    config = EXPERIMENTS.get(experiment).config
    return domain_of(next(f for f in dataclasses.fields(config) if f.name == name))


#: every value of every word-valued identity setting (dataset, network, env), for each experiment
WORDS = [(e, n, v) for e, n in IDENTITIES if isinstance(_domain(e, n), OneOf)
         for v in _domain(e, n).values]
NUMBERS = [(e, n) for e, n in IDENTITIES if not isinstance(_domain(e, n), OneOf)]  # ways


@pytest.mark.parametrize(("experiment", "name", "value"), WORDS,
                         ids=[f"{e}-{v}" for e, _, v in WORDS])
def test_an_identity_word_is_refused_unless_the_experiment_has_it(experiment, name, value,
                                                                  capsys, tmp_path):
    check_value(experiment, name, value, capsys, tmp_path)


@pytest.mark.parametrize(("experiment", "name"), NUMBERS, ids=[f"{e}-{n}" for e, n in NUMBERS])
@settings(max_examples=8, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_an_identity_number_is_refused_unless_the_experiment_has_it(experiment, name, data,
                                                                    capsys, tmp_path):
    domain = _domain(experiment, name)
    own = getattr(EXPERIMENTS.get(experiment).config, name)
    value = data.draw(st.one_of(st.just(own), st.integers(int(domain.lo), int(domain.hi))),
                      label=name)
    check_value(experiment, name, value, capsys, tmp_path)


def test_the_env_time_step_variant_is_the_same_experiment():
    """cheetah-dir-v1's notes offer rllab's time step: still the half-cheetah direction task."""
    exp = EXPERIMENTS.get("cheetah-dir-v1")
    config = resolve_config(exp, "tiny", ["env=maml_bench/HalfCheetahDirRllabDt-v0"])
    assert config.env == "maml_bench/HalfCheetahDirRllabDt-v0"


def test_split_stays_open_on_omniglot():
    config = resolve_config(EXPERIMENTS.get("omniglot-5w1s-v1"), "tiny", ["split=vinyals"])
    assert config.split == "vinyals"


# --- `show` says which settings the experiment fixes ----------------------------------------

@pytest.mark.parametrize("experiment", EXPERIMENTS.names())
def test_show_marks_identity_settings_fixed(experiment, capsys):
    assert cli.main(["show", experiment]) == 0
    out = capsys.readouterr().out
    lines = out[out.index("\nsettings ("):].splitlines()
    config = EXPERIMENTS.get(experiment).config
    for f in dataclasses.fields(config):
        at = next((i for i, line in enumerate(lines) if line.split()[:1] == [f.name]), None)
        if at is None:  # another method's own setting, not listed
            continue
        below = lines[at + 1].strip()
        if f.name in identity_settings(config):
            assert below.startswith(f"fixed: part of what {experiment} is"), below
        else:
            assert below.startswith("valid: "), below

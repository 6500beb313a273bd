"""Registry and typed overrides."""

from __future__ import annotations

import pytest

from maml_bench.config import apply_overrides, config_hash
from maml_bench.errors import UserError
from maml_bench.registry import Registry
from maml_bench.tasks.sinusoid import SinusoidConfig


def test_registry_register_get_list():
    reg: Registry[int] = Registry("widget")
    reg.register("alpha-v1", 1)

    @reg.register("beta-v1")
    def beta():
        return 2

    assert reg.get("alpha-v1") == 1 and reg.get("beta-v1") is beta
    assert reg.names() == ["alpha-v1", "beta-v1"] and reg.names("b*") == ["beta-v1"]
    assert "alpha-v1" in reg and len(reg) == 2


def test_registry_refuses_duplicates():
    reg: Registry[int] = Registry("widget")
    reg.register("a", 1)
    with pytest.raises(ValueError, match="already registered"):
        reg.register("a", 2)


def test_unknown_id_names_closest():
    reg: Registry[int] = Registry("experiment")
    reg.register("omniglot-5w1s-v1", 1)
    reg.register("sinusoid-table2-v1", 2)
    with pytest.raises(UserError, match="did you mean sinusoid-table2-v1") as err:
        reg.get("sinusoid-tabel2-v1")
    assert "\n" not in str(err.value)


def test_overrides_are_typed():
    config = apply_overrides(SinusoidConfig(), ["inner_lr=0.001", "inner_steps=5",
                                                "eval_shots=5,10", "path=loop"])
    assert config.inner_lr == 0.001 and isinstance(config.inner_steps, int)
    assert config.eval_shots == (5, 10) and config.path == "loop"
    assert config_hash(config) != config_hash(SinusoidConfig())
    assert config_hash(SinusoidConfig()) == config_hash(SinusoidConfig())


@pytest.mark.parametrize("override, message", [
    ("inner_lrr=0.1", "unknown setting 'inner_lrr'; did you mean inner_lr"),
    ("inner_steps=1.5", "expected int"),
    ("inner_lr=fast", "expected float"),
    ("inner_lr", "expected key=value"),
    ("iterations=-3", r"iterations=-3 is invalid: must be an integer in \[1, "),
    ("eval_shots=0", r"eval_shots=0 is invalid: .* each an integer in \[1, "),
    ("path=gpu", "path=gpu is invalid: must be one of auto | batched | vmap | loop | higher"),
    ("amplitude_min=9", "amplitude_min <= amplitude_max"),
])
def test_bad_overrides_get_clear_errors(override, message):
    with pytest.raises(UserError, match=message):
        apply_overrides(SinusoidConfig(), [override])


def test_a_setting_added_later_leaves_existing_hashes_alone():
    """Settings added after the Omniglot paper runs started (task_chunk, the newer methods'
    settings) must not change their config hash at their defaults, or those runs could not
    resume: 273419d49f9c is the hash stored in their checkpoints. Set, a setting must count."""
    import dataclasses

    from maml_bench.experiments import EXPERIMENTS

    config = EXPERIMENTS.get("omniglot-5w1s-v1").config
    assert config_hash(config) == "273419d49f9c"
    # and the 2D navigation paper run started later (its checkpoints hold this hash)
    assert config_hash(EXPERIMENTS.get("navigation2d-v1").config) == "744534c8e6b2"
    assert config_hash(dataclasses.replace(config, task_chunk=4)) != config_hash(config)


def test_every_figure_draws_only_methods_its_experiment_has():
    """A figure listing a method its experiment cannot run warned on every report (the no-conv
    Omniglot cells once drew the conv cells' baselines)."""
    from maml_bench.experiments import EXPERIMENTS

    for name in EXPERIMENTS.names():
        experiment = EXPERIMENTS.get(name)
        have = {m.algorithm for m in experiment.methods}
        for figure in experiment.figures:
            assert set(figure.methods) <= have, (name, figure.name)

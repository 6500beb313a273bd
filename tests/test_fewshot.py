"""Few-shot classification on the real Omniglot (CI has ../shared beside the checkout): the
split, the episodes, and every algorithm x experiment end to end at tiny scale."""

from __future__ import annotations

import pytest
import torch

from maml_bench.errors import UserError
from maml_bench.experiments import EXPERIMENTS
from maml_bench.runner import execute, plan_runs
from maml_bench.tasks.fewshot.data_root import data_root
from maml_bench.tasks.fewshot.episodes import FewShot, FewShotConfig, episodes

OMNIGLOT_ROOT = data_root() / "omniglot"
needs_omniglot = pytest.mark.skipif(
    not OMNIGLOT_ROOT.is_dir(),
    reason=f"real Omniglot not found at {OMNIGLOT_ROOT}: put images_background.zip and "
           "images_evaluation.zip there (or set MAML_BENCH_DATA to a folder holding omniglot/)")
OMNIGLOT_EXPERIMENTS = [e for e in EXPERIMENTS.names() if e.startswith("omniglot-")]


@pytest.fixture(scope="module")
def omniglot():
    from maml_bench.tasks.fewshot.omniglot import load_omniglot

    return load_omniglot(OMNIGLOT_ROOT)


@needs_omniglot
def test_real_omniglot_and_the_maml_split(omniglot):
    from maml_bench.tasks.fewshot.omniglot import maml_split

    assert omniglot.images.shape == (1623, 20, 28, 28)
    assert len(set(omniglot.names)) == 1623
    # strokes are bright on a dark background, as the reference code's 1 - value / 255
    assert omniglot.images.mean() < 60 and omniglot.images.max() == 255
    split = maml_split(omniglot.names)
    assert {k: len(v) for k, v in split.items()} == {"train": 1100, "val": 100, "test": 423}
    sets = [set(v.tolist()) for v in split.values()]
    assert not (sets[0] & sets[1] or sets[0] & sets[2] or sets[1] & sets[2])
    assert set.union(*sets) == set(range(1623))


@needs_omniglot
def test_the_vinyals_split(omniglot):
    from maml_bench.tasks.fewshot.omniglot import vinyals_split

    split = vinyals_split(omniglot.names)
    assert {k: len(v) for k, v in split.items()} == {"train": 1028, "val": 172, "test": 423}
    sets = [set(v.tolist()) for v in split.values()]
    assert not (sets[0] & sets[1] or sets[0] & sets[2] or sets[1] & sets[2])
    assert set.union(*sets) == set(range(1623))
    # the test characters are all from the evaluation set, as in Vinyals et al.
    assert all(omniglot.names[i].startswith("images_evaluation/") for i in split["test"])


def pool(classes=10, images=6):
    return torch.arange(classes * images, dtype=torch.uint8).view(classes, images, 1, 1, 1
                                                                   ).expand(-1, -1, 1, 2, 2)


def test_episodes_are_seeded_and_well_formed():
    data = pool()
    a = episodes(data, torch.Generator().manual_seed(0), 3, 4, 2, 3, rotate=False)
    b = episodes(data, torch.Generator().manual_seed(0), 3, 4, 2, 3, rotate=False)
    c = episodes(data, torch.Generator().manual_seed(1), 3, 4, 2, 3, rotate=False)
    assert torch.equal(a.x_support, b.x_support) and torch.equal(a.x_query, b.x_query)
    assert not torch.equal(a.x_support, c.x_support)
    assert a.x_support.shape == (3, 8, 1, 2, 2) and a.x_query.shape == (3, 12, 1, 2, 2)
    ids = (torch.cat([a.x_support, a.x_query], 1)[..., 0, 0, 0] * 255).round().long()
    labels = torch.cat([a.y_support, a.y_query], 1)
    for t in range(3):
        assert len(set(ids[t].tolist())) == 20  # no image twice in an episode
        classes = ids[t] // 6
        assert len(set(classes.tolist())) == 4  # N distinct classes
        for label in range(4):  # one class per label, support and query alike
            assert len(set(classes[labels[t] == label].tolist())) == 1


def test_rotations_turn_whole_classes_by_quarter_turns():
    data = torch.arange(4, dtype=torch.uint8).view(1, 1, 1, 2, 2).expand(5, 3, 1, 2, 2)
    batch = episodes(data, torch.Generator().manual_seed(3), 8, 5, 1, 2, rotate=True)
    base = data[0, 0, 0].float() / 255
    turns: dict[tuple[int, int], set[int]] = {}
    for x, y in ((batch.x_support, batch.y_support), (batch.x_query, batch.y_query)):
        for t in range(8):
            for i in range(x.shape[1]):
                k = next(k for k in range(4) if torch.equal(x[t, i, 0], torch.rot90(base, k)))
                turns.setdefault((t, int(y[t, i])), set()).add(k)
    assert all(len(ks) == 1 for ks in turns.values())  # one turn per class, support and query
    assert set.union(*turns.values()) == {0, 1, 2, 3}


@needs_omniglot
def test_impossible_ways_or_shots_are_one_clear_error():
    with pytest.raises(UserError, match="images per class"):
        FewShot(FewShotConfig(train_shots=15, train_query=10))


PAIRS = [(e, m.algorithm) for e in OMNIGLOT_EXPERIMENTS for m in EXPERIMENTS.get(e).methods]


@needs_omniglot
@pytest.mark.parametrize(("experiment", "method"), PAIRS)
def test_every_omniglot_experiment_runs_end_to_end(experiment, method, tmp_path):
    (run,) = plan_runs(experiment, "tiny", [], [method], None, tmp_path)
    directory = execute(run, progress=False)
    import pandas as pd

    records = pd.read_csv(directory / "records.csv.gz")
    config = run.config
    assert len(records) == config.test_tasks * (config.eval_steps + 1)
    assert records["value"].between(0, 100).all()
    log = pd.read_csv(directory / "train_log.csv")
    if method in ("maml", "fomaml"):
        assert log["val_metric"].notna().any()  # the validation curve is recorded


@needs_omniglot
def test_baselines_start_from_chance_and_nearest_neighbour_finds_its_twin(tmp_path,
                                                                        monkeypatch):
    from maml_bench.algorithms import ALGORITHMS
    from maml_bench.core.functional import SupervisedBatch

    (run,) = plan_runs("omniglot-5w1s-v1", "tiny", [], ["nearest-neighbour"], None, tmp_path)
    bench = FewShot(run.config)
    finetune = ALGORITHMS.get("finetune")(bench, run.config, 0)
    finetune.train_step(0)
    # A zero N-way head: every query gets class 0 before any step, so accuracy is 1/N.
    assert (finetune.evaluate()[1][:, 0] == 100.0 / run.config.ways).all()
    # Queries that are copies of support images (shuffled) are all found by their twin.
    real = bench.eval_sets("test")[1]
    order = torch.randperm(real.x_support.shape[1], generator=torch.Generator().manual_seed(0))
    twins = SupervisedBatch(real.x_support, real.y_support, real.x_support[:, order],
                            real.y_support[:, order])
    monkeypatch.setattr(bench, "eval_sets", lambda split: {1: twins})
    nearest = ALGORITHMS.get("nearest-neighbour")(bench, run.config, 0)
    nearest.train_step(0)
    assert (nearest.evaluate()[1] == 100.0).all()


@needs_omniglot
def test_interrupted_omniglot_run_resumes_to_the_same_numbers(tmp_path, monkeypatch):
    """The long paper runs are resumed across sessions: an interrupted run must give exactly
    the records and validation curve of an uninterrupted one."""
    import pandas as pd

    from maml_bench.algorithms.maml import MAML

    overrides = ["iterations=8", "checkpoint_every=2", "val_every=4", "log_every=2"]
    (clean,) = plan_runs("omniglot-5w1s-v1", "tiny", overrides, ["maml"], None, tmp_path / "a")
    execute(clean, progress=False)
    (broken,) = plan_runs("omniglot-5w1s-v1", "tiny", overrides, ["maml"], None, tmp_path / "b")
    original = MAML.train_step

    def interrupted(self, iteration):
        if iteration == 5:
            raise KeyboardInterrupt  # between the checkpoints at 4 and 6
        return original(self, iteration)

    monkeypatch.setattr(MAML, "train_step", interrupted)
    with pytest.raises(KeyboardInterrupt):
        execute(broken, progress=False)
    monkeypatch.setattr(MAML, "train_step", original)
    execute(broken, progress=False)
    for name in ("records.csv.gz", "train_log.csv"):
        a = pd.read_csv(clean.directory / name)
        b = pd.read_csv(broken.directory / name)
        keep = [c for c in a.columns if c not in ("date", "git_sha")]
        pd.testing.assert_frame_equal(a[keep], b[keep])


def assert_one_meta_step(method, tmp_path, settings, info_key, cases):
    """One training step of `method` (7 tasks) under `settings` + `name=value` for each
    (name, value, resolved) of `cases`: run.json's `info_key` is `resolved`, and every case
    gives the first one's loss and meta-gradient (a real one, not zeros)."""
    from maml_bench.algorithms import ALGORITHMS

    results = []
    for setting, resolved in cases:
        (run,) = plan_runs("omniglot-5w1s-v1", "tiny", ["meta_batch=7", *settings, setting],
                           [method], None, tmp_path)
        algo = ALGORITHMS.get(method)(FewShot(run.config), run.config, 0)
        loss = algo.train_step(0)
        assert algo.info[info_key] == resolved
        results.append((loss, [p.grad.clone() for p in algo.theta.values()]))
    (loss_a, grads_a), *others = results
    assert max(g.abs().max() for g in grads_a) > 1e-3  # a real gradient, not zeros
    for loss_b, grads_b in others:
        torch.testing.assert_close(loss_a, loss_b, rtol=1e-5, atol=1e-6)
        for a, b in zip(grads_a, grads_b, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


@needs_omniglot
@pytest.mark.parametrize("method", ["maml", "fomaml"])
def test_task_chunks_give_the_whole_batch_meta_gradient(method, tmp_path, monkeypatch):
    """task_chunk only changes how the meta-batch is split into graphs, not the gradient; auto
    (-1) with a 0.15 MiB budget puts 2 of these 0.06 MiB tasks (8 filters) in a pass."""
    from maml_bench.core import chunking

    monkeypatch.setattr(chunking, "CPU_PASS_MIB", 0.15)
    monkeypatch.setattr(chunking, "CPU_WHOLE_MIB", 0.1)  # 7 tasks of 0.06 MiB: not tiny here
    assert_one_meta_step(method, tmp_path, [], "tasks_per_pass",
                         [("task_chunk=0", 7), ("task_chunk=3", 3), ("task_chunk=-1", 2)])


@needs_omniglot
@pytest.mark.parametrize("method", ["maml", "fomaml"])
def test_task_threads_give_the_one_thread_meta_gradient(method, tmp_path, monkeypatch):
    """task_threads only changes which thread differentiates which tasks; auto takes the run's
    CPUs (here 3, for 7 tasks of 0.06 MiB counted as conv-sized) and run.json records it."""
    from maml_bench.core import chunking

    monkeypatch.setattr(chunking, "CPU_THREAD_TASK_MIB", 0.01)
    monkeypatch.setattr(chunking, "_run_cpus", 3)
    assert_one_meta_step(method, tmp_path, ["task_chunk=2"], "task_threads",
                         [("task_threads=1", 1), ("task_threads=2", 2), ("task_threads=-1", 3)])

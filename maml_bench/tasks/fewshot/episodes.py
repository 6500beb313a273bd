"""N-way K-shot episodes from a dataset's class pools: the few-shot classification benchmark.

A class pool is a uint8 tensor [classes, images per class, C, H, W]. An episode draws N classes
without replacement, K + Q images of each without replacement, and (Omniglot) one rotation by a
multiple of 90 degrees per class, so a rotated character acts as a new class, as the reference
code. Labels are the positions 0..N-1 of the drawn classes. Training episodes come from the
generator of the run; the 600 test and the validation episodes from fixed seeds.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import torch
from torch import Tensor, nn

from maml_bench.config import COUNT, MetaConfig
from maml_bench.core.functional import SupervisedBatch, task_cross_entropy
from maml_bench.domains import Items, Number, OneOf, require, setting
from maml_bench.errors import UserError
from maml_bench.models import MLP, Conv4
from maml_bench.tasks.base import SupervisedBenchmark
from maml_bench.tasks.fewshot import pools

#: Lake et al.'s one-shot runs (test_set=lake-runs): how many, and their ways
LAKE_RUNS = 20
LAKE_WAYS = 20
#: the algorithms that apply `loss_convention` (MAML's inner loop with inner_lr)
REFERENCE_LOSS = ("maml", "fomaml", "anil", "context-vector", "maml-authors")
#: the pre-trained baselines (algorithms/finetune.py), which read `baseline_protocol`
BASELINES = ("finetune", "nearest-neighbour")


@dataclass(frozen=True)
class FewShotConfig(MetaConfig):
    """Few-shot classification settings; MetaConfig's shots and queries count per class."""

    dataset: str = setting("omniglot", OneOf(("omniglot", "miniimagenet", "miniimagenet-demo")))
    """folder under the data root (--data-root or MAML_BENCH_DATA); miniimagenet-demo: data
    generated in MiniImagenet's formats by `maml-bench data synth miniimagenet`"""
    split: str = setting("maml", OneOf(("maml", "vinyals", "background")))
    """class split: maml (Omniglot: 1,100 / 100 / 423 characters; MiniImagenet: its CSVs) |
    vinyals (Omniglot: the 1,028 / 172 / 423 characters of Vinyals et al. 2016) | background
    (Omniglot: train and val on images_background only, 845 / 119 characters, test the 659 of
    images_evaluation, so Lake et al.'s one-shot runs are new alphabets; validation is 4 whole
    background alphabets (at least the MAML split's 100 characters, `omniglot.background_split`),
    so it measures new alphabets as the runs do)"""
    ways: int = setting(5, Number(int, 2, 100))
    """N classes per episode"""
    rotations: str = setting("per-episode", OneOf(("per-episode", "none")))
    """Omniglot: rotate each drawn class by a random multiple of 90 degrees (the code's
    augmentation: a rotated character is a new class) | none"""
    network: str = setting("conv", OneOf(("conv", "mlp")))
    """conv: the paper's Conv4; mlp: the non-convolutional 256-128-64-64 net with batch norm"""
    filters: int = setting(64, Number(int, 1, 1024))
    """Conv4 channels (paper: 64 Omniglot, 32 MiniImagenet)"""
    test_query: int = setting(0, Number(int, 0, 1_000), evaluation_only=True)
    """query images per class in test and validation episodes; 0 = K, as the reference code
    (later suites use 15)"""
    batch_norm: str = setting("transductive", OneOf(("transductive",)))
    """batch statistics of the current batch also at test time, so each query set is
    normalised by its own statistics (the reference code's convention; it moves the numbers)"""
    val_every: int = setting(1_000, Number(int, 0, 10_000_000))
    """meta-iterations between validation accuracies on val_tasks held-out episodes (0 = off)"""
    # --- the reference code's conventions (cbfinn/maml); added after runs existed, so left
    # out of the hash at their defaults (today's choices)
    loss_convention: str = setting("mean", OneOf(("mean", "sum-per-shot")),
                                   hashed_at_default=False, used_by=REFERENCE_LOSS)
    """mean: cross-entropy averaged over a set's examples | sum-per-shot: the reference code's
    (per-example cross-entropy / K, differentiated as a sum): the inner loss is N x the mean, so
    a step of inner_lr is N x inner_lr on the mean; the query loss N Q / K x the mean, which
    moves only grad_clip's effect (and Adam's epsilon)"""
    adapt_norm: str = setting("yes", OneOf(("yes", "no")), hashed_at_default=False,
                              used_by=("maml", "fomaml", "maml-authors"))
    """yes: the inner loop adapts every parameter | no: not the batch-norm ones (meta-learned
    only, as the reference code, whose inner loop adapts its `weights` dict)"""
    bn_scale: str = setting("learned", OneOf(("learned", "none")), hashed_at_default=False)
    """Conv4 batch norm: learned scale and offset | none: offset only (the reference code:
    TensorFlow's batch_norm, scale=False)"""
    bn_eps: float = setting(1e-5, Number(float, 0.0, 1.0, lo_open=True),
                            hashed_at_default=False)
    """Conv4 batch norm's epsilon (PyTorch 1e-5; the reference code 1e-3)"""
    preprocessing: str = setting("suite", OneOf(("suite", "reference")), hashed_at_default=False)
    """the images as the suite prepares them | reference: as the reference code's did (Omniglot:
    binary, resized with nearest sampling, what its Lanczos call on 1-bit PNGs did;
    MiniImagenet: TensorFlow's JPEG decoder, libjpeg's fast integer IDCT)"""
    test_set: str = setting("episodes", OneOf(("episodes", "lake-runs")), hashed_at_default=False,
                            evaluation_only=True)
    """episodes: test_tasks seeded episodes of the test split | lake-runs: Lake et al.'s 20
    one-shot runs (Omniglot all_runs.zip, 20-way 1-shot within an evaluation alphabet; the first
    test_tasks of them), for a model trained with split=background"""
    init: str = setting("torch", OneOf(("torch", "reference")), hashed_at_default=False)
    """Conv4 initialisation: torch's defaults | reference: the reference code's (Xavier-uniform
    kernels and zero biases; head Xavier-uniform (MiniImagenet) or N(0, 1) (Omniglot))"""
    padding: str = setting("torch", OneOf(("torch", "tf-same")), hashed_at_default=False)
    """Conv4's stride-2 convolutions (Omniglot): torch: padding 1 on every side | tf-same:
    TensorFlow's 'SAME', as the reference code (28 -> 14 pads 0 before and 1 after, 7 -> 4 pads
    1 and 1: `models.conv.same_pads`). The max-pool network's stride-1 convolutions pad 1 and 1
    either way"""
    # --- metric learners; added after runs existed, so left out of the hash at their defaults
    protonet_train_ways: int = setting(0, Number(int, 0, 1_000), hashed_at_default=False,
                                       used_by=("protonets",))
    """Prototypical Networks: classes per training episode, 0 = the experiment's ways (Snell
    et al. 2017 train with more: 60 for Omniglot, 30 / 20 for MiniImagenet 1 / 5-shot)"""
    protonet_lr_halving: int = setting(2_000, Number(int, 0, COUNT), hashed_at_default=False,
                                       used_by=("protonets",))
    """Prototypical Networks: iterations between halvings of the Adam step size, 0 = never
    (Snell et al. 2017: every 2,000 episodes, one episode per step)"""
    matching_fce_steps: int = setting(0, Number(int, 0, 100), hashed_at_default=False,
                                      used_by=("matchingnets",))
    """Matching Networks: processing steps K of the attention LSTM of full context embeddings,
    0 = no full context embeddings (Vinyals et al. 2016 use none for Omniglot)"""
    metalstm_hidden: int = setting(20, Number(int, 1, 1024), hashed_at_default=False,
                                   used_by=("metalstm",))
    """meta-learner LSTM (Ravi & Larochelle 2017): hidden units of its first, ordinary LSTM
    layer, shared across coordinates (paper: 20)"""
    metalstm_steps: int = setting(0, Number(int, 0, 100), hashed_at_default=False,
                                  used_by=("metalstm",))
    """meta-learner LSTM: learner updates per training episode, each on the whole support set
    (paper: 12 for 1-shot, 5 for 5-shot MiniImagenet); 0 = eval_steps, so the meta-test's last
    column is the step count it was trained for"""
    metalstm_clip_norm: float = setting(0.25, Number(float, 0.0, 1e6), hashed_at_default=False,
                                        used_by=("metalstm",))
    """meta-learner LSTM: clip the meta-gradient's global norm to this (0 = off; the paper's
    code: 0.25)"""
    # --- the pre-trained baselines; added after runs existed, so left out of the hash at their
    # defaults
    baseline_protocol: str = setting("suite", OneOf(("suite", "ravi")), hashed_at_default=False,
                                     used_by=BASELINES)
    """suite: pre-trained with batch statistics always, then fine-tuned from a zero head by
    plain steps of a step size tuned over finetune_lrs | ravi: Ravi & Larochelle's code
    (twitter/meta-learning-lstm: model/baselines/pre-train.lua, pre-trained-SGD.lua), whose
    numbers the paper cites: batch norm keeps running statistics (momentum 0.1) while
    pre-training; per episode one fixed random head and the whole network are fine-tuned by
    eval_steps SGD steps of lr / (1 + t decay) on the support set, in training mode, with (lr,
    decay) chosen from finetune_lrs x finetune_lr_decays on the validation episodes; queries and
    nearest-neighbour features are computed in evaluation mode (the running statistics)"""
    pretrain_batch: int = setting(0, Number(int, 0, 100_000), hashed_at_default=False,
                                  used_by=BASELINES)
    """images per pre-training step of the baselines; 0 = the images MAML sees per
    meta-iteration, meta_batch x ways x (train_shots + train_query) (Ravi & Larochelle: 64)"""
    finetune_lr_decays: tuple[float, ...] = setting(
        (0.0,), Items(Number(float, 0.0, 1e6), 1, 64), hashed_at_default=False,
        used_by=BASELINES)
    """baseline_protocol=ravi: step-size decays d searched with finetune_lrs; fine-tuning step t
    (from 0) takes lr / (1 + t d), as Torch's optim.sgd (Ravi & Larochelle: 1, 0.1, ..., 1e-5, 0)"""

    def validate(self) -> None:
        super().validate()
        require(self.eval_steps >= 1, ["eval_steps"], "eval_steps >= 1 (accuracy after "
                "fine-tuning)")
        conv_only = [name for name, default in (("bn_scale", "learned"), ("bn_eps", 1e-5),
                                                ("init", "torch"), ("adapt_norm", "yes"),
                                                ("padding", "torch"), ("filters", 64))
                     if getattr(self, name) != default]
        require(self.network == "conv" or not conv_only, conv_only + ["network"],
                "these settings are the Conv4's (network=conv); the no-conv MLP keeps its own")
        require(self.protonet_train_ways == 0 or self.protonet_train_ways >= self.ways,
                ["protonet_train_ways", "ways"],
                "protonet_train_ways = 0 (the experiment's ways) or >= ways")
        if self.baseline_protocol == "ravi":
            require(self.network == "conv" and self.bn_scale == "learned",
                    ["baseline_protocol", "network", "bn_scale"], "network=conv and "
                    "bn_scale=learned for baseline_protocol=ravi (its batch norm keeps running "
                    "statistics of a learned scale and offset, as Torch's)")
        require(self.baseline_protocol == "ravi" or tuple(self.finetune_lr_decays) == (0.0,),
                ["finetune_lr_decays", "baseline_protocol"], "finetune_lr_decays=0 (no decay) "
                "unless baseline_protocol=ravi, the protocol that searches decays")
        # pools.load reads `split` for Omniglot alone (MiniImagenet's is its CSVs): another
        # value there would be recorded in run.json but train on the same classes.
        require(self.split == "maml" or self.dataset == "omniglot", ["split", "dataset"],
                f"split=maml for dataset={self.dataset} (only Omniglot has another split)")
        # the Omniglot loader and its stride-2 Conv4 alone read these: elsewhere another value
        # would be recorded in run.json and change nothing
        require(self.rotations == "per-episode" or self.dataset == "omniglot",
                ["rotations", "dataset"], f"rotations=per-episode (its default) for "
                f"dataset={self.dataset}: rotation is Omniglot's augmentation, other data is "
                "never rotated")
        require(self.padding == "torch" or self.dataset == "omniglot", ["padding", "dataset"],
                f"padding=torch for dataset={self.dataset}: its Conv4 max-pools after stride-1 "
                "convolutions, which pad 1 and 1 either way")
        if self.test_set == "lake-runs":
            require(self.dataset == "omniglot" and self.split == "background",
                    ["test_set", "dataset", "split"], "dataset=omniglot and split=background for "
                    "test_set=lake-runs (the runs' alphabets held out of training)")
            require(self.ways == LAKE_WAYS and tuple(self.eval_shots) == (1,)
                    and self.test_query in (0, 1), ["test_set", "ways", "eval_shots", "test_query"],
                    "ways=20, eval_shots=1 and test_query=0 or 1 for "
                    "test_set=lake-runs (20-way 1-shot, one test drawing per class)")
            require(self.test_tasks <= LAKE_RUNS, ["test_tasks", "test_set"],
                    f"test_tasks <= {LAKE_RUNS} for test_set=lake-runs (Lake et al.'s runs)")


class FewShot(SupervisedBenchmark):
    """N-way K-shot classification episodes; metric: query accuracy in percent."""

    metric_name = "accuracy"
    higher_is_better = True
    config_class = FewShotConfig
    #: the settings the network's size grows with (named by a memory refusal)
    size_settings = ("filters", "network")

    def __init__(self, config: FewShotConfig) -> None:
        super().__init__(config)
        self.pools = pools.load(config.dataset, config.split, config.preprocessing)
        for split, pool in self.pools.items():
            if pool.shape[0] < config.ways:
                raise UserError(f"{config.dataset} {split} split has {pool.shape[0]} classes: "
                                f"cannot draw {config.ways}-way episodes; lower --set ways")
        # Lake's runs read when the benchmark is built, so preflight refuses a missing or
        # damaged all_runs.zip before training, not after it.
        self.lake = (lake_batch(config.preprocessing, config.test_tasks)
                     if config.test_set == "lake-runs" else None)
        need = max(config.train_shots + config.train_query,
                   max(config.eval_shots) + self.test_query(max(config.eval_shots)))
        have = min(p.shape[1] for p in self.pools.values())
        if need > have:
            raise UserError(f"{config.dataset} has {have} images per class: K + Q = {need} "
                            "cannot be drawn; lower train_shots/train_query/eval_shots/test_query")

    def test_query(self, shots: int) -> int:
        return self.config.test_query or shots  # 0: K per class, as the reference code

    @property
    def image_shape(self) -> tuple[int, ...]:
        return tuple(self.pools["train"].shape[2:])

    def make_model(self, extra_inputs: int = 0) -> nn.Module:
        c, (channels, size, _) = self.config, self.image_shape
        if c.network == "mlp":
            # Extra inputs join images channel-wise (models/context.py), so they count per pixel.
            return FlatMLP((channels + extra_inputs) * size * size, c.ways)
        mini = c.dataset.startswith("miniimagenet")
        return Conv4(channels + extra_inputs, c.ways, c.filters, size,
                     downsample="maxpool" if mini else "stride", head="flatten" if mini else "mean",
                     bn_scale=c.bn_scale == "learned", bn_eps=c.bn_eps, init=c.init,
                     padding=c.padding)

    def train_batch(self, gen: torch.Generator, n_tasks: int, shots: int, query: int
                    ) -> SupervisedBatch:
        return episodes(self.pools["train"], gen, n_tasks, self.config.ways, shots, query,
                        self.rotate)

    @property
    def rotate(self) -> bool:
        return self.config.rotations == "per-episode" and self.config.dataset == "omniglot"

    @property
    def n_train_classes(self) -> int:
        """Classes of the training split as a pre-trained baseline sees them: with rotations,
        each character at each of 4 quarter turns is its own class (as in the episodes)."""
        return self.pools["train"].shape[0] * (4 if self.rotate else 1)

    def classification_batch(self, gen: torch.Generator, n: int) -> tuple[Tensor, Tensor]:
        """`n` training images drawn uniformly over all training classes (and rotations), with
        their class ids, for pre-training the fine-tuning and nearest-neighbour baselines."""
        pool = self.pools["train"]
        classes = torch.randint(0, self.n_train_classes, (n,), generator=gen)
        images = torch.randint(0, pool.shape[1], (n,), generator=gen)
        turns = classes % 4 if self.rotate else torch.zeros_like(classes)
        x = pool[classes // 4 if self.rotate else classes, images]  # [n, C, H, W]
        x = _rotate(x.unsqueeze(1), turns.unsqueeze(1)).squeeze(1)
        return x.float() / 255.0, classes

    def eval_sets(self, split: str) -> dict[int, SupervisedBatch]:
        c = self.config
        if split not in ("test", "val"):
            raise ValueError(f"split must be test or val, got {split!r}")
        if split == "test" and self.lake is not None:
            return {1: self.lake}
        n = c.test_tasks if split == "test" else c.val_tasks
        return {k: _fixed_episodes(self, split, n, k) for k in c.eval_shots}

    def loss(self, pred: Tensor, target: Tensor) -> Tensor:
        return task_cross_entropy(pred, target)

    def metric(self, pred: Tensor, target: Tensor) -> Tensor:
        return (pred.argmax(-1) == target).float().mean(1) * 100.0


class FlatMLP(MLP):
    """The paper's non-convolutional Omniglot network: 256-128-64-64 with batch norm and ReLU,
    on flattened images."""

    def __init__(self, in_features: int, classes: int) -> None:
        super().__init__(in_features, [256, 128, 64, 64], classes, batch_norm=True)

    def input_features(self, x: Tensor) -> Tensor:
        return x.flatten(start_dim=-3)


def _fixed_episodes(bench: FewShot, split: str, n: int, shots: int) -> SupervisedBatch:
    c = bench.config
    # Validation episodes use another seed than test episodes; both the same for every method.
    seed = c.test_seed if split == "test" else c.test_seed + 1
    return _cached_episodes(c.dataset, c.split, split, seed, n, c.ways, shots,
                            bench.test_query(shots), bench.rotate, c.preprocessing)


@cache
def _cached_episodes(dataset: str, split_name: str, split: str, seed: int, n: int, ways: int,
                     shots: int, query: int, rotate: bool, preprocessing: str = "suite"
                     ) -> SupervisedBatch:
    pool = pools.load(dataset, split_name, preprocessing)[split]
    return episodes(pool, torch.Generator().manual_seed(seed), n, ways, shots, query, rotate)


def lake_batch(preprocessing: str, runs: int) -> SupervisedBatch:
    """Lake et al.'s first `runs` one-shot runs as test tasks: support the 20 training drawings
    (label i for class i), query the 20 test drawings, float images in [0, 1] as `episodes`'."""
    from maml_bench.tasks.fewshot.data_root import data_root
    from maml_bench.tasks.fewshot.lake_runs import load_runs
    from maml_bench.tasks.fewshot.omniglot import resize_of

    data = load_runs(data_root() / "omniglot", resize_of(preprocessing))
    support = torch.from_numpy(data.support[:runs]).unsqueeze(2).float() / 255.0
    query = torch.from_numpy(data.query[:runs]).unsqueeze(2).float() / 255.0
    labels = torch.arange(support.shape[1]).expand(support.shape[0], -1).clone()
    return SupervisedBatch(support, labels, query, torch.from_numpy(data.query_labels[:runs]))


def episodes(pool: Tensor, gen: torch.Generator, n_tasks: int, ways: int, shots: int,
             query: int, rotate: bool) -> SupervisedBatch:
    """`n_tasks` episodes from `pool` [classes, images, C, H, W] (uint8): float images in
    [0, 1], support [T, N*K, C, H, W] and query [T, N*Q, ...], labels class positions."""
    classes = torch.rand(n_tasks, pool.shape[0], generator=gen).argsort(1)[:, :ways]
    images = torch.rand(n_tasks, ways, pool.shape[1], generator=gen).argsort(2)[..., :shots + query]
    x = pool[classes.unsqueeze(-1), images]  # [T, N, K+Q, C, H, W]
    if rotate:
        turns = torch.randint(0, 4, (n_tasks, ways), generator=gen)
        x = _rotate(x, turns)
    x = x.float() / 255.0
    labels = torch.arange(ways).view(1, ways, 1)
    support = x[:, :, :shots].flatten(1, 2)
    query_x = x[:, :, shots:].flatten(1, 2)
    y_support = labels.expand(n_tasks, ways, shots).flatten(1)
    y_query = labels.expand(n_tasks, ways, query).flatten(1)
    return SupervisedBatch(support, y_support, query_x, y_query, classes)


def _rotate(x: Tensor, turns: Tensor) -> Tensor:
    """Rotate the images of class (t, n) by turns[t, n] quarter turns."""
    out = x.clone()
    for k in (1, 2, 3):
        mask = turns == k
        if mask.any():
            out[mask] = torch.rot90(x[mask], k, dims=(-2, -1))
    return out

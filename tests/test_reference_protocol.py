"""The reference code's classification protocol (cbfinn/maml) as settings, and the MAML authors'
released MiniImagenet model through the suite's own network:

* loss_convention=sum-per-shot: one inner step on the reference's loss (per-example
  cross-entropy / K, summed) equals a step of N alpha on the mean loss, in float64; the query
  gradient is N Q / K times the mean's before clipping;
* adapt_norm=no leaves the batch-norm offsets alone in the inner loop; bn_scale=none has none;
* the released weights: names, shapes and TensorFlow layouts, against an independent NHWC
  forward written from the reference's ops; damaged files refused in one line.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from maml_bench.algorithms import ALGORITHMS
from maml_bench.errors import UserError
from maml_bench.models.conv import Conv4
from maml_bench.models.reference_weights import NAMES, conv4_state, read_reference, weights_path
from maml_bench.runner import plan_runs
from maml_bench.tasks import BENCHMARKS
from maml_bench.tasks.fewshot import episodes as episodes_module
from maml_bench.tasks.fewshot import pools
from maml_bench.tasks.fewshot.data_root import CACHE_ENV, DATA_ENV, data_root
from maml_bench.tasks.fewshot.synth import synth_miniimagenet

REFERENCE = weights_path(data_root())
needs_reference = pytest.mark.skipif(
    not REFERENCE.is_file(), reason=f"the MAML authors' model not found at {REFERENCE}: put "
    "cbfinn/maml's logs/miniimagenet1shot checkpoint there as weights.npz (see "
    "../shared/data/maml-reference/README.md), or point MAML_BENCH_DATA at a folder holding it")


@pytest.fixture
def generated(tmp_path, monkeypatch):
    """Generated MiniImagenet (5 classes a split) as the data root's miniimagenet/."""
    root = tmp_path / "data" / "miniimagenet"
    root.mkdir(parents=True)
    synth_miniimagenet(root, (5, 5, 5), 20, seed=3, form="csv")  # v2 decodes the JPEGs
    monkeypatch.setenv(DATA_ENV, str(root.parent))
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    pools.load.cache_clear()
    episodes_module._cached_episodes.cache_clear()
    yield root
    pools.load.cache_clear()
    episodes_module._cached_episodes.cache_clear()


def _maml(method: str = "maml", **settings):
    """A MAML of the real MiniImagenet protocol (v2) at 4 filters on the generated data, its
    settings given as `--set` would (checked against their domains)."""
    sets = ["path=loop"] + [f"{k}={v}" for k, v in settings.items()]
    (run,) = plan_runs("miniimagenet-5w1s-v2", "tiny", sets, [method], None, Path("unused"))
    config = run.config
    bench = BENCHMARKS.get("fewshot")(config)
    return ALGORITHMS.get(method)(bench, config, 0), bench


def test_sum_per_shot_step_is_the_reference_loss_step(generated):
    """float64: theta - alpha grad(sum_i CE_i / K) == what the suite steps with alpha under
    sum-per-shot, and == a step of N alpha on the mean loss under the mean convention."""
    maml, bench = _maml(loss_convention="sum-per-shot", train_shots=2, inner_lr=0.01)
    model = maml.model.double()
    theta = dict(model.named_parameters())
    batch = bench.train_batch(torch.Generator().manual_seed(1), 1, 2, 3).to(torch.float64)
    x, y = batch.x_support[0], batch.y_support[0]
    ways, shots, alpha = 5, 2, 0.01

    def step(loss: torch.Tensor, lr: float) -> dict[str, torch.Tensor]:
        grads = torch.autograd.grad(loss, list(theta.values()))
        return {k: v - lr * g for (k, v), g in zip(theta.items(), grads, strict=True)}

    reference = step((F.cross_entropy(model(x), y, reduction="none") / shots).sum(), alpha)
    ours = step(bench.loss(model(x).unsqueeze(0), y.unsqueeze(0)).sum(), maml.step_sizes())
    mean_at_n_alpha = step(F.cross_entropy(model(x), y), ways * alpha)
    assert maml.step_sizes() == pytest.approx(ways * alpha)
    for name in theta:
        torch.testing.assert_close(ours[name], reference[name], rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(mean_at_n_alpha[name], reference[name], rtol=1e-12,
                                   atol=1e-14)
    mean, _ = _maml(loss_convention="mean", inner_lr=alpha)
    assert mean.step_sizes() == alpha and mean.query_loss_scale(batch) == 1.0
    # the query loss: sum over N Q queries of CE / K, averaged over tasks = N Q / K x the mean
    assert maml.query_loss_scale(batch) == ways * 3 / shots


def test_the_query_gradient_is_scaled_before_clipping(generated):
    """One training step under sum-per-shot hands Adam the clipped gradient of the reference's
    query loss: N Q / K x the mean loss's gradient, clipped at grad_clip."""
    clip = 1e-3
    ref, _ = _maml(loss_convention="sum-per-shot", grad_clip=clip)
    mean, _ = _maml(loss_convention="sum-per-shot", grad_clip=0.0)
    seen = {}
    for name, algorithm in (("clipped", ref), ("raw", mean)):
        def capture(algorithm=algorithm, name=name):
            seen[name] = [p.grad.clone() for p in algorithm.meta_parameters()]
        algorithm.optimizer.step = capture
        algorithm.train_step(0)
    batch = ref.benchmark.train_batch(torch.Generator(), 1, ref.config.train_shots,
                                      ref.config.train_query)
    scale = ref.query_loss_scale(batch)
    assert scale == 5 * ref.config.train_query / ref.config.train_shots
    _, grads = mean.meta_gradient(mean.benchmark.train_batch(
        torch.Generator().manual_seed(mean.seed), mean.config.meta_batch, mean.config.train_shots,
        mean.config.train_query), mean.meta_parameters())
    for raw, clipped, unscaled in zip(seen["raw"], seen["clipped"], grads, strict=True):
        torch.testing.assert_close(raw, unscaled * scale)
        torch.testing.assert_close(clipped, (unscaled * scale).clamp(-clip, clip))
    assert any((g.abs() == clip).any() for g in seen["clipped"])  # the clip did bite


def test_adapt_norm_no_leaves_batch_norm_offsets_unadapted(generated):
    maml, bench = _maml(adapt_norm="no", bn_scale="none")
    norm = maml.model.norm_keys
    assert norm == [f"features.{i}.bias" for i in (1, 5, 9, 13)]  # offsets only: no scale
    assert sorted(maml.adapted()) == sorted(k for k in maml.theta if k not in norm)
    forward, theta, lrs = maml.fine_tuner(1)
    assert set(theta) == set(maml.adapted())  # the offsets ride along fixed, not adapted
    everything, _ = _maml(adapt_norm="yes", bn_scale="learned")
    assert everything.adapted() is None
    assert {f"features.{i}.weight" for i in (1, 5, 9, 13)} <= set(everything.theta)


def test_the_reference_settings_are_the_conv_nets(generated):
    with pytest.raises(UserError, match="network=conv"):
        _maml(network="mlp", bn_scale="none")


def test_reference_init_matches_the_reference_initialisers():
    torch.manual_seed(0)
    model = Conv4(3, 5, 32, 84, "maxpool", "flatten", bn_scale=False, bn_eps=1e-3,
                  init="reference")
    conv = model.features[4].weight  # 32 -> 32, 3 x 3: Xavier-uniform limit sqrt(6 / 576)
    assert conv.abs().max() <= (6 / (9 * 32 + 9 * 32)) ** 0.5
    assert conv.std().item() == pytest.approx((6 / 576) ** 0.5 / 3 ** 0.5, rel=0.05)
    assert model.features[0].bias.abs().max() == 0 and model.classifier.bias.abs().max() == 0
    assert model.classifier.weight.abs().max() <= (6 / 805) ** 0.5
    omniglot = Conv4(1, 5, 64, 28, init="reference")  # averaged head: N(0, 1)
    assert omniglot.classifier.weight.std().item() == pytest.approx(1.0, rel=0.25)


def _tf_forward(arrays: dict[str, np.ndarray], x_nhwc: np.ndarray) -> np.ndarray:
    """The reference's forward written from its ops (maml.py forward_conv, utils.conv_block) in
    NHWC with its own layouts: conv 3x3 'SAME' with HWIO kernels + bias, batch norm over
    (N, H, W) with offset beta, no scale, epsilon 1e-3, ReLU, 2x2 max-pool 'VALID', NHWC
    flatten, x @ w5 + b5. float64 numpy, independent of the suite's network and converter."""
    h = x_nhwc.astype(np.float64)
    biases = ["model/Variable", "model/Variable_1", "model/Variable_2", "model/Variable_3"]
    for block in range(4):
        kernel = arrays[f"model/conv{block + 1}"].astype(np.float64)  # [3, 3, in, out]
        n, height, width, _ = h.shape
        padded = np.pad(h, ((0, 0), (1, 1), (1, 1), (0, 0)))
        out = np.zeros((n, height, width, kernel.shape[3]))
        for dy in range(3):
            for dx in range(3):
                out += padded[:, dy:dy + height, dx:dx + width, :] @ kernel[dy, dx]
        out += arrays[biases[block]]
        mean, var = out.mean((0, 1, 2)), out.var((0, 1, 2))
        out = (out - mean) / np.sqrt(var + 1e-3) + arrays[f"model/{block}/beta"]
        out = np.maximum(out, 0)
        half_h, half_w = height // 2, width // 2
        out = out[:, :2 * half_h, :2 * half_w].reshape(n, half_h, 2, half_w, 2, -1).max((2, 4))
        h = out
    return h.reshape(h.shape[0], -1) @ arrays["model/w5"] + arrays["model/b5"]


@needs_reference
def test_reference_weights_load_into_conv4_with_the_reference_forward():
    arrays = read_reference(REFERENCE)
    assert sum(a.size for a in arrays.values()) == 32_773  # the checkpoint's trainable floats
    model = Conv4(3, 5, 32, 84, "maxpool", "flatten", bn_scale=False, bn_eps=1e-3).double()
    state = conv4_state(arrays)
    assert set(state) == {k for k, _ in model.named_parameters()}
    model.load_state_dict({k: v.double() for k, v in state.items()})
    x = torch.rand(5, 84, 84, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    expected = _tf_forward(arrays, x.numpy())
    ours = model(x.permute(0, 3, 1, 2)).detach().numpy()
    np.testing.assert_allclose(ours, expected, rtol=1e-9, atol=1e-9)
    # a wrong layout is caught by that comparison: the NCHW head applied to NHWC rows differs
    wrong = {**state, "classifier.weight": torch.from_numpy(arrays["model/w5"].T.copy())}
    model.load_state_dict({k: v.double() for k, v in wrong.items()})
    assert not np.allclose(model(x.permute(0, 3, 1, 2)).detach().numpy(), expected, atol=1e-3)


def _damaged(tmp_path: Path, change) -> Path:
    arrays = dict(np.load(REFERENCE))
    change(arrays)
    path = tmp_path / "weights.npz"
    np.savez(path, **arrays)
    return path


@needs_reference
@pytest.mark.parametrize(("case", "change", "message"), [
    ("missing", lambda a: a.pop("model/w5"), "model/w5 differ"),
    ("extra", lambda a: a.update({"model/conv5": np.zeros(3, np.float32)}), "model/conv5"),
    ("shape", lambda a: a.update({"model/b5": np.zeros(4, np.float32)}), "not finite float32"),
    ("nan", lambda a: a["model/conv1"].__setitem__((0, 0, 0, 0), np.nan), "not finite"),
])
def test_damaged_reference_weights_are_one_line(tmp_path, case, change, message):
    path = _damaged(tmp_path, change)
    with pytest.raises(UserError) as err:
        read_reference(path)
    assert "\n" not in str(err.value) and message in str(err.value) and str(path) in str(err.value)


@needs_reference
def test_truncated_or_pickled_reference_weights_are_refused(tmp_path):
    path = tmp_path / "weights.npz"
    path.write_bytes(REFERENCE.read_bytes()[:2000])
    with pytest.raises(UserError, match="unreadable"):
        read_reference(path)
    np.savez(path, **{name: np.array([object()]) for name in NAMES})  # object arrays: pickles
    with pytest.raises(UserError, match="unreadable"):
        read_reference(path)


def test_authors_model_needs_its_own_network(generated, tmp_path, monkeypatch):
    (run,) = plan_runs("miniimagenet-5w1s-v2", "tiny", [], ["maml-authors"], None, tmp_path)
    bench = BENCHMARKS.get("fewshot")(run.config)
    with pytest.raises(UserError, match="filters=4"):  # the tiny scale's 4 filters
        ALGORITHMS.get("maml-authors")(bench, run.config, 0)


@needs_reference
def test_authors_model_is_meta_tested_by_the_suite(generated, tmp_path):
    """The released weights end up as theta, untouched by 0 training iterations, and the run
    meta-tests them (on generated images here: the real ones are the results' job)."""
    from maml_bench.runner import execute

    shared = tmp_path / "data"
    shutil.copytree(REFERENCE.parent.parent, shared / "maml-reference")
    (run,) = plan_runs("miniimagenet-5w1s-v2", "tiny", ["filters=32", "test_tasks=3"],
                       ["maml-authors"], None, tmp_path / "out")
    bench = BENCHMARKS.get("fewshot")(run.config)
    algorithm = ALGORITHMS.get("maml-authors")(bench, run.config, 0)
    assert algorithm.iterations == 0
    for name, value in conv4_state(read_reference(REFERENCE)).items():
        assert torch.equal(algorithm.theta[name].detach(), value)
    records = execute(run, progress=False)
    assert (records / "records.csv.gz").is_file()


def test_omniglot_reference_resize_is_pillows_own_on_one_bit_images():
    """The reference code's resize_images.py: Image.resize((28, 28), LANCZOS) on the 1-bit
    PNGs, which Pillow does with NEAREST. Our explicit binary nearest sampling equals it bit for
    bit (random 1-bit images here; every real PNG in the next test)."""
    from PIL import Image

    from maml_bench.tasks.fewshot.omniglot import reference_resize

    rng = np.random.default_rng(0)
    for _ in range(20):
        bits = rng.random((105, 105)) < rng.uniform(0.05, 0.6)
        image = Image.fromarray(bits.astype(np.uint8) * 255).convert("1")
        pillow = np.asarray(image.resize((28, 28), Image.LANCZOS).convert("L"))
        assert np.array_equal(reference_resize(image), pillow)
        assert set(np.unique(pillow)) <= {0, 255}  # binary: no filter ran
        grey = np.asarray(image.convert("L").resize((28, 28), Image.LANCZOS))
        assert not np.array_equal(grey, pillow)  # the suite's Lanczos is another image


OMNIGLOT_ZIP = data_root() / "omniglot" / "images_background.zip"


@pytest.mark.skipif(not OMNIGLOT_ZIP.is_file(), reason=f"real Omniglot not found at "
                    f"{OMNIGLOT_ZIP}: the official zips of brendenlake/omniglot (python/)")
def test_omniglot_reference_resize_on_real_pngs():
    import io
    import zipfile

    from PIL import Image

    from maml_bench.tasks.fewshot.omniglot import reference_resize

    with zipfile.ZipFile(OMNIGLOT_ZIP) as archive:
        names = sorted(n for n in archive.namelist() if n.endswith(".png"))[::40]
        for name in names:  # 483 drawings across the alphabets
            with Image.open(io.BytesIO(archive.read(name))) as image:
                assert image.mode == "1"
                pillow = np.asarray(image.resize((28, 28), Image.LANCZOS).convert("L"))
                assert np.array_equal(reference_resize(image), pillow), name


def test_miniimagenet_reference_decoder_is_libjpegs_fast_idct(tmp_path):
    """preprocessing=reference decodes with libjpeg's fast integer IDCT (TensorFlow's
    decode_jpeg default, measured bit-identical on the 12,000 test images: docs/miniimagenet.md),
    which differs from Pillow's accurate one; each has its own cache key."""
    import simplejpeg
    from PIL import Image

    from maml_bench.tasks.fewshot.miniimagenet import _decode, source_key

    rng = np.random.default_rng(1)
    pixels = (rng.random((84, 84, 3)) * 255).astype(np.uint8)
    path = tmp_path / "a.jpg"
    Image.fromarray(pixels).save(path, quality=75)
    data = path.read_bytes()
    reference, _ = _decode(data, "reference")
    suite, _ = _decode(data, "suite")
    fast = simplejpeg.decode_jpeg(data, colorspace="RGB", fastdct=True, fastupsample=False)
    assert np.array_equal(reference, fast.transpose(2, 0, 1))
    assert np.array_equal(suite, np.asarray(Image.open(path).convert("RGB")).transpose(2, 0, 1))
    assert not np.array_equal(reference, suite)
    root = tmp_path / "mini"
    root.mkdir()
    synth_miniimagenet(root, (5, 5, 5), 2, seed=0, form="csv")
    assert source_key(root, "reference") != source_key(root, "suite")


def test_reference_decoding_needs_the_jpegs(tmp_path):
    from maml_bench.tasks.fewshot.miniimagenet import load_miniimagenet

    root = tmp_path / "mini"
    root.mkdir()
    synth_miniimagenet(root, (5, 5, 5), 2, seed=0, form="pickle")
    with pytest.raises(UserError, match="preprocessing=reference decodes the JPEGs"):
        load_miniimagenet(root, preprocessing="reference")

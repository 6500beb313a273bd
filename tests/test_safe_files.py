"""Files the suite reads back run no code (checkpoints and the render child's state load with
weights_only=True), and files it writes follow the umask (colleagues can read shared results)."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest
import torch

from maml_bench.cli import main
from maml_bench.results import RECORDS_FILE, RUN_INFO_FILE, file_mode, write_json
from maml_bench.runner import CHECKPOINT_FILE, _load_checkpoint, _save_checkpoint

ROOT = Path(__file__).resolve().parents[1]
TINY = ["run", "sinusoid-table2-v1", "--scale", "tiny", "--method", "maml", "--no-report"]
RUN_DIR = Path("sinusoid-table2-v1/raw/maml/seed-0")


class Payload:
    """Unpickled without weights_only, this creates `marker`: what a tampered file could do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return Path.touch, (self.marker,)


def plant(path: Path, marker: Path) -> None:
    """A checkpoint-shaped file whose unpickling would run code."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"algorithm": {}, "iteration": 1, "train_log": [], "config_hash": "x",
                "evil": Payload(marker)}, path)


def test_the_payload_is_live_without_weights_only(tmp_path):
    """The guard for the tests below: the planted file does run code if unpickled fully."""
    marker = tmp_path / "MARKER"
    plant(tmp_path / CHECKPOINT_FILE, marker)
    torch.load(tmp_path / CHECKPOINT_FILE, weights_only=False)
    assert marker.exists()


def refused_in_one_line(capsys, code: int, path: Path, fix: str = "delete it") -> str:
    """The one error line, after checking it came before any run started."""
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err and "started" not in err, err
    (line,) = [line for line in err.splitlines() if "error" in line]  # beside progress lines
    assert str(path) in line and fix in line
    return line


def test_a_tampered_checkpoint_is_refused_on_resume(tmp_path, capsys):
    marker, ckpt = tmp_path / "MARKER", tmp_path / RUN_DIR / CHECKPOINT_FILE
    plant(ckpt, marker)
    err = refused_in_one_line(capsys, main([*TINY, "--out", str(tmp_path)]), ckpt)
    assert "not one this suite wrote" in err
    assert not marker.exists()


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    src = tmp_path_factory.mktemp("trained")
    assert main([*TINY, "--out", str(src)]) == 0
    return src


@pytest.mark.parametrize("tamper", ["payload", "not a dict", "missing keys"])
def test_a_bad_checkpoint_is_refused_by_evaluate_from(trained, tmp_path, capsys, tamper):
    src, marker = tmp_path / "src", tmp_path / "MARKER"
    shutil.copytree(trained, src)
    ckpt = src / RUN_DIR / CHECKPOINT_FILE
    if tamper == "payload":
        plant(ckpt, marker)
    elif tamper == "not a dict":
        torch.save([1, 2], ckpt)
    else:
        torch.save({"iteration": 3}, ckpt)
    code = main([*TINY, "--evaluate-from", str(src), "--out", str(tmp_path / "out")])
    refused_in_one_line(capsys, code, ckpt, fix="train that run again")  # not "delete it"
    assert not marker.exists()
    out = tmp_path / "out"
    assert not out.exists() or not any(out.rglob("*"))  # no folder, lock or records left


@pytest.mark.parametrize("algorithm", [{}, {"model": {"w": [1]}}])
def test_a_checkpoint_whose_state_does_not_fit_is_refused_on_resume(tmp_path, capsys,
                                                                    algorithm):
    """Every key of the right type, the algorithm's state not this algorithm's: one line."""
    from maml_bench.config import config_hash
    from maml_bench.experiments import EXPERIMENTS
    from maml_bench.runner import resolve_config

    config = resolve_config(EXPERIMENTS.get("sinusoid-table2-v1"), "tiny", [], "maml")
    ckpt = tmp_path / RUN_DIR / CHECKPOINT_FILE
    ckpt.parent.mkdir(parents=True)
    torch.save({"algorithm": algorithm, "iteration": 10, "train_log": [],
                "config_hash": config_hash(config)}, ckpt)
    code, err = main([*TINY, "--out", str(tmp_path)]), capsys.readouterr().err
    assert code == 2 and "Traceback" not in err, err
    (line,) = [line for line in err.splitlines() if "error" in line]
    assert str(ckpt) in line and "does not fit MAML" in line and "delete it" in line


def test_a_checkpoint_that_is_not_a_dict_is_refused_on_resume(tmp_path, capsys):
    ckpt = tmp_path / RUN_DIR / CHECKPOINT_FILE
    ckpt.parent.mkdir(parents=True)
    torch.save([1, 2], ckpt)
    err = refused_in_one_line(capsys, main([*TINY, "--out", str(tmp_path)]), ckpt)
    assert "not a dict with algorithm, iteration" in err


def test_a_state_that_would_not_load_back_is_not_saved(tmp_path):
    class Holding:
        def state_dict(self):
            return {"model": {"w": torch.zeros(2)}, "odd": Payload(tmp_path / "MARKER")}

    with pytest.raises(RuntimeError, match="Holding.state_dict.. holds more than tensors"):
        _save_checkpoint(tmp_path / CHECKPOINT_FILE, Holding(), 1, [], "x", 0.0)
    assert not (tmp_path / CHECKPOINT_FILE).exists()


def committed_checkpoints() -> list[str]:
    try:
        listed = subprocess.run(["git", "ls-files", "--", "results/*" + CHECKPOINT_FILE],
                                cwd=ROOT, capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return []
    return listed.split()


@pytest.mark.parametrize("relative", committed_checkpoints() or
                         [pytest.param("", marks=pytest.mark.skip("no git checkout"))])
def test_committed_checkpoints_load_with_weights_only(relative):
    """Later sessions resume these: they must keep loading under the safe loader."""
    path = ROOT / relative
    if path.read_bytes()[:40].startswith(b"version https://git-lfs"):
        pytest.skip("a Git LFS pointer, not the checkpoint")
    state = _load_checkpoint(path)
    assert isinstance(state["algorithm"], dict) and state["iteration"] > 0


def test_every_committed_run_verifies_against_its_run_json():
    """The committed records are what their runs wrote: each file's rows and checksum match
    its run.json (a hand-edited or truncated file fails here, and every report refuses it)."""
    from maml_bench.results import check_run

    runs = sorted(p.parent for p in (ROOT / "results").glob(f"**/{RECORDS_FILE}"))
    assert runs, "results/ holds committed runs"
    problems = {str(r.relative_to(ROOT)): why for r in runs if (why := check_run(r)[0])}
    assert problems == {}


@pytest.fixture
def umask():
    before = os.umask(0o022)
    os.umask(before)

    def set_umask(value: int) -> None:
        os.umask(value)

    yield set_umask
    os.umask(before)


@pytest.mark.parametrize("proc", [True, False], ids=["proc", "no-proc"])
@pytest.mark.parametrize("mask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_written_files_follow_the_umask(tmp_path, umask, monkeypatch, mask, mode, proc):
    if not proc:  # as on macOS: the umask is read by setting it and putting it back
        read_text = Path.read_text

        def no_proc(self, *args, **kwargs):
            if str(self).startswith("/proc"):
                raise FileNotFoundError(self)
            return read_text(self, *args, **kwargs)

        monkeypatch.setattr(Path, "read_text", no_proc)
    umask(mask)
    assert file_mode() == mode
    path = tmp_path / "records" / RUN_INFO_FILE
    write_json(path, {"a": 1})
    write_json(path, {"a": 2})  # a replaced file too
    assert stat.S_IMODE(path.stat().st_mode) == mode
    assert os.umask(mask) == mask  # left as it was


def test_a_run_writes_files_colleagues_can_read(tmp_path, umask):
    umask(0o022)
    assert main([*TINY, "--out", str(tmp_path)]) == 0
    for name in (CHECKPOINT_FILE, RECORDS_FILE, RUN_INFO_FILE):
        assert stat.S_IMODE((tmp_path / RUN_DIR / name).stat().st_mode) == 0o644, name


def test_the_decoded_miniimagenet_cache_follows_the_umask(tmp_path, umask):
    """The decode cache is shared by everyone who points at the same cache folder."""
    import numpy as np

    from maml_bench.tasks.fewshot.miniimagenet import Split, _save_cache

    umask(0o022)
    path = tmp_path / "cache" / "decoded.npz"
    _save_cache(path, {"test": Split(np.zeros((2, 1, 3, 1, 1), np.uint8), ("a", "b"))})
    assert stat.S_IMODE(path.stat().st_mode) == 0o644


# -- the render child -----------------------------------------------------------------------


def test_the_render_child_runs_no_code_from_its_state_file(tmp_path, capsys):
    from maml_bench.rl import render

    marker, state = tmp_path / "MARKER", tmp_path / "rollout.pt"
    torch.save({"out": str(tmp_path / "x.gif"), "policy": Payload(marker)}, state)
    assert render.main([str(state)]) == 2
    err = capsys.readouterr().err
    assert not marker.exists() and not (tmp_path / "x.gif").exists()
    assert err.count("\n") == 1 and str(state) in err and "Traceback" not in err


def test_policies_travel_to_the_child_as_data():
    from maml_bench.rl.policy import ContextPolicy, GaussianMLPPolicy
    from maml_bench.rl.render import build_policy, policy_spec

    for policy in (GaussianMLPPolicy(4, 2, (8, 8), min_std=1e-3),
                   ContextPolicy(2, 2, 3, hidden_sizes=(5,))):
        params = {k: torch.randn_like(v) for k, v in policy.params().items()}
        rebuilt = build_policy(policy_spec(policy))
        assert type(rebuilt) is type(policy)
        assert {k: v.shape for k, v in rebuilt.params().items()} == \
            {k: v.shape for k, v in params.items()}
        obs = torch.randn(6, policy.obs_dim)
        for a, b in zip(policy.distribution(params, obs), rebuilt.distribution(params, obs),
                        strict=True):
            assert torch.equal(a, b)


def test_a_navigation_rollout_is_still_drawn(tmp_path):
    pytest.importorskip("PIL")
    from maml_bench.rl.policy import GaussianMLPPolicy
    from maml_bench.rl.render import render_in_child

    policy = GaussianMLPPolicy(2, 2, (4,))
    out = tmp_path / "rollout.gif"
    assert render_in_child(out, "maml_bench/Navigation2D-v0", {"goal": (0.3, -0.2)}, policy,
                           policy.params(), horizon=5)
    assert out.read_bytes()[:3] == b"GIF"


#: one MuJoCo env of each model, its rendering env's body pixels (orange-brown: red well above
#: blue) before and after the body is moved 6 m along x; with a free camera as the control
_CAMERA_CHECK = """
import json, sys, mujoco
from maml_bench.rl.render import rendering_env
out = {}
for env_id, task in (("maml_bench/HalfCheetahVel-v0", {"goal_velocity": 1.0}),
                     ("maml_bench/AntDir-v0", {"direction": 1.0})):
    for camera, extra in (("ours", {}), ("free", {"camera_name": None, "camera_id": -1})):
        env = rendering_env(env_id, {**extra, "width": 160, "height": 160})
        env.unwrapped.set_task(task)
        env.reset(seed=0)
        body = lambda f: float(((f[..., 0].astype(int) - f[..., 2].astype(int)) > 60).mean())
        before = body(env.render())
        env.unwrapped.data.qpos[0] += 6.0
        mujoco.mj_forward(env.unwrapped.model, env.unwrapped.data)
        out[f"{env_id} {camera}"] = (before, body(env.render()))
        env.close()
json.dump(out, sys.stdout)
"""


def test_mujoco_frames_keep_the_agent_in_view():
    """The cheetah and the ant stay in the frame after running 6 m (the free camera loses them:
    the check can fail)."""
    import json
    import sys

    pytest.importorskip("mujoco")
    env = {**os.environ, "MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl")}
    proc = subprocess.run([sys.executable, "-c", _CAMERA_CHECK], capture_output=True, text=True,
                          env=env, timeout=300)
    if proc.returncode != 0 and "GL" in proc.stderr:
        pytest.skip(f"no working MuJoCo GL backend here: {proc.stderr.splitlines()[-1]}")
    assert proc.returncode == 0, proc.stderr
    fractions = json.loads(proc.stdout)
    for name, (before, after) in fractions.items():
        assert before > 0.002, name  # the body is drawn at the start
        if name.endswith("ours"):
            assert after >= 0.5 * before, (name, before, after)
        else:
            assert after < 0.1 * before, (name, before, after)

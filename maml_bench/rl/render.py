"""A rendered rollout of an adapted policy (paper Figures 4/5 show behaviour, not only
numbers): one episode of the policy's mean actions, drawn offscreen to a GIF.

MuJoCo's offscreen rendering needs a GL backend (EGL here; `MUJOCO_GL`), and a wrong one can
break `import mujoco` itself, so the drawing runs in a child process
(`python -m maml_bench.rl.render STATE`): a machine without a backend loses the GIF, not the
run.
"""

from __future__ import annotations

import io
import logging
import math
import os
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

log = logging.getLogger(__name__)


def rendering_env(env_id: str, env_kwargs: Mapping[str, Any] | None = None) -> Any:
    """`env_id` made to draw RGB frames, with its class's camera (one that follows the body)."""
    import gymnasium

    from maml_bench.rl.envs import env_class  # registers the ids

    return gymnasium.make(env_id, render_mode="rgb_array",
                          **{**env_class(env_id).RENDER_KWARGS, **dict(env_kwargs or {})})


def rollout_frames(env_id: str, task: Mapping[str, Any], policy: Any,
                   params: Mapping[str, Tensor], horizon: int, seed: int = 0,
                   env_kwargs: Mapping[str, Any] | None = None, every: int = 1) -> list[np.ndarray]:
    """One episode of the policy's mean action on `task`, every `every`-th frame."""
    return rollout(env_id, task, policy, params, horizon, seed, env_kwargs, every)[0]


def rollout(env_id: str, task: Mapping[str, Any], policy: Any, params: Mapping[str, Tensor],
            horizon: int, seed: int = 0, env_kwargs: Mapping[str, Any] | None = None,
            every: int = 1) -> tuple[list[np.ndarray], list[tuple[int, float]], float | None]:
    """(frames, (time step, return so far) per frame, the env's seconds per step or None)."""
    from maml_bench.rl.sampler import scale_actions

    env = rendering_env(env_id, env_kwargs)
    try:
        env.unwrapped.set_task(dict(task))
        obs, _ = env.reset(seed=seed)
        frames, marks, total = [env.render()], [(0, 0.0)], 0.0
        low, high = env.action_space.low, env.action_space.high
        for t in range(horizon):
            with torch.no_grad():
                mean = policy.distribution(params, torch.as_tensor(obs, dtype=torch.float32)).mean
            obs, reward, terminated, truncated, _ = env.step(
                scale_actions(mean.numpy(), low, high))
            total += float(reward)
            if (t + 1) % every == 0 or terminated or truncated:
                frames.append(env.render())
                marks.append((t + 1, total))
            if terminated or truncated:
                break
        return frames, marks, getattr(env.unwrapped, "dt", None)
    finally:
        env.close()


#: GIF frames are at least this wide (a 128-pixel navigation frame is scaled up 3x)
MIN_WIDTH = 320
#: frames per GIF at most (a 200-step episode: every 4th step), to keep the files small
MAX_FRAMES = 50
#: the last frame stays this long, so a short episode is seen to end
HOLD_LAST_MS = 1500


def task_text(task: Mapping[str, Any]) -> str:
    """"goal velocity 1.23", "direction +1", "goal (0.30, -0.20)"."""
    parts = []
    for key, value in task.items():
        name = key.replace("_", " ")
        if isinstance(value, list | tuple | np.ndarray):
            parts.append(f"{name} (" + ", ".join(f"{float(v):.2f}" for v in value) + ")")
        elif key == "direction":
            parts.append(f"{name} {float(value):+.0f}")
        else:
            parts.append(f"{name} {float(value):.2f}")
    return ", ".join(parts)


def annotate(frame: np.ndarray, lines: list[str]) -> np.ndarray:
    """The frame scaled up to MIN_WIDTH at least, under a white band holding `lines`."""
    from PIL import Image, ImageDraw, ImageFont

    image = Image.fromarray(np.asarray(frame, dtype=np.uint8))
    scale = max(1, math.ceil(MIN_WIDTH / image.width))
    if scale > 1:
        image = image.resize((image.width * scale, image.height * scale), Image.NEAREST)
    font = ImageFont.load_default(size=max(11, image.width // 32))
    line_height = int(font.size * 1.35)
    band = Image.new("RGB", (image.width, line_height * len(lines) + 6), "white")
    draw = ImageDraw.Draw(band)
    for i, line in enumerate(lines):
        draw.text((6, 3 + i * line_height), line, fill="black", font=font)
    out = Image.new("RGB", (image.width, band.height + image.height), "white")
    out.paste(band, (0, 0))
    out.paste(image.convert("RGB"), (0, band.height))
    return np.asarray(out)


def save_gif(frames: list[np.ndarray], path: Path, fps: float = 20,
             hold_last_ms: int = 0) -> Path:
    """Frames to an animated GIF, written atomically; the last one held `hold_last_ms`."""
    from PIL import Image

    from maml_bench.results import atomic_write_bytes

    images = [Image.fromarray(np.asarray(f, dtype=np.uint8)) for f in frames]
    step = max(20, int(round(1000 / fps)))  # browsers play frames under 20 ms slower
    durations = [step] * len(images)
    durations[-1] = max(step, hold_last_ms)
    buffer = io.BytesIO()
    images[0].save(buffer, format="GIF", save_all=True, append_images=images[1:],
                   duration=durations, loop=0)
    atomic_write_bytes(path, buffer.getvalue())
    return path


def policy_spec(policy: Any) -> dict[str, Any]:
    """What rebuilds `policy`'s network in the child: its class name and constructor arguments,
    plain values alone (the parameters travel as tensors)."""
    from maml_bench.rl.policy import ContextPolicy, GaussianMLPPolicy

    known = type(policy) in (GaussianMLPPolicy, ContextPolicy)
    if not known:
        raise ValueError(f"cannot rebuild a {type(policy).__name__} in the drawing process")
    spec = {"class": type(policy).__name__, "obs_dim": policy.obs_dim, "act_dim": policy.act_dim,
            "hidden_sizes": [layer.out_features for layer in policy.layers[:-1]],
            "min_std": math.exp(policy.min_log_std), "nonlinearity": policy.nonlinearity_name}
    if isinstance(policy, ContextPolicy):
        spec["context_size"] = policy.context.numel()
    return spec


def build_policy(spec: dict[str, Any]) -> Any:
    """The policy `policy_spec` describes (its own parameters are unused: params are passed)."""
    from maml_bench.rl.policy import ContextPolicy, GaussianMLPPolicy

    kwargs = dict(spec)
    cls = {"GaussianMLPPolicy": GaussianMLPPolicy, "ContextPolicy": ContextPolicy}[
        kwargs.pop("class")]
    return cls(**kwargs)


def render_in_child(out: Path, env_id: str, task: Mapping[str, Any], policy: Any,
                    params: Mapping[str, Tensor], horizon: int,
                    env_kwargs: Mapping[str, Any] | None = None, timeout: float = 600,
                    title: str = "") -> bool:
    """Draw the rollout in a child process (see the module); False, with one warning line, if
    it could not be drawn."""
    try:
        spec = policy_spec(policy)
    except ValueError as err:
        log.warning("rollout %s not drawn: %s", out.name, err)
        return False
    with tempfile.TemporaryDirectory() as tmp:
        state = Path(tmp) / "rollout.pt"
        # Data alone, no pickled objects: the child loads it with weights_only=True.
        torch.save({"out": str(out), "env_id": env_id, "task": dict(task), "policy": spec,
                    "params": {k: v.detach().cpu() for k, v in params.items()},
                    "horizon": horizon, "env_kwargs": dict(env_kwargs or {}),
                    "title": title}, state)
        env = {**os.environ, "MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl")}
        try:
            done = subprocess.run([sys.executable, "-m", "maml_bench.rl.render", str(state)],
                                  env=env, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            log.warning("rollout %s not drawn: rendering took over %.0f s", out.name, timeout)
            return False
        except OSError as err:
            log.warning("rollout %s not drawn: %s", out.name, err)
            return False
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no message"])[-1]
        log.warning("rollout %s not drawn (set MUJOCO_GL to a working backend): %s",
                    out.name, last)
        return False
    return True


def main(argv: list[str] | None = None) -> int:
    (state_file,) = argv if argv is not None else sys.argv[1:]
    try:
        # weights_only: tensors and plain values, never code, even from a tampered file
        state = torch.load(state_file, map_location="cpu", weights_only=True)
        policy = build_policy(state["policy"])
    except Exception as err:  # noqa: BLE001 - any failure means the same: not our state file
        print(f"{state_file} is not a rollout state this suite wrote ({type(err).__name__})",
              file=sys.stderr)
        return 2
    every = max(1, math.ceil(state["horizon"] / MAX_FRAMES))
    frames, marks, dt = rollout(state["env_id"], state["task"], policy, state["params"],
                                state["horizon"], env_kwargs=state["env_kwargs"], every=every)
    head = [line for line in (state.get("title", ""), task_text(state["task"])) if line]
    from maml_bench.rl.envs import env_class

    legend = getattr(env_class(state["env_id"]), "RENDER_LEGEND", "")
    frames = [annotate(frame, [*head, f"step {t}/{state['horizon']}, return {total:.1f}"
                               + (f"   {legend}" if legend else "")])
              for frame, (t, total) in zip(frames, marks, strict=True)]
    # real time where the env says its time step (at most 50 frames a second), else 10 a second
    fps = min(50.0, 1.0 / (dt * every)) if dt else 10.0
    save_gif(frames, Path(state["out"]), fps=fps, hold_last_ms=HOLD_LAST_MS)
    return 0


if __name__ == "__main__":
    sys.exit(main())

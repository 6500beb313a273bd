"""The meta-RL environment ids and their registration data, importable without gymnasium (the
base install's settings name them; `maml_bench.rl.envs` registers them)."""

from __future__ import annotations

from typing import Any

NAMESPACE = "maml_bench"

# id -> (entry point in maml_bench.rl.envs, horizon, extra kwargs)
_ENVS: dict[str, tuple[str, int, dict[str, Any]]] = {
    f"{NAMESPACE}/Navigation2D-v0": ("navigation:Navigation2DEnv", 100, {}),
    f"{NAMESPACE}/HalfCheetahVel-v0": ("locomotion:HalfCheetahVelEnv", 200, {}),
    f"{NAMESPACE}/HalfCheetahDir-v0": ("locomotion:HalfCheetahDirEnv", 200, {}),
    # the original rllab cheetah's time step: one 0.01 s MuJoCo step per action
    f"{NAMESPACE}/HalfCheetahVelRllabDt-v0": ("locomotion:HalfCheetahVelEnv", 200,
                                              {"frame_skip": 1}),
    f"{NAMESPACE}/HalfCheetahDirRllabDt-v0": ("locomotion:HalfCheetahDirEnv", 200,
                                              {"frame_skip": 1}),
    # the original rllab cheetah: its dt, its centre-of-mass velocity and 20-d observation
    f"{NAMESPACE}/HalfCheetahVelRllab-v0": ("locomotion:HalfCheetahVelEnv", 200, {
        "frame_skip": 1, "velocity": "rllab", "observation": "rllab"}),
    f"{NAMESPACE}/HalfCheetahDirRllab-v0": ("locomotion:HalfCheetahDirEnv", 200, {
        "frame_skip": 1, "velocity": "rllab", "observation": "rllab"}),
    f"{NAMESPACE}/AntVel-v0": ("locomotion:AntVelEnv", 200, {}),
    f"{NAMESPACE}/AntDir-v0": ("locomotion:AntDirEnv", 200, {}),
    # the original rllab ant: dt 0.02 s, its centre-of-mass velocity and 125-d observation
    f"{NAMESPACE}/AntVelRllab-v0": ("locomotion:AntVelEnv", 200, {
        "frame_skip": 2, "velocity": "rllab", "observation": "rllab"}),
    f"{NAMESPACE}/AntDirRllab-v0": ("locomotion:AntDirEnv", 200, {
        "frame_skip": 2, "velocity": "rllab", "observation": "rllab"}),
}
ENV_IDS: tuple[str, ...] = tuple(_ENVS)

"""Settings shared by every supervised experiment; each benchmark's config extends these.

Defaults are the paper's sinusoid values; every field can be changed with `--set key=value`.
"""

from __future__ import annotations

from dataclasses import dataclass

from maml_bench.errors import UserError


@dataclass(frozen=True)
class MetaConfig:
    # --- meta-training (MAML and its relatives) ---
    iterations: int = 70_000
    """meta-iterations (outer steps); also the regression steps of pretrain/oracle"""
    meta_batch: int = 25
    """tasks per meta-iteration"""
    meta_lr: float = 1e-3
    """Adam step size of the outer (meta) optimizer"""
    inner_lr: float = 0.01
    """alpha: inner gradient step size (paper text 0.01; reference code flag 0.001)"""
    inner_steps: int = 1
    """inner gradient steps during meta-training"""
    train_shots: int = 10
    """K support examples per task during meta-training"""
    train_query: int = 10
    """query examples per task during meta-training"""
    grad_clip: float = 0.0
    """clip meta-gradients to [-c, c] (0 = off; the code clips MiniImagenet at 10)"""
    path: str = "auto"
    """meta-gradient path: auto (batched when the model passes the checks) | batched | loop"""
    # --- Reptile, Meta-SGD ---
    reptile_inner_steps: int = 5
    """Reptile: SGD steps per task before the outer update"""
    metasgd_init_lr: float = 0.01
    """Meta-SGD: initial value of every learned per-parameter step size"""
    # --- meta-test ---
    eval_shots: tuple[int, ...] = (5, 10, 20)
    """K at meta-test"""
    eval_steps: int = 10
    """gradient steps at meta-test (records after 0..eval_steps)"""
    test_tasks: int = 600
    """fixed, seeded meta-test tasks"""
    test_seed: int = 20170309
    """seed of the meta-test tasks (the same for every method and repetition)"""
    val_tasks: int = 200
    """validation tasks (separate seed) for tuning the fine-tuning step size of baselines"""
    finetune_lrs: tuple[float, ...] = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2)
    """grid searched on the validation tasks for 'tuned step size' baselines"""
    eval_chunk: int = 200
    """tasks adapted at once during meta-test (memory vs speed)"""
    # --- bookkeeping ---
    checkpoint_every: int = 5_000
    """iterations between checkpoints (a killed run resumes from the last one)"""
    check_every: int = 100
    """iterations between finiteness checks of loss and parameters"""
    log_every: int = 1_000
    """iterations between training-log rows"""

    def validate(self) -> None:
        positive = ["iterations", "meta_batch", "train_shots", "train_query", "test_tasks",
                    "val_tasks", "eval_chunk", "checkpoint_every", "check_every", "log_every"]
        for name in positive:
            if getattr(self, name) <= 0:
                raise UserError(f"{name} must be positive, got {getattr(self, name)}")
        for name in ("inner_steps", "eval_steps", "reptile_inner_steps", "grad_clip"):
            if getattr(self, name) < 0:
                raise UserError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.path not in ("auto", "batched", "loop"):
            raise UserError(f"path must be auto, batched or loop, got {self.path!r}")
        if not self.eval_shots or min(self.eval_shots) <= 0:
            raise UserError("eval_shots must be positive integers, e.g. --set eval_shots=5,10,20")
        if not self.finetune_lrs or min(self.finetune_lrs) <= 0:
            raise UserError("finetune_lrs must be positive, e.g. --set finetune_lrs=0.01,0.02")

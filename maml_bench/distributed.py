"""Data-parallel meta-batches under torchrun (or any launcher that sets WORLD_SIZE, RANK,
LOCAL_RANK, MASTER_ADDR and MASTER_PORT).

One run, N processes: every process draws the same full meta-batch from the same generator (so
generator state, checkpoints and numbers are those of one process), differentiates its own
contiguous share of the tasks, and the meta-gradients are summed over processes; the optimizer
step then runs identically everywhere, so parameters stay identical without a broadcast. The
meta-test's tasks are split the same way and gathered back in task order. Rank 0 alone holds
the run's lock and writes its files (`runner.execute`).

Runs on CUDA (`--device cuda`): each process takes cuda:LOCAL_RANK and the group uses nccl;
on the CPU it uses gloo.

Without a process group (one process, or a world of one) every function here is the identity
or a no-op, so callers need no branches of their own.
"""

from __future__ import annotations

import atexit
import hashlib
import os
from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import Any, Protocol, TypeVar

import torch
import torch.distributed as dist
from torch import Tensor

from maml_bench.errors import UserError

T = TypeVar("T")


class _Tasks(Protocol):
    """What `shard` needs of a batch (SupervisedBatch has it): typed here without importing the
    core, which imports this module."""

    @property
    def n_tasks(self) -> int: ...

    def select(self, start: int, stop: int) -> Any: ...

#: seconds a process waits in one collective for the others (MAML_BENCH_DIST_TIMEOUT): a
#: backstop for a peer that hangs without exiting. A peer that exits closes its connections,
#: which fails the others' collectives at once, and torchrun stops every worker when one fails.
TIMEOUT_ENV = "MAML_BENCH_DIST_TIMEOUT"
DEFAULT_TIMEOUT_SECONDS = 1800.0  # rank 0 alone may verify records or preprocess a dataset


def launched() -> bool:
    """True when started by a launcher with more than one process (WORLD_SIZE > 1)."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1")) > 1
    except ValueError:
        return False


def local_rank() -> int:
    """This process's index on its node (LOCAL_RANK): its GPU under --device cuda."""
    return int(os.environ.get("LOCAL_RANK", "0") or 0)


def init_from_env(device: str = "cpu") -> None:
    """Join the launcher's process group: nccl on cuda:LOCAL_RANK for a CUDA `device`, else
    gloo; idempotent."""
    if dist.is_initialized():
        return
    text = os.environ.get(TIMEOUT_ENV, str(DEFAULT_TIMEOUT_SECONDS))
    try:
        seconds = float(text)
    except ValueError:
        seconds = -1.0
    if not 0 < seconds < float("inf"):
        raise UserError(f"{TIMEOUT_ENV} must be a positive number of seconds, got {text!r}")
    backend = "gloo"
    if device.startswith("cuda"):
        # nccl's collectives (and object broadcasts) run on the current device: this rank's
        torch.cuda.set_device(local_rank())
        backend = "nccl"
    dist.init_process_group(backend, timeout=timedelta(seconds=seconds))
    atexit.register(_destroy)


def _destroy() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def active() -> bool:
    """True inside a process group of more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def is_main() -> bool:
    """True in the process that writes files and reports (rank 0; always without torchrun)."""
    return rank() == 0


def bounds(n_tasks: int, part: int | None = None, parts: int | None = None
           ) -> tuple[int, int]:
    """[start, stop) of process `part`'s contiguous share of n_tasks (default: this rank's).
    The first n_tasks % parts shares hold one task more, as `torch.tensor_split`."""
    part = rank() if part is None else part
    parts = world_size() if parts is None else parts
    size, extra = divmod(n_tasks, parts)
    start = part * size + min(part, extra)
    return start, start + size + (part < extra)


def shard(batch: _Tasks) -> Any:
    """This rank's contiguous share of the batch's tasks (the whole batch without a group)."""
    return batch.select(*bounds(batch.n_tasks))


def all_reduce_sum(tensors: Sequence[Tensor]) -> list[Tensor]:
    """Each tensor summed over the processes (one collective for all of them); every process
    gets the same bits, since each element is reduced in the same order for all of them."""
    if not active():
        return list(tensors)
    flat = torch.cat([t.detach().reshape(-1) for t in tensors])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    out, offset = [], 0
    for t in tensors:
        out.append(flat[offset:offset + t.numel()].view(t.shape).to(t.dtype))
        offset += t.numel()
    return out


def any_rank(flag: bool) -> bool:
    """True on every rank if `flag` is true on any (one small collective; `flag` itself
    without a group). Used where all ranks must take the same branch at the same point."""
    if not active():
        return flag
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" \
        else torch.device("cpu")
    box = torch.tensor([int(flag)], device=device)
    dist.all_reduce(box, op=dist.ReduceOp.MAX)
    return bool(box.item())


def gather_tasks(part: Tensor, n_tasks: int) -> Tensor:
    """Every rank's share [its tasks, ...] (from `bounds`) -> [n_tasks, ...] in task order, on
    every rank. Shares are padded to the largest, since all_gather needs equal shapes."""
    if not active():
        return part
    spans = [bounds(n_tasks, r) for r in range(world_size())]
    largest = max(stop - start for start, stop in spans)
    padded = part.new_zeros((largest, *part.shape[1:]))
    padded[: part.shape[0]] = part
    buckets = [torch.empty_like(padded) for _ in spans]
    dist.all_gather(buckets, padded)
    return torch.cat([b[: stop - start] for b, (start, stop) in zip(buckets, spans,
                                                                    strict=True)])


def broadcast_object(obj: T) -> T:
    """Rank 0's `obj` (picklable) on every rank."""
    if not active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def from_main(fn: Callable[[], T]) -> T:
    """fn() run on rank 0 only, its result given to every rank, and its error raised on every
    rank (UserError with the same one-line message), so that all ranks take the same branch
    and none waits forever in a collective rank 0 never reaches. Just fn() without a group."""
    if not active():
        return fn()
    if is_main():
        try:
            result = fn()
        except Exception as err:
            broadcast_object(("error", isinstance(err, UserError), str(err)))
            raise
        broadcast_object(("ok", result))
        return result
    message = broadcast_object(None)
    if message[0] == "ok":
        return message[1]
    _, user, text = message
    raise UserError(text) if user else RuntimeError(f"rank 0 failed: {text}")


def check_identical(tensors: Sequence[Tensor]) -> None:
    """Raise if the tensors differ in any bit between ranks (they must not: every rank takes
    the same optimizer step from the same all-reduced gradient). One small collective."""
    if not active():
        return
    digest = hashlib.sha256()
    for t in tensors:
        digest.update(t.detach().cpu().reshape(-1).view(torch.uint8).numpy().tobytes())
    digests: list[Any] = [None] * world_size()
    dist.all_gather_object(digests, digest.hexdigest())
    if len(set(digests)) > 1:
        raise RuntimeError(f"parameters differ between torchrun's processes ({digests}); "
                           "this is a bug in maml_bench.distributed")

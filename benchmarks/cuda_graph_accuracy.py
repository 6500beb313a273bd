"""How far a replayed CUDA graph's meta-gradient is from the eager one, against how far eager
float32 is from float64 and from itself: the data behind `core/graphed.py`'s replay check.

For MiniImagenet 5-way 1- and 5-shot (the paper's meta-batch and 5 inner steps, second order),
on the batched and fused Conv4 paths, per parameter tensor: the largest gradient entry (float64),
two eager float32 runs against each other (cuDNN's atomics), eager float32 against float64, and
the graph's replay against eager float32 and against float64. Needs CUDA:

    python benchmarks/cuda_graph_accuracy.py > results/benchmarks/cuda-graph-accuracy-<device>.txt
"""

from __future__ import annotations

import torch

from maml_bench.core.functional import meta_loss
from maml_bench.core.graphed import GraphedMetaGradient
from maml_bench.profile.configs import CONFIGS, ProfileConfig


def meta_gradient(cfg: ProfileConfig, model: torch.nn.Module, path: str):
    """batch -> the second-order meta-gradient of `model` by the `path` forward."""
    theta = dict(model.named_parameters())
    forward = getattr(model, f"{path}_forward")

    def gradient(batch):
        losses = meta_loss(forward, theta, batch, cfg.loss, cfg.inner_steps, cfg.inner_lr)
        return torch.autograd.grad(losses.mean(), list(theta.values()))

    return gradient


def main() -> None:
    for name in ("miniimagenet-5w1s", "miniimagenet-5w5s"):
        c = CONFIGS[name]
        for path in ("batched", "fused"):
            torch.manual_seed(0)
            model = c.model().cuda()
            batch = c.batch(c.meta_batch, "cuda")
            gradient = meta_gradient(c, model, path)
            eager = [[g.clone() for g in gradient(batch)] for _ in range(3)]
            m64 = c.model().cuda().double()
            m64.load_state_dict(model.state_dict())
            ref = meta_gradient(c, m64, path)(batch.to(torch.float64))
            print(name, path, "scale", f"{max(float(x.abs().max()) for x in ref):.3g}")
            try:
                replayed = GraphedMetaGradient(gradient, batch)(batch)
                print("  graph ok")
            except RuntimeError as err:
                print("  graph refused:", err)
                replayed = None
            for i, (k, _) in enumerate(model.named_parameters()):
                line = (f"  {k:28s} |g|max {float(ref[i].abs().max()):.3g} "
                        f"e-e {float((eager[0][i] - eager[1][i]).abs().max()):.3g} "
                        f"e32-e64 {float((eager[0][i].double() - ref[i]).abs().max()):.3g}")
                if replayed is not None:
                    line += (f" graph-e {float((replayed[i] - eager[2][i]).abs().max()):.3g} "
                             f"graph-e64 {float((replayed[i].double() - ref[i]).abs().max()):.3g}")
                print(line)

if __name__ == "__main__":
    main()

"""Matching Networks (Vinyals, Blundell, Lillicrap, Kavukcuoglu & Wierstra 2016, "Matching
Networks for One Shot Learning").

The benchmark's Conv4 trunk embeds every image; a query attends to the support set with a
softmax over cosine similarities, and its label distribution is the attention mass on each
class's support examples; trained episodically with cross-entropy (Adam). Full context
embeddings (a bidirectional LSTM over the support set, an attention LSTM with K processing
steps for each query) are an option, `matching_fce_steps` (0 = off, the paper's Omniglot
setting). No gradient steps at meta-test: the accuracy curve is flat.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from maml_bench.algorithms.protonets import MetricLearner
from maml_bench.tasks.base import SupervisedBenchmark


def cosine_attention(query: Tensor, support: Tensor) -> Tensor:
    """a(x, x_i): softmax over the support set of cosine similarities; [T, Q, D] and
    [T, S, D] -> [T, Q, S], each row summing to 1."""
    cosine = F.normalize(query, dim=-1) @ F.normalize(support, dim=-1).transpose(1, 2)
    return cosine.softmax(-1)


def label_log_probs(attention: Tensor, y_support: Tensor, ways: int) -> Tensor:
    """log P(y | x) = log sum_i a(x, x_i) [y_i = y]: [T, Q, S] -> [T, Q, ways]. Used as logits:
    their softmax is P itself (the rows sum to 1), so cross-entropy is the paper's -log P."""
    probs = attention @ F.one_hot(y_support, ways).to(attention.dtype)
    # A class's mass is at least its share of a softmax over cosines in [-1, 1], never 0 in
    # practice; the floor only guards log(0).
    return probs.clamp_min(torch.finfo(probs.dtype).tiny).log()


class FullContextEmbedding(nn.Module):
    """The paper's full context embeddings (its appendix): g embeds each support example in the
    context of the whole support set, f each query by attending to g's embeddings for K
    steps."""

    def __init__(self, size: int, steps: int) -> None:
        super().__init__()
        self.support_lstm = nn.LSTM(size, size, batch_first=True, bidirectional=True)
        self.query_cell = nn.LSTMCell(size, size)
        self.steps = steps

    def context_support(self, support: Tensor) -> Tensor:
        """g(x_i) = forward state + backward state + g'(x_i), over the support sequence
        [T, S, D] of each episode."""
        states, _ = self.support_lstm(support)
        forward, backward = states.chunk(2, dim=-1)
        return support + forward + backward

    def context_query(self, query: Tensor, support: Tensor) -> Tensor:
        """f(x) = h_K for query embeddings [T, Q, D] attending to g's support [T, S, D]:
        r_{k-1} = sum_i softmax(h_{k-1} . g_i) g_i; h^_k, c_k = LSTM(f'(x), (h_{k-1}, r_{k-1}),
        c_{k-1}); h_k = h^_k + f'(x).

        The paper's hidden state concatenates h and r, yet h^ must have the width of f'(x) to be
        added to it; as common implementations, the LSTM keeps width D and gets h + r.
        """
        t, q, d = query.shape
        x = query.reshape(t * q, d)
        h, c = x, torch.zeros_like(x)  # h_0 = f'(x): h^_0 = 0
        for _ in range(self.steps):
            weights = (h.view(t, q, d) @ support.transpose(1, 2)).softmax(-1)  # [T, Q, S]
            readout = (weights @ support).reshape(t * q, d)
            h_hat, c = self.query_cell(x, (h + readout, c))
            h = h_hat + x
        return h.view(t, q, d)


class MatchingNets(MetricLearner):
    """Matching Networks (Vinyals et al. 2016): cosine attention over the support set."""

    def __init__(self, benchmark: SupervisedBenchmark, config: Any, seed: int) -> None:
        super().__init__(benchmark, config, seed)
        self.fce: FullContextEmbedding | None = None
        if config.matching_fce_steps > 0:
            with torch.random.fork_rng(devices=[]):  # seeded apart from the trunk's init
                torch.manual_seed(seed + 1)
                self.fce = FullContextEmbedding(self.embedding_size,
                                                config.matching_fce_steps).to(self.device)
            self.optimizer.add_param_group({"params": list(self.fce.parameters())})

    def modules(self) -> dict[str, Any]:
        extra = {"fce": self.fce} if self.fce is not None else {}
        return {**super().modules(), **extra}

    def attention(self, support: Tensor, query: Tensor) -> Tensor:
        """Attention [T, Q, S] of the queries over the support set, with full context
        embeddings if they are on."""
        if self.fce is not None:
            support = self.fce.context_support(support)
            query = self.fce.context_query(query, support)
        return cosine_attention(query, support)

    def scores(self, support: Tensor, y_support: Tensor, query: Tensor, ways: int) -> Tensor:
        return label_log_probs(self.attention(support, query), y_support, ways)

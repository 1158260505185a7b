"""Mixture-of-experts feed-forward layer: learned softmax gate, top-k routing, Switch-style load-balancing loss.

    gate    p = softmax(x W_g) over E experts                        (N tokens, E)
    route   each valid token goes to its k most probable experts, weighted by their gate probabilities
            (not renormalised, as in Switch: the gate then gets gradient from the task loss even with k = 1)
    balance aux = E · Σ_e f_e · P_e, f_e = share of the N·k assignments that went to e, P_e = mean of p_e over
            valid tokens. It equals 1 for uniform routing and grows towards E as routing concentrates on fewer
            experts (the differentiable part is P; f carries no gradient).
Padded tokens are never routed and do not enter the loss. In training the layer counts its assignments
(``ExpertUsage``) and reports each expert's share per epoch through ``pop_stats`` (logged by the trainer). No capacity limit: no token is ever dropped, so the
layer is exact (and padding invariant); each expert runs only on the tokens routed to it.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn


class Routing(NamedTuple):
    probs: torch.Tensor  # (N, E) gate probabilities, rows sum to 1
    experts: torch.Tensor  # (N, k) chosen expert indices
    weights: torch.Tensor  # (N, k) their gate probabilities


def route(logits: torch.Tensor, top_k: int) -> Routing:
    """logits (N, E) -> Routing."""
    probs = logits.float().softmax(dim=-1)
    weights, experts = probs.topk(top_k, dim=-1)
    return Routing(probs, experts, weights)


def load_balancing_loss(probs: torch.Tensor, experts: torch.Tensor, n_experts: int) -> torch.Tensor:
    """Switch Transformer auxiliary loss E · Σ_e f_e P_e over the (already valid-only) tokens. probs (N, E), experts (N, k)."""
    if probs.shape[0] == 0:
        return probs.new_zeros(())
    counts = F.one_hot(experts, n_experts).sum(dim=(0, 1)).to(probs.dtype)  # (E,)
    f = counts / counts.sum()
    p = probs.mean(dim=0)
    return n_experts * (f * p).sum()


class ExpertUsage:
    """Expert assignment counts accumulated over training steps (on the device, no sync per step); ``pop`` turns them
    into each expert's share of all assignments and resets. Not a buffer: it is not saved with the model."""

    def __init__(self, n_experts: int, prefix: str = "") -> None:
        self.n_experts, self.prefix = n_experts, prefix
        self.counts: torch.Tensor | None = None

    def add(self, experts: torch.Tensor) -> None:
        """experts (..., k) long: the chosen experts of the valid tokens."""
        c = torch.bincount(experts.detach().reshape(-1), minlength=self.n_experts)
        self.counts = c if self.counts is None else self.counts + c

    def pop(self) -> dict[str, float]:
        if self.counts is None:
            return {}
        shares = (self.counts / self.counts.sum().clamp_min(1)).tolist()
        self.counts = None
        return {f"{self.prefix}expert_share_{e}": s for e, s in enumerate(shares)}


class MoEFeedForward(nn.Module):
    """Drop-in for ``FeedForward``: forward(x (B, T, D), valid (B, T)) -> (y (B, T, D), balancing loss ())."""

    def __init__(self, d_model: int, hidden: int, n_experts: int, top_k: int, dropout: float) -> None:
        super().__init__()
        if not 1 <= top_k <= n_experts:
            raise ValueError(f"top_k={top_k} must be in [1, n_experts={n_experts}]")
        self.n_experts, self.top_k = n_experts, top_k
        self.gate = nn.Linear(d_model, n_experts, bias=False)
        self.experts = nn.ModuleList(
            nn.Sequential(nn.Linear(d_model, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, d_model))
            for _ in range(n_experts)
        )
        self.usage = ExpertUsage(n_experts)

    def forward(self, x: torch.Tensor, valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, t, d = x.shape
        tokens = x[valid]  # (N, D) valid tokens only
        routing = route(self.gate(tokens), self.top_k)
        if self.training:
            self.usage.add(routing.experts)
        out = torch.zeros_like(tokens)
        for e, expert in enumerate(self.experts):
            token_idx, slot = torch.where(routing.experts == e)  # tokens routed to e and in which of their k slots
            if token_idx.numel() == 0:
                continue
            y = expert(tokens[token_idx]) * routing.weights[token_idx, slot].unsqueeze(-1).to(x.dtype)
            out = out.index_add(0, token_idx, y)
        full = x.new_zeros(b, t, d)
        full[valid] = out
        return full, load_balancing_loss(routing.probs, routing.experts, self.n_experts)

    def pop_stats(self) -> dict[str, float]:
        """Each expert's share of the training assignments since the last call (``ReportsStats``)."""
        return self.usage.pop()

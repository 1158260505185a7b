"""CoLES (Contrastive Learning for Event Sequences, Babaev et al. 2022; pytorch-lifestream's recipe): slices of the
same customer's history should embed close together, slices of different customers at least `margin` apart.

    embeddings (N, D), L2-normalised; owner (N,) customer of each slice (every customer has >= 2 slices in a batch)
    positive pairs: every pair of slices of one customer           loss += d(a, b)²
    hard negatives: for each slice, its `n_negatives` nearest       loss += relu(margin - d(a, n))²
                    slices of other customers
    loss = mean over all selected pairs

`recall_at_k` is ptls's retrieval metric (BatchRecallTopK): for each slice, the share of its k nearest other slices
that belong to the same customer (k = slices per customer - 1, so 1.0 is perfect).

    >>> z = torch.nn.functional.normalize(torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]]), dim=1)
    >>> owner = torch.tensor([0, 0, 1, 1])
    >>> round(float(contrastive_loss(z, owner, margin=0.5, n_negatives=1)), 4), float(recall_at_k(z, owner, k=1))
    (0.0028, 1.0)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _distances(z: torch.Tensor) -> torch.Tensor:
    """Euclidean distances between all rows: z (N, D) -> (N, N); the diagonal is exactly 0."""
    sq = (z * z).sum(dim=1)  # (N,)
    d2 = (sq[:, None] + sq[None, :] - 2.0 * z @ z.T).clamp_min(0.0)  # (N, N)
    eye = torch.eye(len(z), dtype=torch.bool, device=z.device)
    # sqrt has an infinite gradient at 0: keep exact zeros off the graph
    return torch.where(eye | (d2 <= 1e-12), torch.zeros_like(d2), d2.clamp_min(1e-12).sqrt())


def contrastive_loss(z: torch.Tensor, owner: torch.Tensor, margin: float = 0.5, n_negatives: int = 5) -> torch.Tensor:
    """Margin contrastive loss with hard-negative mining. z (N, D) normalised embeddings, owner (N,) -> ()."""
    d = _distances(z)  # (N, N)
    same = owner[:, None] == owner[None, :]  # (N, N)
    eye = torch.eye(len(z), dtype=torch.bool, device=z.device)
    pos = same & ~eye
    pos_loss = d[pos].pow(2)  # every ordered positive pair (each unordered pair twice: same weight for all)
    k = min(n_negatives, int((~same).sum(dim=1).min()))
    if k < 1:  # one customer only: nothing to push apart
        return pos_loss.mean() if len(pos_loss) else z.sum() * 0.0
    neg_d = d.masked_fill(same, float("inf")).topk(k, dim=1, largest=False).values  # (N, k) hardest negatives
    neg_loss = F.relu(margin - neg_d).pow(2).flatten()
    return torch.cat([pos_loss, neg_loss]).mean()


@torch.no_grad()
def recall_at_k(z: torch.Tensor, owner: torch.Tensor, k: int) -> torch.Tensor:
    """Share of each row's k nearest other rows (Euclidean) owned by the same customer, averaged. z (N, D) -> ()."""
    d = _distances(z.float())
    d.fill_diagonal_(float("inf"))
    nearest = d.topk(min(k, len(z) - 1), dim=1, largest=False).indices  # (N, k)
    return (owner[nearest] == owner[:, None]).float().mean()

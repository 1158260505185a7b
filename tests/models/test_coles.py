"""CoLES loss and retrieval metric: values against a direct computation, invariances, gradients."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from models.coles import contrastive_loss, recall_at_k


def _reference_loss(z: torch.Tensor, owner: torch.Tensor, margin: float, k: int) -> float:
    """Pair by pair, as the docstring states it."""
    terms = []
    n = len(z)
    for i, j in itertools.permutations(range(n), 2):
        if owner[i] == owner[j]:
            terms.append(float(torch.dist(z[i], z[j])) ** 2)
    for i in range(n):
        neg = sorted(float(torch.dist(z[i], z[j])) for j in range(n) if owner[j] != owner[i])[:k]
        terms += [max(0.0, margin - d) ** 2 for d in neg]
    return sum(terms) / len(terms)


@settings(max_examples=25, deadline=None)
@given(n_customers=st.integers(2, 5), n_slices=st.integers(2, 4), k=st.integers(1, 6), seed=st.integers(0, 999))
def test_loss_matches_the_pairwise_definition(n_customers: int, n_slices: int, k: int, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    z = F.normalize(torch.randn(n_customers * n_slices, 3, generator=g, dtype=torch.float64), dim=1)
    owner = torch.arange(n_customers).repeat_interleave(n_slices)
    k_eff = min(k, (n_customers - 1) * n_slices)
    assert float(contrastive_loss(z, owner, 0.5, k)) == pytest.approx(_reference_loss(z, owner, 0.5, k_eff), rel=1e-9)


def test_loss_is_zero_when_slices_coincide_and_customers_are_far_apart() -> None:
    z = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    assert float(contrastive_loss(z, torch.tensor([0, 0, 1, 1]), margin=0.5)) == 0.0
    # the same points with owners swapped across: positives far apart, negatives on top of each other
    assert float(contrastive_loss(z, torch.tensor([0, 1, 0, 1]), margin=0.5)) > 0.5


def test_loss_has_finite_gradients_even_for_identical_embeddings() -> None:
    z = torch.ones(6, 4, requires_grad=True)
    contrastive_loss(F.normalize(z, dim=1), torch.tensor([0, 0, 1, 1, 2, 2])).backward()
    assert torch.isfinite(z.grad).all()


def test_recall_at_k() -> None:
    z = torch.tensor([[0.0], [0.1], [5.0], [5.1], [10.0], [10.1]])
    assert float(recall_at_k(z, torch.tensor([0, 0, 1, 1, 2, 2]), k=1)) == 1.0
    assert float(recall_at_k(z, torch.tensor([0, 1, 0, 1, 2, 2]), k=1)) == pytest.approx(2 / 6)
    perm = torch.randperm(6)  # the order of the rows does not matter
    assert float(recall_at_k(z[perm], torch.tensor([0, 0, 1, 1, 2, 2])[perm], k=1)) == 1.0

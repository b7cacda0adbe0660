"""Mask selection: exact small cases and brute-force checks."""

import itertools

import pytest
import torch

from prunellm.errors import UsageError
from prunellm.masks import Target, lowest_k, matrix_mask, nm_mask, parse_pattern, row_mask


def test_nm_mask_hand_built():
    w = torch.tensor([[1.0, 2, 3, 4, 8, 7, 6, 5]])
    assert nm_mask(w, 2, 4).tolist() == [[True, True, False, False, False, False, True, True]]


def test_nm_mask_every_group_has_exactly_n():
    scores = torch.rand(16, 64)
    for n, m in [(2, 4), (4, 8), (1, 4)]:
        mask = nm_mask(scores, n, m)
        assert (mask.view(16, -1, m).sum(-1) == n).all()
        # the pruned ones are the n smallest of their group
        groups = scores.view(16, -1, m)
        kept_min = groups.masked_fill(mask.view(16, -1, m), float("inf")).min(-1).values
        pruned_max = groups.masked_fill(~mask.view(16, -1, m), float("-inf")).max(-1).values
        assert (pruned_max <= kept_min).all()


def test_nm_mask_rejects_width_not_divisible():
    with pytest.raises(UsageError, match="not divisible"):
        nm_mask(torch.rand(2, 6), 2, 4)


def test_row_mask_matches_brute_force():
    scores = torch.rand(5, 10)
    mask = row_mask(scores, 0.3)
    for r in range(5):
        expected = set(scores[r].argsort()[:3].tolist())
        assert set(mask[r].nonzero().flatten().tolist()) == expected


def test_matrix_mask_one_threshold():
    scores = torch.rand(4, 6)
    mask = matrix_mask(scores, 0.5)
    assert mask.sum() == 12
    assert scores[mask].max() <= scores[~mask].min()


def test_ties_broken_by_position_deterministically():
    scores = torch.ones(3, 8)
    assert lowest_k(scores, 3).tolist() == [[True] * 3 + [False] * 5] * 3
    assert nm_mask(scores, 2, 4).tolist() == [[True, True, False, False] * 2] * 3


@pytest.mark.parametrize("text", ["4:4", "0:4", "5:4", "a:b", "2"])
def test_parse_pattern_rejects(text):
    with pytest.raises(UsageError):
        parse_pattern(text)


def test_target_ratio():
    assert Target(n=2, m=4).ratio == 0.5 and str(Target(n=5, m=8)) == "5:8"
    assert Target(sparsity=0.7).ratio == 0.7 and not Target(sparsity=0.7).is_nm


def test_nm_brute_force_small():
    scores = torch.rand(3, 8)
    mask = nm_mask(scores, 2, 4)
    for r, g in itertools.product(range(3), range(2)):
        group = scores[r, 4 * g : 4 * g + 4]
        best = min(itertools.combinations(range(4), 2), key=lambda c: sum(group[i] for i in c))
        assert set(mask[r, 4 * g : 4 * g + 4].nonzero().flatten().tolist()) == set(best)


@pytest.mark.parametrize("k", [1, 37, 500, 999])
def test_flat_selection_equals_stable_sort(k):
    """The 1-D fast path (kthvalue + first ties by index) picks exactly what a stable sort picks."""
    torch.manual_seed(k)
    scores = torch.randint(0, 20, (1000,)).float()  # heavy ties
    expected = torch.zeros(1000, dtype=torch.bool)
    expected[torch.sort(scores, stable=True).indices[:k]] = True
    assert torch.equal(lowest_k(scores, k), expected)

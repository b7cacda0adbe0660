"""N:M channel permutation: a valid order, never below the identity's kept score, optimal where it can be checked."""

from __future__ import annotations

import itertools

import pytest
import torch

from prunellm.permute import kept_score, nm_permutation


def partitions(items: list[int], m: int):
    """Every split of `items` into unordered groups of m."""
    if not items:
        yield []
        return
    first, rest = items[0], items[1:]
    for combo in itertools.combinations(rest, m - 1):
        left = [x for x in rest if x not in combo]
        for tail in partitions(left, m):
            yield [[first, *combo], *tail]


def best_by_brute_force(scores: torch.Tensor, n: int, m: int) -> float:
    return max(kept_score(scores, n, m, torch.tensor(sum(p, []))) for p in partitions(list(range(scores.shape[1])), m))


def test_kept_score_is_the_sum_of_the_kept_places():
    scores = torch.tensor([[4.0, 1.0, 3.0, 2.0, 0.5, 0.1, 0.2, 9.0]])
    assert kept_score(scores, 2, 4) == pytest.approx(4 + 3 + 9 + 0.5)
    assert kept_score(scores, 2, 4, torch.tensor([0, 1, 4, 5, 2, 3, 6, 7])) == pytest.approx(4 + 1 + 9 + 3)


@pytest.mark.parametrize("n,m", [(2, 4), (1, 4), (4, 8)])
def test_an_order_of_all_columns_that_keeps_at_least_the_identity(n, m):
    gen = torch.Generator().manual_seed(n * 10 + m)
    for _ in range(5):
        scores = torch.rand(12, 64, generator=gen) ** 3 * torch.rand(64, generator=gen) * 3
        perm = nm_permutation(scores, n, m)
        assert sorted(perm.tolist()) == list(range(64))
        assert kept_score(scores, n, m, perm) >= kept_score(scores, n, m) - 1e-9


def test_clustered_important_inputs_are_spread_to_the_optimum():
    # the four strong inputs share the first group: 2:4 keeps two of them in the identity order
    scores = torch.full((3, 8), 0.1)
    scores[:, :4] = torch.tensor([5.0, 4.0, 3.0, 2.0])
    perm = nm_permutation(scores, 2, 4)
    best = best_by_brute_force(scores, 2, 4)
    assert kept_score(scores, 2, 4) < best
    assert kept_score(scores, 2, 4, perm) == pytest.approx(best)
    assert {int(perm[:4].lt(4).sum()), int(perm[4:].lt(4).sum())} == {2}


def test_close_to_brute_force_on_random_small_layers():
    gen = torch.Generator().manual_seed(0)
    ratios = []
    for _ in range(10):
        scores = torch.rand(6, 12, generator=gen) ** 3 * torch.rand(12, generator=gen) * 3
        ratios.append(kept_score(scores, 2, 4, nm_permutation(scores, 2, 4)) / best_by_brute_force(scores, 2, 4))
    assert min(ratios) > 0.97
    assert sum(ratios) / len(ratios) > 0.99


def test_columns_that_do_not_divide_are_refused():
    with pytest.raises(ValueError, match="divide"):
        nm_permutation(torch.rand(4, 10), 2, 4)

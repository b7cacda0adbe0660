"""Perplexity: window slicing and NLL averaging against a hand computation on a tiny model."""

import math

import pytest
import torch

from conftest import tiny_model
from prunellm.errors import UsageError
from prunellm.evaluation.perplexity import perplexity_of_tokens, windows


def test_windows_drop_the_remainder_and_cap():
    ids = torch.arange(25)
    assert windows(ids, 10).tolist() == [list(range(10)), list(range(10, 20))]
    assert windows(ids, 10, max_windows=1).tolist() == [list(range(10))]
    with pytest.raises(UsageError):
        windows(ids, 30)


def _hand_ppl(model, ids, seqlen, n):
    """exp of the mean NLL of every next-token prediction inside each non-overlapping window."""
    nll, count = 0.0, 0
    with torch.no_grad():
        for w in range(n):
            chunk = ids[w * seqlen : (w + 1) * seqlen]
            logp = torch.log_softmax(model(chunk[None]).logits[0].double(), dim=-1)
            for t in range(seqlen - 1):
                nll -= logp[t, chunk[t + 1]].item()
                count += 1
    return math.exp(nll / count)


@pytest.mark.parametrize("batch_size", [1, 2])
def test_perplexity_matches_hand_computation(batch_size):
    model = tiny_model("llama")
    ids = torch.randint(0, 96, (83,), generator=torch.Generator().manual_seed(1))
    ppl, n = perplexity_of_tokens(model, ids, seqlen=16, batch_size=batch_size)
    assert n == 5
    assert ppl == pytest.approx(_hand_ppl(model, ids, 16, 5), rel=1e-5)
    ppl3, n3 = perplexity_of_tokens(model, ids, seqlen=16, max_windows=3)
    assert n3 == 3 and ppl3 == pytest.approx(_hand_ppl(model, ids, 16, 3), rel=1e-5)


def test_seqlen_beyond_model_limit_is_rejected():
    model = tiny_model("llama")  # max_position_embeddings = 64
    with pytest.raises(UsageError, match="max_position_embeddings"):
        perplexity_of_tokens(model, torch.zeros(200, dtype=torch.long), seqlen=128)

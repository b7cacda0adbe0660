"""Layer-wise allocations: definitions, means and bounds, OWL by hand, the alpha metric, determinism."""

import pytest
import torch

import prunellm
from conftest import calib_ids, tiny_model
from prunellm.allocation import ALLOCATIONS, LayerInfo
from prunellm.allocation.alpha import esd_alpha
from prunellm.masks import Target


def _layers(blocks=6, sizes=(100, 100, 300)):
    return [LayerInfo(f"b{b}.l{j}", b, f"l{j}", n) for b in range(blocks) for j, n in enumerate(sizes)]


def _weighted(targets, layers):
    return sum(targets[l.name].ratio * l.numel for l in layers) / sum(l.numel for l in layers)


@pytest.mark.parametrize("sparsity", [0.5, 0.6, 0.7, 0.8])
def test_owl_mean_and_spread_on_random_measures(sparsity):
    layers = _layers()
    d = torch.rand(6, generator=torch.Generator().manual_seed(1)) * 10
    res = ALLOCATIONS["owl"].allocate(layers, [{"outlier_ratio": float(v)} for v in d], Target(sparsity=sparsity),
                                      owl_lambda=0.08)
    ratios = torch.tensor([res.targets[f"b{b}.l0"].ratio for b in range(6)], dtype=torch.float64)
    assert _weighted(res.targets, layers) == pytest.approx(sparsity, abs=1e-9)
    assert float(ratios.max() - ratios.min()) == pytest.approx(0.16, abs=1e-9)
    assert int(ratios.argmin()) == int(d.argmax())  # most outliers: densest
    assert all(res.targets[f"b{b}.l2"] == res.targets[f"b{b}.l0"] for b in range(6))  # one ratio per block


def test_owl_nm_mixes_patterns_around_the_base():
    layers = _layers()
    res = ALLOCATIONS["owl"].allocate(layers, [{"outlier_ratio": v} for v in (0, 1, 5, 9, 10, 10)],
                                      Target(n=5, m=8), owl_lambda=2)
    ns = [res.targets[f"b{b}.l0"].n for b in range(6)]
    assert set(ns) <= {4, 5, 6} and len(set(ns)) > 1 and ns[0] > ns[-1]
    assert all(res.targets[f"b{b}.l0"].m == 8 for b in range(6))


@pytest.mark.parametrize("sparsity, eps", [(0.5, 0.3), (0.7, 0.2), (0.8, 0.1)])
def test_alpha_mean_and_bounds_on_random_measures(sparsity, eps):
    layers = _layers()
    alphas = torch.rand(6, generator=torch.Generator().manual_seed(2)) * 4 + 2
    measures = [{"alpha": {f"b{b}.l{j}": float(alphas[b]) for j in range(3)}} for b in range(6)]
    res = ALLOCATIONS["alpha"].allocate(layers, measures, Target(sparsity=sparsity), alpha_epsilon=eps)
    ratios = torch.tensor([res.targets[l.name].ratio for l in layers], dtype=torch.float64)
    assert _weighted(res.targets, layers) == pytest.approx(sparsity, abs=1e-9)
    assert float(ratios.max() / ratios.min()) == pytest.approx((1 + eps) / (1 - eps), rel=1e-9)
    assert int(ratios[::3].argmax()) == int(alphas.argmax())  # highest alpha: pruned most


def test_esd_alpha_recovers_a_power_law_exponent():
    """Eigenvalues of WᵀW drawn from a Pareto law with density ∝ λ^(−α): the estimate is close to α."""
    g = torch.Generator().manual_seed(0)
    for true_alpha in (2.5, 4.0):
        u = torch.rand(400, generator=g, dtype=torch.float64)
        eigs = (1 - u) ** (-1 / (true_alpha - 1))  # Pareto(x_min = 1, exponent true_alpha)
        q1, _ = torch.linalg.qr(torch.randn(600, 400, generator=g, dtype=torch.float64))
        q2, _ = torch.linalg.qr(torch.randn(400, 400, generator=g, dtype=torch.float64))
        w = (q1 * eigs.sqrt()) @ q2.T
        assert esd_alpha(w.T) == pytest.approx(true_alpha, rel=0.2)


def _hand_owl(model, ids, sparsity, owl_m, lam):
    """OWL from its definition: dense inputs of every linear, pooled Wanda scores per block."""
    sq = {}
    hooks = []
    for name, mod in model.named_modules():
        if isinstance(mod, torch.nn.Linear) and ".layers." in name:
            def hook(m, args, out, name=name):
                x = args[0].reshape(-1, args[0].shape[-1]).double()
                sq[name] = sq.get(name, 0) + (x**2).sum(0)
            hooks.append(mod.register_forward_hook(hook))
    with torch.no_grad():
        model(ids)
    for h in hooks:
        h.remove()
    d = []
    for b in range(len(model.model.layers)):
        scores = torch.cat([(model.get_submodule(n).weight.abs() * (sq[n] / ids.shape[0]).sqrt().float()).flatten()
                            for n in sq if n.startswith(f"model.layers.{b}.")])
        d.append(100 * float((scores > owl_m * scores.mean()).double().mean()))
    d = torch.tensor(d, dtype=torch.float64)
    scaled = (d - d.min()) / (d.max() - d.min()) * 2 * lam
    return (1 - (scaled - scaled.mean() + 1 - sparsity)).tolist()


def test_owl_on_a_tiny_model_equals_the_hand_computation():
    torch.manual_seed(0)
    import transformers as T
    config = T.LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=4,
                           num_key_value_heads=2, vocab_size=96, max_position_embeddings=64)
    model = T.AutoModelForCausalLM.from_config(config).eval()
    ids = calib_ids(6, 24)
    expected = _hand_owl(model, ids, 0.7, 2.0, 0.08)
    report = prunellm.prune(model, None, prunellm.PruneConfig(solver="magnitude", sparsity=0.7, allocation="owl",
                            owl_m=2.0, calibration_batch_size=4), calibration_ids=ids, progress=False)
    got = {row["name"]: row["target"] for row in report["layers"]}
    for b, ratio in enumerate(expected):
        assert got[f"model.layers.{b}.mlp.down_proj"] == pytest.approx(ratio, abs=1e-9)
    assert report["allocation"]["name"] == "owl" and len(report["allocation"]["per_block"]) == 4


@pytest.mark.parametrize("allocation", ["owl", "alpha"])
def test_allocation_composes_with_every_solver_and_is_deterministic(allocation):
    runs = []
    for solver in ("magnitude", "wanda", "sparsegpt", "mrp"):
        model = tiny_model("llama")
        report = prunellm.prune(model, None, prunellm.PruneConfig(solver=solver, sparsity=0.6, allocation=allocation,
                                owl_lmbda=0.1), calibration_ids=calib_ids(), progress=False)
        runs.append({row["name"]: row["target"] for row in report["layers"]})
        total = sum(row["numel"] for row in report["layers"])
        assert sum(row["target"] * row["numel"] for row in report["layers"]) / total == pytest.approx(0.6, abs=1e-3)
        assert len(set(runs[-1].values())) > 1
    assert all(r == runs[0] for r in runs)  # targets depend on the dense model only

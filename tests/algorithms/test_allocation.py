"""Layer-wise allocations: definitions, means and bounds, OWL by hand, the alpha metric, determinism."""

import pytest
import torch

import prunellm
from conftest import calib_ids, tiny_model
from prunellm.allocation import ALLOCATIONS, LayerInfo
from prunellm.allocation.alpha import _ratios as alpha_ratios
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


def test_owl_nm_default_lambda_mixes_and_a_fractional_one_is_refused():
    layers = _layers(blocks=2)
    measures = [{"outlier_ratio": 1.0}, {"outlier_ratio": 7.0}]
    res = ALLOCATIONS["owl"].allocate(layers, measures, Target(n=2, m=4))  # default λ for N:M
    assert [res.targets[f"b{b}.l0"].n for b in range(2)] == [3, 1]  # shifts ∓1 around 2:4
    assert res.info["lambda"] == 2.0
    with pytest.raises(prunellm.errors.UsageError, match="cannot change any block"):
        ALLOCATIONS["owl"].allocate(layers, measures, Target(n=2, m=4), owl_lambda=0.08)
    res = ALLOCATIONS["owl"].allocate(layers, measures, Target(sparsity=0.5))  # default λ 0.08
    assert res.info["lambda"] == 0.08
    assert res.targets["b0.l0"].ratio - res.targets["b1.l0"].ratio == pytest.approx(0.16, abs=1e-9)


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


def test_alpha_too_wide_for_the_target_is_a_usage_error_with_a_hint():
    layers = _layers()
    alphas = [2.0] * 5 + [6.0]  # one block far above the rest: scaling pushes it past 100% at 70%
    measures = [{"alpha": {f"b{b}.l{j}": alphas[b] for j in range(3)}} for b in range(6)]
    with pytest.raises(prunellm.UsageError, match=r"--alpha-epsilon (0\.\d+) or less") as err:
        ALLOCATIONS["alpha"].allocate(layers, measures, Target(sparsity=0.7), alpha_epsilon=0.3)
    hint = float(err.value.args[0].split("--alpha-epsilon ")[1].split()[0])
    res = ALLOCATIONS["alpha"].allocate(layers, measures, Target(sparsity=0.7), alpha_epsilon=hint)
    assert max(t.ratio for t in res.targets.values()) < 0.99


def test_alpha_default_epsilon_is_the_papers_narrowed_only_where_needed():
    layers = _layers()
    alphas = [2.0] * 5 + [6.0]
    measures = [{"alpha": {f"b{b}.l{j}": alphas[b] for j in range(3)}} for b in range(6)]
    wide = ALLOCATIONS["alpha"].allocate(layers, measures, Target(sparsity=0.5))
    assert wide.info["epsilon"] == 0.3 and "epsilon_narrowed_from" not in wide.info
    res = ALLOCATIONS["alpha"].allocate(layers, measures, Target(sparsity=0.7))
    eps = res.info["epsilon"]
    assert res.info["epsilon_narrowed_from"] == 0.3
    assert 0 < eps < 0.3 and max(t.ratio for t in res.targets.values()) < 0.99
    assert _weighted(res.targets, layers) == pytest.approx(0.7, abs=1e-9)
    norm = torch.tensor([alphas[l.block] for l in layers], dtype=torch.float64)
    norm = (norm - norm.min()) / (norm.max() - norm.min())
    numel = torch.tensor([l.numel for l in layers], dtype=torch.float64)
    assert alpha_ratios(norm, numel, 0.7, eps + 0.01).max() >= 0.99  # the largest such ε on the 0.01 grid


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


def test_als_redundancy_is_uncentred_linear_cka():
    from prunellm.allocation.als import gram, redundancy

    g = torch.Generator().manual_seed(0)
    xs = [torch.randn(40, d, generator=g, dtype=torch.float64) for d in (5, 7, 3)]
    xs.append(xs[0] @ torch.randn(5, 6, generator=g, dtype=torch.float64))  # linear function of xs[0]
    rm = redundancy([gram(x) for x in xs])
    for i, a in enumerate(xs):
        for j, b in enumerate(xs):
            direct = (a.T @ b).norm() ** 2 / ((a.T @ a).norm() * (b.T @ b).norm())
            assert rm[i, j].item() == pytest.approx(direct.item(), rel=1e-10)
    assert torch.allclose(rm.diagonal(), torch.ones(4, dtype=torch.float64))
    assert rm[0, 3] > rm[0, 1]


@pytest.mark.parametrize("kind", ["input", "output", "gate"])
def test_als_feature_options_match_their_definitions(kind):
    from prunellm.allocation.als import measure
    from prunellm.solvers import LayerStats

    g = torch.Generator().manual_seed(3)
    x, w = torch.randn(30, 6, generator=g), torch.randn(4, 6, generator=g)
    grams = measure({"l": w}, {"l": LayerStats(features=x)}, als_features=kind, als_norm="none")["grams"]
    f = {"input": x, "output": x @ w.T, "gate": torch.nn.functional.silu(x @ w.T)}[kind].double()
    assert torch.allclose(grams["l"], f @ f.T, rtol=1e-5, atol=1e-5)


def test_als_importance_and_suffix_mean():
    from prunellm.allocation.als import importance, suffix_mean

    rm = torch.tensor([[1.0, 0.5, 0.2], [0.5, 1.0, 0.1], [0.2, 0.1, 1.0]], dtype=torch.float64)
    rho = torch.tensor([0.7, 0.6, 0.3], dtype=torch.float64)
    assert torch.allclose(importance(rm, "original"), torch.exp(-rho))
    assert torch.allclose(importance(rm, "mu"), torch.exp(-rho / rm.mean(1)))
    w = torch.tensor([1.0, 2.0, 4.0], dtype=torch.float64)
    assert suffix_mean(w).tolist() == [7 / 3, 3.0, 4.0]


def test_als_lp_is_scale_invariant_and_direction_matters():
    """Real importances are ~exp(−28) on a 30-block model: the LP must not drown them in its tolerances."""
    import numpy as np

    from prunellm.allocation.als import solve_lp

    weights = np.linspace(1.0, 1.1, 30)  # suffix-averaged importances differ by a few % between blocks
    sizes = np.ones(30)
    for direction in (True, False):
        s = solve_lp(weights, sizes, 0.7, 0.55, 0.85, 0.005, direction)
        tiny = solve_lp(weights * 4e-13, sizes, 0.7, 0.55, 0.85, 0.005, direction)
        assert np.allclose(s, tiny)
        # sparser-if-redundant: high importance (low redundancy) stays dense, and the reverse
        assert (s[0] > s[-1]) == direction and s.mean() == pytest.approx(0.7)


@pytest.mark.parametrize("sizes", [(1, 1, 1, 1, 1), (3, 1, 2, 1, 3)])
def test_als_lp_equals_brute_force(sizes):
    import itertools

    import numpy as np

    from prunellm.allocation.als import solve_lp

    sizes = np.array(sizes, dtype=np.float64)
    weights = np.array([0.9, 0.2, 0.5, 0.7, 0.1])
    grid = np.round(np.arange(0.3, 0.7001, 0.05), 10)
    best = None
    for combo in itertools.product(grid, repeat=5):
        s = np.array(combo)
        if abs((s * sizes).sum() / sizes.sum() - 0.5) < 1e-9:
            cost = (weights * sizes * s).sum()
            best = cost if best is None else min(best, cost)
    s = solve_lp(weights, sizes, 0.5, 0.3, 0.7, granularity=0.0)
    assert (s * sizes).sum() / sizes.sum() == pytest.approx(0.5, abs=1e-9)
    assert (s >= 0.3 - 1e-9).all() and (s <= 0.7 + 1e-9).all()
    assert (weights * sizes * s).sum() <= best + 1e-9  # the LP optimum is never worse than any grid point
    if (sizes == 1).all():  # equal sizes and a target on the grid: the optimum is itself on the grid
        assert (weights * sizes * s).sum() == pytest.approx(best, abs=1e-9)
    snapped = solve_lp(weights, sizes, 0.5, 0.3, 0.7, granularity=0.05)
    assert (snapped * sizes).sum() / sizes.sum() == pytest.approx(0.5, abs=1e-9)


def test_als_default_bounds():
    from prunellm.allocation.als import default_bounds

    assert default_bounds(0.2) == pytest.approx((0.1, 0.3))  # the paper's at 20%
    assert default_bounds(0.7) == pytest.approx((0.65, 0.75))  # the best of ±0.05/0.1/0.15 on SmolLM2
    for s in (0.3, 0.5, 0.8, 0.9):
        lo, hi = default_bounds(s)
        assert 0 <= lo < s < hi < 1 and hi - s == pytest.approx(s - lo)


@pytest.mark.parametrize("direction", ["sparser", "denser"])
def test_als_on_a_tiny_model_meets_target_and_bounds(direction):
    import transformers as T

    torch.manual_seed(0)
    config = T.LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=4,
                           num_key_value_heads=2, vocab_size=96, max_position_embeddings=64)
    model = T.AutoModelForCausalLM.from_config(config).eval()
    report = prunellm.prune(model, None, prunellm.PruneConfig(solver="wanda", sparsity=0.6, allocation="als",
                            als_direction=direction), calibration_ids=calib_ids(), progress=False)
    rows = report["layers"]
    total = sum(r["numel"] for r in rows)
    assert sum(r["target"] * r["numel"] for r in rows) / total == pytest.approx(0.6, abs=1e-3)
    lo, hi = report["allocation"]["bounds"]
    assert (lo, hi) == pytest.approx((0.6 - 0.4 / 6, 0.6 + 0.4 / 6))  # default: ± (1 − S)/6 at 60%
    assert all(lo - 1e-9 <= b <= hi + 1e-9 for b in report["allocation"]["block_sparsity"])
    assert all(lo - 1e-9 <= r["target"] <= hi + 1e-9 for r in rows)  # components too, not only blocks


def test_owl_nm_prunes_each_block_to_its_own_pattern():
    model = tiny_model("llama")
    report = prunellm.prune(model, None, prunellm.PruneConfig(solver="wanda", mask_structure="2:4", allocation="owl"),
                            calibration_ids=calib_ids(), progress=False)
    assert len(set(report["allocation"]["n_per_block"])) > 1
    modules = dict(model.named_modules())
    for row in report["layers"]:
        n, m = map(int, row["pattern"].split(":"))
        zeros = (modules[row["name"]].weight == 0).reshape(-1, m).sum(dim=1)
        assert bool((zeros == n).all()), row["name"]

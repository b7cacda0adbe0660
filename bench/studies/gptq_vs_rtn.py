"""Is the int4 loss on SmolLM2 GPTQ's fault? Layer error and perplexity of GPTQ against round-to-nearest.

Layer level: block 3's q_proj and down_proj on 8 × 512 WikiText-2 calibration tokens, relative output
error ‖X(W − Ŵ)ᵀ‖ / ‖XWᵀ‖ of RTN and of GPTQ (`quantize_with_mask`, no pruning) for int4 g128, int4 g32
and int8 per channel. `--model-level` also quantizes every block linear by RTN int4 g128 and, separately,
by GPTQ through `prunellm.prune` (quick-setting calibration), and prints WikiText-2 perplexity at 1024 on
the first 16 test windows (about 10 minutes on two cores).

    python bench/studies/gptq_vs_rtn.py [--model-level]
"""

from __future__ import annotations

import argparse

import torch
from torch import nn

import prunellm
from prunellm.data import calibration_batch
from prunellm.evaluation.perplexity import perplexity
from prunellm.quant import QuantScheme, quantize_rtn
from prunellm.solvers import LayerStats
from prunellm.solvers.sparsegpt import quantize_with_mask


def layer_level() -> None:
    model, tok = prunellm.load_model("smollm2-135m")
    ids = calibration_batch(tok, "wikitext2", 8, 512, 0)
    layers = {"q_proj": model.model.layers[3].self_attn.q_proj, "down_proj": model.model.layers[3].mlp.down_proj}
    captured: dict[str, list[torch.Tensor]] = {}
    for name, module in layers.items():
        module.register_forward_hook(lambda m, i, o, n=name: captured.setdefault(n, []).append(i[0].reshape(-1, i[0].shape[-1])))
    with torch.no_grad():
        model(ids)
    for name, module in layers.items():
        x = torch.cat(captured[name])
        stats = LayerStats(sq_norms=(x.double() ** 2).sum(0), xtx=x.t() @ x, tokens=x.shape[0], samples=8)
        w = module.weight.data.float()
        reference = torch.linalg.norm(x @ w.t())
        for q in (QuantScheme(4, 128), QuantScheme(4, 32), QuantScheme(8, 0)):
            rtn, _ = quantize_rtn(w, q)
            gptq = quantize_with_mask(w, stats, torch.zeros_like(w, dtype=torch.bool), q).weight
            err = lambda a: float(torch.linalg.norm(x @ (w - a).t()) / reference)
            print(f"{name} int{q.bits} g{q.group_size}: rtn {err(rtn):.4f}  gptq {err(gptq):.4f}")


def model_level() -> None:
    model, tok = prunellm.load_model("smollm2-135m")
    print(f"dense: {perplexity(model, tok, seqlen=1024, max_windows=16)[0]:.2f}")
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear) and ".layers." in name:
            module.weight.data.copy_(quantize_rtn(module.weight.data, QuantScheme(4, 128))[0])
    print(f"rtn int4 g128: {perplexity(model, tok, seqlen=1024, max_windows=16)[0]:.2f}")
    model, tok = prunellm.load_model("smollm2-135m")
    config = prunellm.PruneConfig(solver="wanda", sparsity=0.0, quantize="int4", num_calibration_samples=32,
                                  max_seq_length=1024)
    prunellm.prune(model, tok, config, progress=False)
    print(f"gptq int4 g128: {perplexity(model, tok, seqlen=1024, max_windows=16)[0]:.2f}")


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-level", action="store_true")
    args = p.parse_args()
    layer_level()
    if args.model_level:
        model_level()

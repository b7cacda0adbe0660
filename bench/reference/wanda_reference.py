"""
Faithful CPU run of the published reference implementations of magnitude / Wanda /
SparseGPT pruning, taken from locuslab/wanda:
    lib/prune.py       (commit 4651156a2650aea5f10585d6f0298e9ec3619480; the prune_magnitude /
                        prune_wanda / prune_sparsegpt / prepare_calibration_input / check_sparsity /
                        find_layers bodies are identical in commit 069ac970cd76ed8e6b94ad3d35a917ecf7039ac9)
    lib/layerwrapper.py (42e856e4eb5729f194afe290387cffa248850fd1)  -> WrappedGPT
    lib/sparsegpt.py    (42e856e4eb5729f194afe290387cffa248850fd1)  -> SparseGPT
    lib/data.py         (0628038aa65d9947aff0929279cdf4197c14b1cc)  -> get_wikitext2 sampling logic
    lib/eval.py         (1317b0ba3fab5cd0491961b41598138466647ebf)  -> eval_ppl_wikitext
    main.py             (0628038aa65d9947aff0929279cdf4197c14b1cc)  -> driver logic
Unmodified sources: github.com/locuslab/wanda at the commits above (MIT licence).
Used only by bench/ to check prunellm against the published code; not part of the package.

EDITS TO THE REFERENCE CODE (every changed line is tagged "# EDIT(n)" below):
 (1) CPU instead of CUDA:
     - prune_magnitude: `W_metric.flatten().cuda()` -> `W_metric.flatten()` (the trailing `.cpu()`
       is kept; it is a no-op on CPU).
     - SparseGPT.fasterprune: `torch.cuda.synchronize()` removed.
     - `torch.cuda.empty_cache()` calls are kept: they are no-ops on CPU-only torch.
     - device maps: the model is loaded without device_map="auto", so it has no
       `hf_device_map`; we set `model.hf_device_map = {}` after loading so that every
       `if "..." in model.hf_device_map` branch in prune.py is kept verbatim and is simply
       never taken (exactly what happens on a single GPU for models < 30B).
     - device = torch.device("cpu") is passed where main.py passes cuda:0.
 (2) float32 instead of float16: model loaded with dtype=torch.float32 (main.get_llm used
     torch_dtype=torch.float16, low_cpu_mem_usage, device_map="auto").
 (3) transformers-5 API (5.23):
     - The Catcher in prepare_calibration_input and in prune_sparsegpt additionally stores
       the complete kwargs dict the model passes to decoder layer 0
       (`cache['layer_kwargs'] = kwargs`: attention_mask (None with SDPA + no padding),
       position_ids, position_embeddings = rotary (cos, sin), past_key_values=None,
       use_cache=False). `kwargs['attention_mask']` / `kwargs['position_ids']` are still read
       as in the original.
     - Every decoder-layer call `layer(inps[j].unsqueeze(0), attention_mask=attention_mask,
       position_ids=position_ids)[0]` becomes `_layer_out(layer(inps[j].unsqueeze(0),
       **layer_kwargs))`, i.e. the captured kwargs are passed on verbatim (this is what adds
       position_embeddings, without which a v5 LlamaDecoderLayer cannot run).
     - Decoder layers return a tuple in transformers<4.56-ish and a plain tensor in v5;
       `_layer_out` takes element [0] of a tuple and returns a tensor unchanged.
       (The original `[0]` on a v5 tensor would index the batch dim; with batch 1 that gives
       the same values, but we make it explicit.)
     - prepare_calibration_input returns layer_kwargs as a 5th value; prune_wanda unpacks it.
     - main.py's AutoTokenizer(..., use_fast=False): transformers 5 has a single tokenizer
       backend for this model (tokenizer.json only); we call AutoTokenizer.from_pretrained(path)
       (use_fast=False gives the identical backend and ids; checked).
 (4) Calibration data: get_loaders("c4", ...) is replaced by `get_calib_wikitext_valid`, which
     is lib/data.get_wikitext2's sampling loop verbatim, applied to the local
     wiki.valid.raw rows (HF-style rows: trailing "\n" kept, lines == " \n" -> ""),
     joined with " ", tokenized once, random.seed(seed), i = random.randint(0, n - seqlen - 1).
     The (inp, tar) tuple format of the original loader is kept.
 (5) Evaluation: lib/eval.eval_ppl_wikitext verbatim except `nsamples` is capped at
     --eval-windows (first 64 non-overlapping 1024-token windows), the test text is read from
     the local wiki.test.raw (same HF-style rows, "\n\n".join -> 1,294,336 chars), and it runs
     under torch.inference_mode() instead of torch.no_grad().
 (6) Driver: argparse names of this script (--method/--sparsity/--pattern/...), timing,
     JSON-lines output, --save-masks, torch.set_num_threads(1). model.seqlen is set to
     --seqlen for pruning (as main.get_llm sets model.seqlen) and to --eval-seqlen for eval.
 (7) OWL (--owl): luuyin/OWL's prune_wanda_outlier is prune_wanda with a per-block ratio from a
     dense outlier pass; `owl_layer_ratios` below implements that pass (from its description, not
     copied) and prune_wanda's unstructured branch reads `layer_ratio(args, i)` instead of
     args.sparsity_ratio, which is the uniform ratio when --owl is off.
The maths of every prune function (magnitude per-matrix `<=` threshold, Wanda per-row stable
sort, SparseGPT fasterprune blocksize 128 / percdamp 0.01, the N:M topk loops) is untouched.
"""
import argparse
import json
import math
import os
import random
import time

import numpy as np
import torch
import torch.nn as nn
import transformers
from transformers import AutoTokenizer, AutoModelForCausalLM

torch.set_num_threads(1)  # EDIT(6)

_REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_DATA = os.environ.get("PRUNELLM_DATA") or os.path.join(os.path.dirname(_REPO), "shared", "data")
_CACHE = os.environ.get("PRUNELLM_CACHE") or os.path.expanduser("~/.cache/prunellm")
DEFAULT_MODEL = os.path.join(_CACHE, "models", "smollm2-135m")  # `prunellm eval smollm2-135m` creates it
VALID_RAW = os.path.join(_DATA, "wikitext-2-raw", "wiki.valid.raw")
TEST_RAW = os.path.join(_DATA, "wikitext-2-raw", "wiki.test.raw")


def _layer_out(out):  # EDIT(3): tuple (old transformers) or tensor (v5)
    return out[0] if isinstance(out, tuple) else out


###############################################################################
# lib/layerwrapper.py (verbatim)
###############################################################################
# Define WrappedGPT class
class WrappedGPT:
    """
    This class wraps a GPT layer for specific operations.
    """

    def __init__(self, layer, layer_id=0, layer_name="none"):
        self.layer = layer
        self.dev = self.layer.weight.device
        self.rows = layer.weight.data.shape[0]
        self.columns = layer.weight.data.shape[1]

        self.scaler_row = torch.zeros((self.columns), device=self.dev)
        self.nsamples = 0

        self.layer_id = layer_id 
        self.layer_name = layer_name

    def add_batch(self, inp, out):
        if len(inp.shape) == 2:
            inp = inp.unsqueeze(0)
        tmp = inp.shape[0]
        if isinstance(self.layer, nn.Linear):
            if len(inp.shape) == 3:
                inp = inp.reshape((-1, inp.shape[-1]))
            inp = inp.t()

        self.scaler_row *= self.nsamples / (self.nsamples+tmp)
        self.nsamples += tmp

        inp = inp.type(torch.float32)
        self.scaler_row += torch.norm(inp, p=2, dim=1) ** 2  / self.nsamples


###############################################################################
# lib/sparsegpt.py (verbatim except EDIT(1))
###############################################################################
torch.backends.cuda.matmul.allow_tf32 = False
torch.backends.cudnn.allow_tf32 = False

## SparseGPT: https://github.com/IST-DASLab/sparsegpt/tree/f5c25005a61f96a0933ca2f95705a963585aafaa
class SparseGPT:

    def __init__(self, layer):
        self.layer = layer
        self.dev = self.layer.weight.device
        W = layer.weight.data.clone()
        if isinstance(self.layer, nn.Conv2d):
            W = W.flatten(1)
        if isinstance(self.layer, transformers.Conv1D):
            W = W.t()
        self.rows = W.shape[0]
        self.columns = W.shape[1]
        self.H = torch.zeros((self.columns, self.columns), device=self.dev)
        self.nsamples = 0

    def add_batch(self, inp, out):
        if len(inp.shape) == 2:
            inp = inp.unsqueeze(0)
        tmp = inp.shape[0]
        if isinstance(self.layer, nn.Linear) or isinstance(self.layer, transformers.Conv1D):
            if len(inp.shape) == 3:
                inp = inp.reshape((-1, inp.shape[-1]))
            inp = inp.t()
        self.H *= self.nsamples / (self.nsamples + tmp)
        self.nsamples += tmp
        inp = math.sqrt(2 / self.nsamples) * inp.float()
        self.H += inp.matmul(inp.t())


    def fasterprune(
        self, sparsity, prune_n=0, prune_m=0, blocksize=128, percdamp=.01
    ):
        W = self.layer.weight.data.clone()
        if isinstance(self.layer, nn.Conv2d):
            W = W.flatten(1)
        if isinstance(self.layer, transformers.Conv1D):
            W = W.t()
        W = W.float()

        tick = time.time()

        H = self.H
        del self.H
        dead = torch.diag(H) == 0
        H[dead, dead] = 1
        W[:, dead] = 0

        Losses = torch.zeros(self.rows, device=self.dev)

        damp = percdamp * torch.mean(torch.diag(H))
        diag = torch.arange(self.columns, device=self.dev)
        H[diag, diag] += damp
        H = torch.linalg.cholesky(H)
        H = torch.cholesky_inverse(H)
        H = torch.linalg.cholesky(H, upper=True)
        Hinv = H

        mask = None

        for i1 in range(0, self.columns, blocksize):
            i2 = min(i1 + blocksize, self.columns)
            count = i2 - i1

            W1 = W[:, i1:i2].clone()
            Q1 = torch.zeros_like(W1)
            Err1 = torch.zeros_like(W1)
            Losses1 = torch.zeros_like(W1)
            Hinv1 = Hinv[i1:i2, i1:i2]

            if prune_n == 0: 
                if mask is not None:
                    mask1 = mask[:, i1:i2]
                else:
                    tmp = W1 ** 2 / (torch.diag(Hinv1).reshape((1, -1))) ** 2
                    thresh = torch.sort(tmp.flatten())[0][int(tmp.numel() * sparsity)]
                    mask1 = tmp <= thresh
            else:
                mask1 = torch.zeros_like(W1) == 1

            for i in range(count):
                w = W1[:, i]
                d = Hinv1[i, i]

                if prune_n != 0 and i % prune_m == 0:
                    tmp = W1[:, i:(i + prune_m)] ** 2 / (torch.diag(Hinv1)[i:(i + prune_m)].reshape((1, -1))) ** 2
                    mask1.scatter_(1, i + torch.topk(tmp, prune_n, dim=1, largest=False)[1], True)

                q = w.clone()
                q[mask1[:, i]] = 0

                Q1[:, i] = q
                Losses1[:, i] = (w - q) ** 2 / d ** 2

                err1 = (w - q) / d 
                W1[:, i:] -= err1.unsqueeze(1).matmul(Hinv1[i, i:].unsqueeze(0))
                Err1[:, i] = err1

            W[:, i1:i2] = Q1
            Losses += torch.sum(Losses1, 1) / 2

            W[:, i2:] -= Err1.matmul(Hinv[i1:i2, i2:])

        # torch.cuda.synchronize()  # EDIT(1): removed (CPU)
        if isinstance(self.layer, transformers.Conv1D):
            W = W.t()
        self.layer.weight.data = W.reshape(self.layer.weight.shape).to(self.layer.weight.data.dtype)

    def free(self):
        self.H = None
        torch.cuda.empty_cache()


###############################################################################
# Data: EDIT(4) / EDIT(5)
###############################################################################
def hf_wikitext_rows(path):
    """Rows as in HF `wikitext-2-raw-v1`: each line keeps its trailing newline, lines that are
    exactly " \\n" become "". (The .raw files are CRLF; text mode turns them into "\\n".)"""
    with open(path, encoding="utf-8") as f:
        lines = f.readlines()
    return [("" if l == " \n" else l) for l in lines]


def get_calib_wikitext_valid(nsamples, seed, seqlen, tokenizer):  # EDIT(4): replaces get_loaders("c4", ...)
    traindata_text = hf_wikitext_rows(VALID_RAW)
    # Encode datasets  (as lib/data.get_wikitext2: " ".join(rows))
    trainenc = tokenizer(" ".join(traindata_text), return_tensors='pt')

    # Generate samples from training set  (lib/data.get_wikitext2, verbatim)
    random.seed(seed)
    trainloader = []
    for _ in range(nsamples):
        i = random.randint(0, trainenc.input_ids.shape[1] - seqlen - 1)
        j = i + seqlen
        inp = trainenc.input_ids[:, i:j]
        tar = inp.clone()
        tar[:, :-1] = -100
        trainloader.append((inp, tar))
    return trainloader, None


def get_loaders(name, nsamples=128, seed=0, seqlen=2048, tokenizer=None):  # EDIT(4)
    # the reference prune functions call get_loaders("c4", ...); route to the local calibration set
    return get_calib_wikitext_valid(nsamples, seed, seqlen, tokenizer)


###############################################################################
# lib/prune.py (verbatim except EDIT(1), EDIT(3))
###############################################################################
def find_layers(module, layers=[nn.Linear], name=''):
    """
    Recursively find the layers of a certain type in a module.

    Args:
        module (nn.Module): PyTorch module.
        layers (list): List of layer types to find.
        name (str): Name of the module.

    Returns:
        dict: Dictionary of layers of the given type(s) within the module.
    """
    if type(module) in layers:
        return {name: module}
    res = {}
    for name1, child in module.named_children():
        res.update(find_layers(
            child, layers=layers, name=name + '.' + name1 if name != '' else name1
        ))
    return res

def check_sparsity(model):
    use_cache = model.config.use_cache 
    model.config.use_cache = False 

    layers = model.model.layers
    count = 0 
    total_params = 0
    for i in range(len(layers)):
        layer = layers[i]
        subset = find_layers(layer)

        sub_count = 0
        sub_params = 0
        for name in subset:
            W = subset[name].weight.data
            count += (W==0).sum().item()
            total_params += W.numel()

            sub_count += (W==0).sum().item()
            sub_params += W.numel()

        print(f"layer {i} sparsity {float(sub_count)/sub_params:.6f}")

    model.config.use_cache = use_cache 
    return float(count)/total_params 

def prepare_calibration_input(model, dataloader, device):
    use_cache = model.config.use_cache
    model.config.use_cache = False
    layers = model.model.layers

    # dev = model.hf_device_map["model.embed_tokens"]
    if "model.embed_tokens" in model.hf_device_map:
        device = model.hf_device_map["model.embed_tokens"]

    dtype = next(iter(model.parameters())).dtype
    inps = torch.zeros((128, model.seqlen, model.config.hidden_size), dtype=dtype, device=device)
    inps.requires_grad = False
    cache = {'i': 0, 'attention_mask': None, "position_ids": None}

    class Catcher(nn.Module):
        def __init__(self, module):
            super().__init__()
            self.module = module
        def forward(self, inp, **kwargs):
            inps[cache['i']] = inp
            cache['i'] += 1
            cache['attention_mask'] = kwargs['attention_mask']
            cache['position_ids'] = kwargs['position_ids']
            cache['layer_kwargs'] = kwargs  # EDIT(3): keep every kwarg (position_embeddings, ...)
            raise ValueError
    layers[0] = Catcher(layers[0])
    for batch in dataloader:
        try:
            model(batch[0].to(device))
        except ValueError:
            pass 
    layers[0] = layers[0].module

    outs = torch.zeros_like(inps)
    attention_mask = cache['attention_mask']
    position_ids = cache['position_ids']
    layer_kwargs = cache['layer_kwargs']  # EDIT(3)
    model.config.use_cache = use_cache

    return inps, outs, attention_mask, position_ids, layer_kwargs  # EDIT(3)

def return_given_alpha(alpha, sort_res, W_metric, tmp_metric, sum_before):
    thres_cumsum = sum_before * alpha 
    sort_mask = tmp_metric <= thres_cumsum.reshape((-1,1))
    thres = torch.gather(sort_res[0], dim=1, index=sort_mask.sum(dim=1, keepdims=True)-1)
    W_mask = (W_metric <= thres)
    cur_sparsity = (W_mask==True).sum() / W_mask.numel()
    return W_mask, cur_sparsity

def prune_magnitude(args, model, tokenizer, device=torch.device("cuda:0"), prune_n=0, prune_m=0):
    layers = model.model.layers 

    for i in range(len(layers)):
        layer = layers[i]
        subset = find_layers(layer)

        for name in subset:
            W = subset[name].weight.data 
            W_metric = torch.abs(W)
            if prune_n != 0:
                W_mask = (torch.zeros_like(W)==1)
                for ii in range(W_metric.shape[1]):
                    if ii % prune_m == 0:
                        tmp = W_metric[:,ii:(ii+prune_m)].float()
                        W_mask.scatter_(1,ii+torch.topk(tmp, prune_n,dim=1, largest=False)[1], True)
            else:
                thresh = torch.sort(W_metric.flatten())[0][int(W.numel()*args.sparsity_ratio)].cpu()  # EDIT(1): .cuda() removed
                W_mask = (W_metric<=thresh)

            W[W_mask] = 0

def prune_wanda(args, model, tokenizer, device=torch.device("cuda:0"), prune_n=0, prune_m=0):
    use_cache = model.config.use_cache 
    model.config.use_cache = False 

    print("loading calibdation data")
    dataloader, _ = get_loaders("c4",nsamples=args.nsamples,seed=args.seed,seqlen=model.seqlen,tokenizer=tokenizer)
    print("dataset loading complete")
    with torch.no_grad():
        inps, outs, attention_mask, position_ids, layer_kwargs = prepare_calibration_input(model, dataloader, device)  # EDIT(3)

    layers = model.model.layers
    for i in range(len(layers)):
        layer = layers[i]
        subset = find_layers(layer)

        if f"model.layers.{i}" in model.hf_device_map:   ## handle the case for llama-30B and llama-65B, when the device map has multiple GPUs;
            dev = model.hf_device_map[f"model.layers.{i}"]
            inps, outs, attention_mask, position_ids = inps.to(dev), outs.to(dev), attention_mask.to(dev), position_ids.to(dev)

        wrapped_layers = {}
        for name in subset:
            wrapped_layers[name] = WrappedGPT(subset[name])

        def add_batch(name):
            def tmp(_, inp, out):
                wrapped_layers[name].add_batch(inp[0].data, out.data)
            return tmp

        handles = []
        for name in wrapped_layers:
            handles.append(subset[name].register_forward_hook(add_batch(name)))
        for j in range(args.nsamples):
            with torch.no_grad():
                outs[j] = _layer_out(layer(inps[j].unsqueeze(0), **layer_kwargs))  # EDIT(3)
        for h in handles:
            h.remove()

        for name in subset:
            print(f"pruning layer {i} name {name}")
            W_metric = torch.abs(subset[name].weight.data) * torch.sqrt(wrapped_layers[name].scaler_row.reshape((1,-1)))

            W_mask = (torch.zeros_like(W_metric) == 1)  ## initialize a mask to be all False
            if prune_n != 0:
                # structured n:m sparsity
                for ii in range(W_metric.shape[1]):
                    if ii % prune_m == 0:
                        tmp = W_metric[:,ii:(ii+prune_m)].float()
                        W_mask.scatter_(1,ii+torch.topk(tmp, prune_n,dim=1, largest=False)[1], True)
            else:
                sort_res = torch.sort(W_metric, dim=-1, stable=True)

                if args.use_variant:
                    # wanda variant 
                    tmp_metric = torch.cumsum(sort_res[0], dim=1)
                    sum_before = W_metric.sum(dim=1)

                    alpha = 0.4
                    alpha_hist = [0., 0.8]
                    W_mask, cur_sparsity = return_given_alpha(alpha, sort_res, W_metric, tmp_metric, sum_before)
                    while (torch.abs(cur_sparsity - args.sparsity_ratio)>0.001) and (alpha_hist[1]-alpha_hist[0]>=0.001):
                        if cur_sparsity > args.sparsity_ratio:
                            alpha_new = (alpha + alpha_hist[0]) / 2.0
                            alpha_hist[1] = alpha
                        else:
                            alpha_new = (alpha + alpha_hist[1]) / 2.0
                            alpha_hist[0] = alpha

                        alpha = alpha_new 
                        W_mask, cur_sparsity = return_given_alpha(alpha, sort_res, W_metric, tmp_metric, sum_before)
                    print(f"alpha found {alpha} sparsity {cur_sparsity:.6f}")
                else:
                    # unstructured pruning
                    indices = sort_res[1][:,:int(W_metric.shape[1]*layer_ratio(args, i))]  # EDIT(7)
                    W_mask.scatter_(1, indices, True)

            subset[name].weight.data[W_mask] = 0  ## set weights to zero 

        for j in range(args.nsamples):
            with torch.no_grad():
                outs[j] = _layer_out(layer(inps[j].unsqueeze(0), **layer_kwargs))  # EDIT(3)
        inps, outs = outs, inps

    model.config.use_cache = use_cache 
    torch.cuda.empty_cache()


@torch.no_grad()
def prune_sparsegpt(args, model, tokenizer, dev, prune_n=0, prune_m=0):
    ## SparseGPT code available at: https://github.com/IST-DASLab/sparsegpt/tree/f5c25005a61f96a0933ca2f95705a963585aafaa
    print('Starting ...')
    dataloader, _ = get_loaders("c4",nsamples=args.nsamples,seed=args.seed,seqlen=model.seqlen,tokenizer=tokenizer)

    use_cache = model.config.use_cache
    model.config.use_cache = False
    layers = model.model.layers

    if "model.embed_tokens" in model.hf_device_map:
        dev = model.hf_device_map["model.embed_tokens"]

    dtype = next(iter(model.parameters())).dtype
    inps = torch.zeros(
        (args.nsamples, model.seqlen, model.config.hidden_size), dtype=dtype, device=dev
    )
    cache = {'i': 0, 'attention_mask': None, "position_ids": None}

    class Catcher(nn.Module):
        def __init__(self, module):
            super().__init__()
            self.module = module
        def forward(self, inp, **kwargs):
            inps[cache['i']] = inp
            cache['i'] += 1
            cache['attention_mask'] = kwargs['attention_mask']
            cache['position_ids'] = kwargs['position_ids']
            cache['layer_kwargs'] = kwargs  # EDIT(3)
            raise ValueError
    layers[0] = Catcher(layers[0])
    for batch in dataloader:
        try:
            model(batch[0].to(dev))
        except ValueError:
            pass
    layers[0] = layers[0].module
    torch.cuda.empty_cache()

    outs = torch.zeros_like(inps)
    attention_mask = cache['attention_mask']
    position_ids = cache['position_ids']
    layer_kwargs = cache['layer_kwargs']  # EDIT(3)

    print('Ready.')

    for i in range(len(layers)):
        layer = layers[i]
        if f"model.layers.{i}" in model.hf_device_map:
            dev = model.hf_device_map[f"model.layers.{i}"]
            print(f"layer {i} device {dev}")
            inps, outs, attention_mask, position_ids = inps.to(dev), outs.to(dev), attention_mask.to(dev), position_ids.to(dev)

        subset = find_layers(layer)

        gpts = {}
        for name in subset:
            gpts[name] = SparseGPT(subset[name])

        def add_batch(name):
            def tmp(_, inp, out):
                gpts[name].add_batch(inp[0].data, out.data)
            return tmp

        handles = []
        for name in gpts:
            handles.append(subset[name].register_forward_hook(add_batch(name)))

        for j in range(args.nsamples):
            outs[j] = _layer_out(layer(inps[j].unsqueeze(0), **layer_kwargs))  # EDIT(3)
        for h in handles:
            h.remove()

        for name in gpts:
            print(i, name)
            print('Pruning ...')

            gpts[name].fasterprune(args.sparsity_ratio, prune_n=prune_n, prune_m=prune_m, percdamp=0.01, blocksize=128)
            gpts[name].free()

        for j in range(args.nsamples):
            outs[j] = _layer_out(layer(inps[j].unsqueeze(0), **layer_kwargs))  # EDIT(3)

        layers[i] = layer 
        torch.cuda.empty_cache()

        inps, outs = outs, inps

    model.config.use_cache = use_cache
    torch.cuda.empty_cache()


###############################################################################
# lib/eval.py eval_ppl_wikitext (verbatim except EDIT(5))
###############################################################################
class TokenizerWrapper:
    def __init__(self, input_ids):
        self.input_ids = input_ids

def eval_ppl_wikitext(model, testenc, bs=1, device=None, max_windows=None):  # EDIT(5): max_windows
    # Get input IDs
    testenc = testenc.input_ids

    # Calculate number of samples
    nsamples = testenc.numel() // model.seqlen
    if max_windows is not None:  # EDIT(5): only the first `max_windows` windows
        nsamples = min(nsamples, max_windows)

    # List to store negative log likelihoods
    nlls = []
    print(f"nsamples {nsamples}")

    # Loop through each batch
    for i in range(0,nsamples,bs):
        if i % 50 == 0:
            print(f"sample {i}")

        # Calculate end index
        j = min(i+bs, nsamples)

        # Prepare inputs and move to device
        inputs = testenc[:,(i * model.seqlen):(j * model.seqlen)].to(device)
        inputs = inputs.reshape(j-i, model.seqlen)

        # Forward pass through the model
        lm_logits = model(inputs).logits

        # Shift logits and labels for next token prediction
        shift_logits = lm_logits[:, :-1, :].contiguous()
        shift_labels = inputs[:, 1:]

        # Compute loss
        loss_fct = nn.CrossEntropyLoss()
        loss = loss_fct(shift_logits.reshape(-1, shift_logits.size(-1)), shift_labels.reshape(-1))

        # Calculate negative log likelihood
        neg_log_likelihood = loss.float() * model.seqlen * (j-i)

        # Append to list of negative log likelihoods
        nlls.append(neg_log_likelihood)

    # Compute perplexity
    ppl = torch.exp(torch.stack(nlls).sum() / (nsamples * model.seqlen))

    # Empty CUDA cache to save memory
    torch.cuda.empty_cache()

    return ppl.item()


def eval_ppl(args, model, tokenizer, device):  # EDIT(5): local test file, window cap, inference_mode
    testdata_text = hf_wikitext_rows(TEST_RAW)
    joined = "\n\n".join(testdata_text)
    assert len(joined) == 1294336, len(joined)
    testenc = tokenizer(joined, return_tensors='pt')
    print(f"test tokens {testenc.input_ids.shape[1]}")
    with torch.inference_mode():
        ppl_test = eval_ppl_wikitext(model, testenc, 1, device, max_windows=args.eval_windows)
    return ppl_test


###############################################################################
# OWL (luuyin/OWL lib/prune_all.py, prune_wanda_outlier). Not a copy: written here from the
# description in ../shared/docs/algorithms.md §2.1, on the reference Wanda machinery above.
# Pass 1 runs the calibration set through the *dense* blocks with WrappedGPT hooks, pools each
# block's Wanda scores |W|*sqrt(scaler_row) over all its linears and counts the percentage above
# Hyper_m x their mean (check_outlier_mean). Ratios are min-max scaled to [0, 2*Lamda], centred on
# the target density (plain mean over blocks) and clamped to 0.01 where <= 0. Pass 2 is
# prune_wanda above with each block's ratio (EDIT(7)); the calibration data is re-sampled with the
# same seed, as the reference reloads it.
###############################################################################
def layer_ratio(args, i):  # EDIT(7): OWL's per-block ratio, else the uniform one
    ratios = getattr(args, "layer_ratios", None)
    if ratios is None:
        return args.sparsity_ratio
    return ratios[i] if ratios[i] > 0 else 0.01


@torch.no_grad()
def owl_layer_ratios(args, model, tokenizer, device):
    dataloader, _ = get_loaders("c4", nsamples=args.nsamples, seed=args.seed, seqlen=model.seqlen, tokenizer=tokenizer)
    inps, outs, attention_mask, position_ids, layer_kwargs = prepare_calibration_input(model, dataloader, device)
    outlier = []
    for layer in model.model.layers:
        subset = find_layers(layer)
        wrapped = {name: WrappedGPT(module) for name, module in subset.items()}
        handles = [subset[name].register_forward_hook(
            lambda _, inp, out, name=name: wrapped[name].add_batch(inp[0].data, out.data)) for name in subset]
        for j in range(args.nsamples):
            outs[j] = _layer_out(layer(inps[j].unsqueeze(0), **layer_kwargs))
        for h in handles:
            h.remove()
        scores = torch.cat([torch.flatten(torch.abs(subset[name].weight.data)
                                          * torch.sqrt(wrapped[name].scaler_row.reshape((1, -1))))
                            for name in subset])
        outlier.append(float((scores > torch.mean(scores) * args.owl_m).sum().item()) / scores.numel() * 100)
        inps, outs = outs, inps
    d = np.array(outlier)
    scaled = (d - d.min()) * (1 / (d.max() - d.min()) * args.owl_lambda * 2)
    density = scaled - np.mean(scaled) + (1 - args.sparsity_ratio)
    return outlier, [float(1 - x) for x in density]


###############################################################################
# driver (main.py logic; EDIT(6))
###############################################################################
def decoder_linear_masks(model):
    masks = {}
    for i, layer in enumerate(model.model.layers):
        for name, mod in find_layers(layer).items():
            masks[f"model.layers.{i}.{name}"] = (mod.weight.data == 0).cpu()
    return masks


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--model", default=DEFAULT_MODEL)
    p.add_argument("--method", choices=["magnitude", "wanda", "sparsegpt", "dense"], required=True)
    g = p.add_mutually_exclusive_group()
    g.add_argument("--sparsity", type=float, default=None)
    g.add_argument("--pattern", type=str, default=None, help="N:M, e.g. 2:4")
    p.add_argument("--nsamples", type=int, default=32)
    p.add_argument("--seqlen", type=int, default=1024)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--eval-seqlen", type=int, default=1024)
    p.add_argument("--eval-windows", type=int, default=64)
    p.add_argument("--out", default="results.jsonl")
    p.add_argument("--save-masks", default=None)
    p.add_argument("--owl", action="store_true", help="OWL allocation (Wanda only): M=--owl-m, lambda=--owl-lambda")
    p.add_argument("--owl-m", type=float, default=5.0)
    p.add_argument("--owl-lambda", type=float, default=0.08)
    a = p.parse_args()

    t_start = time.time()

    # Setting seeds for reproducibility (main.py)
    np.random.seed(a.seed)
    torch.random.manual_seed(a.seed)

    # Handling n:m sparsity (main.py)
    prune_n, prune_m = 0, 0
    if a.method == "dense":
        sparsity_ratio = 0.0
    elif a.pattern is not None:
        sparsity_ratio = 0.5  # main.py asserts sparsity_ratio == 0.5 for N:M
        prune_n, prune_m = map(int, a.pattern.split(":"))
    else:
        assert a.sparsity is not None, "--sparsity or --pattern required"
        sparsity_ratio = a.sparsity

    # the namespace the reference prune functions read
    args = argparse.Namespace(nsamples=a.nsamples, seed=a.seed, sparsity_ratio=sparsity_ratio,
                              use_variant=False, eval_windows=a.eval_windows)

    model = AutoModelForCausalLM.from_pretrained(a.model, dtype=torch.float32)  # EDIT(2)
    model.seqlen = a.seqlen
    model.hf_device_map = {}  # EDIT(1): no device map on CPU
    model.eval()
    tokenizer = AutoTokenizer.from_pretrained(a.model)  # EDIT(3)
    device = torch.device("cpu")  # EDIT(1)
    print("attn implementation:", model.config._attn_implementation)

    t_prune0 = time.time()
    if args.sparsity_ratio != 0:
        print("pruning starts")
        if a.owl:  # EDIT(7)
            assert a.method == "wanda" and a.pattern is None, "--owl is ported for unstructured Wanda"
            args.owl_m, args.owl_lambda = a.owl_m, a.owl_lambda
            owl_outlier, args.layer_ratios = owl_layer_ratios(args, model, tokenizer, device)
            print("OWL block sparsities", args.layer_ratios)
        if a.method == "wanda":
            prune_wanda(args, model, tokenizer, device, prune_n=prune_n, prune_m=prune_m)
        elif a.method == "magnitude":
            prune_magnitude(args, model, tokenizer, device, prune_n=prune_n, prune_m=prune_m)
        elif a.method == "sparsegpt":
            prune_sparsegpt(args, model, tokenizer, device, prune_n=prune_n, prune_m=prune_m)
    prune_s = time.time() - t_prune0

    print("*"*30)
    achieved = check_sparsity(model)
    print(f"sparsity sanity check {achieved:.4f}")
    print("*"*30)

    if a.save_masks:
        torch.save(decoder_linear_masks(model), a.save_masks)

    n_zero = sum(int((m.weight.data == 0).sum()) for l in model.model.layers for m in find_layers(l).values())
    n_tot = sum(m.weight.numel() for l in model.model.layers for m in find_layers(l).values())

    t_eval0 = time.time()
    model.seqlen = a.eval_seqlen
    ppl = eval_ppl(args, model, tokenizer, device)
    eval_s = time.time() - t_eval0
    print(f"ppl on wikitext {ppl}")

    rec = {
        "impl": "locuslab/wanda reference (CPU/fp32/transformers-5 port)",
        "method": a.method,
        "sparsity": (None if a.pattern is not None or a.method == "dense" else sparsity_ratio),
        "pattern": (a.pattern if a.method != "dense" else None),
        "ppl": ppl,
        "achieved_sparsity": achieved,
        "zeros": n_zero, "numel": n_tot,
        "nsamples": a.nsamples, "seqlen": a.seqlen, "seed": a.seed,
        "eval_seqlen": a.eval_seqlen, "eval_windows": a.eval_windows,
        "prune_s": round(prune_s, 1), "eval_s": round(eval_s, 1),
        "wall_s": round(time.time() - t_start, 1),
        "masks": a.save_masks,
        **({"allocation": "owl", "owl_m": a.owl_m, "owl_lambda": a.owl_lambda, "outlier_ratio": owl_outlier,
            "layer_ratios": args.layer_ratios} if a.owl else {}),
    }
    with open(a.out, "a") as f:
        f.write(json.dumps(rec) + "\n")
    print(json.dumps(rec))


if __name__ == "__main__":
    main()

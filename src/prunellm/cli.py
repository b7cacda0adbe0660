"""Command line: `prunellm eval|prune ...`. Bad input prints one line and exits with code 2."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from .errors import UsageError
from .models import BUILTINS, DEFAULT_MODEL, DTYPE_CHOICES


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _csv(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("model_pos", nargs="?", metavar="MODEL", help=f"built-in name ({', '.join(BUILTINS)}), folder or hub id")
    p.add_argument("--model", dest="model_opt", help=f"same as MODEL (default {DEFAULT_MODEL})")
    _add_device_args(p)
    p.add_argument("--data-dir", help="folder with local datasets (else $PRUNELLM_DATA, else ../shared/data)")


def _add_device_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", help="auto (default: the first accelerator, else cpu), cpu, cuda, cuda:N, mps, xpu")
    p.add_argument("--dtype", choices=list(DTYPE_CHOICES),
                   help="compute dtype (default float32 on the CPU, the checkpoint's own (auto) on an accelerator)")


def _device_dtype(args: argparse.Namespace, device: str | None = None):
    """The resolved device (a bad one is a UsageError) and the dtype to compute in there."""
    from .devices import default_dtype, resolve_device

    resolved = resolve_device(device or args.device or "auto")
    return resolved, args.dtype or default_dtype(resolved)


def _model_name(args: argparse.Namespace) -> str:
    if args.model_pos and args.model_opt and args.model_pos != args.model_opt:
        raise UsageError(f"two models given: {args.model_pos!r} and --model {args.model_opt!r}")
    return args.model_pos or args.model_opt or DEFAULT_MODEL


def _cmd_eval(args: argparse.Namespace) -> int:
    from .engine.residency import on_device
    from .models import load_model
    from .outputs import write_json

    name = _model_name(args)
    device, dtype = _device_dtype(args)
    ppl = args.ppl if args.ppl is not None else ([] if args.tasks else ["wikitext2"])
    if args.tasks:
        from .evaluation.zeroshot import task_configs

        task_configs(args.tasks, args.data_dir)  # unknown task names fail before the model loads
    model, tokenizer = load_model(name, dtype=dtype)
    with on_device(model, device):
        result = _evaluate(args, model, tokenizer, name, ppl)
    if args.json:
        write_json(args.json, result)
        print(f"wrote {args.json}")
    return 0


def _evaluate(args: argparse.Namespace, model, tokenizer, name: str, ppl: list[str]) -> dict:
    from .evaluation.perplexity import evaluate_perplexity
    from .outputs import format_table

    result: dict = {"model": name, "device": str(model.device)}
    if ppl:
        result.update(evaluate_perplexity(model, tokenizer, ppl, args.seqlen, args.max_windows, args.batch_size,
                                          args.data_dir))
        rows = [[ds, value] for ds, value in result["perplexity"].items()]
        print(format_table(["dataset", f"perplexity (seqlen {args.seqlen})"], rows))
    if args.tasks:
        from .evaluation.zeroshot import evaluate_zeroshot, zeroshot_rows

        result["zeroshot"] = evaluate_zeroshot(model, tokenizer, args.tasks, args.limit, args.batch_size,
                                               args.data_dir)
        print(format_table(["task", "acc", "acc_norm", "acc_stderr", "samples"], zeroshot_rows(result["zeroshot"])))
    return result


def _prune_config(args: argparse.Namespace):
    """Recipe file (if any), then explicit flags on top."""
    from .config import PruneConfig

    config = PruneConfig.from_yaml(args.config) if args.config else PruneConfig()
    if args.sparsity is not None and args.pattern is not None:
        raise UsageError("give either --sparsity or --pattern, not both")
    overrides = {
        "solver": args.solver,
        "sparsity": args.sparsity,
        "dataset": args.calib,
        "num_calibration_samples": args.nsamples,
        "max_seq_length": args.seqlen,
        "seed": args.seed,
        "propagate": args.propagate,
        "mask_selection": args.mask_selection,
        "allocation": args.allocation,
        "owl_m": args.owl_m,
        "owl_lmbda": args.owl_lambda,
        "alpha_epsilon": args.alpha_epsilon,
        "als_features": args.als_features,
        "als_norm": args.als_norm,
        "als_decreasing": args.als_decreasing,
        "als_bounds": args.als_bounds,
        "als_granularity": args.als_granularity,
        "als_direction": args.als_direction,
        "profile_samples": args.profile_samples,
        "block_size": args.block_size,
        "calibration_batch_size": args.calib_batch_size,
        "targets": args.targets,
        "ignore": args.ignore,
        "data_dir": args.data_dir,
        "device": args.device,
        "quantize": args.quantize,
        "group_size": args.group_size,
        "quantize_head": args.quantize_head or None,
        "update": args.update,
        "repair": args.repair,
        "repair_cycles": args.repair_cycles,
        "permute": args.permute or None,
        "reconstruct": args.reconstruct,
        "reconstruct_params": args.reconstruct_params,
        "reconstruct_epochs": args.reconstruct_epochs,
        "reconstruct_lr": args.reconstruct_lr,
        "reconstruct_batch_size": args.reconstruct_batch_size,
        "reconstruct_holdout": args.reconstruct_holdout,
    }
    for key, value in overrides.items():
        if value is not None:
            setattr(config, key, value)
    if args.pattern is not None:
        config.mask_structure = args.pattern
    elif args.sparsity is not None:
        config.mask_structure = "0:0"
    return config.validate()


def _relaunch(nproc: int, argv: list[str]) -> int:
    """`prunellm prune --nproc N ...` is `torchrun --standalone --nproc-per-node N -m prunellm prune ...`."""
    import subprocess

    rest, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--nproc":
            skip = True
        elif not arg.startswith("--nproc="):
            rest.append(arg)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
           "-m", "prunellm", *rest]
    return subprocess.run(cmd).returncode


def _resolve_once(name: str) -> str:
    """Resolve (and on first use convert) the model on rank 0 before the other processes read it."""
    from .engine import distributed
    from .models import resolve_model

    source = resolve_model(name) if distributed.is_main() else None
    distributed.barrier()
    return source if source is not None else resolve_model(name)


def _cmd_prune(args: argparse.Namespace) -> int:
    import os

    from .engine import distributed

    if args.nproc > 1 and int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return _relaunch(args.nproc, args.argv)
    config = _prune_config(args)
    device, dtype = _device_dtype(args, config.device)
    distributed.init_from_env(device)
    from .engine.loop import prune
    from .engine.residency import on_device
    from .evaluation.perplexity import evaluate_perplexity
    from .models import load_model
    from .outputs import check_output, format_table
    from .save import save_pruned

    check_output(args.output, args.overwrite)
    if args.eval_tasks:
        from .evaluation.zeroshot import task_configs

        task_configs(args.eval_tasks, config.data_dir)
    name = _model_name(args)
    source = _resolve_once(name)
    offload = args.offload
    if offload == "auto":
        from .engine.offload import should_offload

        local = Path(source).is_dir()
        offload = "disk" if local and should_offload(source, _torch_dtype(dtype, source)) else "none"
        if offload == "disk" and distributed.is_main():
            print(f"{name} does not fit in free memory: pruning it block by block from disk (--offload disk)")
    if offload == "disk":
        return _prune_offloaded(args, config, name, source, dtype)
    model, tokenizer = load_model(source, dtype=dtype)  # stays in CPU memory; blocks visit the device

    def ppl() -> dict:
        with on_device(model, device):
            return evaluate_perplexity(
                model, tokenizer, args.eval_ppl, args.eval_seqlen, args.eval_max_windows, 1, config.data_dir
            )

    main_rank = distributed.is_main()
    dense = ppl() if args.eval_ppl and args.eval_dense and main_rank else None
    report = {"model": name, "dtype": str(model.dtype).removeprefix("torch."),
              **prune(model, tokenizer, config, activations=args.activations, spill_dir=args.spill_dir)}
    if not main_rank:  # rank 0 evaluates and writes
        distributed.barrier()
        return 0
    if args.eval_ppl:
        after = ppl()
        report.update(perplexity=after["perplexity"], eval={"seqlen": after["seqlen"], "windows": after["windows"]})
        if dense:
            report["perplexity_dense"] = dense["perplexity"]
    if args.eval_tasks:
        from .evaluation.zeroshot import evaluate_zeroshot, zeroshot_rows

        with on_device(model, device):
            report["zeroshot"] = evaluate_zeroshot(model, tokenizer, args.eval_tasks, args.eval_limit,
                                                   data_dir=config.data_dir)
    save_pruned(model, tokenizer, report, args.output, overwrite=args.overwrite, save_format=args.save_format)
    distributed.barrier()
    _print_pruned(report, name, config)
    if args.eval_ppl:
        rows = [[ds, (dense or {}).get("perplexity", {}).get(ds, "-"), v] for ds, v in report["perplexity"].items()]
        print(format_table(["dataset", "ppl dense", "ppl pruned"], rows))
    if args.eval_tasks:
        print(format_table(["task", "acc", "acc_norm", "acc_stderr", "samples"], zeroshot_rows(report["zeroshot"])))
    print(f"wrote {args.output}")
    return 0


def _print_pruned(report: dict, name: str, config) -> None:
    t = report["timings"]
    print(f"pruned {name} with {config.solver} to {report['sparsity']:.4f} sparsity "
          f"({config.target()} per layer) in {t['prune_s']:.1f}s (calibration forward {t['calib_forward_s']:.1f}s)")


def _torch_dtype(dtype: str, source: str):
    from .models import DTYPES, checkpoint_dtype

    return checkpoint_dtype(source) if dtype == "auto" else DTYPES[dtype]


def _prune_offloaded(args: argparse.Namespace, config, name: str, source: str, dtype: str) -> int:
    from .engine import distributed
    from .runtime.compressed import is_compressed
    from .from_disk import prune_from_disk

    if args.eval_ppl or args.eval_tasks or args.eval_dense:
        raise UsageError("--offload disk never holds the whole model, so it cannot evaluate it: "
                         f"run `prunellm eval {args.output}` afterwards")
    if args.save_format != "dense":
        raise UsageError(f"--offload disk writes a dense sharded folder; compress it afterwards with "
                         f"`prunellm compress {args.output} OUT`")
    if not Path(source).is_dir() or is_compressed(source):
        raise UsageError(f"--offload disk needs a local safetensors model folder, got {name!r}")
    report = prune_from_disk(source, args.output, config, dtype, overwrite=args.overwrite,
                             activations=args.activations, spill_dir=args.spill_dir)
    if distributed.is_main():
        _print_pruned(report, name, config)
        print(f"wrote {args.output}")
    return 0


def _cmd_compress(args: argparse.Namespace) -> int:
    import torch

    from .outputs import format_table
    from .runtime.compressed import compress_folder, decompress_folder

    dtype = getattr(torch, args.dtype) if args.dtype else None
    if args.dense:
        decompress_folder(args.folder, args.output, overwrite=args.overwrite)
        print(f"wrote {args.output} (dense weights, dequantized)")
        return 0
    config = compress_folder(args.folder, args.output, dtype=dtype, overwrite=args.overwrite)
    size = sum(f.stat().st_size for f in Path(args.output).iterdir() if f.name.endswith(".safetensors"))
    counts = {}
    for encoding in config["tensors"].values():
        counts[encoding] = counts.get(encoding, 0) + 1
    print(format_table(["encoding", "tensors"], sorted(counts.items())))
    print(f"weights: {config['dense_bytes'] / 2**20:.1f} MiB dense -> {size / 2**20:.1f} MiB compressed "
          f"({size / config['dense_bytes']:.1%})")
    print(f"wrote {args.output}")
    return 0


BENCH_TEXT = ("The tower is 324 metres tall, about the same height as an 81-storey building, and the tallest "
              "structure in Paris. Its base is square, measuring 125 metres on each side. ")


def _cmd_run(args: argparse.Namespace) -> int:
    import time

    import torch

    from .models import load_model
    from .runtime.sparse_linear import sparsify
    from .runtime.speed import greedy

    device, dtype = _device_dtype(args)
    model, tokenizer = load_model(args.folder, dtype=dtype, device=device)
    replaced = [] if args.dense else sparsify(model)
    ids = tokenizer(args.prompt, return_tensors="pt").input_ids
    t0 = time.perf_counter()
    out = greedy(model, ids, args.max_new_tokens)
    seconds = time.perf_counter() - t0
    print(tokenizer.decode(out[0], skip_special_tokens=True))
    where = f"{torch.get_num_threads()} threads" if device.type == "cpu" else str(device)
    print(f"[{len(replaced)} sparse layers, {args.max_new_tokens} tokens in {seconds:.2f}s, {where}]", file=sys.stderr)
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    from .models import load_model
    from .outputs import format_table, write_json
    from .runtime.speed import compare

    device, dtype = _device_dtype(args)
    model, tokenizer = load_model(args.folder, dtype=dtype, device=device)
    ids = tokenizer(BENCH_TEXT * (1 + args.prompt_tokens // 20), return_tensors="pt").input_ids[:, : args.prompt_tokens]
    result = {"model": args.folder, **compare(model, ids, args.new_tokens, args.repeats)}
    rows = [[name, f"{result[name]['prefill_tokens_per_s']:.1f}", f"{result[name]['decode_tokens_per_s']:.2f}",
             f"{result['memory_bytes'][name.split('_')[0]] / 2**20:.0f}"]
            for name in ("dense", "sparse", "sparse_torch_head") if name in result]
    print(format_table(["weights", "prefill tok/s", "decode tok/s", "MiB in memory"], rows))
    head = (f" ({result['decode_speedup_torch_head']:.2f}x with the head through torch)"
            if "decode_speedup_torch_head" in result else "")
    print(f"decode speedup {result['decode_speedup']:.2f}x{head}, prefill {result['prefill_speedup']:.2f}x, "
          f"greedy tokens identical: {result['same_tokens']}, kernel: {result['kernel'] or result['kernel_error']}")
    if args.json:
        write_json(Path(args.json), result)
    return 0


def _cmd_plot(args: argparse.Namespace) -> int:
    from .plot import plot_allocation

    for path in plot_allocation(args.folder, args.out):
        print(f"wrote {path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="prunellm", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    ev = sub.add_parser("eval", help="perplexity of a model (built-in, folder or hub id)")
    _add_model_args(ev)
    ev.add_argument("--ppl", type=_csv, help="perplexity datasets, comma separated (default wikitext2 unless --tasks)")
    ev.add_argument("--tasks", type=_csv, default=[], help="zero-shot tasks through lm-eval, e.g. piqa,hellaswag")
    ev.add_argument("--limit", type=_positive_int, help="evaluate only the first N examples of each task")
    ev.add_argument("--seqlen", type=_positive_int, default=2048, help="evaluation window (default 2048)")
    ev.add_argument("--max-windows", type=_positive_int, help="evaluate only the first N windows")
    ev.add_argument("--batch-size", type=_positive_int, default=1, help="windows / requests per forward pass")
    ev.add_argument("--json", help="write results to this JSON file")
    ev.set_defaults(func=_cmd_eval)

    pr = sub.add_parser("prune", help="prune a model and save it with prune_report.json")
    _add_model_args(pr)
    pr.add_argument("--config", help="YAML recipe (flat fields or an llm-compressor style recipe); flags override it")
    pr.add_argument("--solver", help="magnitude, wanda, ria, sparsegpt, mrp or admm (default wanda)")
    pr.add_argument("--sparsity", type=float, help="unstructured target in [0, 1) (default 0.5)")
    pr.add_argument("--pattern", help="N:M semi-structured: prune N of every M inputs, e.g. 2:4")
    pr.add_argument("--calib", help="calibration data: wikitext2, ptb, c4, text:PATH, jsonl:PATH (default wikitext2)")
    pr.add_argument("--nsamples", type=_positive_int, help="calibration samples (default 128)")
    pr.add_argument("--seqlen", type=_positive_int, help="calibration sample length (default 2048)")
    pr.add_argument("--seed", type=int, help="calibration sampling seed (default 0)")
    pr.add_argument("--allocation", help="layer-wise sparsity: uniform (default), owl, als, alpha")
    pr.add_argument("--owl-m", type=float, help="OWL outlier threshold, × mean score (default 5)")
    pr.add_argument("--owl-lambda", type=float, help="OWL spread (default 0.08; for N:M an integer N shift, default 2)")
    pr.add_argument("--alpha-epsilon", type=float, help="AlphaPruning spread ε (default 0.3, narrowed where a layer would reach 99%%)")
    pr.add_argument("--als-features", choices=["input", "output", "gate"], help="ALS features (default input)")
    pr.add_argument("--als-norm", choices=["none", "feature", "feature+weight"], help="ALS normalization")
    pr.add_argument("--als-decreasing", choices=["mu", "original"], help="ALS importance exp(-ρ/μ) or exp(-ρ)")
    pr.add_argument("--als-bounds", type=lambda t: [float(x) for x in t.split(",")], help="ALS bounds LO,HI")
    pr.add_argument("--als-granularity", type=float, help="ALS sparsity grid step (default 0.005)")
    pr.add_argument("--als-direction", choices=["sparser", "denser"], help="ALS: more redundant ⇒ sparser/denser")
    pr.add_argument("--profile-samples", type=_positive_int, help="calibration samples for the profiling pass")
    pr.add_argument("--mask-selection", choices=["score", "loss"],
                    help="mrp mask: score w²/[H⁻¹]_jj (default) or least multiple-removal loss (N:M only)")
    pr.add_argument("--block-size", type=_positive_int, help="sparsegpt/mrp column block (default 128)")
    pr.add_argument("--propagate", choices=["pruned", "dense"],
                    help="next block's inputs (default pruned; dense with --reconstruct)")
    pr.add_argument("--calib-batch-size", type=_positive_int, help="samples per block forward (default 8)")
    pr.add_argument("--targets", type=_csv, help="layers to prune: class names or re:patterns (default Linear)")
    pr.add_argument("--ignore", type=_csv, help="layers to skip (default re:.*lm_head)")
    pr.add_argument("--quantize", choices=["none", "int8", "int4"],
                    help="also quantize the kept weights (GPTQ-style, error-compensated; default none)")
    pr.add_argument("--group-size", type=int,
                    help="input columns per scale: 0 = per output channel (int8 default), int4 default 128")
    pr.add_argument("--quantize-head", action="store_true",
                    help="also round the output head (and a tied embedding) to int8 per output channel")
    pr.add_argument("--update", choices=["solver", "admm"],
                    help="kept weights of the chosen mask: the solver's own (default), or admm: the exact masked "
                         "least-squares optimum (ADMM, then conjugate gradients)")
    pr.add_argument("--repair", choices=["none", "dsnot"],
                    help="dsnot: after the solver, swap pruned and kept weights per row while the layer error drops")
    pr.add_argument("--repair-cycles", type=_positive_int, help="dsnot: most swaps per row (default 50)")
    pr.add_argument("--permute", action="store_true",
                    help="N:M: first reorder the input channels of the MLP down projection and attention output "
                         "so that important weights fall in different groups (folded into gate/up and v rows: "
                         "the saved model computes the same function)")
    pr.add_argument("--reconstruct", choices=["none", "block", "halves"],
                    help="after each block's masks, fit its kept weights to the dense block's outputs (Adam): "
                         "the whole block, or attention then MLP (default none)")
    pr.add_argument("--reconstruct-params", choices=["kept", "kept+norms"],
                    help="what reconstruction trains: kept weights (default), or also norm weights and biases")
    pr.add_argument("--reconstruct-epochs", type=_positive_int, help="epochs per block or part (default 4)")
    pr.add_argument("--reconstruct-lr", type=float, help="Adam learning rate, decaying linearly to 0 (default 2e-4)")
    pr.add_argument("--reconstruct-batch-size", type=_positive_int, help="calibration samples per step (default 8)")
    pr.add_argument("--reconstruct-holdout", type=float,
                    help="fraction of calibration samples held out to pick the best epoch (default 0.125)")
    pr.add_argument("--output", required=True, help="output folder (must not exist unless --overwrite)")
    pr.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    pr.add_argument("--eval-ppl", type=_csv, default=[], help="evaluate perplexity after pruning on these datasets")
    pr.add_argument("--eval-dense", action="store_true", help="also evaluate the dense model first")
    pr.add_argument("--eval-seqlen", type=_positive_int, default=2048, help="evaluation window (default 2048)")
    pr.add_argument("--eval-max-windows", type=_positive_int, help="evaluate only the first N windows")
    pr.add_argument("--eval-tasks", type=_csv, default=[], help="zero-shot tasks after pruning (lm-eval)")
    pr.add_argument("--eval-limit", type=_positive_int, help="first N examples of each zero-shot task")
    pr.add_argument("--save-format", choices=["dense", "compressed"], default="dense",
                    help="dense: plain Hugging Face folder (default); compressed: kept values + bitmask")
    pr.add_argument("--offload", choices=["auto", "none", "disk"], default="auto",
                    help="disk: load one block at a time from the checkpoint and write it out pruned "
                         "(auto: when the weights do not fit in free memory)")
    pr.add_argument("--activations", choices=["auto", "device", "cpu", "disk", "memory"], default="auto",
                    help="where a block's calibration activations live: on the compute device, in CPU memory "
                         "(memory is the same), or spilled to disk (auto: the first of these they fit in)")
    pr.add_argument("--spill-dir", help="folder for spilled activations (default: the system temp folder)")
    pr.add_argument("--nproc", type=_positive_int, default=1,
                    help="calibrate with N processes (torch.distributed; same as torchrun --nproc-per-node N)")
    pr.set_defaults(func=_cmd_prune)

    cp = sub.add_parser("compress", help="store a pruned folder's sparse weights as values + bitmask")
    cp.add_argument("folder", help="a dense model folder (e.g. written by `prunellm prune`)")
    cp.add_argument("output", help="the compressed folder to write")
    cp.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], help="cast values first (default: keep)")
    cp.add_argument("--dense", action="store_true",
                    help="the other way: a compressed folder to a plain dense one (quantized weights dequantized)")
    cp.add_argument("--overwrite", action="store_true", help="replace the output folder if it exists")
    cp.set_defaults(func=_cmd_compress)

    ru = sub.add_parser("run", help="generate text with the sparse kernels swapped in")
    ru.add_argument("folder", help="a pruned model folder (dense or compressed) or any model")
    ru.add_argument("--prompt", required=True)
    ru.add_argument("--max-new-tokens", type=_positive_int, default=32)
    ru.add_argument("--dense", action="store_true", help="keep dense linears (for comparison)")
    _add_device_args(ru)
    ru.set_defaults(func=_cmd_run)

    be = sub.add_parser("bench", help="prefill and decode tokens/s, dense vs sparse kernels, same greedy tokens")
    be.add_argument("folder", help="a pruned model folder (dense or compressed)")
    be.add_argument("--prompt-tokens", type=_positive_int, default=128)
    be.add_argument("--new-tokens", type=_positive_int, default=32)
    be.add_argument("--repeats", type=_positive_int, default=3, help="best of N timings")
    _add_device_args(be)
    be.add_argument("--json", help="write the result here")
    be.set_defaults(func=_cmd_bench)

    pl = sub.add_parser("plot", help="draw a pruned folder's per-layer sparsity and allocation statistic (PNG)")
    pl.add_argument("folder", help="a folder written by `prunellm prune`")
    pl.add_argument("--out", help="where to write the PNGs (default: the folder itself)")
    pl.set_defaults(func=_cmd_plot)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `prunellm` console script."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = build_parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    try:
        return args.func(args)
    except UsageError as exc:
        print(f"prunellm: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

"""Prune SmolLM2-135M with each solver and target through the CLI, one process per run, and tabulate.

Each run is a separate `prunellm prune` process, so `peak_rss_mb` in its prune_report.json is that
run's own peak. Results are appended as JSON lines; the table is printed as Markdown.

    python bench/solver_table.py --out bench/results/quick_smollm2.jsonl
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

def run(model: str, solver: str, target: str, a: argparse.Namespace, workdir: Path) -> dict:
    out = workdir / f"{solver}-{target.replace(':', '-')}"
    cmd = [
        sys.executable, "-m", "prunellm", "prune", model, "--solver", solver,
        *(["--pattern", target] if ":" in target else ["--sparsity", target]),
        "--allocation", a.allocation, *a.extra.split(),
        "--calib", "wikitext2", "--nsamples", str(a.nsamples), "--seqlen", str(a.seqlen), "--seed", str(a.seed),
        *([] if a.no_eval else ["--eval-ppl", "wikitext2", "--eval-seqlen", str(a.eval_seqlen),
                                "--eval-max-windows", str(a.eval_windows)]),
        "--output", str(out), "--overwrite",
    ]
    subprocess.run(cmd, check=True)
    report = json.loads((out / "prune_report.json").read_text())
    if a.keep:
        keep = Path(a.keep) / out.name
        shutil.rmtree(keep, ignore_errors=True)
        shutil.copytree(out, keep)
    return {
        "model": model, "solver": solver, "target": target, "command": " ".join(cmd[2:]),
        "ppl": report.get("perplexity", {}).get("wikitext2"), "sparsity": report["sparsity"],
        **report["timings"], "peak_rss_mb": report["peak_rss_mb"],
        **({"allocation": a.allocation, "extra": a.extra, "profile_s": report["allocation"]["profile_s"],
            "per_block": report["allocation"]["per_block"]} if "allocation" in report else {}),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--solvers", default="magnitude,wanda,sparsegpt")
    p.add_argument("--targets", default="0.5,0.7,2:4")
    p.add_argument("--allocation", default="uniform", help="layer-wise allocation (uniform, owl, als, alpha)")
    p.add_argument("--extra", default="", help="more `prunellm prune` flags, e.g. '--als-direction denser'")
    p.add_argument("--nsamples", type=int, default=32)
    p.add_argument("--seqlen", type=int, default=1024)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--eval-seqlen", type=int, default=1024)
    p.add_argument("--eval-windows", type=int, default=64)
    p.add_argument("--no-eval", action="store_true", help="timings only (run alone on the machine for clean seconds)")
    p.add_argument("--keep", help="copy each pruned folder here (e.g. to compare masks)")
    p.add_argument("--out", required=True, help="JSON lines file to append results to")
    a = p.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for solver in a.solvers.split(","):
            for target in a.targets.split(","):
                row = run(a.model, solver, target, a, Path(tmp))
                rows.append(row)
                with open(a.out, "a") as f:
                    f.write(json.dumps(row) + "\n")
    print("| solver | target | ppl | sparsity | calib_forward_s | prune_s | ratio | peak RSS MB |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        ratio = r["prune_s"] / r["calib_forward_s"] if r["calib_forward_s"] else float("nan")
        print(f"| {r['solver']} | {r['target']} | {r['ppl'] or float('nan'):.2f} | {r['sparsity']:.4f} | "
              f"{r['calib_forward_s']:.1f} | {r['prune_s']:.1f} | {ratio:.2f} | {r['peak_rss_mb']:.0f} |")


if __name__ == "__main__":
    main()

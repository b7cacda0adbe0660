"""The results grid, resumable: one `prunellm` process per cell, one JSON line per run.

    python bench/grid.py --quick     # minutes: tiny calibration and evaluation ("smoke" setting)
    python bench/grid.py             # everything: the quick-setting grid, then the headline rows (hours)
    python bench/grid.py --model gemma3-270m --quick   # another built-in model, its own results file

Settings (each row records its own, with the command, versions, machine, timings, peak memory and load samples):
- smoke: 8 × 256 calibration tokens, perplexity at 256 on 16 windows; every solver at 50%, 70% and 2:4,
  and every allocation with Wanda at 70% (15 runs): checks the whole pipeline, not a result.
- quick: 32 × 1024 calibration tokens, WikiText-2 perplexity at 1024 on the first 64 windows (the README's
  quick setting) for solver × allocation × target (ALS and AlphaPruning allocate unstructured ratios, so
  not with 2:4 / 4:8).
- headline: Wanda, SparseGPT and mrp at 50% (uniform) with the same calibration, perplexity at 2048 over
  the whole test set for calibration seeds 0, 1, 2, and zero-shot accuracy on nine tasks (100 examples
  each, `--eval-limit 100`) for seed 0. A headline cell is 15-30 minutes on two cores (148 windows of
  2048 tokens), so the headline rows are the solvers at the papers' main setting, not the whole grid.
A cell already in the results file (same setting, solver, allocation, target, seed) is skipped, so an
interrupted run resumes. `--solvers`, `--allocations`, `--targets` pick a part of the grid (a solver may carry
options: `--solvers wanda+update=admm,sparsegpt+permute` adds those cells), `--seeds 1,2`
reruns that part with other calibration seeds (the seed spread on the results page), and `--shard I/N`
splits the cells over parallel workers; `--rerun` runs the selected cells again (e.g. rows imported from
an earlier commit), and the page shows each cell's latest row. `bench/results_page.py` turns the file into docs/results.md.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MODEL = "smollm2-135m"
SOLVERS = ["magnitude", "wanda", "sparsegpt", "mrp"]
EXTRA_SOLVERS = ["ria", "admm"]  # in a setting's cells only when `--solvers` names them
ALLOCATIONS = ["uniform", "owl", "als", "alpha"]
TARGETS = ["0.5", "0.6", "0.7", "0.8", "2:4", "4:8"]
TASKS = "piqa,hellaswag,arc_easy,arc_challenge,boolq,winogrande,openbookqa,rte,lambada"
SETTINGS = {
    "smoke": {"nsamples": 8, "seqlen": 256, "eval_seqlen": 256, "eval_windows": 16},
    "quick": {"nsamples": 32, "seqlen": 1024, "eval_seqlen": 1024, "eval_windows": 64},
    "headline": {"nsamples": 32, "seqlen": 1024, "eval_seqlen": 2048, "eval_windows": None},
}
HEADLINE = [(s, "uniform", "0.5") for s in ("wanda", "sparsegpt", "mrp")]
UNSTRUCTURED_ONLY = {"als", "alpha"}  # they allocate per-layer ratios; an N:M pattern fixes every layer's ratio


def cells(setting: str, extra: tuple[str, ...] = ()) -> list[tuple[str, str, str, int]]:
    """(solver, allocation, target, seed) of every run a setting asks for, cheapest first; `extra` solvers
    (from EXTRA_SOLVERS, or any solver with options, e.g. wanda+update=admm) join the grid's four in the
    smoke and quick settings."""
    solvers = SOLVERS + [s for s in EXTRA_SOLVERS if s in extra] + [s for s in extra if "+" in s]
    if setting == "smoke":
        grid = ([(s, "uniform", t) for s in solvers for t in ("0.5", "0.7", "2:4")]
                + [("wanda", a, "0.7") for a in ALLOCATIONS if a != "uniform"])
        return [(*c, 0) for c in grid]
    if setting == "quick":
        grid = sorted(itertools.product(solvers, ALLOCATIONS, TARGETS),
                      key=lambda c: (solvers.index(c[0]), c[2], c[1]))
        return [(*c, 0) for c in grid if ":" in c[2] or "+permute" not in c[0]  # permute: an N:M option
                if not (":" in c[2] and c[1] in UNSTRUCTURED_ONLY)]
    return [(*c, seed) for c in HEADLINE for seed in (0, 1, 2)]


def machine() -> dict:
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else ""
    return {"cpu": model, "cores": os.cpu_count(), "threads": os.environ.get("OMP_NUM_THREADS", "default"),
            "platform": platform.platform()}


def versions() -> dict:
    import torch
    import transformers

    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--", "src"], capture_output=True,
                           text=True).stdout.strip()
    return {"prunellm_commit": commit + ("-dirty" if dirty else ""), "torch": torch.__version__,
            "transformers": transformers.__version__, "python": platform.python_version()}


class LoadSampler:
    """The machine's 1-minute load average every `every` seconds while a cell runs.

    Grid rows can only see each other; the samples also catch processes outside the grid that shared
    the cores, so the results page can leave those rows' times out."""

    def __init__(self, every: float = 30.0):
        self.every, self.samples, self._stop = every, [], threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(self.every):
            self.samples.append(round(os.getloadavg()[0], 2))

    def __enter__(self) -> "LoadSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def method_flags(method: str) -> tuple[str, list[str]]:
    """A cell's method, a solver with `+flag=value` options: "wanda+update=admm+permute" →
    ("wanda", ["--update", "admm", "--permute"])."""
    solver, *options = method.split("+")
    flags: list[str] = []
    for option in options:
        name, _, value = option.partition("=")
        flags += [f"--{name}", value] if value else [f"--{name}"]
    return solver, flags


def cell_fields(cell: str) -> list[str]:
    """A cell's colon-separated fields with an N:M target kept whole: "sparsegpt:uniform:2:4:1" →
    ["sparsegpt", "uniform", "2:4", "1"]."""
    parts = cell.split(":")
    if len(parts) >= 4 and parts[2].isdigit() and parts[3].isdigit():
        parts = [parts[0], parts[1], f"{parts[2]}:{parts[3]}", *parts[4:]]
    return parts


def read_rows(path: Path) -> list[dict]:
    """The JSON lines of a results file ([] when it does not exist)."""
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()] if path.exists() else []


def _target_flags(target: str) -> list[str]:
    return ["--pattern", target] if ":" in target else ["--sparsity", target]


def results_path(model: str) -> Path:
    """The grid file of a model: grid_smollm2.jsonl for the default model (its historical name)."""
    return ROOT / "bench" / "results" / ("grid_smollm2.jsonl" if model == MODEL else f"grid_{model}.jsonl")


def run_cell(setting: str, solver: str, allocation: str, target: str, seed: int, workdir: Path,
             env: dict | None = None, model: str = MODEL) -> dict:
    s = SETTINGS[setting]
    out = workdir / "model"
    base, options = method_flags(solver)
    cmd = ["prunellm", "prune", model, "--solver", base, *options, *_target_flags(target),
           "--allocation", allocation, "--calib", "wikitext2", "--nsamples", str(s["nsamples"]),
           "--seqlen", str(s["seqlen"]), "--seed", str(seed), "--eval-ppl", "wikitext2",
           "--eval-seqlen", str(s["eval_seqlen"]),
           *(["--eval-max-windows", str(s["eval_windows"])] if s["eval_windows"] else []),
           *(["--eval-tasks", TASKS, "--eval-limit", "100"] if setting == "headline" and seed == 0 else []),
           "--output", str(out), "--overwrite"]
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "prunellm", *cmd[1:]], check=True, env=env)
    wall = time.perf_counter() - t0
    report = json.loads((out / "prune_report.json").read_text())
    t = report["timings"]
    row = {
        "setting": setting, "model": model, "solver": solver, "allocation": allocation, "target": target,
        "seed": seed, "command": " ".join(cmd), "ppl": report["perplexity"]["wikitext2"],
        "eval": report["eval"], "sparsity": report["sparsity"], "calib_forward_s": t["calib_forward_s"],
        "prune_s": t["prune_s"], "prune_over_forward": round(t["prune_s"] / t["calib_forward_s"], 3)
        if t["calib_forward_s"] else None, "peak_rss_mb": report["peak_rss_mb"], "wall_s": round(wall, 1),
        "blocks": report["blocks"], "layers": [[r["name"], round(r["sparsity"], 5)] for r in report["layers"]],
    }
    if "allocation" in report:
        row["profile_s"] = report["allocation"]["profile_s"]
        row["allocation_statistic"] = {"name": report["allocation"]["statistic"],
                                       "per_block": report["allocation"]["per_block"]}
        row["allocation_info"] = {k: v for k, v in report["allocation"].items()
                                  if k not in ("name", "statistic", "per_block", "profile_s")}
    if "zeroshot" in report:
        row["zeroshot"] = {"mean_acc": report["zeroshot"]["mean_acc"], "limit": 100,
                           "tasks": {k: v.get("acc") for k, v in report["zeroshot"]["tasks"].items()}}
    return row


def run_dense(setting: str, workdir: Path, env: dict | None = None, model: str = MODEL) -> dict:
    s = SETTINGS[setting]
    out = workdir / "dense.json"
    cmd = ["prunellm", "eval", model, "--ppl", "wikitext2", "--seqlen", str(s["eval_seqlen"]),
           *(["--max-windows", str(s["eval_windows"])] if s["eval_windows"] else []),
           *(["--tasks", TASKS, "--limit", "100"] if setting == "headline" else []), "--json", str(out)]
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "prunellm", *cmd[1:]], check=True, env=env)
    result = json.loads(out.read_text())
    row = {"setting": setting, "model": model, "solver": "dense", "allocation": "-", "target": "0",
           "seed": 0, "command": " ".join(cmd), "ppl": result["perplexity"]["wikitext2"], "sparsity": 0.0,
           "wall_s": round(time.perf_counter() - t0, 1)}
    if "zeroshot" in result:
        row["zeroshot"] = {"mean_acc": result["zeroshot"]["mean_acc"], "limit": 100,
                           "tasks": {k: v.get("acc") for k, v in result["zeroshot"]["tasks"].items()}}
    return row


LEGACY = ["quick_smollm2.jsonl", "mrp_smollm2.jsonl", "allocation_smollm2.jsonl"]
QUICK_FLAGS = "--calib wikitext2 --nsamples 32 --seqlen 1024 --seed 0 --eval-ppl wikitext2 --eval-seqlen 1024 " \
              "--eval-max-windows 64"


def import_legacy(out: Path) -> int:
    """Copy earlier quick-setting runs (solver_table.py / mrp_table.py, default options) into the grid file.

    Each imported row keeps its source file and line; rows without the exact quick-setting command or with
    extra options are left out. Returns the number imported."""
    have = done_keys(out)
    added = 0
    for name in LEGACY:
        path = ROOT / "bench" / "results" / name
        if not path.exists():
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            r = json.loads(line)
            allocation = r.get("allocation", "uniform")
            command = r.get("command", "")
            if r.get("extra") or (command and QUICK_FLAGS not in command) or r.get("ppl") is None:
                continue
            key = ("quick", r["solver"], allocation, r["target"], 0)
            if key in have:
                continue
            row = {"setting": "quick", "model": r["model"], "solver": r["solver"], "allocation": allocation,
                   "target": r["target"], "seed": 0, "command": command or "bench/mrp_table.py (quick setting)",
                   "ppl": r["ppl"], "sparsity": r["sparsity"], "calib_forward_s": r["calib_forward_s"],
                   "prune_s": r["prune_s"], "prune_over_forward": round(r["prune_s"] / r["calib_forward_s"], 3)
                   if r["calib_forward_s"] else None, "peak_rss_mb": r["peak_rss_mb"], "source": f"bench/results/{name}:{number}",
                   **({"profile_s": r["profile_s"]} if "profile_s" in r else {})}
            with out.open("a") as f:
                f.write(json.dumps(row) + "\n")
            have.add(key)
            added += 1
    return added


def done_keys(path: Path) -> set[tuple]:
    rows = read_rows(path)
    return {(r["setting"], r["solver"], r["allocation"], r["target"], r["seed"]) for r in rows}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="the smoke setting only (minutes)")
    p.add_argument("--settings", help="comma-separated settings to run (default: quick,headline; smoke with --quick)")
    p.add_argument("--model", default=MODEL, help="built-in model or path (default: %(default)s)")
    p.add_argument("--out", help="JSON lines results file (appended, resumable; default: "
                                 "bench/results/grid_smollm2.jsonl, grid_MODEL.jsonl for other models)")
    p.add_argument("--max-cells", type=int, help="stop after this many new runs")
    p.add_argument("--no-page", action="store_true", help="do not rebuild docs/results.md at the end")
    p.add_argument("--dry-run", action="store_true", help="list the cells that would run, run nothing")
    p.add_argument("--jobs", type=int, default=1,
                   help="run this many cells at once, each with cores/jobs threads (two 1-thread jobs keep two cores "
                        "busier than one 2-thread job through the serial parts)")
    p.add_argument("--shard", default="0/1", help="I/N: run every N-th missing cell starting at I (parallel machines)")
    p.add_argument("--solvers", help="only these solvers (comma-separated; name dense to keep the dense row); a solver "
                   "with +flag=value options is a cell of its own, e.g. wanda+update=admm or sparsegpt+permute")
    p.add_argument("--targets", help="only these targets (comma-separated, e.g. 0.5,0.6,2:4)")
    p.add_argument("--allocations", help="only these allocations (comma-separated)")
    p.add_argument("--seeds", help="run the setting's cells with these calibration seeds instead (e.g. 1,2)")
    p.add_argument("--rerun", action="store_true",
                   help="run the selected cells even if the file has them (the page shows each cell's latest row)")
    p.add_argument("--import-legacy", action="store_true",
                   help="first copy earlier quick-setting runs from bench/results into the grid file")
    a = p.parse_args()
    shard, shards = (int(x) for x in a.shard.split("/"))
    settings = a.settings.split(",") if a.settings else (["smoke"] if a.quick else ["quick", "headline"])
    out = Path(a.out) if a.out else results_path(a.model)
    out.parent.mkdir(parents=True, exist_ok=True)
    env = {"machine": machine()}
    if a.import_legacy:
        print(f"[grid] imported {import_legacy(out)} earlier runs")
    wanted = {name: set(value.split(",")) for name, value in
              (("solver", a.solvers), ("allocation", a.allocations), ("target", a.targets)) if value}
    done = done_keys(out)
    todo = []
    for setting in settings:
        grid = cells(setting, tuple(wanted.get("solver", ())))
        if a.seeds:
            grid = list(dict.fromkeys((s, al, t, int(seed)) for s, al, t, _ in grid for seed in a.seeds.split(",")))
        for solver, allocation, target, seed in [("dense", "-", "0", 0)] + grid:
            cell = {"solver": solver} if solver == "dense" else {"solver": solver, "allocation": allocation,
                                                                  "target": target}
            if ((setting, solver, allocation, target, seed) in done and not a.rerun) or any(
                    name in cell and cell[name] not in values for name, values in wanted.items()):
                continue
            todo.append((setting, solver, allocation, target, seed))
    todo = todo[shard::shards][:a.max_cells]
    if a.dry_run:
        print("\n".join(" ".join(map(str, job)) for job in todo) or "nothing to run")
        return
    threads = os.environ.get("OMP_NUM_THREADS") or str(max(1, (os.cpu_count() or 1) // a.jobs))
    lock = threading.Lock()

    def run(job: tuple) -> None:
        setting, solver, allocation, target, seed = job
        print(f"[grid] {setting}: {solver} {allocation} {target} seed {seed}", flush=True)
        started = datetime.now(timezone.utc).isoformat(timespec="seconds")
        code = versions()  # per cell: the source may change while a long grid runs
        child = {**os.environ, "OMP_NUM_THREADS": threads}
        with tempfile.TemporaryDirectory() as tmp, LoadSampler() as load:
            try:
                row = (run_dense(setting, Path(tmp), child, a.model) if solver == "dense"
                       else run_cell(setting, solver, allocation, target, seed, Path(tmp), child, a.model))
            except subprocess.CalledProcessError as exc:
                row = {"setting": setting, "model": a.model, "solver": solver, "allocation": allocation,
                       "target": target, "seed": seed, "error": f"exit code {exc.returncode}"}
        row.update(started=started, versions=code, load_1min=load.samples,
                   machine={**env["machine"], "threads": threads, "jobs": a.jobs})
        with lock, out.open("a") as f:
            f.write(json.dumps(row) + "\n")

    with ThreadPoolExecutor(max_workers=a.jobs) as pool:
        list(pool.map(run, todo))
    if not a.no_page:
        subprocess.run([sys.executable, str(ROOT / "bench" / "results_page.py"), "--results", str(out)], check=True)


if __name__ == "__main__":
    main()

"""bench/gpu_check.py, run on the CPU as its own device: the script a GPU machine runs works end to end."""

import json
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent.parent / "bench"


def test_gpu_check_on_the_cpu_agrees_with_itself(tiny_folder, shared_data, tmp_path):
    out = tmp_path / "rows.jsonl"
    cmd = [sys.executable, str(BENCH / "gpu_check.py"), "--device", "cpu", "--model", str(tiny_folder),
           "--nsamples", "4", "--seqlen", "32", "--eval-seqlen", "32", "--windows", "2", "--prompt-tokens", "16",
           "--new-tokens", "2", "--data-dir", shared_data, "--out", str(out)]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    assert "all checks passed on cpu" in result.stdout
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    prunes = [r for r in rows if r["check"] == "prune"]
    assert [(r["solver"], r["allocation"]) for r in prunes] == [("wanda", "uniform"), ("sparsegpt", "uniform"),
                                                                 ("mrp", "uniform"), ("wanda", "owl")]
    for r in prunes:  # the same code path on the same device: identical results
        assert r["mask_agreement"] == 1.0 and r["ppl_cpu"] == r["ppl_device"] and r["device"] == "cpu"
        assert r["machine"]["cpu"]
    bench = rows[-1]
    assert bench["check"] == "2:4 bench" and bench["sparse_layers"] > 0

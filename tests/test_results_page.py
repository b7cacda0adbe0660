"""bench/results_page.py on synthetic grid rows: the page's numbers are computed from the rows, not typed in."""

import json
import statistics
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent.parent / "bench"
sys.path.insert(0, str(BENCH))

import grid  # noqa: E402
import results_page  # noqa: E402


def _row(setting, solver, target, seed, ppl, allocation="uniform", **extra):
    return {"setting": setting, "model": "tiny", "solver": solver, "allocation": allocation, "target": target,
            "seed": seed, "ppl": ppl, "prune_over_forward": 2.0, "peak_rss_mb": 100.0, "wall_s": 60.0,
            "machine": {"cpu": "cpu", "cores": 2, "threads": "1"},
            "versions": {"prunellm_commit": f"c{seed}", "torch": "t"}, **extra}


def test_headline_table_mean_std_over_seeds_sorted():
    rows = results_page._latest([_row("headline", "wanda", "0.5", s, p) for s, p in ((2, 12.0), (0, 10.0), (1, 11.0))])
    line = next(x for x in results_page.headline_table(rows) if x.startswith("| wanda"))
    assert "| 0, 1, 2 | 10.00, 11.00, 12.00 |" in line
    assert f"{statistics.mean([10, 11, 12]):.2f} ± {statistics.stdev([10, 11, 12]):.2f}" in line


def test_latest_row_wins_and_missing_cells_are_marked():
    rows = results_page._latest([_row("quick", "wanda", "0.5", 0, 50.0), _row("quick", "wanda", "0.5", 0, 40.0),
                                 _row("quick", "wanda", "0.7", 0, None, error="exit code 1")])
    line = next(x for x in results_page.grid_tables(rows, "quick") if x.startswith("| wanda | uniform"))
    cells = [c.strip() for c in line.strip("|").split("|")]
    assert cells[2:8] == ["40.00", "–", "error", "–", "–", "–"]
    als = next(x for x in results_page.grid_tables(rows, "quick") if x.startswith("| wanda | als"))
    assert als.count("n/a") == 2  # no N:M cells for a ratio allocation


def test_coverage_counts_the_grid_cells_and_sums_wall_time():
    wanted = grid.cells("quick")
    rows = results_page._latest([_row("quick", *c[:1], c[2], 0, 1.0, allocation=c[1]) for c in wanted[:3]])
    assert results_page.coverage(rows, "quick").startswith(f"3 of {len(wanted)} cells")
    assert "0.1 h" in results_page.coverage(rows, "quick")  # 3 × 60 s


def test_environment_lines_group_commits_per_machine():
    lines = results_page.environment_lines([_row("quick", "wanda", "0.5", s, 1.0) for s in (0, 1)])
    assert len(lines) == 1 and "prunellm commits: c0, c1" in lines[0]


def test_page_for_another_model_is_named_after_it(tmp_path):
    results = tmp_path / "grid.jsonl"
    results.write_text(json.dumps(_row("smoke", "wanda", "0.5", 0, 30.0)) + "\n")
    command = [sys.executable, str(BENCH / "results_page.py"), "--results", str(results), "--docs", str(tmp_path / "docs")]
    subprocess.run(command, check=True, capture_output=True)
    text = (tmp_path / "docs" / "results_tiny.md").read_text()
    assert "# Results on tiny" in text and "30.00" in text and "Findings" not in text
    assert not (tmp_path / "docs" / "results.md").exists()
    (tmp_path / "docs" / "findings_tiny.md").write_text("## Findings\n\nTiny wins.\n")
    subprocess.run(command, check=True, capture_output=True)
    assert (tmp_path / "docs" / "results_tiny.md").read_text().rstrip().endswith("Tiny wins.")


def test_oversubscribed_flags_runs_that_shared_cores_beyond_the_machine():
    def timed(seed, start, wall, threads):
        r = _row("quick", "wanda", "0.5", seed, 1.0, started=f"2026-01-01T00:{start:02d}:00+00:00", wall_s=wall)
        r["machine"]["threads"] = threads
        return r

    pair = [timed(0, 0, 600, "1"), timed(1, 0, 600, "1")]  # two 1-thread jobs on 2 cores: fine
    assert results_page.oversubscribed(pair) == set()
    third = timed(2, 5, 120, "1")  # a third job for 2 of the pair's 10 minutes
    flagged = results_page.oversubscribed(pair + [third])
    assert flagged == {id(r) for r in pair + [third]}
    alone = [timed(0, 0, 60, "default"), timed(1, 1, 60, "default")]  # back to back, all cores each
    assert results_page.oversubscribed(alone) == set()


def test_oversubscribed_flags_a_run_whose_load_samples_show_an_outside_process():
    quiet, crowded = _row("quick", "wanda", "0.5", 0, 1.0), _row("quick", "wanda", "0.6", 0, 1.0)
    quiet["load_1min"] = [1.9, 2.1, 2.3, 2.0, 3.1, 2.0, 2.1, 1.8, 2.2, 2.0]  # one in ten over 2.5: a blip
    crowded["load_1min"] = [2.0, 2.9, 3.1, 3.0, 2.2]  # a third process for most of the run
    assert quiet["machine"]["cores"] == 2
    assert results_page.oversubscribed([quiet, crowded]) == {id(crowded)}


def test_grid_cells_with_solver_options():
    assert grid.method_flags("wanda+update=admm+permute") == ("wanda", ["--update", "admm", "--permute"])
    assert grid.method_flags("mrp") == ("mrp", [])
    cells = grid.cells("quick", ("sparsegpt+permute", "wanda+repair=dsnot"))
    permuted = {(a, t) for s, a, t, _ in cells if s == "sparsegpt+permute"}
    assert permuted == {("uniform", "2:4"), ("uniform", "4:8"), ("owl", "2:4"), ("owl", "4:8")}
    assert ("wanda+repair=dsnot", "alpha", "0.7", 0) in cells


def test_beyond_table_puts_each_method_beside_the_grids_sparsegpt_and_mrp():
    import beyond_table

    machine = {"cpu": "Intel(R) Xeon(R) Processor @ 2.1GHz"}
    grid_rows = [{"setting": "quick", "solver": s, "allocation": "uniform", "target": "2:4", "seed": 0, "ppl": p,
                  "prune_over_forward": 3.0, "machine": machine} for s, p in (("sparsegpt", 80.0), ("mrp", 76.0))]
    rows = [{"method": "admm+permute", "allocation": "uniform", "target": "2:4", "seed": 0, "ppl": 64.0,
             "prune_over_forward": 9.5, "machine": machine, "versions": {"prunellm_commit": "abc1234"}}]
    lines = beyond_table.readme_table(rows, grid_rows).splitlines()
    assert lines[2:] == ["| 2:4 | uniform | sparsegpt (grid) | 80.00 | +0.0% | 3.00 | Intel Xeon | — |",
                         "| 2:4 | uniform | mrp (grid) | 76.00 | -5.0% | 3.00 | Intel Xeon | — |",
                         "| 2:4 | uniform | admm+permute | 64.00 | -20.0% | 9.50 | Intel Xeon | abc1234 |"]

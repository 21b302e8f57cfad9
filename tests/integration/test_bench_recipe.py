"""The bench's recipe section (9) in its tiny mode, alone: a file of its own so that it runs beside the rest of the
tiny bench (tests/integration/test_bench.py) under `make test`'s parallel workers."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(300)  # a worker training 10 tiny runs; ~30 s of CPU
def test_the_recipe_section_has_a_row_per_technique_with_every_seed(tmp_path):
    """`--sections recipe` alone (docs/performance.md "Recipe"): the baseline's row, then one row per technique, each
    on against off over the same seeds, paired; the JSON keeps every run's figures."""
    from bench.recipe import TECHNIQUES
    from bench.settings import TINY

    out = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, "-m", "bench.run", "--tiny", "--sections", "recipe", "--out", str(out)],
                          cwd=ROOT, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}, capture_output=True, text=True,
                          timeout=280)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["errors"] == [] and {f["section"] for f in result["figures"]} == {"recipe"}
    baseline, *rows = result["figures"]
    seeds = list(TINY.recipe_seeds)
    assert "baseline" in baseline["name"] and baseline["value"]["n"] == len(seeds)
    runs = baseline["details"]["runs"]
    assert sorted(runs) == ["baseline", "cutmix", "label_smoothing", "mixup", "triangular"]
    for name, results in runs.items():
        assert [r["seed"] for r in results] == seeds, name
        assert all(r["steps"] == 2 and 0 <= r["top1"] <= 1 for r in results), (name, results)
    assert [r["details"]["technique"] for r in rows] == list(TECHNIQUES)
    for row, label in zip(rows, TECHNIQUES.values()):
        assert row["name"].endswith(f"{label}: on vs off"), row["name"]
        on, off = row["details"]["on"], row["details"]["off"]
        assert row["details"]["seeds"] == seeds and len(on) == len(off) == len(seeds)
        assert row["value"]["n"] == row["baseline"]["n"] == len(seeds)
        assert row["value"]["low"] == min(on) and row["value"]["high"] == max(on)
        assert row["details"]["difference_points"] == pytest.approx([a - b for a, b in zip(on, off)])
    off_baseline = [100 * r["top1"] for r in runs["baseline"]]
    assert next(r for r in rows if r["details"]["technique"] == "mixup")["details"]["off"] == off_baseline
    # one table row per figure
    names = [line.split("|")[1].strip() for line in proc.stdout.splitlines() if line.startswith("| recipe")]
    assert names == [f["name"] for f in result["figures"]]

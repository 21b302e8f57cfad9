"""The benchmark harness (bench/) in its tiny mode: every section runs in real worker processes and real trainer
processes against a real fake-gcs-server, and the table and JSON have their structure. No timing assertions:
benchmarks are not tests."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

EXPECTED = {  # section -> phrases that each name exactly one of its figures
    "training": ["train img/s, simple_cnn", "train CPU-s per 1,000 img, simple_cnn", "host ms between steps",
                 # train.steps_per_call=8 (settings.TINY.steps_per_call_case) on the loop, steps_per_execution=8 on fit
                 "train img/s at 8 steps per call, simple_cnn", "CPU-s per 1,000 img at 8 steps per call",
                 "loop host ms per step between calls, simple_cnn: 8 steps per call vs 1"],
    "pipeline": ["img/s, 1 thread vs all", "per CPU-second", "vs what the simple_cnn loop consumes"],
    "folder": ["JPG 320x240: job (into the cache) vs a plain Pillow loop",
               "PNG 320x240: job (into the cache) vs a plain Pillow loop",
               "folder pipeline img/s from the shards, in memory, all",
               "folder pipeline img/s from the shards, streamed (data.stream=always), all"],
    "checkpoint": ["local save (a snapshot) vs TF write", "blocking s, simple_cnn (15 MB): gs:// vs local save",
                   "CPU-s while blocking", "write and commit in the background", "best of 2: gs:// vs local save",
                   "resumed vs fresh start", "(the slower) vs one epoch",
                   # without a GPU: both against an epoch projected for one (bench/settings.py)
                   "local save vs one epoch on a GPU", "TF write vs one epoch on a GPU"],
    "serving": ["serve req/s, 1 client (", "serve req/s, 8 clients, batching on: vs 1 client",
                "serve req/s, 8 clients, batching off: vs 1 client", "serve req/s, 8 clients: batching on vs off",
                "vs the in-process batched predict rate", "serve CPU-ms per request, 8 clients, batching on",
                "bench client CPU-ms per request, 8 clients",
                *(f"{p} latency ms, {c}, batching {mode}:" for p in ("p50", "p99") for c in ("1 client", "8 clients")
                  for mode in ("on", "off")),
                "predict CLI on 40 PNG files"],
}


@pytest.mark.slow
@pytest.mark.timeout(1200)  # benchmark runs; beyond its own 900 s deadline, whose message says more
def test_tiny_bench_prints_one_table_and_writes_json(tmp_path):
    """Every section but the recipe's, which tests/integration/test_bench_recipe.py runs alone (in parallel)."""
    from bench.run import SECTIONS

    out = tmp_path / "bench.json"
    sections = ",".join(s for s in SECTIONS if s != "recipe")
    proc = subprocess.run([sys.executable, "-m", "bench.run", "--tiny", "--sections", sections, "--out", str(out)],
                          cwd=ROOT,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}, capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    result = json.loads(out.read_text())
    assert result["mode"] == "tiny" and result["errors"] == []
    machine = result["machine"]
    assert machine["cpu_model"] and machine["logical_cores"] >= 1 and machine["tensorflow"]
    assert isinstance(machine["gpus"], list) and len(machine["load_average"]) == 3

    figures = result["figures"]
    for section, phrases in EXPECTED.items():
        names = [f["name"] for f in figures if f["section"] == section]
        for phrase in phrases:
            assert sum(phrase in name for name in names) == 1, (phrase, names)
    for f in figures:
        for key in ("value", "baseline", "ratio"):
            summary = f[key]
            assert summary["low"] <= summary["median"] <= summary["high"] and summary["median"] > 0, (f["name"], key)
        assert f["met"] in ("yes", "NO", "within spread", "")
    training = next(f for f in figures if f["section"] == "training")
    assert training["value"]["n"] == result["settings"]["repeats"] == len(training["details"]["loop"])
    assert set(training["peak_rss_mb"]) == {"loop", "fit"} and min(training["peak_rss_mb"].values()) > 0
    # several steps per call: every call but the last ran 8 steps on both sides, the ratios are finite and positive
    per_call = [f for f in figures if "8 steps per call" in f["name"]]
    assert len(per_call) == 3, [f["name"] for f in figures]
    for f in per_call:
        assert all(math.isfinite(f[key][end]) and f[key][end] > 0
                   for key in ("value", "baseline", "ratio") for end in ("low", "median", "high")), f
    rates = next(f for f in per_call if f["name"].startswith("train img/s"))
    assert rates["details"]["model"]["steps_per_call"] == 8 and set(rates["peak_rss_mb"]) == {"loop", "fit"}
    for side in ("loop", "fit"):
        trials = rates["details"][side]
        assert len(trials) == result["settings"]["repeats"], side
        assert all(t["steps"] == 32 and t["calls"] == 4 for t in trials), (side, trials)
    host = next(f for f in per_call if "host ms per step between calls" in f["name"])
    assert all(t["calls"] == 32 for t in host["details"]["loop_1"]), host["details"]["loop_1"]
    resume = next(f for f in figures if "resumed vs fresh start" in f["name"])
    assert resume["details"]["resumed"]["first_step"] > resume["details"]["fresh"]["first_step"]

    # one Markdown table on stdout: header, rule, one row per figure, in the JSON's order
    lines = proc.stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("| figure"))
    rows = lines[header + 2:header + 2 + len(figures)]
    assert lines[header + 1].startswith("|--")
    assert [row.split("|")[1].strip() for row in rows] == [f["name"] for f in figures]
    assert result["table"].splitlines() == lines[header:header + 2 + len(figures)]
    assert f"results written to {out}" in proc.stdout


@pytest.mark.slow
@pytest.mark.timeout(600)  # benchmark runs
def test_profile_loop_runs_the_loop_epoch_by_epoch():
    """bench/profile_loop.py, the process docs/performance.md profiles with py-spy: one line of figures per epoch."""
    proc = subprocess.run([sys.executable, "-m", "bench.profile_loop", "cifar10_simple_cnn", "4", "2"], cwd=ROOT,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [line for line in proc.stdout.splitlines() if " img/s, step " in line]
    assert len(lines) == 2 and all("host between steps" in line for line in lines), proc.stdout


# Multiply-adds of one forward pass, as the pruning and NAS literature tabulates them for the CIFAR networks (e.g.
# He et al.'s ResNet-20/56: 40.8M and 125M; ResNet-18 for 32x32 inputs: 0.56G; VGG-16 for CIFAR: 313M).
PUBLISHED_MACS = {"resnet20": 40.8e6, "resnet56": 125.0e6, "resnet18": 556e6, "vgg16": 313.7e6}


@pytest.mark.parametrize("name", sorted(PUBLISHED_MACS))
def test_model_flops_match_published_figures(name):
    """bench/flops.py counts what the fraction-of-GPU-peak figure divides by: within 2% of the published count."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from bench.flops import forward_flops_per_image, train_flops_per_image
    from job.config import ModelConfig
    from job.models import build_model

    model = build_model(ModelConfig(name=name), 10)
    macs = forward_flops_per_image(model) / 2
    assert abs(macs - PUBLISHED_MACS[name]) / PUBLISHED_MACS[name] < 0.02, f"{name}: {macs / 1e6:.1f}M multiply-adds"
    assert train_flops_per_image(model) == 3 * forward_flops_per_image(model)

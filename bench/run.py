"""`python -m bench.run`: run the benchmarks, print one table, write bench/results/<date>.json.

    python -m bench.run            the full suite (`make bench`), about half an hour on a 2-core machine
    python -m bench.run --tiny     a smoke run of every code path at toy sizes (tests/integration/test_bench.py)

Sections: (1) training throughput of the project's loop vs Keras fit, (2) the input pipeline vs the rate the models
consume images, (2b) data.name=folder: decoding photos into the cache against a plain Pillow loop, and the pipeline
fed from the decoded shards, (3) checkpoint blocking time (local, gs:// on a local fake-gcs-server) and the start-up
of a resumed run, (4) peak RSS of every process, (5) on a GPU, the fraction of its peak the models reach, (6) the run
report's time for a CIFAR-100 test set against predicting it, (7) `python -m job serve` under 1 and 8 concurrent clients
(requests/s, p50/p99 latency) and `python -m job predict` on many files against calling the model directly, (8) LiteRT
exports, (9) the recipe: test top-1 on digits_noisy at a fixed step budget, each technique of docs/configuration.md
"Recipes" on and off, over several seeds (`--sections recipe` runs it alone).
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

from bench import table
from bench.machine import describe_machine
from bench.settings import FULL, TINY
from bench.suite import Suite
from bench.worker import ROOT

RESULTS_DIR = ROOT / "bench" / "results"
SECTIONS = ("training", "pipeline", "folder", "checkpoint", "report", "serving", "litert", "recipe")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="toy sizes and repeats: checks the harness, not speed")
    parser.add_argument("--out", type=Path, help="JSON output (default: bench/results/<date>.json)")
    parser.add_argument("--repeats", type=int, help="timed trials per side (default: 5; tiny: 2)")
    parser.add_argument("--sections", default=",".join(SECTIONS), help=f"a comma-separated subset of {SECTIONS}")
    parser.add_argument("--gpu-peak-tflops", type=float, help="peak of one GPU, if bench/flops.py does not know it")
    parser.add_argument("--override", action="append", default=[], metavar="KEY=VALUE",
                        help="trainer config override for both sides of (1), e.g. train.jit_compile=true")
    args = parser.parse_args(argv)
    sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    if set(sections) - set(SECTIONS):
        parser.error(f"unknown section(s) {', '.join(sorted(set(sections) - set(SECTIONS)))}")
    settings = TINY if args.tiny else FULL
    if args.repeats:
        settings = dataclasses.replace(settings, repeats=args.repeats)

    started = datetime.datetime.now().astimezone()
    machine = describe_machine()
    log_dir = Path(tempfile.mkdtemp(prefix="bench-logs-"))
    gcs = start_gcs() if "checkpoint" in sections else None
    suite = Suite(settings, log_dir, machine["gpus"], machine["usable_cores"], gcs=gcs,
                  gpu_peak_tflops=args.gpu_peak_tflops, training_overrides=tuple(args.override))
    began = time.perf_counter()
    try:
        if "training" in sections:
            suite.run_section("(1) training loop vs Keras fit", suite.training)
        if "pipeline" in sections:
            suite.run_section("(2) input pipeline", suite.pipeline)
        if "folder" in sections:
            suite.run_section("(2b) data.name=folder: decoding and the shards", suite.folder)
        if "checkpoint" in sections:
            suite.run_section("(3) checkpoints and resume", suite.checkpoints)
        if "report" in sections:
            suite.run_section("(6) the run report", suite.report_page)
        if "serving" in sections:
            suite.run_section("(7) serving and predict", suite.serving)
        if "litert" in sections:
            suite.run_section("(8) LiteRT exports", suite.litert)
        if "recipe" in sections:
            suite.run_section("(9) the recipe: test top-1 at a fixed step budget", suite.recipe)
    finally:
        if gcs:
            gcs.stop()
    duration = time.perf_counter() - began
    machine["load_average_end"] = describe_machine()["load_average"]

    text = table.render([f.row() for f in suite.figures])
    summary = (f"{machine['cpu_model']}, {machine['usable_cores']} cores, {machine['memory_gb']} GB, "
               f"TF {machine['tensorflow']}, Keras {machine['keras']}, "
               f"GPU: {', '.join(g['name'] for g in machine['gpus']) or 'none'}; load average "
               f"{machine['load_average'][0]:.1f} at start, {machine['load_average_end'][0]:.1f} at end; "
               f"{settings.mode} run, {settings.repeats} timed trials per side after {settings.warmup} warm-up, "
               f"{duration:.0f} s")
    print(text)
    print()
    print(summary)
    for note in suite.notes + [f"ERROR {e}" for e in suite.errors]:
        print(note)

    out = args.out or RESULTS_DIR / f"{started:%Y-%m-%d}{'-tiny' if args.tiny else ''}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "format": 1, "mode": settings.mode, "started": started.isoformat(timespec="seconds"),
        "duration_seconds": round(duration, 1), "machine": machine, "settings": dataclasses.asdict(settings),
        "training_overrides": args.override,
        "figures": [f.as_dict() for f in suite.figures], "notes": suite.notes, "errors": suite.errors,
        "summary": summary, "table": text,
    }, indent=1) + "\n")
    print(f"results written to {out}")
    if suite.errors:
        print(f"worker and trainer logs kept in {log_dir}", file=sys.stderr)
        return 1
    shutil.rmtree(log_dir, ignore_errors=True)
    return 0


def start_gcs():
    """fake-gcs-server on 127.0.0.1 through the test suite's helper (tests/support/gcs_server.py); None if not
    installed."""
    try:
        from tests.support.gcs_server import GcsServer
    except ImportError:
        return None
    server = GcsServer()
    server.start()
    return server


if __name__ == "__main__":
    sys.exit(main())

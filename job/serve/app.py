"""The ASGI app of `python -m job serve`: the page, the JSON API, the probes.

    app = create_app(slot, Limits(), token=None)      # slot: a ModelSlot, filled by a background load
    app = create_app(slot, limits, token, Batching(max_batch_size=32, max_wait_ms=2), metrics_public=True)

Routes: the page (/), the probes (/healthz, /readyz), the JSON API (/v1/model, /v1/predict), the Open Inference
Protocol (/v2/..., job/serve/v2.py) and Prometheus metrics (/metrics, job/serve/metrics.py). The images of
concurrent requests share model calls (job/serve/batcher.py); each answer carries X-Queue-Ms, how long its images
waited for their model call.

Status codes (every error body is {"error": "<one line>"}, naming the file where one file is the cause):
    200  classified
    400  not a usable multipart body: no files, a form field that is not a file, a malformed or cut-off body
    401  JOB_SERVE_TOKEN is set and the request has no `Authorization: Bearer <token>` or another token (/v1/,
         /v2/ but its health probes, and /metrics unless it is public)
    408  the body did not arrive within the upload time limit
    413  the body is over --max-request-mb (checked from Content-Length first, then counted while reading, so a
         chunked upload is cut off too), more than --max-files files, or an image over --max-pixels (from its header,
         before it is decoded)
    415  the body is not multipart/form-data
    422  a file that is not an image, or is truncated or corrupt; a bad query parameter (?top=0)
    503  the model is still loading (with Retry-After); /readyz says when it is ready
A request is classified whole or not at all: one bad file fails it with the status above and that file's name, so a
client never has to check each answer for errors; the page sends one file per request, so there one bad file only
marks its own card.
"""
from __future__ import annotations

import base64
import hmac
import io
import logging
import os
import threading
from pathlib import Path
from typing import Annotated

import anyio
import numpy as np
from fastapi import Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from PIL import Image
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from job.errors import first_line
from job.images import ImageError, TooManyPixelsError, open_rgb, to_model_input
from job.inference import prediction_record
from job.overlay import OVERLAY_SIDE
from job.serve import v2
from job.serve.batcher import Batching
from job.serve.metrics import MetricsMiddleware, ServeMetrics
from job.serve.uploads import Limits, RequestError, Upload, read_body, read_uploads

log = logging.getLogger("job")

PAGE = Path(__file__).with_name("templates") / "index.html"
RETRY_AFTER_SECONDS = 5
DEFAULT_TOP = 5
QUEUE_HEADER = "X-Queue-Ms"  # per answer: how long its images waited for their model call (job/serve/batcher.py)
# The page's policy: nothing but its own inline code and style, the API on the same origin, and the images the user
# picked (blob:) or the API returned (data:). It works offline and cannot load anything from elsewhere.
PAGE_CSP = ("default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; img-src data: blob:; "
            "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")


# FastAPI resolves the (string) annotations of the route functions in this module's namespace, so these are here
_BEARER = HTTPBearer(auto_error=False, description="only when the server has JOB_SERVE_TOKEN set")
Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(_BEARER)]


class ModelSlot:
    """The classifier, once the background load has put it here; what /readyz reports."""

    def __init__(self):
        self.classifier = None
        self._ready = threading.Event()

    def set(self, classifier) -> None:
        self.classifier = classifier
        self._ready.set()

    @property
    def ready(self) -> bool:
        return self._ready.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        return self._ready.wait(timeout)


# ------------------------------------------------------------------------------------------- OpenAPI schemas
class ClassScore(BaseModel):
    class_id: int = Field(description="class index")
    class_: str = Field(alias="class", description="class name")
    probability: float


class FilePrediction(BaseModel):
    """One file's answer; the same record as `python -m job predict --json` (job.inference.prediction_record)."""
    file: str = Field(description="the uploaded file's name")
    width: int = Field(description="the uploaded image's width in pixels")
    height: int
    top: list[ClassScore] = Field(description="the `top` likeliest classes, likeliest first")
    gradcam: str | None = Field(None, description=f"with ?explain=true: a PNG data URL, {OVERLAY_SIDE}x{OVERLAY_SIDE}, "
                                                  "the image's centre square with the Grad-CAM heat map of the "
                                                  "likeliest class on top")


class PredictResponse(BaseModel):
    model: str
    predictions: list[FilePrediction] = Field(description="one per uploaded file, in the request's order")
    gradcam_error: str | None = Field(None, description="why there is no Grad-CAM (a model without a "
                                                        "convolutional feature map)")


class ErrorResponse(BaseModel):
    error: str = Field(description="one line: which file (if one file is the cause) and what is wrong")


_ERRORS = {status: {"model": ErrorResponse, "description": why} for status, why in (
    (400, "no files, a form field that is not a file, or a malformed body"),
    (401, "JOB_SERVE_TOKEN is set and the bearer token is missing or wrong"),
    (413, "the request is over the size limit, has too many files, or an image has too many pixels"),
    (415, "the body is not multipart/form-data"),
    (422, "a file is not an image or is truncated (the error names it), or a bad query parameter"),
    (503, "the model is still loading"),
)}
_V2_ERRORS = {status: {"model": ErrorResponse, "description": why} for status, why in (
    (400, "the request does not fit the protocol or the model: the error names the field and what to send"),
    (401, "JOB_SERVE_TOKEN is set and the bearer token is missing or wrong"),
    (404, "the model name is not this server's (GET /v2/models/NAME of the served name)"),
    (413, "the request is over the size limit or has more images than --max-files"),
    (503, "the model is still loading"),
)}
# What the files must be (each is decoded by Pillow; other bytes get 422): the description says so to a fuzzer too
IMAGE_MEDIA_TYPES = ("image/png", "image/jpeg", "image/webp", "image/bmp", "image/gif", "image/tiff")
_QUEUED = {200: {"description": "the answer", "headers": {QUEUE_HEADER: {
    "description": "milliseconds this request's images waited for their model call (dynamic batching)",
    "schema": {"type": "string"}}}}}
# v2 answers are JSON, or JSON followed by raw tensor bytes when binary outputs were asked for
_V2_ANSWER = {200: {**_QUEUED[200], "content": {"application/json": {"schema": {"type": "object"}},
                                                "application/octet-stream": {"schema": {"type": "string",
                                                                                        "format": "binary"}}}}}
_MULTIPART_BODY = {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
    "type": "object", "required": ["files"], "additionalProperties": False,
    "properties": {"files": {"type": "array", "minItems": 1, "items": {"type": "string", "format": "binary"},
                             "description": "one or more image files (PNG, JPEG, WebP, BMP, GIF, TIFF), each sent as "
                                            "a file part; any field name is accepted"}}},
    "encoding": {"files": {"contentType": ", ".join(IMAGE_MEDIA_TYPES)}}}}}}


_V2_TENSOR = {"type": "object", "required": ["name", "datatype", "shape"], "properties": {
    "name": {"type": "string", "enum": ["images"]},
    "datatype": {"type": "string", "enum": ["UINT8", "FP32"]},
    "shape": {"type": "array", "items": {"type": "integer", "minimum": 1}, "minItems": 4, "maxItems": 4,
              "description": "[n, S, S, 3]: n images of the model's input side S (GET /v2/models/NAME)"},
    "data": {"type": "array", "items": {"type": "number", "minimum": 0, "maximum": 255},
             "description": "the n*S*S*3 pixel values in [0, 255], flat in row-major order; with the binary tensor "
                            "data extension, none (the bytes follow the JSON)"},
    "parameters": {"type": "object", "properties": {"binary_data_size": {"type": "integer"}}}}}
_V2_INFER_BODY = {"requestBody": {"required": True, "content": {"application/json": {"schema": {
    "type": "object", "required": ["inputs"], "properties": {
        "id": {"type": "string"},
        "inputs": {"type": "array", "items": _V2_TENSOR, "minItems": 1, "maxItems": 1},
        "outputs": {"type": "array", "minItems": 1, "items": {"type": "object", "required": ["name"], "properties": {
            "name": {"type": "string", "enum": ["probabilities", "class_ids"]},
            "parameters": {"type": "object", "properties": {"binary_data": {"type": "boolean"}}}}}},
        "parameters": {"type": "object", "properties": {"binary_data_output": {"type": "boolean"}}}}}}}}}


# ---------------------------------------------------------------------------------------------------- the app
def create_app(slot: ModelSlot, limits: Limits | None = None, token: str | None = None,
               batching: Batching | None = None, metrics_public: bool = False,
               model_name: str | None = None) -> FastAPI:
    """The app, serving whatever classifier `slot` holds (503 on /v1/ and /v2/models/ until it holds one)."""
    limits = limits or Limits()
    batching = batching or Batching()
    page = PAGE.read_text(encoding="utf-8")
    heavy = anyio.CapacityLimiter(max(1, min(4, os.cpu_count() or 1)))  # decoding and Grad-CAM: bounded memory
    metrics = ServeMetrics()
    metrics.ready.set_function(lambda: 1.0 if slot.ready else 0.0)
    runners: list = []  # the batcher of the loaded classifier, made by the first request that needs it

    app = FastAPI(title="job serve", version="1",
                  description="Classifies uploaded images with a model trained by `python -m job train`. The page "
                              "at / does the same in a browser. Errors are JSON: {\"error\": \"one line\"}. The "
                              "Open Inference Protocol (v2 REST) is under /v2/, Prometheus metrics at /metrics.",
                  redoc_url=None)
    app.add_middleware(MetricsMiddleware, metrics=metrics)

    def authorize(credentials: Credentials = None) -> None:
        given = credentials.credentials if credentials is not None else ""
        if not hmac.compare_digest(given.encode("utf-8"), token.encode("utf-8")):
            why = "needs" if credentials is None else "has a wrong"
            raise RequestError(401, f"this server {why} bearer token: send Authorization: Bearer <JOB_SERVE_TOKEN>",
                               headers={"WWW-Authenticate": "Bearer"})

    # The published description says what this server does: the bearer scheme and the 401s only when a token is set.
    guarded = [Depends(authorize)] if token else []
    errors = {k: v for k, v in _ERRORS.items() if token or k != 401}

    def documented(*statuses: int) -> dict:
        return {k: errors[k] for k in statuses if k in errors}

    def classifier():
        if not slot.ready:
            raise RequestError(503, "the model is still loading; retry in a few seconds (GET /readyz says when)",
                               headers={"Retry-After": str(RETRY_AFTER_SECONDS)})
        return slot.classifier

    def runner():
        if not runners:
            runners.append(batching.runner(slot.classifier.predict, metrics.observe_batch))
        return runners[0]

    async def probabilities_of(inputs: np.ndarray) -> tuple[np.ndarray, dict[str, str]]:
        """The model's answer for one request's images (through the batcher) and the X-Queue-Ms header."""
        probabilities, queued = await runner().run(inputs)
        metrics.queue_seconds.observe(queued)
        return probabilities, {QUEUE_HEADER: f"{queued * 1000:.3f}"}

    def served_name() -> str:
        return model_name or slot.classifier.info.model

    # ------------------------------------------------------------------------------------------- errors
    @app.exception_handler(RequestError)
    async def request_error(request: Request, e: RequestError) -> JSONResponse:
        return JSONResponse({"error": e.message}, status_code=e.status, headers=e.headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, e: RequestValidationError) -> JSONResponse:
        problems = ["{}: {}".format(".".join(str(x) for x in err.get("loc", ()) if x != "query") or "request",
                                    err.get("msg", "invalid")) for err in e.errors()]
        return JSONResponse({"error": "; ".join(problems)[:300]}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, e: StarletteHTTPException) -> JSONResponse:
        message = f"{request.url.path} not found" if e.status_code == 404 else first_line(e.detail)
        return JSONResponse({"error": message}, status_code=e.status_code, headers=e.headers)

    @app.exception_handler(Exception)
    async def crash(request: Request, e: Exception) -> JSONResponse:
        log.error("%s %s failed: %s: %s", request.method, request.url.path, type(e).__name__, first_line(e))
        return JSONResponse({"error": f"internal error ({type(e).__name__}); the server log has the details"},
                            status_code=500)

    # --------------------------------------------------------------------------------------------- routes
    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index() -> HTMLResponse:
        return HTMLResponse(page, headers={"Content-Security-Policy": PAGE_CSP, "X-Content-Type-Options": "nosniff",
                                           "Referrer-Policy": "no-referrer"})

    @app.get("/healthz", summary="liveness: the process answers")
    async def healthz() -> dict:
        return {"status": "alive"}

    @app.get("/readyz", summary="readiness: 200 once the model is loaded, 503 before",
             responses={503: {"description": "the model is still loading"}})
    async def readyz() -> JSONResponse:
        if not slot.ready:
            return JSONResponse({"status": "loading"}, status_code=503,
                                headers={"Retry-After": str(RETRY_AFTER_SECONDS)})
        info = slot.classifier.info
        return JSONResponse({"status": "ready", "model": info.model, "dataset": info.dataset})

    @app.get("/metrics", summary="Prometheus metrics: requests, latencies, batch sizes, queue time",
             response_class=Response, dependencies=[] if metrics_public else guarded,
             responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}},
                        **(documented() if metrics_public else documented(401))})
    async def prometheus() -> Response:
        body, content_type = metrics.exposition()
        return Response(body, media_type=content_type)

    @app.get("/v1/model", summary="the model: name, dataset, classes, evaluation metrics, weights, limits",
             dependencies=guarded, responses=documented(401, 503))
    async def model_info() -> dict:
        model = classifier()
        import tensorflow as tf  # both loaded with the model

        from job.litert import LiteRTClassifier

        litert = isinstance(model, LiteRTClassifier)  # its interpreter's own threads
        threads = None if litert else tf.config.threading.get_intra_op_parallelism_threads()
        return {**model.info.to_dict(), "limits": limits.as_dict(), "batching": batching.as_dict(),
                "model_threads": threads}

    @app.post("/v1/predict", summary="classify one or more uploaded images", response_model=PredictResponse,
              response_model_exclude_none=True, dependencies=guarded, responses={**_QUEUED, **errors},
              openapi_extra=_MULTIPART_BODY)
    async def predict(request: Request,
                      top: Annotated[int, Query(ge=1, le=1000, description="how many classes per file (at most "
                                                                           "the model's classes)")] = DEFAULT_TOP,
                      explain: Annotated[bool, Query(description="add a Grad-CAM overlay per file (a PNG data "
                                                                 "URL)")] = False) -> JSONResponse:
        model = classifier()  # before reading the body: a loading server answers at once
        uploads = await read_uploads(request, limits)
        # every file is decoded before any is queued: a bad one fails its request alone, before the batch
        images, inputs = await anyio.to_thread.run_sync(decode_uploads, uploads, limits.max_pixels,
                                                        model.image_size, limiter=heavy)
        probabilities, headers = await probabilities_of(inputs)
        result = answer(model, uploads, images, probabilities, top)
        if explain:  # Grad-CAM beside the batch: its own call, with the model's gradients
            await anyio.to_thread.run_sync(add_gradcam, model, result, images, inputs, limiter=heavy)
        return JSONResponse(result, headers=headers)

    add_v2_routes(app, classifier, served_name, probabilities_of, limits, guarded, heavy)
    described = app.openapi

    def openapi() -> dict:
        """FastAPI's description, plus, once the model is loaded, the one model name /v2/models/ serves."""
        schema = described()
        if slot.ready:
            for path, operations in schema.get("paths", {}).items():
                for operation in operations.values() if path.startswith("/v2/models/") else ():
                    for parameter in operation.get("parameters", ()):
                        if parameter.get("name") == "name" and parameter.get("in") == "path":
                            parameter["schema"] = {"type": "string", "enum": [served_name()], "title": "Name"}
        return schema

    app.openapi = openapi
    return app


def add_v2_routes(app: FastAPI, classifier, served_name, probabilities_of, limits: Limits, guarded: list,
                  heavy) -> None:
    """The Open Inference Protocol's REST routes (job/serve/v2.py)."""
    def documented(*statuses: int) -> dict:
        return {k: _V2_ERRORS[k] for k in statuses if guarded or k != 401}

    def named(name: str):
        model = classifier()
        if name != served_name():
            raise RequestError(404, f"model {name[:80]!r} is not served here; this server serves "
                                    f"{served_name()!r} (GET /v2/models/{served_name()})")
        return model

    @app.get("/v2/health/live", summary="v2 liveness: the process answers")
    async def v2_live() -> dict:
        return {"live": True}

    @app.get("/v2/health/ready", summary="v2 readiness: 200 once the model is loaded, 503 before",
             responses={503: {"model": ErrorResponse, "description": "the model is still loading"}})
    async def v2_ready() -> dict:
        classifier()
        return {"ready": True}

    @app.get("/v2", summary="v2 server metadata", dependencies=guarded, responses=documented(401))
    async def v2_server() -> dict:
        return {"name": "job serve", "version": "1", "extensions": ["binary_tensor_data"]}

    @app.get("/v2/models/{name}", summary="v2 model metadata: the input and outputs, their datatypes and shapes",
             dependencies=guarded, responses=documented(401, 404, 503))
    async def v2_model(name: str) -> dict:
        model = named(name)
        return v2.model_metadata(served_name(), model.image_size, len(model.class_names))

    @app.get("/v2/models/{name}/ready", summary="v2 model readiness", dependencies=guarded,
             responses=documented(401, 404, 503))
    async def v2_model_ready(name: str) -> dict:
        named(name)
        return {"name": name, "ready": True}

    @app.post("/v2/models/{name}/infer", summary="v2 inference: class probabilities and ids of [n, S, S, 3] pixels",
              dependencies=guarded, responses={**_V2_ANSWER, **documented(400, 401, 404, 413, 503)},
              openapi_extra=_V2_INFER_BODY)
    async def v2_infer(name: str, request: Request) -> Response:
        model = named(name)
        body = await read_body(request, limits)
        parsed = await anyio.to_thread.run_sync(v2.parse_infer_request, body,
                                                request.headers.get(v2.HEADER_LENGTH), model.image_size,
                                                limits.max_files, limiter=heavy)
        probabilities, headers = await probabilities_of(parsed.images)
        content, more = v2.infer_response(served_name(), parsed, probabilities)
        return Response(content, headers={**more, **headers}, media_type=more["Content-Type"])


# ------------------------------------------------------------------------------------------------ the work
def decode_uploads(uploads: list[Upload], max_pixels: int, side: int) -> tuple[list[Image.Image], np.ndarray]:
    """Every file of a request decoded (RequestError naming the first that cannot be) and its model input."""
    images = [open_image(upload, max_pixels) for upload in uploads]
    return images, np.stack([to_model_input(image, side) for image in images])


def answer(model, uploads: list[Upload], images: list[Image.Image], probabilities: np.ndarray, top: int) -> dict:
    """The answer of /v1/predict for these files."""
    predictions = [{**prediction_record(upload.filename, model.top(row, top)), "width": image.width,
                    "height": image.height} for upload, image, row in zip(uploads, images, probabilities)]
    return {"model": model.info.model, "predictions": predictions}


def add_gradcam(model, answer: dict, images: list[Image.Image], inputs: np.ndarray) -> None:
    """Each prediction's Grad-CAM overlay, or the answer's gradcam_error for a model without a feature map."""
    from job.gradcam import NoFeatureMapError

    try:
        heatmaps = model.explain(inputs)
    except NoFeatureMapError as e:
        answer["gradcam_error"] = first_line(e)
    else:
        for prediction, image, heatmap in zip(answer["predictions"], images, heatmaps):
            prediction["gradcam"] = overlay_data_url(image, heatmap)


def open_image(upload: Upload, max_pixels: int) -> Image.Image:
    """The upload as an RGB image; RequestError 413 (too many pixels, from its header) or 422 (not an image), naming
    the file."""
    try:
        return open_rgb(upload.data, max_pixels)
    except TooManyPixelsError as e:
        raise RequestError(413, f"{upload.filename}: {e}") from None
    except ImageError as e:
        raise RequestError(422, f"{upload.filename}: {e}") from None


def overlay_data_url(image: Image.Image, heatmap: np.ndarray) -> str:
    """The image's Grad-CAM overlay (job/overlay.py) as a PNG data URL."""
    from job.overlay import overlay_picture

    buffer = io.BytesIO()
    overlay_picture(image, heatmap).save(buffer, "PNG", optimize=False)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")

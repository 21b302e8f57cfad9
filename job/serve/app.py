"""The ASGI app of `python -m job serve`: the page, the JSON API, the probes.

    app = create_app(slot, Limits(), token=None)      # slot: a ModelSlot, filled by a background load

Status codes (every error body is {"error": "<one line>"}, naming the file where one file is the cause):
    200  classified
    400  not a usable multipart body: no files, a form field that is not a file, a malformed or cut-off body
    401  JOB_SERVE_TOKEN is set and the request has no `Authorization: Bearer <token>` or another token (/v1/ only)
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
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from PIL import Image
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from job.errors import first_line
from job.images import ImageError, TooManyPixelsError, open_rgb, to_model_input
from job.inference import prediction_record
from job.overlay import OVERLAY_SIDE
from job.serve.uploads import Limits, RequestError, Upload, read_uploads

log = logging.getLogger("job")

PAGE = Path(__file__).with_name("templates") / "index.html"
RETRY_AFTER_SECONDS = 5
DEFAULT_TOP = 5
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
_MULTIPART_BODY = {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
    "type": "object", "required": ["files"],
    "properties": {"files": {"type": "array", "items": {"type": "string", "format": "binary"},
                             "description": "one or more image files (PNG, JPEG, WebP, BMP, GIF, TIFF), each sent as "
                                            "a file part; any field name is accepted"}}}}}}}


# ---------------------------------------------------------------------------------------------------- the app
def create_app(slot: ModelSlot, limits: Limits | None = None, token: str | None = None) -> FastAPI:
    """The app, serving whatever classifier `slot` holds (503 on /v1/ until it holds one)."""
    limits = limits or Limits()
    page = PAGE.read_text(encoding="utf-8")
    heavy = anyio.CapacityLimiter(max(1, min(4, os.cpu_count() or 1)))  # decoding and inference: bounded memory

    app = FastAPI(title="job serve", version="1",
                  description="Classifies uploaded images with a model trained by `python -m job train`. The page "
                              "at / does the same in a browser. Errors are JSON: {\"error\": \"one line\"}.",
                  redoc_url=None)

    def authorize(credentials: Credentials = None) -> None:
        if token is None:
            return
        given = credentials.credentials if credentials is not None else ""
        if not hmac.compare_digest(given.encode("utf-8"), token.encode("utf-8")):
            why = "needs" if credentials is None else "has a wrong"
            raise RequestError(401, f"this server {why} bearer token: send Authorization: Bearer <JOB_SERVE_TOKEN>",
                               headers={"WWW-Authenticate": "Bearer"})

    def classifier():
        if not slot.ready:
            raise RequestError(503, "the model is still loading; retry in a few seconds (GET /readyz says when)",
                               headers={"Retry-After": str(RETRY_AFTER_SECONDS)})
        return slot.classifier

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

    @app.get("/v1/model", summary="the model: name, dataset, classes, evaluation metrics, weights, limits",
             dependencies=[Depends(authorize)], responses={k: _ERRORS[k] for k in (401, 503)})
    async def model_info() -> dict:
        info = classifier().info
        return {**info.to_dict(), "limits": limits.as_dict()}

    @app.post("/v1/predict", summary="classify one or more uploaded images", response_model=PredictResponse,
              response_model_exclude_none=True, dependencies=[Depends(authorize)], responses=_ERRORS,
              openapi_extra=_MULTIPART_BODY)
    async def predict(request: Request,
                      top: Annotated[int, Query(ge=1, le=1000, description="how many classes per file (at most "
                                                                           "the model's classes)")] = DEFAULT_TOP,
                      explain: Annotated[bool, Query(description="add a Grad-CAM overlay per file (a PNG data "
                                                                 "URL)")] = False) -> JSONResponse:
        model = classifier()  # before reading the body: a loading server answers at once
        uploads = await read_uploads(request, limits)
        result = await anyio.to_thread.run_sync(classify, model, uploads, limits.max_pixels, top, explain,
                                                limiter=heavy)
        return JSONResponse(result)

    return app


# ------------------------------------------------------------------------------------------------ the work
def classify(model, uploads: list[Upload], max_pixels: int, top: int, explain: bool) -> dict:
    """The answer of /v1/predict for these files (RequestError naming the first file that cannot be classified)."""
    side = model.image_size
    images = [open_image(upload, max_pixels) for upload in uploads]
    inputs = np.stack([to_model_input(image, side) for image in images])
    probabilities = model.predict(inputs)
    predictions = [{**prediction_record(upload.filename, model.top(row, top)), "width": image.width,
                    "height": image.height} for upload, image, row in zip(uploads, images, probabilities)]
    answer = {"model": model.info.model, "predictions": predictions}
    if explain:
        from job.gradcam import NoFeatureMapError

        try:
            heatmaps = model.explain(inputs)
        except NoFeatureMapError as e:
            answer["gradcam_error"] = first_line(e)
        else:
            for prediction, image, heatmap in zip(predictions, images, heatmaps):
                prediction["gradcam"] = overlay_data_url(image, heatmap)
    return answer


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

"""The Open Inference Protocol (KServe v2, REST) of `job serve`: what Triton's and KServe's clients speak.

    GET  /v2/health/live   /v2/health/ready   GET /v2   GET /v2/models/NAME   GET /v2/models/NAME/ready
    POST /v2/models/NAME/infer     {"inputs": [{"name": "images", "datatype": "UINT8", "shape": [n, S, S, 3],
                                                "data": [...]}]}
      -> {"model_name": NAME, "outputs": [{"name": "probabilities", "datatype": "FP32", "shape": [n, C], ...},
                                          {"name": "class_ids", "datatype": "INT64", "shape": [n], ...}]}

One input, `images`: UINT8, or FP32 with every value in [0, 255] (the pixels, not normalised: the model scales them
itself), n at most --max-files. `data` is the row-major flat list (or nested lists) of the n*S*S*3 values, or, with
the binary tensor data extension, the raw little-endian bytes after the JSON (`parameters.binary_data_size` on the
input, the JSON's length in the Inference-Header-Content-Length header). Outputs come as JSON data unless requested
binary (`outputs[i].parameters.binary_data` or the request's `parameters.binary_data_output`). The classification
extension is not supported (400 saying so): class_ids are the argmax.

Errors are {"error": "<one line>"}: 400 a request that does not fit (naming the field and what to send), 401 the
token, 404 another model's name, 413 over the limits, 503 still loading. The parsing here is pure (no app state):
`parse_infer_request` and `infer_response`; job/serve/app.py adds the routes.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass

import numpy as np

from job.serve.uploads import RequestError

INPUT_NAME = "images"
OUTPUTS = ("probabilities", "class_ids")
HEADER_LENGTH = "Inference-Header-Content-Length"
_DATATYPES = {"UINT8": np.uint8, "FP32": np.float32}
_OUTPUT_DATATYPES = {"probabilities": ("FP32", "<f4"), "class_ids": ("INT64", "<i8")}
_REQUEST_PARAMETERS = {"binary_data_output"}


@dataclass
class InferRequest:
    images: np.ndarray  # (n, S, S, 3), uint8 or float32 in [0, 255]
    id: str | None
    binary_outputs: dict[str, bool]  # per output name: answer as raw bytes


def model_metadata(name: str, side: int, classes: int) -> dict:
    return {"name": name, "versions": ["1"], "platform": "keras",
            "inputs": [{"name": INPUT_NAME, "datatype": "UINT8", "shape": [-1, side, side, 3]}],
            "outputs": [{"name": "probabilities", "datatype": "FP32", "shape": [-1, classes]},
                        {"name": "class_ids", "datatype": "INT64", "shape": [-1]}]}


def _bad(message: str) -> RequestError:
    return RequestError(400, message)


def parse_infer_request(body: bytes, header_length: str | None, side: int, max_images: int) -> InferRequest:
    """The request's images, checked whole: RequestError 400 (or 413 for too many images) naming what is wrong."""
    json_part, binary = body, b""
    if header_length is not None:
        if not header_length.strip().isdigit() or int(header_length) > len(body):
            raise _bad(f"{HEADER_LENGTH} {header_length[:20]!r} is not a length within the body "
                       f"({len(body)} bytes)")
        json_part, binary = body[:int(header_length)], body[int(header_length):]
    try:
        request = json.loads(json_part)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise _bad(f"the request is not JSON ({e}); send {{\"inputs\": [...]}} as in the Open Inference "
                   f"Protocol (binary tensor data needs the {HEADER_LENGTH} header)") from None
    if not isinstance(request, dict):
        raise _bad("the request must be a JSON object with \"inputs\"")
    parameters = _object(request.get("parameters", {}), "parameters")
    unknown = sorted(set(parameters) - _REQUEST_PARAMETERS)
    if unknown:
        raise _bad(f"request parameter {unknown[0]!r} is not supported here (only binary_data_output)")
    request_id = request.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise _bad("\"id\" must be a string")
    inputs = request.get("inputs")
    if not isinstance(inputs, list) or len(inputs) != 1:
        raise _bad(f"\"inputs\" must be a list of one tensor, {INPUT_NAME!r} [n, {side}, {side}, 3]")
    images, used = _images(_object(inputs[0], "inputs[0]"), binary, side, max_images)
    if used != len(binary):
        raise _bad(f"the body has {len(binary) - used} bytes after the JSON that no input's binary_data_size "
                   f"accounts for")
    binary_default = _flag(parameters, "binary_data_output", "parameters")
    return InferRequest(images, request_id, _requested_outputs(request.get("outputs"), binary_default))


def _object(value, where: str) -> dict:
    if not isinstance(value, dict):
        raise _bad(f"{where} must be a JSON object")
    return value


def _flag(parameters: dict, key: str, where: str) -> bool:
    value = parameters.get(key, False)
    if not isinstance(value, bool):
        raise _bad(f"{where}.{key} must be true or false")
    return value


def _images(tensor: dict, binary: bytes, side: int, max_images: int) -> tuple[np.ndarray, int]:
    """The input tensor as an array, and how many bytes of the binary part it used."""
    if tensor.get("name") != INPUT_NAME:
        raise _bad(f"the input is named {str(tensor.get('name'))[:40]!r}; this model's one input is {INPUT_NAME!r}")
    datatype = tensor.get("datatype")
    if not isinstance(datatype, str) or datatype not in _DATATYPES:
        raise _bad(f"input datatype {str(datatype)[:20]!r} is not supported; send UINT8 or FP32 pixels in [0, 255]")
    shape = tensor.get("shape")
    if (not isinstance(shape, list) or len(shape) != 4 or not all(type(d) is int for d in shape)
            or shape[1:] != [side, side, 3] or shape[0] < 1):
        raise _bad(f"input shape {str(shape)[:60]} is not [n, {side}, {side}, 3] with n >= 1: resize the images "
                   f"to {side}x{side} RGB")
    if shape[0] > max_images:
        raise RequestError(413, f"{shape[0]} images in one request; send at most {max_images} per request")
    dtype, count = _DATATYPES[datatype], math.prod(shape)
    parameters = _object(tensor.get("parameters", {}), "inputs[0].parameters")
    unknown = sorted(set(parameters) - {"binary_data_size"})
    if unknown:
        raise _bad(f"input parameter {unknown[0]!r} is not supported here (only binary_data_size)")
    if "binary_data_size" in parameters:
        size = parameters["binary_data_size"]
        expected = count * np.dtype(dtype).itemsize
        if type(size) is not int or size != expected or len(binary) < size:
            raise _bad(f"binary_data_size {str(size)[:20]} does not match: {shape} {datatype} is {expected} bytes "
                       f"and the body has {len(binary)} after the JSON")
        if "data" in tensor:
            raise _bad("the input has both \"data\" and binary_data_size; send one")
        values, used = np.frombuffer(binary[:size], dtype=np.dtype(dtype).newbyteorder("<")), size
    else:
        values, used = _json_values(tensor.get("data"), datatype, count), 0
    images = np.asarray(values, dtype).reshape(shape)
    if datatype == "FP32" and not (np.isfinite(images).all() and images.min() >= 0 and images.max() <= 255):
        raise _bad("FP32 pixels must be finite and in [0, 255] (not normalised: the model scales them itself)")
    return images, used


def _json_values(data, datatype: str, count: int) -> np.ndarray:
    if not isinstance(data, list):
        raise _bad("the input has no \"data\" list (or binary_data_size with the binary tensor data extension)")
    try:
        values = np.asarray(data, dtype=np.float64).ravel()  # nested or flat; strings or ragged lists fail here
    except (TypeError, ValueError):
        raise _bad(f"the input's data is not a list of numbers (flat, or nested as [n, S, S, 3]) for {datatype}") \
            from None
    if values.size != count:
        raise _bad(f"the input's data has {values.size} values; its shape needs {count}")
    if datatype == "UINT8" and not (np.all(values == np.round(values)) and values.min() >= 0 and values.max() <= 255):
        raise _bad("UINT8 data must be whole numbers in [0, 255]")
    return values


def _requested_outputs(outputs, binary_default: bool) -> dict[str, bool]:
    if outputs is None:
        return {name: binary_default for name in OUTPUTS}
    if not isinstance(outputs, list) or not outputs:
        raise _bad(f"\"outputs\" must be a non-empty list of {{\"name\": ...}} (of {', '.join(OUTPUTS)})")
    chosen: dict[str, bool] = {}
    for i, output in enumerate(outputs):
        output = _object(output, f"outputs[{i}]")
        name = output.get("name")
        if name not in OUTPUTS:
            raise _bad(f"output {str(name)[:40]!r} does not exist; this model has {', '.join(OUTPUTS)}")
        parameters = _object(output.get("parameters", {}), f"outputs[{i}].parameters")
        unknown = sorted(set(parameters) - {"binary_data"})
        if unknown:
            what = "the classification extension is" if unknown[0] == "classification" else \
                f"output parameter {unknown[0]!r} is"
            raise _bad(f"{what} not supported here; ask for probabilities and class_ids")
        chosen[name] = _flag(parameters, "binary_data", f"outputs[{i}].parameters") if "binary_data" in parameters \
            else binary_default
    return chosen


def infer_response(model_name: str, request: InferRequest, probabilities: np.ndarray) -> tuple[bytes, dict]:
    """The response body and its headers (Inference-Header-Content-Length when any output is binary)."""
    values = {"probabilities": probabilities.astype(np.float32), "class_ids": probabilities.argmax(axis=1)}
    outputs, blobs = [], []
    for name, binary in request.binary_outputs.items():
        datatype, layout = _OUTPUT_DATATYPES[name]
        array = values[name]
        tensor = {"name": name, "datatype": datatype, "shape": list(array.shape)}
        if binary:
            blob = np.ascontiguousarray(array, dtype=layout).tobytes()
            tensor["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            tensor["data"] = array.ravel().tolist()
        outputs.append(tensor)
    answer = {"model_name": model_name, "model_version": "1", "outputs": outputs}
    if request.id is not None:
        answer["id"] = request.id
    head = json.dumps(answer, separators=(",", ":")).encode()
    if not blobs:
        return head, {"Content-Type": "application/json"}
    return head + b"".join(blobs), {"Content-Type": "application/octet-stream", HEADER_LENGTH: str(len(head))}

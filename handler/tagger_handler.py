"""TorchServe handler of the photo tagger: image bytes in, grouped tags out.

TorchServe calls `initialize` once per worker and `handle` once per batch of concurrent requests. A request that
carries no decodable image gets HTTP 400 with {"error": ..., "code": 400} (the payload repeats the code because
TorchServe's gRPC path drops per-request status codes); the rest of its batch is tagged as usual.

An Open Inference Protocol (KServe v2) request is answered in OIP form (`format_response`): the usual tag (or
error) JSON becomes the one BYTES element of the output tensor "tags", and the boxes also come as the FP32
tensor "boxes". TorchServe passes that body through unchanged on REST, and its gRPC ModelInfer turns it into a
ModelInferResponse. A refused OIP photo is answered
with HTTP 200 and the error in the body (the element, and the response's "parameters"): KServe's wrapper turns
any non-2xx answer from TorchServe into HTTP 500 and drops the body, which clients would retry as a server fault.
OIP requests are recognised by content (`phototag.payload.read_oip`), so clients that send no Content-Type, and
OIP's binary tensor extension, are answered too. A binary-extension request never comes through KServe's wrapper
(kserve 0.13 reads only JSON), so it is answered as the extension says: binary outputs when it asks for them, and a
refused photo with HTTP 400 and the OIP error body {"error": ...}.

A request may turn the big-photo mode off for its own photo (`phototag.payload.requested_big_photos`: the
X-Big-Photos header, a `big_photos` field or input-map entry, an OIP parameter); the mode itself is the archive's.

Settings come from the archive's model-config.yaml, `handler:` section, read into one typed object
(`phototag.handler_settings.HandlerSettings`: every key, its values and its default). An unknown or mistyped key
stops the worker at start with a message naming it.
"""
from __future__ import annotations

import json
import logging
import os
import struct
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

import torch

from phototag.checkpoint import load_model
from phototag.compiled import BucketedCompiledModel
from phototag.decoding import MAX_PIXELS, ImageDecodeError
from phototag.handler_settings import HandlerSettings
from phototag.headers import declared_size
from phototag.inference import BigPhotos, PreparedPhoto, Runtime, load_photo, predict, predict_object_map, prepare_model
from phototag.int8 import select_int8
from phototag.jpeg_batch import choose_jpeg_decoder, decode_jpegs, fits_fast_lane
from phototag.locate import InputGeometry, tag_photo
from phototag.model import ServedTagger
from phototag.payload import (
    BIG_PHOTOS_HEADER,
    BIG_PHOTOS_PARAMETER,
    INFERENCE_HEADER,
    OIP_DATATYPE,
    OipRequest,
    PayloadError,
    extract_image_bytes,
    read_oip,
    requested_big_photos,
)
from phototag.taxonomy import SINGLE, Taxonomy

log = logging.getLogger(__name__)

WEIGHTS_FILE = "model.pt"
TAXONOMY_FILE = "taxonomy.json"
OIP_OUTPUT = "tags"  # name of the OIP output tensor: one BYTES element, the tag JSON
OIP_BOXES = "boxes"  # the extra output of a per-cell model: FP32 [n, 6] (oip_box_tensor)


def _record_metrics(metrics, decode_ms: float, inference_ms: float, batch_size: int, responses: list[dict],
                    rescored: int | None) -> None:
    """Custom metrics for operators, exposed on the Prometheus endpoint (config: model_metrics_auto_detect).
    `rescored`: photos of this batch the int8 path handed to the eager model, None when int8 is not served."""
    if metrics is None:  # a Context built without TorchServe's metrics cache (in-process use)
        return
    from ts.metrics.dimension import Dimension
    from ts.metrics.metric_type_enum import MetricTypes

    metrics.add_time("TaggerDecodeTime", decode_ms, None, "ms", [], MetricTypes.GAUGE)
    metrics.add_time("TaggerInferenceTime", inference_ms, None, "ms", [], MetricTypes.GAUGE)
    metrics.add_metric("TaggerBatchSize", batch_size, "count", None, [], MetricTypes.GAUGE)
    if rescored is not None:  # how much of the int8 speed borderline photos give back (docs/performance.md)
        metrics.add_counter("TaggerInt8Rescored", rescored, None, [])
    for reason, count in Counter(r["reason"] for r in responses if "error" in r).items():
        metrics.add_counter("TaggerDecodeFailures", count, None, [Dimension("Reason", reason)])
    for tag, count in Counter(t for r in responses for t in r.get("tags", ())).items():
        metrics.add_counter("TaggerTagsServed", count, None, [Dimension("Tag", tag)])


def _refusal(exc: PayloadError | ImageDecodeError) -> dict:
    """The answer to a request that carries no usable image: HTTP 400 with what is wrong and a stable reason."""
    return {"error": str(exc), "reason": exc.reason, "code": 400}


def _request_header(context, index: int, wanted: str) -> str | None:
    # Header names reach the worker as the client spelled them.
    headers = context.get_all_request_header(index) or {}
    return next((value for name, value in headers.items() if name.lower() == wanted.lower()), None)


def _content_type(context, index: int) -> str | None:
    return _request_header(context, index, "content-type")


def _with_header_choice(request, header: str | None):
    """A plain request with its X-Big-Photos header put beside its fields (TorchServe 0.12 passes REST headers
    but drops the query string), so that `requested_big_photos` reads one place; a field of that name wins."""
    if header is None or not isinstance(request, dict) or BIG_PHOTOS_PARAMETER in request:
        return request
    return {**request, BIG_PHOTOS_PARAMETER: header}


def oip_box_tensor(response: dict, taxonomy: Taxonomy) -> dict | None:
    """The OIP output "boxes" of a tagged photo: FP32 [n, 6], one row per box, [object, score, x0, y0, x1, y1]
    with `object` the class's index among the yes/no classes in taxonomy order (aviation 0 ... sherp 7) and the
    box in the photo's pixels as displayed. None for an error or a model without boxes."""
    if "error" in response or "image" not in response:  # refused, or a pooled-head model: no boxes
        return None
    rows, index = [], 0
    for group in taxonomy.groups:
        if group.kind == SINGLE:
            continue
        boxes = response.get(group.name, {}).get("boxes")
        if boxes is None:
            return None
        for tag_class in group.classes:
            rows += [[float(index), box["score"], *box["box"]] for box in boxes.get(tag_class.id, ())]
            index += 1
    return {"name": OIP_BOXES, "shape": [len(rows), 6], "datatype": "FP32", "data": [v for row in rows for v in row]}


def _requested_outputs(outputs: list[dict], document: dict) -> list[dict]:
    """The outputs an OIP request named (all of them when it names none, or none of ours)."""
    asked = document.get("outputs")
    names = {o.get("name") for o in asked if isinstance(o, dict)} if isinstance(asked, list) else set()
    chosen = [output for output in outputs if output["name"] in names]
    return chosen or outputs


def _binary_tensor(output: dict) -> bytes:
    """An output's data as the OIP binary extension carries it: each BYTES element behind its 4-byte length, FP32
    values little-endian."""
    if output["datatype"] == "FP32":
        return struct.pack(f"<{len(output['data'])}f", *output["data"])
    return b"".join(struct.pack("<I", len(e)) + e for e in (str(v).encode() for v in output["data"]))


class PhotoTaggerHandler:
    def __init__(self):
        self.initialized = False
        self.model = None
        self.forward = None  # the served model (logits and cells), or its compiled wrapper
        self.int8 = None  # phototag.int8.Int8Tagger when the archive's int8 package serves
        self.taxonomy: Taxonomy | None = None
        self.runtime = Runtime(torch.device("cpu"))
        self.jpeg_decoder = "pil"
        self.model_version = "unknown"
        self.image_size = 0
        self.max_pixels = MAX_PIXELS
        self.big_photos = None  # phototag.inference.BigPhotos when the big-photo mode is on
        self.decoder_pool: ThreadPoolExecutor | None = None

    def initialize(self, context):
        """Load weights and taxonomy from the archive, choose device and precision (the archive's int8 package
        where `phototag.int8.select_int8` allows it), compile if asked, and run warm-up batches [n, 3, S, S] (every
        compiled batch size, so no request pays for compiling)."""
        properties = context.system_properties
        model_dir = properties.get("model_dir")
        model_config = getattr(context, "model_yaml_config", None) or {}
        settings = HandlerSettings.from_section(model_config.get("handler"))
        self.runtime = settings.runtime(properties.get("gpu_id"))
        if settings.torch_threads > 0:
            # Several CPU workers must split the cores: oversubscribed OpenMP threads spin and slow each other down.
            torch.set_num_threads(settings.torch_threads)
        # The archive's taxonomy.json is the served one; load_model refuses a model whose outputs disagree with it.
        taxonomy = Taxonomy.load(os.path.join(model_dir, TAXONOMY_FILE))
        weights = os.path.join(model_dir, WEIGHTS_FILE)
        self.model, self.taxonomy, _ = load_model(weights, taxonomy=taxonomy)
        prepare_model(self.model, self.runtime)
        self.served = ServedTagger(self.model)
        self.int8 = select_int8(settings.precision, self.runtime.device, model_dir, weights, self.served,
                                self.runtime, taxonomy)
        self.image_size = self.model.config.image_size
        self.max_pixels = settings.max_pixels
        self.big_photos = settings.big_photos() if self.model.config.object_head == "cells" else None
        self.jpeg_decoder = choose_jpeg_decoder(settings.jpeg_decoder, self.runtime.device)
        self.decoder_pool = ThreadPoolExecutor(max_workers=settings.decode_threads, thread_name_prefix="decode")
        self.model_version = str(context.manifest.get("model", {}).get("modelVersion", "unknown"))
        self._set_up_forward(settings.compile, int(model_config.get("batchSize", 1)))
        log.info("tagger %s ready on %s, JPEGs decoded by %s: %d logits, input %d px (%s), object head %s "
                 "(pooling %s), groups %s, big photos %s", self.model_version, self.runtime.describe(),
                 self.jpeg_decoder, self.taxonomy.num_logits, self.image_size, self.model.config.resize,
                 self.model.config.object_head, self.model.config.object_pooling, list(self.taxonomy.head_sizes),
                 self.big_photos or "off")
        self.initialized = True

    def _set_up_forward(self, compile_mode, max_batch: int) -> None:
        """self.forward = the model, or its torch.compile'd wrapper with every batch bucket compiled now; with the
        int8 package the model stays eager (it re-scores borderline photos) and nothing is compiled."""
        if self.int8 is not None:
            if compile_mode:
                log.info("compile: %s left unused: the int8 package is compiled already", compile_mode)
                compile_mode = False
            self.runtime = replace(self.runtime, int8=True)
        if not compile_mode:
            self.forward = self.served
            self.inference(self._blank_batch(1))
            return
        compiled = BucketedCompiledModel(self.served, max_batch, "default" if compile_mode is True else compile_mode)
        self.forward = compiled
        started = time.perf_counter()
        compiled.warm_up(lambda n: self.inference(self._blank_batch(n)))
        log.info("compiled (%s) for batch sizes %s in %.1f s", compiled.mode, compiled.buckets,
                 time.perf_counter() - started)

    def _blank_batch(self, n: int) -> torch.Tensor:
        return torch.zeros(n, 3, self.image_size, self.image_size, dtype=torch.uint8)

    def _read_request(self, request, content_type: str | None) -> tuple[bytes, BigPhotos | None]:
        """One request -> (its image bytes, the big-photo mode it is served with: the archive's, or None where
        the request asked for "off"), or PayloadError."""
        big = self.big_photos if requested_big_photos(request) == "auto" else None
        return extract_image_bytes(request, content_type), big

    def _prepare_one(self, request: dict, content_type: str | None) -> PreparedPhoto | dict:
        """One request -> the decoded photo (uint8 [3, S, S] on the CPU and its geometry; for a big photo also its
        larger input), or its error dict."""
        try:
            return self._decode_with_pillow(*self._read_request(request, content_type))
        except PayloadError as exc:
            return _refusal(exc)

    def _decode_with_pillow(self, data: bytes, big: BigPhotos | None) -> PreparedPhoto | dict:
        """Image bytes -> the decoded photo (`phototag.inference.load_photo`), or the error dict naming why they
        are not a usable image."""
        try:
            return load_photo(data, self.image_size, self.max_pixels, self.model.config.resize, big)
        except ImageDecodeError as exc:
            return _refusal(exc)

    def preprocess(self, requests: list[dict], content_types: list[str | None]) -> tuple[torch.Tensor, list]:
        """N requests -> (uint8 batch [M, 3, S, S] of the M decodable ones, N entries: PreparedPhoto or error dict).

        With the torchvision JPEG decoder, plain JPEGs are decoded in one batched call on the model's device and
        the batch is returned there; every other request takes the Pillow lane in the thread pool.
        """
        if self.jpeg_decoder == "pil":
            prepared = list(self.decoder_pool.map(self._prepare_one, requests, content_types))
        else:
            prepared = self._prepare_with_jpeg_lane(requests, content_types)
        # Pillow's images are stacked on the CPU and copied once; the JPEG lane's are already on the device.
        device = self.runtime.device if self.jpeg_decoder == "torchvision" else torch.device("cpu")
        images = [p.image.to(device) for p in prepared if isinstance(p, PreparedPhoto)]
        batch = torch.stack(images) if images else self._blank_batch(0)
        return batch, prepared

    def _prepare_with_jpeg_lane(self, requests: list[dict], content_types: list[str | None]) -> list:
        prepared: list = [None] * len(requests)
        payloads: list = [None] * len(requests)
        bigs: list = [None] * len(requests)
        for index, (request, content_type) in enumerate(zip(requests, content_types)):
            try:
                payloads[index], bigs[index] = self._read_request(request, content_type)
            except PayloadError as exc:
                prepared[index] = _refusal(exc)
        fast = [i for i, data in enumerate(payloads) if data is not None and fits_fast_lane(data, self.max_pixels)
                and not (bigs[i] is not None and bigs[i].verdict_of(data)[0])]
        for index, tensor in zip(fast, decode_jpegs([payloads[i] for i in fast], self.image_size,
                                                     self.runtime.device, self.model.config.resize)):
            size = declared_size(payloads[index])
            if tensor is not None and size:  # the fast lane takes upright JPEGs only: the header's size is displayed
                prepared[index] = PreparedPhoto(tensor, InputGeometry(*size, self.image_size,
                                                                      self.model.config.resize))
        slow = [i for i, p in enumerate(prepared) if p is None]
        decoded = self.decoder_pool.map(self._decode_with_pillow, [payloads[i] for i in slow], [bigs[i] for i in slow])
        for index, result in zip(slow, decoded):
            prepared[index] = result
        return prepared

    def inference(self, batch: torch.Tensor, closer: torch.Tensor | None = None) -> tuple:
        """uint8 [M, 3, S, S] -> (float32 logits [M, num_logits], per-cell object logits [M, K, S/16, S/16] or
        None for a pooled-head model) on the CPU, in one forward pass; with `closer`, the big photos' larger inputs
        uint8 [M', 3, B, B], also their object maps [M', K, B/16, B/16] (the eager model: the int8 package and the
        compiled graph are built for S), else None."""
        if len(batch) == 0:
            return torch.empty(0, self.taxonomy.num_logits), None, None
        logits, cells = self.int8(batch) if self.int8 is not None else predict(self.forward, batch, self.runtime)
        closer_cells = None if closer is None else predict_object_map(self.served, closer, self.runtime)
        return logits, cells, closer_cells

    def postprocess(self, outputs: tuple, prepared: list) -> list[dict]:
        """(logits [M, num_logits], cells [M, K, h, w] or None, big photos' maps [M', K, h', w'] or None) + the N
        preprocess entries -> N response dicts: tags with each object's boxes (`phototag.locate.tag_photo`), or
        the request's error."""
        logits, cells, closer_cells = outputs
        rows = iter(zip(logits.tolist(), cells.numpy() if cells is not None else [None] * len(logits)))
        closer_rows = iter(closer_cells.numpy() if closer_cells is not None else ())
        answers = []
        for entry in prepared:
            if isinstance(entry, dict):
                answers.append(entry)
                continue
            row, cell_row = next(rows)
            closer = (next(closer_rows), entry.closer_geometry) if entry.closer is not None else None
            answers.append(tag_photo(row, cell_row, self.taxonomy, self.model_version, entry.geometry, closer,
                                     entry.note))
        return answers

    def handle(self, data: list[dict], context) -> list[str | bytes]:
        """One TorchServe batch: N requests in, N bodies out (errors keep their slot): compact JSON, or bytes for
        an OIP binary-extension answer."""
        content_types = [_content_type(context, i) for i in range(len(data))]
        # Each OIP request is read once here; preprocess and format_response take it in place of the raw request.
        requests = [read_oip(request, _request_header(context, i, INFERENCE_HEADER))
                    or _with_header_choice(request, _request_header(context, i, BIG_PHOTOS_HEADER))
                    for i, request in enumerate(data)]
        started = time.perf_counter()
        batch, prepared = self.preprocess(requests, content_types)
        closer = [p.closer for p in prepared if isinstance(p, PreparedPhoto) and p.closer is not None]
        decoded = time.perf_counter()
        rescored_before = self.int8.rescored if self.int8 is not None else None
        outputs = self.inference(batch, torch.stack(closer) if closer else None)
        inferred = time.perf_counter()
        responses = self.postprocess(outputs, prepared)
        for index, (request, response) in enumerate(zip(requests, responses)):
            context.set_response_content_type(index, "application/json")
            if "error" in response and (not isinstance(request, OipRequest) or request.binary):
                context.set_response_status(response["code"], response["error"][:200], index)
        log.info("batch of %d requests: %d tagged, %d refused", len(data), len(batch), len(data) - len(batch))
        rescored = None if rescored_before is None else self.int8.rescored - rescored_before
        _record_metrics(getattr(context, "metrics", None), 1000 * (decoded - started), 1000 * (inferred - decoded),
                        len(data), responses, rescored)
        return [self.format_response(r, request, index, context)
                for index, (request, r) in enumerate(zip(requests, responses))]

    def format_response(self, response: dict, request, index: int, context) -> str | bytes:
        """The body of one answer: the compact tag (or error) JSON, wrapped in an OIP inference response when the
        request was an OIP one.

        TorchServe 0.12's gRPC ModelInfer parses this body into a ModelInferResponse, reading `id`, `model_name`,
        `model_version` and each output's `name`, `datatype`, `shape` and `data` unconditionally: a body without
        them makes the frontend throw (the call fails with INTERNAL "Worker died."). It also drops per-request
        status codes. KServe's wrapper (kserve 0.13) rebuilds the answer from `id`, `model_version`, `parameters`
        and `outputs` only, and answers 500 for any non-2xx status. So an error keeps the OIP shape and HTTP 200
        (`handle` sets no status for OIP requests): the error JSON is the tensor's element, and REST clients also
        find {"error", "reason", "code"} in the response's `parameters`, which both TorchServe and KServe pass on.

        A tagged photo of a per-cell model gets a second output, "boxes" (`oip_box_tensor`), after "tags", so that
        clients that read the first output, or look "tags" up by name, read what they always did; a request that
        names its outputs gets those.

        A binary-extension request (`request.binary`; never from KServe's wrapper, nor from gRPC) gets OIP's error
        body, the usual error JSON, with the 400 `handle` set; and the outputs it asks for as binary data: the JSON
        part, then each binary output's data in order (a BYTES element behind its 4-byte length, FP32 values
        little-endian), with the JSON part's length in the Inference-Header-Content-Length response header
        (TorchServe 0.12 passes a handler's response headers on).
        """
        body = json.dumps(response, ensure_ascii=False)
        oip = request if isinstance(request, OipRequest) else read_oip(request)
        if oip is None or (oip.binary and "error" in response):
            return body
        document = oip.document
        request_id = document.get("id")
        if not (isinstance(request_id, str) and request_id.strip()):
            request_id = context.get_request_id(index) or ""  # OIP: echo the client's id, else TorchServe's
        answer = {
            "id": request_id,
            "model_name": context.model_name,
            "model_version": self.model_version,
            "outputs": [{"name": OIP_OUTPUT, "shape": [1], "datatype": OIP_DATATYPE, "data": [body]}],
        }
        boxes = oip_box_tensor(response, self.taxonomy)
        if boxes is not None:
            answer["outputs"].append(boxes)
        answer["outputs"] = _requested_outputs(answer["outputs"], oip.document)
        if "error" in response:
            answer["parameters"] = {key: response[key] for key in ("error", "reason", "code")}
        blobs = []
        for output in answer["outputs"]:
            if oip.binary_output(output["name"]):
                blob = _binary_tensor(output)
                del output["data"]
                output["parameters"] = {"binary_data_size": len(blob)}
                blobs.append(blob)
        if not blobs:
            return json.dumps(answer, ensure_ascii=False)
        header = json.dumps(answer, ensure_ascii=False).encode()
        context.set_response_content_type(index, "application/octet-stream")
        context.set_response_header(index, INFERENCE_HEADER, str(len(header)))
        return header + b"".join(blobs)

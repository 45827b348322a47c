"""gRPC inference with TorchServe's own service definition.

The stubs are generated at setup time (`python -m serving.protos`) from the .proto files inside the installed
TorchServe into generated/ (git-ignored), so they always match the server version that is pinned.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import grpc

from client.auth import DEFAULT_KEY_FILE, read_key
from client.stubs import GENERATED_DIR
from phototag.payload import BIG_PHOTOS_CHOICES, BIG_PHOTOS_PARAMETER

if str(GENERATED_DIR) not in sys.path:
    sys.path.insert(0, str(GENERATED_DIR))  # protoc's generated modules import each other as top-level modules

import inference_pb2
import inference_pb2_grpc

DEFAULT_GRPC_TARGET = "127.0.0.1:7070"
MAX_MESSAGE_BYTES = 32 * 1024 * 1024  # grpc's 4 MB default is smaller than a camera JPEG


class GrpcTagger:
    """Tags images over TorchServe's gRPC `Predictions` call; the token goes in the `authorization` metadata."""

    def __init__(self, target: str = DEFAULT_GRPC_TARGET, key_file: str | Path = DEFAULT_KEY_FILE):
        options = [("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                   ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES)]
        self.channel = grpc.insecure_channel(target, options=options)
        self.stub = inference_pb2_grpc.InferenceAPIsServiceStub(self.channel)
        self.key_file = key_file

    def tag(self, data: bytes, model: str = "tagger", version: str | None = None, timeout: float = 120,
            big_photos: str = BIG_PHOTOS_CHOICES[0]) -> dict:
        """Tag JSON of one image; an image the handler refuses comes back as {"error": ..., "code": 400}.
        `big_photos` "off": this photo's objects are not read closer (an entry of the input map)."""
        inputs = {"data": data}
        if big_photos != BIG_PHOTOS_CHOICES[0]:
            inputs[BIG_PHOTOS_PARAMETER] = big_photos.encode()
        request = inference_pb2.PredictionsRequest(model_name=model, input=inputs)
        if version:
            request.model_version = version
        for attempt in range(2):
            metadata = (("authorization", f"Bearer {read_key('inference', self.key_file)}"),)
            try:
                reply = self.stub.Predictions(request, metadata=metadata, timeout=timeout)
                return json.loads(reply.prediction)
            except grpc.RpcError as exc:
                # TorchServe 0.12 answers a wrong or expired token with PERMISSION_DENIED.
                if exc.code() == grpc.StatusCode.PERMISSION_DENIED and attempt == 0:
                    continue  # the key may have been rotated: read the file again
                raise

    def close(self) -> None:
        self.channel.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

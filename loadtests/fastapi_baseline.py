"""The original write-up's FastAPI server, reproduced as the benchmark's baseline (not for serving).

    .venv/bin/python -m loadtests.fastapi_baseline --run runs/random-256 --port 8090

What it does is what that server did, on purpose, so that the benchmark compares against it honestly:

- one photo per request, handled inside an `async def` endpoint: the forward pass blocks the event loop, so
  concurrent requests run one after another;
- the model left in train mode (dropout on, batch norm updating its statistics from each photo), no `no_grad`,
  fp32, the default contiguous layout, torch's default threads;
- OpenCV decoding (`cv2.imdecode`, every pixel), BGR -> RGB, one `cv2.resize` to the model's input size (the only
  resize the model needs: a 12 MP photo is decoded whole, then shrunk), ImageNet normalisation.

It answers `POST /predictions/tagger` (the body is the photo, as TorchServe takes it; the Authorization header is
ignored) with the service's tag JSON, so the benchmark's closed-loop client drives it unchanged. `GET /ping`
answers {"status": "Healthy"}.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import requests
import torch
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from phototag.checkpoint import load_model
from phototag.taxonomy import logits_to_tags
from serving.ports import PortInUse, port_in_use, start_on_free_ports
from serving.process_group import stop_process_group

REPO = Path(__file__).resolve().parent.parent


def create_app(checkpoint: Path):
    """The FastAPI app of the original server, with the model of `checkpoint`."""
    model, taxonomy, _ = load_model(checkpoint)
    model.train()  # as the original server left it
    size = model.config.image_size
    mean = np.array(model.config.mean, dtype=np.float32) * 255
    std = np.array(model.config.std, dtype=np.float32) * 255
    app = FastAPI()

    @app.get("/ping")
    async def ping():
        return {"status": "Healthy"}

    @app.post("/predictions/tagger")
    async def predict(request: Request):
        data = await request.body()
        image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        if image is None:
            return JSONResponse({"error": "not an image", "code": 400}, status_code=400)
        image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
        image = cv2.resize(image, (size, size))
        x = torch.from_numpy((image.astype(np.float32) - mean) / std).permute(2, 0, 1).unsqueeze(0)
        logits = model(x)[0].detach()
        return logits_to_tags(logits.tolist(), taxonomy, "fastapi-baseline")

    return app


class FastApiBaseline:
    """The baseline server in a child process (uvicorn, one process), shaped like serving.torchserve_process's
    TorchServe for the benchmark: `start`, `stop`, `process`, `inference_url`, `key_file`. On a free port from
    serving.ports unless `port` is given (tried first); on another if that one is taken by the time uvicorn binds."""

    def __init__(self, workdir: Path, run: Path, port: int | None = None):
        self.workdir, self.run, self.port = workdir, run, port
        self.process: subprocess.Popen | None = None
        workdir.mkdir(parents=True, exist_ok=True)
        # The load generator sends TorchServe's bearer header; this server ignores it.
        self.key_file.write_text(json.dumps({"inference": {"key": "unused"}}))

    @property
    def inference_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def key_file(self) -> Path:
        return self.workdir / "key_file.json"

    def start(self, timeout: float = 120) -> FastApiBaseline:
        def start_on(ports: dict[str, int]) -> FastApiBaseline:
            self.port = ports["http"]
            return self._start_once(timeout)

        return start_on_free_ports(start_on, ["http"], f"FastAPI baseline in {self.workdir}",
                                   first={"http": self.port} if self.port else None)

    def _start_once(self, timeout: float) -> FastApiBaseline:
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        out = self.workdir / "server.out"
        with open(out, "wb") as sink:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "loadtests.fastapi_baseline", "--run", str(self.run), "--port", str(self.port)],
                cwd=REPO, env=env, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                text = out.read_text(errors="replace")
                clash = port_in_use(text)
                if clash:
                    raise PortInUse(clash, {"http": self.port})
                raise RuntimeError(f"the FastAPI baseline exited: {text[-2000:]}")
            try:
                if requests.get(f"{self.inference_url}/ping", timeout=2).ok:
                    return self
            except requests.RequestException:
                pass
            time.sleep(0.2)
        self.stop()
        raise TimeoutError(f"the FastAPI baseline did not answer /ping within {timeout} s")

    def stop(self) -> None:
        stop_process_group(self.process, [(signal.SIGTERM, 15), (signal.SIGKILL, 5)])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, required=True, help="training run (or random-init run) with model.pt")
    parser.add_argument("--port", type=int, default=8090, help="loopback port to serve on")
    args = parser.parse_args(argv)
    import uvicorn

    uvicorn.run(create_app(args.run / "model.pt"), host="127.0.0.1", port=args.port, log_level="warning",
                access_log=False)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

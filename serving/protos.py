"""Generate Python gRPC stubs from the .proto files shipped inside the installed TorchServe frontend jar.

    python -m serving.protos      # writes generated/inference_pb2*.py, generated/management_pb2*.py and
                                 # generated/open_inference_grpc_pb2*.py (Open Inference Protocol / KServe v2:
                                 # service org.pytorch.serve.grpc.openinference.GRPCInferenceService)
"""
from __future__ import annotations

import sys
import zipfile
from pathlib import Path

from client.stubs import GENERATED_DIR

PROTOS = ("inference.proto", "management.proto", "open_inference_grpc.proto")
IMPORTED = ("google/rpc/status.proto",)  # needed to compile; its Python module comes from googleapis-common-protos


def frontend_jar() -> Path:
    import ts  # the installed torchserve package

    return Path(ts.__file__).resolve().parent / "frontend" / "model-server.jar"


def generate(out_dir: Path = GENERATED_DIR) -> list[Path]:
    from grpc_tools import protoc

    proto_dir = out_dir / "protos"
    proto_dir.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(frontend_jar()) as jar:
        for name in PROTOS:
            (proto_dir / name).write_bytes(jar.read(f"proto/{name}"))
        for name in IMPORTED:
            (proto_dir / name).parent.mkdir(parents=True, exist_ok=True)
            (proto_dir / name).write_bytes(jar.read(name))
    include = Path(protoc.__file__).resolve().parent / "_proto"  # google/protobuf/*.proto
    for name in PROTOS:
        code = protoc.main(["protoc", f"-I{proto_dir}", f"-I{include}", f"--python_out={out_dir}",
                            f"--grpc_python_out={out_dir}", str(proto_dir / name)])
        if code != 0:
            raise SystemExit(f"protoc failed on {name}")
    return sorted(out_dir.glob("*_pb2*.py"))


if __name__ == "__main__":
    for path in generate():
        print(path.relative_to(Path.cwd()) if path.is_relative_to(Path.cwd()) else path)
    sys.exit(0)

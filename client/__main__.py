"""Command-line client of the tagger service.

    python -m client tag photo1.jpg photo2.png            # one JSON line per file (REST)
    python -m client tag --grpc photos/*.jpg               # the same over gRPC
    python -m client wait-ready --timeout 300              # block until the model has a READY worker
    python -m client key management                        # print a key, for curl: -H "Authorization: Bearer $(...)"
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from client.auth import DEFAULT_KEY_FILE, read_key
from client.rest import DEFAULT_INFERENCE_URL, DEFAULT_MANAGEMENT_URL, ServiceError, tag_image


def _tag(args) -> int:
    failures = 0
    tagger = None
    if args.grpc:
        from client.grpc_client import GrpcTagger  # needs the generated stubs (make setup)

        tagger = GrpcTagger(args.grpc_target, args.key_file)
    for path in args.files:
        record: dict = {"file": str(path)}
        try:
            data = path.read_bytes()
            if tagger:
                result = tagger.tag(data, args.model, args.version)
            else:
                result = tag_image(data, model=args.model, version=args.version, url=args.url,
                                   key_file=args.key_file, verify=str(args.ca_cert) if args.ca_cert else True)
            if "error" in result:
                failures += 1
            record.update(result)
        except (OSError, ServiceError) as exc:
            failures += 1
            record["error"] = str(exc)
        except Exception as exc:  # noqa: BLE001 - grpc.RpcError and connection errors: report per file, keep going
            failures += 1
            record["error"] = f"{type(exc).__name__}: {exc}"
        print(json.dumps(record, ensure_ascii=False), flush=True)
    return 1 if failures else 0


def _wait_ready(args) -> int:
    from client.ready import server_alive, wait_until_ready

    try:
        wait_until_ready(args.model, args.management_url, args.key_file, args.timeout,
                         alive=lambda: server_alive(args.pid_file))
    except (TimeoutError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"model {args.model} is READY")
    return 0


def _rotate_keys(args) -> int:
    import requests

    api_key = read_key("API", args.key_file)
    for kind in ("inference", "management"):
        response = requests.post(f"{args.management_url}/token?type={kind}", timeout=30,
                                 headers={"Authorization": f"Bearer {api_key}"})
        if response.status_code != 200:
            print(f"error: rotating the {kind} key: HTTP {response.status_code} {response.text[:200]}",
                  file=sys.stderr)
            return 1
    print(f"new inference and management keys written to {args.key_file}")
    return 0


def _key(args) -> int:
    print(read_key(args.kind, args.key_file))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m client", description=__doc__.split("\n")[0])
    parser.add_argument("--key-file", type=Path, default=DEFAULT_KEY_FILE,
                        help="TorchServe's key_file.json (default: ./key_file.json or $TAGGER_KEY_FILE)")
    parser.add_argument("--model", default="tagger", help="model name on the server")
    commands = parser.add_subparsers(dest="command", required=True)

    tag = commands.add_parser("tag", help="tag image files, one JSON line per file")
    tag.add_argument("files", nargs="+", type=Path, help="image files")
    tag.add_argument("--version", help="model version (default: the server's default version)")
    tag.add_argument("--url", default=DEFAULT_INFERENCE_URL, help="REST inference address (http or https)")
    tag.add_argument("--ca-cert", type=Path, help="for https: the certificate (or CA bundle) to trust")
    tag.add_argument("--grpc", action="store_true", help="use gRPC Predictions instead of REST")
    tag.add_argument("--grpc-target", default="127.0.0.1:7070", help="gRPC inference host:port")
    tag.set_defaults(run=_tag)

    ready = commands.add_parser("wait-ready", help="wait until the model has a READY worker")
    ready.add_argument("--management-url", default=DEFAULT_MANAGEMENT_URL, help="management API address")
    ready.add_argument("--timeout", type=float, default=300, help="seconds to wait")
    ready.add_argument("--pid-file", type=Path, default=None,
                       help="TorchServe's pid file (default: .model_server.pid in the temp dir); stop waiting if "
                            "that process is gone")
    ready.set_defaults(run=_wait_ready)

    rotate = commands.add_parser("rotate-keys", help="issue new inference and management keys (token API)")
    rotate.add_argument("--management-url", default=DEFAULT_MANAGEMENT_URL, help="management API address")
    rotate.set_defaults(run=_rotate_keys)

    key = commands.add_parser("key", help="print the current inference or management key")
    key.add_argument("kind", choices=["inference", "management"], help="which key")
    key.set_defaults(run=_key)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())

"""Where the generated gRPC stubs live: written by `python -m serving.protos` at setup time, read by the gRPC
clients. Kept apart from the clients so that the generator can name the folder before any stub exists."""
from __future__ import annotations

from pathlib import Path

GENERATED_DIR = Path(__file__).resolve().parent.parent / "generated"

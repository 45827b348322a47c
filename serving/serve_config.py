"""The config TorchServe is started with: config.properties plus the models of the last snapshot, if any.

TorchServe snapshots its registered models, versions and defaults after every management change
(logs/config/*.cfg), but a server started with --ts-config ignores them, so a restart would silently
fall back to `load_models`. Starting from a whole snapshot instead would also bring back stale settings. So the
settings always come from config.properties, and only the snapshot's `model_snapshot` entry is carried over.

    python -m serving.serve_config --out build/serve.properties [--snapshots logs/config] [--fresh]
"""
from __future__ import annotations

import argparse
from pathlib import Path

SNAPSHOT_KEY = "model_snapshot"


def latest_snapshot(folder: Path) -> Path | None:
    # TorchServe writes <timestamp>-startup.cfg, -snapshot.cfg (after each change) and -shutdown.cfg; the
    # timestamp prefix sorts them in time.
    snapshots = [p for p in sorted(folder.glob("*.cfg")) if snapshot_line(p)]
    return snapshots[-1] if snapshots else None


def snapshot_line(snapshot: Path) -> str | None:
    for line in snapshot.read_text().splitlines():
        if line.startswith(f"{SNAPSHOT_KEY}="):
            return line  # already in .properties escaping, as TorchServe wrote it
    return None


def build_config(base: Path, snapshots: Path, fresh: bool = False) -> tuple[str, Path | None]:
    lines = [line for line in base.read_text().splitlines() if not line.startswith(f"{SNAPSHOT_KEY}=")]
    snapshot = None if fresh else latest_snapshot(snapshots)
    models = snapshot_line(snapshot) if snapshot else None
    if models:
        lines += ["", f"# models, versions and defaults restored from {snapshot}", models]
    return "\n".join(lines) + "\n", snapshot if models else None


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--base", type=Path, default=Path("config.properties"), help="the settings to serve with")
    parser.add_argument("--snapshots", type=Path, default=Path("logs/config"), help="TorchServe's snapshot folder")
    parser.add_argument("--out", type=Path, required=True, help="where to write the combined config")
    parser.add_argument("--fresh", action="store_true", help="ignore snapshots: load only config.properties' models")
    args = parser.parse_args(argv)
    text, snapshot = build_config(args.base, args.snapshots, args.fresh)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    source = f"models restored from {snapshot}" if snapshot else "models from load_models"
    print(f"serving config {args.out}: {source}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

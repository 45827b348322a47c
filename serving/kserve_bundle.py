"""Lay out a model archive the way KServe's TorchServe runtime expects it in storage (`make kserve-bundle`):

    OUT/config/config.properties    deploy/kserve/config.properties, model_snapshot rewritten for the archive
    OUT/model-store/<archive>.mar   the archive; with --model-config, repacked with that model-config.yaml

    python -m serving.kserve_bundle --mar model_store/tagger.mar --out build/kserve \
        --model-config deploy/kserve/model-config.gpu.yaml

Upload OUT/ to the InferenceService's storageUri (deploy/kserve/inferenceservice.yaml); KServe mounts it at
/mnt/models. model_snapshot names the archive's model and version (from MAR-INF/MANIFEST.json) with the worker
and batch settings of the model-config.yaml packed inside the bundled archive, so the snapshot and the archive
never disagree. The archive from `make archive` carries the CPU settings (handler/model-config.yaml);
--model-config swaps in the pod's (one worker per GPU, bigger batches), the handler's `handler:` settings included.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import zipfile
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
DEFAULT_TEMPLATE = REPO / "deploy" / "kserve" / "config.properties"
KSERVE_MODEL_STORE = "/mnt/models/model-store"
# model-config.yaml keys that TorchServe's model snapshot also carries, and their defaults for a GPU pod.
SNAPSHOT_KEYS = {"minWorkers": 1, "maxWorkers": 1, "batchSize": 1, "maxBatchDelay": 100, "responseTimeout": 120,
                 "startupTimeout": 120}


class BundleError(RuntimeError):
    pass


def read_archive(mar: Path) -> tuple[dict, dict]:
    """(MANIFEST.json's "model" section, the packed model-config.yaml or {}) of a .mar archive."""
    try:
        with zipfile.ZipFile(mar) as archive:
            manifest = json.loads(archive.read("MAR-INF/MANIFEST.json"))
            config_name = manifest.get("model", {}).get("configFile")
            config = yaml.safe_load(archive.read(config_name)) if config_name else {}
    except (OSError, KeyError, zipfile.BadZipFile, json.JSONDecodeError, yaml.YAMLError) as exc:
        raise BundleError(f"{mar}: not a readable TorchServe model archive ({exc})") from None
    model = manifest.get("model") or {}
    if not model.get("modelName") or not model.get("modelVersion"):
        raise BundleError(f"{mar}: MAR-INF/MANIFEST.json names no modelName/modelVersion")
    return model, config or {}


def model_snapshot(mar_name: str, model: dict, config: dict) -> dict:
    """TorchServe's model_snapshot document: this one model version, the default, loaded at start."""
    settings = {key: int(config.get(key, default)) for key, default in SNAPSHOT_KEYS.items()}
    entry = {"defaultVersion": True, "marName": mar_name, **settings}
    return {"name": "startup.cfg", "modelCount": 1,
            "models": {model["modelName"]: {str(model["modelVersion"]): entry}}}


def render_config(template: str, snapshot: dict) -> str:
    """The template with its model_snapshot line replaced (or added); every other line kept as written."""
    line = "model_snapshot=" + json.dumps(snapshot, separators=(",", ":"))
    lines, replaced = [], False
    for text in template.splitlines():
        if not text.lstrip().startswith("#") and text.split("=", 1)[0].strip() == "model_snapshot":
            text, replaced = line, True
        lines.append(text)
    if not replaced:
        lines.append(line)
    return "\n".join(lines) + "\n"


def parse_properties(text: str) -> dict[str, str]:
    """key=value lines (comments and blank lines skipped): enough for the flat file above."""
    result = {}
    for text_line in text.splitlines():
        stripped = text_line.strip()
        if stripped and not stripped.startswith(("#", "!")) and "=" in stripped:
            key, value = stripped.split("=", 1)
            result[key.strip()] = value.strip()
    return result


def read_model_config(path: Path) -> dict:
    """A model-config.yaml to bundle: a mapping whose snapshot settings are whole numbers."""
    try:
        config = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise BundleError(f"{path}: not a readable model-config.yaml ({exc})") from None
    if not isinstance(config, dict):
        raise BundleError(f"{path}: a model-config.yaml is a mapping of settings, got {type(config).__name__}")
    for key in SNAPSHOT_KEYS:
        if key in config and not (isinstance(config[key], int) and config[key] > 0):
            raise BundleError(f"{path}: {key} must be a positive whole number, got {config[key]!r}")
    if config.get("minWorkers", 1) > config.get("maxWorkers", config.get("minWorkers", 1)):
        raise BundleError(f"{path}: minWorkers {config['minWorkers']} is more than maxWorkers {config['maxWorkers']}")
    return config


def repack_archive(mar: Path, target: Path, model_config: Path) -> None:
    """Copy the archive to target with its packed model-config.yaml replaced by model_config's bytes.

    TorchServe reads the `handler:` section (device, decoder, compile, ...) from the archive, and the worker and
    batch settings from the snapshot: both must come from the same file.
    """
    with zipfile.ZipFile(mar) as source:
        config_name = json.loads(source.read("MAR-INF/MANIFEST.json")).get("model", {}).get("configFile")
        if not config_name:
            raise BundleError(f"{mar}: packed without a model-config.yaml (torch-model-archiver --config-file), "
                              f"so --model-config has nothing to replace")
        with zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as repacked:
            for item in source.infolist():
                data = Path(model_config).read_bytes() if item.filename == config_name else source.read(item)
                repacked.writestr(item, data)


def build_bundle(mar: Path, out: Path, template: Path = DEFAULT_TEMPLATE, model_config: Path | None = None) -> Path:
    """Write OUT/config/config.properties and OUT/model-store/<mar>; returns OUT. An earlier bundle's archives are
    removed (KServe's wrapper refuses a model store with more than one). With model_config, the bundled archive
    and the snapshot carry that model-config.yaml instead of the one packed by `make archive`."""
    mar, out = Path(mar), Path(out)
    if not mar.is_file():
        raise BundleError(f"{mar} not found: build it with `make archive` first")
    model, config = read_archive(mar)
    if model_config is not None:
        config = read_model_config(model_config)
    text = render_config(Path(template).read_text(encoding="utf-8"), model_snapshot(mar.name, model, config))
    properties = parse_properties(text)
    if properties.get("model_store") != KSERVE_MODEL_STORE:
        raise BundleError(f"{template}: model_store must be {KSERVE_MODEL_STORE} (where KServe mounts the bundle)")
    for folder in ("config", "model-store"):
        (out / folder).mkdir(parents=True, exist_ok=True)
    for old in (out / "model-store").glob("*.mar"):
        old.unlink()
    (out / "config" / "config.properties").write_text(text, encoding="utf-8")
    if model_config is None:
        shutil.copy2(mar, out / "model-store" / mar.name)
    else:
        repack_archive(mar, out / "model-store" / mar.name, model_config)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m serving.kserve_bundle", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mar", type=Path, default=Path("model_store/tagger.mar"),
                        help="model archive to bundle (default: %(default)s)")
    parser.add_argument("--out", type=Path, default=Path("build/kserve"),
                        help="bundle folder to write (default: %(default)s)")
    parser.add_argument("--config", type=Path, default=DEFAULT_TEMPLATE,
                        help="KServe config.properties template (default: deploy/kserve/config.properties)")
    parser.add_argument("--model-config", type=Path, default=None,
                        help="model-config.yaml for the pod (e.g. deploy/kserve/model-config.gpu.yaml); default: "
                             "the one packed in the archive")
    args = parser.parse_args(argv)
    try:
        out = build_bundle(args.mar, args.out, args.config, args.model_config)
    except BundleError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    model, config = read_archive(out / "model-store" / args.mar.name)
    for path in sorted(p for p in out.rglob("*") if p.is_file()):
        print(path)
    settings = ", ".join(f"{key} {config[key]}" for key in ("minWorkers", "batchSize", "startupTimeout")
                         if key in config)
    print(f"bundle for {model['modelName']} {model['modelVersion']} in {out} ({settings}, from "
          f"{args.model_config or 'the archive'}): upload this folder to the InferenceService's storageUri "
          f"(deploy/kserve/inferenceservice.yaml)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

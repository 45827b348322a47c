"""Roll a new model version out through TorchServe's management API, checked before it serves; roll it back.

    python -m serving.rollout rollout --version 2.0 --check-data data/demo/holdout/labels.csv
    python -m serving.rollout rollback                  # the default before the last rollout serves again
    python -m serving.rollout status

A rollout registers the version's archive (`tagger-2.0.mar`, as `make archive VERSION=2.0` names it) next to the
serving default, waits for its workers, and asks it about a few known photos at /predictions/tagger/2.0: every
answer must be a complete tag JSON from version 2.0, and where the photos carry labels it must not get clearly
more of them wrong than the current default does. Only then does 2.0 become the default. The previous version
stays registered (its workers warm) so that a rollback is one call. A rollout that fails leaves the old default
serving, says why, and unregisters the version it registered.

The defaults in order are kept in a small state file (--state), so a rollback knows what served before; without
it the highest registered version below the current default is taken.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import requests

from client.auth import DEFAULT_KEY_FILE, KeyFileError
from client.rest import DEFAULT_INFERENCE_URL, DEFAULT_MANAGEMENT_URL, ServiceError, call, tag_image
from phototag.labels_csv import LabelCsvError, read_labels_csv
from phototag.taxonomy import SINGLE, Taxonomy

MODEL = "tagger"
DEFAULT_STATE = Path("logs/rollout.json")
DEFAULT_CHECK_COUNT = 8
# A new version may get this share more of the checked decisions (3 heads + 8 objects per photo) wrong than the
# current default before the rollout is refused. Small samples are noisy; this catches a broken model (scrambled
# heads, wrong preprocessing), not a slightly worse one: that is what `make compare` is for.
DEFAULT_MAX_DROP = 0.15


class RolloutError(RuntimeError):
    """The rollout or rollback cannot go on; the message says why and what state the server was left in."""


def archive_name(version: str, model: str = MODEL) -> str:
    """The archive `make archive VERSION=...` writes: tagger.mar for 1.0, tagger-VERSION.mar otherwise."""
    return f"{model}.mar" if version == "1.0" else f"{model}-{version}.mar"


def version_key(version: str) -> tuple:
    """Orders '1.0' < '1.10' < '2.0' (numeric parts compared as numbers)."""
    return tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in version.replace("-", ".").split("."))


@dataclass
class Server:
    """The management and inference endpoints of one TorchServe and its key file."""
    management_url: str = DEFAULT_MANAGEMENT_URL
    inference_url: str = DEFAULT_INFERENCE_URL
    key_file: Path = DEFAULT_KEY_FILE
    model: str = MODEL

    def manage(self, method: str, path: str, timeout: float = 60) -> requests.Response:
        return call(method, f"{self.management_url}{path}", "management", self.key_file, timeout=timeout)

    def default_version(self) -> str | None:
        """The version /predictions/MODEL answers with; None when the model is not registered at all."""
        response = self.manage("GET", f"/models/{self.model}")
        if response.status_code == 404:
            return None
        _expect(response, "describe the model")
        return str(response.json()[0]["modelVersion"])

    def versions(self) -> dict[str, dict]:
        """Every registered version -> its description (workers included)."""
        response = self.manage("GET", f"/models/{self.model}/all")
        if response.status_code == 404:
            return {}
        _expect(response, "list the versions")
        return {str(d["modelVersion"]): d for d in response.json()}

    def workers(self, version: str) -> list[dict]:
        response = self.manage("GET", f"/models/{self.model}/{version}")
        _expect(response, f"describe version {version}")
        return response.json()[0].get("workers", [])

    def set_default(self, version: str) -> None:
        _expect(self.manage("PUT", f"/models/{self.model}/{version}/set-default"), f"make {version} the default")

    def unregister(self, version: str) -> None:
        response = self.manage("DELETE", f"/models/{self.model}/{version}")
        if response.status_code not in (200, 404):  # 404: TorchServe already dropped a version whose workers died
            _expect(response, f"unregister {version}")

    def tag(self, data: bytes, version: str | None = None) -> dict:
        return tag_image(data, model=self.model, version=version, url=self.inference_url, key_file=self.key_file)


def _expect(response: requests.Response, what: str) -> None:
    if response.status_code != 200:
        raise RolloutError(f"cannot {what}: HTTP {response.status_code} {_message(response)}")


def _message(response: requests.Response) -> str:
    try:
        return str(response.json().get("message", response.text))
    except ValueError:
        return response.text.strip()[:300]


# ---- the check of a version on known photos ------------------------------------------------------------------------
@dataclass(frozen=True)
class KnownPhoto:
    filename: str
    data: bytes
    labels: dict


def known_photos(csv_path: Path, images: Path | None, count: int, taxonomy: Taxonomy) -> list[KnownPhoto]:
    """The first `count` readable photos of a labeled CSV (the original format)."""
    image_dir = images or csv_path.parent / "images"
    photos = []
    for row in read_labels_csv(csv_path, taxonomy):
        path = image_dir / row.filename
        if path.is_file():
            photos.append(KnownPhoto(row.filename, path.read_bytes(), row.labels))
        if len(photos) == count:
            break
    if not photos:
        raise RolloutError(f"no photos of {csv_path} found in {image_dir}: nothing to check a version with")
    return photos


def answer_problem(answer: dict, version: str, taxonomy: Taxonomy) -> str | None:
    """What is wrong with one answer of the version being checked; None when it is a complete tag JSON of it."""
    if "error" in answer:
        return f"refused: {answer.get('error')}"
    if str(answer.get("model_version")) != version:
        return f"answered by model_version {answer.get('model_version')!r}, not {version}"
    for group in taxonomy.groups:
        part = answer.get(group.name)
        if not isinstance(part, dict) or set(part.get("scores", {})) != set(group.class_ids):
            return f"group {group.name!r} missing or with other classes: {part!r}"[:300]
        if not all(isinstance(s, (int, float)) and 0.0 <= s <= 1.0 for s in part["scores"].values()):
            return f"group {group.name!r} has scores outside [0, 1]"
        chosen = [part.get("label")] if group.kind == SINGLE else part.get("labels", [])
        if not set(chosen) <= set(group.class_ids):
            return f"group {group.name!r} has unknown labels {chosen}"
    return None


def wrong_decisions(answer: dict, labels: dict, taxonomy: Taxonomy) -> tuple[int, int]:
    """(wrong, total) decisions of one answer: one per single-choice head, one per object."""
    wrong = total = 0
    for group in taxonomy.groups:
        if group.kind == SINGLE:
            total += 1
            wrong += answer[group.name]["label"] != labels[group.name]
        else:
            present, tagged = set(labels[group.name]), set(answer[group.name]["labels"])
            total += group.size
            wrong += len(present ^ tagged)
    return wrong, total


def check_version(server: Server, version: str, baseline: str | None, photos: list[KnownPhoto],
                  taxonomy: Taxonomy, max_drop: float) -> str:
    """Ask `version` (and the current default, for comparison) about the known photos; RolloutError on a problem.
    Returns a one-line summary."""
    new_wrong = old_wrong = total = 0
    for photo in photos:
        try:
            answer = server.tag(photo.data, version)
        except ServiceError as exc:
            raise RolloutError(f"{version} failed on known photo {photo.filename}: {exc}") from None
        problem = answer_problem(answer, version, taxonomy)
        if problem:
            raise RolloutError(f"{version} gave a bad answer for known photo {photo.filename}: {problem}")
        wrong, n = wrong_decisions(answer, photo.labels, taxonomy)
        new_wrong, total = new_wrong + wrong, total + n
        if baseline:
            old_wrong += wrong_decisions(server.tag(photo.data, baseline), photo.labels, taxonomy)[0]
    new_error, old_error = new_wrong / total, old_wrong / total
    summary = f"{len(photos)} known photos: {version} wrong on {new_wrong}/{total} decisions"
    if baseline:
        summary += f", {baseline} on {old_wrong}/{total}"
        if new_error > old_error + max_drop:
            raise RolloutError(f"{summary}: {version} is worse than {baseline} by more than --max-drop {max_drop}")
    return summary


# ---- rollout and rollback ------------------------------------------------------------------------------------------
def _wait_for_workers(server: Server, version: str, timeout: float) -> int:
    deadline = time.monotonic() + timeout
    while True:
        workers = server.workers(version)
        if workers and all(w.get("status") == "READY" for w in workers):
            return len(workers)
        if time.monotonic() > deadline:
            states = ", ".join(str(w.get("status")) for w in workers) or "none"
            raise RolloutError(f"workers of {version} not READY after {timeout:.0f} s (workers: {states})")
        time.sleep(1.0)


def rollout(server: Server, version: str, photos: list[KnownPhoto], taxonomy: Taxonomy, *, workers: int | None = None,
            timeout: float = 300, max_drop: float = DEFAULT_MAX_DROP, state: Path | None = None,
            log=print) -> str:
    """Make `version` the default after it passed the checks; returns the previous default (or None)."""
    previous = server.default_version()
    if previous == version:
        log(f"{version} is already the default: nothing to do")
        return previous
    registered_here = version not in server.versions()
    try:
        if registered_here:
            archive = archive_name(version, server.model)
            log(f"registering {archive} (the default stays {previous}) ...")
            query = f"url={archive}&synchronous=true" + (f"&initial_workers={workers}" if workers else "")
            response = server.manage("POST", f"/models?{query}", timeout=timeout)
            if response.status_code != 200:
                raise RolloutError(f"registering {archive} failed: HTTP {response.status_code} {_message(response)}"
                                   " (the handler's error is in the server's logs/model_log.log)")
            if version not in server.versions():
                raise RolloutError(f"{archive} did not register version {version}: its manifest names another "
                                   f"version (build it with make archive VERSION={version})")
        count = _wait_for_workers(server, version, timeout)
        log(f"{version}: {count} worker(s) READY")
        log("checked " + check_version(server, version, previous, photos, taxonomy, max_drop))
        server.set_default(version)
        served = server.tag(photos[0].data).get("model_version")
        if str(served) != version:
            if previous:
                server.set_default(previous)
            raise RolloutError(f"after set-default /predictions/{server.model} still answers {served}")
    except (RolloutError, ServiceError, requests.RequestException) as exc:
        if registered_here and server.default_version() != version:
            server.unregister(version)
            exc = RolloutError(f"{exc}; {version} unregistered")
        raise RolloutError(f"rollout of {version} failed: {exc}. "
                           f"{previous or 'no version'} is still the default.") from None
    _record(state, server, version)
    log(f"{version} is the default now" + (f"; {previous} stays registered (make rollback)" if previous else ""))
    return previous


def rollback(server: Server, to: str | None = None, state: Path | None = None, log=print) -> str:
    """Make the version that served before the current default the default again; returns it."""
    current = server.default_version()
    registered = server.versions()
    if current is None:
        raise RolloutError(f"model {server.model} is not registered")
    target = to
    if target is None:
        history = [v for v in _history(state, server) if v in registered and v != current]
        earlier = sorted((v for v in registered if version_key(v) < version_key(current)), key=version_key)
        target = history[-1] if history else (earlier[-1] if earlier else None)
    if target is None:
        raise RolloutError(f"no version to roll back to: {current} is the default and registered are "
                           f"{', '.join(sorted(registered, key=version_key))}")
    if target not in registered:
        raise RolloutError(f"{target} is not registered (registered: {', '.join(sorted(registered, key=version_key))})")
    workers = server.workers(target)
    if not any(w.get("status") == "READY" for w in workers):
        raise RolloutError(f"{target} has no READY worker; {current} stays the default")
    server.set_default(target)
    _record(state, server, target, rolled_back_from=current)
    log(f"{target} is the default again; {current} stays registered")
    return target


# ---- the state file: the defaults in order ---------------------------------------------------------------------------
def _history(state: Path | None, server: Server) -> list[str]:
    if not state or not state.is_file():
        return []
    try:
        data = json.loads(state.read_text())
    except ValueError:
        return []
    if data.get("management_url") != server.management_url or data.get("model") != server.model:
        return []  # the file belongs to another server
    return [str(v) for v in data.get("defaults", [])]


def _record(state: Path | None, server: Server, version: str, rolled_back_from: str | None = None) -> None:
    if not state:
        return
    defaults = _history(state, server)
    if rolled_back_from and defaults and defaults[-1] == rolled_back_from:
        defaults.pop()  # rolling back steps back through the history rather than adding to it
    if not defaults or defaults[-1] != version:
        defaults.append(version)
    state.parent.mkdir(parents=True, exist_ok=True)
    state.write_text(json.dumps({"management_url": server.management_url, "model": server.model,
                                 "defaults": defaults[-20:]}, indent=2) + "\n")


def status(server: Server) -> str:
    default = server.default_version()
    lines = []
    for version, description in sorted(server.versions().items(), key=lambda kv: version_key(kv[0])):
        states = ", ".join(w.get("status", "?") for w in description.get("workers", [])) or "no workers"
        lines.append(f"{version:<8} {'default' if version == default else '':<8} {description.get('modelUrl')}  "
                     f"workers: {states}")
    return "\n".join(lines) or f"model {server.model} is not registered"


# ---- command line --------------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    # The server options belong to every command, after its name: `make rollout ROLLOUT_ARGS="--key-file ..."`.
    server = argparse.ArgumentParser(add_help=False)
    server.add_argument("--management-url", default=DEFAULT_MANAGEMENT_URL,
                        help=f"TorchServe management API (default: {DEFAULT_MANAGEMENT_URL})")
    server.add_argument("--inference-url", default=DEFAULT_INFERENCE_URL,
                        help=f"TorchServe inference API (default: {DEFAULT_INFERENCE_URL})")
    server.add_argument("--key-file", type=Path, default=DEFAULT_KEY_FILE,
                        help="TorchServe's key_file.json (default: ./key_file.json or $TAGGER_KEY_FILE)")
    server.add_argument("--model", default=MODEL, help=f"model name (default: {MODEL})")
    server.add_argument("--state", type=Path, default=DEFAULT_STATE,
                        help=f"file keeping the defaults in order, for rollback (default: {DEFAULT_STATE})")
    parser = argparse.ArgumentParser(prog="python -m serving.rollout", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    out = commands.add_parser("rollout", parents=[server], help="register, check and make a version the default")
    out.add_argument("--version", required=True, help="version to roll out; its archive is tagger-VERSION.mar "
                                                       "(tagger.mar for 1.0) in the server's model store")
    out.add_argument("--check-data", type=Path, required=True,
                     help="labeled CSV (original format) of known photos to check the version with")
    out.add_argument("--check-images", type=Path, help="folder of those photos (default: CSV folder/images)")
    out.add_argument("--check-count", type=int, default=DEFAULT_CHECK_COUNT,
                     help=f"how many known photos to check (default: {DEFAULT_CHECK_COUNT})")
    out.add_argument("--max-drop", type=float, default=DEFAULT_MAX_DROP,
                     help="refuse the version when its share of wrong decisions on the known photos exceeds the "
                          f"current default's by more than this (default: {DEFAULT_MAX_DROP})")
    out.add_argument("--workers", type=int,
                     help="workers of the new version (default: the archive's model-config.yaml)")
    out.add_argument("--timeout", type=float, default=300,
                     help="seconds to wait for the registration and the workers (default: 300)")
    back = commands.add_parser("rollback", parents=[server], help="make the previous default the default again")
    back.add_argument("--to", metavar="VERSION", help="this version instead of the previous default")
    commands.add_parser("status", parents=[server], help="registered versions, the default and their workers")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Exit code 0 on success, 1 when the rollout or rollback was refused (the old default serves), 2 on bad input."""
    args = build_parser().parse_args(argv)
    server = Server(args.management_url.rstrip("/"), args.inference_url.rstrip("/"), args.key_file, args.model)
    try:
        if args.command == "rollout":
            taxonomy = Taxonomy.load()
            photos = known_photos(args.check_data, args.check_images, args.check_count, taxonomy)
            rollout(server, args.version, photos, taxonomy, workers=args.workers, timeout=args.timeout,
                    max_drop=args.max_drop, state=args.state)
        elif args.command == "rollback":
            rollback(server, args.to, args.state)
        else:
            print(status(server))
    except RolloutError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except requests.ConnectionError:  # before OSError, which requests' errors derive from
        print(f"error: cannot reach TorchServe at {args.management_url}: is it running (make serve)?", file=sys.stderr)
        return 2
    except (KeyFileError, LabelCsvError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

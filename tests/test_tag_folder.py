"""Bulk tagging of a photo folder (client.tag_folder) against a real TorchServe with token auth: every photo once,
refusals recorded with the server's reason, the CSV readable by the training reader, resume after an interruption,
retries of transient failures and of a refused (rotated) key, gRPC, and the command line."""
from __future__ import annotations

import json
import shutil
import threading
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from client.grpc_client import GrpcTagger
from client.rest import ServiceError
from client.tag_folder import GIVE_UP_AFTER, build_parser, rest_tagger, tag_folder
from phototag.taxonomy import Taxonomy
from tests.conftest import PYTHON, run
from training.labels_csv import read_labels_csv

TAXONOMY = Taxonomy.load()
ANSWER_KEYS = {"file", "status", "time_of_day", "season", "terrain", "objects", "tags", "model_version"}
REFUSED = {"day2/broken.jpg": "truncated", "day2/fake.jpg": "not_an_image"}


@dataclass
class PhotoFolder:
    root: Path
    names: dict[bytes, str]  # the bytes of every file that should be sent -> its relative name

    @property
    def sent(self) -> list[str]:
        return sorted(self.names.values())

    @property
    def good(self) -> list[str]:
        return [name for name in self.sent if name not in REFUSED]


@pytest.fixture
def folder(tiny_dataset, tmp_path) -> PhotoFolder:
    """Nested real photos, an upper-case .JPG, a truncated JPEG, text named .jpg, non-images, hidden files and a
    hidden folder."""
    images = sorted((tiny_dataset.parent / "images").iterdir())
    jpegs = [p for p in images if p.suffix == ".jpg"]
    root = tmp_path / "photos"
    files = {f"day1/{images[0].name}": images[0].read_bytes(), f"day1/{images[1].name}": images[1].read_bytes(),
             f"day1/drone/{images[2].name}": images[2].read_bytes(),
             f"day1/drone/{images[3].name}": images[3].read_bytes(),
             "day2/IMG_0004.JPG": jpegs[4].read_bytes(),
             "day2/broken.jpg": jpegs[5].read_bytes()[: jpegs[5].stat().st_size // 2],
             "day2/fake.jpg": b"not a photo, just a note\n"}
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    (root / "notes.txt").write_text("route of the search party\n")
    (root / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    (root / "day1" / "._IMG_0001.JPG").write_bytes(b"\x00\x05\x16\x07")  # macOS metadata, not a photo
    (root / ".thumbnails").mkdir()
    shutil.copy(images[6], root / ".thumbnails" / images[6].name)
    assert len(set(files.values())) == len(files)  # the bytes tell which file a tagger was given
    return PhotoFolder(root, {data: name for name, data in files.items()})


class Recording:
    """Wraps a tagger and counts, per file name, how often it was called."""

    def __init__(self, tagger, folder: PhotoFolder, before=None):
        self.tagger, self.names, self.before = tagger, folder.names, before
        self.calls: Counter = Counter()
        self.lock = threading.Lock()

    def __call__(self, data: bytes) -> dict:
        name = self.names[data]
        with self.lock:
            self.calls[name] += 1
            count = self.calls[name]
        if self.before:
            self.before(name, count)
        return self.tagger(data)


def make_tagger(server, transport: str, key_file=None):
    key_file = key_file or server.key_file
    if transport == "rest":
        return rest_tagger(server.inference_url, key_file), lambda: None
    grpc_tagger = GrpcTagger(server.grpc_target, key_file)
    return grpc_tagger.tag, grpc_tagger.close


def read_jsonl(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "tags.jsonl").read_text(encoding="utf-8").splitlines()]


def expected_labels(record: dict) -> dict:
    return {"time_of_day": record["time_of_day"]["label"], "season": record["season"]["label"],
            "terrain": record["terrain"]["label"], "objects": sorted(record["objects"]["labels"])}


def check_outputs(out: Path, folder: PhotoFolder) -> list[dict]:
    """tags.jsonl has one valid line per photo sent, tags.csv one row per tagged photo that matches it."""
    records = read_jsonl(out)
    assert [r["file"] for r in records] == folder.sent
    for record in records:
        if record["file"] in REFUSED:
            assert record["status"] == "failed" and record["reason"] == REFUSED[record["file"]], record
            assert record["http_status"] == 400 and record["error"], record
        else:
            assert record["status"] == "ok" and set(record) == ANSWER_KEYS, record
    header = (out / "tags.csv").read_text(encoding="utf-8").splitlines()[0]
    assert header == ";".join(TAXONOMY.csv_columns())
    assert header.startswith("Названия;Время суток;Время года;Местность;Авиа;")
    rows = read_labels_csv(out / "tags.csv", TAXONOMY)
    assert [row.filename for row in rows] == folder.good
    by_file = {r["file"]: r for r in records}
    for row in rows:
        assert {**row.labels, "objects": sorted(row.labels["objects"])} == expected_labels(by_file[row.filename])
    return records


@pytest.mark.parametrize("transport", ["rest", "grpc"])
def test_tags_every_photo_once_and_records_refusals(server, folder, tmp_path, transport):
    tagger, close = make_tagger(server, transport)
    recording = Recording(tagger, folder)
    try:
        summary = tag_folder(folder.root, tmp_path / "out", tagger=recording, progress=False)
    finally:
        close()
    assert recording.calls == Counter(folder.sent)  # once each; no notes.txt, .DS_Store, ._*.JPG, hidden folder
    assert (summary.tagged, summary.resumed) == (len(folder.good), 0)
    assert summary.failed == Counter(REFUSED.values())
    assert summary.skipped == Counter({"not an image": 2, "hidden file": 1})
    check_outputs(tmp_path / "out", folder)


def test_interrupted_run_resumes_without_sending_photos_again(server, folder, tmp_path):
    out, tagger, done = tmp_path / "out", rest_tagger(server.inference_url, server.key_file), 3

    def interrupt_after_three(name, count):
        if sum(first.calls.values()) > done:
            raise KeyboardInterrupt

    first = Recording(tagger, folder, before=interrupt_after_three)
    with pytest.raises(KeyboardInterrupt):
        tag_folder(folder.root, out, tagger=first, concurrency=1, progress=False)
    recorded = read_jsonl(out)
    assert [r["file"] for r in recorded] == folder.sent[:done]
    assert all(r["status"] == "ok" for r in recorded)
    with open(out / "tags.jsonl", "a", encoding="utf-8") as log:
        log.write('{"file": "day2/fake.jpg", "status": "o')  # the line a kill cut short

    second = Recording(tagger, folder)
    summary = tag_folder(folder.root, out, tagger=second, progress=False)
    assert second.calls == Counter(folder.sent[done:])
    assert (summary.resumed, summary.tagged) == (done, len(folder.good) - done)
    check_outputs(out, folder)

    # Only the failures are sent again, and recorded again.
    third = Recording(tagger, folder)
    summary = tag_folder(folder.root, out, tagger=third, progress=False)
    assert third.calls == Counter(list(REFUSED))
    assert (summary.resumed, summary.tagged, summary.failed) == (len(folder.good), 0, Counter(REFUSED.values()))
    check_outputs(out, folder)


def test_transient_failures_are_retried_and_recorded_when_they_persist(server, folder, tmp_path):
    unavailable = '{"code": 503, "type": "ServiceUnavailableException", "message": "Model tagger has no worker"}'
    always_down = folder.good[0]

    def flaky(name, count):
        if name == always_down:
            raise ServiceError(503, unavailable)
        if count == 1:
            raise requests.ConnectionError("connection reset") if name == folder.good[1] \
                else ServiceError(503, unavailable)

    recording = Recording(rest_tagger(server.inference_url, server.key_file), folder, before=flaky)
    summary = tag_folder(folder.root, tmp_path / "out", tagger=recording, retries=2, backoff=0.01, progress=False)
    assert recording.calls == Counter({name: 3 if name == always_down else 2 for name in folder.sent})
    assert summary.tagged == len(folder.good) - 1
    assert summary.failed == Counter({**Counter(REFUSED.values()), "http_503": 1})
    [down] = [r for r in read_jsonl(tmp_path / "out") if r["file"] == always_down]
    assert down["status"] == "failed" and down["http_status"] == 503 and "no worker" in down["error"]


@pytest.mark.parametrize("transport", ["rest", "grpc"])
def test_a_refused_key_is_read_again_from_the_key_file(server, folder, tmp_path, transport):
    """The key file still holds an old inference key; TorchServe's rewrite of the file arrives a moment later."""
    key_file = tmp_path / "key_file.json"
    keys = json.loads(server.key_file.read_text())
    key_file.write_text(json.dumps({**keys, "inference": {**keys["inference"], "key": "expired"}}))
    rotation = threading.Timer(0.5, lambda: shutil.copy(server.key_file, key_file))
    refused = Counter()
    tagger, close = make_tagger(server, transport, key_file)

    def counting_refusals(data):
        try:
            return tagger(data)
        except Exception as exc:
            refused[type(exc).__name__] += 1
            raise

    rotation.start()
    try:
        summary = tag_folder(folder.root, tmp_path / "out", tagger=counting_refusals, backoff=0.2, progress=False)
    finally:
        rotation.cancel()
        close()
    assert refused, "the stale key was never refused"
    assert summary.tagged == len(folder.good) and summary.failed == Counter(REFUSED.values())


def test_stops_early_when_the_server_is_unreachable(tmp_path):
    root = tmp_path / "photos"
    root.mkdir()
    for i in range(GIVE_UP_AFTER + 5):
        (root / f"{i:03d}.jpg").write_bytes(b"\xff\xd8\xff%d" % i)

    def down(data):
        raise requests.ConnectionError("Connection refused")

    summary = tag_folder(root, tmp_path / "out", tagger=down, concurrency=1, retries=1, backoff=0, progress=False)
    assert summary.gave_up and summary.failed == Counter({"connection": GIVE_UP_AFTER})
    assert [r["reason"] for r in read_jsonl(tmp_path / "out")] == ["connection"] * GIVE_UP_AFTER


def test_csv_rows_use_the_original_codes(tmp_path):
    (tmp_path / "photos" / "sub").mkdir(parents=True)
    (tmp_path / "photos" / "sub" / "a.jpg").write_bytes(b"\xff\xd8")
    answer = {"time_of_day": {"label": "night"}, "season": {"label": "winter"}, "terrain": {"label": "forest"},
              "objects": {"labels": ["drone", "dog_handler"]}, "tags": [], "model_version": "1.0"}
    tag_folder(tmp_path / "photos", tmp_path / "out", tagger=lambda data: answer, progress=False)
    lines = (tmp_path / "out" / "tags.csv").read_text(encoding="utf-8").splitlines()
    assert lines[1] == "sub/a.jpg;2;1;1;0;0;1;0;1;0;0;0"
    [row] = read_labels_csv(tmp_path / "out" / "tags.csv", TAXONOMY)
    assert row.labels == {"time_of_day": "night", "season": "winter", "terrain": "forest",
                          "objects": ["drone", "dog_handler"]}


def test_every_option_is_documented():
    assert all(action.help for action in build_parser()._actions)


def test_command_line(server, folder):
    out = folder.root / "_results"  # inside the folder it tags: it must not tag (or count) its own output
    command = [PYTHON, "-m", "client.tag_folder", str(folder.root), "--out", str(out), "--url", server.inference_url,
               "--key-file", str(server.key_file), "--concurrency", "3"]
    first = run(command, check=False)
    assert first.returncode == 1, first.stderr  # two photos are refused
    assert f"tagged:       {len(folder.good)}\n" in first.stdout
    assert "failed:       2 (not_an_image: 1, truncated: 1)" in first.stdout
    assert "skipped:      3 (hidden file: 1, not an image: 2)" in first.stdout
    assert "photo/s" in first.stderr  # the progress bar, with its rate
    check_outputs(out, folder)

    again = run(command + ["--no-progress"], check=False)
    assert again.returncode == 1 and again.stderr == ""
    assert f"already done: {len(folder.good)} (resumed)" in again.stdout
    assert "skipped:      3 (hidden file: 1, not an image: 2)" in again.stdout
    check_outputs(out, folder)

    missing = run(command[:-4] + ["--key-file", str(folder.root / "nope.json")], check=False)
    assert missing.returncode == 2 and "nope.json not found" in missing.stderr

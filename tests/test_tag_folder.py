"""Bulk tagging of a photo folder (client.tag_folder) against a real TorchServe with token auth: every photo once,
refusals recorded with the server's reason, the CSV readable by the training reader, resume after an interruption,
a refused (rotated) key read again, gRPC, and the command line. The failure paths are real too, on a TorchServe of
this module's own: 503s from a full job queue, a killed worker, and a server that stops mid-run."""
from __future__ import annotations

import json
import os
import shutil
import signal
import threading
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pytest
from PIL import Image

from client.grpc_client import GrpcTagger
from client.rest import call
from client.results import JSONL_NAME, load_records
from client.tag_folder import GIVE_UP_AFTER, build_parser, failure_of, rest_tagger, tag_folder
from loadtests.faults import worker_pids
from phototag.labels_csv import read_labels_csv
from phototag.taxonomy import Taxonomy
from serving.torchserve_process import TorchServe
from tests.conftest import PYTHON, run
from training.synth import render_jpegs

TAXONOMY = Taxonomy.load()
ANSWER_KEYS = {"file", "status", "time_of_day", "season", "terrain", "objects", "tags", "model_version", "image"}
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


@pytest.fixture(scope="module")
def phone_photos(tmp_path_factory) -> PhotoFolder:
    """16 phone-sized (2 MP) JPEGs, 00.jpg to 15.jpg: enough decoding per request to keep one worker busy."""
    root = tmp_path_factory.mktemp("phone_photos")
    names = {}
    for index, data in enumerate(render_jpegs(1632, 1224, count=16, seed=15)):
        (root / f"{index:02d}.jpg").write_bytes(data)
        names[data] = f"{index:02d}.jpg"
    assert len(names) == 16
    return PhotoFolder(root, names)


@pytest.fixture(scope="module")
def lean_server(model_store, tmp_path_factory):
    """A TorchServe of this module's own, since it is flooded, killed and stopped here: one worker, so that a kill
    takes the whole service down for a moment, and a job queue of one, so that a few photos at once overflow it."""
    ts = TorchServe(tmp_path_factory.mktemp("tag_folder_ts"), model_store, extra_config={"job_queue_size": "1"})
    ts.start()
    scaled = call("PUT", f"{ts.management_url}/models/tagger?min_worker=1&max_worker=1&synchronous=true",
                  "management", ts.key_file)
    assert scaled.status_code == 200, scaled.text
    yield ts
    ts.stop()


class Recording:
    """Wraps a tagger and records, per file name, each call's outcome: "ok", or the failure's reason as the folder
    tagger classifies it (http_503, connection, ...). `before(name, count)` and `after(name, outcome)` let a test
    act at a known point of the run."""

    def __init__(self, tagger, folder: PhotoFolder, before=None, after=None):
        self.tagger, self.names, self.before, self.after = tagger, folder.names, before, after
        self.calls: Counter = Counter()
        self.outcomes: dict[str, list[str]] = {}
        self.lock = threading.Lock()

    def __call__(self, data: bytes) -> dict:
        name = self.names[data]
        with self.lock:
            self.calls[name] += 1
            count = self.calls[name]
        if self.before:
            self.before(name, count)
        outcome = "ok"
        try:
            answer = self.tagger(data)
            if "error" in answer:  # gRPC carries the handler's refusal as the answer
                outcome = str(answer.get("reason"))
            return answer
        except Exception as exc:
            outcome = failure_of(exc).reason
            raise
        finally:
            with self.lock:
                self.outcomes.setdefault(name, []).append(outcome)
            if self.after:
                self.after(name, outcome)

    def having(self, outcome: str) -> set[str]:
        with self.lock:
            return {name for name, outcomes in self.outcomes.items() if outcome in outcomes}


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


@pytest.mark.server
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


@pytest.mark.server
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


@pytest.mark.server
def test_a_full_queue_is_retried_and_a_rerun_sends_only_what_is_left(lean_server, phone_photos, tmp_path):
    out, attempts = tmp_path / "out", 7
    first = Recording(rest_tagger(lean_server.inference_url, lean_server.key_file), phone_photos)
    # 8 photos at once against a queue of one: TorchServe refuses what does not fit with 503, at once.
    summary = tag_folder(phone_photos.root, out, tagger=first, concurrency=8, retries=attempts - 1, backoff=0.1,
                         progress=False)
    refused = first.having("http_503")
    print(f"\nfull queue: {sum(first.calls.values())} calls for {len(first.calls)} photos, "
          f"{len(refused)} photos refused with 503 at least once, {summary.tagged} tagged")
    assert refused, first.outcomes
    assert any(first.outcomes[name][-1] == "ok" for name in refused), first.outcomes  # tagged on a retry
    for name, outcomes in first.outcomes.items():  # tried until tagged, or until the retries ran out
        assert outcomes[-1] == "ok" or outcomes == ["http_503"] * attempts or summary.gave_up, (name, outcomes)
        assert set(outcomes[:-1]) <= {"http_503"}, (name, outcomes)
    records = read_jsonl(out)
    tagged = [r["file"] for r in records if r["status"] == "ok"]
    # What could not get in is recorded with its cause, and counted; nothing is lost or half-written.
    assert all(r["status"] == "ok" or (r["reason"], r["http_status"]) == ("http_503", 503) for r in records)
    assert (summary.tagged, summary.failed) == (len(tagged), Counter({"http_503": len(records) - len(tagged)}))

    # One photo at a time never overflows the queue: the rest gets in, and nothing tagged is sent again.
    second = Recording(rest_tagger(lean_server.inference_url, lean_server.key_file), phone_photos)
    summary = tag_folder(phone_photos.root, out, tagger=second, concurrency=1, progress=False)
    assert second.calls == Counter(name for name in phone_photos.sent if name not in tagged)
    assert (summary.resumed, summary.tagged, summary.failed) == (
        len(tagged), len(phone_photos.sent) - len(tagged), Counter())
    assert [(r["file"], r["status"]) for r in read_jsonl(out)] == [(name, "ok") for name in phone_photos.sent]


@pytest.mark.server
def test_a_killed_worker_fails_its_batch_and_the_batch_is_retried(lean_server, phone_photos, tmp_path):
    [pid] = worker_pids(lean_server.management_url, lean_server.key_file)
    first_answer = threading.Lock()

    def kill_at_the_first_answer(name, outcome):
        # The worker has just answered; the other photos in flight are gathered into its next batch.
        if outcome == "ok" and first_answer.acquire(blocking=False):
            os.kill(pid, signal.SIGKILL)

    recording = Recording(rest_tagger(lean_server.inference_url, lean_server.key_file), phone_photos,
                          after=kill_at_the_first_answer)
    # The retries outlast the worker's restart, during which TorchServe answers 503 (no worker): retried too.
    summary = tag_folder(phone_photos.root, tmp_path / "out", tagger=recording, concurrency=4, retries=8,
                         progress=False)
    died = recording.having("http_507")  # TorchServe's "worker died" for the batch the kill hit
    print(f"\nworker kill: {len(died)} photos answered 507, then "
          f"{dict(Counter(o for outcomes in recording.outcomes.values() for o in outcomes))} in all")
    assert died, recording.outcomes
    assert all(recording.outcomes[name][-1] == "ok" for name in died)
    seen = {outcome for outcomes in recording.outcomes.values() for outcome in outcomes}
    assert seen <= {"ok", "http_507", "http_503"}, recording.outcomes
    assert (summary.tagged, summary.failed, summary.gave_up) == (len(phone_photos.sent), Counter(), None)
    assert [r["status"] for r in read_jsonl(tmp_path / "out")] == ["ok"] * len(phone_photos.sent)
    [replacement] = worker_pids(lean_server.management_url, lean_server.key_file)
    assert replacement != pid


@pytest.mark.server
def test_a_stopped_server_ends_the_run_early_and_a_rerun_resumes(lean_server, phone_photos, tmp_path):
    out, served, sent = tmp_path / "out", 2, phone_photos.sent

    def stop_the_server_after_two_answers(name, outcome):
        if outcome == "ok" and len(first.having("ok")) == served:
            lean_server.stop()  # from here on every connection is refused

    first = Recording(rest_tagger(lean_server.inference_url, lean_server.key_file), phone_photos,
                      after=stop_the_server_after_two_answers)
    summary = tag_folder(phone_photos.root, out, tagger=first, concurrency=1, retries=1, backoff=0.05,
                         progress=False)
    # Each refused connection is retried, then recorded; after GIVE_UP_AFTER photos in a row the run stops rather
    # than trying every remaining photo against a server that is not there.
    down = sent[served:served + GIVE_UP_AFTER]
    assert summary.gave_up == f"{GIVE_UP_AFTER} photos in a row failed with connection"
    assert (summary.tagged, summary.failed) == (served, Counter({"connection": GIVE_UP_AFTER}))
    assert all(first.outcomes[name] == ["connection", "connection"] for name in down), first.outcomes
    records = read_jsonl(out)
    assert [(r["file"], r["status"], r.get("reason")) for r in records] == (
        [(name, "ok", None) for name in sent[:served]] + [(name, "failed", "connection") for name in down])
    assert set(sent) - set(first.calls), "every photo was sent: the run did not stop early"

    lean_server.start()
    second = Recording(rest_tagger(lean_server.inference_url, lean_server.key_file), phone_photos)
    summary = tag_folder(phone_photos.root, out, tagger=second, concurrency=1, progress=False)
    assert second.calls == Counter(sent[served:])  # the failed and the unsent photos, once each
    assert (summary.resumed, summary.tagged, summary.failed) == (served, len(sent) - served, Counter())
    assert [(r["file"], r["status"]) for r in read_jsonl(out)] == [(name, "ok") for name in sent]
    assert [row.filename for row in read_labels_csv(out / "tags.csv", TAXONOMY)] == sent


@pytest.mark.server
@pytest.mark.parametrize("transport", ["rest", "grpc"])
def test_a_refused_key_is_read_again_from_the_key_file(server, folder, tmp_path, transport):
    """The key file still holds an old inference key; TorchServe's rewrite of the file arrives only once the server
    has refused the old key, as when a rotation lands in the middle of a run."""
    key_file = tmp_path / "key_file.json"
    keys = json.loads(server.key_file.read_text())
    key_file.write_text(json.dumps({**keys, "inference": {**keys["inference"], "key": "expired"}}))
    tagger, close = make_tagger(server, transport, key_file)
    first_refusal = threading.Lock()

    def rotate_at_the_first_refusal(name, outcome):
        if outcome == "auth_refused" and first_refusal.acquire(blocking=False):
            shutil.copy(server.key_file, key_file)

    recording = Recording(tagger, folder, after=rotate_at_the_first_refusal)
    try:
        summary = tag_folder(folder.root, tmp_path / "out", tagger=recording, backoff=0.2, progress=False)
    finally:
        close()
    assert first_refusal.locked(), recording.outcomes  # the stale key was refused, and the file rewritten
    assert all(outcomes[-1] == REFUSED.get(name, "ok") for name, outcomes in recording.outcomes.items())
    assert summary.tagged == len(folder.good) and summary.failed == Counter(REFUSED.values())
    check_outputs(tmp_path / "out", folder)


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


@pytest.mark.server
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


@pytest.mark.server
def test_a_folder_can_be_tagged_with_the_big_photo_mode_off(server, tmp_path):
    """--big-photos off reaches the server with every photo: a 12 MP-class photo is read at the ordinary size,
    where by default the archive's big-photo mode reads its objects closer (its answer says at what size)."""
    root = tmp_path / "drone"
    root.mkdir()
    Image.new("RGB", (2667, 2000), (70, 110, 60)).save(root / "DJI_0001.JPG", quality=80)
    read_at = {}
    for choice in ("auto", "off"):
        out = tmp_path / f"results-{choice}"
        run([PYTHON, "-m", "client.tag_folder", str(root), "--out", str(out), "--url", server.inference_url,
             "--key-file", str(server.key_file), "--no-progress", "--big-photos", choice])
        [record] = load_records(out / JSONL_NAME).values()
        assert record["status"] == "ok", record
        read_at[choice] = record["image"].get("objects_read_at")
    assert read_at == {"auto": 768, "off": None}

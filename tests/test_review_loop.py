"""The review loop end to end against a real TorchServe: tag a folder (and its page) -> corrections CSV -> a short
fine-tune with --init-from and --mix-data -> archive 2.0 -> make compare -> make rollout (answers say 2.0) ->
make rollback (answers say 1.0), and a broken archive's rollout that leaves 1.0 serving. Plus the bad-input case
of the loop: a corrections CSV with an unknown code or tag is refused naming its line and column.

The server is this module's own (its default version is changed here, which other modules' server must not see).
Training and the comparison run in this process (the CLI's main with its own arguments): each would otherwise
spend seconds importing torch again; `make compare` is checked to hand its variables to the same command.
"""
from __future__ import annotations

import json
import shutil

import pytest

from client.gallery import PAGE_NAME
from client.rest import call, tag_image
from phototag.labels_csv import LabelCsvError, read_labels_csv, write_labels_csv
from phototag.taxonomy import Taxonomy, logits_to_tags
from serving.torchserve_process import TorchServe
from tests.conftest import PYTHON, run
from tests.test_gallery import page_data
from training import compare
from training.train import get_args_parser as train_args
from training.train import main as train

TAXONOMY = Taxonomy.load()


@pytest.fixture(scope="module")
def loop_server(model_store, tmp_path_factory):
    """TorchServe serving a copy of the tests' tagger.mar (1.0) from a model store of its own."""
    base = tmp_path_factory.mktemp("review_loop")
    store = base / "model_store"  # the name config.properties' allowed_urls admits
    store.mkdir()
    shutil.copy(model_store / "tagger.mar", store / "tagger.mar")
    ts = TorchServe(base / "torchserve", store)
    ts.start()
    yield ts
    ts.stop()


def served_version(server, photo: bytes) -> str:
    return tag_image(photo, url=server.inference_url, key_file=server.key_file)["model_version"]


def registered(server) -> set[str]:
    response = call("GET", f"{server.management_url}/models/tagger/all", "management", server.key_file)
    return {v["modelVersion"] for v in response.json()}


def make(*args: str, check: bool = True):
    return run(["make", "--no-print-directory", *args], check=check)


@pytest.mark.server
def test_tag_correct_finetune_compare_rollout_rollback(loop_server, tiny_dataset, tiny_run, tmp_path, capsys):
    server, store = loop_server, loop_server.model_store
    truth = {row.filename: row.labels for row in read_labels_csv(tiny_dataset, TAXONOMY)}
    images = tiny_dataset.parent / "images"
    photos, out = tmp_path / "photos", tmp_path / "tagged"
    photos.mkdir()
    names = sorted(truth)[:8]
    for name in names:
        shutil.copy(images / name, photos / name)
    jpeg = (images / next(n for n in names if n.endswith(".jpg"))).read_bytes()
    (photos / "cut_short.jpg").write_bytes(jpeg[: len(jpeg) // 3])

    # 1. Tag the folder through the server: tags.jsonl, tags.csv and the page (the refused photo shown as failed).
    tagged = run([PYTHON, "-m", "client.tag_folder", str(photos), "--out", str(out), "--url", server.inference_url,
                  "--key-file", str(server.key_file), "--no-progress"], check=False)
    assert tagged.returncode == 1, tagged.stdout + tagged.stderr  # one photo failed
    assert PAGE_NAME in tagged.stdout
    page = {p["f"]: p for p in page_data(out / PAGE_NAME)["photos"]}
    assert set(page) == set(names) | {"cut_short.jpg"}
    assert page["cut_short.jpg"]["s"] == "failed" and page["cut_short.jpg"]["r"] == "truncated"
    assert "truncated" in page["cut_short.jpg"]["e"] and page["cut_short.jpg"]["h"] == 400
    assert all(page[n]["s"] == "ok" and page[n]["v"] == "1.0" and page[n]["t"] for n in names)

    # 2. The volunteers' corrections: every tagged photo with its true tags, in the original CSV format.
    served = read_labels_csv(out / "tags.csv", TAXONOMY)
    corrections = tmp_path / "corrections.csv"
    write_labels_csv(corrections, [(row.filename, truth[row.filename]) for row in served], TAXONOMY)

    # 3. Fine-tune the served run on them, with as many of the original photos mixed in; one short epoch. The
    # input settings (64 px, letterbox, per-cell object head) come from --init-from.
    run2 = tmp_path / "run2"
    train(train_args().parse_args([
        "--init-from", str(tiny_run / "model.pt"), "--data", str(corrections), "--images", str(photos),
        "--mix-data", str(tiny_dataset), "--mix-ratio", "1", "--epochs", "1", "--batch-size", "8", "--lr", "0.001",
        "--val-fraction", "0.25", "--workers", "0", "--output-dir", str(run2)]))
    args = json.loads((run2 / "args.json").read_text())
    assert (args["image_size"], args["resize"], args["object_head"]) == (64, "letterbox", "cells")
    assert len(read_labels_csv(run2 / "mixed_in.csv", TAXONOMY)) == len(served)
    metrics = json.loads((run2 / "metrics.json").read_text())
    assert metrics["train_images"] + metrics["val_images"] == 2 * len(served)

    # 4. Archive it as 2.0 next to the served 1.0.
    make("archive", f"RUN={run2}", f"STORE={store}", "VERSION=2.0", f"BUILD={tmp_path / 'build'}")

    # 5. Compare the two archives on the labeled photos.
    report = tmp_path / "compare"
    old, new = store / "tagger.mar", store / "tagger-2.0.mar"
    command = make("-n", "compare", f"OLD={old}", f"NEW={new}", f"DATA={tiny_dataset}", f"OUT={report}").stdout
    assert f"-m training.compare --old {old} --new {new} --data {tiny_dataset}" in command
    assert f"--out {report}" in command
    capsys.readouterr()
    assert compare.main(["--old", str(old), "--new", str(new), "--data", str(tiny_dataset), "--out", str(report),
                         "--workers", "0"]) == 0
    assert "mean F1 (headline)" in capsys.readouterr().out
    result = json.loads((report / "compare.json").read_text())
    assert result["images"] == len(truth)
    for row in result["side_by_side"]:
        assert row["diff"] == pytest.approx(row["new"] - row["old"])
    assert {"time_of_day", "season", "terrain", "dog_handler", "objects"} <= {r["what"] for r in result["side_by_side"]}
    assert all(item["kind"] in ("fixed", "newly wrong", "both", "changed, still wrong") for item in result["changed"])
    assert (report / "changed.png").stat().st_size > 0 and "new − old" in (report / "report.md").read_text()

    # 6. Roll 2.0 out: checked on known photos, then the default; 1.0 stays registered.
    rollout_args = (f"ROLLOUT_ARGS=--management-url {server.management_url} --inference-url {server.inference_url} "
                    f"--key-file {server.key_file} --state {tmp_path / 'rollout.json'}")
    photo = (images / names[0]).read_bytes()
    rolled = make("rollout", "VERSION=2.0", f"CHECK_DATA={tiny_dataset}", f"{rollout_args} --workers 1")
    assert "2.0 is the default now" in rolled.stdout, rolled.stdout
    assert served_version(server, photo) == "2.0"
    assert registered(server) == {"1.0", "2.0"}

    # 7. Roll back: 1.0 answers again, 2.0 stays registered.
    make("rollback", rollout_args)
    assert served_version(server, photo) == "1.0"
    assert registered(server) == {"1.0", "2.0"}

    # 8. A broken archive (weights cut short): its workers cannot start, so it never becomes the default.
    broken = tmp_path / "broken_run"
    broken.mkdir()
    shutil.copy(run2 / "taxonomy.json", broken / "taxonomy.json")
    (broken / "model.pt").write_bytes((run2 / "model.pt").read_bytes()[:4096])
    make("archive", f"RUN={broken}", f"STORE={store}", "VERSION=3.0", f"BUILD={tmp_path / 'build'}")
    refused = make("rollout", "VERSION=3.0", f"CHECK_DATA={tiny_dataset}", f"{rollout_args} --workers 1",
                   check=False)
    assert refused.returncode != 0
    message = refused.stdout + refused.stderr
    assert "rollout of 3.0 failed" in message and "1.0 is still the default" in message, message
    assert "Failed to start workers" in message and "3.0 unregistered" in message, message
    assert served_version(server, photo) == "1.0"
    assert registered(server) == {"1.0", "2.0"}


@pytest.mark.parametrize("cell, why", [("9", "code 9 is not one of"), ("зима", "'зима' is not a number")])
def test_a_corrections_csv_with_an_unknown_code_or_tag_names_line_and_column(tiny_dataset, tmp_path, cell, why):
    """What training (whose command line prints the message and exits 2) says about a hand-edited corrections CSV."""
    header = ";".join(TAXONOMY.csv_columns())
    csv = tmp_path / "corrections.csv"
    csv.write_text(f"{header}\nscene_000000.jpg;1;1;1;0;0;0;0;0;0;0;0\nscene_000001.jpg;1;{cell};1;0;0;0;0;0;0;0;0\n",
                   encoding="utf-8")
    args = train_args().parse_args(["--data", str(csv), "--images", str(tiny_dataset.parent / "images"),
                                    "--epochs", "1", "--workers", "0", "--output-dir", str(tmp_path / "run")])
    with pytest.raises(LabelCsvError) as info:
        train(args)
    assert "line 3, column 'Время года'" in str(info.value) and why in str(info.value)


def test_rollout_reads_versions_and_answers_as_the_server_gives_them():
    """The rollout's own rules, without a server: archive names as `make archive` writes them, version order,
    and what makes a checked answer unacceptable."""
    from serving.rollout import answer_problem, archive_name, version_key, wrong_decisions

    assert archive_name("1.0") == "tagger.mar" and archive_name("2.0") == "tagger-2.0.mar"
    assert sorted(["2.0", "1.10", "1.2", "10.0"], key=version_key) == ["1.2", "1.10", "2.0", "10.0"]
    logits = [4.0 if c == "day" else 0.0 for c in TAXONOMY.group("time_of_day").class_ids]
    logits += [4.0 if c == "winter" else 0.0 for c in TAXONOMY.group("season").class_ids]
    logits += [4.0 if c == "forest" else 0.0 for c in TAXONOMY.group("terrain").class_ids]
    logits += [3.0 if c == "drone" else -3.0 for c in TAXONOMY.group("objects").class_ids]
    answer = logits_to_tags(logits, TAXONOMY, "2.0")
    assert answer_problem(answer, "2.0", TAXONOMY) is None
    assert "not 2.0" in answer_problem({**answer, "model_version": "1.0"}, "2.0", TAXONOMY)
    assert "season" in answer_problem({k: v for k, v in answer.items() if k != "season"}, "2.0", TAXONOMY)
    assert "refused" in answer_problem({"error": "bad", "reason": "truncated", "code": 400}, "2.0", TAXONOMY)
    truth = {"time_of_day": "night", "season": "winter", "terrain": "forest", "objects": ["drone", "cars"]}
    assert wrong_decisions(answer, truth, TAXONOMY) == (2, 11)  # night vs day, and the missed cars

"""XMP sidecars (client/xmp.py, client/sidecars.py, `tag_folder --xmp`), read back with ExifTool, the reader the
photo managers are measured against, and with the project's own parser: the keywords under one root in both
languages, the project's namespace, a merge that keeps every value another tool wrote, reruns that replace only
the project's own tags, a volunteer's corrections that outrank a later model, and the bad input: Cyrillic names
with spaces, sidecars that are not XML, carry a BOM or are not XMP, a read-only photo folder, a killed write.
The folder-level tests feed the tagger answers made by the service's own logits_to_tags; the last test runs the
real command against a real TorchServe."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from contextlib import closing
from pathlib import Path

import pytest

from client.results import CORRECTIONS_NAME, JSONL_NAME
from client.search_index import connect
from client.sidecars import SidecarOptions, sidecar_path, write_sidecars
from client.tag_folder import publish, tag_folder
from client.xmp import PHOTOTAG_NS, SidecarError, merge, read_sidecar, sidecar_tags, temporary_path, write_sidecar
from phototag.labels_csv import write_labels_csv
from phototag.taxonomy import SINGLE, Taxonomy, logits_to_tags
from tests.conftest import PYTHON, run

TAXONOMY = Taxonomy.load()
EXIFTOOL = shutil.which("exiftool")
REPO = Path(__file__).resolve().parent.parent
KEYWORDS = ("TagsList", "HierarchicalSubject", "Subject")
# The photo names of the folder tests: Cyrillic, spaces, a sub-folder, an upper-case extension.
NIGHT = "Поиск 2024/ночь у реки 1.jpg"
DAY = "Поиск 2024/день в лесу.JPG"
PLAIN = "card/IMG_0003.jpg"


def answer(time_of_day="night", season="winter", terrain="forest", objects=("dog_handler",), version="1.0"):
    """The service's answer for these labels, made by its own logits_to_tags from confident logits."""
    chosen = {"time_of_day": time_of_day, "season": season, "terrain": terrain}
    logits = []
    for group in TAXONOMY.groups:
        if group.kind == SINGLE:
            logits += [4.0 if c == chosen[group.name] else 0.0 for c in group.class_ids]
        else:
            logits += [3.0 if c in objects else -3.0 for c in group.class_ids]
    return logits_to_tags(logits, TAXONOMY, version)


def exiftool(*paths: Path, args=("-struct", *(f"-{k}" for k in KEYWORDS))) -> list[dict]:
    if not EXIFTOOL:
        pytest.skip("needs ExifTool: apt-get install libimage-exiftool-perl (.ci/run installs it)")
    done = subprocess.run([EXIFTOOL, "-j", "-charset", "filename=utf8", *args, *map(str, paths)],
                          capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def as_list(value) -> list:
    """ExifTool writes a one-item list as its item."""
    return value if isinstance(value, list) else [] if value is None else [value]


def keywords(path: Path) -> dict[str, list]:
    [found] = exiftool(path)
    return {k: as_list(found.get(k)) for k in KEYWORDS}


def everything(path: Path) -> dict:
    """Every value ExifTool reads from a sidecar, by group and name, except the file system's."""
    [found] = exiftool(path, args=("-struct", "-a", "-G1"))
    return {k: v for k, v in found.items() if not k.startswith(("System:", "ExifTool:", "File:")) and k != "SourceFile"}


# ---- one sidecar ---------------------------------------------------------------------------------------------------
def test_a_new_sidecar_in_both_languages(tmp_path):
    record = answer(objects=("dog_handler", "drone"))
    write_sidecar(tmp_path / "en.jpg.xmp", sidecar_tags(record, TAXONOMY, "en"))
    write_sidecar(tmp_path / "ru.jpg.xmp", sidecar_tags(record, TAXONOMY, "ru"))
    assert keywords(tmp_path / "en.jpg.xmp") == {
        "TagsList": ["AI tags/time_of_day/night", "AI tags/season/winter", "AI tags/terrain/forest",
                     "AI tags/objects/drone", "AI tags/objects/dog_handler"],
        "HierarchicalSubject": ["AI tags|time_of_day|night", "AI tags|season|winter", "AI tags|terrain|forest",
                                "AI tags|objects|drone", "AI tags|objects|dog_handler"],
        "Subject": ["night", "winter", "forest", "drone", "dog_handler"]}
    assert keywords(tmp_path / "ru.jpg.xmp") == {
        "TagsList": ["ИИ-теги/Время суток/ночь", "ИИ-теги/Время года/зима", "ИИ-теги/Местность/лес",
                     "ИИ-теги/Объекты/БПЛА", "ИИ-теги/Объекты/Кинолог"],
        "HierarchicalSubject": ["ИИ-теги|Время суток|ночь", "ИИ-теги|Время года|зима", "ИИ-теги|Местность|лес",
                                "ИИ-теги|Объекты|БПЛА", "ИИ-теги|Объекты|Кинолог"],
        "Subject": ["ночь", "зима", "лес", "БПЛА", "Кинолог"]}
    [own] = exiftool(tmp_path / "ru.jpg.xmp", args=("-struct", "-XMP-phototag:all"))
    assert own["ModelVersion"] in ("1.0", 1.0) and own["Reviewed"] is False and own["Root"] == "ИИ-теги"
    scores = {s["Tag"]: float(s["Score"]) for s in own["Scores"]}
    assert len(scores) == TAXONOMY.num_logits  # every class of every group, by id in either language
    assert scores == {f"{g.name}/{c}": record[g.name]["scores"][c] for g in TAXONOMY.groups for c in g.class_ids}
    assert "Boxes" not in own  # the model gives no boxes, and none are made up
    own_view = read_sidecar((tmp_path / "ru.jpg.xmp").read_bytes())
    assert own_view["TagsList"] == keywords(tmp_path / "ru.jpg.xmp")["TagsList"]
    assert own_view["Reviewed"] == "False" and own_view["Subjects"] == ["ночь", "зима", "лес", "БПЛА", "Кинолог"]


def test_boxes_go_into_the_namespace_when_given(tmp_path):
    from client.xmp import Box

    tags = sidecar_tags(answer(), TAXONOMY, boxes=(Box("objects/dog_handler", 0.1, 0.2, 0.3, 0.4, 0.9),))
    write_sidecar(tmp_path / "a.jpg.xmp", tags)
    [own] = exiftool(tmp_path / "a.jpg.xmp", args=("-struct", "-XMP-phototag:Boxes"))
    [box] = as_list(own["Boxes"])
    assert {k: float(v) if k != "Tag" else v for k, v in box.items()} == {
        "Tag": "objects/dog_handler", "X": 0.1, "Y": 0.2, "W": 0.3, "H": 0.4, "Score": 0.9}


# A sidecar as digiKam and Lightroom leave them, with a rating, a caption, a face region, a namespace no one here
# knows, a comment, and keywords of the team's own: one of them ("night") equal to a model tag.
OTHER_TOOL = """<?xml version="1.0" encoding="UTF-8"?>
<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>
<x:xmpmeta xmlns:x="adobe:ns:meta/" x:xmptk="XMP Core 4.4.0-Exiv2">
 <!-- written by the team's photo manager -->
 <rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">
  <rdf:Description rdf:about=""
    xmlns:xmp="http://ns.adobe.com/xap/1.0/"
    xmlns:dc="http://purl.org/dc/elements/1.1/"
    xmlns:digiKam="http://www.digikam.org/ns/1.0/"
    xmlns:lr="http://ns.adobe.com/lightroom/1.0/"
    xmlns:mwg-rs="http://www.metadataworkinggroup.com/schemas/regions/"
    xmlns:stDim="http://ns.adobe.com/xap/1.0/sType/Dimensions#"
    xmlns:stArea="http://ns.adobe.com/xmp/sType/Area#"
    xmlns:acme="http://ns.acme-rescue.example/1.0/"
    xmp:Rating="4"
    acme:Mission="Поиск &amp; спасение, отряд 7">
   <dc:description><rdf:Alt><rdf:li xml:lang="x-default">Группа у реки, 3 человека &lt;важно&gt;</rdf:li></rdf:Alt>
   </dc:description>
   <digiKam:TagsList><rdf:Seq><rdf:li>Team/Поиск 2024</rdf:li><rdf:li>People/Иван Петров</rdf:li></rdf:Seq>
   </digiKam:TagsList>
   <lr:hierarchicalSubject><rdf:Bag><rdf:li>Team|Поиск 2024</rdf:li></rdf:Bag></lr:hierarchicalSubject>
   <dc:subject><rdf:Bag><rdf:li>Поиск 2024</rdf:li><rdf:li>Иван Петров</rdf:li><rdf:li>night</rdf:li></rdf:Bag>
   </dc:subject>
   <mwg-rs:Regions rdf:parseType="Resource">
    <mwg-rs:AppliedToDimensions stDim:w="4000" stDim:h="3000" stDim:unit="pixel"/>
    <mwg-rs:RegionList><rdf:Bag><rdf:li rdf:parseType="Resource">
     <mwg-rs:Name>Иван Петров</mwg-rs:Name><mwg-rs:Type>Face</mwg-rs:Type>
     <mwg-rs:Area stArea:x="0.5" stArea:y="0.4" stArea:w="0.1" stArea:h="0.15" stArea:unit="normalized"/>
    </rdf:li></rdf:Bag></mwg-rs:RegionList>
   </mwg-rs:Regions>
  </rdf:Description>
 </rdf:RDF>
</x:xmpmeta>
<?xpacket end="w"?>
"""
TEAM = {"TagsList": ["Team/Поиск 2024", "People/Иван Петров"], "HierarchicalSubject": ["Team|Поиск 2024"],
        "Subject": ["Поиск 2024", "Иван Петров", "night"]}


def check_merge(path: Path, before: dict, records: list[tuple[dict, str]]) -> None:
    """Merge each (answer, language) in turn; after each, every value the other tool wrote reads back equal, and
    the keyword lists are the team's, then exactly this answer's."""
    for record, lang in records:
        tags = sidecar_tags(record, TAXONOMY, lang)
        write_sidecar(path, tags)
        after = everything(path)
        for key, value in before.items():
            if key.split(":")[1] not in KEYWORDS:
                assert after.get(key) == value, key
        assert not {k for k in after if k not in before and not k.startswith("XMP-phototag:")} - {
            f"XMP-{p}:{k}" for p, k in (("digiKam", "TagsList"), ("lr", "HierarchicalSubject"), ("dc", "Subject"))}
        found = keywords(path)
        assert found["TagsList"] == TEAM["TagsList"] + tags.hierarchical("/")
        assert found["HierarchicalSubject"] == TEAM["HierarchicalSubject"] + tags.hierarchical("|")
        # The team's own "night" is neither added twice nor, once the model stops saying night, taken away.
        assert found["Subject"] == TEAM["Subject"] + [t for t in tags.leaves if t not in TEAM["Subject"]]
        assert after["XMP-phototag:ModelVersion"] in (record["model_version"], float(record["model_version"]))


@pytest.mark.parametrize("bom", [False, True], ids=["utf8", "utf8-bom"])
def test_a_merge_keeps_every_value_of_another_tool(tmp_path, bom):
    path = tmp_path / "photo.jpg.xmp"
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + OTHER_TOOL.encode("utf-8"))
    before = everything(path)
    assert before["XMP-xmp:Rating"] == 4 and before["XMP-dc:Description"] == "Группа у реки, 3 человека <важно>"
    assert before["XMP-mwg-rs:RegionInfo"]["RegionList"][0]["Name"] == "Иван Петров"
    assert before["XMP-acme:Mission"] == "Поиск & спасение, отряд 7"
    # A newer model with other tags, then a run in Russian: each replaces the project's part and nothing else.
    check_merge(path, before, [(answer(), "en"), (answer("day", "summer", "city", ("cars",), "2.0"), "en"),
                               (answer("twilight", "autumn", "unknown", (), "3.0"), "ru")])
    text = path.read_text(encoding="utf-8")
    assert "<!-- written by the team's photo manager -->" in text
    assert 'xmlns:acme="http://ns.acme-rescue.example/1.0/"' in text  # its own prefix, as the other tool chose it
    assert "AI tags" not in text  # the English root went with the switch to Russian
    assert text.count(f'xmlns:phototag="{PHOTOTAG_NS}"') == 1  # reruns do not pile up descriptions


def test_a_list_of_only_the_projects_keywords_goes_when_they_do(tmp_path):
    path = tmp_path / "a.jpg.xmp"
    write_sidecar(path, sidecar_tags(answer(), TAXONOMY))
    write_sidecar(path, sidecar_tags(answer("unknown", "unknown", "unknown", ()), TAXONOMY))
    assert keywords(path) == {k: [] for k in KEYWORDS}
    assert read_sidecar(path.read_bytes())["ModelVersion"] == "1.0"


@pytest.mark.parametrize("content, why", [
    (b"this is not XML at all\n", "not XML"),
    (b"", "empty file"),
    (b"<?xml version='1.0'?><x:xmpmeta xmlns:x='adobe:ns:meta/'><rdf:RDF", "not XML"),  # cut short
    (b"<html><body>a web page saved as .xmp</body></html>", "not XMP"),
    (b"<?xml version='1.0'?><!DOCTYPE r [<!ENTITY e 'x'>]><rdf:RDF xmlns:rdf="
     b"'http://www.w3.org/1999/02/22-rdf-syntax-ns#'>&e;</rdf:RDF>", "DOCTYPE"),
    (OTHER_TOOL.replace("<dc:subject><rdf:Bag><rdf:li>Поиск 2024</rdf:li><rdf:li>Иван Петров</rdf:li>"
                        "<rdf:li>night</rdf:li></rdf:Bag>\n   </dc:subject>", "").replace(
        'xmp:Rating="4"', 'xmp:Rating="4" dc:subject="flat"').encode(), "single value"),
], ids=["text", "empty", "truncated", "html", "doctype", "subject-not-a-list"])
def test_a_sidecar_that_cannot_be_merged_is_refused_unchanged(tmp_path, content, why):
    path = tmp_path / "a.jpg.xmp"
    path.write_bytes(content)
    with pytest.raises(SidecarError, match=why):
        write_sidecar(path, sidecar_tags(answer(), TAXONOMY))
    assert path.read_bytes() == content


def test_a_killed_write_leaves_the_old_sidecar_or_the_new_one(tmp_path):
    """A process rewrites one large sidecar over and over and is killed at moments spread over a write; every time,
    the file on disk is a whole sidecar with the other tool's caption. (Opening the sidecar and writing it in
    place fails this: the kill lands while it is half written.)"""
    path = tmp_path / "photo.jpg.xmp"
    caption = "Группа у реки. " * 200_000  # ~5 MB: a write takes long enough for a kill to land inside it
    path.write_text(OTHER_TOOL.replace("Группа у реки, 3 человека &lt;важно&gt;", caption), encoding="utf-8")
    script = ("import sys; from pathlib import Path; from client.xmp import sidecar_tags, write_sidecar;"
              "from tests.test_xmp import answer, TAXONOMY; path = Path(sys.argv[1]); i = 0\n"
              "while True:\n"
              " write_sidecar(path, sidecar_tags(answer(version=str(i)), TAXONOMY)); i += 1\n"
              " print(i, flush=True)\n")
    for attempt in range(6):
        writer = subprocess.Popen([sys.executable, "-c", script, str(path)], cwd=REPO, stdout=subprocess.PIPE,
                                  env={**os.environ, "PYTHONPATH": str(REPO)})
        writer.stdout.readline()  # one write done: the next one is under way
        time.sleep(0.013 * attempt)
        writer.send_signal(signal.SIGKILL)
        writer.wait()
        found = read_sidecar(path.read_bytes())  # raises SidecarError on a torn file
        assert found["TagsList"][:2] == TEAM["TagsList"], attempt
        assert everything(path)["XMP-dc:Description"] == caption
    # The next pass over the folder clears what the killed write left beside the sidecar.
    records = {"photo.jpg": {"file": "photo.jpg", "status": "ok", **answer()}}
    (tmp_path / "photo.jpg").write_bytes(b"")
    with closing(connect(tmp_path)) as state:
        write_sidecars(tmp_path, records, {}, TAXONOMY, SidecarOptions(), state)
    assert not temporary_path(path).exists()


# ---- a folder ------------------------------------------------------------------------------------------------------
@pytest.fixture
def photos(tmp_path) -> Path:
    root = tmp_path / "Фото отряда"
    for name in (NIGHT, DAY, PLAIN):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(name.encode())  # the tagger below answers by name
    return root


ANSWERS = {NIGHT: answer(), DAY: answer("day", "summer", "forest", ("drone", "cars")),
           PLAIN: answer("twilight", "autumn", "city", ())}


def tag(root: Path, out: Path, answers=None) -> None:
    answers = answers or ANSWERS
    tag_folder(root, out, tagger=lambda data: answers[data.decode()], progress=False)


def test_a_folder_with_cyrillic_names_and_spaces_and_a_rerun(photos, tmp_path):
    out = tmp_path / "out"
    beside = photos / "Поиск 2024" / "ночь у реки 1.jpg.xmp"
    beside.write_text(OTHER_TOOL, encoding="utf-8")
    before = everything(beside)
    tag(photos, out)
    published = publish(photos, out, taxonomy=TAXONOMY, sidecars=SidecarOptions())
    report = published.sidecars
    assert (report.written, report.current, report.problems) == (3, 0, {})
    found = {Path(r["SourceFile"]).name: r for r in exiftool(*(sidecar_path(photos, n, SidecarOptions())
                                                               for n in (NIGHT, DAY, PLAIN)))}
    assert as_list(found["день в лесу.JPG.xmp"]["TagsList"]) == [
        "AI tags/time_of_day/day", "AI tags/season/summer", "AI tags/terrain/forest", "AI tags/objects/cars",
        "AI tags/objects/drone"]
    assert as_list(found["IMG_0003.jpg.xmp"]["Subject"]) == ["twilight", "autumn", "city"]
    assert everything(beside)["XMP-acme:Mission"] == before["XMP-acme:Mission"]
    assert keywords(beside)["TagsList"] == TEAM["TagsList"] + sidecar_tags(ANSWERS[NIGHT], TAXONOMY).hierarchical("/")
    assert sorted(p.name for p in photos.rglob("*") if p.is_file()) == sorted(
        [Path(n).name for n in ANSWERS] + [Path(n).name + ".xmp" for n in ANSWERS])  # the photos untouched besides

    # A rerun with the same answers writes nothing; someone else's edit is merged again, keeping it.
    again = publish(photos, out, taxonomy=TAXONOMY, sidecars=SidecarOptions())
    assert (again.sidecars.written, again.sidecars.current) == (0, 3)
    edited = sidecar_path(photos, PLAIN, SidecarOptions())
    edited.write_text(edited.read_text(encoding="utf-8").replace(  # a volunteer adds a place in digiKam
        "<rdf:li>AI tags/terrain/city</rdf:li>", "<rdf:li>AI tags/terrain/city</rdf:li><rdf:li>Places/Мост</rdf:li>"))
    again = publish(photos, out, taxonomy=TAXONOMY, sidecars=SidecarOptions())
    assert (again.sidecars.written, again.sidecars.current) == (1, 2)
    assert keywords(edited)["TagsList"] == ["Places/Мост", "AI tags/time_of_day/twilight", "AI tags/season/autumn",
                                            "AI tags/terrain/city"]

    # A photo deleted since it was tagged, with its sidecar: no sidecar comes back without its photo.
    (photos / DAY).unlink()
    sidecar_path(photos, DAY, SidecarOptions()).unlink()
    again = publish(photos, out, taxonomy=TAXONOMY, sidecars=SidecarOptions())
    assert (again.sidecars.photo_gone, again.sidecars.current) == (1, 2)
    assert not sidecar_path(photos, DAY, SidecarOptions()).exists()
    assert "1 photos no longer there" in str(again.sidecars)


def test_photo_xmp_naming_and_a_name_two_photos_would_share(photos, tmp_path):
    (photos / "card" / "IMG_0003.png").write_bytes(PLAIN.encode())  # the same photo as a PNG: both want IMG_0003.xmp
    out, options = tmp_path / "out", SidecarOptions(naming="photo.xmp")
    tag(photos, out, {**ANSWERS})
    records_file = out / JSONL_NAME
    assert sum(1 for _ in records_file.open(encoding="utf-8")) == 4
    report = publish(photos, out, taxonomy=TAXONOMY, sidecars=options).sidecars
    shared = photos / "card" / "IMG_0003.xmp"
    assert report.written == 2 and list(report.problems) == [str(shared)]
    assert "shared by card/IMG_0003.jpg and card/IMG_0003.png" in report.problems[str(shared)]
    assert not shared.exists()
    assert keywords(photos / "Поиск 2024" / "ночь у реки 1.xmp")["Subject"] == ["night", "winter", "forest",
                                                                                  "dog_handler"]


def test_unreadable_sidecars_are_reported_and_the_run_goes_on(photos, tmp_path):
    bad = {NIGHT: b"\x00\x01 binary junk", DAY: b"<html>not XMP</html>"}
    for name, content in bad.items():
        sidecar_path(photos, name, SidecarOptions()).write_bytes(content)
    out = tmp_path / "out"
    tag(photos, out)
    report = publish(photos, out, taxonomy=TAXONOMY, sidecars=SidecarOptions()).sidecars
    assert report.written == 1 and set(report.problems) == {str(sidecar_path(photos, n, SidecarOptions())) for n in bad}
    assert "not XML" in report.problems[str(sidecar_path(photos, NIGHT, SidecarOptions()))]
    for name, content in bad.items():
        assert sidecar_path(photos, name, SidecarOptions()).read_bytes() == content
    assert "left as it was: " in str(report) and "ночь у реки 1.jpg.xmp: not XML" in str(report)


def test_corrections_win_and_a_later_model_leaves_them(photos, tmp_path):
    out = tmp_path / "out"
    tag(photos, out)
    corrections = tmp_path / "Загрузки" / "corrections.csv"  # as downloaded from the gallery
    corrections.parent.mkdir()
    fixed = {"time_of_day": "night", "season": "winter", "terrain": "city", "objects": ["hugs"]}
    write_labels_csv(corrections, [(NIGHT, fixed)], TAXONOMY)
    report = publish(photos, out, taxonomy=TAXONOMY, corrections=[corrections], sidecars=SidecarOptions()).sidecars
    assert report.written == 3
    night = sidecar_path(photos, NIGHT, SidecarOptions())
    assert keywords(night)["TagsList"] == ["AI tags/time_of_day/night", "AI tags/season/winter",
                                           "AI tags/terrain/city", "AI tags/objects/hugs"]
    [own] = exiftool(night, args=("-XMP-phototag:Reviewed",))
    assert own["Reviewed"] is True
    assert (out / CORRECTIONS_NAME).is_file()  # kept for later runs, which need not be given the CSV again
    assert publish(photos, out, taxonomy=TAXONOMY, sidecars=SidecarOptions()).sidecars.current == 3

    # A newer model, into a fresh results folder that knows nothing of the corrections: the reviewed sidecar stays.
    kept = night.read_bytes()
    newer = {name: {**record, "model_version": "2.0"} for name, record in ANSWERS.items()}
    tag(photos, tmp_path / "out2", newer)
    report = publish(photos, tmp_path / "out2", taxonomy=TAXONOMY, sidecars=SidecarOptions()).sidecars
    assert (report.written, report.kept_reviewed) == (2, 1)
    assert night.read_bytes() == kept
    assert merge(kept, sidecar_tags(newer[NIGHT], TAXONOMY)) is None


def test_xmp_dir_mirrors_the_tree_and_carries_the_photos_own_sidecars_over(photos, tmp_path):
    out, mirror = tmp_path / "out", photos / "sidecars"  # inside the photo folder: it must not be walked
    own = sidecar_path(photos, NIGHT, SidecarOptions())
    own.write_text(OTHER_TOOL, encoding="utf-8")
    before = everything(own)
    tag(photos, out)
    options = SidecarOptions(lang="ru", xmp_dir=mirror)
    assert publish(photos, out, taxonomy=TAXONOMY, sidecars=options).sidecars.written == 3
    assert sorted(p.relative_to(mirror).as_posix() for p in mirror.rglob("*.xmp")) == sorted(
        n + ".xmp" for n in ANSWERS)
    assert keywords(mirror / (DAY + ".xmp"))["Subject"] == ["день", "лето", "лес", "Автомобили", "БПЛА"]
    # The photo's own sidecar is read, not written; its copy in the mirror has all of it and the tags.
    assert own.read_text(encoding="utf-8") == OTHER_TOOL
    carried = everything(mirror / (NIGHT + ".xmp"))
    assert all(carried[k] == v for k, v in before.items() if k.split(":")[1] not in KEYWORDS)
    assert keywords(mirror / (NIGHT + ".xmp"))["Subject"] == TEAM["Subject"] + ["ночь", "зима", "лес", "Кинолог"]
    assert sorted(p.name for p in photos.rglob("*.xmp") if mirror not in p.parents) == [own.name]


# ---- a read-only photo folder, through the command line --------------------------------------------------------------
def unprivileged() -> list[str]:
    """A prefix under which a read-only folder is read-only: root writes anywhere unless it gives up the right."""
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if not setpriv:
        pytest.skip("running as root, and no setpriv (util-linux) to drop the right to write anywhere")
    return [setpriv, "--bounding-set", "-dac_override,-dac_read_search"]


def test_a_read_only_folder_is_named_and_xmp_dir_writes_elsewhere(photos, tmp_path):
    key_file = tmp_path / "key_file.json"  # read before anything is sent; nothing is sent in the refused run
    key_file.write_text(json.dumps({"inference": {"key": "k"}, "management": {"key": "m"}}))
    locked = photos / "Поиск 2024"
    locked.chmod(0o555)
    try:
        command = [*unprivileged(), PYTHON, "-m", "client.tag_folder", str(photos), "--out", str(tmp_path / "out"),
                   "--key-file", str(key_file), "--url", "http://127.0.0.1:9/", "--xmp", "--no-progress"]
        refused = run(command, check=False)
        assert refused.returncode == 2, refused.stdout + refused.stderr
        assert f"cannot write sidecars in {locked}: the folder is read-only; pass --xmp-dir" in refused.stderr
        assert not (tmp_path / "out" / JSONL_NAME).exists()  # stopped before the first photo

        # The same folder with --xmp-dir, tagged in process (a tagger by name) under the same restriction.
        script = ("import sys; from pathlib import Path; from client.tag_folder import tag_folder, publish;"
                  "from client.sidecars import SidecarOptions; from tests.test_xmp import ANSWERS, TAXONOMY;"
                  "root, out, mirror = map(Path, sys.argv[1:]);"
                  "tag_folder(root, out, tagger=lambda d: ANSWERS[d.decode()], progress=False);"
                  "print(publish(root, out, taxonomy=TAXONOMY, sidecars=SidecarOptions(xmp_dir=mirror)).sidecars)")
        done = run([*unprivileged(), PYTHON, "-c", script, str(photos), str(tmp_path / "out"),
                    str(tmp_path / "mirror")], check=False)
        assert done.returncode == 0, done.stderr
        assert "3 written" in done.stdout, done.stdout
        assert sorted(os.listdir(locked)) == ["день в лесу.JPG", "ночь у реки 1.jpg"]
        assert keywords(tmp_path / "mirror" / (DAY + ".xmp"))["Subject"] == ["day", "summer", "forest", "cars",
                                                                              "drone"]
    finally:
        locked.chmod(0o755)


# ---- the real command against a real TorchServe ---------------------------------------------------------------------
@pytest.mark.server
def test_tag_folder_command_writes_sidecars_and_the_index(server, tiny_dataset, tmp_path):
    images = sorted((tiny_dataset.parent / "images").glob("*.jpg"))[:3]
    root = tmp_path / "Фото отряда"
    names = [NIGHT, DAY, "card/IMG 0003.jpg"]
    for name, image in zip(names, images):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(image, root / name)
    beside = root / (NIGHT + ".xmp")
    beside.write_text(OTHER_TOOL, encoding="utf-8")
    before = everything(beside)
    out = tmp_path / "out"
    command = [PYTHON, "-m", "client.tag_folder", str(root), "--out", str(out), "--url", server.inference_url,
               "--key-file", str(server.key_file), "--xmp", "--lang", "ru", "--no-progress"]
    first = run(command, check=False)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "sidecars:     3 written, 0 up to date" in first.stdout
    records = {r["file"]: r for r in map(json.loads, (out / JSONL_NAME).read_text(encoding="utf-8").splitlines())}
    assert sorted(records) == sorted(names)
    for name in names:
        expected = sidecar_tags(records[name], TAXONOMY, "ru")
        found = keywords(root / (name + ".xmp"))
        team = TEAM if name == NIGHT else {k: [] for k in KEYWORDS}
        assert found["TagsList"] == team["TagsList"] + expected.hierarchical("/")
        assert found["HierarchicalSubject"] == team["HierarchicalSubject"] + expected.hierarchical("|")
    after = everything(beside)
    assert all(after[k] == v for k, v in before.items() if k.split(":")[1] not in KEYWORDS)

    # The search index came with the run: every photo with its served time of day is found by its Russian name.
    night = records[NIGHT]["time_of_day"]["label"]
    ru = next(c.display_ru for c in TAXONOMY.group("time_of_day").classes if c.id == night)
    found = run([PYTHON, "-m", "client.search", str(out), f"time_of_day/{night}" if night == "unknown" else ru,
                 "--limit", "0"], check=False)
    assert found.returncode == 0, found.stderr
    listed = [line.split("\t")[1] for line in found.stdout.splitlines()]
    assert str(root.resolve() / NIGHT) in listed
    assert sorted(listed) == sorted(str(root.resolve() / n) for n in names
                                    if records[n]["time_of_day"]["label"] == night)

    again = run(command, check=False)
    assert again.returncode == 0 and "sidecars:     0 written, 3 up to date" in again.stdout, again.stdout

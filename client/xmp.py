"""XMP sidecars: one photo's tags written where photo managers read keywords, merged into what is already there.

Keywords go under one root ("AI tags", or "ИИ-теги" with --lang ru), so that they never mix with the team's own:

    digiKam:TagsList        AI tags/objects/dog_handler     digiKam, darktable; Immich reads it first
    lr:hierarchicalSubject  AI tags|objects|dog_handler     Lightroom; Immich's second choice
    dc:subject              dog_handler                     flat keywords, read by every XMP reader

The model's own answer goes into the project's namespace, prefix `phototag`, URI PHOTOTAG_NS (a name, not an
address: nothing is fetched from it):

    phototag:ModelVersion   the model version that answered
    phototag:Taxonomy       the taxonomy's name and version, e.g. sar-photo-tags/1
    phototag:Reviewed       True when the tags are a volunteer's (from the gallery's corrections), not the model's
    phototag:Root           the keyword root written, so that a run in the other language replaces it
    phototag:Subjects       the dc:subject entries this project added: the only ones a later run removes
    phototag:Scores         Seq of {Tag: objects/dog_handler, Score: 0.8312}: every class of every group
    phototag:Boxes          Seq of {Tag, X, Y, W, H, Score}, relative to the upright photo from its top-left
                            corner; written only when boxes are given (the model gives none yet)

Merging keeps everything else as it was: other namespaces and their prefixes, ratings, captions, face regions,
comments, the xpacket wrapper and the team's keywords. Only keywords under the project's roots, the dc:subject
entries it added itself and its own namespace are rewritten. A sidecar that is not XMP raises SidecarError and is
not touched; one whose tags a volunteer reviewed is not overwritten by a model's answer.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from lxml import etree

from phototag.taxonomy import SINGLE, UNKNOWN, Taxonomy

X_NS = "adobe:ns:meta/"
RDF_NS = "http://www.w3.org/1999/02/22-rdf-syntax-ns#"
DC_NS = "http://purl.org/dc/elements/1.1/"
LR_NS = "http://ns.adobe.com/lightroom/1.0/"
DIGIKAM_NS = "http://www.digikam.org/ns/1.0/"
PHOTOTAG_NS = "https://sar-photo-tagger.invalid/ns/phototag/1.0/"
OWN_PREFIXES = {"digiKam": DIGIKAM_NS, "lr": LR_NS, "dc": DC_NS, "phototag": PHOTOTAG_NS}
ROOTS = {"en": "AI tags", "ru": "ИИ-теги"}
# (property, hierarchy separator or None for flat, container a new property gets): the containers digiKam and
# Lightroom themselves write.
KEYWORD_LISTS = ((f"{{{DIGIKAM_NS}}}TagsList", "/", "Seq"), (f"{{{LR_NS}}}hierarchicalSubject", "|", "Bag"),
                 (f"{{{DC_NS}}}subject", None, "Bag"))
WRITTEN, KEPT_REVIEWED = "written", "kept_reviewed"
_BLANK = b" \t\r\n\x00\xef\xbb\xbf"  # whitespace, NULs and a UTF-8 BOM: nothing else means an empty file


def _rdf(name: str) -> str:
    return f"{{{RDF_NS}}}{name}"


def _own(name: str) -> str:
    return f"{{{PHOTOTAG_NS}}}{name}"


class SidecarError(Exception):
    """A sidecar that cannot be read as XMP or merged safely; it is left exactly as it was."""


@dataclass(frozen=True)
class Box:
    tag: str  # group/class id, e.g. objects/dog_handler
    x: float
    y: float
    w: float
    h: float
    score: float


@dataclass(frozen=True)
class SidecarTags:
    """What this project writes into one sidecar."""

    root: str
    paths: tuple[tuple[str, ...], ...]  # each keyword below the root, e.g. ("objects", "dog_handler")
    scores: tuple[tuple[str, float], ...]  # ("objects/dog_handler", 0.8312), every class
    model_version: str
    taxonomy: str
    reviewed: bool
    boxes: tuple[Box, ...] = ()

    def hierarchical(self, separator: str) -> list[str]:
        return [separator.join((self.root, *path)) for path in self.paths]

    @property
    def leaves(self) -> list[str]:
        return list(dict.fromkeys(path[-1] for path in self.paths))

    def digest(self) -> str:
        return hashlib.sha1(repr(self).encode("utf-8")).hexdigest()


def sidecar_tags(record: dict, taxonomy: Taxonomy, lang: str = "en", labels: dict | None = None,
                 boxes: tuple[Box, ...] = ()) -> SidecarTags:
    """The sidecar content of one tagged photo: its record's labels, or `labels` a volunteer reviewed (then the
    sidecar says Reviewed). Keywords use the ids (en) or the taxonomy's Russian names (ru); scores stay by id.
    The service's answer has no boxes yet; a model that gives them passes them in `boxes`."""
    reviewed = labels is not None
    if labels is None:
        labels = {g.name: record[g.name]["label"] if g.kind == SINGLE else record[g.name]["labels"]
                  for g in taxonomy.groups}
    paths = []
    for group in taxonomy.groups:
        chosen = {labels[group.name]} if group.kind == SINGLE else set(labels[group.name])
        for cls in group.classes:  # taxonomy order: the same tags always give the same sidecar
            if cls.id in chosen and not (group.kind == SINGLE and cls.id == UNKNOWN):
                paths.append((group.name, cls.id) if lang == "en" else (group.display_ru, cls.display_ru))
    scores = tuple((f"{g.name}/{c.id}", round(float(record[g.name]["scores"][c.id]), 4))
                   for g in taxonomy.groups for c in g.classes)
    return SidecarTags(ROOTS[lang], tuple(paths), scores, str(record.get("model_version", "")),
                       f"{taxonomy.name}/{taxonomy.version}", reviewed, tuple(boxes))


# ---- reading -------------------------------------------------------------------------------------------------------
def _parse(data: bytes) -> tuple[etree._ElementTree, etree._Element]:
    """(the document, its rdf:RDF element); SidecarError for anything that is not an XMP packet."""
    if not data.strip(_BLANK):
        raise SidecarError("empty file")
    # No DTD, no entities, no network: a sidecar comes from anywhere, and XMP uses none of them.
    parser = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False, huge_tree=False)
    try:
        element = etree.fromstring(data, parser)
    except (etree.XMLSyntaxError, ValueError) as exc:
        raise SidecarError(f"not XML ({exc})") from None
    tree = element.getroottree()
    if tree.docinfo.doctype:
        raise SidecarError("has a DOCTYPE, which XMP never has")
    if element.tag == _rdf("RDF"):
        return tree, element
    if element.tag in (f"{{{X_NS}}}xmpmeta", f"{{{X_NS}}}xapmeta"):
        rdf = element.find(_rdf("RDF"))
        if rdf is not None:
            return tree, rdf
    raise SidecarError(f"not XMP: the document is <{element.tag}> without rdf:RDF")


def _items(prop: etree._Element) -> list[etree._Element]:
    return [li for container in prop if isinstance(container.tag, str) for li in container.findall(_rdf("li"))]


def _value(description: etree._Element, name: str) -> etree._Element | str | None:
    """A property of a description, as its element or its attribute value."""
    element = description.find(name)
    return element if element is not None else description.get(name)


def read_sidecar(data: bytes) -> dict:
    """The keyword lists (by local name: TagsList, hierarchicalSubject, subject) and this project's simple
    properties of a sidecar, for checks; SidecarError as for a merge."""
    _, rdf = _parse(data)
    found: dict = {}
    for description in rdf.findall(_rdf("Description")):
        for name, _, _ in KEYWORD_LISTS:
            element = description.find(name)
            if element is not None:
                found.setdefault(etree.QName(name).localname, []).extend(li.text or "" for li in _items(element))
        for name in ("ModelVersion", "Taxonomy", "Reviewed", "Root"):
            value = _value(description, _own(name))
            if value is not None:
                found[name] = value if isinstance(value, str) else (value.text or "")
        subjects = description.find(_own("Subjects"))
        if subjects is not None:
            found["Subjects"] = [li.text or "" for li in _items(subjects)]
    return found


# ---- merging -------------------------------------------------------------------------------------------------------
@dataclass
class _Previous:
    reviewed: bool = False
    root: str | None = None
    subjects: tuple[str, ...] = ()


def _take_own_properties(rdf: etree._Element) -> _Previous:
    """Remove every phototag property (element or attribute form) and return what the last write recorded.
    A description that held nothing else goes too, so that reruns do not pile up empty ones."""
    previous = _Previous()
    for description in rdf.findall(_rdf("Description")):
        removed = False
        for name in [a for a in description.attrib if a.startswith(f"{{{PHOTOTAG_NS}}}")]:
            if name == _own("Reviewed"):
                previous.reviewed = description.get(name) == "True"
            elif name == _own("Root"):
                previous.root = description.get(name)
            del description.attrib[name]
            removed = True
        for child in list(description):
            if not (isinstance(child.tag, str) and child.tag.startswith(f"{{{PHOTOTAG_NS}}}")):
                continue
            if child.tag == _own("Reviewed"):
                previous.reviewed = (child.text or "").strip() == "True"
            elif child.tag == _own("Root"):
                previous.root = child.text
            elif child.tag == _own("Subjects"):
                previous.subjects = tuple(li.text or "" for li in _items(child))
            _remove(child)
            removed = True
        if removed and len(description) == 0 and set(description.attrib) <= {_rdf("about")}:
            _remove(description)
    return previous


def _keyword_list(rdf: etree._Element, name: str) -> etree._Element | None:
    """The container (rdf:Bag/Seq/Alt) of a keyword list wherever a description has it, or None."""
    for description in rdf.findall(_rdf("Description")):
        if description.get(name) is not None:
            raise SidecarError(f"{etree.QName(name).localname} is a single value here, not a list")
        prop = description.find(name)
        if prop is not None:
            containers = [c for c in prop if isinstance(c.tag, str)]
            if len(containers) != 1 or containers[0].tag not in (_rdf("Bag"), _rdf("Seq"), _rdf("Alt")):
                raise SidecarError(f"{etree.QName(name).localname} is not an rdf:Bag or rdf:Seq")
            return containers[0]
    return None


def _remove(element: etree._Element) -> None:
    """Remove an element; the whitespace before it stays in front of the next node."""
    parent = element.getparent()
    previous = element.getprevious()
    if previous is not None:
        previous.tail = element.tail
    else:
        parent.text = element.tail
    parent.remove(element)


def _append(parent: etree._Element, element: etree._Element) -> None:
    """Append with the indentation of the parent's existing children, so a merged file still reads as written."""
    children = list(parent)
    parent.append(element)
    if children:
        element.tail = children[-1].tail
        children[-1].tail = parent.text


def _new_packet() -> tuple[etree._ElementTree, etree._Element]:
    meta = etree.Element(f"{{{X_NS}}}xmpmeta", {f"{{{X_NS}}}xmptk": "sar-photo-tagger"}, nsmap={"x": X_NS})
    rdf = etree.SubElement(meta, _rdf("RDF"), nsmap={"rdf": RDF_NS})
    meta.addprevious(etree.ProcessingInstruction("xpacket", 'begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"'))
    meta.addnext(etree.ProcessingInstruction("xpacket", 'end="w"'))
    return meta.getroottree(), rdf


def _struct_list(parent: etree._Element, name: str, rows: list[dict[str, str]]) -> None:
    seq = etree.SubElement(etree.SubElement(parent, _own(name)), _rdf("Seq"))
    for row in rows:
        item = etree.SubElement(seq, _rdf("li"), {_rdf("parseType"): "Resource"})
        for field, text in row.items():
            etree.SubElement(item, _own(field)).text = text


def merge(existing: bytes | None, tags: SidecarTags) -> bytes | None:
    """The sidecar to write: `existing` (None for a new one) with this project's part replaced by `tags`.
    None when the existing sidecar holds tags a volunteer reviewed and `tags` are only a model's answer.
    SidecarError when `existing` cannot be read as XMP or is not shaped so that a merge keeps all of it."""
    if existing is None:
        tree, rdf = _new_packet()
        declaration = False
    else:
        tree, rdf = _parse(existing)
        declaration = existing.lstrip(_BLANK).startswith(b"<?xml")
    lists = {name: _keyword_list(rdf, name) for name, _, _ in KEYWORD_LISTS}  # checked before anything changes
    previous = _take_own_properties(rdf)
    if previous.reviewed and not tags.reviewed:
        return None
    roots = {*ROOTS.values(), tags.root} | ({previous.root} if previous.root else set())
    descriptions = rdf.findall(_rdf("Description"))
    about = descriptions[0].get(_rdf("about"), "") if descriptions else ""
    own = etree.Element(_rdf("Description"), {_rdf("about"): about}, nsmap=OWN_PREFIXES)
    added_subjects: list[str] = []
    for name, separator, kind in KEYWORD_LISTS:
        container = lists[name]
        if separator:
            def ours(text: str, sep: str = separator) -> bool:
                return any(text == root or text.startswith(root + sep) for root in roots)
        else:
            def ours(text: str) -> bool:
                return text in previous.subjects
        removed = 0
        if container is not None:
            for item in container.findall(_rdf("li")):
                if ours(item.text or ""):
                    _remove(item)
                    removed += 1
        present = {item.text or "" for item in container.findall(_rdf("li"))} if container is not None else set()
        wanted = tags.hierarchical(separator) if separator else tags.leaves
        new = [text for text in wanted if text not in present]  # a flat keyword the team already has stays theirs
        if not separator:
            added_subjects = new
        if container is None and new:
            container = etree.SubElement(etree.SubElement(own, name), _rdf(kind))
        elif container is not None and removed and not new and not container.findall(_rdf("li")):
            prop = container.getparent()  # the list held only this project's keywords: it goes
            description = prop.getparent()
            _remove(prop)
            if len(description) == 0 and set(description.attrib) <= {_rdf("about")}:
                _remove(description)
            continue
        for text in new:
            item = etree.Element(_rdf("li"))
            item.text = text
            _append(container, item)
    etree.SubElement(own, _own("ModelVersion")).text = tags.model_version
    etree.SubElement(own, _own("Taxonomy")).text = tags.taxonomy
    etree.SubElement(own, _own("Reviewed")).text = "True" if tags.reviewed else "False"
    etree.SubElement(own, _own("Root")).text = tags.root
    subjects = etree.SubElement(etree.SubElement(own, _own("Subjects")), _rdf("Bag"))
    for text in added_subjects:
        etree.SubElement(subjects, _rdf("li")).text = text
    _struct_list(own, "Scores", [{"Tag": tag, "Score": f"{score:.4f}"} for tag, score in tags.scores])
    if tags.boxes:
        _struct_list(own, "Boxes", [{"Tag": b.tag, "X": f"{b.x:.5f}", "Y": f"{b.y:.5f}", "W": f"{b.w:.5f}",
                                     "H": f"{b.h:.5f}", "Score": f"{b.score:.4f}"} for b in tags.boxes])
    etree.indent(own, space=" ", level=2)
    _append(rdf, own)
    if existing is None:
        etree.indent(tree, space=" ")
    # Node by node: a whole-tree serialisation runs the xpacket wrapper into the root element on one line.
    root = tree.getroot()
    nodes = [*reversed(list(root.itersiblings(preceding=True))), root, *root.itersiblings()]
    parts = [etree.tostring(node, encoding="UTF-8", with_tail=False) for node in nodes]
    if declaration:
        parts.insert(0, b'<?xml version="1.0" encoding="UTF-8"?>')
    return b"\n".join(parts) + b"\n"


# ---- writing -------------------------------------------------------------------------------------------------------
def temporary_path(path: Path) -> Path:
    """Hidden, beside the sidecar (a rename is atomic only within one file system), and the same name every time,
    so a run killed mid-write leaves at most one stale file per sidecar, which the next write replaces."""
    return path.with_name(f".{path.name}.phototag-tmp")


def write_atomic(path: Path, data: bytes) -> None:
    """Replace path with data in one rename: a reader, or a kill at any moment, sees the old file or the new one."""
    tmp = temporary_path(path)
    try:
        before = path.stat()
    except FileNotFoundError:
        before = None
    with open(tmp, "wb") as handle:
        handle.write(data)
        if before is not None:
            # Someone's metadata is at stake: on disk before the rename, or a power cut could leave an empty file.
            handle.flush()
            os.fsync(handle.fileno())
    if before is not None:
        os.chmod(tmp, before.st_mode & 0o7777)
        try:
            os.chown(tmp, before.st_uid, before.st_gid)
        except PermissionError:
            pass  # only root can give a file away; the sidecar then belongs to whoever runs the tagger
    os.replace(tmp, path)


def write_sidecar(path: Path, tags: SidecarTags, start_from: Path | None = None) -> str:
    """Create or merge one sidecar: WRITTEN, or KEPT_REVIEWED when a volunteer's tags in it were left alone.
    A new sidecar starts as a merge into `start_from` where that exists (the photo's own sidecar, when this one
    goes to another folder). SidecarError (nothing is changed) or OSError (it could not be written)."""
    existing = base = None
    try:
        existing = base = path.read_bytes()
    except FileNotFoundError:
        if start_from is not None and start_from.is_file():
            base = start_from.read_bytes()
    data = merge(base, tags)
    if data is None:
        if existing is None:
            write_atomic(path, base)  # the reviewed sidecar, carried over as it is
        return KEPT_REVIEWED
    if existing is not None and not os.access(path, os.W_OK):
        raise SidecarError("the file is read-only")  # someone protected it; their choice outranks ours
    write_atomic(path, data)
    return WRITTEN

import json
import math

import pytest

from phototag.taxonomy import DEFAULT_TAXONOMY_PATH, MULTI, SINGLE, Taxonomy, TaxonomyError, logits_to_tags


@pytest.fixture(scope="module")
def taxonomy():
    return Taxonomy.load()


def test_groups_cover_every_logit_exactly_once(taxonomy):
    covered = []
    for group in taxonomy.groups:
        covered.extend(range(group.logits.start, group.logits.stop))
    assert covered == list(range(taxonomy.num_logits))
    assert taxonomy.num_logits == 20
    assert taxonomy.head_sizes == {"time_of_day": 4, "season": 5, "terrain": 3, "objects": 8}


def test_every_class_has_russian_name_and_csv_mapping(taxonomy):
    for group in taxonomy.groups:
        assert group.display_ru
        for cls in group.classes:
            assert cls.display_ru
            if group.kind == SINGLE:
                assert isinstance(cls.code, int)
            else:
                assert cls.csv_column
    assert taxonomy.csv_columns() == ["Названия", "Время суток", "Время года", "Местность", "Авиа", "Автомобили",
                                      "БПЛА", "Водолаз", "Кинолог", "Кони", "Объятия", "Шерп"]


def test_round_trip_through_json_keeps_thresholds(tmp_path, taxonomy):
    tuned = taxonomy.with_thresholds({"drone": 0.3, "sherp": 0.7})
    tuned.save(tmp_path / "t.json")
    again = Taxonomy.load(tmp_path / "t.json")
    assert again == tuned
    assert again.thresholds()["drone"] == 0.3 and again.thresholds()["cars"] == 0.5


def test_thresholds_for_unknown_classes_are_refused(taxonomy):
    with pytest.raises(TaxonomyError, match="not yes/no"):
        taxonomy.with_thresholds({"day": 0.3})


@pytest.mark.parametrize("mutate, message", [
    (lambda d: d["groups"][0].update(kind="multiple"), "kind"),
    (lambda d: d["groups"][0]["classes"][1].update(code=0), "duplicate codes"),
    (lambda d: d["groups"][3]["classes"][0].pop("csv_column"), "csv_column"),
    (lambda d: d["groups"].append(dict(d["groups"][0])), "twice"),
    (lambda d: d["groups"][3]["classes"][0].update(threshold=1.5), "threshold"),
])
def test_malformed_taxonomies_are_refused(mutate, message):
    data = json.loads(DEFAULT_TAXONOMY_PATH.read_text(encoding="utf-8"))
    mutate(data)
    with pytest.raises(TaxonomyError, match=message):
        Taxonomy.from_dict(data)


def test_model_size_mismatch_is_a_clear_error(taxonomy):
    with pytest.raises(TaxonomyError, match="16 outputs but the taxonomy describes 20"):
        taxonomy.check_model_outputs(16)


def _logits(taxonomy, single=None, objects=None):
    """Logit vector with a strong winner per single-choice group and +/-4 per object."""
    values = [0.0] * taxonomy.num_logits
    for group in taxonomy.groups:
        if group.kind == SINGLE:
            winner = group.class_ids.index((single or {}).get(group.name, "unknown"))
            values[group.start + winner] = 5.0
        else:
            for k, cls in enumerate(group.classes):
                values[group.start + k] = 4.0 if cls.id in (objects or []) else -4.0
    return values


def test_logits_to_tags_has_the_documented_shape(taxonomy):
    logits = _logits(taxonomy, {"time_of_day": "day", "season": "winter", "terrain": "forest"}, ["dog_handler"])
    result = logits_to_tags(logits, taxonomy, "1.0")
    assert set(result) == {"time_of_day", "season", "terrain", "objects", "tags", "model_version"}
    assert result["time_of_day"]["label"] == "day"
    assert set(result["time_of_day"]["scores"]) == {"unknown", "day", "night", "twilight"}
    assert math.isclose(sum(result["season"]["scores"].values()), 1.0, abs_tol=1e-3)
    assert result["objects"]["labels"] == ["dog_handler"]
    assert len(result["objects"]["scores"]) == 8
    assert result["tags"] == ["day", "winter", "forest", "dog_handler"]
    assert result["model_version"] == "1.0"
    json.dumps(result)  # plain JSON types only


def test_unknown_values_are_not_tags(taxonomy):
    result = logits_to_tags(_logits(taxonomy, {"time_of_day": "night"}), taxonomy, "1.0")
    assert result["season"]["label"] == "unknown"
    assert result["tags"] == ["night"]


def test_object_thresholds_decide_labels(taxonomy):
    logits = _logits(taxonomy)
    drone = taxonomy.group("objects").start + taxonomy.group("objects").class_ids.index("drone")
    logits[drone] = 0.0  # sigmoid 0.5
    assert "drone" in logits_to_tags(logits, taxonomy, "1")["objects"]["labels"]
    strict = taxonomy.with_thresholds({"drone": 0.6})
    assert "drone" not in logits_to_tags(logits, strict, "1")["objects"]["labels"]
    lenient = taxonomy.with_thresholds({"drone": 0.4})
    assert "drone" in logits_to_tags(logits, lenient, "1")["tags"]


def test_extreme_logits_do_not_overflow(taxonomy):
    logits = [1e4 if i % 2 else -1e4 for i in range(taxonomy.num_logits)]
    result = logits_to_tags(logits, taxonomy, "1")
    assert all(0.0 <= s <= 1.0 for s in result["objects"]["scores"].values())


def test_wrong_length_is_refused(taxonomy):
    with pytest.raises(TaxonomyError):
        logits_to_tags([0.0] * 16, taxonomy, "1")


def test_kinds_are_known(taxonomy):
    assert {g.kind for g in taxonomy.groups} == {SINGLE, MULTI}

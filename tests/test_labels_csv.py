import pytest

from phototag.labels_csv import LabelCsvError, read_labels_csv, write_labels_csv
from phototag.taxonomy import Taxonomy

HEADER_RU = "Названия;Время суток;Время года;Местность;Авиа;Автомобили;БПЛА;Водолаз;Кинолог;Кони;Объятия;Шерп"


@pytest.fixture(scope="module")
def taxonomy():
    return Taxonomy.load()


def _write(tmp_path, text, encoding="utf-8"):
    path = tmp_path / "labels.csv"
    path.write_bytes(text.encode(encoding))
    return path


@pytest.mark.parametrize("encoding", ["utf-8", "utf-8-sig", "cp1251"])
def test_russian_headers_in_each_encoding(tmp_path, taxonomy, encoding):
    path = _write(tmp_path, HEADER_RU + "\nimg1.jpg;2;1;1;0;0;1;0;1;0;0;0\n", encoding)
    [row] = read_labels_csv(path, taxonomy)
    assert row.filename == "img1.jpg"
    assert row.labels == {"time_of_day": "night", "season": "winter", "terrain": "forest",
                          "objects": ["drone", "dog_handler"]}


def test_comma_separated_english_ids_and_float_cells(tmp_path, taxonomy):
    header = "filename,time_of_day,season,terrain,aviation,cars,drone,diver,dog_handler,horses,hugs,sherp"
    path = _write(tmp_path, header + "\na.png,3,4.0,2,1,1,0,0,0,0,1,1\n\n")
    [row] = read_labels_csv(path, taxonomy)
    assert row.labels["time_of_day"] == "twilight" and row.labels["season"] == "autumn"
    assert row.labels["objects"] == ["aviation", "cars", "hugs", "sherp"]


def test_out_of_range_label_names_row_and_column(tmp_path, taxonomy):
    path = _write(tmp_path, HEADER_RU + "\na.jpg;1;1;1;0;0;0;0;0;0;0;0\nb.jpg;1;7;1;0;0;0;0;0;0;0;0\n")
    with pytest.raises(LabelCsvError, match=r"line 3, column 'Время года': season: code 7"):
        read_labels_csv(path, taxonomy)


def test_object_flag_must_be_0_or_1(tmp_path, taxonomy):
    path = _write(tmp_path, HEADER_RU + "\na.jpg;1;1;1;0;0;2;0;0;0;0;0\n")
    with pytest.raises(LabelCsvError, match=r"line 2, column 'БПЛА': 2 is not 0 or 1"):
        read_labels_csv(path, taxonomy)


def test_non_numeric_cell(tmp_path, taxonomy):
    path = _write(tmp_path, HEADER_RU + "\na.jpg;day;1;1;0;0;0;0;0;0;0;0\n")
    with pytest.raises(LabelCsvError, match=r"line 2, column 'Время суток': 'day' is not a number"):
        read_labels_csv(path, taxonomy)


def test_missing_column_is_named(tmp_path, taxonomy):
    path = _write(tmp_path, HEADER_RU.replace(";Кони", "") + "\n")
    with pytest.raises(LabelCsvError, match="missing column.*Кони or horses"):
        read_labels_csv(path, taxonomy)


def test_short_row(tmp_path, taxonomy):
    path = _write(tmp_path, HEADER_RU + "\na.jpg;1;1\n")
    with pytest.raises(LabelCsvError, match="line 2: 3 cells"):
        read_labels_csv(path, taxonomy)


def test_write_then_read_round_trip(tmp_path, taxonomy):
    items = [("x.jpg", {"time_of_day": "day", "season": "unknown", "terrain": "city", "objects": []}),
             ("y.jpg", {"time_of_day": "unknown", "season": "spring", "terrain": "unknown",
                        "objects": ["horses", "sherp"]})]
    write_labels_csv(tmp_path / "out.csv", items, taxonomy)
    assert (tmp_path / "out.csv").read_text(encoding="utf-8").splitlines()[0] == HEADER_RU
    rows = read_labels_csv(tmp_path / "out.csv", taxonomy)
    assert [(r.filename, r.labels) for r in rows] == items

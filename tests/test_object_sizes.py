"""training.object_sizes: object recall and F1 by object size, on hand-made examples."""
from __future__ import annotations

import numpy as np
import pytest

from training.object_sizes import breakdown_by_size, format_breakdown, object_sizes


def test_sizes_take_the_largest_instance_and_leave_absent_objects_nan():
    boxes = {"a.jpg": [{"object": "drone", "size": 0.08}, {"object": "drone", "size": 0.12},
                       {"object": "cars", "size": 0.3}],
             "b.jpg": []}
    sizes = object_sizes(["a.jpg", "b.jpg", "c.jpg"], ["cars", "drone", "hugs"], boxes)
    assert sizes[0].tolist()[:2] == [0.3, 0.12] and np.isnan(sizes[0, 2])
    assert np.isnan(sizes[1:]).all()


def test_breakdown_counts_recall_per_bucket_and_false_positives_against_each():
    # one object, six photos: small found, small missed, medium found, large missed, two without (one tagged)
    truth = np.array([[1], [1], [1], [1], [0], [0]])
    predicted = np.array([[1], [0], [1], [0], [1], [0]])
    sizes = np.array([[0.05], [0.08], [0.15], [0.3], [np.nan], [np.nan]])
    result = breakdown_by_size(truth, predicted, sizes, ["drone"])
    small, medium, large = result["<10%"], result["10-20%"], result[">=20%"]
    assert (small["positives"], small["recall"]) == (2, 0.5)
    assert small["f1"] == pytest.approx(2 * 1 / (2 + 2))  # photos 0, 1, 4, 5: tp 1, fp 1, fn 1
    assert (medium["positives"], medium["recall"], medium["f1"]) == (1, 1.0, pytest.approx(2 / 3))
    assert (large["positives"], large["recall"], large["f1"]) == (1, 0.0, 0.0)
    assert result["<10%"]["objects"]["drone"] == {"positives": 2, "recall": 0.5, "f1": small["f1"]}
    lines = format_breakdown(result)
    assert len(lines) == 4 and "10-20%" in lines[2]


def test_an_empty_bucket_says_so_rather_than_scoring_zero():
    result = breakdown_by_size(np.array([[1]]), np.array([[1]]), np.array([[0.25]]), ["cars"])
    assert result["<10%"]["recall"] is None and result["<10%"]["f1"] is None
    assert "-" in format_breakdown(result)[1]

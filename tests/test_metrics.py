import numpy as np

from phototag.taxonomy import Taxonomy
from training.metrics import evaluate_logits, f1_score, majority_baseline, single_choice_metrics, tune_thresholds

TAXONOMY = Taxonomy.load()


def test_f1_and_macro_f1_on_hand_computed_cases():
    assert f1_score(np.array([1, 1, 0, 0]), np.array([1, 0, 1, 0])) == 0.5
    assert f1_score(np.zeros(3), np.zeros(3)) == 0.0
    m = single_choice_metrics(np.array([0, 0, 1, 1]), np.array([0, 1, 1, 1]), 3)
    assert m["accuracy"] == 0.75
    assert np.isclose(m["macro_f1"], np.mean([2 / 3, 0.8]))  # class 2 absent from both: not averaged


def _targets(n, rng):
    t = {g.name: rng.integers(0, g.size, n) for g in TAXONOMY.single_groups}
    t["objects"] = (rng.random((n, 8)) < 0.3).astype(np.float32)
    return t


def test_perfect_logits_score_one_and_baseline_scores_less():
    rng = np.random.default_rng(0)
    targets = _targets(200, rng)
    logits = np.full((200, TAXONOMY.num_logits), -6.0)
    for g in TAXONOMY.single_groups:
        logits[np.arange(200), g.start + targets[g.name]] = 6.0
    objects = TAXONOMY.group("objects")
    logits[:, objects.logits] = np.where(targets["objects"] > 0, 6.0, -6.0)
    metrics = evaluate_logits(logits, targets, TAXONOMY)
    assert metrics["mean_object_f1"] == 1.0
    assert all(metrics[g.name]["macro_f1"] == 1.0 for g in TAXONOMY.single_groups)
    baseline = majority_baseline(targets, targets, TAXONOMY)
    assert baseline["mean_object_f1"] == 0.0  # every object is rarer than 50%: majority says "absent"
    assert baseline["time_of_day"]["accuracy"] < 0.5


def test_threshold_tuning_finds_the_separating_threshold():
    rng = np.random.default_rng(1)
    targets = _targets(300, rng)
    logits = np.zeros((300, TAXONOMY.num_logits))
    objects = TAXONOMY.group("objects")
    # positives score sigmoid ~0.73, negatives ~0.62: a 0.5 threshold calls everything present
    logits[:, objects.logits] = np.where(targets["objects"] > 0, 1.0, 0.5)
    thresholds = tune_thresholds(logits, targets, TAXONOMY)
    assert all(0.62 < t <= 0.73 for t in thresholds.values())
    tuned = evaluate_logits(logits, targets, TAXONOMY.with_thresholds(thresholds))
    assert tuned["mean_object_f1"] == 1.0
    assert evaluate_logits(logits, targets, TAXONOMY)["mean_object_f1"] < 0.6


def test_uninformative_scores_keep_the_default_threshold():
    """Scores that do not separate the classes must not be 'tuned' into tagging every photo with everything."""
    rng = np.random.default_rng(2)
    targets = _targets(400, rng)
    logits = np.zeros((400, TAXONOMY.num_logits))
    logits[:, TAXONOMY.group("objects").logits] = rng.normal(-1.2, 0.1, (400, 8))  # noise around sigmoid 0.23
    assert set(tune_thresholds(logits, targets, TAXONOMY).values()) == {0.5}

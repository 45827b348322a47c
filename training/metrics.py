"""Per-head metrics, the majority-class baseline and per-object threshold tuning (numpy, no sklearn).

Headline metric, as in the original write-up: the mean F1 over the yes/no objects.
"""
from __future__ import annotations

import numpy as np

from phototag.taxonomy import SINGLE, Taxonomy

THRESHOLD_GRID = np.round(np.arange(0.05, 0.951, 0.025), 3)
# A tuned threshold must beat answering "yes" for every photo by this much F1, else the default stays: a
# threshold that tags every photo with every object would make the photobank's object search useless.
MIN_GAIN_OVER_ALWAYS_YES = 0.05


def f1_score(truth: np.ndarray, predicted: np.ndarray) -> float:
    """Binary F1; 0.0 when there are no positives and none are predicted (sklearn's zero_division default)."""
    truth, predicted = truth.astype(bool), predicted.astype(bool)
    tp = np.sum(truth & predicted)
    denominator = truth.sum() + predicted.sum()
    return 0.0 if denominator == 0 else float(2 * tp / denominator)


def single_choice_metrics(truth: np.ndarray, predicted: np.ndarray, num_classes: int) -> dict:
    """Accuracy and macro-F1 over the classes that occur in the truth or the predictions."""
    classes = [c for c in range(num_classes) if np.any(truth == c) or np.any(predicted == c)]
    per_class = [f1_score(truth == c, predicted == c) for c in classes]
    return {"accuracy": float(np.mean(truth == predicted)), "macro_f1": float(np.mean(per_class))}


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))  # no overflow for large |x|


def softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def precision_recall(truth: np.ndarray, predicted: np.ndarray) -> tuple[float, float]:
    """Binary precision and recall; 0.0 where undefined (as f1_score does)."""
    truth, predicted = truth.astype(bool), predicted.astype(bool)
    tp = float(np.sum(truth & predicted))
    return (tp / int(predicted.sum()) if predicted.any() else 0.0), (tp / int(truth.sum()) if truth.any() else 0.0)


def metrics_from_predictions(truth: dict[str, np.ndarray], predicted: dict[str, np.ndarray],
                             taxonomy: Taxonomy) -> dict:
    """The one metrics routine: per group, truth and predictions as class indices [N] (single-choice) or 0/1
    [N, K] (objects). Single-choice heads get accuracy, macro-F1, per-class F1 and the confusion matrix (rows:
    truth); each object its F1, precision, recall and counts; plus the headline mean object F1. Logits, served
    answers and baselines are all converted into predictions first."""
    result: dict = {}
    object_f1 = []
    for group in taxonomy.groups:
        true, pred = np.asarray(truth[group.name]), np.asarray(predicted[group.name])
        if group.kind == SINGLE:
            m = single_choice_metrics(true, pred, group.size)
            confusion = np.zeros((group.size, group.size), dtype=np.int64)
            np.add.at(confusion, (true, pred), 1)
            m.update(classes=group.class_ids, confusion=confusion.tolist(),
                     f1_per_class={c: f1_score(true == k, pred == k) for k, c in enumerate(group.class_ids)})
            result[group.name] = m
        else:
            f1, precision, recall, positives, predicted_count = {}, {}, {}, {}, {}
            for k, cls in enumerate(group.classes):
                f1[cls.id] = f1_score(true[:, k], pred[:, k])
                precision[cls.id], recall[cls.id] = precision_recall(true[:, k], pred[:, k])
                positives[cls.id], predicted_count[cls.id] = int(true[:, k].sum()), int(pred[:, k].sum())
            result[group.name] = {"f1": f1, "precision": precision, "recall": recall, "positives": positives,
                                  "predicted": predicted_count, "mean_f1": float(np.mean(list(f1.values())))}
            object_f1.extend(f1.values())
    result["mean_object_f1"] = float(np.mean(object_f1)) if object_f1 else float("nan")
    return result


def predictions_from_logits(logits: np.ndarray, taxonomy: Taxonomy) -> dict[str, np.ndarray]:
    """Logits [N, num_logits] -> per group the argmax [N] or (sigmoid >= the class's threshold) [N, K]."""
    taxonomy.check_model_outputs(logits.shape[1])
    predicted = {}
    for group in taxonomy.groups:
        chunk = logits[:, group.logits]
        if group.kind == SINGLE:
            predicted[group.name] = chunk.argmax(axis=1)
        else:
            predicted[group.name] = sigmoid(chunk) >= np.array([c.threshold for c in group.classes])
    return predicted


def pr_curve(truth: np.ndarray, scores: np.ndarray) -> dict:
    """Precision-recall points at every distinct score (descending) and the average precision (sklearn's step
    definition). recall/precision start at (0, 1) so the curve can be drawn from the top-left."""
    truth = truth.astype(bool)
    order = np.argsort(-scores, kind="stable")
    s, t = scores[order], truth[order]
    positives = int(truth.sum())
    if len(s) == 0:
        return {"recall": [0.0], "precision": [1.0], "thresholds": [], "average_precision": 0.0, "positives": 0}
    last = np.r_[np.nonzero(np.diff(s))[0], len(s) - 1]  # last index of each run of equal scores
    tp, fp = np.cumsum(t)[last], np.cumsum(~t)[last]
    precision = tp / (tp + fp)
    recall = tp / positives if positives else np.zeros_like(tp, dtype=float)
    ap = float(np.sum(np.diff(np.r_[0.0, recall]) * precision)) if positives else 0.0
    return {"recall": [0.0] + recall.tolist(), "precision": [1.0] + precision.tolist(),
            "thresholds": s[last].tolist(), "average_precision": ap, "positives": positives}


def evaluate_logits(logits: np.ndarray, targets: dict[str, np.ndarray], taxonomy: Taxonomy) -> dict:
    """Metrics of logits [N, num_logits] against targets (per group: class indices [N] or 0/1 [N, K]), with each
    object's average precision (`average_precision`) and their mean (`mean_object_ap`): F1 alone hides a model
    at chance, whose AP sits at the object's base rate."""
    result = metrics_from_predictions(targets, predictions_from_logits(logits, taxonomy), taxonomy)
    ap = []
    for group in taxonomy.multi_groups:
        chunk = logits[:, group.logits]
        per_class = {cls.id: pr_curve(targets[group.name][:, k], chunk[:, k])["average_precision"]
                     for k, cls in enumerate(group.classes)}
        result[group.name]["average_precision"] = per_class
        ap.extend(per_class.values())
    result["mean_object_ap"] = float(np.mean(ap)) if ap else float("nan")
    return result


def majority_baseline(train_targets: dict[str, np.ndarray], eval_targets: dict[str, np.ndarray],
                      taxonomy: Taxonomy) -> dict:
    """What predicting the training set's most frequent answer for every head scores on the eval targets."""
    predicted = {}
    for group in taxonomy.groups:
        count = len(eval_targets[group.name])
        if group.kind == SINGLE:
            majority = np.bincount(train_targets[group.name], minlength=group.size).argmax()
            predicted[group.name] = np.full(count, majority)
        else:
            majority = train_targets[group.name].mean(axis=0) >= 0.5
            predicted[group.name] = np.tile(majority, (count, 1))
    return metrics_from_predictions(eval_targets, predicted, taxonomy)


def tune_thresholds(logits: np.ndarray, targets: dict[str, np.ndarray], taxonomy: Taxonomy) -> dict[str, float]:
    """Per yes/no class, the threshold on the validation split that gives the best F1 (ties: closest to 0.5);
    the class's current threshold where no threshold clearly beats tagging every photo."""
    thresholds = {}
    for group in taxonomy.groups:
        if group.kind == SINGLE:
            continue
        probs = sigmoid(logits[:, group.logits])
        for k, cls in enumerate(group.classes):
            truth = targets[group.name][:, k]
            best_f1, _, best_t = max((f1_score(truth, probs[:, k] >= t), -abs(t - 0.5), t) for t in THRESHOLD_GRID)
            always_yes = f1_score(truth, np.ones_like(truth))
            thresholds[cls.id] = float(best_t) if best_f1 >= always_yes + MIN_GAIN_OVER_ALWAYS_YES else cls.threshold
    return thresholds


def format_metrics(metrics: dict, taxonomy: Taxonomy) -> str:
    """A few human-readable lines: per single-choice head acc / macro-F1, per object F1, the headline."""
    lines = []
    for group in taxonomy.groups:
        m = metrics[group.name]
        if group.kind == SINGLE:
            lines.append(f"  {group.name:<12} acc {m['accuracy']:.3f}  macro-F1 {m['macro_f1']:.3f}")
        else:
            lines.append(f"  {group.name:<12} " + "  ".join(f"{k} {v:.2f}" for k, v in m["f1"].items()))
    lines.append(f"  mean object F1 {metrics['mean_object_f1']:.4f}"
                 + (f"  mean object AP {metrics['mean_object_ap']:.4f}" if "mean_object_ap" in metrics else ""))
    return "\n".join(lines)

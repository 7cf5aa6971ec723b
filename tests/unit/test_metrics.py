"""Metrics against brute force and scikit-learn; metrics.json, predictions round trip, the PNG, rich reports."""
from __future__ import annotations

import io
import itertools
import json
import math
import struct

import numpy as np
import pytest
import torch
from rich.console import Console

from finetune.metrics import (accuracy, auc_ovr_per_class, average_ranks, binary_auc, confusion_matrix,
                              evaluate_predictions, format_layer_weights, grouped_accuracy, headline, log_loss,
                              macro_auc_ovr, per_class_accuracy, plot_confusion_matrix, print_report,
                              read_predictions, results_cells, results_table, summarise_seeds, text_bar,
                              write_metrics, write_predictions)

try:  # the reference implementation; not a runtime dependency of tessera
    import sklearn.metrics as skm
except ImportError:
    skm = None
needs_sklearn = pytest.mark.skipif(skm is None, reason="scikit-learn is not installed")

CLASSES = ["airport", "bus", "metro", "park"]


def random_probs(n: int, c: int, seed: int = 0, quantise: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Softmax probabilities and labels; ``quantise`` rounds them to a grid of 1/quantise so that many ties occur
    (rows then no longer sum exactly to 1)."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(n, c)) * 2
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    if quantise:
        probs = np.round(probs * quantise) / quantise
    return probs, rng.integers(0, c, size=n)


def brute_auc(scores: np.ndarray, positive: np.ndarray) -> float:
    """Every (positive, negative) pair: 1 when the positive scores higher, 1/2 on a tie."""
    pos, neg = scores[positive], scores[~positive]
    total = sum(1.0 if p > q else 0.5 if p == q else 0.0 for p, q in itertools.product(pos, neg))
    return total / (len(pos) * len(neg))


def test_average_ranks_ties():
    np.testing.assert_allclose(average_ranks([10, 20, 10, 30, 20, 10]), [2, 4.5, 2, 6, 4.5, 2])


@pytest.mark.parametrize("quantise", [None, 10])
def test_auc_against_brute_force(quantise):
    probs, labels = random_probs(120, 4, seed=1, quantise=quantise)
    if quantise:
        assert len(np.unique(probs[:, 0])) <= 11  # ties everywhere
    per_class = auc_ovr_per_class(probs, labels)
    for c in range(4):
        assert per_class[c] == pytest.approx(brute_auc(probs[:, c], labels == c), abs=1e-12)
    assert macro_auc_ovr(probs, labels) == pytest.approx(np.mean(per_class), abs=1e-15)


@needs_sklearn
@pytest.mark.parametrize("quantise", [None, 10])
def test_auc_against_sklearn(quantise):
    probs, labels = random_probs(120, 4, seed=1, quantise=quantise)
    per_class = auc_ovr_per_class(probs, labels)
    for c in range(4):
        assert per_class[c] == pytest.approx(skm.roc_auc_score(labels == c, probs[:, c]), abs=1e-12)
    if not quantise:  # sklearn's multi-class path insists that rows sum to 1
        assert macro_auc_ovr(probs, labels) == pytest.approx(
            skm.roc_auc_score(labels, probs, multi_class="ovr", average="macro"), abs=1e-12)


def test_auc_skips_classes_without_positives_and_handles_torch():
    probs, labels = random_probs(50, 4, seed=2)
    labels[labels == 3] = 0  # class 3 has no positives
    per_class = auc_ovr_per_class(torch.from_numpy(probs).float(), torch.from_numpy(labels))
    assert math.isnan(per_class[3]) and not np.isnan(per_class[:3]).any()
    assert macro_auc_ovr(probs, labels) == pytest.approx(np.mean([brute_auc(probs[:, c], labels == c)
                                                                   for c in range(3)]))
    assert math.isnan(binary_auc([0.1, 0.2], [True, True]))
    assert binary_auc([0.5, 0.5, 0.5], [True, False, False]) == 0.5


@needs_sklearn
def test_log_loss_against_sklearn():
    probs, labels = random_probs(200, 4, seed=3)
    assert log_loss(probs, labels) == pytest.approx(skm.log_loss(labels, probs, labels=range(4)), rel=1e-12)


def test_log_loss_by_hand_and_clipping():
    probs, labels = random_probs(200, 4, seed=3)
    assert log_loss(probs, labels) == pytest.approx(-np.mean(np.log(probs[np.arange(200), labels])), rel=1e-12)
    # A zero on the true class costs -log(eps / renormalised row), not infinity.
    p = np.array([[0.0, 1.0], [0.5, 0.5]])
    eps = 1e-15
    clipped = np.clip(p, eps, 1 - eps)
    clipped /= clipped.sum(1, keepdims=True)
    expected = -(np.log(clipped[0, 0]) + np.log(clipped[1, 1])) / 2
    assert log_loss(p, [0, 1]) == pytest.approx(expected, rel=1e-12)
    assert log_loss(p, [0, 1]) == pytest.approx((-math.log(eps) + math.log(2)) / 2, rel=1e-9)


def test_accuracy_confusion_matrix_and_per_class_against_loops():
    probs, labels = random_probs(300, 4, seed=4)
    preds = probs.argmax(1)
    cm = confusion_matrix(preds, labels, 4)
    loop = np.zeros((4, 4), dtype=np.int64)
    for y, p in zip(labels, preds):
        loop[y, p] += 1
    np.testing.assert_array_equal(cm, loop)
    if skm is not None:
        np.testing.assert_array_equal(cm, skm.confusion_matrix(labels, preds, labels=range(4)))
    assert accuracy(probs, labels) == pytest.approx(np.trace(loop) / 300)
    np.testing.assert_allclose(per_class_accuracy(preds, labels, 4), np.diag(loop) / loop.sum(1))
    assert math.isnan(per_class_accuracy([0, 0], [0, 0], 2)[1])
    with pytest.raises(ValueError):
        confusion_matrix([0, 4], [0, 1], 4)


def test_grouped_accuracy():
    preds = [0, 1, 1, 2, 0, 0]
    labels = [0, 1, 0, 2, 1, 0]
    groups = ["b", "a", "a", "b", "c", "b"]
    assert grouped_accuracy(preds, labels, groups) == {"a": (0.5, 2), "b": (1.0, 3), "c": (0.0, 1)}


def tau_like(n: int = 90, seed: int = 5):
    probs, labels = random_probs(n, 4, seed=seed)
    devices = ["a", "b", "s1", "s4"]
    meta = [{"device": devices[i % 4], "city": ["lyon", "paris", "milan"][i % 3]} for i in range(n)]
    meta[0] = {"city": "lyon"}  # a clip without a device is skipped in device groups
    return probs, labels, meta


def test_evaluate_predictions_and_metrics_json(tmp_path):
    probs, labels, meta = tau_like()
    m = evaluate_predictions(probs, labels, CLASSES, meta, seen_devices={"A", "b", "s1"})
    assert m["accuracy"] == pytest.approx(accuracy(probs, labels))
    assert m["macro_auc"] == pytest.approx(macro_auc_ovr(probs, labels))
    assert m["log_loss"] == pytest.approx(log_loss(probs, labels))
    assert sum(m["per_class"][c]["n"] for c in CLASSES) == 90
    assert np.array(m["confusion_matrix"]).sum() == 90
    assert set(m["groups"]) == {"device", "city"}  # no clip has a domain
    assert sum(g["n"] for g in m["groups"]["device"].values()) == 89
    preds = probs.argmax(1)
    by_city = grouped_accuracy(preds, labels, [x["city"] for x in meta])
    assert {k: (v["accuracy"], v["n"]) for k, v in m["groups"]["city"].items()} == by_city
    seen, unseen = m["seen_unseen"]["seen"], m["seen_unseen"]["unseen"]
    assert seen["devices"] == ["a", "b", "s1"] and unseen["devices"] == ["s4"]
    assert seen["n"] + unseen["n"] == 89
    mask = np.array([x.get("device") == "s4" for x in meta])
    assert unseen["accuracy"] == pytest.approx(accuracy(probs[mask], labels[mask]))

    path = write_metrics(tmp_path / "run" / "metrics.json", m)
    assert json.loads(path.read_text()) == json.loads(json.dumps(m))
    assert not list(path.parent.glob(".*tmp"))  # no temporary left behind


def test_nan_becomes_null_in_metrics_json(tmp_path):
    probs, labels = random_probs(20, 4, seed=6)
    labels[:] = np.arange(20) % 2 + 1  # only bus and metro present: airport and park AUCs are undefined
    m = evaluate_predictions(probs, labels, CLASSES)
    assert m["per_class"]["airport"]["auc"] is None and m["per_class"]["airport"]["accuracy"] is None
    both = [binary_auc(probs[:, c], labels == c) for c in (1, 2)]
    assert m["macro_auc"] == pytest.approx(np.mean(both))
    assert json.loads(write_metrics(tmp_path / "m.json", m).read_text())["per_class"]["bus"]["n"] == 10
    labels[:] = 1  # a single class: no AUC is defined at all
    assert evaluate_predictions(probs, labels, CLASSES)["macro_auc"] is None


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_predictions_round_trip(tmp_path, suffix):
    probs, labels = random_probs(25, 4, seed=7)
    probs = probs.astype(np.float32)  # what a model emits
    labels[3] = -1  # unlabelled clip
    keys = [f"airport-lisbon-1000-{i}-a" for i in range(25)]
    path = write_predictions(tmp_path / f"predictions{suffix}", keys, torch.from_numpy(probs), labels, CLASSES)
    back = read_predictions(path)
    assert back.keys == keys and back.classes == CLASSES
    np.testing.assert_array_equal(back.labels, labels)
    np.testing.assert_array_equal(back.probs, probs.astype(np.float64))  # exact
    if suffix == ".csv":
        header, first = path.read_text().splitlines()[:2]
        assert header == "key,label,predicted,airport,bus,metro,park"
        assert first.split(",")[2] == CLASSES[int(probs[0].argmax())]


def png_size(path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_confusion_matrix_png(tmp_path):
    pytest.importorskip("matplotlib")
    classes = ["airport", "shopping_mall", "metro_station", "street_pedestrian", "public_square",
               "street_traffic", "tram", "bus", "metro", "park"]
    probs, labels = random_probs(500, 10, seed=8)
    probs[np.arange(500), labels] += 1.0  # a mostly-diagonal matrix, like a trained model
    cm = confusion_matrix(probs.argmax(1), labels, 10)
    path = plot_confusion_matrix(cm, classes, tmp_path / "figs" / "confusion.png", title="double-norm, seed 0")
    w, h = png_size(path)
    assert 600 <= w <= 3000 and 600 <= h <= 3000
    assert 20_000 < path.stat().st_size < 2_000_000


def test_rich_reports_render():
    probs, labels, meta = tau_like()
    m = evaluate_predictions(probs, labels, CLASSES, meta, seen_devices=["a", "b", "s1"])
    console = Console(file=io.StringIO(), width=120, color_system=None)
    print_report(m, CLASSES, console)
    out = console.file.getvalue()
    for text in ("Per class", "airport", "Per device", "s4", "Per city", "seen/unseen device",
                 f"{100 * m['accuracy']:.2f}"):
        assert text in out
    console.print(format_layer_weights(torch.tensor([0.1, 0.2, 0.3, 0.4])))
    assert "█" * 30 in console.file.getvalue()  # the largest weight gets the full bar
    assert text_bar(0.0) == "" and text_bar(0.5, width=4) == "██" and text_bar(0.5, width=1) == "▌"


def test_a_grouping_under_two_names_is_printed_once():
    probs, labels, meta = tau_like()
    meta = [{**m, "domain": m["city"]} for m in meta]  # the synthetic corpus: domain is the city
    m = evaluate_predictions(probs, labels, CLASSES, meta)
    assert m["groups"]["domain"] == m["groups"]["city"]  # metrics.json keeps both names
    console = Console(file=io.StringIO(), width=120, color_system=None)
    print_report(m, CLASSES, console)
    out = console.file.getvalue()
    assert "Per city" in out and "Per domain" not in out


def test_summarise_seeds_and_results_table():
    runs = [{"accuracy": a, "macro_auc": u, "groups": {"device": {"a": {"accuracy": a / 2}}}, "classes": ["x"]}
            for a, u in ((0.5, 0.8), (0.6, 0.9), (0.7, None))]
    s = summarise_seeds(runs)
    assert s["accuracy"]["mean"] == pytest.approx(0.6) and s["accuracy"]["n"] == 3
    assert s["accuracy"]["std"] == pytest.approx(np.std([0.5, 0.6, 0.7], ddof=1))
    assert s["macro_auc"]["n"] == 2 and s["macro_auc"]["mean"] == pytest.approx(0.85)  # None is skipped
    assert s["groups.device.a.accuracy"]["mean"] == pytest.approx(0.3)
    assert "classes" not in s
    assert math.isnan(summarise_seeds(runs[:1])["accuracy"]["std"])

    table = results_table({"baseline": runs, "double-norm": runs[:1]})
    console = Console(file=io.StringIO(), width=120, color_system=None)
    console.print(table)
    out = console.file.getvalue()
    assert "60.00 ± 10.00" in out and "85.00 ± 7.07" in out and "50.00 ± –" in out


def test_results_cells_reads_nested_columns_and_marks_missing_ones():
    runs = [{"accuracy": a, "seen_unseen": {"seen": {"accuracy": a + 0.1}, "unseen": {"accuracy": a - 0.1}}}
            for a in (0.4, 0.6)]
    columns = (("Acc", "accuracy", 100.0), ("unseen", "seen_unseen.unseen.accuracy", 100.0),
               ("AUC", "macro_auc", 100.0))
    [(name, cells, n)] = results_cells({"teacher": runs}, columns)
    assert (name, n) == ("teacher", 2)
    assert cells == ["50.00 ± 14.14", "40.00 ± 14.14", "–"]


def test_headline_keeps_the_compared_figures_and_the_device_shift():
    probs = np.eye(3)[[0, 1, 2, 0]] * 0.7 + 0.1
    meta = [{"device": d} for d in ("a", "a", "s4", "s4")]
    m = evaluate_predictions(probs, np.array([0, 1, 2, 1]), ["x", "y", "z"], meta, seen_devices=["a"])
    h = headline(m)
    assert set(h) == {"accuracy", "macro_auc", "log_loss", "num_clips", "seen_unseen"}
    assert h["accuracy"] == 0.75 and h["num_clips"] == 4
    assert h["seen_unseen"] == {"seen": {"accuracy": 1.0, "n": 2}, "unseen": {"accuracy": 0.5, "n": 2}}
    assert "seen_unseen" not in headline(evaluate_predictions(probs, np.array([0, 1, 2, 1]), ["x", "y", "z"]))

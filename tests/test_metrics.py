from __future__ import annotations

import dask.array as dsa
import numpy as np
import pytest
import xarray as xr

from geoarray.metrics import change_f1, confusion_matrix, effective_rank, scores, topk_accuracy


def test_confusion_and_scores_against_hand_computation():
    truth = np.array([0, 0, 1, 1, 1, 2, 2, 255])
    pred = np.array([0, 1, 1, 1, 0, 2, 1, 2])
    cm = confusion_matrix(pred, truth, 3, ignore_index=255)
    np.testing.assert_array_equal(cm, [[1, 1, 0], [1, 2, 0], [0, 1, 1]])
    s = scores(cm, ["a", "b", "c"])
    # class b: tp 2, fp 2, fn 1 -> IoU 2/5, precision 1/2, recall 2/3, F1 4/7, Dice 4/7
    assert np.isclose(s["iou"]["b"], 2 / 5) and np.isclose(s["precision"]["b"], 0.5)
    assert (
        np.isclose(s["recall"]["b"], 2 / 3)
        and np.isclose(s["f1"]["b"], 4 / 7)
        and np.isclose(s["dice"]["b"], 4 / 7)
    )
    assert np.isclose(s["mean_iou"], np.mean([1 / 3, 2 / 5, 1 / 2]))
    assert np.isclose(s["accuracy"], 4 / 7)


def test_dask_and_xarray_inputs_match_numpy():
    rng = np.random.default_rng(0)
    t = rng.integers(0, 4, size=(3, 50, 60))
    p = np.where(rng.random(t.shape) < 0.8, t, rng.integers(0, 4, size=t.shape))
    ref = confusion_matrix(p, t, 4)
    lazy = xr.DataArray(dsa.from_array(p, chunks=(1, 20, 25)), dims=("time", "y", "x"))
    np.testing.assert_array_equal(confusion_matrix(lazy, xr.DataArray(t, dims=("time", "y", "x")), 4), ref)


def test_topk_change_and_rank():
    logits = np.array([[0.1, 0.9, 0.0], [0.8, 0.1, 0.1], [0.2, 0.3, 0.5]])
    assert topk_accuracy(logits, [1, 1, 0], k=1) == 1 / 3
    assert topk_accuracy(logits, [1, 1, 0], k=2) == 2 / 3
    a, b = np.array([0, 0, 1, 1]), np.array([0, 1, 1, 0])
    assert change_f1(a, b, a, b) == 1.0
    assert change_f1(a, a, a, b) == 0.0
    z = np.random.default_rng(0).normal(size=(500, 8))
    assert 7 < effective_rank(z) <= 8
    assert effective_rank(np.outer(np.arange(100), np.ones(8))) < 1.01


def test_confusion_aligns_xarray_by_dimension_and_refuses_mismatched_shapes():
    from geoarray.errors import CubeError

    truth = xr.DataArray(np.array([[0, 1], [1, 1]], dtype="uint8"), dims=("y", "x"))
    pred = xr.DataArray(
        np.array([[[0, 1], [0, 1]], [[1, 1], [1, 1]]], dtype="uint8"), dims=("time", "y", "x")
    )
    cm = confusion_matrix(pred, truth.chunk(), 2)  # every date scored against the one truth
    np.testing.assert_array_equal(cm, [[1, 1], [1, 5]])
    with pytest.raises(CubeError, match=r"prediction shape \(2, 2, 2\) differs from truth shape \(2, 2\)"):
        confusion_matrix(pred.values, truth.values, 2)


def test_confusion_refuses_coordinates_that_do_not_match():
    from geoarray.errors import CubeError

    y, x = np.arange(4.0), np.arange(5.0)
    pred = xr.DataArray(np.zeros((2, 4, 5), "uint8"), dims=("time", "y", "x"), coords={"y": y, "x": x})
    truth = xr.DataArray(np.zeros((4, 5), "uint8"), dims=("y", "x"), coords={"y": y + 1e-9, "x": x})
    with pytest.raises(CubeError, match=r"prediction and truth coordinates differ.*same grid"):
        confusion_matrix(pred, truth, 2)  # an outer join would have scored nothing, silently


# -- evaluate(pred, truth): class maps, class names, partial outputs (issue 8) -----------------------------
def _map(values, name, classes=None, **attrs):
    a = dict(attrs)
    if classes is not None:
        a["classes"] = list(classes)
    dims = ("time", "y", "x") if np.ndim(values) == 3 else ("y", "x")
    return xr.DataArray(np.asarray(values), dims=dims, name=name, attrs=a).chunk({"y": 2})


def test_evaluate_matches_classes_by_name():
    from geoarray.metrics import evaluate

    truth = _map(
        np.array([[0, 1, 2], [2, 1, 255]], np.uint8), "labels", ["water", "forest", "field"], nodata=255
    )
    # the model knows the same classes in another order: its id 0 is 'field', 1 'water', 2 'forest'
    pred = _map(np.array([[1, 2, 0], [0, 1, 0]], np.uint8), "mask", ["field", "water", "forest"], nodata=255)
    s = evaluate(pred, truth)
    assert list(s["iou"]) == ["water", "forest", "field"]
    # by name: water ok, forest ok, field ok, field ok, forest predicted as water -> wrong; nodata skipped
    assert s["support"] == {"water": 1, "forest": 2, "field": 2} and np.isclose(s["accuracy"], 4 / 5)
    assert s["recall"]["forest"] == 0.5 and s["precision"]["water"] == 0.5


@pytest.mark.parametrize(
    ("pred", "truth", "message"),
    [
        # a cloud model scored against land cover: nothing in common by name
        (
            ("mask", np.uint8, ["cloud", "clear"]),
            ("labels", np.uint8, list("abcde")),
            r"\['cloud', 'clear'\] are not",
        ),
        (
            ("imagery", np.float32, None),
            ("labels", np.uint8, list("abc")),
            r"'imagery' has dtype float32; expected integer",
        ),
        (("mask", np.uint8, list("abc")), ("valid", bool, None), r"'valid' has dtype bool; expected integer"),
    ],
)
def test_evaluate_refuses_what_is_not_comparable(pred, truth, message):
    from geoarray.errors import CubeError
    from geoarray.metrics import evaluate

    vals = np.array([[0, 1], [1, 0]])
    p = _map(vals.astype(pred[1]), pred[0], pred[2])
    t = _map(vals.astype(truth[1]), truth[0], truth[2])
    with pytest.raises(CubeError, match=message):
        evaluate(p, t)


def test_evaluate_refuses_ids_outside_the_named_classes_and_partial_outputs():
    from geoarray.errors import CubeError
    from geoarray.metrics import evaluate

    truth = _map(np.array([[0, 1], [4, 255]], np.uint8), "labels")  # unnamed, ids up to 4
    pred = _map(np.array([[0, 1], [1, 0]], np.uint8), "mask", ["a", "b"], nodata=255)
    with pytest.raises(CubeError, match=r"1 pixels of 'labels' hold class ids outside 0..1"):
        evaluate(pred, truth)  # id 4 was silently dropped from the scores
    truth = _map(np.array([[0, 1], [1, 1]], np.uint8), "labels")
    partial = pred.assign_attrs(geoarray_complete=False)
    with pytest.raises(CubeError, match=r"'mask' is a partial output.*allow_partial=True"):
        evaluate(partial, truth)
    assert evaluate(partial, truth, allow_partial=True)["accuracy"] == 0.75
    multilabel = xr.DataArray(np.zeros((2, 2, 2), np.uint8), dims=("class", "y", "x"), name="mask")
    with pytest.raises(CubeError, match=r"multi-label"):
        evaluate(multilabel, truth)


def test_effective_rank_matches_a_hand_computation():
    # centred already; orthogonal columns of norms sqrt(18) and sqrt(2): singular values 3√2 and √2, so
    # p = (0.75, 0.25) and the effective rank is exp(-(0.75 ln 0.75 + 0.25 ln 0.25)) = 1.7548...
    z = np.array([[3.0, 0.0], [-3.0, 0.0], [0.0, 1.0], [0.0, -1.0]])
    assert effective_rank(z) == pytest.approx(np.exp(-(0.75 * np.log(0.75) + 0.25 * np.log(0.25))), rel=1e-12)
    assert effective_rank(z) == pytest.approx(1.75476, abs=1e-5)
    assert effective_rank(np.eye(3) - 1 / 3) == pytest.approx(2.0)  # centred I3: rank 2, equal values
    assert effective_rank(np.full((5, 4), 7.0)) == 1.0  # constant embeddings: fully collapsed

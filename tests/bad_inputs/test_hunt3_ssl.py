"""The third real-data hunt: self-supervised features, probe, labels from regions, chips and metrics, and the CLI
around them.

Each test is one bad row of tests/bad_inputs/HUNT-2026-11-30-ssl.md; its comment says what happened before.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import make_checkpoint

import geoarray
from geoarray.datasets import synthetic_cube
from geoarray.errors import GeoArrayError, ProbeError, TimeError

BANDS = ("blue", "green", "red", "nir")
PROBE = {"protocols": ("knn",), "label_fractions": (1.0,), "max_pixels": 600, "tile_size": 8}


@pytest.fixture(scope="module")
def cube():
    return synthetic_cube(size=48, n_times=3, seed=3).load()


@pytest.fixture(scope="module")
def encoder(tmp_path_factory):
    """A pixel time-series feature encoder (random init), as task='barlow_twins' saves one."""
    path = tmp_path_factory.mktemp("enc") / "bt.safetensors"
    return make_checkpoint(path, "pixel_cnn", task="barlow_twins", width=8, out_channels=8)


# -- probe ------------------------------------------------------------------------------------------------------
def test_probe_refuses_dates_out_of_order(cube, encoder):
    # row 9: probe fed the pixel encoder series in the cube's (shuffled) order and scored them (top-1 0.942
    # against 0.960 in order on the L7 cube); predict refuses such a cube
    assert len(geoarray.probe(cube, encoder, **PROBE)) == 3
    with pytest.raises(TimeError, match="sortby"):
        geoarray.probe(cube.isel(time=[2, 0, 1]), encoder, **PROBE)


def test_probe_refuses_labels_of_one_class(cube, encoder):
    # row 10: every pixel of class 0 -> top-1 = 1.0 for every encoder and protocol, no warning
    one = cube.copy()
    one["labels"] = one["labels"].where(one["labels"] == 255, 0).astype(one["labels"].dtype)
    with pytest.raises(ProbeError, match="at least 2 classes"):
        geoarray.probe(one, encoder, **PROBE)


@pytest.mark.parametrize("var", ["imagery", "valid"])
def test_probe_refuses_a_label_variable_that_is_not_a_class_map(cube, encoder, var):
    # row 11: labels="imagery" -> xarray ValueError "('y', 'x') must be a permuted list of ('band', 'y', 'x')";
    # labels="valid" (bool) -> scored as classes 0/1, top-1 1.0
    with pytest.raises(ProbeError, match=r"class map|integer class ids"):
        geoarray.probe(cube, encoder, labels=var, **PROBE)


def test_probe_options_are_checked_before_work(cube, encoder):
    # row 12: label_fractions=0.5 -> TypeError "'float' object is not iterable"; seed=-1 -> numpy ValueError
    # "expected non-negative integer"; max_pixels=0 -> "0 labelled tiles ... label more of the cube";
    # chip_size=0 ran with the checkpoint's chip size
    opts = {k: v for k, v in PROBE.items() if k != "label_fractions"}
    df = geoarray.probe(cube, encoder, label_fractions=1.0, **opts)
    assert df["label_fraction"].tolist() == [1.0] * 3
    assert len(geoarray.probe(cube, encoder, **{**PROBE, "protocols": "knn"})) == 3
    for bad, match in (
        ({"seed": -1}, "seed=-1"),
        ({"max_pixels": 0}, "max_pixels=0"),
        ({"chip_size": 0}, "chip_size=0"),
        ({"label_fractions": "all"}, "label_fractions"),
    ):
        with pytest.raises(ProbeError, match=match):
            geoarray.probe(cube, encoder, **{**PROBE, **bad})


def test_probe_warns_when_its_split_is_too_thin_to_mean_much(cube, encoder):
    # row 26: the 4 real L8 polygons under 16-px chips gave 6 held-out chips, one class of them never trained on:
    # top-1 0.0 / 0.333 for every encoder, no word about it
    from geoarray.errors import GeoArrayWarning

    with pytest.warns(GeoArrayWarning, match=r"only \d+ held-out pixels"):
        geoarray.probe(cube, encoder, **{**PROBE, "max_pixels": 30})


def test_probe_masks_the_fill_a_cube_declares_by_its_nodata_attr(cube, encoder):
    # row 44: a cube without `valid` whose imagery declares nodata=-9999 (as a rioxarray-built cube does): probe
    # fed the -9999 fill to the encoders as data, where predict masks it
    fill = cube["valid"].expand_dims(band=cube["band"]).transpose(*cube["imagery"].dims)
    img = cube["imagery"].where(fill, -9999.0)
    masked = cube.assign(imagery=img)  # fill in the invalid pixels, and `valid` says where
    declared = masked.drop_vars("valid")
    declared["imagery"].attrs["nodata"] = -9999.0
    want = geoarray.probe(masked, encoder, **{**PROBE, "protocols": ("knn", "linear")})
    got = geoarray.probe(declared, encoder, **{**PROBE, "protocols": ("knn", "linear")})
    np.testing.assert_allclose(got["top1"].to_numpy(), want["top1"].to_numpy())


# -- metrics ----------------------------------------------------------------------------------------------------
def test_scores_refuses_class_names_that_do_not_fit_the_matrix():
    # row 30: scores(cm 3x3, ["a", "b"]) dropped class 2 from the per-class dicts (the means kept it); 4 names ->
    # IndexError
    from geoarray.metrics import confusion_matrix, scores

    cm = confusion_matrix(np.array([0, 1, 1, 1, 1, 2]), np.array([0, 0, 1, 1, 2, 2]), 3)
    s = scores(cm, ["a", "b", "c"])
    assert s["iou"] == pytest.approx({"a": 0.5, "b": 0.5, "c": 0.5})  # tp 1, 2, 1 over unions 2, 4, 2
    for names in (["a", "b"], ["a", "b", "c", "d"]):
        with pytest.raises(GeoArrayError, match="class names"):
            scores(cm, names)


def test_confusion_matrix_refuses_probabilities_as_class_ids():
    # row 31: float predictions were truncated (0.9 -> class 0, 1.7 -> class 1) and counted
    from geoarray.metrics import confusion_matrix

    t = np.array([0, 1, 1])
    assert confusion_matrix(np.array([0.0, 1.0, np.nan]), t, 2).tolist() == [[1, 0], [0, 1]]  # NaN skipped
    with pytest.raises(GeoArrayError, match="not class ids"):
        confusion_matrix(np.array([0.2, 0.9, 1.7]), t, 2)


def test_topk_accuracy_refuses_targets_outside_the_classes_and_k_below_one():
    # row 32: targets 7 and -1 (nodata) were counted as misses (top-1 0.4 of 5); k=0 -> 0.0
    from geoarray.metrics import topk_accuracy

    logits = np.eye(3)[[0, 1, 2, 0, 1]]
    assert topk_accuracy(logits, np.array([0, 1, 2, 0, 0]), 1) == pytest.approx(0.8)
    for target in ([0, 1, 7, 0, 1], [0, 1, -1, 0, 1]):
        with pytest.raises(GeoArrayError, match="not class ids"):
            topk_accuracy(logits, np.array(target), 1)
    with pytest.raises(GeoArrayError, match="k=0"):
        topk_accuracy(logits, np.array([0, 1, 2, 0, 1]), 0)


def test_effective_rank_refuses_nan_and_1d_embeddings():
    # row 33: NaN -> numpy LinAlgError "SVD did not converge"; 1-D -> LinAlgError
    from geoarray.metrics import effective_rank

    assert effective_rank(np.eye(4)) == pytest.approx(3.0)  # centred: 3 equal singular values
    with pytest.raises(GeoArrayError, match="NaN"):
        effective_rank(np.full((10, 4), np.nan))
    with pytest.raises(GeoArrayError, match="samples, dims"):
        effective_rank(np.ones(10))


def test_evaluate_applies_valid_to_a_static_prediction():
    # row 34: valid= was ignored when the prediction had no time dim: all-False valid still scored 0.8
    import xarray as xr

    from geoarray.metrics import evaluate

    c = {"y": np.arange(2.0), "x": np.arange(5.0)}
    attrs = {"classes": ["a", "b", "c"], "nodata": 255}
    truth = xr.DataArray(np.array([[0, 1, 2, 0, 1]] * 2, np.uint8), dims=("y", "x"), coords=c, attrs=attrs)
    pred = xr.DataArray(np.array([[0, 1, 1, 0, 1]] * 2, np.uint8), dims=("y", "x"), coords=c, attrs=attrs)
    truth.name, pred.name = "labels", "mask"
    valid = xr.DataArray(np.ones((2, 2, 5), bool), dims=("time", "y", "x"), coords=c)
    assert evaluate(pred, truth, valid=valid)["accuracy"] == pytest.approx(0.8)  # counted once, not per date
    valid[:, :, 2] = False  # the one wrong column: invalid on every date
    valid[0, :, 0] = False  # valid on one date: still counted
    s = evaluate(pred, truth, valid=valid)
    assert s["accuracy"] == 1.0 and s["support"] == {"a": 4, "b": 4, "c": 0}


# -- labels from vector regions ---------------------------------------------------------------------------------
def _regions_file(path, cube, extra):
    """A GeoJSON (EPSG:4326, not the cube's CRS) of the cube's west and east halves, classes 'west' and 'east',
    then the ``extra`` (name, shapely geometry in the cube's CRS) features."""
    import json

    import shapely
    from pyproj import Transformer
    from shapely.geometry import mapping

    to = Transformer.from_crs(cube.rio.crs, "EPSG:4326", always_xy=True)
    x0, x1 = float(cube.x[0]) - 1, float(cube.x[-1]) + 1
    xm = float(cube.x[cube.sizes["x"] // 2] - (cube.x[1] - cube.x[0]) / 2)  # a pixel edge: 24 columns each
    y0, y1 = float(cube.y[-1]) - 1, float(cube.y[0]) + 1
    feats = [("west", shapely.box(x0, y0, xm, y1)), ("east", shapely.box(xm, y0, x1, y1)), *extra]
    doc = {
        "type": "FeatureCollection",
        "features": [
            {
                "type": "Feature",
                "properties": {"name": n},
                "geometry": mapping(shapely.transform(g, lambda xy: np.column_stack(to.transform(*xy.T))))
                if not g.is_empty
                else {"type": "Polygon", "coordinates": []},
            }
            for n, g in feats
        ],
    }
    path.write_text(json.dumps(doc))
    return path


def test_regions_with_an_empty_geometry_are_left_out(tmp_path, cube):
    # row 20: a feature with an empty polygon became a class 'empty' of 0 pixels, silently carried by the model
    import shapely

    from geoarray.chips.regions import rasterize_regions

    path = _regions_file(tmp_path / "r.geojson", cube, [("empty", shapely.Polygon())])
    ids, names = rasterize_regions(cube, path, property="name")
    assert names == ["east", "west"]
    assert (ids == 1).sum() == 48 * 24 and (ids == 0).sum() == 48 * 24


@pytest.mark.parametrize("where", ["outside", "under"])
def test_region_classes_that_label_nothing_are_warned_about(tmp_path, cube, where):
    # rows 21-22: a class whose polygon lies outside the cube, or classes painted over by a later polygon (GDAL
    # burns last-wins), were kept as classes with no pixel or chip, silently
    import shapely

    from geoarray.chips import plan_chips, region_labels
    from geoarray.chips.regions import rasterize_regions
    from geoarray.errors import GeoArrayWarning

    x0, y0 = float(cube.x[0]), float(cube.y[0])
    extra = (
        [("far", shapely.box(x0 + 1e5, y0, x0 + 1e5 + 100, y0 + 100))]
        if where == "outside"
        else [("all", shapely.box(x0 - 50, float(cube.y[-1]) - 50, float(cube.x[-1]) + 50, y0 + 50))]
    )
    path = _regions_file(tmp_path / "r.geojson", cube, extra)
    unused = "'far'" if where == "outside" else "'east', 'west'"
    with pytest.warns(GeoArrayWarning, match=f"region classes \\[{unused}\\] label no pixel"):
        rasterize_regions(cube, path, property="name")
    plan = plan_chips(cube, chip_size=16, val_fraction=0.0, labels=None)
    with pytest.warns(GeoArrayWarning, match=f"region classes \\[{unused}\\] label no chip"):
        region_labels(plan, cube, str(path), property="name")


# -- predict_chips ----------------------------------------------------------------------------------------------
def test_predict_chips_refuses_a_date_named_twice(tmp_path, cube):
    # row 27: times=[0, 0] (or [0, "2021-03-01"]) ran the date twice: an output with a duplicate time coordinate
    from geoarray.errors import PredictError

    ck = make_checkpoint(
        tmp_path / "vr.safetensors", "resnet18", task="vicreg", width=4, num_classes=0,
        _meta={"training": {"chip_size": 16}},
    )  # fmt: skip
    out = geoarray.predict_chips(cube, ck, times=[1, 0], outputs="features")  # one output, given as a str
    assert out["features"].shape[:1] == (2,) and list(out["time"].values) == list(cube["time"].values[[1, 0]])
    first = str(cube["time"].values[0])[:10]
    for times in ([0, 0], [0, first]):
        with pytest.raises(PredictError, match="names a date twice"):
            geoarray.predict_chips(cube, ck, times=times)


# -- the CLI ----------------------------------------------------------------------------------------------------
def test_cli_task_kw_takes_lists_with_commas():
    # row 38: `geoarray fit --task vicreg --task-kw crop_scale=0.5,1` -> "task_kwargs crop_scale='0.5,1'; expected a
    # pair of numbers", and nothing said how to pass a pair (or invariants' heads list) on the command line
    from geoarray.cli._model import _parse_kv
    from geoarray.tasks import get_task

    kw = _parse_kv(
        ["crop_scale=0.5,1", "heads=arrow_of_time, temporal_association", "blur_p=0", "tag=a b"], "--task-kw"
    )
    assert kw == {
        "crop_scale": [0.5, 1],
        "heads": ["arrow_of_time", "temporal_association"],
        "blur_p": 0,
        "tag": "a b",
    }
    assert get_task("vicreg", crop_scale=kw["crop_scale"]).augment.crop_scale == [0.5, 1]
    assert get_task("invariants", heads=kw["heads"]).heads == ["arrow_of_time", "temporal_association"]


# -- fit --------------------------------------------------------------------------------------------------------
def test_batch_size_one_on_a_pixel_model_names_pixels_not_chips(tmp_path, cube):
    # row 3: barlow_twins on pixel_cnn with batch_size=1 said "(one chip, reduced to 1x1) ... or larger chips":
    # pixel series have no chips to enlarge
    from geoarray.errors import TrainError

    with pytest.raises(TrainError, match=r"one pixel series\)\. Expected batch_size >= 2\.$"):
        geoarray.fit(
            cube, task="barlow_twins", model="pixel_cnn", model_kwargs={"width": 4, "out_channels": 4},
            chip_size=16, batch_size=1, epochs=1, steps_per_epoch=1, pixels_per_chip=8, progress=False,
            out=tmp_path / "b.safetensors",
        )  # fmt: skip


def test_a_vector_file_given_as_a_label_raster_points_to_regions(tmp_path, cube):
    # row 23: read_labels("lc.gpkg", cube) -> "not a readable raster ... Expected a GeoTIFF", with no word on how
    # polygons become labels
    import shapely

    from geoarray.errors import RasterError

    path = _regions_file(tmp_path / "r.geojson", cube, [("x", shapely.box(0, 0, 1, 1))])
    with pytest.raises(RasterError, match=r"It is a vector file: polygons label chips as regions=.*gdal_rasterize"):
        geoarray.read_labels(path, cube)

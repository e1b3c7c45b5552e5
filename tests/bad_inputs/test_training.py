"""Bad training inputs seen on real data: each is refused before any training work, with a message that says
what was found, what was expected and how to fix it."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import xarray as xr
from helpers import write_west_east_regions

import geoarray
from geoarray.datasets import synthetic_cube
from geoarray.errors import TrainError
from geoarray.training import FitConfig

FAST = {"chip_size": 32, "epochs": 1, "batch_size": 8, "progress": False, "steps_per_epoch": 1}
UNET = {"model": "unet", "model_kwargs": {"width": 4, "depth": 3}}


@pytest.fixture(scope="module")
def cube():
    return synthetic_cube(size=128, n_times=3, seed=0, chunks=64)


@pytest.fixture(scope="module")
def regions(cube, tmp_path_factory):
    """Two regions (west, east) as a real GeoJSON file in lon/lat."""
    return write_west_east_regions(cube, tmp_path_factory.mktemp("regions") / "regions.geojson", split=64)


def _labels(values_of, **attrs):
    """A cube transform: ``labels`` replaced by ``values_of(labels values)`` with ``attrs``."""

    def make(cube):
        out = cube.copy()
        out["labels"] = xr.DataArray(values_of(cube.labels.values), dims=cube.labels.dims, attrs=attrs)
        return out

    return make


def _multilabel(cube):
    lab = cube.labels.values[0]
    out = cube.drop_vars("labels")
    out["labels"] = (("class", "y", "x"), np.stack([lab, lab]))  # class ids 0..4, not 0/1 masks
    return out


CLASSES = ["water", "forest", "field", "urban", "new_building"]
CLS = {"task": "classification", "regions": "REGIONS", "region_property": "k"}
RESNET = {"model": "resnet18", "model_kwargs": {"width": 4}}
# case: (cube transform or None, fit options, message pattern); "REGIONS" / "WEST_ONLY" name the fixture's regions
CASES = {
    "unet for chip classification": (
        None,
        {**CLS, **UNET},
        r"model 'unet' outputs a map per pixel, which task 'classification' cannot train; expected one of "
        r"\['resnet18', 'resnet50'\].*task='segmentation'",
    ),
    "resnet18 for segmentation": (
        None,
        {"task": "segmentation", **RESNET},
        r"model 'resnet18' outputs one class per chip, which task 'segmentation' cannot train.*'unet'.*"
        r"task='classification'",
    ),
    "unet for pixel classification": (
        None,
        {"task": "pixel_classification", **UNET},
        r"task 'pixel_classification' cannot train; expected one of \['pixel_cnn', 'pixel_mlp', "
        r"'pixel_transformer'\]",
    ),
    "pixel_mlp built for 5 dates, cube has 3": (
        None,
        {"task": "pixel_classification", "model": "pixel_mlp", "model_kwargs": {"num_timesteps": 5}},
        r"num_timesteps=5 but the cube has 3 dates.*Drop num_timesteps.*pixel_cnn",
    ),
    "chip larger than the cube": (
        None,
        {"task": "segmentation", **UNET, "chip_size": 256},
        r"chip_size=256 does not fit the cube \(128 x 128 px\)",
    ),
    "chip not a multiple of the model stride": (
        None,
        {"task": "segmentation", **UNET, "chip_size": 30},
        r"chip_size=30 is not a multiple of the model stride 4; use 28 or 32",
    ),
    "label ids beyond attrs classes": (
        _labels(lambda v: v, classes=CLASSES[:2], nodata=255),
        {"task": "segmentation", **UNET},
        r"hold class id 4 \(attrs\['nodata'\] = 255\) but attrs\['classes'\] names only 2 classes.*"
        r"set attrs\['nodata'\] = 4",
    ),
    "float labels (NaN for nodata)": (
        _labels(lambda v: np.where(v == 0, np.nan, v).astype("float32"), classes=CLASSES),
        {"task": "segmentation", **UNET},
        r"dtype float32; expected integer class ids.*fillna\(255\)\.astype\('uint8'\)",
    ),
    "labels nodata everywhere": (
        _labels(lambda v: np.full_like(v, 255), classes=CLASSES, nodata=255),
        {"task": "segmentation", **UNET},
        r"are nodata \(attrs\['nodata'\] = 255\) in every pixel; expected class ids in at least some",
    ),
    "one class only": (
        _labels(lambda v: np.where(v == 1, 1, 255).astype("uint8"), classes=CLASSES, nodata=255),
        {"task": "segmentation", **UNET},
        r"hold a single class, 1 \('forest'\), in every labelled pixel.*at least two classes",
    ),
    "one class only, no classes attr": (
        _labels(np.zeros_like),
        {"task": "segmentation", **UNET},
        r"hold a single class, 0 \('0'\).*no attrs\['nodata'\]: only -1 means",
    ),
    "negative ids without nodata": (
        _labels(lambda v: v.astype("int16") - 2, classes=CLASSES),
        {"task": "segmentation", **UNET},
        r"hold the negative id -2.*set attrs\['nodata'\] = -2",
    ),
    "multi-label masks that are not 0/1": (
        _multilabel,
        {"task": "segmentation", **UNET, "loss": "bce"},
        r"multi-label labels 'labels' hold values 0\.\.3 \(no attrs\['nodata'\]: only -1 means.*expected 0/1 masks",
    ),
    "bool labels": (
        _labels(lambda v: v > 1),
        {"task": "segmentation", **UNET},
        r"dtype bool; expected integer class ids.*astype\('uint8'\)",
    ),
    "attrs classes as one string": (
        _labels(lambda v: (v > 1).astype("uint8"), classes="water,land", nodata=255),
        {"task": "segmentation", **UNET},
        r"attrs\['classes'\] = 'water,land'; expected a list of class names",
    ),
    "the same band twice": (
        None,
        {"task": "segmentation", **UNET, "bands": ["red", "red", "nir"]},
        r"bands=\['red', 'red', 'nir'\] lists \['red'\] more than once",
    ),
    "regions for segmentation": (
        None,
        {"task": "segmentation", **UNET, "regions": "REGIONS", "region_property": "k"},
        r"regions= / region_property= label whole chips for task='classification'; task 'segmentation' reads",
    ),
    "min_positive for chip classification": (
        None,
        {**CLS, **RESNET, "min_positive": 10},
        r"task 'classification' labels whole chips from regions=, so expected min_positive=0",
    ),
    "positive_classes the labels do not have": (
        None,
        {"task": "segmentation", **UNET, "min_positive": 1, "positive_classes": [7]},
        r"positive_classes=\[7\] names ids \[7\] that the labels do not have; expected ids 0\.\.4",
    ),
    "class_weights all zero": (
        None,
        {"task": "segmentation", **UNET, "class_weights": [0, 0, 0, 0, 0]},
        r"class_weights=\[0\.0, 0\.0, 0\.0, 0\.0, 0\.0\]; expected finite weights >= 0, at least one",
    ),
    "class_weights with NaN": (
        None,
        {"task": "segmentation", **UNET, "class_weights": [1, 1, math.nan, 1, 1]},
        r"expected finite weights >= 0",
    ),
    "regions of one class only": (
        None,
        {**CLS, **RESNET, "regions": "WEST_ONLY"},
        r"every training chip lies in regions of one class, 'west'.*at least two classes",
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_training_input_is_refused_before_training(cube, regions, tmp_path, case):
    make, kw, pattern = CASES[case]
    data = make(cube) if make else cube
    if kw.get("regions") == "REGIONS":
        kw = {**kw, "regions": regions}
    elif kw.get("regions") == "WEST_ONLY":
        doc = json.loads(open(regions).read())
        kw = {**kw, "regions": {**doc, "features": doc["features"][:1]}}
    out = tmp_path / "m.safetensors"
    with pytest.raises(TrainError, match=pattern):
        geoarray.fit(data, **{**FAST, **kw}, out=str(out))
    assert not out.exists()


@pytest.mark.parametrize(
    ("options", "pattern"),
    [
        ({"batch_size": 0}, r"batch_size=0; expected a positive integer"),
        ({"batch_size": 2.5}, r"batch_size=2\.5; expected a positive integer"),
        ({"epochs": 0}, r"epochs=0; expected a positive integer"),
        ({"epochs": -3}, r"epochs=-3; expected a positive integer"),
        ({"epochs": True}, r"epochs=True; expected a positive integer"),
        ({"chip_size": 0}, r"chip_size=0; expected a positive integer"),
        ({"chip_size": -64}, r"chip_size=-64; expected a positive integer"),
        ({"lr": -1e-3}, r"lr=-0\.001; expected a finite learning rate >= 0"),
        ({"lr": math.nan}, r"lr=nan; expected a finite learning rate"),
        ({"lr": math.inf}, r"lr=inf; expected a finite learning rate"),
        ({"min_valid": 1.5}, r"min_valid=1\.5; expected a fraction between 0 and 1"),
        ({"min_positive": -1}, r"min_positive=-1; expected an integer >= 0"),
        ({"val_fraction": 1.0}, r"val_fraction=1\.0; expected 0 <= val_fraction < 1"),
        ({"positive_classes": "1"}, r"positive_classes='1'; expected a list of class ids"),
        ({"positive_classes": [1, -2]}, r"positive_classes item=-2; expected an integer >= 0"),
        ({"positive_classes": []}, r"positive_classes=\[\]; expected at least one class id"),
    ],
)
def test_fit_config_refuses_bad_options(options, pattern):
    with pytest.raises(TrainError, match=pattern):
        FitConfig(task="segmentation", **options)


def test_labels_nodata_from_fill_value_attr_is_not_a_class(cube):
    """A label raster opened with rioxarray keeps its nodata as attrs['_FillValue']: 255 is not class 255."""
    from geoarray.training.prepare import prepare

    c = _labels(lambda v: np.where(v == 4, 255, v).astype("uint8"), _FillValue=np.uint8(255))(cube)
    setup = prepare(c, FitConfig(task="segmentation", **UNET, chip_size=32, progress=False))
    assert setup.classes == ["0", "1", "2", "3"] and setup.model_kwargs["num_classes"] == 4


def test_output_paths_are_checked_before_the_first_epoch(cube, tmp_path):
    """Before: out= a directory failed with IsADirectoryError after a whole epoch."""
    (tmp_path / "runs").mkdir()
    (tmp_path / "file").write_text("x")
    for kw, pattern in [
        ({"out": str(tmp_path / "runs")}, r"out='.*runs' is a directory; expected the path of a checkpoint file"),
        ({"out": str(tmp_path / "file" / "m.safetensors")}, r"is a file, not a folder"),
        (
            {"out": str(tmp_path / "m.safetensors"), "log_dir": str(tmp_path / "file")},
            r"log_dir='.*file' is a file; expected a folder",
        ),
    ]:
        with pytest.raises(TrainError, match=pattern):
            geoarray.fit(cube, task="segmentation", **UNET, **{**FAST, **kw})


def test_unnamed_label_codes_warn_about_unused_outputs(cube):
    """Land-cover codes (NLCD's 11, 21, 41, 82) used as class ids make 83 outputs, 79 of them never trained."""
    from geoarray.errors import GeoArrayWarning
    from geoarray.training.prepare import prepare

    codes = np.array([11, 21, 41, 82], dtype="uint8")
    c = _labels(lambda v: codes[v % 4], nodata=255)(cube)
    with pytest.warns(
        GeoArrayWarning, match=r"use 4 distinct ids \[11, 21, 41, 82\].*83 classes \(0\.\.82\), 79 of"
    ):
        setup = prepare(c, FitConfig(task="segmentation", **UNET, chip_size=32, progress=False))
    assert len(setup.classes) == 83  # a warning, not a refusal: the run is valid, only wasteful


def test_ddp_shards_smaller_than_a_batch_are_refused_before_the_ranks_start(cube):
    from geoarray.training.ddp import _check_shards
    from geoarray.training.prepare import prepare

    cfg = FitConfig(task="segmentation", **UNET, chip_size=32, batch_size=64, progress=False)
    setup = prepare(cube, cfg)
    _check_shards(cfg, setup, 1)  # one process: a partial batch is fine
    with pytest.raises(
        TrainError, match=r"shared by 2 DDP ranks leave a rank \d+ samples, less than one batch"
    ):
        _check_shards(cfg, setup, 2)


# -- regions -----------------------------------------------------------------------------------------------
def _region_error(cube, tmp_path, regions, pattern, **kw):
    with pytest.raises(TrainError, match=pattern):
        geoarray.fit(
            cube,
            task="classification",
            model="resnet18",
            model_kwargs={"width": 4},
            regions=regions,
            region_property=kw.pop("region_property", "k"),
            out=str(tmp_path / "m.safetensors"),
            **{**FAST, **kw},
        )


def _gpkg(path, cube, layers=("a",), crs="EPSG:32633", shift=0.0):
    import shapely
    from pyogrio.raw import write

    x0, y0 = float(cube.x[0]) + shift, float(cube.y[-1])
    geoms = [shapely.box(x0, y0, x0 + 600, y0 + 1200), shapely.box(x0 + 600, y0, x0 + 1280, y0 + 1200)]
    for name in layers:
        write(
            str(path),
            shapely.to_wkb(np.asarray(geoms, dtype=object)),
            [np.array(["west", "east"], dtype=object)],
            ["k"],
            layer=name,
            driver="GPKG",
            geometry_type="Polygon",
            crs=crs,
            append=path.exists(),
        )
    return str(path)


def test_regions_file_errors(cube, tmp_path, regions):
    from conftest import write_tif

    _region_error(
        cube, tmp_path, str(tmp_path / "nope.gpkg"), r"nope\.gpkg' does not exist; expected a vector file"
    )
    tif = write_tif(tmp_path / "a.tif", np.zeros((1, 8, 8), "uint8"))
    _region_error(
        cube, tmp_path, str(tif), r"a\.tif' is not a vector file GDAL can read.*expected a GeoPackage"
    )
    (tmp_path / "t.geojson").write_text("{not json")
    _region_error(cube, tmp_path, str(tmp_path / "t.geojson"), r"is not a vector file GDAL can read")
    _region_error(
        cube,
        tmp_path,
        regions,
        r"no property 'class'; they have \['k'\]. Pass one of those",
        region_property="class",
    )
    two = _gpkg(tmp_path / "two.gpkg", cube, layers=("a", "b"))
    _region_error(
        cube, tmp_path, two, r"holds 2 layers \['a', 'b'\]; name the one with the regions \(region_layer"
    )
    _region_error(cube, tmp_path, two, r"has no layer 'c'; it has \['a', 'b'\]", region_layer="c")
    far = _gpkg(tmp_path / "far.gpkg", cube, shift=1e6)
    _region_error(
        cube, tmp_path, far, r"the regions do not overlap the cube: in the cube's CRS \(EPSG:32633\)"
    )
    (tmp_path / "r.parquet").write_bytes(b"PAR1")
    _region_error(cube, tmp_path, str(tmp_path / "r.parquet"), r"GeoParquet.*geopandas\.read_parquet")
    _region_error(cube, tmp_path, 42, r"regions is a int; expected a path to a vector file, a GeoDataFrame")


def test_a_layer_of_a_multi_layer_geopackage(cube, tmp_path):
    from geoarray.chips import plan_chips, region_labels

    two = _gpkg(tmp_path / "two.gpkg", cube, layers=("a", "b"))
    plan = plan_chips(cube, chip_size=32, val_fraction=0.0, labels=None)
    assert region_labels(plan, cube, two, property="k", layer="b") == ["east", "west"]
    assert {w.label for w in plan.train} == {0, 1}


def test_regions_without_a_crs_are_taken_in_the_cubes_and_warned_about(cube, tmp_path):
    import shapely
    from pyogrio.raw import write

    from geoarray.chips import plan_chips, region_labels
    from geoarray.errors import GeoArrayWarning

    x0, y0 = float(cube.x[0]), float(cube.y[-1])
    geoms = [shapely.box(x0, y0, x0 + 600, y0 + 1300), shapely.box(x0 + 600, y0, x0 + 1300, y0 + 1300)]
    path = tmp_path / "nocrs.shp"
    with pytest.warns(
        UserWarning, match="'crs' was not provided"
    ):  # pyogrio's own warning: no CRS on purpose
        write(
            str(path),
            shapely.to_wkb(np.asarray(geoms, dtype=object)),
            [np.array([1, 2])],
            ["k"],
            driver="ESRI Shapefile",
            geometry_type="Polygon",
        )
    plan = plan_chips(cube, chip_size=32, val_fraction=0.0, labels=None)
    with pytest.warns(GeoArrayWarning, match=r"the regions have no CRS.*taken to be in the cube's CRS"):
        assert region_labels(plan, cube, str(path), property="k") == ["1", "2"]
    assert {w.label for w in plan.train} == {0, 1}

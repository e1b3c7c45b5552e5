"""The fourth real-data hunt: outputs (export_geotiff, plots, CLI on stores, examples), predict's options, object
storage and cluster errors; and the third hunt's leftovers.

Each test is one bad row of tests/bad_inputs/HUNT-2026-11-30-out.md (or a leftover of HUNT-2026-11-30-ssl.md);
its comment says what happened before.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import make_checkpoint

import geoarray
from geoarray.datasets import synthetic_cube
from geoarray.errors import TrainError

BANDS = ("blue", "green", "red", "nir")


@pytest.fixture(scope="module")
def cube():
    return synthetic_cube(size=48, n_times=3, seed=3).load()


# -- the third hunt's leftovers ---------------------------------------------------------------------------------
def _regions(values):
    """A GeoJSON FeatureCollection (EPSG:4326 by RFC 7946) of one small square per value."""
    feats = [
        {
            "type": "Feature",
            "properties": {"kind": v},
            "geometry": {
                "type": "Polygon",
                "coordinates": [[[i, 0], [i + 0.5, 0], [i + 0.5, 0.5], [i, 0.5], [i, 0]]],
            },
        }
        for i, v in enumerate(values)
    ]
    return {"type": "FeatureCollection", "features": feats}


def test_region_values_mixing_numbers_and_text_are_refused():
    # ssl leftover (#25): 1 and "1" became one class "1" silently (and 1.0 beside "1" two classes)
    from geoarray.chips.regions import _class_names

    assert _class_names([2, 10, 1.0]) == (["2", "10", "1"], ["1", "2", "10"])
    assert _class_names(["b", "a"]) == (["b", "a"], ["a", "b"])
    for values in ([1, "1"], [1.0, "1", "water"]):
        with pytest.raises(TrainError, match=r"mix numbers \(1(\.0)?\) and text \('1'"):
            _class_names(values)


def test_rasterize_regions_refuses_mixed_class_values(cube):
    # the same through the public path, before any rasterising
    from geoarray.chips.regions import rasterize_regions

    with pytest.raises(TrainError, match=r"mix numbers .* and text"):
        rasterize_regions(cube, _regions([1, "1"]), property="kind")


def test_fit_refuses_a_date_named_twice(cube, tmp_path):
    # ssl leftover (#29): fit(times=[0, 0]) trained on the same date twice; predict_chips refuses it
    out = tmp_path / "m.safetensors"
    for times in ([0, 0], [0, -3], [1, str(cube.time.values[1])[:10]]):
        with pytest.raises(TrainError, match=r"names a date twice .*expected each date once"):
            geoarray.fit(cube, task="segmentation", times=times, epochs=1, chip_size=16, out=str(out))
    assert not out.exists()


def test_positive_classes_alone_keeps_chips_holding_those_classes(cube):
    # ssl leftover (#29): positive_classes=[k] without min_positive did nothing: every labelled chip was kept
    from geoarray.chips import plan_chips

    lab, ok = cube["labels"].values, cube["valid"].values  # labels(time, y, x)
    every = plan_chips(cube, chip_size=8, val_fraction=0)
    rare = int(np.argmin(np.bincount(lab[lab != 255].ravel())))
    only = plan_chips(cube, chip_size=8, val_fraction=0, positive_classes=[rare])
    one = plan_chips(cube, chip_size=8, val_fraction=0, positive_classes=[rare], min_positive=1)
    # by hand: the 8 x 8 chips (one date each) holding a valid pixel of the class on their date
    hit = (lab == rare) & ok
    want = sum(bool(hit[w.t[0], w.y : w.y + 8, w.x : w.x + 8].any()) for w in every.train)
    assert 0 < want < len(every.train)
    assert len(only.train) == len(one.train) == want


@pytest.fixture(scope="module")
def pixel_encoder(tmp_path_factory):
    path = tmp_path_factory.mktemp("enc") / "bt.safetensors"
    return make_checkpoint(path, "pixel_cnn", task="barlow_twins", width=8, out_channels=8)


def test_an_explicit_model_must_be_the_inits(cube, pixel_encoder, tmp_path):
    # ssl leftover: fit(task="finetune", init=<pixel_cnn>, model="unet") trained the init's pixel_cnn: an
    # explicit "unet" could not be told from fit's default and was ignored
    out = tmp_path / "ft.safetensors"
    opts = {"task": "finetune", "init": str(pixel_encoder), "epochs": 1, "chip_size": 16, "batch_size": 64,
            "pixels_per_chip": 16, "progress": False, "out": str(out)}
    with pytest.raises(TrainError, match=r"model='unet', but init=.* holds a 'pixel_cnn' encoder. Drop model="):
        geoarray.fit(cube, model="unet", **opts)
    assert not out.exists()
    # named and matching, or left out: trains the init's model
    for named in ({"model": "pixel_cnn"}, {}):
        ck = geoarray.load_checkpoint(geoarray.fit(cube, **named, **opts))
        assert ck.meta["model"]["name"] == "pixel_cnn"


# -- export_geotiff ---------------------------------------------------------------------------------------------
def test_exported_class_maps_keep_class_ids_in_their_overviews(tmp_path):
    # out #3: a mask larger than one 512 px tile got GDAL's COG default overviews, cubic: ids 0/2/4/6 of the
    # real L8 scene became 0..7 in the overview (ids no pixel holds); probabilities went outside [0, 1]
    import rasterio
    import xarray as xr

    n = 1100
    y, x = np.arange(n)[::-1] * 30.0 + 15, np.arange(n) * 30.0 + 15
    ids = np.zeros((n, n), np.uint8)
    ids[:, 1::2] = 6  # alternating columns: any interpolation makes values between 0 and 6
    ids[:5] = 255
    mask = xr.DataArray(ids, dims=("y", "x"), coords={"y": y, "x": x}, name="mask", attrs={"nodata": 255})
    p = np.zeros((1, n, n), np.float32)
    p[0, :, ::7] = 1.0
    prob = xr.DataArray(p, dims=("class", "y", "x"), coords={"class": ["a"], "y": y, "x": x}, name="p")
    for da, name in ((mask, "m.tif"), (prob, "p.tif")):
        geoarray.export_geotiff(da.rio.write_crs("EPSG:32633"), tmp_path / name)
    with rasterio.open(tmp_path / "m.tif") as src:
        assert src.overviews(1) == [2, 4]
        for f in (2, 4):
            assert set(np.unique(src.read(1, out_shape=(n // f, n // f)))) <= {0, 6, 255}
    with rasterio.open(tmp_path / "p.tif") as src:
        o = src.read(1, out_shape=(n // 2, n // 2))
        assert 0 <= o.min() and o.max() <= 1


# -- predict options --------------------------------------------------------------------------------------------
def test_a_halo_below_the_receptive_field_warns_of_seams(tmp_path):
    # out #17: predict(halo=2) on a model of receptive field 8 in 3 x 3 blocks: probabilities off by 0.06 at
    # block edges, no word (the real L7 cube); halo="auto" and a one-block cube stay silent
    import warnings

    from geoarray.errors import GeoArrayWarning

    ck = make_checkpoint(tmp_path / "u.safetensors", "unet", classes=["a", "b"], num_classes=2, width=4, depth=2)
    rf = geoarray.load_checkpoint(ck).meta["halo"]
    assert rf >= 4
    cube = synthetic_cube(size=96, n_times=1, seed=1).load()
    blocks = cube.chunk({"time": 1, "y": 32, "x": 32})
    with pytest.warns(GeoArrayWarning, match=rf"halo=2 is smaller than the model's receptive field \({rf} px.*3 x 3 "):
        short = geoarray.predict(blocks, ck, halo=2).probabilities.values
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        seamless = geoarray.predict(blocks, ck).probabilities.values
        one = geoarray.predict(cube, ck, halo=2).probabilities.values  # one block: no seams to show
    assert np.nanmax(np.abs(one - seamless)) < 1e-5 < np.nanmax(np.abs(short - seamless))


def test_one_block_larger_than_the_cpu_tile_warns_only_where_it_runs_in_tiles():
    # a 2048² image in one block with a short halo: on a CPU it runs in 512² tiles (seams between them), on a
    # GPU (tile None) whole, where there is nothing to warn of
    import warnings

    from geoarray._predict_checks import warn_small_halo
    from geoarray.errors import GeoArrayWarning

    with pytest.warns(GeoArrayWarning, match="seams can show"):
        warn_small_halo(2, 2, 8, (2048, 2048), (1, 1), 512)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warn_small_halo(2, 2, 8, (2048, 2048), (1, 1), None)
        warn_small_halo(2, 2, 8, (500, 500), (1, 1), 512)


# -- object storage and cluster user errors ---------------------------------------------------------------------
@pytest.mark.parametrize(
    "url, match",
    [
        ("s3://", r"'s3://' names no bucket"),  # was: written to the local folder 's3:' (open: "Stores next to it")
        ("s3:///c.zarr", r"names no bucket"),  # was: "the bucket 'c.zarr' ... does not exist"
        ("S3://bkt/c.zarr", r"protocol 'S3', which fsspec does not know; protocols are lower case: s3://bkt"),
        ("s4://bkt/c.zarr", r"protocol 's4', which fsspec does not know"),  # was: raw ValueError
        ("s3://bkt/c.zarr?x=1", r"holds a query or fragment \(\?x=1\)"),  # was: written under 'c.zarr?x=1'
        ("s3:/bkt/c.zarr", r"a URL that lost a slash .*expected s3://bkt/c.zarr"),  # was: local folder 's3:'
    ],
)
def test_malformed_store_urls_are_refused_before_anything_is_written(cube, tmp_path, monkeypatch, url, match):
    # out #39-43: no endpoint is needed: each is refused before any request
    from geoarray.errors import StoreError

    monkeypatch.chdir(tmp_path)
    with pytest.raises(StoreError, match=match):
        geoarray.write_cube(cube, url)
    with pytest.raises(StoreError, match=match):
        geoarray.open_cube(url)
    assert list(tmp_path.iterdir()) == []  # no local folder named after the URL


def test_a_file_url_is_the_local_store(cube, tmp_path, monkeypatch):
    # out #44: write_cube("file:///abs/c.zarr") wrote the local folder './file:/abs/c.zarr', and open_cube of the
    # same URL answered "no Zarr store at 'file:/abs/c.zarr'"
    monkeypatch.chdir(tmp_path)
    (tmp_path / "w").mkdir()
    url = (tmp_path / "w" / "c.zarr").as_uri()
    geoarray.write_cube(cube, url)
    assert (tmp_path / "w" / "c.zarr" / "zarr.json").is_file() and not (tmp_path / "file:").exists()
    back = geoarray.open_cube(url)
    assert np.array_equal(back.imagery.values, cube.imagery.values, equal_nan=True)


def test_an_unreachable_scheduler_fails_fast_with_a_clear_error():
    # out #48-50: cluster("tcp://127.0.0.1:1") -> distributed's OSError "Timed out trying to connect" after
    # 30 s; a port that accepts but never speaks -> Client() hung forever; "garbage" / "http://..." -> ValueError
    import socket
    import time

    from geoarray.distributed import cluster
    from geoarray.errors import ClusterError

    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(1)
        dead = socket.socket()
        dead.bind(("127.0.0.1", 0))
        port = dead.getsockname()[1]
        dead.close()  # nothing listens there now
        cases = [
            (f"tcp://127.0.0.1:{port}", r"no Dask scheduler answers at .*Connection refused.*8786"),
            (f"tcp://127.0.0.1:{silent.getsockname()[1]}", r"sent no Dask handshake within 5 s: it is not a Dask"),
            ("garbage", r"address='garbage' is not a scheduler address"),
            ("http://127.0.0.1:1", r"has the scheme 'http'; expected a Dask scheduler address"),
        ]
        for address, match in cases:
            t = time.monotonic()
            with pytest.raises(ClusterError, match=match):
                with cluster(address):
                    pass
            assert time.monotonic() - t < 10


def test_cli_scheduler_with_a_bad_address_is_a_one_line_error(tmp_path):
    # out #51: `geoarray fit STORE --scheduler tcp://127.0.0.1:1` -> a 30 s wait, then distributed's traceback
    from typer.testing import CliRunner

    from geoarray.cli import app

    store = tmp_path / "c.zarr"
    geoarray.write_cube(synthetic_cube(size=32, n_times=1), store)
    r = CliRunner().invoke(
        app, ["fit", str(store), "-o", str(tmp_path / "m.safetensors"), "--scheduler", "tcp://127.0.0.1:1"]
    )
    assert r.exit_code != 0 and "no Dask scheduler answers at 'tcp://127.0.0.1:1'" in r.output, r.output
    assert not (tmp_path / "m.safetensors").exists()


# -- the examples -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "name",
    [
        "seed000_invariants",
        "seed001_barlow_twins",
        "seed002_vicreg",
        "seed003_geotiff_unet",
        "seed004_multilabel_unet",
        "stac_to_features",
    ],
)
def test_examples_refuse_an_out_that_is_a_file(tmp_path, capsys, name):
    # out #34: `seed003_geotiff_unet.py --out afile.txt` (and every other example) -> FileExistsError traceback
    import importlib.util
    from pathlib import Path

    path = Path(__file__).parents[2] / "examples" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"_hunt4_{name}", path)
    mod = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(mod)  # type: ignore[union-attr]
    f = tmp_path / "afile.txt"
    f.write_text("mine")
    with pytest.raises(SystemExit) as e:
        mod.main(["--out", str(f)])
    assert e.value.code == 2 and "is a file; expected a folder" in capsys.readouterr().err
    assert f.read_text() == "mine"


# -- geoarray.plot ----------------------------------------------------------------------------------------------
def test_class_masks_refuses_class_ids_over_dates(tmp_path):
    # out #28: class_masks(labels(time, y, x)) drew date i's pixels of id 1 as the panel of class i (the L7
    # cube's 'water' panel showed vegetation); a real multi-label stack still draws
    from geoarray import plot
    from geoarray.errors import PlotError

    ids = np.random.default_rng(0).integers(0, 4, (4, 20, 20)).astype(np.uint8)
    with pytest.raises(PlotError, match=r"4 layers for 4 classes and values \[0, 1, 2, 3\].*isel\(time=0\)"):
        plot.class_masks(ids, ["a", "b", "c", "d"], tmp_path / "c.png")
    stack = (ids == np.arange(4)[:, None, None]).astype(np.uint8)
    stack[:, 0] = 255
    assert plot.class_masks(stack, ["a", "b", "c", "d"], tmp_path / "ok.png").is_file()
    assert plot.class_masks(ids[0], ["a", "b", "c", "d"], tmp_path / "ids.png").is_file()


def test_overlay_refuses_masks_that_do_not_fit(tmp_path):
    # out #27: ids past the class list were drawn in the last class's colour, and a mask of another shape
    # than the image was drawn beside it, no word
    from geoarray import plot
    from geoarray.errors import PlotError

    rgb = np.zeros((10, 12, 3))
    with pytest.raises(PlotError, match=r"holds ids \[7\] beyond the 2 classes"):
        plot.overlay(rgb, {"m": np.full((10, 12), 7, np.uint8)}, ["a", "b"], tmp_path / "o.png")
    with pytest.raises(PlotError, match=r"has shape \(12, 10\); expected the image's \(y, x\) shape \(10, 12\)"):
        plot.overlay(rgb, {"m": np.zeros((12, 10), np.uint8)}, ["a", "b"], tmp_path / "o.png")
    ok = np.zeros((10, 12), np.uint8)
    ok[0] = 255
    assert plot.overlay(rgb, {"m": ok}, ["a", "b"], tmp_path / "new" / "o.png").is_file()  # folder made


def test_false_color_and_curves_say_what_they_need(cube, tmp_path):
    # out #25, #26, #29: false_color(imagery(time, band, y, x)) returned a 4-D "RGB" (1, y, x, 3) / raised a raw
    # KeyError for a missing band; curves("missing.csv") / curves(log_dir) raised FileNotFoundError /
    # IsADirectoryError
    from geoarray import plot
    from geoarray.errors import PlotError

    with pytest.raises(PlotError, match=r"takes a \(band, y, x\) image.*isel\(time=0\)"):
        plot.false_color(cube.imagery, bands=["red", "green", "blue"])
    with pytest.raises(PlotError, match=r"bands \['B4'\] are not in the image; it has \['blue', 'green', 'red', 'nir'\]"):
        plot.false_color(cube.imagery.isel(time=0), bands=["B4", "green", "blue"])
    rgb = plot.false_color(cube.imagery.isel(time=[0]), bands=["red", "green", "blue"])  # one date: taken
    assert rgb.shape == (48, 48, 3) and 0 <= rgb.min() and rgb.max() <= 1
    with pytest.raises(PlotError, match=r"does not exist; expected a fit's metrics.csv or its log_dir"):
        plot.curves(tmp_path / "missing.csv", tmp_path / "c.png")
    (tmp_path / "log").mkdir()
    (tmp_path / "log" / "metrics.csv").write_text("epoch,train_loss,val_loss\n1,1.0,1.2\n2,0.5,0.9\n")
    assert plot.curves(tmp_path / "log", tmp_path / "c.png").is_file()


def test_cli_prints_library_warnings_as_one_line_in_its_own_words(tmp_path):
    # out #18: `geoarray predict --halo 2` / `--precision bf16` printed Python's warning format: the file
    # path, line number and the source line `_, report = _predict(...)` under the message, which named halo=
    import sys
    import warnings

    from typer.testing import CliRunner

    from geoarray.cli import app

    store = tmp_path / "c.zarr"
    geoarray.write_cube(synthetic_cube(size=96, n_times=1, seed=1), store, chunk=32)
    ck = make_checkpoint(tmp_path / "u.safetensors", "unet", classes=["a", "b"], num_classes=2, width=4, depth=2)
    def show(message, category, filename, lineno, file=None, line=None):  # Python's default, not pytest's recorder
        sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))

    with warnings.catch_warnings():
        warnings.simplefilter("default")  # as outside the test suite (which turns GeoArrayWarnings into errors)
        warnings.showwarning = show
        r = CliRunner().invoke(app, ["predict", str(store), "-c", str(ck), "--halo", "2"])
    assert r.exit_code == 0, r.output
    assert "warning: --halo 2 is smaller than the model's receptive field" in r.output
    assert "Pass --halo auto for a seamless output" in r.output
    assert "GeoArrayWarning" not in r.output and "_predict(" not in r.output


def test_stac_example_with_a_relative_out_writes_hrefs_that_resolve(tmp_path, monkeypatch):
    # out #35: `stac_to_features.py --quick --out ex_stac` wrote hrefs relative to the cwd ('ex_stac/cogs/...')
    # into ex_stac/search.json, which resolves them relative to itself: STACError "no such file
    # .../ex_stac/ex_stac/cogs/LE07_2000-01-15_B1.tif" after the COGs were made
    import importlib.util
    from pathlib import Path

    path = Path(__file__).parents[2] / "examples" / "stac_to_features.py"
    spec = importlib.util.spec_from_file_location("_hunt4_stac_example", path)
    mod = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(mod)  # type: ignore[union-attr]
    monkeypatch.chdir(tmp_path)
    search = mod.make_search(Path("rel"))
    cube = geoarray.from_stac(str(search), bands=["blue"], crs="EPSG:31985", resolution=28.5)
    assert cube.sizes["time"] == 4 and int(cube.imagery.isel(time=0).max()) > 0


def test_local_outputs_refuse_a_url(cube, tmp_path, monkeypatch):
    # out #47: `geoarray export s3://bkt/c.zarr mask -o s3://bkt/m.tif` printed "wrote s3:/bkt/m.tif": a local
    # file under the folder 's3:' (the CLI's Path turned '//' into '/'); export_geotiff and the plots alike
    from pathlib import Path

    from typer.testing import CliRunner

    from geoarray import plot
    from geoarray.cli import app
    from geoarray.errors import OutputPathError

    monkeypatch.chdir(tmp_path)
    da = cube.labels.isel(time=0)
    for url in ("s3://bkt/m.tif", Path("s3://bkt/m.tif"), "gs://bkt/m.tif"):
        with pytest.raises(OutputPathError, match=r"is a URL; a Cloud-Optimized GeoTIFF is written to a local file"):
            geoarray.export_geotiff(da, url)
    with pytest.raises(OutputPathError, match=r"is a URL; a PNG is written to a local file"):
        plot.class_masks(da.values, ["a", "b", "c", "d"], "s3://bkt/c.png")
    store = tmp_path / "c.zarr"
    geoarray.write_cube(cube, store)
    r = CliRunner().invoke(app, ["export", str(store), "labels", "-o", "s3://bkt/m.tif", "--time", "0"])
    assert r.exit_code == 2 and "is a URL" in r.output, r.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.zarr"]  # no folder 's3:'
    assert geoarray.export_geotiff(da, "C:/x.tif").is_file()  # a one-letter "scheme" is a path (a drive)


def test_ingest_refuses_a_url_output_it_would_write_locally(tmp_path, monkeypatch):
    # out #43: `geoarray ingest geotiff x.tif -o s3://bkt/c.zarr` (typer's Path collapses '//') wrote the local
    # folder 's3:/bkt/c.zarr'
    import rasterio
    from typer.testing import CliRunner

    from geoarray.cli import app

    monkeypatch.chdir(tmp_path)
    prof = dict(driver="GTiff", width=8, height=8, count=1, dtype="uint8", crs="EPSG:32633",
                transform=rasterio.transform.from_origin(500000, 4000080, 10, 10))  # fmt: skip
    with rasterio.open(tmp_path / "a_20200105.tif", "w", **prof) as dst:
        dst.write(np.arange(64, dtype=np.uint8).reshape(1, 8, 8))
    r = CliRunner().invoke(app, ["ingest", "geotiff", "a_20200105.tif", "-o", "s3://bkt/c.zarr"])
    assert r.exit_code == 2 and "lost a slash" in r.output, r.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_20200105.tif"]


def test_a_static_map_is_scored_against_the_last_dates_labels():
    # out #14: evaluate(mask(y, x) of a whole-series model, labels(time, y, x)) scored the map against every date
    # in turn (4 x the pixels on the L7 cube, mixing dates whose classes differ); such a model trains on the
    # last date's labels (chips/stream.py), so a map equal to them scored < 1
    import xarray as xr

    from geoarray.metrics import evaluate

    rng = np.random.default_rng(0)
    truth = xr.DataArray(rng.integers(0, 3, (3, 10, 10)).astype(np.uint8), dims=("time", "y", "x"), name="labels",
                         attrs={"classes": ["a", "b", "c"], "nodata": 255})  # fmt: skip
    pred = truth.isel(time=-1).drop_vars([], errors="ignore").rename("mask")
    valid = xr.DataArray(np.ones((3, 10, 10), bool), dims=("time", "y", "x"))
    valid[-1, :2] = False  # pixels invalid on the last date but valid before: still scored (any valid date)
    out = evaluate(pred, truth, valid=valid)
    assert out["accuracy"] == 1.0 and sum(out["support"].values()) == 100

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from zarr.storage import LocalStore, LoggingStore

import geoarray
from geoarray._constants import IGNORE
from geoarray.chips import ChipStream, plan_chips
from geoarray.datasets import synthetic_cube
from geoarray.errors import TrainError


@pytest.fixture(scope="module")
def cube():
    return synthetic_cube(size=(200, 180), n_times=3, seed=2, chunks=64)


def test_split_has_no_spatial_overlap_and_buffer(cube):
    plan = plan_chips(cube, chip_size=32, stride=16, val_fraction=0.25, buffer=4, seed=1)
    val_rects = [plan.tiles[i] for i in plan.val_tiles]
    assert plan.train and plan.val
    for w in plan.train:
        assert not any(w.rect.intersects(v, margin=4) for v in val_rects)
    for w in plan.val:
        assert any(
            v.y0 <= w.y and w.y + w.size <= v.y1 and v.x0 <= w.x and w.x + w.size <= v.x1 for v in val_rects
        )
    assert {w.t for w in plan.train} == {(0,), (1,), (2,)}
    # chips are windows inside one read block each
    for w in plan.train + plan.val:
        b = plan.blocks[w.block]
        assert b.y0 <= w.y and w.y + w.size <= b.y1 and b.x0 <= w.x and w.x + w.size <= b.x1


def test_random_mode_is_seeded(cube):
    a = plan_chips(cube, chip_size=32, mode="random", n_random=5, seed=3)
    b = plan_chips(cube, chip_size=32, mode="random", n_random=5, seed=3)
    assert a.train == b.train and a.val == b.val


def test_time_selection(cube):
    assert plan_chips(cube, chip_size=32, times="all").train[0].t == (0, 1, 2)
    assert plan_chips(cube, chip_size=32, times=[0, 2]).train[0].t == (0, 2)


def test_filters_drop_chips_and_name_the_filter(cube):
    full = plan_chips(cube, chip_size=32, val_fraction=0.2)
    some = plan_chips(cube, chip_size=32, val_fraction=0.2, min_positive=50, positive_classes=[4])
    assert 0 < len(some.train) < len(full.train) and some.dropped["min_positive"] > 0
    lab = cube.labels.values
    for w in some.train:
        assert (lab[w.t[0], w.y : w.y + 32, w.x : w.x + 32] == 4).sum() >= 50
    with pytest.raises(TrainError, match=r"every training chip was filtered out.*'min_positive'"):
        plan_chips(cube, chip_size=32, min_positive=10**6)
    cloudy = cube.assign(valid=cube.valid & (cube.x < cube.x[90]))
    half = plan_chips(cloudy, chip_size=32, val_fraction=0.0, min_valid=0.9)
    assert half.dropped["min_valid"] > 0 and all(w.x + 32 <= 96 for w in half.train)


@pytest.mark.parametrize(
    ("kw", "pattern"),
    [
        ({"chip_size": 256}, r"chip_size=256 does not fit the cube \(200 x 180 px\)"),
        ({"chip_size": 30, "multiple_of": 16}, r"not a multiple of the model stride 16; use 16 or 32"),
        ({"chip_size": 32, "val_fraction": 0.99}, "leaves no training tiles"),
    ],
)
def test_plan_errors(cube, kw, pattern):
    with pytest.raises(TrainError, match=pattern):
        plan_chips(cube, **kw)


def _stream(cube, plan, **kw):
    n = cube.sizes["band"]
    return ChipStream(
        cube, plan.train, plan, bands=list(cube.band.values), mean=[0.0] * n, std=[1.0] * n, **kw
    )


def test_stream_yields_exact_chips_and_targets(cube):
    plan = plan_chips(cube, chip_size=32, val_fraction=0.0)
    s = _stream(cube, plan, batch_size=7, shuffle=False)
    seen = 0
    img, lab, valid = cube.imagery.values, cube.labels.values, cube.valid.values
    order = [w for bi in s._by_block for w in s._by_block[bi]]
    for batch in s:
        assert batch.x.shape[1:] == (4, 32, 32) and batch.y.shape[1:] == (32, 32)
        for i in range(len(batch.x)):
            w = order[seen + i]
            ys, xs = slice(w.y, w.y + 32), slice(w.x, w.x + 32)
            ok = valid[w.t[0], ys, xs] & np.isfinite(img[w.t[0], :, ys, xs]).all(0)
            np.testing.assert_allclose(batch.x[i].numpy()[:, ok], img[w.t[0], :, ys, xs][:, ok], rtol=1e-6)
            assert (batch.x[i].numpy()[:, ~ok] == 0).all()
            want = np.where(ok, lab[w.t[0], ys, xs].astype(np.int64), IGNORE)
            np.testing.assert_array_equal(batch.y[i].numpy(), want)
        seen += len(batch.x)
    assert seen == len(plan.train) == s.num_samples


def test_stream_reads_each_zarr_chunk_once_per_epoch(tmp_path):
    c = synthetic_cube(size=(192, 192), n_times=2, seed=0)
    geoarray.write_cube(c, tmp_path / "c.zarr", chunk=64)
    store = LoggingStore(LocalStore(str(tmp_path / "c.zarr"), read_only=True))
    ds = xr.open_zarr(store, decode_coords="all", consolidated=False, zarr_format=3, chunks={})
    ds = ds.assign_coords(band=np.array([str(b) for b in ds.band.values], dtype=object))
    plan = plan_chips(ds, chip_size=32, stride=16, val_fraction=0.0)
    s = _stream(ds, plan, batch_size=16, augment=True)
    store.counter.clear()
    gets = []
    orig = store._store.get

    async def counting_get(key, *a, **k):
        gets.append(key)
        return await orig(key, *a, **k)

    store._store.get = counting_get
    n = sum(len(b.x) for b in s)
    chunk_reads = [k for k in gets if k.startswith("imagery/c/")]
    assert n == len(plan.train) > 9 * 2 * 4
    assert len(chunk_reads) == len(set(chunk_reads)) == 2 * 3 * 3  # every chunk exactly once
    assert s.reads == len(plan.blocks)


def test_stream_reads_each_chunk_once_per_epoch_on_the_direct_path(tmp_path, monkeypatch):
    """The path open_cube cubes take (zarr reads in geoarray._source.read, no dask graph): every chunk file of
    imagery, valid and labels is fetched from the store exactly once per epoch, counted under zarr."""
    from geoarray._source import source_of

    c = synthetic_cube(size=(192, 192), n_times=2, seed=0)
    geoarray.write_cube(c, tmp_path / "c.zarr", chunk=64)
    cube = geoarray.open_cube(tmp_path / "c.zarr")
    names = ("imagery", "valid", "labels")
    assert all(source_of(cube[v]) is not None for v in names)  # the direct path, not dask
    on_disk = Counter(
        f"{v}/{p.relative_to(tmp_path / 'c.zarr' / v).as_posix()}"
        for v in names
        for p in (tmp_path / "c.zarr" / v / "c").rglob("*")
        if p.is_file()
    )
    assert sum(k.startswith("imagery/") for k in on_disk) == 2 * 3 * 3
    plan = plan_chips(cube, chip_size=32, stride=16, val_fraction=0.0)
    s = _stream(cube, plan, batch_size=16, augment=True)
    gets: list[str] = []
    real_get = LocalStore.get

    async def counting_get(self, key, *args, **kwargs):  # the real read, counted
        gets.append((Path(str(self.root)) / key).relative_to(tmp_path / "c.zarr").as_posix())
        return await real_get(self, key, *args, **kwargs)

    monkeypatch.setattr(LocalStore, "get", counting_get)
    for epoch in range(2):
        gets.clear()
        n = sum(len(b.x) for b in s)
        assert n == len(plan.train) > 9 * 2 * 4
        chunk_reads = Counter(k for k in gets if "/c/" in k)
        assert chunk_reads == on_disk, f"epoch {epoch}: {chunk_reads - on_disk or on_disk - chunk_reads}"
    assert s.reads == 2 * len(plan.blocks)


def test_augment_moves_image_and_target_together(cube):
    plan = plan_chips(cube, chip_size=32, val_fraction=0.0)
    s = _stream(cube, plan, batch_size=64, augment=True, seed=5)
    b = next(iter(s))
    assert b.x.shape[0] == 64
    # a rotation/flip keeps every target pixel paired with its own spectrum: the class-mean spectra of the
    # augmented batch match the un-augmented ones (jitter is small)
    plain = next(iter(_stream(cube, plan, batch_size=64, augment=False, seed=5)))
    for k in range(4):
        m1 = b.x.numpy().transpose(1, 0, 2, 3)[:, b.y.numpy() == k].mean(1)
        m0 = plain.x.numpy().transpose(1, 0, 2, 3)[:, plain.y.numpy() == k].mean(1)
        np.testing.assert_allclose(m1, m0, atol=0.06)


def test_pixel_and_sequence_streams(cube):
    plan = plan_chips(cube, chip_size=32, times="all", val_fraction=0.0)
    seq = next(iter(_stream(cube, plan, batch_size=4, kind="sequence")))
    assert seq.x.shape == (4, 3, 4, 32, 32) and seq.y.shape == (4, 3, 32, 32) and seq.dates.shape == (4, 3)
    pix = next(iter(_stream(cube, plan, batch_size=50, kind="pixels", pixels_per_window=20)))
    assert pix.x.shape == (50, 3, 4) and pix.valid.shape == (50, 3) and pix.y.shape == (50,)
    assert pix.valid.any(1).all()


def test_store_fast_path_gives_the_same_batches_as_dask(tmp_path):
    c = synthetic_cube(size=(128, 128), n_times=2, seed=5)
    geoarray.write_cube(c, tmp_path / "c.zarr", chunk=64)
    fast = geoarray.open_cube(tmp_path / "c.zarr")
    slow = fast.copy()
    slow["imagery"] = slow.imagery + 0  # same values, but no longer the untouched store variable
    plan = plan_chips(fast, chip_size=32, val_fraction=0.0)
    # batches reuse two buffers: copy each one out before drawing the next
    a = [(t.x.clone(), t.y.clone()) for t in _stream(fast, plan, batch_size=8, shuffle=False)]
    b = [(t.x.clone(), t.y.clone()) for t in _stream(slow, plan, batch_size=8, shuffle=False)]
    assert len(a) == len(b) > 1
    for (xa, ya), (xb, yb) in zip(a, b, strict=True):
        np.testing.assert_array_equal(xa.numpy(), xb.numpy())
        np.testing.assert_array_equal(ya.numpy(), yb.numpy())


# -- sparse labels -----------------------------------------------------------------------------------------
def _sparse(cube):
    """Labels as polygons rasterised onto a scene: nodata (255) but for two small patches, < 0.1 % of pixels."""
    lab = np.full((cube.sizes["y"], cube.sizes["x"]), 255, np.uint8)
    lab[10:13, 10:13] = 0  # a patch of class 0 only (9 px)
    lab[150:155, 100:105] = 2  # and one of class 2 (25 px)
    out = cube.assign(labels=(("y", "x"), lab), valid=xr.ones_like(cube.valid))
    out["labels"].attrs.update(nodata=255, classes=["a", "b", "c"])
    assert (lab != 255).mean() < 0.001
    return out


def test_chips_without_a_labelled_pixel_are_skipped_and_class_0_counts(cube):
    c = _sparse(cube)
    plan = plan_chips(c, chip_size=32, val_fraction=0.0)
    # grid step 32: one window holds each patch, on each of the 3 dates; every other window is unlabelled
    assert sorted({(w.y, w.x) for w in plan.train}) == [(0, 0), (128, 96)]
    assert len(plan.train) == 6 and plan.dropped["unlabelled"] > 0 and plan.labelled_pixels == 34
    # min_positive counts labelled pixels, class 0 included: the 9-pixel class-0 patch is enough
    assert {(w.y, w.x) for w in plan_chips(c, chip_size=32, val_fraction=0.0, min_positive=9).train} == {
        (0, 0),
        (128, 96),
    }
    assert {(w.y, w.x) for w in plan_chips(c, chip_size=32, val_fraction=0.0, min_positive=10).train} == {
        (128, 96)
    }
    # positive_classes counts only those classes
    only2 = plan_chips(c, chip_size=32, val_fraction=0.0, min_positive=1, positive_classes=[2])
    assert {(w.y, w.x) for w in only2.train} == {(128, 96)}
    # labels=None (an unsupervised plan) keeps every window
    assert len(plan_chips(c, chip_size=32, val_fraction=0.0, labels=None).train) > 6


def test_a_labelled_pixel_must_be_valid_on_the_chips_date(cube):
    c = _sparse(cube)
    valid = np.ones(c.valid.shape, bool)
    valid[1, 150:155, 100:105] = False  # the class-2 patch is clouded on date 1
    c = c.assign(valid=(c.valid.dims, valid))
    plan = plan_chips(c, chip_size=32, val_fraction=0.0)
    assert sorted((w.t, w.y, w.x) for w in plan.train if (w.y, w.x) == (128, 96)) == [
        ((0,), 128, 96),
        ((2,), 128, 96),
    ]
    # a whole series counts the pixel when it is valid on one of its dates
    assert len(plan_chips(c, chip_size=32, val_fraction=0.0, times="all").train) == 2


def test_stream_of_a_sparse_plan_has_no_all_ignored_chip(cube):
    c = _sparse(cube)
    plan = plan_chips(c, chip_size=32, val_fraction=0.0)
    for b in _stream(c, plan, batch_size=2, shuffle=False):
        assert all((y != IGNORE).any() for y in b.y.numpy())


def test_every_chip_unlabelled_names_the_coverage(cube):
    c = _sparse(cube)
    c["labels"] = c.labels.where(c.labels != 0, 255).astype("uint8")  # keep the class-2 patch only
    c["labels"].attrs.update(nodata=255)
    with pytest.raises(TrainError, match=r"'unlabelled': \d+.*The labels cover 25 pixels where chips"):
        plan_chips(c, chip_size=32, val_fraction=0.0, min_positive=26)
    with pytest.raises(
        TrainError, match=r"min_positive=5 counts labelled pixels of the variable 'lab'.*it has"
    ):
        plan_chips(c, chip_size=32, labels="lab", min_positive=5)


def test_multilabel_masks_count_a_pixel_labelled_when_any_class_is(cube):
    c = _sparse(cube)
    lab = c.labels.values
    masks = np.stack([np.where(lab == 255, 255, lab == k) for k in range(3)]).astype("uint8")
    c["labels"] = (("class", "y", "x"), masks)
    c["labels"].attrs.update(nodata=255)
    assert len(plan_chips(c, chip_size=32, val_fraction=0.0).train) == 6
    only2 = plan_chips(c, chip_size=32, val_fraction=0.0, min_positive=1, positive_classes=[2])
    assert {(w.y, w.x) for w in only2.train} == {(128, 96)}


def test_nodata_from_a_rasters_fill_value_attr(cube):
    """rioxarray's open_rasterio keeps a raster's nodata as attrs['_FillValue'], not attrs['nodata']."""
    c = _sparse(cube)
    c["labels"].attrs = {"_FillValue": np.uint8(255)}
    plan = plan_chips(c, chip_size=32, val_fraction=0.0)
    assert len(plan.train) == 6
    for b in _stream(c, plan, batch_size=6, shuffle=False):
        assert set(np.unique(b.y.numpy())) <= {IGNORE, 0, 2}


# -- regions from vector files -----------------------------------------------------------------------------
def _halves(cube, crs):
    """West and east halves of the cube as two polygons in ``crs`` (not the cube's), and their class values."""
    import shapely
    from pyproj import Transformer

    to = Transformer.from_crs(cube.rio.crs, crs, always_xy=True)
    x0, x1, xm = float(cube.x[0]) - 5, float(cube.x[-1]) + 5, float(cube.x[96]) - 5
    y0, y1 = float(cube.y[-1]) - 5, float(cube.y[0]) + 5

    def poly(a, b):  # densified edges: a straight line in one CRS is curved in the other
        xs = np.r_[np.linspace(a, b, 20), np.full(20, b), np.linspace(b, a, 20), np.full(20, a)]
        ys = np.r_[np.full(20, y0), np.linspace(y0, y1, 20), np.full(20, y1), np.linspace(y1, y0, 20)]
        return shapely.Polygon(np.column_stack(to.transform(xs, ys)))

    return [poly(x0, xm), poly(xm, x1)]


def _write_vector(path, geoms, fields, crs, driver, layer=None):
    import shapely
    from pyogrio.raw import write

    names = list(fields)
    write(
        str(path),
        shapely.to_wkb(np.asarray(geoms, dtype=object)),
        [np.asarray(fields[n]) for n in names],
        names,
        layer=layer,
        driver=driver,
        geometry_type="Polygon",
        crs=crs,
        append=layer is not None and path.exists(),
    )
    return path


@pytest.mark.parametrize(
    ("name", "driver"),
    [("r.gpkg", "GPKG"), ("r.shp", "ESRI Shapefile"), ("r.geojson", "GeoJSON"), ("r.fgb", "FlatGeobuf")],
)
def test_region_labels_read_vector_files_in_their_own_crs(cube, tmp_path, name, driver):
    from geoarray.chips import region_labels

    crs = "EPSG:4326" if driver == "GeoJSON" else "EPSG:3857"  # never the cube's EPSG:32633
    path = _write_vector(tmp_path / name, _halves(cube, crs), {"code": np.array([10, 2])}, crs, driver)
    plan = plan_chips(cube, chip_size=32, val_fraction=0.0, labels=None)
    names = region_labels(plan, cube, str(path), property="code")
    assert names == ["2", "10"]  # numbers sort as numbers
    want = {(w.y, w.x): (1 if w.x + 16 < 96 else 0) for w in plan.train}  # majority half under each chip
    assert {(w.y, w.x): w.label for w in plan.train} == want


def test_region_labels_from_a_geodataframe_like_object(cube):
    """Anything with a FeatureCollection __geo_interface__ and a .crs (a GeoDataFrame) works."""
    from shapely.geometry import mapping

    from geoarray.chips import region_labels

    class Frame:
        crs = "EPSG:3857"

        def __init__(self, geoms, values):
            self.__geo_interface__ = {
                "type": "FeatureCollection",
                "features": [
                    {"type": "Feature", "geometry": g and mapping(g), "properties": {"k": v}}
                    for g, v in zip(geoms, values, strict=True)
                ],
            }

    plan = plan_chips(cube, chip_size=32, val_fraction=0.0, labels=None)
    # real frames hold features without a geometry or without a value: they are left out
    frame = Frame([*_halves(cube, "EPSG:3857"), None, _halves(cube, "EPSG:3857")[0]], ["w", "e", "x", None])
    assert region_labels(plan, cube, frame, property="k") == ["e", "w"]
    assert {w.label for w in plan.train if w.x + 32 <= 90} == {1}


def test_chip_classification_batches_are_augmented(cube):
    """Chip batches (one label per chip) get the flips, rotations and jitter of augment=True, labels untouched."""
    import torch

    plan = plan_chips(cube, chip_size=32, val_fraction=0.0, labels=None)
    plain = next(iter(_stream(cube, plan, batch_size=8, shuffle=False, kind="chip")))
    aug = next(iter(_stream(cube, plan, batch_size=8, shuffle=False, kind="chip", augment=True)))
    assert plain.x.shape == aug.x.shape == (8, 4, 32, 32)
    assert not torch.equal(plain.x, aug.x)
    assert torch.equal(plain.y, aug.y)
    # each chip is a flip/rotation of its plain self, times a per-band gain plus a bias: same sorted values up to
    # that affine map, so per band the correlation of sorted values is ~1
    a = np.sort(plain.x[0, 0].numpy().ravel())
    b = np.sort(aug.x[0, 0].numpy().ravel())
    if np.corrcoef(a, b)[0, 1] < 0:  # a negative gain is possible only in principle (gain ~ N(1, 0.05))
        b = b[::-1]
    assert np.corrcoef(a, b)[0, 1] > 0.999


# -- random windows across chunk edges -----------------------------------------------------------------------
def _straddles(start: int, size: int, chunk: int) -> bool:
    return start // chunk != (start + size - 1) // chunk


def test_random_windows_are_uniform_over_the_scene_and_cross_chunk_edges():
    """Origins uniform over [0, 512 - 32]² with 64-px chunks: a window crosses a y chunk edge when y % 64 > 32,
    217 of the 481 possible origins (7 periods x 31), and likewise in x. Windows kept inside their chunk (the
    old planner) never cross, which under-samples everything near a chunk edge."""
    c = synthetic_cube(size=(512, 512), n_times=1, seed=0, chunks=64)
    plan = plan_chips(c, chip_size=32, mode="random", n_random=64, val_fraction=0.0, labels=None, seed=4)
    ys = np.array([w.y for w in plan.train])
    xs = np.array([w.x for w in plan.train])
    n = len(ys)
    assert n == 64 * 64  # n_random per tile on average: 64 tiles (the 64 read blocks)
    p = 217 / 481
    for axis in (ys, xs):
        frac = np.mean([_straddles(int(v), 32, 64) for v in axis])
        assert abs(frac - p) < 4 * np.sqrt(p * (1 - p) / n), (frac, p)
    both = np.mean([_straddles(int(y), 32, 64) or _straddles(int(x), 32, 64) for y, x in zip(ys, xs, strict=True)])
    assert abs(both - (1 - (1 - p) ** 2)) < 0.03
    # chi-square of the origins over an 8 x 8 grid of the origin range: df = 63, p = 0.001 at 103.4
    counts, _, _ = np.histogram2d(ys, xs, bins=8, range=[[0, 481], [0, 481]])
    chi2 = float(((counts - n / 64) ** 2 / (n / 64)).sum())
    assert chi2 < 103.4, chi2
    # every window is assigned to the read block holding its origin
    for w in plan.train:
        b = plan.blocks[w.block]
        assert b.y0 <= w.y < b.y1 and b.x0 <= w.x < b.x1


def test_a_window_across_chunk_edges_carries_the_cubes_pixels_there(tmp_path):
    """On the direct store path and through dask: chips that straddle chunk edges hold exactly the cube's
    normalised pixels and labels there (invalid pixels 0 / ignored), every one of them."""
    c = synthetic_cube(size=(128, 128), n_times=2, seed=3)
    geoarray.write_cube(c, tmp_path / "c.zarr", chunk=64)
    fast = geoarray.open_cube(tmp_path / "c.zarr")
    slow = fast.copy()
    slow["imagery"] = slow.imagery + 0  # the dask path
    plan = plan_chips(fast, chip_size=32, mode="random", n_random=6, val_fraction=0.0, seed=1)
    crossing = [w for w in plan.train if _straddles(w.y, 32, 64) or _straddles(w.x, 32, 64)]
    assert len(crossing) > 10
    img, lab, valid = (np.asarray(fast[v].values) for v in ("imagery", "labels", "valid"))
    mean, std = [0.1, 0.2, 0.3, 0.4], [0.5, 0.25, 2.0, 1.0]
    for cube in (fast, slow):
        s = ChipStream(
            cube, plan.train, plan, bands=list(cube.band.values), mean=mean, std=std, batch_size=16, shuffle=False
        )
        order = [w for bi in s._by_block for w in s._by_block[bi]]
        seen = 0
        for batch in s:
            for i in range(len(batch.x)):
                w = order[seen + i]
                t, ys, xs = w.t[0], slice(w.y, w.y + 32), slice(w.x, w.x + 32)
                raw = img[t, :, ys, xs]
                ok = valid[t, ys, xs] & np.isfinite(raw).all(0)
                want = (raw.astype(np.float32) - np.float32(mean)[:, None, None]) * (
                    np.float32(1) / np.float32(std)[:, None, None]
                )
                want[:, ~ok] = 0
                np.testing.assert_array_equal(batch.x[i].numpy(), want)
                np.testing.assert_array_equal(
                    batch.y[i].numpy(), np.where(ok, lab[t, ys, xs].astype(np.int64), IGNORE)
                )
            seen += len(batch.x)
        assert seen == len(plan.train)


@pytest.mark.parametrize("n", [0, -3, 2.5, True])
def test_random_mode_needs_a_positive_window_count(cube, n):
    with pytest.raises(TrainError, match=r"n_random=.*expected a positive int"):
        plan_chips(cube, chip_size=32, mode="random", n_random=n)

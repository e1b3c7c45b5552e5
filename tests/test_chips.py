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
        gets.append(f"{Path(str(self.root)).name}/{key}")
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

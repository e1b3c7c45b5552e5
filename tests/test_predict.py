from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
import time

import dask
import numpy as np
import pytest
import torch
import zarr
from conftest import make_checkpoint, tree_digest

import geoarray
from geoarray.checkpoint import read_metadata
from geoarray.datasets import synthetic_cube
from geoarray.errors import BandError, GeoArrayWarning, PredictError, StoreExistsError
from geoarray.predict import partial_outputs

CLASSES = ["water", "forest", "field", "urban", "new_building"]


@pytest.fixture(scope="module")
def cube():
    # sizes that are not multiples of any stride
    return synthetic_cube(size=(150, 131), n_times=2, seed=1)


@pytest.fixture(scope="module")
def gained(tmp_path_factory):
    """Feature checkpoints (4 outputs) with up-scaled weights, made once per module and only read by the tests:
    saving one measures the model's receptive field, ~7 s for a res_unet."""
    made: dict = {}

    def get(name, gain, **hp):
        key = (name, gain, tuple(sorted(hp.items())))
        if key not in made:
            path = tmp_path_factory.mktemp("gained") / "m.safetensors"
            made[key] = make_checkpoint(path, name, task="features", num_classes=4, gain=gain, **hp)
        return made[key]

    return get


def _reference(cube, ckpt_path, *, sequence=False, softmax=True):
    """Whole-image inference by hand: normalise, fill invalid with 0, run the model once, softmax."""
    ck = geoarray.load_checkpoint(ckpt_path)
    meta = ck.meta
    bands = meta["input"]["bands"]
    x = cube.imagery.sel(band=bands).values.astype(np.float32)
    mean = np.asarray(meta["input"]["mean"], np.float32)[:, None, None]
    std = np.asarray(meta["input"]["std"], np.float32)[:, None, None]
    x = (x - mean) / std
    ok = np.isfinite(x).all(1) & cube.valid.values
    x = np.where(ok[:, None], x, 0).astype(np.float32)
    with torch.no_grad():
        if sequence:
            doy = torch.tensor([[float(t.dayofyear) for t in cube.indexes["time"]]])
            logits = ck.model(torch.from_numpy(x)[None], dates=doy)[0]
        else:
            logits = ck.model(torch.from_numpy(x))
    probs = (torch.softmax(logits, 1) if softmax else logits).numpy()
    probs[np.broadcast_to(~ok[:, None], probs.shape)] = np.nan
    return probs


def _smallest_chunk(ckpt):
    meta = read_metadata(ckpt)
    return max(meta["stride"], int(np.ceil(meta["halo"] / meta["stride"]) * meta["stride"]))


def _max_rel(a, b, scale):
    assert np.array_equal(np.isnan(a), np.isnan(b))
    return float(np.nanmax(np.abs(a - b))) / scale


@pytest.mark.parametrize(
    ("name", "hp", "size", "gain"),
    [
        ("unet", {"width": 4}, (250, 211), 3.0),
        ("res_unet", {"width": 4, "encoder": "resnet18"}, (330, 301), 4.0),
        ("attention_unet", {"width": 4, "num_attention_layers": 2}, (250, 211), 3.0),
    ],
)
def test_seamless_small_chunks_equal_one_chunk_and_whole_image(gained, name, hp, size, gain):
    """Chunks of the halo's size give whole-image inference, with a model whose distant pixels matter.

    Feature outputs (no softmax to saturate) of a model with up-scaled weights: a halo one stride short of
    the receptive field changes the answer by more than 1e-3 of the output's scale (checked here, so the
    test can tell a right halo from a wrong one); the automatic halo matches to 1e-5.
    """
    c = synthetic_cube(size=size, n_times=2, seed=2)
    ckpt = gained(name, gain, **hp)
    meta = read_metadata(ckpt)
    chunk = _smallest_chunk(ckpt)
    seq = name == "attention_unet"
    t = -1 if seq else 1
    one = geoarray.predict(c.chunk({"time": t, "y": -1, "x": -1}), ckpt).features.values
    many_cube = c.chunk({"time": t, "y": chunk, "x": chunk})
    assert len(many_cube.chunks["y"]) >= 3 and len(many_cube.chunks["x"]) >= 3
    many = geoarray.predict(many_cube, ckpt).features
    assert many.chunks[2][0] == chunk  # the blocks really are this small (not grouped into one)
    ref = _reference(c, ckpt, sequence=seq, softmax=False)
    scale = float(np.nanmax(np.abs(ref)))
    assert _max_rel(ref, one, scale) <= 1e-5
    assert _max_rel(ref, many.values, scale) <= 1e-5
    # negative control: one stride less of halo is visibly wrong with this model
    with pytest.warns(GeoArrayWarning, match="seams can show"):
        short = geoarray.predict(many_cube, ckpt, halo=meta["halo"] - meta["stride"]).features.values
    assert _max_rel(ref, short, scale) > 1e-3


@pytest.mark.parametrize(("name", "hp", "gain"), [("unet", {"width": 4}, 3.0), ("res_unet", {"width": 4, "encoder": "resnet18"}, 4.0)])
def test_blocks_larger_than_the_cpu_tile_run_tile_by_tile_and_stay_seamless(gained, monkeypatch, name, hp, gain):
    """A whole-image block cut into 64² tiles (each with the halo) equals whole-image inference; with one stride
    less of halo the tiles' seams show, so the block really ran tile by tile."""
    import geoarray._tiles as tiles

    c = synthetic_cube(size=(250, 211), n_times=1, seed=2).chunk({"time": 1, "y": -1, "x": -1})
    ckpt = gained(name, gain, **hp)
    meta = read_metadata(ckpt)
    ref = _reference(c, ckpt, sequence=False, softmax=False)
    scale = float(np.nanmax(np.abs(ref)))
    monkeypatch.setattr(tiles, "CPU_TILE", 64)
    monkeypatch.setattr(tiles, "CPU_TILE_MAX", 64)
    assert tiles._spans(250, 64) == [(0, 64), (64, 128), (128, 192), (192, 250)]  # a 58-row rest is over half a tile
    assert tiles._spans(211, 64) == [(0, 64), (64, 128), (128, 211)]  # a 19-row rest joins the tile before
    tiled = geoarray.predict(c, ckpt).features.values
    assert _max_rel(ref, tiled, scale) <= 1e-5
    with pytest.warns(GeoArrayWarning, match="seams can show"):
        short = geoarray.predict(c, ckpt, halo=meta["halo"] - meta["stride"]).features.values
    assert _max_rel(ref, short, scale) > 1e-3
    monkeypatch.setattr(tiles, "CPU_TILE", 4096)  # one pass over the block: the short halo changes nothing
    whole = geoarray.predict(c, ckpt, halo=meta["halo"] - meta["stride"]).features.values
    assert _max_rel(ref, whole, scale) <= 1e-5


def test_cpu_tile_grows_with_the_halo(tmp_path, cube):
    """On CPUs the tile is 16 halos within [512, 1024] (geoarray._tiles.tile_for): a deep model's 96 px halo
    around 512² tiles would be 47 % of its pixels (the default UNet ran 1.37x slower per output pixel there than
    at 1024²). GPUs run whole blocks."""
    from geoarray._tiles import tile_for

    assert [tile_for("cpu", 16, h) for h in (0, 24, 48, 60, 96, 200)] == [512, 512, 768, 960, 1024, 1024]
    assert tile_for("cpu", 32, 50) == 800 and tile_for("cuda:0", 16, 96) is None
    ckpt = make_checkpoint(tmp_path / "m.safetensors", num_classes=3, classes=["a", "b", "c"], width=4, depth=2)
    planned = geoarray.predict(cube.chunk({"y": -1, "x": -1}), ckpt, halo=96)
    tasks = dict(planned["mask"].data.dask).values()
    specs = {a.run for t in tasks if isinstance(t, tuple) for a in t if hasattr(a, "run")}
    assert {s.tile for s in specs} == {1024} and {s.halo for s in specs} == {96}


def test_outputs_dims_coords_and_provenance(tmp_path, cube):
    ckpt = make_checkpoint(tmp_path / "m.safetensors", num_classes=5, classes=CLASSES, width=4, depth=3)
    out = geoarray.predict(cube.chunk({"y": 64, "x": 64}), ckpt)
    p, m = out.probabilities, out["mask"]
    assert p.dims == ("time", "class", "y", "x") and m.dims == ("time", "y", "x")
    assert list(p["class"].values) == CLASSES and m.dtype == np.uint8
    np.testing.assert_array_equal(p.x.values, cube.x.values)
    assert p.rio.crs == cube.rio.crs
    assert m.attrs["checkpoint_sha256"] == geoarray.load_checkpoint(ckpt).sha256
    assert m.attrs["model"] == "unet" and m.attrs["geoarray_version"] == geoarray.__version__
    assert m.attrs["nodata"] == 255
    pv, mv = p.values, m.values
    invalid = ~cube.valid.values
    assert np.isnan(pv).any(axis=1)[invalid].all() and (mv[invalid] == 255).all()
    assert not np.isnan(pv).any(axis=1)[~invalid].any()
    np.testing.assert_allclose(np.nansum(pv, axis=1)[~invalid], 1.0, atol=1e-5)
    np.testing.assert_array_equal(np.nanargmax(np.nan_to_num(pv, nan=-1), axis=1)[~invalid], mv[~invalid])


def test_predict_is_lazy(tmp_path, cube):
    from helpers import raise_if_dask_computes

    ckpt = make_checkpoint(tmp_path / "m.safetensors", num_classes=5, classes=CLASSES, width=4, depth=3)
    c = cube.chunk({"y": 64, "x": 64})
    with raise_if_dask_computes():
        out = geoarray.predict(c, ckpt)
    assert out.probabilities.chunks[2][0] == 64


def test_bands_are_matched_by_name(tmp_path, cube):
    ckpt = make_checkpoint(
        tmp_path / "m.safetensors", num_classes=5, classes=CLASSES, width=4, depth=3, bands=("nir", "red")
    )
    ref = geoarray.predict(cube, ckpt).probabilities.values
    shuffled = cube.isel(band=[3, 0, 2, 1])
    np.testing.assert_array_equal(geoarray.predict(shuffled, ckpt).probabilities.values, ref)
    with pytest.raises(
        BandError, match=r"lacks band\(s\) \['nir'\].*needs \['nir', 'red'\].*has \['blue', 'green', 'red'\]"
    ):
        geoarray.predict(cube.isel(band=[0, 1, 2]), ckpt)


def test_multilabel_masks_per_class(tmp_path, cube):
    ckpt = make_checkpoint(
        tmp_path / "m.safetensors",
        num_classes=3,
        classes=["a", "b", "c"],
        width=4,
        depth=3,
        _meta={"multilabel": True},
    )
    out = geoarray.predict(cube, ckpt)
    assert out["mask"].dims == ("time", "class", "y", "x")
    p, m = out.probabilities.values, out["mask"].values
    ok = cube.valid.values
    np.testing.assert_array_equal(
        m.transpose(0, 2, 3, 1)[ok], (p.transpose(0, 2, 3, 1)[ok] > 0.5).astype(np.uint8)
    )
    assert (m.transpose(0, 2, 3, 1)[~ok] == 255).all()


def test_feature_model_float16(tmp_path, cube):
    ckpt = make_checkpoint(tmp_path / "f.safetensors", task="features", num_classes=6, width=4, depth=3)
    out = geoarray.predict(cube, ckpt, dtype="float16")
    f = out.features
    assert f.dims == ("time", "feature", "y", "x") and f.sizes["feature"] == 6 and f.dtype == np.float16
    # features are the model's raw outputs (no softmax), NaN where the input is invalid; float16 is the
    # float32 result rounded
    f32 = geoarray.predict(cube, ckpt).features.values
    ref = _reference(cube, ckpt, softmax=False)
    assert np.nanstd(ref) > 0.05 and (ref < 0).any()  # not probabilities
    assert _max_rel(ref, f32, float(np.nanmax(np.abs(ref)))) <= 1e-5
    np.testing.assert_array_equal(f.values, f32.astype(np.float16))


def test_pixel_time_series_model_drops_time(tmp_path, cube):
    ckpt = make_checkpoint(
        tmp_path / "p.safetensors",
        "pixel_transformer",
        task="pixel_classification",
        num_classes=5,
        out_channels=8,
        classes=CLASSES,
    )
    with pytest.raises(PredictError, match=r"time is chunked.*chunk\(time=-1\)"):
        geoarray.predict(cube.chunk({"time": 1}), ckpt)
    out = geoarray.predict(cube.chunk({"time": -1, "y": 50, "x": 50}), ckpt)
    assert out.probabilities.dims == ("class", "y", "x") and out["mask"].dims == ("y", "x")
    whole = geoarray.predict(cube.chunk({"time": -1, "y": -1, "x": -1}), ckpt)
    np.testing.assert_allclose(out.probabilities.values, whole.probabilities.values, atol=1e-5)


def test_sensor_mismatch_leaves_dates_invalid_and_prefix_names(tmp_path, cube):
    c = cube.assign_coords(sensor=("time", np.array(["S2", "L8"], dtype=object)))
    ckpt = make_checkpoint(
        tmp_path / "m.safetensors", num_classes=5, classes=CLASSES, width=4, depth=3, _meta={"sensor": "S2"}
    )
    out = geoarray.predict(c, ckpt, prefix="s2_")
    p = out["s2_probabilities"].values
    assert np.isnan(p[1]).all() and not np.isnan(p[0]).all()
    assert (out["s2_mask"].values[1] == 255).all()


def test_chunk_smaller_than_halo(gained, cube):
    # halo 96; weights scaled up so that distant pixels matter (see make_checkpoint)
    ckpt = gained("unet", 3.0, width=4)
    with pytest.raises(PredictError, match=r"smaller than the halo \(96 px\).*at least 96"):
        geoarray.predict(cube.chunk({"y": 64, "x": 64}), ckpt)
    with pytest.warns(GeoArrayWarning, match="seams can show"):  # explicit small halo is allowed
        out = geoarray.predict(cube.chunk({"y": 64, "x": 64}), ckpt, halo=16)
    f = out.features
    assert f.shape[2:] == (150, 131)
    # each block is the model run on the block plus 16 px around it (cut at the image border), cropped
    ys, xs = np.cumsum((0, *f.chunks[2])), np.cumsum((0, *f.chunks[3]))
    got = f.values
    want = np.full_like(got, np.nan)
    for y0, y1 in itertools.pairwise(ys):
        for x0, x1 in itertools.pairwise(xs):
            wy0, wx0 = max(0, y0 - 16), max(0, x0 - 16)
            win = cube.isel(y=slice(wy0, y1 + 16), x=slice(wx0, x1 + 16))
            ref = _reference(win, ckpt, softmax=False)
            want[..., y0:y1, x0:x1] = ref[..., y0 - wy0 : y1 - wy0, x0 - wx0 : x1 - wx0]
    scale = float(np.nanmax(np.abs(want)))
    assert _max_rel(want, got, scale) <= 1e-5
    seamless = geoarray.predict(cube.chunk({"y": -1, "x": -1}), ckpt).features.values
    assert _max_rel(seamless, got, scale) > 1e-3  # and a 16 px halo is not the seamless answer


def test_chunks_are_realigned_to_the_stride(tmp_path, cube):
    ckpt = make_checkpoint(tmp_path / "m.safetensors", num_classes=5, classes=CLASSES, width=4, depth=3)
    a = geoarray.predict(cube.chunk({"y": 50, "x": 50}), ckpt).probabilities
    b = geoarray.predict(cube.chunk({"y": -1, "x": -1}), ckpt).probabilities
    assert all(ch % 4 == 0 for ch in a.chunks[2][:-1])
    assert np.nanmax(np.abs(a.values - b.values)) <= 1e-4


def test_tiny_chunks_are_grouped_into_larger_blocks(tmp_path, cube):
    ckpt = make_checkpoint(tmp_path / "m.safetensors", num_classes=5, classes=CLASSES, width=4, depth=3)
    tiny = geoarray.predict(cube.chunk({"y": 16, "x": 16}), ckpt).probabilities  # 16 px < the halo: grouped
    assert tiny.chunks[2] == (150,) and tiny.chunks[3] == (131,)  # 16 x 16 = 256 px >= the image
    whole = geoarray.predict(cube.chunk({"y": -1, "x": -1}), ckpt).probabilities
    assert np.nanmax(np.abs(tiny.values - whole.values)) <= 1e-4
    kept = geoarray.predict(cube.chunk({"y": 64, "x": 64}), ckpt).probabilities
    assert kept.chunks[2] == (64, 64, 22)  # the block grid the user chose is kept


def test_chip_classifier_is_refused(tmp_path, cube):
    ckpt = make_checkpoint(
        tmp_path / "c.safetensors", "resnet18", task="classification", num_classes=3, width=4
    )
    with pytest.raises(PredictError, match="chip classifier"):
        geoarray.predict(cube, ckpt)


def test_distributed_matches_threaded(tmp_path, cube, local_cluster):
    ckpt = make_checkpoint(tmp_path / "m.safetensors", num_classes=5, classes=CLASSES, width=4, depth=3)
    store = tmp_path / "c.zarr"
    geoarray.write_cube(cube, store, chunk=64)
    import dask

    with dask.config.set(scheduler="threads"):
        threaded = geoarray.predict(geoarray.open_cube(store), ckpt).probabilities.values
    dist = (
        local_cluster.compute(geoarray.predict(geoarray.open_cube(store), ckpt).probabilities).result().values
    )
    np.testing.assert_allclose(dist, threaded, atol=1e-6)
    # the model was loaded in the worker processes, once each, not per task
    loads = local_cluster.run(lambda: len(__import__("geoarray._inference", fromlist=["_MODELS"])._MODELS))
    assert set(loads.values()) <= {0, 1} and sum(loads.values()) >= 1


def test_store_write_on_a_cluster_matches_threaded_bytes(tmp_path, cube, local_cluster):
    import dask

    ckpt = make_checkpoint(tmp_path / "m.safetensors", num_classes=5, classes=CLASSES, width=4, depth=3)
    stores = {}
    for mode in ("threads", "cluster"):
        store = stores[mode] = tmp_path / f"{mode}.zarr"
        geoarray.write_cube(cube, store, chunk=64)
        if mode == "threads":
            geoarray.predict(geoarray.open_cube(store), ckpt, store=store)
        else:  # the write tasks run in the worker processes
            with local_cluster.as_current(), dask.config.set(scheduler=local_cluster.get):
                geoarray.predict(geoarray.open_cube(store), ckpt, store=store)
    for var in ("probabilities", "mask"):
        a, b = tree_digest(stores["threads"] / var), tree_digest(stores["cluster"] / var)
        assert a == b and len(a) > 4  # every chunk file, byte for byte
    assert geoarray.open_cube(stores["cluster"])["mask"].attrs["geoarray_complete"] is True


# -- writing into the store -------------------------------------------------------------------------------
def test_store_write_adds_only_outputs(tmp_path, cube):
    ckpt = make_checkpoint(tmp_path / "m.safetensors", num_classes=5, classes=CLASSES, width=4, depth=3)
    store = tmp_path / "c.zarr"
    geoarray.write_cube(cube, store, chunk=64)
    before = tree_digest(store)
    out = geoarray.predict(geoarray.open_cube(store), ckpt, store=store)
    assert tree_digest(store, exclude=("probabilities", "mask", "class")) == before
    ref = geoarray.predict(cube, ckpt)
    np.testing.assert_allclose(out.probabilities.values, ref.probabilities.values, atol=1e-6)
    np.testing.assert_array_equal(out["mask"].values, ref["mask"].values)
    assert out["mask"].attrs["geoarray_complete"] is True
    reopened = geoarray.open_cube(store)
    assert reopened.probabilities.rio.crs == cube.rio.crs
    # float outputs: blosc lz4 + byte shuffle (fast, and smaller on probabilities); masks: zstd
    probs, mask = (zarr.open_array(str(store / n)) for n in ("probabilities", "mask"))
    (bc,), (zc,) = probs.compressors, mask.compressors
    assert (bc.cname.value, bc.shuffle.value, bc.typesize) == ("lz4", "shuffle", 4) and type(zc).__name__ == "ZstdCodec"
    with pytest.raises(StoreExistsError, match="overwrite=True"):
        geoarray.predict(reopened, ckpt, store=store)
    geoarray.predict(reopened, ckpt, store=store, overwrite=True)
    assert tree_digest(store, exclude=("probabilities", "mask", "class")) == before


_KILL_SCRIPT = """
import sys, dask, geoarray
dask.config.set(scheduler="synchronous")
geoarray.predict(geoarray.open_cube(sys.argv[1]), sys.argv[2], store=sys.argv[1])
"""

OUTPUTS = ("mask", "probabilities")


def _chunk_files(store):
    """Chunk files of the outputs, keyed by output and block (time, y, x); zarr's temporary files left out."""
    out = {}
    for var in OUTPUTS:
        for p in (store / var / "c").rglob("*"):
            if p.is_file() and not p.name.endswith(".partial"):
                parts = tuple(int(k) for k in p.relative_to(store / var / "c").parts)
                block = (parts[0], *parts[-2:])  # probabilities' keys hold the class chunk too
                out[(var, block)] = p
    return out


def _finished_blocks(store):
    """Stat (inode, mtime) of every chunk file of the blocks whose outputs are all written."""
    files = _chunk_files(store)
    blocks = {b for _, b in files}
    done = [b for b in blocks if all((v, b) in files for v in OUTPUTS)]
    return {files[(v, b)]: _stat(files[(v, b)]) for b in done for v in OUTPUTS}


def _stat(path):
    st = path.stat()
    return st.st_ino, st.st_mtime_ns


def _simulate_kill(store, drop):
    """What a killed run leaves: some chunk files missing, and the outputs flagged incomplete."""
    import zarr

    for path in drop:
        path.unlink()
    for var in OUTPUTS:
        zarr.open_array(str(store / var), mode="r+").attrs.update({"geoarray_complete": False})


def test_resume_writes_only_the_missing_chunks(tmp_path):
    c = synthetic_cube(size=(128, 128), n_times=2, seed=4)
    ckpt = make_checkpoint(tmp_path / "m.safetensors", num_classes=5, classes=CLASSES, width=4, depth=3)
    store = tmp_path / "c.zarr"
    geoarray.write_cube(c, store, chunk=32)
    geoarray.predict(geoarray.open_cube(store), ckpt, store=store)
    whole = tree_digest(store)
    files = _chunk_files(store)
    assert len(files) == 2 * 2 * 4 * 4
    # a kill part-way: block (0, 0, 1) lost its mask only, (1, 2, 3) its probabilities only, row y=3 of
    # date 1 both (write_block writes the outputs of a block one after the other)
    drop = [files[("mask", (0, 0, 1))], files[("probabilities", (1, 2, 3))]]
    drop += [files[(v, (1, 3, x))] for v in OUTPUTS for x in range(4)]
    _simulate_kill(store, drop)
    kept = _finished_blocks(store)
    assert len(kept) == 2 * (2 * 4 * 4 - 6)
    geoarray.predict(geoarray.open_cube(store), ckpt, store=store)
    assert tree_digest(store) == whole  # the same bytes as the uninterrupted run
    rewritten = [str(p.relative_to(store)) for p, st in kept.items() if _stat(p) != st]
    assert not rewritten, f"finished chunks were written again: {rewritten[:4]}"
    assert geoarray.open_cube(store)["mask"].attrs["geoarray_complete"] is True


def test_resume_removes_half_written_chunk_files_of_a_killed_run(tmp_path):
    """SIGKILL during a chunk write leaves zarr's ``<chunk>.<token>.partial`` file; the resumed run removes it."""
    c = synthetic_cube(size=(64, 64), n_times=1, seed=4)
    ckpt = make_checkpoint(tmp_path / "m.safetensors", num_classes=5, classes=CLASSES, width=4, depth=3)
    store = tmp_path / "c.zarr"
    geoarray.write_cube(c, store, chunk=32)
    geoarray.predict(geoarray.open_cube(store), ckpt, store=store)
    whole = tree_digest(store)
    files = _chunk_files(store)
    lost = files[("probabilities", (0, 1, 1))]
    _simulate_kill(store, [lost])
    stale = lost.with_name(lost.name + ".3f2a9c0e1b7d4e6f8a9b0c1d2e3f4a5b.partial")
    stale.write_bytes(b"")  # what the killed write left behind
    geoarray.predict(geoarray.open_cube(store), ckpt, store=store)
    assert not list(store.rglob("*.partial"))
    assert tree_digest(store) == whole


def test_store_write_of_a_date_without_valid_pixels_writes_every_chunk(tmp_path):
    """A fully clouded date makes chunks that equal the fill values (mask 255, probabilities NaN): they are
    written like the others, so the run completes (zarr skips such chunks unless write_empty_chunks is set)."""
    c = synthetic_cube(size=(64, 64), n_times=2, seed=4)
    c["imagery"][1] = np.nan
    ckpt = make_checkpoint(tmp_path / "m.safetensors", num_classes=5, classes=CLASSES, width=4, depth=3)
    store = tmp_path / "c.zarr"
    geoarray.write_cube(c, store, chunk=32)
    out = geoarray.predict(geoarray.open_cube(store), ckpt, store=store)
    assert len(_chunk_files(store)) == 2 * 2 * 2 * 2  # outputs x dates x 2 x 2 chunks
    assert out["mask"].attrs["geoarray_complete"] is True
    assert (out["mask"].values[1] == 255).all() and np.isnan(out.probabilities.values[1]).all()
    ref = geoarray.predict(c, ckpt)
    np.testing.assert_array_equal(out["mask"].values, ref["mask"].values)
    np.testing.assert_allclose(out.probabilities.values[0], ref.probabilities.values[0], atol=1e-6)


def test_partial_output_of_another_checkpoint_is_refused(tmp_path):
    c = synthetic_cube(size=(128, 128), n_times=1, seed=4)
    ckpt = make_checkpoint(tmp_path / "a.safetensors", num_classes=5, classes=CLASSES, width=4, depth=3)
    other = make_checkpoint(
        tmp_path / "b.safetensors", num_classes=5, classes=CLASSES, width=4, depth=3, seed=1
    )
    store = tmp_path / "c.zarr"
    geoarray.write_cube(c, store, chunk=32)
    geoarray.predict(geoarray.open_cube(store), ckpt, store=store)
    files = _chunk_files(store)
    _simulate_kill(store, [files[(v, (0, 3, x))] for v in OUTPUTS for x in range(4)])
    before = tree_digest(store)
    for var in OUTPUTS:  # finishing it with other weights would mix two models in one variable
        with pytest.raises(StoreExistsError, match=rf"'{var}' .* is a partial output of another checkpoint"):
            geoarray.predict(geoarray.open_cube(store), other, store=store, outputs=[var])
    assert tree_digest(store) == before  # refused before any write
    out = geoarray.predict(geoarray.open_cube(store), other, store=store, overwrite=True)
    assert out["mask"].attrs["checkpoint_sha256"] == geoarray.load_checkpoint(other).sha256
    np.testing.assert_array_equal(out["mask"].values, geoarray.predict(c, other)["mask"].values)


def test_killed_run_resumes_byte_identical(tmp_path):
    c = synthetic_cube(size=(256, 256), n_times=2, seed=4)
    ckpt = make_checkpoint(tmp_path / "m.safetensors", num_classes=5, classes=CLASSES, width=8, depth=3)
    a, b = tmp_path / "a.zarr", tmp_path / "b.zarr"
    geoarray.write_cube(c, a, chunk=32)
    geoarray.write_cube(c, b, chunk=32)
    base = tree_digest(a)
    geoarray.predict(geoarray.open_cube(b), ckpt, store=b)  # uninterrupted
    # a run killed part-way (SIGKILL: no cleanup) ...
    proc = subprocess.Popen([sys.executable, "-c", _KILL_SCRIPT, str(a), str(ckpt)])
    deadline = time.time() + 120
    chunks = a / "mask" / "c"
    while time.time() < deadline and proc.poll() is None:
        if chunks.exists() and sum(1 for p in chunks.rglob("*") if p.is_file()) >= 5:
            os.kill(proc.pid, signal.SIGKILL)
            break
        time.sleep(0.01)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    partial = sum(1 for p in chunks.rglob("*") if p.is_file())
    assert 5 <= partial < 2 * 8 * 8
    assert geoarray.open_cube(a)["mask"].attrs["geoarray_complete"] is False
    kept = _finished_blocks(a)
    assert len(kept) >= 2 * 4
    # ... run again, finishes the rest
    geoarray.predict(geoarray.open_cube(a), ckpt, store=a)
    rewritten = [str(p.relative_to(a)) for p, st in kept.items() if _stat(p) != st]
    assert not rewritten, f"chunks finished before the kill were written again: {rewritten[:4]}"
    done_a = tree_digest(a)
    done_b = tree_digest(b)
    assert done_a == done_b  # outputs byte-identical to the uninterrupted run
    assert {
        k: v for k, v in done_a.items() if k.split("/")[0] not in ("mask", "probabilities", "class")
    } == base


def test_a_file_left_half_written_by_a_killed_worker_is_gone_when_the_run_ends(tmp_path):
    """A worker killed between writing a chunk's bytes and renaming them into place leaves zarr's
    ``<chunk>.<token>.partial`` file; Dask runs the block again elsewhere, and the store must still end
    byte-identical to an uninterrupted run (tests/test_faults.py's kill lands there now and then)."""
    from dask.callbacks import Callback

    c = synthetic_cube(size=(64, 64), n_times=1, seed=4)
    ckpt = make_checkpoint(tmp_path / "m.safetensors", num_classes=5, classes=CLASSES, width=4, depth=3)
    a, b = tmp_path / "a.zarr", tmp_path / "b.zarr"
    for store in (a, b):
        geoarray.write_cube(c, store, chunk=32)
    geoarray.predict(geoarray.open_cube(b), ckpt, store=b)  # uninterrupted
    left = a / "mask" / "c" / "0" / "1" / "0.5424ed667084a2d9.partial"

    def leave_a_partial_file(key, dsk, state):  # what the killed worker leaves, while the run writes
        if (a / "mask" / "zarr.json").exists() and not left.exists():
            left.parent.mkdir(parents=True, exist_ok=True)
            left.write_bytes(b"")

    with Callback(pretask=leave_a_partial_file), dask.config.set(scheduler="threads"):
        geoarray.predict(geoarray.open_cube(a), ckpt, store=a)
    assert tree_digest(a) == tree_digest(b)


def test_store_that_is_not_writable(tmp_path, cube):
    import shutil

    ckpt = make_checkpoint(tmp_path / "m.safetensors", num_classes=5, classes=CLASSES, width=4, depth=3)
    store = tmp_path / "ro.zarr"
    geoarray.write_cube(cube, store)
    before = tree_digest(store)
    chattr = shutil.which("chattr")
    if chattr is None or subprocess.run([chattr, "+i", str(store)], capture_output=True).returncode != 0:
        pytest.skip("cannot make a directory read-only here (no chattr +i)")
    try:
        with pytest.raises(geoarray.errors.StoreError, match="not writable"):
            geoarray.predict(geoarray.open_cube(store), ckpt, store=store)
    finally:
        subprocess.run([chattr, "-i", str(store)], check=True)
    assert tree_digest(store) == before


def test_assemble_crops_the_mosaic_of_uneven_neighbours():
    from geoarray._inference import assemble

    full = np.random.default_rng(0).random((2, 3, 37, 41))
    ys, xs = [0, 10, 25, 37], [0, 16, 30, 41]
    grid = [[full[..., ys[i] : ys[i + 1], xs[j] : xs[j + 1]] for j in range(3)] for i in range(3)]
    for y0, y1, x0, x1 in [(0, 37, 0, 41), (3, 30, 5, 40), (10, 25, 16, 30), (12, 13, 0, 41), (0, 9, 31, 41)]:
        np.testing.assert_array_equal(assemble(grid, (y0, y1, x0, x1)), full[..., y0:y1, x0:x1])


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"device": "gpu"}, r"device='gpu' is not a torch device"),
        ({"batch_size": 0}, r"batch_size=0; expected None \(automatic\) or a positive int"),
        ({"dtype": "float64"}, r"dtype='float64'; expected 'float32' or 'float16'"),
        ({"threshold": 1.5}, r"threshold=1.5; expected a probability strictly between 0 and 1"),
        ({"prefix": 3}, r"prefix=3; expected a string"),
    ],
)
def test_bad_options_are_refused_before_any_work(tmp_path, cube, kw, message):
    ckpt = make_checkpoint(tmp_path / "m.safetensors", num_classes=5, classes=CLASSES, width=4, depth=3)
    with pytest.raises(PredictError, match=message):
        geoarray.predict(cube, ckpt, **kw)


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="checks the no-GPU message")
def test_cuda_without_a_gpu_is_a_clear_error(tmp_path, cube):
    ckpt = make_checkpoint(tmp_path / "m.safetensors", num_classes=5, classes=CLASSES, width=4, depth=3)
    with pytest.raises(PredictError, match=r"device='cuda', but torch sees no CUDA GPU here.*device='cpu'"):
        geoarray.predict(cube, ckpt, device="cuda")


def test_options_accept_numpy_forms(tmp_path, cube):
    ckpt = make_checkpoint(tmp_path / "m.safetensors", num_classes=5, classes=CLASSES, width=4, depth=3)
    out = geoarray.predict(cube, ckpt, dtype=np.float16, threshold=np.float32(0.5), batch_size=np.int64(2))
    assert out.probabilities.dtype == np.float16


# -- several models in one store, nodata fill, partial outputs (issue 8) -----------------------------------
@pytest.mark.parametrize(
    ("kind", "first", "second"),
    [
        (
            "segmentation",
            {"num_classes": 5, "classes": CLASSES},
            {"num_classes": 2, "classes": ["stable", "change"]},
        ),
        ("features", {"num_classes": 8}, {"num_classes": 4}),
    ],
)
def test_prefixed_outputs_of_two_models_share_a_store(tmp_path, cube, kind, first, second):
    task = "segmentation" if kind == "segmentation" else "features"
    a = make_checkpoint(tmp_path / "a.safetensors", task=task, width=4, depth=3, **first)
    b = make_checkpoint(tmp_path / "b.safetensors", task=task, width=4, depth=3, seed=1, **second)
    store = tmp_path / "c.zarr"
    geoarray.write_cube(cube, store, chunk=64)
    geoarray.predict(geoarray.open_cube(store), a, store=store)
    out = geoarray.predict(geoarray.open_cube(store), b, store=store, prefix="change_")
    reopened = geoarray.open_cube(store)  # failed with "conflicting sizes for dimension 'class'"
    var, dim = ("probabilities", "class") if kind == "segmentation" else ("features", "feature")
    assert reopened[var].sizes[dim] == first["num_classes"]
    assert reopened[f"change_{var}"].dims == ("time", f"change_{dim}", "y", "x")
    assert reopened[f"change_{var}"].sizes[f"change_{dim}"] == second["num_classes"]
    if kind == "segmentation":
        assert list(reopened["change_class"].values) == ["stable", "change"]
        assert list(reopened["class"].values) == CLASSES
    ref = geoarray.predict(cube, b, prefix="change_")  # in memory: the same names and values
    np.testing.assert_allclose(out[f"change_{var}"].values, ref[f"change_{var}"].values, atol=1e-6)


def _multilabel_labels(cube, classes=("road", "roof", "tree")):
    lab = np.arange(len(classes))[:, None, None] == (cube.labels.isel(time=0) % len(classes)).values[None]
    return cube.assign(
        labels=(("class", "y", "x"), lab.astype("uint8"), {"classes": list(classes), "nodata": 255})
    ).assign_coords({"class": list(classes)})


def test_a_clashing_class_dim_is_refused_before_writing(tmp_path, cube):
    c = _multilabel_labels(cube)  # the cube's own multi-label labels(class=3, y, x)
    ckpt = make_checkpoint(tmp_path / "a.safetensors", num_classes=5, classes=CLASSES, width=4, depth=3)
    store = tmp_path / "c.zarr"
    geoarray.write_cube(c, store, chunk=64)
    before = tree_digest(store)
    with pytest.raises(
        geoarray.errors.StoreError, match=r"dim 'class' would have 5 .*has 3 .*\['labels'\].*prefix="
    ):
        geoarray.predict(geoarray.open_cube(store), ckpt, store=store)
    assert tree_digest(store) == before
    with pytest.raises(PredictError, match=r"dim 'class' would have 5 .*prefix="):
        geoarray.predict(c, ckpt)  # in memory, xarray would have aligned the outputs to 3 labels
    out = geoarray.predict(geoarray.open_cube(store), ckpt, store=store, prefix="lc_")
    assert out.lc_probabilities.sizes["lc_class"] == 5 and out.labels.sizes["class"] == 3


def test_overwrite_with_another_class_list_rewrites_the_class_dim(tmp_path, cube):
    a = make_checkpoint(tmp_path / "a.safetensors", num_classes=5, classes=CLASSES, width=4, depth=3)
    b = make_checkpoint(
        tmp_path / "b.safetensors", num_classes=2, classes=["stable", "change"], width=4, depth=3
    )
    store = tmp_path / "c.zarr"
    geoarray.write_cube(cube, store, chunk=64)
    geoarray.predict(geoarray.open_cube(store), a, store=store)
    geoarray.predict(geoarray.open_cube(store), b, store=store, overwrite=True)
    ds = geoarray.open_cube(store)
    assert list(ds["class"].values) == ["stable", "change"] and ds.probabilities.sizes["class"] == 2
    np.testing.assert_allclose(
        ds.probabilities.values, geoarray.predict(cube, b).probabilities.values, atol=1e-6
    )


def test_in_memory_outputs_replace_or_sit_beside_the_cubes(tmp_path, cube):
    a = make_checkpoint(tmp_path / "a.safetensors", num_classes=5, classes=CLASSES, width=4, depth=3)
    b = make_checkpoint(
        tmp_path / "b.safetensors", num_classes=2, classes=["stable", "change"], width=4, depth=3
    )
    with_a = geoarray.predict(cube, a)
    replaced = geoarray.predict(with_a, b)  # xarray aligned b's 2 classes to a's 5 labels: all NaN
    assert list(replaced["class"].values) == ["stable", "change"]
    np.testing.assert_allclose(replaced.probabilities.values, geoarray.predict(cube, b).probabilities.values)
    both = geoarray.predict(with_a, b, prefix="change_")
    assert both.probabilities.sizes["class"] == 5 and both.change_probabilities.sizes["change_class"] == 2


def test_unwritten_chunks_read_as_nodata_and_partial_outputs_are_named(tmp_path, cube):
    ckpt = make_checkpoint(tmp_path / "m.safetensors", num_classes=5, classes=CLASSES, width=4, depth=3)
    store = tmp_path / "c.zarr"
    geoarray.write_cube(cube, store, chunk=64)
    geoarray.predict(geoarray.open_cube(store), ckpt, store=store)
    assert partial_outputs(geoarray.open_cube(store)) == []
    for var, key in (("mask", "c/0/0/0"), ("probabilities", "c/0/0/0/0")):  # a chunk lost (or never written)
        (store / var / key).unlink()
    import zarr

    for var in ("mask", "probabilities"):  # as a killed run leaves them
        zarr.open_array(str(store / var), mode="r+").attrs["geoarray_complete"] = False
    ds = geoarray.open_cube(store)
    assert ds["mask"].dtype == np.uint8  # the fill value is not a CF _FillValue: no float/NaN decoding
    assert (ds["mask"].values[0, :64, :64] == 255).all()  # read as class 0 before
    assert np.isnan(ds.probabilities.values[0, :, :64, :64]).all()
    assert partial_outputs(ds) == ["mask", "probabilities"]
    geoarray.predict(ds, ckpt, store=store)  # the next run finishes it
    done = geoarray.open_cube(store)
    assert partial_outputs(done) == [] and (done["mask"].values[0, :64, :64] != 255).any()


def _bf16_here():
    """bf16 runs on every AVX-512 CPU; without AVX512-BF16/AMX it is emulated, and predict warns (an error in tests)."""
    import contextlib

    from geoarray._devices import native_bf16
    from geoarray.errors import GeoArrayWarning

    return contextlib.nullcontext() if native_bf16() else pytest.warns(GeoArrayWarning, match="emulates bf16")


def test_bf16_blockwise_equals_bf16_whole_image(gained):
    """Blockwise bf16 gives whole-image bf16, and differs from float32 only by bf16 rounding.

    Tolerance (relative to the output's scale): the triangle inequality bounds |blocks - whole| in bf16 by
    |bf16 - f32| (whole) + |f32 blocks - f32 whole| + |bf16 - f32| (blocks). Every block sees the same input
    window as whole-image inference (halo >= receptive field, stride-aligned), so only the float32 accumulation
    order inside a convolution can differ (oneDNN picks its kernels per tensor size: 4e-7 here in float32);
    under autocast each layer rounds its output to bf16 (8 mantissa bits), where such a difference flips a
    rounding at most by one bf16 step (2**-8 of the value), so the bound is 2 x the bf16-vs-f32 error (at most
    2.5e-2 with this deliberately sensitive model, gain 3; 1.6e-2 measured). Measured on this CPU (oneDNN's
    emulated bf16, Ice Lake): 0, bit-identical, which is asserted here; on other CPUs, the bound.
    """
    c = synthetic_cube(size=(250, 211), n_times=1, seed=2)
    ckpt = gained("unet", 3.0, width=4)
    meta = read_metadata(ckpt)
    chunk = _smallest_chunk(ckpt)
    whole_cube, many_cube = (
        c.chunk({"time": 1, "y": -1, "x": -1}),
        c.chunk({"time": 1, "y": chunk, "x": chunk}),
    )
    f32 = geoarray.predict(whole_cube, ckpt).features.values
    with _bf16_here():
        whole = geoarray.predict(whole_cube, ckpt, precision="bf16").features
        assert whole.attrs["precision"] == "bf16"
        whole = whole.values
        many = geoarray.predict(many_cube, ckpt, precision="bf16").features.values
        with pytest.warns(GeoArrayWarning, match="seams can show"):
            short = geoarray.predict(many_cube, ckpt, precision="bf16", halo=meta["halo"] - meta["stride"])
        short = short.features.values
    scale = float(np.nanmax(np.abs(f32)))
    err = _max_rel(f32, whole, scale)
    assert 1e-4 < err < 2.5e-2  # autocast is on: bf16 differs from f32, by bf16 rounding only
    assert _max_rel(whole, many, scale) <= 2 * err + 1e-6  # the bound, on any CPU or GPU
    from geoarray._devices import native_bf16

    if not native_bf16():  # oneDNN's emulated bf16 (this machine): measured bit-identical
        np.testing.assert_array_equal(whole, many)
    assert _max_rel(whole, short, scale) > 1e-3  # while a halo one stride short is visibly wrong


def test_precision_is_checked_and_recorded(tmp_path, cube):
    ckpt = make_checkpoint(tmp_path / "m.safetensors", num_classes=5, classes=CLASSES, width=4, depth=3)
    with pytest.raises(PredictError, match=r"precision='64'; expected '32', 'bf16' or '16'"):
        geoarray.predict(cube, ckpt, precision="64")
    if not torch.cuda.is_available():
        with pytest.raises(
            PredictError, match=r"precision='16' \(float16 autocast\) needs a CUDA GPU.*'bf16'"
        ):
            geoarray.predict(cube, ckpt, precision="16")
    out = geoarray.predict(cube, ckpt)
    assert out.mask.attrs["precision"] == out.probabilities.attrs["precision"] == "32"


def test_a_resume_in_another_precision_is_refused(tmp_path, cube):
    ckpt = make_checkpoint(tmp_path / "m.safetensors", num_classes=5, classes=CLASSES, width=4, depth=3)
    store = tmp_path / "c.zarr"
    geoarray.write_cube(cube, store, chunk=64)
    geoarray.predict(geoarray.open_cube(store), ckpt, store=store)
    import zarr

    for var in ("mask", "probabilities"):  # a run cut short: flagged partial
        zarr.open_array(str(store / var), mode="r+").attrs["geoarray_complete"] = False
    with (
        _bf16_here(),
        pytest.raises(StoreExistsError, match=r"made with precision='32'; this run asks for 'bf16'"),
    ):
        geoarray.predict(geoarray.open_cube(store), ckpt, store=store, precision="bf16")


def test_cli_predict_precision(tmp_path, cube):
    from typer.testing import CliRunner

    from geoarray.cli import app

    ckpt = make_checkpoint(tmp_path / "m.safetensors", num_classes=5, classes=CLASSES, width=4, depth=3)
    store = tmp_path / "c.zarr"
    geoarray.write_cube(cube.isel(time=[0]), store, chunk=64)
    with _bf16_here():
        r = CliRunner().invoke(app, ["predict", str(store), "--ckpt", str(ckpt), "--precision", "bf16"])
    assert r.exit_code == 0, r.output
    out = geoarray.open_cube(store)
    assert out.mask.attrs["precision"] == "bf16"
    ref = geoarray.predict(cube.isel(time=[0]), ckpt).mask.values
    assert (out.mask.values == ref).mean() > 0.99


@pytest.mark.slow
def test_bf16_mask_agrees_with_f32_on_a_trained_model(tmp_path):
    """A UNet trained to 0.92 accuracy on the known-truth cube: the bf16 mask equals the f32 mask on >= 99.9 %
    of pixels (measured 99.988 %, 6 of 51,200 pixels differ; about 95 s on a busy 2-core machine)."""
    c = synthetic_cube(size=160, n_times=2, seed=4)
    ckpt = geoarray.fit(
        c, task="segmentation", model="unet", model_kwargs={"width": 8, "depth": 2}, epochs=8, batch_size=8,
        lr=1e-2, chip_size=32, stride=16, out=tmp_path / "u.safetensors", seed=0, progress=False,
    )  # fmt: skip
    f32 = geoarray.predict(c, ckpt).mask.values
    with _bf16_here():
        bf16 = geoarray.predict(c, ckpt, precision="bf16").mask.values
    ok = c.labels.values != 255
    assert (f32 == c.labels.values)[ok].mean() > 0.85  # it is trained
    assert (f32 == bf16).mean() >= 0.999


def test_normalising_integers_skips_the_nan_scan_only_where_the_result_stays_finite():
    """uint16 input gives the float path's values and validity; a std that would overflow float32 still gets
    its non-finite values marked invalid."""
    from geoarray._preprocess import normalize_fill

    rng = np.random.default_rng(0)
    x = rng.integers(0, 65535, size=(2, 3, 8, 8), dtype=np.uint16)
    valid = rng.random((2, 8, 8)) > 0.2
    z, ok = normalize_fill(x, valid, [100.0, 200.0, 300.0], [50.0, 60.0, 70.0])
    zf, okf = normalize_fill(x.astype(np.float64), valid, [100.0, 200.0, 300.0], [50.0, 60.0, 70.0])
    np.testing.assert_array_equal(ok, okf)
    np.testing.assert_allclose(z, zf, rtol=1e-6)
    assert z.dtype == np.float32 and ok.shape == (2, 8, 8) and (z[:, :, ~valid[0]] == 0).sum() > 0
    z, ok = normalize_fill(x, None, [0.0] * 3, [1e-36] * 3)  # 65535 / 1e-36 overflows float32
    assert not ok.all() and np.isfinite(z).all()

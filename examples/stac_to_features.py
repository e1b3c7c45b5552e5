"""STAC to features: a saved STAC search over COGs in two UTM zones -> a trained UNet's mask and probabilities in Zarr.

The design card's third use: a script (or one command) from STAC items to per-pixel outputs. Here:

1. a local "STAC API search result saved to disk": an ItemCollection JSON of 4 dates of the Landsat-7 scene that
   ships with geoarray, one COG per band (asset keys ``blue`` ... ``swir22``, ``eo:bands`` names ``B1`` ... ``B7``
   as in Landsat STAC items); the last date is delivered in the neighbouring UTM zone (EPSG:31984), so it is
   reprojected onto the others' grid (EPSG:31985);
2. a small UNet trained on the sample cube (``geoarray.fit``), whose checkpoint names its bands ``B1`` ... ``B7``:
   they are found in the items by those names, and a missing one would be refused before any pixel is read;
3. ``geoarray.stac_features``: items -> lazy cube -> predict -> ``mask`` and ``probabilities`` in a Zarr store,
   resumable (run it again after a kill: it finishes the missing chunks). The same, as one command::

       geoarray stac-features OUT/search.json --ckpt OUT/unet.safetensors -o OUT/features.zarr \\
           --crs EPSG:31985 --resolution 28.5 --chunk 128 [--workers 2]

4. the first and the reprojected last date's masks scored against the sample labels; the last exported as a COG.

    .venv/bin/python examples/stac_to_features.py [--out DIR] [--quick] [--workers N]
"""

from __future__ import annotations

import argparse
import datetime as dt
import shutil
import time
from pathlib import Path

import numpy as np

import geoarray
from geoarray.datasets import sample_cube

COMMON = {"B1": "blue", "B2": "green", "B3": "red", "B4": "nir", "B5": "swir16", "B7": "swir22"}


def make_search(out: Path) -> Path:
    """The sample cube's dates as STAC items over single-band COGs; the last date in UTM zone 24S."""
    import pystac
    import rasterio
    from rasterio.warp import Resampling, calculate_default_transform, reproject, transform_bounds

    cube = sample_cube()
    src_crs, src_tr = "EPSG:31985", cube.rio.transform()
    ny, nx = cube.sizes["y"], cube.sizes["x"]
    bounds = cube.rio.bounds()
    (out / "cogs").mkdir(parents=True, exist_ok=True)
    items = []
    for t, when in enumerate(cube["time"].values):
        img = cube.imagery.isel(time=t).values  # (band, y, x) uint8
        crs, tr, data = src_crs, src_tr, img
        if t == len(cube["time"]) - 1:  # delivered in the neighbouring zone
            crs = "EPSG:31984"
            tr, w, h = calculate_default_transform(src_crs, crs, nx, ny, *bounds, resolution=28.5)
            data = np.zeros((img.shape[0], h, w), np.uint8)
            reproject(img, data, src_transform=src_tr, src_crs=src_crs, dst_transform=tr, dst_crs=crs,
                      resampling=Resampling.nearest, src_nodata=0, dst_nodata=0)  # fmt: skip
        h, w = data.shape[1:]
        b = transform_bounds(crs, "EPSG:4326", tr.c, tr.f + h * tr.e, tr.c + w * tr.a, tr.f)
        day = np.datetime_as_string(when, unit="D")
        item = pystac.Item(
            id=f"LE07_{day}",
            geometry={"type": "Polygon", "coordinates": [[[b[0], b[1]], [b[2], b[1]], [b[2], b[3]], [b[0], b[3]], [b[0], b[1]]]]},
            bbox=list(b),
            datetime=dt.datetime.fromisoformat(day).replace(hour=12, tzinfo=dt.UTC),
            properties={"proj:code": crs, "proj:shape": [h, w], "proj:transform": list(tr)[:6], "platform": "landsat-7"},
            stac_extensions=[
                "https://stac-extensions.github.io/projection/v2.0.0/schema.json",
                "https://stac-extensions.github.io/eo/v1.1.0/schema.json",
                "https://stac-extensions.github.io/raster/v1.1.0/schema.json",
            ],
        )  # fmt: skip
        for k, name in enumerate(map(str, cube["band"].values)):
            f = out / "cogs" / f"{item.id}_{name}.tif"
            profile = dict(driver="COG", height=h, width=w, count=1, dtype="uint8", crs=crs, transform=tr, nodata=0)
            with rasterio.open(f, "w", **profile) as dst:
                dst.write(data[k][None])
            item.add_asset(
                COMMON[name],
                pystac.Asset(
                    href=str(f.resolve()), media_type=pystac.MediaType.COG, roles=["data"],  # not relative to the cwd
                    extra_fields={
                        "eo:bands": [{"name": name, "common_name": COMMON[name]}],
                        "raster:bands": [{"data_type": "uint8", "nodata": 0}],
                    },
                ),
            )  # fmt: skip
        items.append(item)
    path = out / "search.json"
    pystac.ItemCollection(items).save_object(str(path))
    return path


def main(argv: list[str] | None = None) -> dict[str, float]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("stac-features-out"))
    ap.add_argument("--quick", action="store_true", help="train 3 epochs instead of 15 (a smoke run)")
    ap.add_argument("--workers", type=int, default=None, help="run predict on a local Dask cluster of N workers")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    if args.out.exists() and not args.out.is_dir():
        ap.error(f"--out {args.out} is a file; expected a folder for the example's outputs")
    args.out.mkdir(parents=True, exist_ok=True)

    # 1. the saved search
    search = make_search(args.out)
    print(f"1/4 STAC search saved to {search} (4 dates, 6 COGs each; the last in EPSG:31984)")

    # 2. a small UNet trained on the sample cube
    ckpt = geoarray.fit(
        sample_cube(),
        task="segmentation",
        model="unet",
        model_kwargs={"width": 16, "depth": 3},
        chip_size=64,
        stride=32,
        epochs=3 if args.quick else 15,
        batch_size=16,
        lr=3e-3,
        warmup_epochs=0.5,
        class_weights="balanced",
        out=args.out / "unet.safetensors",
        progress=False,
    )
    print(f"2/4 trained {ckpt} on bands {geoarray.checkpoint.read_metadata(ckpt)['input']['bands']}")

    # 3. items -> cube -> predict -> Zarr
    store = args.out / "features.zarr"
    if store.exists():
        shutil.rmtree(store)
    t1 = time.perf_counter()
    ds = geoarray.stac_features(
        search, ckpt, store, crs="EPSG:31985", resolution=28.5, chunk=128, workers=args.workers, progress=True
    )
    secs = time.perf_counter() - t1
    print(f"3/4 wrote {sorted(map(str, ds.data_vars))} {dict(ds.sizes)} {ds.rio.crs} to {store} in {secs:.1f} s")

    # 4. score the first date against the sample labels, export the reprojected date. The output grid is snapped
    # to multiples of 28.5 m (odc-stac's default anchor), half a pixel off the scene's own: compare each label
    # pixel with the nearest output pixel.
    truth = sample_cube().labels
    acc = []
    for t in (0, -1):
        labels = truth.isel(time=t)
        mask = ds["mask"].isel(time=t).sel(y=labels.y, x=labels.x, method="nearest", tolerance=28.5)
        ok = (labels.values != 255) & (mask.values != 255)
        acc.append(float((mask.values == labels.values)[ok].mean()))
    geoarray.export_geotiff(ds["mask"].isel(time=-1), args.out / "mask_last_date.tif")
    print(
        f"4/4 accuracy against the sample labels: first date {acc[0]:.3f}, last date (reprojected from zone 24S) "
        f"{acc[1]:.3f} -> {args.out / 'mask_last_date.tif'} ({time.perf_counter() - t0:.0f} s in all)"
    )
    return {"accuracy_first": acc[0], "accuracy_last": acc[1], "seconds": secs}


if __name__ == "__main__":
    main()

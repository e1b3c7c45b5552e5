"""Seed 003 (slumps): a UNet over one GeoTIFF + its mask, outputs back as GeoTIFFs and probability arrays.

The seed's pipeline was: ``rio clip --like`` the image to the mask, cut NPZ tiles, train a UNet, then predict
every image to a GeoTIFF plus a probabilities array. With geoarray:

1. ``from_geotiff`` + ``read_labels`` (the ``rio clip --like`` step, in code: the mask is clipped and warped
   onto the image grid);
2. ``write_cube`` to Zarr; ``fit`` a UNet on chips with a spatial-block validation split (no NPZ tiles);
3. ``predict(store=...)`` writes ``mask`` and ``probabilities`` into the same store, seamlessly;
4. ``export_geotiff`` writes the mask and the probabilities as COGs with the image's georeferencing.

By default it runs on the Landsat-7 scene that ships with geoarray and a mask derived from it
(water / vegetation / built, see ``geoarray.datasets.sample_cube``). Bring your own with
``--image scene.tif --mask labels.tif --classes background,slump``.

    .venv/bin/python examples/seed003_geotiff_unet.py [--image I.tif --mask M.tif] [--out DIR] [--epochs N]
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

import geoarray
from geoarray.chips import plan_chips
from geoarray.datasets import sample_cube, sample_path
from geoarray.metrics import confusion_matrix, scores


def default_inputs(out: Path) -> tuple[Path, Path, list[str]]:
    """The embedded Landsat-7 scene and a label raster derived from it, written as a GeoTIFF."""
    labels = sample_cube(n_times=1).labels.isel(time=0)
    mask = geoarray.export_geotiff(labels, out / "mask.tif", nodata=255)
    return Path(sample_path()), mask, list(labels.attrs["classes"])


def main(argv: list[str] | None = None) -> dict[str, float]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--image", type=Path, help="multi-band GeoTIFF (default: the embedded Landsat-7 scene)")
    ap.add_argument("--mask", type=Path, help="single-band integer label GeoTIFF")
    ap.add_argument("--classes", help="comma-separated class names, in label-id order")
    ap.add_argument("--date", default="2000-01-15", help="acquisition date of the image")
    ap.add_argument("--out", type=Path, default=Path("seed003-out"))
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--chip-size", type=int, default=64)
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    if args.out.exists() and not args.out.is_dir():
        ap.error(f"--out {args.out} is a file; expected a folder for the example's outputs")
    args.out.mkdir(parents=True, exist_ok=True)

    if args.image is None:
        image, mask, classes = default_inputs(args.out)
    else:
        if args.mask is None or args.classes is None:
            ap.error("--image needs --mask and --classes")
        image, mask, classes = args.image, args.mask, args.classes.split(",")

    # 1. cube + labels on its grid
    cube = geoarray.from_geotiff([image], times=[args.date])
    cube["labels"] = geoarray.read_labels(mask, cube, classes=classes, nodata=255)
    store = args.out / "scene.zarr"
    geoarray.write_cube(cube, store, mode="w")
    cube = geoarray.open_cube(store)
    print(f"cube {dict(cube.imagery.sizes)} bands {list(map(str, cube.band.values))} -> {store}")

    # 2. train (the seed's UNet; BatchNorm, dropout in the encoder; logits + softmax cross-entropy)
    ckpt = geoarray.fit(
        cube,
        task="segmentation",
        model="unet",
        model_kwargs={"depth": 3, "width": 16},
        chip_size=args.chip_size,
        stride=args.chip_size // 2,
        epochs=args.epochs,
        batch_size=16,
        lr=3e-3,
        class_weights="balanced",
        seed=0,
        out=str(args.out / "unet.safetensors"),
        log_dir=str(args.out / "log"),
    )

    # 3. predict back into the store (replacing the outputs of an earlier run of this example)
    for v in ("mask", "probabilities", "class"):
        shutil.rmtree(store / v, ignore_errors=True)
    res = geoarray.predict(cube, ckpt, store=store)

    # 4. GeoTIFF outputs, as the seed's predict.py wrote them
    geoarray.export_geotiff(res["mask"].isel(time=0), args.out / "mask_pred.tif")
    geoarray.export_geotiff(res["probabilities"].isel(time=0), args.out / "probabilities.tif")

    held = plan_chips(cube, chip_size=args.chip_size, stride=args.chip_size // 2, val_fraction=0.2, seed=0)
    held_mask = held.val_mask((cube.sizes["y"], cube.sizes["x"]))
    truth = res.labels.where(res.valid, 255) if "valid" in res else res.labels
    s = scores(
        confusion_matrix(res["mask"].where(held_mask, 255), truth, len(classes), ignore_index=255), classes
    )
    print(f"held-out tiles: mean IoU {s['mean_iou']:.3f}, accuracy {s['accuracy']:.3f}")
    print(
        f"wrote {args.out / 'mask_pred.tif'} and {args.out / 'probabilities.tif'} in {time.perf_counter() - t0:.1f} s"
    )
    return {"mean_iou": float(s["mean_iou"]), "accuracy": float(s["accuracy"])}


if __name__ == "__main__":
    main()

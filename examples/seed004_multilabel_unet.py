"""Seed 004 (Dstl): a 20-band UNet / Res-UNet with one sigmoid channel per class and overlapping classes.

The seed trained a 5-level UNet (BatchNorm, dropout 0.2 in the encoder) on 224 x 224 patches of 20 bands,
with 10 output channels, sigmoid + BCE or BCE+Dice, and drew an overlay plus one binary mask per class. It
applied the sigmoid twice (in the model and in the loss); here the model outputs logits and the sigmoid
lives in the loss and in predict.

This example builds a 20-band synthetic cube with known truth (``geoarray.datasets.synthetic_cube``) whose
labels overlap like the Dstl classes do (a building is also a man-made structure), trains ``unet`` (or
``--model res_unet``: the ResNet-50 encoder with a residual stem) with BCE+Dice, predicts ``mask(time,
class, y, x)`` back into the Zarr store, and prints per-class IoU and draws the per-class masks.

    .venv/bin/python examples/seed004_multilabel_unet.py [--model unet|res_unet] [--out DIR] [--epochs N]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import xarray as xr

import geoarray
from geoarray import plot
from geoarray.datasets import synthetic_cube

BANDS = [f"b{i:02d}" for i in range(20)]
SCENE = ["water", "trees", "crops", "buildings", "new_building"]  # one land-cover class per pixel
LABELS = ["water", "trees", "crops", "buildings", "manmade"]  # manmade = buildings + new buildings: overlaps


def make_cube(size: int, seed: int) -> xr.Dataset:
    """A 20-band, one-date cube with multi-label ``labels(class, y, x)`` (0/1, 255 where unknown)."""
    c = synthetic_cube(size=size, n_times=1, bands=BANDS, classes=SCENE, seed=seed, cloud_fraction=0.0)
    lab = c.labels.isel(time=0).values
    masks = np.stack(
        [lab == 0, lab == 1, lab == 2, lab == 3, (lab == 3) | (lab == 4)],
    ).astype("uint8")
    masks[:, lab == 255] = 255
    c["labels"] = xr.DataArray(
        masks, dims=("class", "y", "x"), coords={"class": LABELS}, attrs={"classes": LABELS, "nodata": 255}
    )
    return c


def main(argv: list[str] | None = None) -> dict[str, float]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", choices=["unet", "res_unet"], default="unet")
    ap.add_argument("--size", type=int, default=256, help="scene height and width in pixels")
    ap.add_argument("--chip-size", type=int, default=64, help="training patch size (the seed used 224)")
    ap.add_argument("--epochs", type=int, default=25)
    ap.add_argument("--width", type=int, default=16, help="channels of the first level")
    ap.add_argument("--out", type=Path, default=Path("seed004-out"))
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    if args.out.exists() and not args.out.is_dir():
        ap.error(f"--out {args.out} is a file; expected a folder for the example's outputs")
    args.out.mkdir(parents=True, exist_ok=True)

    store = args.out / "dstl.zarr"
    geoarray.write_cube(make_cube(args.size, seed=4), store, mode="w")
    cube = geoarray.open_cube(store)
    print(f"cube {dict(cube.imagery.sizes)}, labels {dict(cube.labels.sizes)} -> {store}")

    model_kwargs = (
        {"depth": 5, "width": args.width}
        if args.model == "unet"
        else {"encoder": "resnet50", "width": args.width}
    )
    ckpt = geoarray.fit(
        cube,
        task="segmentation",
        loss="bce_dice",  # sigmoid per class, applied once: inside the loss
        model=args.model,
        model_kwargs=model_kwargs,
        chip_size=args.chip_size,
        stride=args.chip_size // 2,
        epochs=args.epochs,
        batch_size=16,
        lr=3e-3,
        seed=0,
        out=str(args.out / f"{args.model}.safetensors"),
        log_dir=str(args.out / "log"),
    )
    res = geoarray.predict(cube, ckpt, store=store, overwrite=True)
    mask = res["mask"].isel(time=0).values  # (class, y, x), 0/1, 255 = invalid
    truth = res["labels"].values
    ious = {}
    for k, name in enumerate(LABELS):
        known = (truth[k] != 255) & (mask[k] != 255)
        p, t = mask[k][known] == 1, truth[k][known] == 1
        ious[name] = float((p & t).sum() / max(1, (p | t).sum()))
    print("IoU per class: " + ", ".join(f"{k} {v:.3f}" for k, v in ious.items()))
    print(f"mean IoU {np.mean(list(ious.values())):.3f}")
    png = plot.class_masks(mask, LABELS, args.out / "class_masks.png")
    print(f"wrote {png} in {time.perf_counter() - t0:.1f} s")
    return ious


if __name__ == "__main__":
    main()

"""Seed 001 (BTFM): Barlow Twins on pixel time series, features into the cube, then a land-cover classifier.

The seed trained a Barlow Twins foundation model on Sentinel-2 pixel time series (bands, cloud masks and days
of year per tile), drew false-colour maps of the representations, the cross-correlation matrix and the
effective rank, and fine-tuned a classification head for land cover (with a focal-loss option). With
geoarray:

1. a Zarr cube with ``imagery(time, band, y, x)``, a ``valid`` cloud mask and ``labels(y, x)``;
2. ``fit(task="barlow_twins")`` on a ``pixel_mlp`` over the year's dates: two views of each pixel made of
   random subsets of its *valid* dates plus band noise; the collapse watch (embedding std, effective rank,
   a kNN probe on held-out tiles) runs every epoch, and the log holds C per epoch;
3. ``predict(store=)`` writes ``features(feature, y, x)`` into the same store;
4. ``probe`` scores the features with linear and kNN probes beside a random-init encoder and the raw series;
5. a per-pixel classifier is fine-tuned from the Barlow Twins checkpoint on the west half's labels
   (focal loss by default), and its class map is scored on the east half, which no step has seen labelled.

The data are **synthetic** (no registry package ships a pixel time series): ``geoarray.datasets.phenology_cube``,
a year of 24 Sentinel-2-like dates over eight land-cover classes that differ by phenology (water, urban,
evergreen and deciduous forest, grassland, summer, winter and double crops), with per-parcel and per-pixel
variation of green-up date, season length, vigour, soil and moisture, and clouds on every date but a few
(about 37 % of the observations are invalid).

    .venv/bin/python examples/seed001_barlow_twins.py [--quick] [--out DIR] [--loss focal|ce]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

import geoarray
from geoarray import plot
from geoarray.datasets import phenology_cube

N_TIMES = 24


def main(argv: list[str] | None = None) -> dict[str, float]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("seed001-out"))
    ap.add_argument("--quick", action="store_true", help="a small cube and few epochs (under a minute)")
    ap.add_argument("--loss", choices=["focal", "ce"], default="focal", help="the classifier's loss")
    ap.add_argument("--label-fraction", type=float, default=1.0, help="of the west half's labelled tiles")
    args = ap.parse_args(argv)
    size, bt_epochs, ft_epochs = (64, 6, 6) if args.quick else (192, 30, 15)
    t0 = time.perf_counter()
    args.out.mkdir(parents=True, exist_ok=True)

    # 1. the cube (labels are kept for the probe and the classifier; Barlow Twins never reads them)
    full = phenology_cube(size=size, n_times=N_TIMES, seed=1)
    store = args.out / "pheno.zarr"
    geoarray.write_cube(full, store, mode="w", chunk=32 if args.quick else 64)
    cube = geoarray.open_cube(store)
    classes = list(cube.labels.attrs["classes"])
    print(
        f"cube {dict(cube.imagery.sizes)}, {len(classes)} classes, "
        f"{1 - float(cube.valid.mean()):.0%} of observations cloudy -> {store}"
    )

    # 2. Barlow Twins (lambd: the default, 10 / projector_dim)
    bt = geoarray.fit(
        cube,
        task="barlow_twins",
        model="pixel_mlp",
        model_kwargs={"num_timesteps": N_TIMES, "hidden": 128, "out_channels": 32},
        task_kwargs={"view_dates": 8},
        chip_size=16 if args.quick else 32,
        pixels_per_chip=256,
        batch_size=256,
        epochs=bt_epochs,
        lr=3e-3,
        seed=0,
        progress=False,
        out=str(args.out / "bt.safetensors"),
        log_dir=str(args.out / "bt_log"),
    )

    # 3. features into the store (a whole-series model: one dask chunk along time)
    series = geoarray.open_cube(store).chunk(time=-1)
    feats = geoarray.predict(series, bt, store=store, overwrite=True)["features"]
    rank = geoarray.metrics.effective_rank(feats.values.reshape(feats.sizes["feature"], -1).T)
    print(f"features {dict(feats.sizes)}: effective rank {rank:.1f} of {feats.sizes['feature']}")

    # 4. the probe table, with the baselines it has to beat
    table = geoarray.probe(cube, bt, label_fractions=(0.01, 0.1, 1.0), tile_size=16, seed=0)
    print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    top1 = table.set_index(["encoder", "protocol", "label_fraction"])["top1"]

    # 5. fine-tune a classifier from the Barlow Twins encoder on the west half, score the east half
    west = cube.x < cube.x[size // 2]
    train = cube.assign(labels=cube.labels.where(west, 255).astype("uint8"))
    train["labels"].attrs = dict(cube.labels.attrs)
    clf = geoarray.fit(
        train,
        task="finetune",
        init=bt,
        label_fraction=args.label_fraction,
        loss=args.loss,
        model="pixel_mlp",
        model_kwargs={"num_timesteps": N_TIMES, "hidden": 128, "out_channels": 32},
        chip_size=16 if args.quick else 32,
        pixels_per_chip=256,
        batch_size=256,
        epochs=ft_epochs,
        lr=3e-3,
        seed=0,
        progress=False,
        out=str(args.out / "classifier.safetensors"),
        log_dir=str(args.out / "clf_log"),
    )
    res = geoarray.predict(series, clf, store=store, overwrite=True)
    pred, truth = res["mask"].values, cube.labels.values
    east = ~west.values[None, :].repeat(size, 0)
    acc = float((pred[east] == truth[east]).mean())
    print(f"classifier ({args.loss} loss): east-half (held-out) accuracy {acc:.3f}")

    # 6. pictures: false-colour features, class map, C, effective rank per epoch
    rgb = plot.pca_rgb(feats.values)
    plot.overlay(
        rgb,
        {"truth": truth, "prediction (east half held out)": pred},
        classes,
        args.out / "features_and_classes.png",
        title="Barlow Twins features (first 3 PCA components as RGB) and land-cover maps",
    )
    plot.cross_correlation(args.out / "bt_log", args.out / "cross_correlation.png")
    plot.effective_rank(args.out / "bt_log", args.out / "effective_rank.png", dim=feats.sizes["feature"])
    print(f"wrote PNGs to {args.out} in {time.perf_counter() - t0:.1f} s")
    return {
        "effective_rank": rank,
        "ssl_linear": float(top1["ssl", "linear", 1.0]),
        "random_init_linear": float(top1["random_init", "linear", 1.0]),
        "raw_linear": float(top1["raw", "linear", 1.0]),
        "ssl_knn": float(top1["ssl", "knn", 1.0]),
        "random_init_knn": float(top1["random_init", "knn", 1.0]),
        "raw_knn": float(top1["raw", "knn", 1.0]),
        "accuracy": acc,
    }


if __name__ == "__main__":
    main()

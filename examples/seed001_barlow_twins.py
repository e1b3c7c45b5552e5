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
5. a per-pixel classifier is fine-tuned from the Barlow Twins checkpoint (``task="finetune"``, focal loss
   by default, ``--label-fraction`` of the labelled training tiles), and its class map is scored on the tiles
   fit held out, which no step has seen labelled.

The data are **synthetic** (no registry package ships a pixel time series): ``geoarray.datasets.phenology_cube``,
a year of 24 Sentinel-2-like dates over eight land-cover classes that differ by phenology (water, urban,
evergreen and deciduous forest, grassland, summer, winter and double crops), with per-parcel and per-pixel
variation of green-up date, season length, vigour, soil and moisture, and clouds on most dates (about a
third of the observations are invalid).

    .venv/bin/python examples/seed001_barlow_twins.py [--quick] [--out DIR] [--loss focal|ce]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

import geoarray
from geoarray import plot
from geoarray.chips import plan_chips
from geoarray.datasets import phenology_cube

N_TIMES = 24


def main(argv: list[str] | None = None) -> dict[str, float]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("seed001-out"))
    ap.add_argument("--quick", action="store_true", help="a small cube and few epochs (under a minute)")
    ap.add_argument("--loss", choices=["focal", "ce"], default="focal", help="the classifier's loss")
    ap.add_argument("--label-fraction", type=float, default=1.0, help="of the west half's labelled tiles")
    args = ap.parse_args(argv)
    size, bt_epochs, ft_epochs = (96, 6, 8) if args.quick else (192, 30, 20)
    t0 = time.perf_counter()
    if args.out.exists() and not args.out.is_dir():
        ap.error(f"--out {args.out} is a file; expected a folder for the example's outputs")
    args.out.mkdir(parents=True, exist_ok=True)

    # 1. the cube (labels are kept for the probe and the classifier; Barlow Twins never reads them)
    full = phenology_cube(size=size, n_times=N_TIMES, seed=0)
    store = args.out / "pheno.zarr"
    geoarray.write_cube(full, store, mode="w", chunk=48)
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
        chip_size=24 if args.quick else 48,
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
    table = geoarray.probe(cube, bt, label_fractions=(0.01, 0.1, 1.0), tile_size=24, seed=0)
    print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    top1 = table.set_index(["encoder", "protocol", "label_fraction"])["top1"]

    # 5. fine-tune a classifier from the Barlow Twins encoder (the encoder's model, bands and statistics come
    #    from init); fit holds out a spatial split of tiles, and the class map is scored there
    chip = 8 if args.quick else 16
    # blocks of 24 px, which fit's spatial split uses as tiles when there are 8 or more: on the quick 96² cube
    # that leaves training tiles of every class around the held-out ones (48 px blocks would leave 3)
    small = cube.chunk(y=24, x=24)
    clf = geoarray.fit(
        small,
        task="finetune",
        init=bt,
        label_fraction=args.label_fraction,
        loss=args.loss,
        chip_size=chip,
        val_fraction=0.3,
        pixels_per_chip=chip * chip,
        batch_size=64,
        epochs=ft_epochs,
        lr=1e-2,  # the new class head; the pretrained backbone moves 100x slower
        task_kwargs={"backbone_lr": 1e-4},
        seed=0,
        progress=False,
        out=str(args.out / "classifier.safetensors"),
        log_dir=str(args.out / "clf_log"),
    )
    res = geoarray.predict(series, clf, store=store, overwrite=True)
    held = plan_chips(small, chip_size=chip, times="all", val_fraction=0.3, seed=0)
    held_mask = held.val_mask((size, size))
    pred, truth = res["mask"].values, cube.labels.values
    acc = float((pred[held_mask] == truth[held_mask]).mean())
    print(f"classifier ({args.loss} loss): accuracy {acc:.3f} on the held-out tiles ({held_mask.mean():.0%})")

    # 6. pictures: false-colour features, class map, C, effective rank per epoch
    rgb = plot.pca_rgb(feats.values)
    shown = np.where(held_mask, pred, 255)
    plot.overlay(
        rgb,
        {"truth": truth, "fine-tuned classifier (held-out tiles)": shown},
        classes,
        args.out / "features_and_classes.png",
        image_title="Barlow Twins features (PCA 1-3 as RGB)",
        alpha=1.0,
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

"""Seed 000 (WATCH invariants): multi-head pretext features on a multi-date cube, then an attention UNet.

The seed trained one multi-headed model per sensor on three pretext tasks (pixel-level arrow of time, temporal
association of aligned patches, association of augmented images), wrote 64-d backbone features and 8-d
features per task for every image back into the dataset, and segmented with a UNet whose first levels attend
across dates with a date encoding, using the features as extra channels.

Here, on the public API:

1. ``geoarray.fit(task="invariants")`` on a UNet backbone, heads ``arrow_of_time``, ``temporal_association``
   and ``augmentation_association`` (64-d features, 8-d per head, 8 PCA components fitted at the end);
2. ``geoarray.predict(..., store=)`` writes ``features(time, feature, y, x)``, ``features_<head>``,
   ``features_pca`` and the ``arrow_of_time(time, y, x)`` heatmap into the Zarr cube;
3. the arrow-of-time accuracy on a held-out scene: on every pixel that changed between two dates, the
   heatmap must say "the previous date is earlier" on the dates in order and "later" on the dates reversed;
4. ``attention_unet`` (temporal attention, date encoding) segments land cover on the raw bands, and on the
   raw bands plus the 64-d features (the seed's concatenation); both are scored (IoU) on the held-out scene.

The data is synthetic (``geoarray.datasets.change_cube``): no registry package ships a multi-date scene with
land-cover change and per-date truth. It has the structure the seed needs: vegetation is built over
(vegetation -> construction -> urban) and never the reverse, so the order of two dates is readable from the
pixels that changed, plus water that never changes and a seasonal cycle. PNGs: ``features.png`` (features in
false colour, PCA to RGB) and ``arrow_of_time.png`` (two dates, the heatmap, and the true change).

    .venv/bin/python examples/seed000_invariants.py [--quick] [--out DIR]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

import geoarray
from geoarray.datasets import change_cube
from geoarray.metrics import confusion_matrix, scores

HEADS = ["arrow_of_time", "temporal_association", "augmentation_association"]


def _sizes(quick: bool) -> dict[str, Any]:
    if quick:
        return {"size": 64, "n_times": 4, "pretext_epochs": 10, "seg_epochs": 10, "chip": 16, "depth": 2}
    return {"size": 160, "n_times": 6, "pretext_epochs": 20, "seg_epochs": 25, "chip": 32, "depth": 3}


def arrow_accuracy(scene: xr.Dataset, ckpt: Path) -> dict[str, float]:
    """Share of changed pixels whose order the heatmap gets right, on the dates in order and reversed."""
    lab = scene.labels.values
    changed = lab[1:] != lab[:-1]
    fwd = geoarray.predict(scene, ckpt, outputs=["arrow_of_time"]).arrow_of_time.values[1:]
    rev = scene.copy()
    rev["imagery"] = (scene.imagery.dims, scene.imagery.values[::-1].copy())
    back = geoarray.predict(rev, ckpt, outputs=["arrow_of_time"]).arrow_of_time.values[1:][::-1]
    return {
        "forward": float((fwd[changed] > 0.5).mean()),
        "reversed": float((back[changed] < 0.5).mean()),
        "accuracy": float(np.concatenate([fwd[changed] > 0.5, back[changed] < 0.5]).mean()),
        "unchanged_mean_p": float(np.nanmean(fwd[~changed])),
    }


def with_features(cube: xr.Dataset) -> xr.Dataset:
    """The raw bands plus the 64 feature channels as one imagery variable (the seed's concatenation)."""
    f = cube.features.rename(feature="band").assign_coords(band=[f"f{i:02d}" for i in range(cube.sizes["feature"])])
    both = xr.concat([cube.imagery.astype("float32"), f.astype("float32")], dim="band")
    out = xr.Dataset({"imagery": both, "labels": cube.labels}).assign_coords(spatial_ref=cube.spatial_ref)
    return out.chunk({"time": 1, "band": -1, "y": 64, "x": 64})


def segment(cube: xr.Dataset, held_out: xr.Dataset, out: Path, s: dict[str, Any]) -> float:
    ckpt = geoarray.fit(
        cube,
        task="segmentation",
        model="attention_unet",
        model_kwargs={
            "depth": s["depth"],
            "width": 8,
            "num_attention_layers": 1,
            "positional_encoding": "add",
            "date_encoding": "doy",
        },
        chip_size=s["chip"],
        stride=s["chip"] // 2,
        batch_size=8,
        epochs=s["seg_epochs"],
        lr=1e-2,
        val_fraction=0.0,
        seed=0,
        out=str(out),
        progress=False,
    )
    mask = geoarray.predict(held_out.chunk(time=-1), ckpt)["mask"].values
    truth = held_out.labels.values
    classes = list(held_out.labels.attrs["classes"])
    return float(scores(confusion_matrix(mask, truth, len(classes), ignore_index=255), classes)["mean_iou"])


def draw(scene: xr.Dataset, path_f: Path, path_a: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from geoarray.plot import false_color, pca_rgb

    t = scene.sizes["time"] - 1
    names = ["features", *(f"features_{h}" for h in HEADS), "features_pca"]
    fig, axes = plt.subplots(1, len(names) + 1, figsize=(3.2 * (len(names) + 1), 4.0))
    axes[0].imshow(false_color(scene.imagery.isel(time=t), bands=["nir", "red", "green"]))
    axes[0].set_title(f"bands (nir, red, green)\n{str(scene.time.values[t])[:10]}", fontsize=9)
    for ax, name in zip(axes[1:], names, strict=True):
        ax.imshow(pca_rgb(scene[name].isel(time=t).values))
        ax.set_title(f"{name}\n({scene[name].shape[1]}-d, PCA to RGB)", fontsize=9)
    for ax in axes:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path_f, dpi=110, bbox_inches="tight")
    plt.close(fig)

    lab = scene.labels.values
    changed = (lab[1:] != lab[:-1]).sum((1, 2))
    k = int(np.argmax(changed)) + 1  # the date pair with the most change
    fig, axes = plt.subplots(1, 4, figsize=(13, 4.2))
    for ax, i in zip(axes[:2], (k - 1, k), strict=True):
        ax.imshow(false_color(scene.imagery.isel(time=i), bands=["nir", "red", "green"]))
        ax.set_title(f"date {i}: {str(scene.time.values[i])[:10]}", fontsize=9)
    im = axes[2].imshow(scene.arrow_of_time.isel(time=k).values, vmin=0, vmax=1, cmap="RdBu_r")
    axes[2].set_title(
        f"arrow_of_time at date {k}: P(date {k - 1} was taken\nbefore date {k}); red: yes, blue: no, white: can't tell",
        fontsize=9,
    )
    fig.colorbar(im, ax=axes[2], fraction=0.046)
    axes[3].imshow(lab[k] != lab[k - 1], cmap="gray")
    axes[3].set_title(f"true change, date {k - 1} -> {k}\n(white: built over)", fontsize=9)
    for ax in axes:
        ax.axis("off")
    fig.suptitle(
        "built-over pixels are ordered by their change, vegetation also by its seasonal cycle; water, which never "
        "changes, gets no consistent answer",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(path_a, dpi=110, bbox_inches="tight")
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a 64² cube of 4 dates and 10 epochs per fit (what the tests run)")
    ap.add_argument("--out", type=Path, default=Path("seed000-out"))
    args = ap.parse_args(argv)
    s = _sizes(args.quick)
    t0 = time.perf_counter()
    if args.out.exists() and not args.out.is_dir():
        ap.error(f"--out {args.out} is a file; expected a folder for the example's outputs")
    args.out.mkdir(parents=True, exist_ok=True)

    store = args.out / "change.zarr"
    geoarray.write_cube(change_cube(size=s["size"], n_times=s["n_times"], seed=0), store, mode="w")
    cube = geoarray.open_cube(store)
    held = change_cube(size=s["size"], n_times=s["n_times"], seed=1)  # another scene, for every score
    print(f"cube {dict(cube.imagery.sizes)} -> {store}; held-out scene of the same size")

    pretext = geoarray.fit(
        cube,
        task="invariants",
        model="unet",
        model_kwargs={"depth": s["depth"], "width": 8, "dropout": 0.0},
        task_kwargs={"heads": HEADS, "feature_dim": 64, "head_dim": 8, "pca_dim": 8},
        chip_size=s["chip"],
        stride=s["chip"] // 2,
        batch_size=16,
        epochs=s["pretext_epochs"],
        lr=1e-2,
        val_fraction=0.0,
        seed=0,
        out=str(args.out / "invariants.safetensors"),
        progress=False,
    )
    t1 = time.perf_counter()
    cube = geoarray.predict(cube.chunk(time=-1), pretext, store=store)  # every output, into the cube
    print("written: " + ", ".join(f"{n}{tuple(cube[n].dims)}" for n in cube.data_vars if n not in ("imagery", "labels")))
    aot = arrow_accuracy(held, pretext)
    print(
        f"arrow of time on changed held-out pixels: accuracy {aot['accuracy']:.3f} (dates in order "
        f"{aot['forward']:.3f}, reversed {aot['reversed']:.3f}); unchanged pixels mean P {aot['unchanged_mean_p']:.2f}"
    )

    held_f = geoarray.predict(held.chunk(time=-1), pretext, outputs=["features"])
    iou_raw = segment(cube[["imagery", "labels"]], held, args.out / "seg_raw.safetensors", s)
    iou_feat = segment(with_features(cube), with_features(held_f), args.out / "seg_features.safetensors", s)
    print(f"attention UNet (date encoding) mean IoU on the held-out scene: raw bands {iou_raw:.3f}, "
          f"raw bands + 64-d features {iou_feat:.3f}")  # fmt: skip
    draw(cube.load(), args.out / "features.png", args.out / "arrow_of_time.png")
    took = time.perf_counter() - t0
    print(f"wrote {args.out / 'features.png'} and {args.out / 'arrow_of_time.png'} in {took:.1f} s "
          f"(pretext fit {t1 - t0:.1f} s)")  # fmt: skip
    return {"arrow_of_time": aot, "iou_raw": iou_raw, "iou_features": iou_feat, "seconds": took}


if __name__ == "__main__":
    main()

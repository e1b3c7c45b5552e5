"""Seed 002 (VICReg on SpaceNet-7): country classification of image patches, supervised vs self-supervised.

The seed cut each 1024 x 1024 SpaceNet-7 scene into 16 patches of 256 x 256, labelled every patch with the
country its scene lies in (from the scenes' GeoJSON), trained a supervised ResNet-18 on the labels, pretrained a
ResNet-18 with VICReg on the unlabelled patches, and evaluated the VICReg encoder with a linear layer on frozen
features and by fine-tuning on 1 % and 10 % of the labels (top-1 / top-5).

This example runs the same pipeline on geoarray's public API. SpaceNet-7 is not in any package registry, so the
scenes are **synthetic, with the structure the seed needs** (nothing here is real imagery):

- ``--countries`` countries (default 8; 6 with ``--quick``), each with ``--scenes`` scenes (default 3) of 4 x 4
  patches; the scenes are tiled into one cube (4 bands: blue, green, red, nir) on a UTM grid, over ``--dates``
  dates.
- A country is a way of building a city, the thing a patch classifier can learn: the block size and street
  width of its grid, how densely blocks are built up, how much vegetation there is and in what clumps, and a
  slight tint of its roofs. These survive flips and 90° rotations (the training augmentations); the grid's
  orientation does not, so every scene draws its own, with its own street offsets, vegetation and noise; every
  date its own season (vegetation greenness) and illumination.
- The country of each scene is a polygon in a GeoPackage (written with pyogrio): the chip labels come from that
  vector file, as the seed's came from its GeoJSON (``regions=``, ``region_property="country"``).

Steps: cube -> Zarr; supervised ``resnet18`` (``task="classification"``); VICReg pretraining (``task="vicreg"``,
no labels); ``task="linear_probe"`` (frozen encoder, 100 % of the labels) and ``task="finetune"`` at 1 % and
10 % (``label_fraction``, sampled by spatial tile); every classifier scored (top-1 / top-5) on the chips of the
same held-out spatial tiles; ``geoarray.probe`` (linear / kNN beside a random-init encoder and raw band
statistics); the VICReg chip features and the fine-tuned classes written into the Zarr cube as chip grids
(``predict_chips``, groups ``vicreg_features`` and ``chip_classes``); PNGs of the country map (truth vs
predicted per chip) and of the chip features in false colour.

    .venv/bin/python examples/seed002_vicreg.py [--quick] [--out DIR]

``--quick`` (6 countries, 32 px patches, short runs; about a minute on 2 cores) is what the tests run; without it
the patches are the seed's 256 x 256 (a long run on a CPU).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

import geoarray

BANDS = ["blue", "green", "red", "nir"]
COUNTRIES = ["Aurelia", "Borduria", "Carpania", "Dravonia", "Elbonia", "Florin", "Genovia", "Hesperia",
             "Ishkebar", "Jumbostan", "Kalmar", "Latveria"]  # fmt: skip
#: surface spectra (blue, green, red, nir) of the land covers every country is built from
ROAD = np.array([0.10, 0.11, 0.12, 0.14])
ROOF = np.array([0.22, 0.23, 0.25, 0.27])
TREE = np.array([0.03, 0.07, 0.04, 0.38])
SOIL = np.array([0.09, 0.13, 0.19, 0.27])
RES, X0, Y0, EPSG = 4.0, 500_000.0, 4_500_000.0, 32633
VAL_FRACTION, SEED = 0.25, 0


def _smooth_noise(rng: np.random.Generator, size: int, scale: float) -> np.ndarray:
    """White noise low-passed with a Gaussian of ``scale`` px (in the Fourier domain), standardised."""
    f = np.fft.fftfreq(size)
    g = np.exp(-2 * (np.pi * scale) ** 2 * (f[:, None] ** 2 + f[None, :] ** 2))
    z = np.fft.ifft2(np.fft.fft2(rng.normal(size=(size, size))) * g).real
    return (z - z.mean()) / (z.std() + 1e-9)


def country_styles(n: int, patch: int, rng: np.random.Generator) -> list[dict[str, Any]]:
    """How each country builds: block size, street width, built-up density, vegetation cover and clumps, roof tint."""
    blocks = rng.permutation(np.linspace(0.12, 0.45, n))  # block sizes spread over the countries
    return [
        {
            "block": float(patch * blocks[k]),
            "street": float(rng.uniform(0.1, 0.3)),
            "clump": float(rng.uniform(0.2, 0.8)),
            "density": float(rng.uniform(0.25, 0.9)),
            "trees": float(rng.uniform(0.1, 0.55)),
            "tint": rng.normal(0, 0.05, 4),
        }
        for k in range(n)
    ]


def render_scene(style: dict[str, Any], size: int, n_dates: int, rng: np.random.Generator) -> np.ndarray:
    """One scene ``(dates, 4, size, size)`` of reflectance in a country's style."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    a = rng.uniform(0, np.pi / 2)  # the grid's orientation: the scene's, not the country's
    u = xx * np.cos(a) + yy * np.sin(a) + rng.uniform(0, 100)
    v = -xx * np.sin(a) + yy * np.cos(a) + rng.uniform(0, 100)
    b = style["block"]
    road = (np.mod(u, b) < b * style["street"]) | (np.mod(v, b) < b * style["street"])
    block_id = np.floor(u / b) * 7919 + np.floor(v / b)
    built = (np.mod(np.sin(block_id * 12.9898 + rng.uniform(0, 1000)) * 43758.5453, 1.0)) < style["density"]
    trees_field = _smooth_noise(rng, size, b * style["clump"])
    trees = trees_field > np.quantile(trees_field, 1 - style["trees"])
    base = np.where(road[..., None], ROAD, np.where((built & ~trees)[..., None], ROOF + style["tint"], SOIL))
    out = np.empty((n_dates, 4, size, size), np.float32)
    for t in range(n_dates):
        green = 0.6 + 0.4 * np.sin(2 * np.pi * (t / max(1, n_dates) + rng.uniform(0, 1)))  # season
        veg = SOIL + (TREE - SOIL) * green
        img = np.where((trees & ~road)[..., None], veg, base) * rng.uniform(0.85, 1.15)  # illumination
        img = img + rng.normal(0, 0.015, img.shape)
        out[t] = np.moveaxis(img, -1, 0)
    return out


def make_cube(
    n_countries: int, scenes_per_country: int, patch: int, n_dates: int, seed: int
) -> tuple[xr.Dataset, np.ndarray, list[tuple[int, int, str]]]:
    """The cube, each scene's country id on a ``(rows, cols)`` scene grid, and (row, col, country) per scene."""
    rng = np.random.default_rng(seed)
    n_scenes = n_countries * scenes_per_country
    cols = int(np.ceil(np.sqrt(n_scenes)))
    rows = int(np.ceil(n_scenes / cols))
    owner = rng.permutation(np.repeat(np.arange(n_countries), scenes_per_country))
    styles = country_styles(n_countries, patch, rng)
    scene = 4 * patch  # 4 x 4 patches per scene, as the seed's 1024 px scenes hold 16 of 256 px
    img = np.zeros((n_dates, 4, rows * scene, cols * scene), np.float32)
    grid = np.full((rows, cols), -1)
    placed = []
    for s, k in enumerate(owner):
        r, c = divmod(s, cols)
        img[:, :, r * scene : (r + 1) * scene, c * scene : (c + 1) * scene] = render_scene(
            styles[k], scene, n_dates, rng
        )
        grid[r, c] = k
        placed.append((r, c, COUNTRIES[k]))
    valid = np.ones((n_dates, rows * scene, cols * scene), bool)
    if rows * cols > n_scenes:  # the empty scene slots of the last row hold no data
        for s in range(n_scenes, rows * cols):
            r, c = divmod(s, cols)
            valid[:, r * scene : (r + 1) * scene, c * scene : (c + 1) * scene] = False
            img[:, :, r * scene : (r + 1) * scene, c * scene : (c + 1) * scene] = np.nan
    ny, nx = img.shape[-2:]
    cube = xr.Dataset(
        {
            "imagery": (("time", "band", "y", "x"), img),
            "valid": (("time", "y", "x"), valid),
        },
        coords={
            "time": np.array([f"2020-{1 + 2 * t:02d}-01" for t in range(n_dates)], dtype="datetime64[ns]"),
            "band": np.array(BANDS, dtype=object),
            "y": Y0 - (np.arange(ny) + 0.5) * RES,
            "x": X0 + (np.arange(nx) + 0.5) * RES,
        },
    )
    return cube.rio.write_crs(f"EPSG:{EPSG}"), grid, placed


def write_regions(placed: list[tuple[int, int, str]], scene_px: int, path: Path) -> Path:
    """One polygon per scene with its ``country``, as a GeoPackage (pyogrio), in lon/lat like SN7's GeoJSON."""
    import pyogrio.raw
    import shapely
    from pyproj import Transformer

    tr = Transformer.from_crs(f"EPSG:{EPSG}", "EPSG:4326", always_xy=True)
    geoms, names = [], []
    for r, c, country in placed:
        x0, x1 = X0 + c * scene_px * RES, X0 + (c + 1) * scene_px * RES
        y1, y0 = Y0 - r * scene_px * RES, Y0 - (r + 1) * scene_px * RES
        xs = np.linspace(x0, x1, 9)
        ys = np.linspace(y0, y1, 9)
        ring = (
            [(x, y0) for x in xs] + [(x1, y) for y in ys[1:]] + [(x, y1) for x in xs[::-1][1:]]
            + [(x0, y) for y in ys[::-1][1:]]
        )  # fmt: skip
        geoms.append(shapely.Polygon([tr.transform(x, y) for x, y in ring]))
        names.append(country)
    path.unlink(missing_ok=True)
    pyogrio.raw.write(
        str(path),
        shapely.to_wkb(np.asarray(geoms, dtype=object)),
        [np.asarray(names, dtype=object)],
        ["country"],
        driver="GPKG",
        geometry_type="Polygon",
        crs="EPSG:4326",
    )
    return path


def chip_truth(grid: np.ndarray, patch: int, n_dates: int) -> np.ndarray:
    """Country id per chip ``(time, chip rows, chip cols)`` (-1 in empty scene slots): every scene is 4 x 4 chips."""
    per_scene = np.kron(grid, np.ones((4, 4), int))
    return np.broadcast_to(per_scene, (n_dates, *per_scene.shape))


def held_out_chips(cube: xr.Dataset, patch: int) -> np.ndarray:
    """Chips inside the validation tiles every fit holds out (the same chip size, split fraction and seed)."""
    plan = geoarray.plan_chips(cube, chip_size=patch, val_fraction=VAL_FRACTION, seed=SEED, labels=None)
    held = plan.val_mask((cube.sizes["y"], cube.sizes["x"]))
    return held[patch // 2 :: patch, patch // 2 :: patch]


def score(
    cube: xr.Dataset, ckpt: Path, truth: np.ndarray, held: np.ndarray, names: list[str]
) -> dict[str, float]:
    """Top-1 / top-5 of a chip classifier on the held-out chips, from its chip grid (``predict_chips``)."""
    from geoarray.metrics import topk_accuracy

    probs = geoarray.predict_chips(cube, ckpt).probabilities  # (time, class, y, x)
    order = [list(map(str, probs["class"].values)).index(n) for n in names]  # the truth's class order
    p = probs.values[:, order]
    sel = (truth >= 0) & held[None] & np.isfinite(p).all(1)
    s = np.moveaxis(p, 1, -1)[sel]
    return {"top1": topk_accuracy(s, truth[sel], 1), "top5": topk_accuracy(s, truth[sel], min(5, len(names)))}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--quick", action="store_true", help="32 px patches, 2 dates, short runs (the tests' size)"
    )
    ap.add_argument("--out", type=Path, default=Path("seed002-out"))
    ap.add_argument("--countries", type=int, help="countries (default 8, or 6 with --quick)")
    ap.add_argument("--scenes", type=int, default=3, help="scenes per country (each 4 x 4 patches)")
    ap.add_argument("--patch", type=int, help="patch size in px (default 256, or 32 with --quick)")
    ap.add_argument("--dates", type=int, default=2, help="dates per scene")
    ap.add_argument("--epochs", type=int, help="epochs of every fit (default 30, or 8 with --quick)")
    ap.add_argument("--width", type=int, help="ResNet-18 width (default 16, or 8 with --quick)")
    args = ap.parse_args(argv)
    quick = args.quick
    countries = args.countries or (6 if quick else 8)
    patch = args.patch or (32 if quick else 256)
    n_dates = args.dates
    epochs = args.epochs or (8 if quick else 30)
    width = args.width or (8 if quick else 16)
    if not 2 <= countries <= len(COUNTRIES):
        ap.error(f"--countries must be 2..{len(COUNTRIES)}")
    t0 = time.perf_counter()
    if args.out.exists() and not args.out.is_dir():
        ap.error(f"--out {args.out} is a file; expected a folder for the example's outputs")
    args.out.mkdir(parents=True, exist_ok=True)
    if (
        quick
    ):  # 32 px chips in batches of 32: one torch thread is as fast, and leaves a core to the chip reader
        import torch

        torch.set_num_threads(1)

    cube_mem, grid, placed = make_cube(countries, args.scenes, patch, n_dates, seed=2)
    store = args.out / "sn7_synthetic.zarr"
    geoarray.write_cube(cube_mem, store, mode="w", chunk=min(512, 8 * patch))
    cube = geoarray.open_cube(store)
    regions = write_regions(placed, 4 * patch, args.out / "countries.gpkg")
    names = sorted(COUNTRIES[:countries])
    truth_sorted = np.vectorize(lambda k: names.index(COUNTRIES[k]) if k >= 0 else -1)(grid)
    truth = chip_truth(truth_sorted, patch, n_dates)
    held = held_out_chips(cube, patch)
    print(
        f"cube {dict(cube.imagery.sizes)} -> {store}; {len(placed)} scenes of 16 patches of {patch}² px in "
        f"{countries} countries ({regions.name}); {int(held.sum())} of {held.size} chip places held out"
    )
    common: dict[str, Any] = {
        "model": "resnet18",
        "model_kwargs": {"width": width},
        "chip_size": patch,
        "val_fraction": VAL_FRACTION,
        "seed": SEED,
        "batch_size": 32,
        "progress": False,
    }
    labelled = {"regions": str(regions), "region_property": "country"}

    def timed(what: str, **kw: Any) -> Path:
        t = time.perf_counter()
        ck = geoarray.fit(cube, **{**common, **kw}, out=str(args.out / f"{what}.safetensors"))
        print(f"  {what}: {time.perf_counter() - t:.1f} s")
        return ck

    print("training (resnet18):")
    sup = timed("supervised", task="classification", epochs=epochs, lr=2e-3, **labelled)
    vic = timed(
        "vicreg",
        task="vicreg",
        epochs=epochs,
        lr=3e-3,
        warmup_epochs=1,
        task_kwargs={"projector_dim": 4 * width * 8},
    )
    # the seed trained its linear layer 5x longer than it fine-tuned; twice here
    lin = timed("linear_probe", task="linear_probe", init=str(vic), epochs=2 * epochs, lr=1e-2, **labelled)
    ft = {
        f: timed(f"finetune_{round(f * 100)}pct", task="finetune", init=str(vic), label_fraction=f,
                 epochs=epochs, lr=2e-3, **labelled)
        for f in (0.01, 0.1)
    }  # fmt: skip
    results = {
        "supervised": score(cube, sup, truth, held, names),
        "finetune_1pct": score(cube, ft[0.01], truth, held, names),
        "finetune_10pct": score(cube, ft[0.1], truth, held, names),
        "linear_frozen": score(cube, lin, truth, held, names),
    }
    r = results
    from geoarray.checkpoint import read_metadata

    tiles = {f: read_metadata(ck)["training"] for f, ck in ft.items()}
    used = ", ".join(
        f"{round(f * 100)} %: {t.get('label_tiles')} of {t.get('labelled_train_tiles')}"
        for f, t in tiles.items()
    )
    print(
        f"\nVICReg ResNet-18, held-out chips (the seed's table; labelled training tiles fine-tuned on, {used}):"
    )
    print("| - | 1% Train Percentage | 10% Train Percentage | Linear Layer on Frozen Features |")
    print("| ------------- | ------------- | ------------- | ------------- |")
    for k in ("top1", "top5"):
        print(
            f"| {k.capitalize()} | {r['finetune_1pct'][k]:.3f} | {r['finetune_10pct'][k]:.3f} | "
            f"{r['linear_frozen'][k]:.3f} |"
        )
    print(
        f"supervised ResNet-18 (100% of the labels): top1 {r['supervised']['top1']:.3f}, top5 {r['supervised']['top5']:.3f}"
    )

    df = geoarray.probe(cube, vic, protocols=("linear", "knn"), label_fractions=(0.1, 1.0), **labelled)
    results["probe"] = df
    print("\nprobe of the VICReg encoder beside its baselines (top-1 on held-out tiles):")
    print(
        df.pivot_table(index="encoder", columns=["protocol", "label_fraction"], values="top1")
        .round(3)
        .to_string()
    )

    feats = geoarray.predict_chips(cube, vic, store=store, group="vicreg_features", overwrite=True)
    classes = geoarray.predict_chips(cube, ft[0.1], store=store, group="chip_classes", overwrite=True)
    print(
        f"\nchip grids in {store}: vicreg_features {dict(feats.features.sizes)}, chip_classes {dict(classes.mask.sizes)}"
    )
    pngs = draw(args.out, cube, feats, classes, truth_sorted, names)
    print(f"wrote {', '.join(p.name for p in pngs)} in {time.perf_counter() - t0:.1f} s")
    results["seconds"] = time.perf_counter() - t0
    return results


def draw(
    out: Path, cube: xr.Dataset, feats: xr.Dataset, classes: xr.Dataset, truth: np.ndarray, names: list[str]
) -> list[Path]:
    """Country per chip (truth, fine-tuned 10 %) beside the scene, and the VICReg chip features in false colour."""
    from geoarray import plot

    plt = plot._plt()
    cmap = plot._class_cmap(len(names))
    rgb = np.clip(
        np.moveaxis(cube.imagery.isel(time=0).sel(band=["red", "green", "blue"]).values, 0, -1) * 3.5, 0, 1
    )
    rgb = np.nan_to_num(rgb, nan=1.0)  # empty scene slots: white, as in the chip maps
    truth_chips = np.kron(truth, np.ones((4, 4), int)).astype(float)
    truth_chips[truth_chips < 0] = np.nan
    pred = classes["mask"].isel(time=0).values.astype(float)
    order = (
        list(map(str, classes["class"].values))
        if "class" in classes.coords
        else list(classes.mask.attrs["classes"])
    )
    pred = np.vectorize(lambda v: names.index(order[int(v)]) if v != 255 else np.nan, otypes=[float])(pred)
    fig, ax = plt.subplots(1, 3, figsize=(15, 5.4), constrained_layout=True)
    ax[0].imshow(rgb)
    ax[0].set_title("scenes (date 1, true colour)")
    for a, img, title in (
        (ax[1], truth_chips, "country per chip: truth"),
        (ax[2], pred, "fine-tuned on 10 %: predicted"),
    ):
        im = a.imshow(img, cmap=cmap, vmin=-0.5, vmax=len(names) - 0.5, interpolation="nearest")
        a.set_title(title)
    for a in ax:
        a.set_xticks([])
        a.set_yticks([])
    bar = fig.colorbar(im, ax=ax[2], ticks=range(len(names)), fraction=0.046)
    bar.ax.set_yticklabels(names)
    p1 = out / "country_map.png"
    fig.savefig(p1, dpi=90)
    plt.close(fig)

    f = feats.features.isel(time=0).values  # (feature, y, x)
    fig, ax = plt.subplots(1, 2, figsize=(10, 5.4), constrained_layout=True)
    ax[0].imshow(np.nan_to_num(plot.pca_rgb(f), nan=1.0), interpolation="nearest")
    ax[0].set_title(f"VICReg chip features, PCA -> RGB ({f.shape[0]}-d)")
    ax[1].imshow(truth_chips, cmap=cmap, vmin=-0.5, vmax=len(names) - 0.5, interpolation="nearest")
    ax[1].set_title("country per chip: truth")
    for a in ax:
        a.set_xticks([])
        a.set_yticks([])
    p2 = out / "vicreg_features.png"
    fig.savefig(p2, dpi=90)
    plt.close(fig)
    return [p1, p2]


if __name__ == "__main__":
    main()

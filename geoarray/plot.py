"""Pictures: false colour (bands or PCA of features), overlays, per-class masks, training curves,
cross-correlation matrices. Everything writes a PNG with matplotlib's Agg backend and returns its path."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "class_masks",
    "cross_correlation",
    "curves",
    "effective_rank",
    "false_color",
    "overlay",
    "pca_rgb",
]


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _out(path: str | Path) -> Path:
    """The PNG's path, its folder made (as export_geotiff does); a URL or a directory is refused."""
    from geoarray._atomic import check_file_path

    check_file_path(path, "a PNG")
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    return out


def _rows(metrics: str | Path) -> list[dict[str, Any]]:
    """The rows of a fit's ``metrics.csv``: the file, or the log folder holding it."""
    from geoarray.errors import PlotError

    p = Path(metrics)
    p = p / "metrics.csv" if p.is_dir() else p
    if not p.is_file():
        raise PlotError(f"{str(p)!r} does not exist; expected a fit's metrics.csv or its log_dir folder.")
    with open(p) as f:
        return list(csv.DictReader(f))


def _stretch(rgb: np.ndarray, lo: float = 2, hi: float = 98) -> np.ndarray:
    out = np.zeros_like(rgb, dtype=np.float32)
    for i in range(rgb.shape[-1]):
        ch = rgb[..., i].astype(np.float32)
        finite = ch[np.isfinite(ch)]
        if finite.size == 0:
            continue
        a, b = np.percentile(finite, [lo, hi])
        out[..., i] = np.clip((ch - a) / max(b - a, 1e-12), 0, 1)
    return np.nan_to_num(out)


def false_color(da: Any, bands: Sequence[str] | None = None) -> np.ndarray:
    """``(y, x, 3)`` RGB in [0, 1] from a ``(band, y, x)`` DataArray: the named bands, or PCA of all bands."""
    from geoarray.errors import PlotError

    if "time" in da.dims and da.sizes["time"] == 1:
        da = da.isel(time=0)
    if set(map(str, da.dims)) != {"band", "y", "x"}:
        raise PlotError(
            f"false_color takes a (band, y, x) image; got dims {tuple(map(str, da.dims))}. Select one date: "
            "`cube.imagery.isel(time=0)`."
        )
    da = da.transpose("band", "y", "x")
    if bands is not None:
        have = [str(b) for b in da["band"].values]
        missing = [b for b in bands if b not in have]
        if missing:
            raise PlotError(f"bands {missing} are not in the image; it has {have}.")
        return _stretch(np.stack([np.asarray(da.sel(band=b).values) for b in bands], -1))
    return pca_rgb(np.asarray(da.values))


def pca_rgb(features: np.ndarray) -> np.ndarray:
    """First three principal components of ``(channels, y, x)`` features as an RGB image (seed 001's maps)."""
    c, h, w = features.shape
    x = features.reshape(c, -1).T.astype(np.float64)
    ok = np.isfinite(x).all(1)
    rgb = np.zeros((h * w, 3))
    if ok.sum() > 3:
        z = x[ok] - x[ok].mean(0)
        _, _, vt = np.linalg.svd(z, full_matrices=False)
        comps = z @ vt[: min(3, vt.shape[0])].T
        rgb[ok, : comps.shape[1]] = comps
    rgb[~ok] = np.nan
    return _stretch(rgb.reshape(h, w, 3))


def _check_ids(m: np.ndarray, n: int, nodata: int, what: str) -> None:
    """Class ids 0..n-1 (or nodata): an id past the class list would be drawn in another class's colour."""
    from geoarray.errors import PlotError

    bad = np.unique(m[(m != nodata) & ((m < 0) | (m >= n))])
    if bad.size:
        raise PlotError(
            f"{what} holds ids {bad[:5].tolist()} beyond the {n} classes (ids 0..{n - 1}, nodata {nodata}); "
            "expected one class name per id. Pass every class name, or the mask's own nodata."
        )


def _class_cmap(n: int) -> Any:
    from matplotlib.colors import ListedColormap

    base = np.array(
        [
            [0.12, 0.47, 0.71],
            [0.17, 0.63, 0.17],
            [0.84, 0.15, 0.16],
            [1.0, 0.5, 0.05],
            [0.58, 0.4, 0.74],
            [0.55, 0.34, 0.29],
            [0.89, 0.47, 0.76],
            [0.5, 0.5, 0.5],
            [0.74, 0.74, 0.13],
            [0.09, 0.75, 0.81],
        ]
    )
    return ListedColormap(base[np.arange(n) % len(base)])


def overlay(
    rgb: np.ndarray,
    masks: dict[str, np.ndarray],
    classes: Sequence[str],
    path: str | Path,
    *,
    nodata: int = 255,
    title: str = "",
    image_title: str = "image",
    alpha: float = 0.6,
) -> Path:
    """Side-by-side panels: the image, then each class map (truth, prediction, ...) blended over it with
    ``alpha`` (1.0: the class maps alone, for an image whose colours would mix with the classes')."""
    from geoarray.errors import PlotError

    shape = np.shape(rgb)[:2]
    for name, m in masks.items():
        m = np.asarray(m)
        if m.shape != shape:
            raise PlotError(f"mask {name!r} has shape {m.shape}; expected the image's (y, x) shape {shape}.")
        _check_ids(m, len(classes), nodata, f"mask {name!r}")
    plt = _plt()
    n = 1 + len(masks)
    fig, axes = plt.subplots(1, n, figsize=(4.2 * n, 4.6), constrained_layout=True)
    axes = np.atleast_1d(axes)
    axes[0].imshow(rgb)
    axes[0].set_title(image_title)
    cmap = _class_cmap(len(classes))
    for ax, (name, m) in zip(axes[1:], masks.items(), strict=True):
        if alpha < 1:
            ax.imshow(rgb)
        shown = np.ma.masked_where(np.asarray(m) == nodata, np.asarray(m))
        ax.imshow(shown, cmap=cmap, vmin=-0.5, vmax=len(classes) - 0.5, alpha=alpha, interpolation="nearest")
        ax.set_title(name)
    for ax in axes:
        ax.set_axis_off()
    handles = [plt.Rectangle((0, 0), 1, 1, color=cmap(i)) for i in range(len(classes))]
    fig.legend(
        handles,
        list(classes),
        loc="upper center",  # hangs below the panels: more rows grow downwards, never over them
        ncol=min(len(classes), 6),
        frameon=False,
        bbox_to_anchor=(0.5, 0.0),
    )
    if title:
        fig.suptitle(title)
    out = _out(path)
    fig.savefig(out, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return out


def class_masks(mask: np.ndarray, classes: Sequence[str], path: str | Path, *, nodata: int = 255) -> Path:
    """One binary panel per class (seed 004's individual segmentation masks).

    ``mask`` is a class-id image ``(y, x)``, or a multi-label stack ``(class, y, x)`` of 0/1 masks.
    """
    from geoarray.errors import PlotError

    m = np.asarray(mask)
    if m.ndim == 2:
        _check_ids(m, len(classes), nodata, "mask")
    elif m.ndim == 3:
        held = np.unique(m[m != nodata])
        if m.shape[0] != len(classes) or not set(held.tolist()) <= {0, 1}:
            raise PlotError(
                f"a 3-D mask is a multi-label stack (class, y, x) of 0/1 masks, one per class; this one has "
                f"{m.shape[0]} layers for {len(classes)} classes and values {held[:6].tolist()}. For class ids "
                "over dates, draw one date: `labels.isel(time=0)`."
            )
    else:
        raise PlotError(f"mask has shape {m.shape}; expected class ids (y, x) or 0/1 masks (class, y, x).")
    plt = _plt()
    n = len(classes)
    cols = min(n, 5)
    rows = int(np.ceil(n / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(3 * cols, 3 * rows), squeeze=False, constrained_layout=True)
    for i, ax in enumerate(axes.ravel()):
        ax.set_axis_off()
        if i < n:
            panel = m[i] if m.ndim == 3 else m
            on = panel == 1 if m.ndim == 3 else panel == i
            ax.imshow(np.where(panel == nodata, np.nan, on.astype(float)), cmap="gray", vmin=0, vmax=1)
            ax.set_title(str(classes[i]))
    out = _out(path)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def curves(
    metrics: str | Path | list[dict[str, Any]], path: str | Path, *, keys: Sequence[str] | None = None
) -> Path:
    """Training curves from ``metrics.csv`` (its file, its log folder, or rows): losses on the left, validation
    scores on the right."""
    plt = _plt()
    rows = _rows(metrics) if isinstance(metrics, (str, Path)) else list(metrics)
    epochs = [int(r["epoch"]) for r in rows]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.6), constrained_layout=True)
    names = keys or [k for k in rows[0] if k not in ("epoch", "lr", "seconds")]
    for k in names:
        vals = [float(r[k]) if r.get(k) not in (None, "") else np.nan for r in rows]
        (a if "loss" in k else b).plot(epochs, vals, marker="o", label=k)
    from matplotlib.ticker import MaxNLocator

    for ax, t in ((a, "loss"), (b, "validation")):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole numbers
        ax.set_xlabel("epoch")
        ax.set_title(t)
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend()
    out = _out(path)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def _cc_matrix(c: Any, epoch: int | None) -> tuple[np.ndarray, int | None]:
    """The matrix ``c`` names: an array, a pair of embeddings, a ``.npy`` file, or a fit log folder."""
    from geoarray.errors import PlotError

    if isinstance(c, tuple) and len(c) == 2:  # two views' embeddings (n, D): standardise, then z1ᵀ z2 / n
        z1, z2 = (np.asarray(z, dtype=np.float64) for z in c)
        a = (z1 - z1.mean(0)) / (z1.std(0) + 1e-8)
        b = (z2 - z2.mean(0)) / (z2.std(0) + 1e-8)
        return a.T @ b / len(a), epoch
    if isinstance(c, (str, Path)):
        p = Path(c)
        if p.is_dir():
            found = {int(f.stem.rsplit("epoch", 1)[1]): f for f in p.glob("cross_correlation_epoch*.npy")}
            if not found:
                raise PlotError(
                    f"{str(p)!r} holds no cross_correlation_epochNNN.npy; expected the log_dir of a "
                    "task='barlow_twins' fit (it writes one per epoch), a .npy file or a (D, D) array."
                )
            if epoch is not None and epoch not in found:
                raise PlotError(f"epoch={epoch}; {str(p)!r} holds epochs {sorted(found)}.")
            epoch = max(found) if epoch is None else epoch
            p = found[epoch]
        if p.suffix != ".npy" or not p.is_file():
            raise PlotError(
                f"{str(p)!r} is not a .npy file or a fit log folder; expected a (D, D) cross-correlation matrix."
            )
        c = np.load(p, allow_pickle=False)
    m = np.asarray(c, dtype=np.float64)
    if m.ndim != 2 or m.shape[0] != m.shape[1] or m.shape[0] < 1:
        raise PlotError(f"a cross-correlation matrix of shape {m.shape}; expected a square (D, D) matrix.")
    return m, epoch


def cross_correlation(
    c: Any, path: str | Path, *, epoch: int | None = None, title: str | None = None
) -> Path:
    """Draw Barlow Twins' cross-correlation matrix ``C`` of the two views' projections (the identity is the goal).

    Parameters
    ----------
    c
        The ``(D, D)`` matrix; a pair ``(z1, z2)`` of ``(n, D)`` embeddings (``C`` is computed, each dimension
        standardised over the batch); a ``.npy`` file; or the ``log_dir`` of a ``task="barlow_twins"`` fit,
        which holds ``cross_correlation_epochNNN.npy`` per epoch (the last one, or ``epoch``).
    path
        The PNG to write.
    epoch, title
        Which epoch of a log folder, and the figure's title (default: the diagonal mean and off-diagonal rms).

    Examples
    --------
    >>> plot.cross_correlation("log", "cc.png")  # doctest: +SKIP
    """
    plt = _plt()
    m, epoch = _cc_matrix(c, epoch)
    d = len(m)
    off = m[~np.eye(d, dtype=bool)]
    head = f"epoch {epoch}: " if epoch is not None else ""
    fig, ax = plt.subplots(figsize=(5.2, 4.4), constrained_layout=True)
    im = ax.imshow(m, cmap="RdBu_r", vmin=-1, vmax=1, interpolation="nearest")
    fig.colorbar(im, ax=ax, shrink=0.85, label="correlation")
    ax.set_xlabel("view 2 projection dim")
    ax.set_ylabel("view 1 projection dim")
    ax.set_title(
        title
        or f"Barlow Twins C, {head}diag mean {np.diag(m).mean():.2f}, "
        f"off-diag rms {np.sqrt((off**2).mean()) if off.size else 0.0:.3f}",
        fontsize=9,
    )
    out = _out(path)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def effective_rank(
    metrics: str | Path | list[dict[str, Any]], path: str | Path, *, dim: int | None = None
) -> Path:
    """The embeddings' effective rank (RankMe) per epoch from a self-supervised fit's ``metrics.csv`` (a file,
    its folder, or rows): training pixels (``effective_rank``) and held-out ones (``val_effective_rank``),
    with the feature dimension ``dim`` and ``dim / 2`` drawn when given. Collapse shows as a fall towards 1."""
    from geoarray.errors import PlotError

    plt = _plt()
    rows = _rows(metrics) if isinstance(metrics, (str, Path)) else list(metrics)
    keys = [k for k in ("effective_rank", "val_effective_rank") if rows and k in rows[0]]
    if not keys:
        raise PlotError(
            "the metrics have no effective_rank column; expected the metrics.csv of a self-supervised fit "
            "(task='barlow_twins' with log_dir=...)."
        )
    epochs = [int(r["epoch"]) for r in rows]
    fig, ax = plt.subplots(figsize=(5.5, 3.6), constrained_layout=True)
    for k, label in zip(keys, ("training pixels", "held-out pixels"), strict=False):
        vals = [float(r[k]) if r.get(k) not in (None, "") else np.nan for r in rows]
        ax.plot(epochs, vals, marker="o", label=label)
    if dim:
        ax.axhline(dim, color="0.3", lw=1, ls="-", label=f"feature dim {dim}")
        ax.axhline(dim / 2, color="0.5", lw=1, ls="--", label=f"dim / 2 = {dim / 2:g}")
        ax.set_ylim(0, dim * 1.05)
    else:
        ax.set_ylim(bottom=0)
    ax.set_xlabel("epoch")
    ax.set_ylabel("effective rank (RankMe)")
    ax.set_title("embedding effective rank per epoch")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    out = _out(path)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out

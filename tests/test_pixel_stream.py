"""The pixel stream's sampler: which pixels a batch holds, and with which numbers.

Band 0 of the test cube carries each pixel's id (1-based), so every row of a batch names the pixel it came from.
The statistics pinned here are the sampler's contract: within a window, a uniform draw without replacement over
the usable pixels (valid and finite on some date, and labelled when the stream has labels); across windows, a
shuffle; under a seed, the same batches.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from geoarray._constants import IGNORE
from geoarray._preprocess import date_features
from geoarray.chips import ChipStream, plan_chips
from geoarray.datasets import synthetic_cube

SIDE, CHIP = 48, 16  # 9 windows of 16x16, one per 16x16 read block


@pytest.fixture(scope="module")
def cube():
    c = synthetic_cube(size=SIDE, n_times=3, seed=3, chunks=CHIP)
    img = c.imagery.values.copy()
    img[:, 0] = np.arange(1, SIDE * SIDE + 1, dtype=np.float32).reshape(SIDE, SIDE)  # the pixel id
    img[1, 2, 30:34, 3:9] = np.nan  # not finite on one date only: still usable on the others
    valid = c.valid.values.copy()
    valid[:, 5:9, 5:12] = False  # never valid: never drawn
    valid[1, 20:30, 20:30] = False  # one date clouded: drawn, with that date masked
    lab = c.labels.values.copy()
    lab[-1, 40:44, 0:10] = 255  # no label on the last date (the one a pixel series takes): never drawn
    lab[0, 12:16, 30:40] = 255  # no label on the first date only: still drawn
    c = c.assign(
        imagery=(c.imagery.dims, img, c.imagery.attrs),
        valid=(c.valid.dims, valid),
        labels=(c.labels.dims, lab, c.labels.attrs),
    )
    ok = valid & np.isfinite(img).all(1)  # (T, y, x)
    c.attrs["truth"] = (img, ok, lab[-1], ok.any(0) & (lab[-1] != 255))  # usable: valid once, labelled
    return c.chunk(time=1, y=CHIP, x=CHIP)


def _truth(cube):
    return cube.attrs["truth"]


def _stream(cube, **kw):
    kw.setdefault("pixels_per_window", CHIP * CHIP)
    plan = plan_chips(cube, chip_size=CHIP, times="all", val_fraction=0.0)
    n = cube.sizes["band"]
    s = ChipStream(
        cube,
        plan.train,
        plan,
        bands=list(cube.band.values),
        mean=[0.0] * n,
        std=[1.0] * n,
        kind="pixels",
        batch_size=50,
        **kw,
    )
    return plan, s


def _rows(s):
    """One epoch as (pixel ids, x, valid, dates, y, batch index) numpy copies (batches reuse their buffers)."""
    out = []
    for k, b in enumerate(s):
        x = b.x.numpy().copy()
        out.append(
            (
                x[:, :, 0].max(1).astype(int) - 1,
                x,
                b.valid.numpy().copy(),
                b.dates.numpy().copy(),
                b.y.numpy().copy(),
                np.full(len(x), k),
            )
        )
    return [np.concatenate(a) for a in zip(*out, strict=True)]


def _check_values(cube, ids, x, valid, dates, y):
    """Every row is its pixel's series: values where usable, 0 on every band elsewhere; validity, day of
    year and the last date's label."""
    img, ok, lab, _ = _truth(cube)
    py, px = np.divmod(ids, SIDE)
    want_ok = ok[:, py, px].T  # (n, T)
    want_x = np.where(want_ok[..., None], img[:, :, py, px].transpose(2, 0, 1), 0)
    np.testing.assert_array_equal(valid, want_ok)
    np.testing.assert_array_equal(x, want_x.astype(np.float32))
    np.testing.assert_array_equal(dates, np.broadcast_to(date_features(cube.time.values, None), valid.shape))
    np.testing.assert_array_equal(y, lab[py, px].astype(np.int64))


def test_unshuffled_stream_gives_every_usable_pixel_once_in_window_order(cube):
    _, s = _stream(cube, shuffle=False)
    *_, usable = _truth(cube)
    ids, x, valid, dates, y, _ = _rows(s)
    assert len(ids) == usable.sum() == 9 * CHIP * CHIP - 4 * 7 - 4 * 10  # hand count of the masked boxes
    # window after window in the stream's block order, each window's pixels in row-major order
    want = []
    for w in (w for bi in s._by_block for w in s._by_block[bi]):
        yy, xx = np.nonzero(usable[w.y : w.y + CHIP, w.x : w.x + CHIP])
        want.extend((yy + w.y) * SIDE + xx + w.x)
    np.testing.assert_array_equal(ids, want)
    _check_values(cube, ids, x, valid, dates, y)
    assert not valid[np.isin(ids, [30 * SIDE + 3])][:, 1].any()  # the NaN date is masked


def test_shuffled_epochs_draw_every_usable_pixel_exactly_once_and_repeat_under_a_seed(cube):
    *_, usable = _truth(cube)
    _, s = _stream(cube, seed=7)
    e1, e2 = _rows(s), _rows(s)
    for ids, x, valid, dates, y, _ in (e1, e2):
        assert Counter(ids.tolist()) == Counter(np.flatnonzero(usable).tolist())  # once each, none else
        _check_values(cube, ids, x, valid, dates, y)
    assert not np.array_equal(e1[0], e2[0])  # each epoch its own order
    again = _stream(cube, seed=7)[1]
    for a, b in zip((e1, e2), (_rows(again), _rows(again)), strict=True):
        for u, v in zip(a, b, strict=True):
            np.testing.assert_array_equal(u, v)
    assert not np.array_equal(_rows(_stream(cube, seed=8)[1])[0], e1[0])


def _chi2_limit(df: int, z: float = 3.72) -> float:
    """The chi-square quantile at the normal quantile ``z`` (3.72: p = 1e-4), Wilson-Hilferty."""
    return df * (1 - 2 / (9 * df) + z * np.sqrt(2 / (9 * df))) ** 3


def test_a_window_draws_uniformly_among_its_usable_pixels_and_batches_mix_the_windows(cube):
    """Over 60 epochs of 40 of each window's ~250 usable pixels: each usable pixel is drawn as often as the
    others (chi-square), never one that is unusable, never one twice in an epoch; and with a pool as large
    as the epoch, which window a row comes from is independent of which batch it lands in (chi-square on
    the window x batch table)."""
    *_, usable = _truth(cube)
    plan, s = _stream(cube, pixels_per_window=40, shuffle_blocks=16, seed=1)
    epochs, counts = 60, np.zeros(SIDE * SIDE)
    win = np.full((SIDE, SIDE), -1)
    for i, w in enumerate(plan.train):
        win[w.y : w.y + CHIP, w.x : w.x + CHIP] = i
    table = np.zeros((len(plan.train), 8))  # 360 rows an epoch: 7 batches of 50 and a last of 10
    for _ in range(epochs):
        ids, *_, k = _rows(s)
        assert len(ids) == len(set(ids.tolist())) == 9 * 40
        counts += np.bincount(ids, minlength=SIDE * SIDE)
        np.add.at(table, (win.ravel()[ids], k), 1)
    assert counts[~usable.ravel()].sum() == 0
    stat, df = 0.0, 0
    for w in plan.train:
        m = usable[w.y : w.y + CHIP, w.x : w.x + CHIP].ravel()
        obs = counts.reshape(SIDE, SIDE)[w.y : w.y + CHIP, w.x : w.x + CHIP].ravel()[m]
        exp = epochs * 40 / m.sum()
        stat += ((obs - exp) ** 2 / exp).sum()
        df += m.sum() - 1
    assert stat < _chi2_limit(df), (stat, df)
    exp = np.outer(table.sum(1), table.sum(0)) / table.sum()
    stat2 = ((table - exp) ** 2 / exp).sum()
    assert stat2 < _chi2_limit((table.shape[0] - 1) * (table.shape[1] - 1)), stat2
    assert (table[:, 0] > 0).sum() >= 7  # the first batch holds pixels of nearly every window


def test_pixel_rows_without_labels_are_ignored_targets(cube):
    _, s = _stream(cube.drop_vars("labels"), labels=None, shuffle=False)
    ids, _, valid, _, y, _ = _rows(s)
    _, ok, _, _ = _truth(cube)
    assert len(ids) == ok.any(0).sum() and (y == IGNORE).all() and valid.any(1).all()


def test_pixel_windows_of_different_date_counts_are_refused_before_any_read(cube):
    from dataclasses import replace

    from geoarray.errors import TrainError

    plan = plan_chips(cube, chip_size=CHIP, times="all", val_fraction=0.0)
    windows = [replace(w, t=w.t[:2]) if i % 2 else w for i, w in enumerate(plan.train)]
    with pytest.raises(TrainError, match=r"pixel windows with \[2, 3\] dates in one stream.*times='all'"):
        ChipStream(
            cube, windows, plan, bands=list(cube.band.values), mean=[0.0] * 4, std=[1.0] * 4, kind="pixels"
        )
    # chips of different date counts stay allowed (each is its own sample)
    ChipStream(cube, windows, plan, bands=list(cube.band.values), mean=[0.0] * 4, std=[1.0] * 4, kind="chip")

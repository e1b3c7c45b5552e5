"""Is the input on the training data's scale? predict's per-block check against the checkpoint's statistics.

A model fed values on another scale (uint16 for a uint8 model, 0-1 reflectances for a model trained on digital
numbers) gives confident nonsense without an error; this warns instead, once per call site.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["FAR_Z", "SHRUNK", "check_scale"]


FAR_Z = 10.0
"""Median |z| of a block's valid pixels past which the input is not on the training data's scale."""
SHRUNK = 10.0
"""A band whose training mean is this many times the block's largest |value| is on a smaller scale."""


def check_scale(
    window: np.ndarray, ok: np.ndarray, norm: tuple[Sequence[float], Sequence[float], float], bands: Sequence[str]
) -> None:
    """Warn when the input is far off the training statistics (e.g. uint16 values for a model trained on uint8,
    or 0-1 reflectances for a model trained on digital numbers).

    The checkpoint's mean/std are all predict knows of the training data, so this compares against them on a
    sample of the block's valid pixels (every 8th row and column): cheap next to the model. Values on a larger
    scale sit many standard deviations off; values on a much smaller scale may sit only a few off (0-1
    reflectances against DN with mean 70 and std 20: z = -3.5), so those are caught by their size instead: every
    band whose training mean is well away from 0 (|mean| > 3 std) has all its values under a tenth of that mean.
    A dark block of real DN (water) keeps bright bands (blue, path radiance) above that.
    """
    sample = np.moveaxis(window[..., ::8, ::8], 1, -1)[ok[..., ::8, ::8]]  # (pixels, bands)
    if sample.size == 0:
        return
    mean, std, scale = norm
    far = np.flatnonzero(np.median(np.abs(sample), axis=0) > FAR_Z)
    m, s = np.asarray(mean, dtype=np.float64), np.asarray(std, dtype=np.float64)
    shrunk = np.zeros(0, dtype=int)
    if far.size == 0 and sample.shape[0] >= 16 and sample.shape[1] == m.size:
        offset = np.abs(m) > 3 * s  # bands whose values are never near 0 in training
        if offset.any():
            largest = np.max(np.abs(sample.astype(np.float64) * s + m), axis=0)  # |x * scale|, from z
            small = offset & (largest * SHRUNK < np.abs(m))
            varied = np.ptp(sample, axis=0) > 0  # a constant block (fill of 0 that is not declared) says little
            if small[offset].all() and varied[offset].any():
                shrunk = np.flatnonzero(offset)
    if far.size == 0 and shrunk.size == 0:
        return
    import warnings

    from geoarray.errors import GeoArrayWarning

    idx = far if far.size else shrunk
    names = [bands[int(i)] if i < len(bands) else str(i) for i in idx]
    if far.size:
        found = f"lie more than {FAR_Z:g} standard deviations from the training data's (median over valid pixels"
    else:
        found = (
            f"are all under 1/{SHRUNK:g} of the training data's mean (largest |value| "
            f"{[round(float(v), 4) for v in largest[shrunk]]}"
        )
    warnings.warn(
        GeoArrayWarning(
            f"predict: the cube's values in band(s) {names} {found}; training mean "
            f"{[round(mean[int(i)], 4) for i in idx]}, std {[round(std[int(i)], 4) for i in idx]}, scale {scale:g}), so "
            "the outputs are probably meaningless. Is the cube on another scale or dtype than the training data "
            "(e.g. uint16 reflectance for a model trained on uint8, or 0-1 reflectances for a model trained on "
            "digital numbers)? Rescale it to the training data's scale."
        ),
        stacklevel=1,
    )

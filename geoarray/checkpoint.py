"""Self-describing checkpoints: one ``.safetensors`` file, weights + one JSON document. Never pickle.

``__metadata__["geoarray"]`` holds everything :func:`geoarray.predict` needs: the model (registry name and
hparams), the task, the input contract (band names in order, normalisation, sensor, time handling, date
encoding), the output contract (kind, variable names, classes, feature dim), the receptive field, halo and
stride, training provenance and the geoarray version.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from geoarray._atomic import atomic_write
from geoarray.errors import CheckpointError

__all__ = [
    "FORMAT_VERSION",
    "Checkpoint",
    "file_sha256",
    "load_checkpoint",
    "read_metadata",
    "save_checkpoint",
]

FORMAT_VERSION = 1
_KEY = "geoarray"

#: task -> output kind
_OUTPUT_KINDS = {
    "segmentation": "segmentation",
    "pixel_classification": "segmentation",
    "classification": "classification",
    "features": "features",
    "barlow_twins": "features",
    "vicreg": "features",
    "invariants": "features",
}


def file_sha256(path: str | os.PathLike[str]) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@dataclass(frozen=True)
class Checkpoint:
    """A loaded checkpoint: ``model`` (eval mode), ``meta`` (the JSON document), ``path`` and ``sha256``."""

    model: Any
    meta: dict[str, Any]
    path: Path
    sha256: str


def _output_spec(task: str, model: Any, classes: Sequence[str] | None, multilabel: bool) -> dict[str, Any]:
    kind = _OUTPUT_KINDS.get(task)
    if kind is None:
        raise CheckpointError(f"task={task!r} is unknown; expected one of {sorted(_OUTPUT_KINDS)}.")
    n = int(getattr(model, "out_channels", 0))
    if kind == "segmentation":
        names = list(classes) if classes is not None else [str(i) for i in range(n)]
        if len(names) != n:
            raise CheckpointError(
                f"{len(names)} class names {names} for a model with {n} output channels; give one name per channel."
            )
        if multilabel:
            return {"kind": "multilabel", "variables": ["probabilities", "mask"], "classes": names}
        return {"kind": "segmentation", "variables": ["probabilities", "mask"], "classes": names}
    if kind == "classification":
        names = list(classes) if classes is not None else [str(i) for i in range(n)]
        return {"kind": "classification", "variables": [], "classes": names}
    return {"kind": "features", "variables": ["features"], "feature_dim": n}


def save_checkpoint(
    path: str | os.PathLike[str],
    model: Any,
    *,
    task: str,
    bands: Sequence[str],
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    classes: Sequence[str] | None = None,
    sensor: str | None = None,
    **meta: Any,
) -> Path:
    """Write a model and its input/output contract as one ``.safetensors`` file, atomically.

    Parameters
    ----------
    path
        Output file.
    model
        A registry model (from :func:`geoarray.models.create_model`): it knows its name and hparams.
    task
        ``segmentation``, ``pixel_classification``, ``classification``, or a feature task (``features``,
        ``barlow_twins``, ``vicreg``, ``invariants``).
    bands
        Input band names, in the order the model expects them.
    mean, std
        Per-band normalisation statistics (``(x - mean) / std``); default 0 and 1.
    classes
        Class names, one per output channel.
    sensor
        The sensor the model was trained on (``"S2"``, ``"L8"``, ...); predict leaves other sensors' dates NaN.
    **meta
        Extra metadata: ``multilabel`` (bool), ``training`` (dict: epochs, best metric, seed, data identity),
        ``scale`` (multiplier applied before normalising), ``date_encoding``, and any JSON-serialisable keys.

    Returns
    -------
    pathlib.Path
        The written file.

    Examples
    --------
    >>> import tempfile, os
    >>> from geoarray.models import create_model
    >>> m = create_model("unet", in_channels=2, num_classes=2, width=4, depth=2)
    >>> p = save_checkpoint(os.path.join(tempfile.mkdtemp(), "m.safetensors"), m, task="segmentation",
    ...                     bands=["red", "nir"], classes=["bg", "fg"])
    >>> load_checkpoint(p).meta["input"]["bands"]
    ['red', 'nir']
    """
    from safetensors.torch import save_model

    from geoarray._version import __version__

    name = getattr(model, "name", "")
    hparams = getattr(model, "hparams", None)
    if not name or hparams is None:
        raise CheckpointError(
            f"{type(model).__name__} is not a registry model (no .name/.hparams); "
            "build it with geoarray.models.create_model(name, **hparams)."
        )
    bands = [str(b) for b in bands]
    nb = len(bands)
    in_ch = hparams.get("in_channels")
    if in_ch is not None and in_ch != nb:
        raise CheckpointError(
            f"{nb} bands {bands} for a model with in_channels={in_ch}; give one name per input channel."
        )
    mean_l = [float(v) for v in mean] if mean is not None else [0.0] * nb
    std_l = [float(v) for v in std] if std is not None else [1.0] * nb
    if len(mean_l) != nb or len(std_l) != nb:
        raise CheckpointError(
            f"mean/std have {len(mean_l)}/{len(std_l)} values for {nb} bands; give one per band."
        )
    if any(s <= 0 for s in std_l):
        raise CheckpointError(f"std={std_l} has values <= 0; expected positive per-band standard deviations.")
    multilabel = bool(meta.pop("multilabel", False))
    training = meta.pop("training", {})
    input_kind = getattr(model, "input_kind", "image")
    doc: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "model": {"name": name, "hparams": hparams},
        "task": task,
        "input": {
            "bands": bands,
            "mean": mean_l,
            "std": std_l,
            "sensor": sensor,
            "dtype": "float32",
            "scale": float(meta.pop("scale", 1.0)),
            "kind": input_kind,
            "time_series": input_kind in ("sequence", "pixels"),
            "date_encoding": meta.pop(
                "date_encoding", hparams.get("date_encoding", "doy" if input_kind != "image" else None)
            ),
        },
        "output": _output_spec(task, model, classes, multilabel),
        "receptive_field": model.receptive_field(),
        "halo": model.halo(),
        "stride": int(model.stride),
        "training": training,
        "geoarray_version": __version__,
        "extra": meta,
    }
    try:
        text = json.dumps(doc)
    except TypeError as e:
        raise CheckpointError(f"checkpoint metadata is not JSON-serialisable: {e}") from None
    return atomic_write(path, lambda tmp: save_model(model, str(tmp), metadata={_KEY: text}))


def read_metadata(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The geoarray JSON document of a checkpoint, without loading weights or torch."""
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"no checkpoint file at {str(p)!r}.")
    from safetensors import safe_open

    try:
        with safe_open(str(p), framework="numpy") as f:
            header = f.metadata() or {}
    except Exception as e:  # SafetensorError and friends: the header is not a safetensors header
        raise CheckpointError(
            f"{str(p)!r} is not a readable .safetensors file ({type(e).__name__}: {e}). "
            "geoarray checkpoints are written by geoarray.save_checkpoint / geoarray fit; it never loads pickles."
        ) from None
    if _KEY not in header:
        raise CheckpointError(
            f"{str(p)!r} is a safetensors file without geoarray metadata (keys: {sorted(header)}). "
            "Expected a checkpoint written by geoarray.save_checkpoint; wrap plain weights with "
            "create_model(...).load_state_dict(...) and save_checkpoint(...)."
        )
    try:
        doc = json.loads(header[_KEY])
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{str(p)!r} has corrupt geoarray metadata ({e}).") from None
    if not isinstance(doc, dict) or doc.get("format_version", 0) > FORMAT_VERSION:
        raise CheckpointError(
            f"{str(p)!r} has checkpoint format {doc.get('format_version') if isinstance(doc, dict) else doc!r}; "
            f"this geoarray reads up to {FORMAT_VERSION}. Upgrade geoarray."
        )
    for key in ("model", "task", "input", "output"):
        if key not in doc:
            raise CheckpointError(f"{str(p)!r} geoarray metadata lacks {key!r}; the file is damaged.")
    return doc


def load_checkpoint(path: str | os.PathLike[str], *, device: str = "cpu") -> Checkpoint:
    """Load a checkpoint: rebuild the model from the registry and load its weights. Never unpickles.

    Parameters
    ----------
    path
        A file written by :func:`save_checkpoint`.
    device
        Where to put the weights.

    Returns
    -------
    Checkpoint
        ``.model`` in eval mode, ``.meta`` (the JSON document), ``.path`` and ``.sha256``.

    Raises
    ------
    CheckpointError
        Not a safetensors file (a pickle, truncated, corrupt), no geoarray metadata, or weights that don't fit
        the model.
    """
    from safetensors.torch import load_file

    from geoarray.models import create_model

    doc = read_metadata(path)
    model = create_model(doc["model"]["name"], **doc["model"]["hparams"])
    try:
        state = load_file(str(path), device=device)
    except Exception as e:
        raise CheckpointError(f"{str(path)!r}: cannot read the weights ({type(e).__name__}: {e}).") from None
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as e:
        raise CheckpointError(
            f"{str(path)!r}: weights don't fit model {doc['model']['name']!r}: {e}"
        ) from None
    # save_model drops tensors that alias others (tied weights); those show up as missing and are fine only if
    # they share storage with a loaded tensor. Anything else is a damaged file.
    real_missing = [k for k in missing if not k.endswith("num_batches_tracked")]
    if unexpected or (real_missing and not _tied(model, real_missing)):
        raise CheckpointError(
            f"{str(path)!r}: weights don't fit model {doc['model']['name']!r} "
            f"(missing {list(missing)[:5]}, unexpected {list(unexpected)[:5]})."
        )
    model.to(device).eval()
    if "receptive_field" in doc:
        model.__dict__["_rf"] = int(doc["receptive_field"])
    return Checkpoint(model=model, meta=doc, path=Path(path), sha256=file_sha256(path))


def _tied(model: Any, missing: Sequence[str]) -> bool:
    params = dict(model.state_dict())
    ptrs = {t.data_ptr() for k, t in params.items() if k not in missing}
    return all(params[k].data_ptr() in ptrs for k in missing if k in params)

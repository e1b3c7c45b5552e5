"""Self-describing checkpoints: one ``.safetensors`` file, weights + one JSON document. Never pickle.

``__metadata__["geoarray"]`` holds everything :func:`geoarray.predict` needs: the model (registry name and
hparams), the task, the input contract (band names in order, normalisation, sensor, time handling, date
encoding), the output contract (kind, variable names, classes, feature dim), the receptive field, halo and
stride, training provenance and the geoarray version.

Integrity: the document's ``content_sha256`` is the sha256 of the document itself (canonical JSON, without
that key), of the tensor index (names, dtypes, shapes, offsets) and of the tensor bytes, so a damaged byte
anywhere is refused on load. Files written before the key existed load unchecked.

Loading reads the file once: those bytes are checked, hashed (``Checkpoint.sha256``, the provenance predict
records) and handed to safetensors, so what was verified is what gets loaded. The safetensors format has no
code path that unpickles, and nothing here calls ``torch.load``.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from geoarray._atomic import atomic_write
from geoarray._checkpoint_checks import (
    DIGEST,
    FORMAT_VERSION,
    RESAVE,
    aliases,
    build_model,
    check_model,
    digest,
    fill,
    output_spec,
    restorable,
    validate_meta,
)
from geoarray._checkpoint_read import (
    KEY,
    _checked_path,
    _checked_remote,
    _open,
    _read_header,
    _read_remote,
)
from geoarray._storage import is_url
from geoarray.errors import CheckpointError

__all__ = [
    "FORMAT_VERSION",
    "Checkpoint",
    "file_sha256",
    "load_checkpoint",
    "read_metadata",
    "save_checkpoint",
]

log = logging.getLogger(__name__)


def file_sha256(path: str | os.PathLike[str], *, storage_options: dict[str, Any] | None = None) -> str:
    """sha256 of a file's bytes; ``path`` may be an fsspec URL (``s3://…``) with ``storage_options``."""
    h = hashlib.sha256()
    if is_url(path):
        loc = _checked_remote(str(path), storage_options)
        with loc.fs.open(loc.path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        return h.hexdigest()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@dataclass(frozen=True)
class Checkpoint:
    """A loaded checkpoint: ``model`` (eval mode), ``meta`` (the JSON document), ``path`` and ``sha256``."""

    model: Any
    meta: dict[str, Any]
    path: Path | str  # a local Path, or the URL (str) of a checkpoint in object storage
    sha256: str


def read_metadata(
    path: str | os.PathLike[str], *, storage_options: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The validated geoarray JSON document of a checkpoint, reading only the file's header (no torch).

    The weights and the checksum are not checked here; :func:`load_checkpoint` checks them. ``path`` may be an
    fsspec URL (``s3://…``) with ``storage_options``.
    """
    if is_url(path):
        loc = _checked_remote(str(path), storage_options)
        with loc.fs.open(loc.path, "rb") as f:
            return _read_header(f, int(f.size), repr(loc.url)).doc
    p = _checked_path(path)
    with _open(p) as f:
        return _read_header(f, os.fstat(f.fileno()).st_size, repr(str(p))).doc


def load_checkpoint(
    path: str | os.PathLike[str], *, device: str = "cpu", storage_options: dict[str, Any] | None = None
) -> Checkpoint:
    """Load a checkpoint: rebuild the model from the registry and load its weights. Never unpickles.

    Parameters
    ----------
    path
        A file written by :func:`save_checkpoint`, or its fsspec URL (``"s3://bucket/model.safetensors"``).
    device
        Where to put the weights: ``"cpu"``, ``"cuda"``, ``"cuda:N"``, ``"mps"`` or ``"auto"``.
    storage_options
        fsspec options for a URL (credentials, ``client_kwargs={"endpoint_url": ...}``).

    Returns
    -------
    Checkpoint
        ``.model`` in eval mode, ``.meta`` (the JSON document), ``.path`` and ``.sha256`` (of the file).

    Raises
    ------
    CheckpointError
        Not a safetensors file (a pickle, truncated, corrupt), no geoarray metadata, metadata that is
        inconsistent or that the model registry refuses, a checksum mismatch (a damaged file), or weights that
        don't fit the model. Everything is checked before any weight is loaded.
    """
    from safetensors.torch import load

    from geoarray._devices import resolve_device

    device = resolve_device(device, CheckpointError)
    p: Path | str
    if is_url(path):
        loc = _checked_remote(str(path), storage_options)
        p, where = loc.url, repr(loc.url)
        raw = _read_remote(loc, where)
    else:
        if storage_options:
            raise CheckpointError(
                f"storage_options were given for the local path {str(path)!r}; they apply to URLs only "
                "(s3://bucket/model.safetensors). Drop them, or pass the checkpoint's URL."
            )
        p = _checked_path(path)
        where = repr(str(p))
        with _open(p) as f:
            # Refuse a file that is not a checkpoint before reading it whole (it may be a large raster).
            _read_header(f, os.fstat(f.fileno()).st_size, where)
            f.seek(0)
            raw = f.read()
    hdr = _read_header(io.BytesIO(raw), len(raw), where)  # the bytes that are verified and loaded
    doc = hdr.doc
    sha = hashlib.sha256(raw).hexdigest()
    want = doc.get(DIGEST)
    if want is None:
        log.debug(
            "%s has no content checksum (saved by an older geoarray); its weights are not verified", where
        )
    else:
        got = digest(doc, hdr.index, memoryview(raw)[hdr.data_start :])
        if got != want:
            raise CheckpointError(
                f"{where} is damaged: its contents hash to sha256 {got[:16]}..., the checksum written at save "
                f"is {want[:16]}... (a flipped bit or a partial overwrite). Use an intact copy, or re-save the model."
            )
    skeleton = build_model(doc, where, skeleton=True)
    model = skeleton if skeleton is not None else build_model(doc, where, skeleton=False)
    check_model(model, doc, hdr.index, where)
    try:
        state = load(raw)
    except Exception as e:  # SafetensorError: offsets or dtypes the header check could not see
        raise CheckpointError(
            f"{where}: cannot read the weights ({type(e).__name__}: {e}). {RESAVE}"
        ) from None
    del raw
    if skeleton is None or not fill(skeleton, state):
        # The usual path skips this: fill() adopts the tensors into the skeleton, without a random init.
        if skeleton is not None:
            model = build_model(doc, where, skeleton=False)
        try:
            missing, unexpected = model.load_state_dict(state, strict=False)
        except RuntimeError as e:
            raise CheckpointError(f"{where}: weights don't fit model {doc['model']['name']!r}: {e}") from None
        if unexpected or [k for k in missing if not restorable(model, k, state)]:
            raise CheckpointError(
                f"{where}: weights don't fit model {doc['model']['name']!r} "
                f"(missing {list(missing)[:5]}, unexpected {list(unexpected)[:5]}). {RESAVE}"
            )
    model.to(device).eval()
    model.__dict__["_rf"] = int(doc["receptive_field"])
    return Checkpoint(model=model, meta=doc, path=p, sha256=sha)


# -- writing ----------------------------------------------------------------------------------------------
def _tensors(model: Any) -> dict[str, Any]:
    """The state dict with each tied tensor stored once (safetensors refuses aliases), under the name
    safetensors' ``save_model`` would keep (the first in sorted order); load re-ties the others."""
    state = model.state_dict()
    same = aliases(model)
    return {
        k: v.detach().cpu().contiguous()
        for k, v in state.items()
        if k == min((a for a in same.get(k, [k]) if a in state), default=k)
    }


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
        The written file. Its mode follows the umask, like any other new file.

    Raises
    ------
    CheckpointError
        Not a registry model, or metadata that :func:`load_checkpoint` would refuse (band/class counts,
        non-finite or non-positive statistics, values that are not JSON). Nothing is written then.

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
    from safetensors.torch import save, save_file

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
    if not all(s > 0 and math.isfinite(s) for s in std_l):
        raise CheckpointError(
            f"std={std_l} has values <= 0 or not finite; expected positive per-band standard deviations."
        )
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
        "output": output_spec(task, model, classes, multilabel),
        "receptive_field": 0,  # measured below, once the cheap checks pass (it runs the model)
        "halo": 0,
        "stride": int(model.stride),
        "training": training,
        "geoarray_version": __version__,
        "extra": meta,
    }
    try:
        doc = json.loads(json.dumps(doc))  # the document exactly as load will see it
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"checkpoint metadata is not JSON-serialisable: {e}") from None
    where, fix = f"save_checkpoint({str(path)!r})", "Fix the arguments given to save_checkpoint."
    validate_meta(doc, where, fix)
    doc["receptive_field"], doc["halo"] = int(model.receptive_field()), int(model.halo())
    validate_meta(doc, where, fix)
    tensors = _tensors(model)
    try:
        raw = save(tensors)  # the tensor index and bytes; metadata only changes the header, not offsets
    except (ValueError, RuntimeError) as e:
        raise CheckpointError(f"{name!r}'s weights cannot be stored as safetensors: {e}") from None
    n = int.from_bytes(raw[:8], "little")
    index = json.loads(raw[8 : 8 + n])
    index.pop("__metadata__", None)
    doc[DIGEST] = digest(doc, index, memoryview(raw)[8 + n :])
    del raw
    text = json.dumps(doc)
    return atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata={KEY: text}))

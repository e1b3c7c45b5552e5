"""The checks a checkpoint must pass: its metadata's types, ranges and cross-fields (no torch), its content
checksum, and its agreement with the registry model it names and with the file's tensor index (on a
meta-device skeleton).

:mod:`geoarray.checkpoint` runs them on every load and before every save, so save never writes what load
refuses, and a bad file is refused with found / expected / fix before any model is built or weight read.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from typing import Any

from geoarray._output_parts import check_parts, parts_spec
from geoarray.errors import CheckpointError, ModelError

FORMAT_VERSION = 1
DIGEST = "content_sha256"

#: task -> output kind
OUTPUT_KINDS = {
    "segmentation": "segmentation",
    "pixel_classification": "segmentation",
    "classification": "classification",
    "features": "features",
    "barlow_twins": "features",
    "vicreg": "features",
    "invariants": "features",
}
#: output kind -> the variables predict may write for it
_VARIABLES = {
    "segmentation": {"probabilities", "mask"},
    "multilabel": {"probabilities", "mask"},
    "classification": set(),
    "features": {"features"},
}
_INPUT_KINDS = ("image", "sequence", "pixels", "chip")
# The keys save_checkpoint writes: any other is a damaged key name (say, the checksum's, which would silently
# turn the check off) or a newer format. Free-form data lives under "training" and "extra".
_SCHEMA = {
    "": {"format_version", "model", "task", "input", "output", "receptive_field", "halo", "stride", "training",
         "geoarray_version", "extra", DIGEST},
    "model.": {"name", "hparams"},
    "input.": {"bands", "mean", "std", "sensor", "dtype", "scale", "kind", "time_series", "date_encoding"},
    "output.": {"kind", "variables", "classes", "feature_dim", "parts"},
}  # fmt: skip
_DATE_ENCODINGS = (None, "doy", "days")
_VERSIONS = "1" if FORMAT_VERSION == 1 else f"an integer from 1 to {FORMAT_VERSION}"
RESAVE = (
    "The file was edited or damaged: use an intact copy, or re-save the model with geoarray.save_checkpoint."
)


# -- metadata validation ----------------------------------------------------------------------------------
_MISSING = object()


def short(v: Any) -> str:
    r = repr(v)
    return r if len(r) <= 80 else r[:77] + "..."


def _bad(where: str, key: str, found: Any, expected: str, fix: str) -> CheckpointError:
    what = f"lacks {key!r}" if found is _MISSING else f"has {key}={short(found)}"
    return CheckpointError(f"{where}: the geoarray metadata {what}; expected {expected}. {fix}")


def is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _names(v: Any) -> bool:
    """A non-empty list of distinct, non-empty strings."""
    return (
        isinstance(v, list)
        and len(v) > 0
        and all(isinstance(s, str) and s for s in v)
        and len(set(v)) == len(v)
    )


def validate_meta(doc: Any, where: str, fix: str = RESAVE) -> None:
    """Refuse a document predict could not use (type, range and cross-field checks), before any work.

    Runs on every read and before every save, so save never writes what load refuses. The checks that need
    the model (registry name, hparams, channel counts) are in :func:`check_model`.
    """
    if not isinstance(doc, dict):
        raise _bad(where, "document", doc, "a JSON object", fix)

    def known(d: dict[str, Any], prefix: str) -> None:
        unknown = sorted(set(d) - _SCHEMA[prefix])
        if unknown:
            raise CheckpointError(
                f"{where}: the geoarray metadata has unknown key(s) {[prefix + k for k in unknown]}; expected only "
                f"{sorted(_SCHEMA[prefix])} there. {fix} (If a newer geoarray wrote it, upgrade geoarray.)"
            )

    def need(d: dict[str, Any], key: str, prefix: str, ok: Any, expected: str) -> Any:
        v = d.get(key, _MISSING)
        if v is _MISSING or not ok(v):
            raise _bad(where, prefix + key, v, expected, fix)
        return v

    def opt(d: dict[str, Any], key: str, prefix: str, ok: Any, expected: str, default: Any) -> Any:
        v = d.get(key, default)
        if not ok(v):
            raise _bad(where, prefix + key, v, expected, fix)
        return v

    version = need(doc, "format_version", "", is_int, _VERSIONS)
    if version <= FORMAT_VERSION:  # a newer format may have new keys: say "upgrade" rather than "unknown key"
        known(doc, "")
    if version > FORMAT_VERSION:
        raise CheckpointError(
            f"{where} has checkpoint format {version}; this geoarray reads format {_VERSIONS}. "
            "Upgrade geoarray (`pip install -U geoarray`)."
        )
    if version < 1:
        raise _bad(where, "format_version", version, _VERSIONS, fix)

    model = need(
        doc, "model", "", lambda v: isinstance(v, dict), "an object with the model's name and hparams"
    )
    known(model, "model.")
    need(model, "name", "model.", lambda v: isinstance(v, str) and v, "a registry model name (str)")
    need(model, "hparams", "model.", lambda v: isinstance(v, dict), "an object of hyper-parameters")
    task = need(doc, "task", "", lambda v: v in OUTPUT_KINDS, f"one of {sorted(OUTPUT_KINDS)}")

    inp = need(doc, "input", "", lambda v: isinstance(v, dict), "an object describing the input bands")
    known(inp, "input.")
    bands = need(inp, "bands", "input.", _names, "a non-empty list of distinct band names (str)")
    nb = len(bands)
    for key in ("mean", "std"):
        vals = need(
            inp, key, "input.", lambda v: isinstance(v, list), f"a list of {nb} numbers, one per band"
        )
        if len(vals) != nb:
            raise _bad(where, f"input.{key}", vals, f"{nb} numbers, one per band of {bands}", fix)
        if not all(_is_number(x) and (key == "mean" or x > 0) for x in vals):
            kind = "finite numbers" if key == "mean" else "finite positive numbers"
            raise _bad(where, f"input.{key}", vals, f"{kind} (normalisation is (x - mean) / std)", fix)
    opt(inp, "scale", "input.", lambda v: _is_number(v) and v > 0, "a finite positive number", 1.0)
    kind = need(inp, "kind", "input.", lambda v: v in _INPUT_KINDS, f"one of {list(_INPUT_KINDS)}")
    series = kind in ("sequence", "pixels")
    opt(inp, "time_series", "input.", lambda v: v is series, f"{series} for input kind {kind!r}", series)
    opt(
        inp,
        "sensor",
        "input.",
        lambda v: v is None or (isinstance(v, str) and v),
        "null or a sensor name",
        None,
    )
    opt(inp, "dtype", "input.", lambda v: v == "float32", "'float32'", "float32")
    opt(inp, "date_encoding", "input.", lambda v: v in _DATE_ENCODINGS, "null, 'doy' or 'days'", None)

    out = need(doc, "output", "", lambda v: isinstance(v, dict), "an object describing the outputs")
    known(out, "output.")
    allowed = (
        ("multilabel", "segmentation") if OUTPUT_KINDS[task] == "segmentation" else (OUTPUT_KINDS[task],)
    )
    okind = need(
        out, "kind", "output.", lambda v: v in allowed, f"{' or '.join(map(repr, allowed))} for task {task!r}"
    )
    made = _VARIABLES[okind]
    parts = out.get("parts")
    if parts is not None:
        made = check_parts(parts, okind, where, fix)
    need(
        out,
        "variables",
        "output.",
        lambda v: isinstance(v, list) and len(set(v)) == len(v) and set(v) <= made and bool(v) == bool(made),
        f"distinct names among {sorted(made)}" if made else "an empty list",
    )
    if okind == "features":
        dim = need(out, "feature_dim", "output.", lambda v: is_int(v) and v > 0, "a positive integer")
        if parts is not None and parts[0]["channels"] != dim:
            raise _bad(where, "output.feature_dim", dim, f"{parts[0]['channels']} (part 'features')", fix)
    else:
        need(out, "classes", "output.", _names, "a non-empty list of distinct class names (str)")

    stride = need(doc, "stride", "", lambda v: is_int(v) and v > 0, "a positive integer (pixels)")
    rf = need(doc, "receptive_field", "", lambda v: is_int(v) and v >= 0, "a non-negative integer (pixels)")
    need(
        doc,
        "halo",
        "",
        lambda v: is_int(v) and v >= rf and v % stride == 0,
        f"a multiple of the stride {stride} that is at least the receptive field {rf}",
    )
    opt(doc, "training", "", lambda v: isinstance(v, dict), "an object", {})
    opt(doc, "extra", "", lambda v: isinstance(v, dict), "an object", {})
    opt(doc, "geoarray_version", "", lambda v: isinstance(v, str), "a version string", "")
    if DIGEST in doc:  # absent from files saved before geoarray stored it
        need(
            doc,
            DIGEST,
            "",
            lambda v: isinstance(v, str) and len(v) == 64 and set(v) <= set("0123456789abcdef"),
            "64 lowercase hex digits",
        )


def entry_ok(e: Any) -> bool:
    """A well-formed safetensors header entry: dtype, shape and two ordered byte offsets."""
    if not isinstance(e, dict) or not isinstance(e.get("dtype"), str):
        return False
    shape, offs = e.get("shape"), e.get("data_offsets")
    return (
        isinstance(shape, list)
        and all(is_int(s) and s >= 0 for s in shape)
        and isinstance(offs, list)
        and len(offs) == 2
        and all(is_int(o) for o in offs)
        and 0 <= offs[0] <= offs[1]
    )


def output_spec(task: str, model: Any, classes: Sequence[str] | None, multilabel: bool) -> dict[str, Any]:
    """The ``output`` section save_checkpoint writes for ``task``."""
    kind = OUTPUT_KINDS.get(task)
    if kind is None:
        raise CheckpointError(f"task={task!r} is unknown; expected one of {sorted(OUTPUT_KINDS)}.")
    n = int(getattr(model, "out_channels", 0))
    if kind == "features" and callable(getattr(model, "parts", None)):  # several outputs (seed 000)
        return parts_spec(model)
    if kind == "features":
        return {"kind": "features", "variables": ["features"], "feature_dim": n}
    names = [str(c) for c in classes] if classes is not None else [str(i) for i in range(n)]
    if len(names) != n:
        raise CheckpointError(
            f"{len(names)} class names {names} for a model with {n} output channels; give one name per channel."
        )
    if kind == "classification":
        return {"kind": "classification", "variables": [], "classes": names}
    return {
        "kind": "multilabel" if multilabel else "segmentation",
        "variables": ["probabilities", "mask"],
        "classes": names,
    }


# -- integrity ------------------------------------------------------------------------------------------
def _canonical(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def digest(doc: dict[str, Any], index: dict[str, Any], data: Any) -> str:
    """sha256 of the document (without its checksum), the tensor index and the tensor bytes."""
    h = hashlib.sha256(b"geoarray checkpoint\n")
    h.update(_canonical({k: v for k, v in doc.items() if k != DIGEST}))
    h.update(b"\n")
    h.update(_canonical(index))
    h.update(b"\n")
    h.update(data)
    return h.hexdigest()


# -- the model behind the metadata ------------------------------------------------------------------------
def build_model(doc: dict[str, Any], where: str, *, skeleton: bool) -> Any:
    """The registry model the document names.

    ``skeleton`` builds it on torch's meta device: no memory and no initialisation, so hparams that describe
    a huge model cost nothing to check. It returns None when the factory cannot run there (it computes values
    in ``__init__``, say): the caller then builds the model for real.
    """
    import contextlib

    import torch

    from geoarray.models import create_model, list_models

    name, hparams = doc["model"]["name"], doc["model"]["hparams"]
    if name not in list_models():
        raise CheckpointError(
            f"{where} needs model {name!r}, which this geoarray does not register (it has {list_models()}). "
            f"Upgrade geoarray, or import the module that registers {name!r} "
            "(geoarray.models.register_model) before loading."
        )
    try:
        with torch.device("meta") if skeleton else contextlib.nullcontext():
            return create_model(name, **hparams)
    except ModelError as e:  # the registry refuses the hparams, on any device
        raise CheckpointError(
            f"{where}: the checkpoint's hparams don't build model {name!r} ({e}). {RESAVE}"
        ) from None
    except (ValueError, TypeError, RuntimeError, NotImplementedError) as e:  # torch refusing a size, say
        if skeleton:
            return None
        raise CheckpointError(
            f"{where}: the checkpoint's hparams don't build model {name!r} "
            f"(hparams {short(hparams)}: {type(e).__name__}: {e}). {RESAVE}"
        ) from None


def fill(skeleton: Any, state: dict[str, Any]) -> bool:
    """Make the meta-device ``skeleton`` real by adopting the loaded tensors (no copy, no initialisation).

    False, with the skeleton unusable, if anything would stay on the meta device (a tied alias, a buffer the
    file does not hold, a tensor attribute made in ``__init__``): then build the model for real instead.
    """
    own = skeleton.state_dict()
    if set(own) != set(state):
        return False
    skeleton.load_state_dict(
        {k: v if v.dtype == own[k].dtype else v.to(own[k].dtype) for k, v in state.items()},
        strict=True,
        assign=True,
    )
    return not any(
        getattr(v, "is_meta", False)
        for m in skeleton.modules()
        for v in (*vars(m).values(), *m._parameters.values(), *m._buffers.values())
    )


def aliases(model: Any) -> dict[str, list[str]]:
    """name -> every state-dict name of the same tensor (tied weights are one Parameter under several names)."""
    import itertools

    groups: dict[int, list[str]] = {}
    named = itertools.chain(
        model.named_parameters(remove_duplicate=False), model.named_buffers(remove_duplicate=False)
    )
    for n, t in named:
        groups.setdefault(id(t), []).append(n)
    return {n: g for g in groups.values() for n in g}


def restorable(model: Any, name: str, present: Any) -> bool:
    """A state-dict name the file may lack: BatchNorm's counter, or an alias of a tensor the file holds."""
    return name.endswith("num_batches_tracked") or any(a in present for a in aliases(model).get(name, []))


_FLOAT_DTYPES = {"F64", "F32", "F16", "BF16"}


def check_model(model: Any, doc: dict[str, Any], index: dict[str, Any], where: str) -> None:
    """The model (a meta-device skeleton) agrees with the document and with the file's tensor index."""
    name = doc["model"]["name"]
    inp, out = doc["input"], doc["output"]
    problems = []
    if model.input_kind != inp["kind"]:
        problems.append(f"input.kind is {inp['kind']!r}, the model's is {model.input_kind!r}")
    if int(model.stride) != doc["stride"]:
        problems.append(f"stride is {doc['stride']}, the model's is {int(model.stride)}")
    in_ch = model.hparams.get("in_channels")
    if in_ch is not None and in_ch != len(inp["bands"]):
        problems.append(f"{len(inp['bands'])} bands {inp['bands']} for in_channels={in_ch}")
    n_out = int(getattr(model, "out_channels", 0))
    if out.get("parts") is not None:
        total = sum(p["channels"] for p in out["parts"])
        own = [(a, c) for a, c, *_ in model.parts()] if callable(getattr(model, "parts", None)) else None
        if total != n_out or (own is not None and own != [(p["name"], p["channels"]) for p in out["parts"]]):
            problems.append(f"output.parts {short(out['parts'])} are not the model's ({own or n_out})")
    elif out["kind"] == "features":
        if out["feature_dim"] != n_out:
            problems.append(
                f"output.feature_dim is {out['feature_dim']}, the model has {n_out} output channels"
            )
    elif len(out["classes"]) != n_out:
        problems.append(
            f"{len(out['classes'])} class names {short(out['classes'])} for {n_out} output channels"
        )
    if problems:
        raise CheckpointError(
            f"{where}: the metadata doesn't match model {name!r} built from its hparams: "
            + "; ".join(problems)
            + f". Expected one band name per input channel and one class per output channel. {RESAVE}"
        )
    state = model.state_dict()
    missing = [k for k in state if k not in index and not restorable(model, k, index)]
    unexpected = [k for k in index if k not in state]
    shapes = [
        f"{k} {index[k]['shape']} (model {list(state[k].shape)})"
        for k in state
        if k in index and index[k]["shape"] != list(state[k].shape)
    ]
    dtypes = [
        f"{k} {index[k]['dtype']} (model {str(state[k].dtype).removeprefix('torch.')})"
        for k in state
        if k in index and (index[k]["dtype"] in _FLOAT_DTYPES) != state[k].is_floating_point()
    ]
    parts = [
        f"{label} {len(items)}: {items[:5]}"
        for label, items in (
            ("missing", missing),
            ("unexpected", unexpected),
            ("wrong shape", shapes),
            ("wrong dtype", dtypes),
        )
        if items
    ]
    if parts:
        raise CheckpointError(
            f"{where}: the weights don't fit model {name!r} built from its hparams ({'; '.join(parts)}). "
            f"The tensors and the metadata come from different models, or the file was edited. {RESAVE}"
        )

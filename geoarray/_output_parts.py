"""``output.parts`` of a checkpoint: the channel layout of a model with several outputs (seed 000's pretext
model writes ``features``, each head's features, PCA features and the arrow-of-time heatmap).

Each part is ``{"name", "channels", "dim", "activation"}``, in channel order, the first named ``features``. A
part with a ``dim`` is written as ``name(time, <prefix><dim>, y, x)``; a part whose dim is ``null`` is one
channel, written as a map ``name(time, y, x)``. ``activation`` (``null`` or ``"sigmoid"``) is applied by
predict before writing.
"""

from __future__ import annotations

from typing import Any

from geoarray.errors import CheckpointError

PART_KEYS = {"name", "channels", "dim", "activation"}
ACTIVATIONS = (None, "sigmoid")
_EXPECTED = (
    "a non-empty list of {name, channels, dim, activation} objects, the first named 'features', with distinct "
    "names and dims, channels > 0, dim null only for 1 channel, activation null or 'sigmoid'"
)


def _int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _refuse(where: str, key: str, found: Any, fix: str) -> CheckpointError:
    r = repr(found)
    r = r if len(r) <= 80 else r[:77] + "..."
    return CheckpointError(f"{where}: the geoarray metadata has {key}={r}; expected {_EXPECTED}. {fix}")


def check_parts(parts: Any, okind: str, where: str, fix: str) -> set[str]:
    """Refuse a malformed layout; return the variable names it makes."""
    key = "output.parts"
    if okind != "features" or not isinstance(parts, list) or not parts:
        raise _refuse(where, key, parts, fix + " (Only feature models have parts.)")
    names, dims = [], []
    for i, p in enumerate(parts):
        if not isinstance(p, dict) or set(p) != PART_KEYS:
            raise _refuse(where, f"{key}[{i}]", p, fix)
        name, ch, dim, act = p["name"], p["channels"], p["dim"], p["activation"]
        ok = (
            isinstance(name, str)
            and bool(name)
            and _int(ch)
            and ch > 0
            and ((isinstance(dim, str) and bool(dim)) or (dim is None and ch == 1))
            and act in ACTIVATIONS
        )
        if not ok:
            raise _refuse(where, f"{key}[{i}]", p, fix)
        names.append(name)
        if dim is not None:
            dims.append(dim)
    if names[0] != "features" or len(set(names)) != len(names) or len(set(dims)) != len(dims):
        raise _refuse(where, key, parts, fix)
    return set(names)


def parts_spec(model: Any) -> dict[str, Any]:
    """The ``output`` section of a model with ``parts()`` (``(name, channels, dim, activation)`` tuples)."""
    parts = [{"name": a, "channels": int(c), "dim": d, "activation": f} for a, c, d, f in model.parts()]
    return {
        "kind": "features",
        "variables": [p["name"] for p in parts],
        "feature_dim": parts[0]["channels"],
        "parts": parts,
    }


# -- in predict's block kernel (``spec`` is its RunSpec; ``spec.parts`` holds (name, start, stop, has a dim,
# activation) slices of the model's channels) -----------------------------------------------------------------
def channels_of(spec: Any, name: str) -> int:
    """Channels of output ``name`` along its class/feature axis; 0 when it has none (a mask, a heatmap)."""
    for part, a, b, has_dim, _ in spec.parts:
        if part == name:
            return int(b - a) if has_dim else 0
    return int(spec.channels) if name != "mask" or spec.kind == "multilabel" else 0


def split_parts(logits: Any, spec: Any) -> list[Any]:
    """Model outputs ``(N, K, h, w)`` -> one float array per wanted part (activation applied; a part without
    a dim loses its channel axis), in ``spec.outputs`` order."""
    import torch

    where = {p[0]: p for p in spec.parts}
    outs = []
    for name in spec.outputs:
        _, a, b, has_dim, act = where[name]
        part = logits[:, a:b].float()
        part = torch.sigmoid(part) if act == "sigmoid" else part
        outs.append((part if has_dim else part[:, 0]).cpu().numpy().astype(spec.float_dtype))
    return outs

"""The resume side file: last-epoch weights, optimizer and RNG state as safetensors + JSON (never a pickle).

It sits beside the checkpoint as ``<out>.train-state.safetensors``. A run that is killed keeps it, so
``resume=<out>`` continues from the last finished epoch; a run that finishes removes it unless
``keep_state=True`` (then ``resume=`` can also extend a finished run to more epochs).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from geoarray._atomic import atomic_write
from geoarray.errors import TrainError

__all__ = ["TrainState", "load_state", "save_state", "state_path"]


def state_path(out: str | Path) -> Path:
    """Where the side file of checkpoint ``out`` lives."""
    out = Path(out)
    return out.with_name(out.name + ".train-state.safetensors")


@dataclass
class TrainState:
    """What a resumed run needs: weights, optimizer state, the epoch reached and the best score so far."""

    weights: dict[str, Any]
    optimizer: dict[str, Any]
    epoch: int
    best: float
    extra: dict[str, Any]


def save_state(out: str | Path, model: Any, opt: Any, *, epoch: int, best: float, extra: dict[str, Any]) -> Path:
    """Write the side file of ``out`` atomically; ``extra`` is JSON (scheduler state and the like)."""
    from safetensors.torch import save_file

    tensors, meta = _flatten(model, opt)
    meta.update(epoch=int(epoch), best=float(best), extra=extra)
    path = state_path(out)
    atomic_write(path, lambda p: save_file(tensors, str(p), metadata={"state": json.dumps(meta)}))
    return path


def load_state(out: str | Path) -> TrainState | None:
    """The side file of checkpoint ``out``, read once; None when there is none."""
    path = state_path(out)
    if not path.exists():
        return None
    from safetensors import SafetensorError
    from safetensors.torch import load

    data = path.read_bytes()
    try:
        tensors = load(data)
        header_len = int.from_bytes(data[:8], "little")
        meta = json.loads(json.loads(data[8 : 8 + header_len])["__metadata__"]["state"])
    except (SafetensorError, KeyError, ValueError) as e:
        raise TrainError(
            f"the resume file {str(path)!r} is damaged ({e}); delete it to resume from the checkpoint's best "
            "epoch instead, or start a new run."
        ) from None
    weights = {k[len("model.") :]: t for k, t in tensors.items() if k.startswith("model.")}
    opt: dict[str, Any] = {"param_groups": meta["param_groups"], "state": {}}
    for key, t in tensors.items():
        if key.startswith("opt."):
            _, idx, name = key.split(".", 2)
            opt["state"].setdefault(int(idx), {})[name] = t
    for idx, scalars in meta.get("opt_scalars", {}).items():
        opt["state"].setdefault(int(idx), {}).update(scalars)
    return TrainState(weights, opt, int(meta["epoch"]), float(meta.get("best", float("-inf"))), meta.get("extra", {}))


def _flatten(model: Any, opt: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    import torch

    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    sd = opt.state_dict()
    scalars: dict[str, dict[str, Any]] = {}
    for idx, st in sd["state"].items():
        for name, v in st.items():
            if isinstance(v, torch.Tensor):
                tensors[f"opt.{idx}.{name}"] = v.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(idx), {})[name] = v
    return tensors, {"param_groups": sd["param_groups"], "opt_scalars": scalars}

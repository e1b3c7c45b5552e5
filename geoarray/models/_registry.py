"""Name -> factory registry (no torch import here)."""

from __future__ import annotations

import fnmatch
import inspect
from collections.abc import Callable
from typing import Any

from geoarray.errors import ModelError

_FACTORIES: dict[str, Callable[..., Any]] = {}


def register_model(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Register a factory under its function name. The factory takes keyword hparams and returns a model."""
    _FACTORIES[fn.__name__] = fn
    return fn


def list_models(pattern: str = "*") -> list[str]:
    """Registered model names matching a shell-style ``pattern``, sorted.

    Examples
    --------
    >>> from geoarray.models import list_models
    >>> list_models("unet*")
    ['unet']
    """
    return sorted(n for n in _FACTORIES if fnmatch.fnmatch(n, pattern))


def model_info(name: str) -> dict[str, Any]:
    """The hparams a model accepts, with their defaults."""
    fn = _get(name)
    return {
        p.name: (None if p.default is inspect.Parameter.empty else p.default)
        for p in inspect.signature(fn).parameters.values()
    }


def _get(name: str) -> Callable[..., Any]:
    if name not in _FACTORIES:
        close = fnmatch.filter(_FACTORIES, f"*{name[:4]}*") if name else []
        raise ModelError(
            f"unknown model {name!r}; expected one of {list_models()}."
            + (f" Did you mean {close[0]!r}?" if close else "")
        )
    return _FACTORIES[name]


def create_model(name: str, **hparams: Any) -> Any:
    """Build a registered model.

    Parameters
    ----------
    name
        Registry name, see :func:`list_models`.
    **hparams
        Hyper-parameters; common names are ``in_channels``, ``num_classes`` (or ``out_channels`` for feature
        models), ``depth`` and ``width``.

    Returns
    -------
    GeoModel
        The model, in training mode, with ``.name`` and ``.hparams`` (every argument, defaults included).

    Raises
    ------
    ModelError
        Unknown name, unknown hparam, or a bad value.

    Examples
    --------
    >>> from geoarray.models import create_model
    >>> m = create_model("unet", in_channels=4, num_classes=3, width=8)
    >>> m.stride, m.hparams["depth"]
    (16, 5)
    """
    fn = _get(name)
    sig = inspect.signature(fn)
    unknown = sorted(set(hparams) - set(sig.parameters))
    if unknown:
        raise ModelError(f"model {name!r} has no hparam(s) {unknown}; it accepts {sorted(sig.parameters)}.")
    bound = sig.bind(**hparams)
    bound.apply_defaults()
    try:
        model = fn(**bound.arguments)
    except (ValueError, TypeError) as e:
        raise ModelError(f"model {name!r} rejected {hparams}: {e}") from None
    model.name = name
    model.hparams = dict(bound.arguments)
    return model

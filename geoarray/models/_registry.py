"""Name -> factory registry (no torch import here)."""

from __future__ import annotations

import fnmatch
import inspect
import math
import numbers
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
    arguments = check_hparams(name, hparams)
    try:
        model = fn(**arguments)
    except (ValueError, TypeError, AssertionError) as e:  # torch checks some hparams with assert
        raise ModelError(f"model {name!r} rejected {hparams}: {e}") from None
    model.name = name
    model.hparams = dict(arguments)
    return model


def check_hparams(name: str, hparams: dict[str, Any]) -> dict[str, Any]:
    """Every hparam of model ``name`` (defaults filled in), checked against the factory's signature.

    Refuses an unknown name or hparam, and values of the wrong type or range (see :func:`_checked`), with a
    :class:`ModelError`, without building the model: ``fit`` calls it before any work.
    """
    sig = inspect.signature(_get(name))
    unknown = sorted(set(hparams) - set(sig.parameters))
    if unknown:
        raise ModelError(f"model {name!r} has no hparam(s) {unknown}; it accepts {sorted(sig.parameters)}.")
    bound = sig.bind(**hparams)
    bound.apply_defaults()
    return {p.name: _checked(name, p, bound.arguments[p.name]) for p in sig.parameters.values()}


# Smallest value of an int hparam (default 1): 0 classes make a feature model (pixel models, resnets; map
# models refuse it themselves), and 0 attention layers a plain UNet. Each model checks its own depth range
# (a UNet's is 2..7), so the registry checks only that depth is an integer.
_MINIMUM: dict[str, int | None] = {"num_classes": 0, "num_attention_layers": 0, "depth": None, "pca_dim": 0}
_EVEN = ("encoding_dim", "d_model")  # sinusoidal date encodings take sin/cos pairs


def _checked(model: str, p: inspect.Parameter, v: Any) -> Any:
    """``v`` if it fits the factory's annotation (int, float, str) and range; else a ModelError that says so.

    Without this, a wrong type or size fails deep inside torch (``width='abc'`` as "not all arguments
    converted during string formatting", ``width=0`` on the first forward pass).
    """
    kind = p.annotation if isinstance(p.annotation, str) else getattr(p.annotation, "__name__", "")
    default = "" if p.default is inspect.Parameter.empty else f", e.g. {p.name}={p.default!r} (the default)"
    numeric = isinstance(v, numbers.Real) and not isinstance(v, bool)
    same = numeric if kind in ("int", "float") else isinstance(v, str) if kind == "str" else True
    found = f"{p.name}={v!r}" + ("" if same else f" ({type(v).__name__})")
    if kind == "int":
        low = _MINIMUM.get(p.name, 1)
        if not isinstance(v, numbers.Integral) or isinstance(v, bool) or (low is not None and v < low):
            at_least = "" if low is None else f" >= {low}"
            raise ModelError(f"model {model!r} got {found}; expected an integer{at_least}{default}.")
        if p.name in _EVEN and v % 2:
            raise ModelError(f"model {model!r} got {found}; expected an even integer{default}.")
        return int(v)
    if kind == "float":
        ok = isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(float(v))
        if not ok or (p.name == "dropout" and not 0 <= float(v) < 1):
            what = "a probability 0 <= p < 1" if p.name == "dropout" else "a finite number"
            raise ModelError(f"model {model!r} got {found}; expected {what}{default}.")
        return float(v)
    if kind == "str" and not isinstance(v, str):
        raise ModelError(f"model {model!r} got {found}; expected a string{default}.")
    return v

"""The ``geoarray`` Typer app, its error handling and the options every command shares."""

from __future__ import annotations

import functools
import logging
import re
import typing
from collections.abc import Callable
from typing import Annotated, Any, TypeVar

import typer

from geoarray.errors import GeoArrayError

app = typer.Typer(
    name="geoarray",
    help="Deep learning on satellite image cubes: ingest imagery into Zarr cubes, train, predict, export.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
ingest_app = typer.Typer(help="Build a Zarr cube from GeoTIFFs or STAC items.", no_args_is_help=True)
app.add_typer(ingest_app, name="ingest")

F = TypeVar("F", bound=Callable[..., Any])


def _friendly(fn: F) -> F:
    """Turn GeoArrayError into a one-line message and exit code 2 instead of a traceback.

    The library's messages name its arguments (``overwrite=True``, ``prefix='s2_'``); where the command has
    an option for the same parameter, the message names the option (``--overwrite``, ``--prefix s2_``).
    """

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        import warnings

        from geoarray.errors import GeoArrayWarning

        formatted = warnings.formatwarning

        def fmt(message: Any, category: Any, *rest: Any, **kw: Any) -> str:
            if issubclass(category, GeoArrayWarning):  # one line, in the command's words, not a source line
                return f"warning: {_cli_words(str(message), fn)}\n"
            return formatted(message, category, *rest, **kw)

        # the format, not showwarning: a recorder (pytest.warns, catch_warnings(record=True)) still gets them
        warnings.formatwarning = fmt
        try:
            return fn(*args, **kwargs)
        except GeoArrayError as e:
            typer.secho(f"error: {_cli_words(str(e), fn)}", err=True, fg=typer.colors.RED)
            raise typer.Exit(2) from None
        finally:
            warnings.formatwarning = formatted

    return wrapper  # type: ignore[return-value]


_ARG = re.compile(r"(?<![\w.])([a-z][a-z0-9_]*)=(True|False|'[^']*'|\"[^\"]*\"|[\w.-]+)?(?![\w(\[{])")


def _cli_words(message: str, fn: Callable[..., Any]) -> str:
    """``name=value`` -> ``--flag value`` for the command's own options (other text is left as it is)."""
    try:
        hints = typing.get_type_hints(fn, include_extras=True)
    except Exception:  # never let the rewording hide the error itself
        return message
    flags = {}
    for name, hint in hints.items():
        for info in getattr(hint, "__metadata__", ()):
            if isinstance(info, typer.models.OptionInfo):
                decls = [d for d in (info.param_decls or ()) if str(d).startswith("--")]
                flags[name] = str(decls[0]).split("/")[0] if decls else "--" + name.replace("_", "-")

    def cli(m: re.Match[str]) -> str:
        flag, value = flags.get(m.group(1)), m.group(2)
        if flag is None:
            return m.group(0)
        if value == "True" or not value:
            return flag
        if value == "False":
            return "--no-" + flag[2:]
        return f"{flag} {value.strip(chr(39) + chr(34))}"

    return _ARG.sub(cli, message)


@app.callback()
def _main(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log progress details.")] = False,
) -> None:
    from geoarray._heap import keep_freed

    keep_freed()  # this process is geoarray's: keep the memory torch frees for its next tensors (geoarray._heap)
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    # the per-epoch summary is what a person running `geoarray fit` wants to see; the library logs it at INFO
    logging.getLogger("geoarray.training").setLevel(logging.INFO)


Store = Annotated[
    str,
    typer.Argument(
        help="A Zarr cube: a path, or an s3:// (fsspec) URL with credentials from the environment (AWS_* variables "
        "or profile)."
    ),
]


def split_list(value: str | None, flag: str) -> list[str] | None:
    """``"B1, B2,B3"`` -> ``["B1", "B2", "B3"]``: names stripped; an empty item is an error naming the flag."""
    if value is None:
        return None
    items = [v.strip() for v in value.split(",")]
    if not all(items):
        raise typer.BadParameter(f"{flag} {value!r} has an empty item; expected comma-separated names.")
    return items


def split_dates(value: str | None, flag: str) -> list[str] | None:
    """Comma-separated ISO dates (YYYY-MM-DD, optionally with a time); 01/02/2020 is ambiguous and refused."""
    import re

    items = split_list(value, flag)
    for d in items or []:
        if not re.fullmatch(r"\d{4}-\d{2}-\d{2}([T ][\d:.]+)?", d):
            raise typer.BadParameter(
                f"{flag}: {d!r} is not an ISO date; expected YYYY-MM-DD (e.g. 2020-01-02), which is never ambiguous."
            )
    return items


def cube_summary(ds: Any, *, var: str = "imagery") -> str:
    """A short human-readable description of a cube (what ``geoarray info`` prints)."""
    import numpy as np
    da = ds[var]
    lines = [f"imagery variable : {var} {dict(da.sizes)} {da.dtype}"]
    times = ds["time"].values
    if times.size:
        dates = [str(np.datetime_as_string(t, unit="D")) for t in times]
        lines.append(
            f"dates            : {len(dates)}: {', '.join(dates[:6])}{' ...' if len(dates) > 6 else ''}"
        )
    lines.append(f"bands            : {', '.join(map(str, ds['band'].values))}")
    crs = ds.rio.crs
    lines.append(f"crs              : {crs.to_string() if crs else None}")
    try:
        res = ds.rio.resolution()
        b = ds.rio.bounds()
        lines.append(f"resolution       : {abs(res[0]):g} x {abs(res[1]):g}")
        lines.append(f"bounds           : {', '.join(f'{v:.2f}' for v in b)}")
    except Exception:  # a 1-pixel axis has no resolution; keep info usable
        pass
    if da.chunks:
        lines.append(f"chunks           : {dict(zip(da.dims, (c[0] for c in da.chunks), strict=True))}")
    if "sensor" in ds.coords:
        lines.append(f"sensors          : {sorted(set(map(str, ds['sensor'].values)))}")
    lines.append("variables        :")
    width = max([15, *(len(str(n)) + 1 for n in ds.data_vars)])
    for name, v in sorted(ds.data_vars.items(), key=lambda kv: str(kv[0])):
        extra = ""
        if "classes" in v.attrs:
            extra = f" classes={list(v.attrs['classes'])}"
        if v.attrs.get("geoarray_complete") is False:
            extra += "  (partial: an interrupted predict; run it again to finish)"
        lines.append(f"  {name!s:<{width}s}{tuple(map(str, v.dims))} {v.dtype}{extra}")
    return "\n".join(lines)

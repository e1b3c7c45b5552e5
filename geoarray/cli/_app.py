"""The ``geoarray`` Typer app, its error handling and the options every command shares."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from pathlib import Path
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
    """Turn GeoArrayError into a one-line message and exit code 2 instead of a traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except GeoArrayError as e:
            typer.secho(f"error: {e}", err=True, fg=typer.colors.RED)
            raise typer.Exit(2) from None

    return wrapper  # type: ignore[return-value]


@app.callback()
def _main(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log progress details.")] = False,
) -> None:
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    # the per-epoch summary is what a person running `geoarray fit` wants to see; the library logs it at INFO
    logging.getLogger("geoarray.training").setLevel(logging.INFO)


Store = Annotated[Path, typer.Argument(help="Path of a Zarr cube.")]


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

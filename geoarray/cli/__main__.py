"""``python -m geoarray.cli``: the same as the ``geoarray`` command."""

from geoarray.cli import app

app()

"""The package version, importable without importing the package (so modules inside never import geoarray)."""

__version__ = "0.1.0"

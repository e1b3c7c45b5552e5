"""Shared fixtures: small real files (GeoTIFF, STAC JSON, Zarr) written in tmp_path, seeded."""

from __future__ import annotations

import datetime as dt
import hashlib
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin

CRS = "EPSG:32633"


def write_tif(
    path: Path,
    data: np.ndarray,
    *,
    crs: str = CRS,
    transform=None,
    nodata=None,
    descriptions=None,
    tags=None,
    cog: bool = False,
) -> Path:
    """Write a real GeoTIFF with rasterio; ``data`` is (band, y, x)."""
    data = np.asarray(data)
    if data.ndim == 2:
        data = data[None]
    transform = transform or from_origin(500_000.0, 5_001_000.0, 10.0, 10.0)
    profile = {
        "driver": "COG" if cog else "GTiff",
        "height": data.shape[1],
        "width": data.shape[2],
        "count": data.shape[0],
        "dtype": data.dtype,
        "crs": crs,
        "transform": transform,
        "nodata": nodata,
    }
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
        for i, d in enumerate(descriptions or []):
            dst.set_band_description(i + 1, d)
        if tags:
            dst.update_tags(**tags)
    return path


def coded(shape: tuple[int, ...], offset: int = 0) -> np.ndarray:
    """Test data that encodes each pixel's position in its value (odc-geo style): exact crop checks."""
    return (np.arange(int(np.prod(shape)), dtype=np.int64).reshape(shape) + offset).astype(np.float32)


def tree_digest(root: Path, *, exclude: tuple[str, ...] = ()) -> dict[str, str]:
    """sha256 of every file under root (relative path -> digest), skipping top-level names in exclude."""
    out = {}
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root)
        if p.is_file() and rel.parts[0] not in exclude:
            out[str(rel)] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


@pytest.fixture(scope="session")
def synth():
    from geoarray.datasets import synthetic_cube

    return synthetic_cube(size=96, n_times=3, seed=3)


@pytest.fixture
def stac_catalog(tmp_path):
    """A real local STAC catalog: 3 dates x 3 single-band COG assets (uint16), pystac Items with proj/raster/eo."""
    import pystac
    from pystac.extensions.eo import Band, EOExtension
    from pystac.extensions.projection import ProjectionExtension
    from pystac.extensions.raster import RasterBand, RasterExtension

    rng = np.random.default_rng(0)
    cat = pystac.Catalog(id="test", description="local test catalog")
    bands = ["red", "green", "nir"]
    ny, nx, res = 80, 96, 20.0
    transform = from_origin(600_000.0, 4_000_000.0, res, res)
    truth = {}
    for t in range(3):
        date = dt.datetime(2022, 4 + t, 1, 10, 30, tzinfo=dt.UTC)
        item_id = f"scene-{t}"
        item_dir = tmp_path / "catalog" / item_id
        item_dir.mkdir(parents=True)
        item = pystac.Item(
            id=item_id,
            geometry=None,
            bbox=None,
            datetime=date,
            properties={},
        )
        proj = ProjectionExtension.ext(item, add_if_missing=True)
        proj.code, proj.shape, proj.transform = CRS, [ny, nx], list(transform)[:6]
        # geometry/bbox in lon/lat from the grid
        from rasterio.warp import transform_bounds

        b = transform_bounds(
            CRS, "EPSG:4326", 600_000.0, 4_000_000.0 - ny * res, 600_000.0 + nx * res, 4_000_000.0
        )
        item.bbox = list(b)
        item.geometry = {
            "type": "Polygon",
            "coordinates": [[[b[0], b[1]], [b[2], b[1]], [b[2], b[3]], [b[0], b[3]], [b[0], b[1]]]],
        }
        for k, band in enumerate(bands):
            data = rng.integers(1, 10_000, size=(ny, nx), dtype=np.uint16)
            truth[(t, band)] = data
            path = write_tif(item_dir / f"{band}.tif", data, crs=CRS, transform=transform, nodata=0, cog=True)
            asset = pystac.Asset(href=str(path), media_type=pystac.MediaType.COG, roles=["data"])
            item.add_asset(band, asset)
            RasterExtension.ext(asset, add_if_missing=True).bands = [
                RasterBand.create(data_type="uint16", nodata=0)
            ]
            EOExtension.ext(asset, add_if_missing=True).bands = [Band.create(name=f"B{k}", common_name=band)]
        cat.add_item(item)
    cat.normalize_hrefs(str(tmp_path / "catalog"))
    cat.save(catalog_type=pystac.CatalogType.SELF_CONTAINED)
    return {"path": tmp_path / "catalog" / "catalog.json", "bands": bands, "truth": truth, "shape": (ny, nx)}


@pytest.fixture(scope="session")
def local_cluster():
    """One real LocalCluster (2 worker processes, 1 thread each) shared by the whole session."""
    from distributed import Client, LocalCluster

    with LocalCluster(
        n_workers=2,
        threads_per_worker=1,
        processes=True,
        dashboard_address=None,
        scheduler_kwargs={"dashboard_address": "127.0.0.1:0"},
    ) as cluster:
        with Client(cluster, set_as_default=False) as client:
            yield client


def make_checkpoint(
    path,
    name="unet",
    *,
    bands=("blue", "green", "red", "nir"),
    classes=None,
    task="segmentation",
    seed=0,
    gain=1.0,
    **hparams,
):
    """A real, randomly initialised registry model saved as a geoarray checkpoint (BN stats made non-trivial).

    ``gain`` multiplies every convolution's weights: at random init the far field of a deep net is so weak
    (~1e-8 of the output) that a halo too small still matches whole-image inference in float32; a gain > 1
    strengthens the deep paths, which carry the far field, until a missing stride of halo shows.
    """
    import torch

    from geoarray.checkpoint import save_checkpoint
    from geoarray.models import create_model

    meta = dict(hparams.pop("_meta", {}))
    torch.manual_seed(seed)
    hparams.setdefault("in_channels", len(bands))
    model = create_model(name, **hparams)
    g = torch.Generator().manual_seed(seed)
    for mod in model.modules():
        if isinstance(mod, torch.nn.BatchNorm2d | torch.nn.BatchNorm1d):
            mod.running_mean.copy_(torch.randn(mod.running_mean.shape, generator=g) * 0.1)
            mod.running_var.copy_(torch.rand(mod.running_var.shape, generator=g) + 0.5)
        if gain != 1.0 and isinstance(mod, torch.nn.Conv2d | torch.nn.ConvTranspose2d):
            with torch.no_grad():
                mod.weight.mul_(gain)
    return save_checkpoint(
        path,
        model,
        task=task,
        bands=list(bands),
        mean=[0.3] * len(bands),
        std=[0.2] * len(bands),
        classes=classes,
        **meta,
    )


# -- parallel runs (pyproject's addopts: pytest-xdist, -n auto --maxprocesses 4 --dist loadgroup) ----------------
#: the xdist group of the tests that start worker processes (a LocalCluster, DDP ranks over gloo), kill them, or
#: time them / count their page faults: one xdist worker runs them all, one after another, so two clusters never
#: share the cores, a session cluster starts once, and a module's cluster once per module
PROCESSES = pytest.mark.xdist_group("processes")

MYPY_TEST = "test_quality.py::test_mypy_clean"


def _in_xdist_worker(config) -> bool:
    return hasattr(config, "workerinput")


def pytest_configure(config):
    if _in_xdist_worker(config):
        # one torch thread per xdist worker and core: 2 workers x 2 OpenMP threads on 2 cores spin against each
        # other (tests that need another count set it and give it back)
        import os

        import torch

        workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // workers))


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    for item in items:
        if "local_cluster" in getattr(item, "fixturenames", ()):
            item.add_marker(PROCESSES)
    if _in_xdist_worker(config):
        # the seed examples (20-70 s each, the suite's longest) first: started last, one would run alone at the end
        items.sort(key=lambda item: item.path.name != "test_examples.py")  # stable: the rest keep their order
        # the groups, for the controller's scheduler (below)
        import json
        import os

        folder = Path(config.workerinput["geoarray_xdist_dir"])
        groups = {}
        for item in items:
            marks = item.iter_markers("xdist_group")
            names = sorted({str(m.args[0] if m.args else m.kwargs["name"]) for m in marks})
            if names:
                groups[item.nodeid] = "_".join(names)
        part = folder / f"groups-{config.workerinput['workerid']}.json"
        part.write_text(json.dumps(groups))  # every worker collects the same tests: any one's list will do
        os.replace(part, folder / "groups.json")


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    """xdist's loadgroup, with the groups the workers found: xdist 3.8 tells its controller a test's group by
    appending it to the test's node id, which pytest 9.2's structured node ids no longer take, so loadgroup
    silently sent grouped tests to any worker (pytest-dev/pytest-xdist#1386)."""
    if config.getvalue("dist") != "loadgroup":
        return None
    import json

    from xdist.scheduler import LoadGroupScheduling

    class Groups(LoadGroupScheduling):
        _groups: dict[str, str] | None = None

        def _split_scope(self, nodeid: str) -> str:
            if self._groups is None:
                found = Path(config._geoarray_xdist_dir) / "groups.json"
                self._groups = json.loads(found.read_text()) if found.exists() else {}
            group = self._groups.get(nodeid)
            return f"group:{group}" if group else super()._split_scope(nodeid)

    return Groups(config, log)


def pytest_collection_finish(session):
    """Start mypy in the background when tests/test_quality.py::test_mypy_clean is among the tests to run (under
    xdist the controller starts it, once: see pytest_xdist_node_collection_finished)."""
    if _in_xdist_worker(session.config):
        return
    if any(item.nodeid.endswith(MYPY_TEST) for item in session.items):
        from test_quality import start_mypy

        session.config._geoarray_mypy = start_mypy()


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node):
    """xdist's controller: a folder shared with the workers (the groups they collect, mypy's verdict)."""
    import tempfile

    config = node.config
    if getattr(config, "_geoarray_xdist_dir", None) is None:
        config._geoarray_xdist_dir = tempfile.mkdtemp(prefix="geoarray-xdist-")
    node.workerinput["geoarray_xdist_dir"] = config._geoarray_xdist_dir


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_node_collection_finished(node, ids):
    """xdist's controller: start mypy once, when the first worker's collection holds the test that waits for it;
    the worker that runs the test reads its verdict from the shared folder."""
    config = node.config
    wanted = any(i.partition("@")[0].endswith(MYPY_TEST) for i in ids)
    if wanted and getattr(config, "_geoarray_mypy", None) is None:
        from test_quality import start_mypy

        config._geoarray_mypy = start_mypy(verdict_dir=Path(config._geoarray_xdist_dir))


def pytest_unconfigure(config):
    proc = getattr(config, "_geoarray_mypy", None)
    if proc is not None and proc.poll() is None:  # the session stopped before the test that waits for it
        proc.kill()
        proc.wait()
    folder = getattr(config, "_geoarray_xdist_dir", None)
    if folder is not None:
        import shutil

        shutil.rmtree(folder, ignore_errors=True)


from s3_server import s3  # noqa: E402, F401  (the local S3 API fixture, for tests/test_object_storage.py)

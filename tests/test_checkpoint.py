from __future__ import annotations

import hashlib
import json
import os
import pickle
import stat

import numpy as np
import pytest
import torch
from safetensors.torch import load, save_file

import geoarray
from geoarray.checkpoint import read_metadata
from geoarray.errors import CheckpointError
from geoarray.models import create_model


def _trained_like(model):
    """Give BatchNorm non-trivial running stats so a round trip must carry them."""
    g = torch.Generator().manual_seed(1)
    for mod in model.modules():
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.running_mean.copy_(torch.randn(mod.running_mean.shape, generator=g) * 0.1)
            mod.running_var.copy_(torch.rand(mod.running_var.shape, generator=g) + 0.5)
    return model


@pytest.fixture
def unet_ckpt(tmp_path):
    torch.manual_seed(0)
    m = _trained_like(create_model("unet", in_channels=3, num_classes=2, width=4, depth=3))
    p = geoarray.save_checkpoint(
        tmp_path / "m.safetensors",
        m,
        task="segmentation",
        bands=["red", "green", "nir"],
        mean=[1, 2, 3],
        std=[1, 1, 2],
        classes=["bg", "fg"],
        sensor="S2",
        training={"epochs": 3, "seed": 7},
    )
    return p, m


def test_round_trip_gives_identical_outputs(unet_ckpt):
    path, model = unet_ckpt
    ck = geoarray.load_checkpoint(path)
    assert not ck.model.training
    x = torch.randn(2, 3, 40, 40)
    with torch.no_grad():
        torch.testing.assert_close(ck.model(x), model.eval()(x), rtol=0, atol=0)
    assert len(ck.sha256) == 64


def test_metadata_is_self_describing(unet_ckpt):
    path, model = unet_ckpt
    meta = read_metadata(path)
    assert meta["format_version"] == 1
    assert meta["model"] == {"name": "unet", "hparams": model.hparams}
    assert meta["input"]["bands"] == ["red", "green", "nir"]
    assert meta["input"]["mean"] == [1.0, 2.0, 3.0] and meta["input"]["std"] == [1.0, 1.0, 2.0]
    assert meta["input"]["sensor"] == "S2" and meta["input"]["time_series"] is False
    assert meta["output"] == {
        "kind": "segmentation",
        "variables": ["probabilities", "mask"],
        "classes": ["bg", "fg"],
    }
    assert meta["stride"] == 4 and meta["halo"] % 4 == 0 and meta["halo"] >= meta["receptive_field"] > 0
    assert meta["training"] == {"epochs": 3, "seed": 7}
    assert meta["geoarray_version"] == geoarray.__version__


def test_file_without_geoarray_metadata(tmp_path):
    save_file({"w": torch.zeros(3)}, str(tmp_path / "plain.safetensors"))
    with pytest.raises(CheckpointError, match="without geoarray metadata"):
        geoarray.load_checkpoint(tmp_path / "plain.safetensors")


def test_truncated_and_corrupt_files(unet_ckpt, tmp_path):
    path, _ = unet_ckpt
    data = path.read_bytes()
    (tmp_path / "trunc.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError):
        geoarray.load_checkpoint(tmp_path / "trunc.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"hello world, not a checkpoint")
    with pytest.raises(CheckpointError, match=r"not a readable \.safetensors file"):
        geoarray.load_checkpoint(tmp_path / "junk.safetensors")
    with pytest.raises(CheckpointError, match="no checkpoint file"):
        geoarray.load_checkpoint(tmp_path / "missing.safetensors")


class _Boom:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_pickle_renamed_is_refused_and_never_executed(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.safetensors"
    path.write_bytes(pickle.dumps({"state_dict": _Boom(str(marker))}))
    torch.save({"w": torch.zeros(2)}, tmp_path / "torch.safetensors")
    for p in (path, tmp_path / "torch.safetensors"):
        with pytest.raises(CheckpointError, match="never loads pickles"):
            geoarray.load_checkpoint(p)
    assert not marker.exists()


def test_save_checks_bands_and_stats():
    m = create_model("unet", in_channels=3, num_classes=2, width=4, depth=2)
    with pytest.raises(CheckpointError, match="2 bands"):
        geoarray.save_checkpoint("/tmp/x.safetensors", m, task="segmentation", bands=["a", "b"])
    with pytest.raises(CheckpointError, match="values <= 0"):
        geoarray.save_checkpoint(
            "/tmp/x.safetensors", m, task="segmentation", bands=["a", "b", "c"], std=[1, 0, 1]
        )
    with pytest.raises(CheckpointError, match="not a registry model"):
        geoarray.save_checkpoint(
            "/tmp/x.safetensors", torch.nn.Linear(2, 2), task="features", bands=["a", "b"]
        )


def test_metadata_json_is_plain(unet_ckpt):
    path, _ = unet_ckpt
    from safetensors import safe_open

    with safe_open(str(path), framework="numpy") as f:
        doc = json.loads(f.metadata()["geoarray"])
        assert all(np.asarray(f.get_tensor(k)).dtype != object for k in f.keys())
    assert doc["task"] == "segmentation"


def test_checksum_at_save_and_file_sha256_for_provenance(unet_ckpt):
    path, _ = unet_ckpt
    ck = geoarray.load_checkpoint(path)
    assert len(ck.meta["content_sha256"]) == 64
    # what predict records as provenance stays the plain sha256 of the file (`sha256sum` agrees)
    assert ck.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_flipped_bit_anywhere_is_refused(tmp_path):
    torch.manual_seed(0)
    m = create_model("linear", in_channels=2, num_classes=2)
    path = geoarray.save_checkpoint(tmp_path / "m.safetensors", m, task="segmentation", bands=["a", "b"])
    data = path.read_bytes()
    flip = tmp_path / "flip.safetensors"
    accepted = []
    for i in range(len(data)):  # every byte: length prefix, tensor index, geoarray document, padding, weights
        b = bytearray(data)
        b[i] ^= 1 << (i % 8)
        flip.write_bytes(b)
        try:
            geoarray.load_checkpoint(flip)
            accepted.append(i)
        except CheckpointError:
            pass
    assert not accepted, f"bit flips at bytes {accepted} of {len(data)} were loaded"


def test_checkpoint_saved_before_checksums_still_loads(unet_ckpt, tmp_path):
    path, model = unet_ckpt
    raw = path.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    doc = json.loads(json.loads(raw[8 : 8 + n])["__metadata__"]["geoarray"])
    del doc["content_sha256"]
    old = tmp_path / "old.safetensors"
    save_file(load(raw), str(old), metadata={"geoarray": json.dumps(doc)})
    ck = geoarray.load_checkpoint(old)  # no error, and no GeoArrayWarning (pytest makes those errors)
    x = torch.randn(1, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(ck.model(x), model.eval()(x), rtol=0, atol=0)


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o027, 0o640)])
def test_checkpoint_mode_follows_the_umask(tmp_path, umask, mode):
    m = create_model("unet", in_channels=2, num_classes=2, width=4, depth=2)
    old = os.umask(umask)
    try:
        p = geoarray.save_checkpoint(tmp_path / "m.safetensors", m, task="segmentation", bands=["a", "b"])
    finally:
        os.umask(old)
    assert stat.S_IMODE(p.stat().st_mode) == mode
    assert [q.name for q in tmp_path.iterdir()] == ["m.safetensors"]  # no temporary left behind


@pytest.fixture
def tied_model():
    """A registered model with one weight under two names, removed from the registry afterwards."""
    from geoarray.models import register_model
    from geoarray.models._registry import _FACTORIES
    from geoarray.models.base import GeoModel

    class Tied(GeoModel):
        def __init__(self, in_channels: int, num_classes: int) -> None:
            super().__init__()
            self.a = torch.nn.Conv2d(in_channels, in_channels, 1)
            self.b = torch.nn.Conv2d(in_channels, in_channels, 1)
            self.b.weight = self.a.weight
            self.head = torch.nn.Conv2d(in_channels, num_classes, 1)
            self.out_channels = num_classes

        def forward(self, x):
            return self.head(self.b(self.a(x)))

    def tied_test(in_channels: int = 2, num_classes: int = 2) -> Tied:
        return Tied(in_channels, num_classes)

    register_model(tied_test)
    yield "tied_test"
    _FACTORIES.pop("tied_test")


def test_tied_weights_are_stored_once_and_tied_again(tied_model, tmp_path):
    from geoarray.models import create_model as build

    torch.manual_seed(0)
    m = build(tied_model)
    p = geoarray.save_checkpoint(tmp_path / "t.safetensors", m, task="segmentation", bands=["x", "y"])
    stored = load(p.read_bytes())
    assert "a.weight" in stored and "b.weight" not in stored
    ck = geoarray.load_checkpoint(p)
    assert ck.model.a.weight is ck.model.b.weight
    x = torch.randn(1, 2, 4, 4)
    with torch.no_grad():
        torch.testing.assert_close(ck.model(x), m.eval()(x), rtol=0, atol=0)

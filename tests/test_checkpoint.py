from __future__ import annotations

import json
import os
import pickle
import stat

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

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

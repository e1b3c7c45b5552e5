"""Evaluation protocols on a pretrained encoder (issue 10): ``fit(task="linear_probe" | "finetune", init=CKPT)``
and ``label_fraction``, on a pixel time-series encoder (Barlow Twins) and on a chip encoder (resnet18)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import geoarray
from geoarray.checkpoint import file_sha256, load_checkpoint, read_metadata
from geoarray.datasets import synthetic_cube

PIX = {"chip_size": 16, "batch_size": 256, "pixels_per_chip": 64, "progress": False}


def _tensors(path):
    return load_checkpoint(path).model.state_dict()


@pytest.fixture(scope="module")
def pixel_cube():
    return synthetic_cube(size=96, n_times=6, seed=2, chunks=48)


@pytest.fixture(scope="module")
def bt_ckpt(pixel_cube, tmp_path_factory):
    """A Barlow Twins pixel encoder (BatchNorm inside, so its running statistics are part of the proof)."""
    d = tmp_path_factory.mktemp("bt")
    return geoarray.fit(
        pixel_cube.drop_vars("labels"),
        task="barlow_twins",
        model="pixel_cnn",
        model_kwargs={"width": 16, "out_channels": 16},
        task_kwargs={"view_dates": 3},
        epochs=1,
        lr=3e-3,
        out=str(d / "bt.safetensors"),
        **PIX,
    )


def test_linear_probe_leaves_every_encoder_tensor_bit_for_bit(pixel_cube, bt_ckpt, tmp_path):
    out = geoarray.fit(
        pixel_cube,
        task="linear_probe",
        init=bt_ckpt,
        epochs=2,
        lr=1e-2,
        out=str(tmp_path / "lp.safetensors"),
        **PIX,
    )
    init, probe = _tensors(bt_ckpt), _tensors(out)
    assert set(probe) - set(init) == {"head.weight", "head.bias"}
    buffers = [k for k in init if "running_" in k or "num_batches_tracked" in k]
    assert len(buffers) == 3 * 3  # the three BatchNorm layers' mean, var and step count
    assert (
        int(init[buffers[-1]]) > 0
    )  # the statistics had moved in pretraining: a frozen run must not move them
    for k in init:  # weights and buffers, bit for bit
        assert torch.equal(init[k], probe[k]), k
    assert probe["head.weight"].shape == (5, 16)
    meta = read_metadata(out)
    assert meta["task"] == "pixel_classification" and meta["output"]["kind"] == "segmentation"
    assert meta["model"]["name"] == "pixel_cnn" and meta["model"]["hparams"]["num_classes"] == 5
    tr, src = meta["training"], read_metadata(bt_ckpt)
    assert tr["protocol"] == "linear_probe" and tr["init_sha256"] == file_sha256(bt_ckpt)
    # normalised with the encoder's statistics, not the labelled cube's own
    assert meta["input"]["mean"] == src["input"]["mean"] and meta["input"]["std"] == src["input"]["std"]
    # an ordinary classifier checkpoint: predict writes a class map and probabilities
    pred = geoarray.predict(pixel_cube.chunk(time=-1), out, progress=False)
    assert pred["mask"].dims == ("y", "x") and pred["probabilities"].sizes["class"] == 5
    assert set(np.unique(pred["mask"].values)) <= {0, 1, 2, 3, 4, 255}


def test_finetune_trains_on_one_percent_of_the_labelled_tiles(pixel_cube, bt_ckpt, tmp_path):
    from geoarray.training import FitConfig
    from geoarray.training.prepare import prepare
    from geoarray.training.protocols import resolve_init

    runs = {}
    for f in (1.0, 0.5, 0.01):
        runs[f] = geoarray.fit(
            pixel_cube,
            task="finetune",
            init=bt_ckpt,
            label_fraction=f,
            loss="focal",
            epochs=1,
            out=str(tmp_path / f"ft{f}.safetensors"),
            **PIX,
        )
    n = read_metadata(runs[1.0])["training"]["labelled_train_tiles"]
    assert n >= 5  # enough tiles for the fractions to differ
    for f, path in runs.items():
        tr = read_metadata(path)["training"]
        assert tr["labelled_train_tiles"] == n and tr["label_fraction"] == f
        assert tr["label_tiles"] == max(1, round(f * n)), f
    # count the tiles the 1 % run's chips come from, independently of the recorded number
    cfg = resolve_init(pixel_cube, FitConfig(task="finetune", init=str(bt_ckpt), label_fraction=0.01, **PIX))
    plan = prepare(pixel_cube, cfg).plan
    train_tiles = {
        i for w in plan.train for i, t in enumerate(plan.tiles) if t.y0 <= w.y < t.y1 and t.x0 <= w.x < t.x1
    }
    assert len(train_tiles) == max(1, round(0.01 * n)) == 1
    assert not train_tiles & set(plan.val_tiles)
    # fine-tuning trains the encoder too (at lr / 10)
    init, ft = _tensors(bt_ckpt), _tensors(runs[0.01])
    assert not torch.equal(init["proj.weight"], ft["proj.weight"])


def test_init_gives_the_run_its_model_bands_and_sensor(pixel_cube, tmp_path):
    from geoarray.checkpoint import save_checkpoint
    from geoarray.models import create_model
    from geoarray.training import FitConfig
    from geoarray.training.protocols import resolve_init

    enc = create_model("pixel_cnn", in_channels=2, width=8, out_channels=8)
    init = str(
        save_checkpoint(
            tmp_path / "e.safetensors", enc, task="barlow_twins", bands=["nir", "red"], sensor="S2"
        )
    )
    # model and model_kwargs may be left out, or given as the encoder's (out_channels is no UNet hparam)
    given = (
        {},
        {"model_kwargs": {"out_channels": 8}},
        {"model": "pixel_cnn", "model_kwargs": {"num_classes": 3}},
    )
    for opts in given:
        cfg = resolve_init(pixel_cube, FitConfig(task="linear_probe", init=init, **opts))
        assert cfg.model == "pixel_cnn" and cfg.bands == ["nir", "red"] and cfg.sensor == "S2"
        assert cfg.model_kwargs == {k: v for k, v in enc.hparams.items() if k != "num_classes"}


def test_the_training_loop_uses_the_backbone_learning_rate(pixel_cube, bt_ckpt, tmp_path):
    """backbone_lr=0: the encoder's weights stay bit for bit (its BatchNorm statistics still follow the data,
    as fine-tuning runs the encoder in train mode), while the head learns at lr."""
    out = geoarray.fit(
        pixel_cube,
        task="finetune",
        init=bt_ckpt,
        task_kwargs={"backbone_lr": 0.0},
        epochs=1,
        lr=1e-2,
        out=str(tmp_path / "ft.safetensors"),
        **PIX,
    )
    init, ft = _tensors(bt_ckpt), _tensors(out)
    params = dict(load_checkpoint(bt_ckpt).model.named_parameters())
    assert params and all(torch.equal(init[k], ft[k]) for k in params)
    assert not torch.equal(init["net.1.running_mean"], ft["net.1.running_mean"])


def test_finetune_gives_the_backbone_its_own_learning_rate():
    from geoarray.models import create_model
    from geoarray.tasks import get_task

    m = create_model("pixel_cnn", in_channels=2, width=4, out_channels=4, num_classes=3)
    head, back = get_task("finetune").param_groups(m, 1e-3)
    assert head["lr"] == 1e-3 and back["lr"] == pytest.approx(1e-4)
    assert [id(p) for p in head["params"]] == [id(m.head.weight), id(m.head.bias)]
    assert len(head["params"]) + len(back["params"]) == len(list(m.parameters()))
    _, back = get_task("finetune", backbone_lr=0.0).param_groups(m, 1e-3)
    assert back["lr"] == 0.0


def test_protocols_on_a_chip_encoder_with_region_labels(tmp_path):
    from helpers import write_west_east_regions

    from geoarray.checkpoint import save_checkpoint
    from geoarray.models import create_model

    cube = synthetic_cube(size=128, n_times=1, seed=1, chunks=64).drop_vars("labels")
    east = (cube.x >= cube.x[64]).astype("float32")
    cube["imagery"] = cube.imagery + 0.3 * east  # the two regions differ
    regions = write_west_east_regions(cube, tmp_path / "r.geojson", split=64)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        # a chip classifier of 3 classes as the encoder: its head is dropped, the run's has the regions' 2
        enc = create_model("resnet18", in_channels=4, num_classes=3, width=4)
        enc.train()
        for _ in range(3):  # BatchNorm statistics that are not the defaults
            enc(torch.randn(4, 4, 32, 32))
    enc.eval()
    mean, std = [0.1, 0.2, 0.3, 0.4], [0.5, 0.5, 0.5, 0.5]
    init = save_checkpoint(
        tmp_path / "enc.safetensors",
        enc,
        task="classification",
        bands=list(cube.band.values),
        mean=mean,
        std=std,
        classes=["a", "b", "c"],
    )
    common = dict(
        init=str(init),
        regions=regions,
        region_property="k",
        chip_size=32,
        batch_size=8,
        epochs=1,
        progress=False,
    )
    lp = geoarray.fit(cube, task="linear_probe", out=str(tmp_path / "lp.safetensors"), lr=1e-2, **common)
    a, b = _tensors(init), _tensors(lp)
    assert a["head.weight"].shape == (3, 32) and b["head.weight"].shape == (2, 32)
    assert all(torch.equal(a[k], b[k]) for k in a if not k.startswith("head."))
    meta = read_metadata(lp)
    assert meta["task"] == "classification" and meta["output"]["classes"] == ["east", "west"]
    assert meta["input"]["mean"] == mean and meta["input"]["std"] == std
    ft = geoarray.fit(
        cube, task="finetune", out=str(tmp_path / "ft.safetensors"), label_fraction=0.5, **common
    )
    tr = read_metadata(ft)["training"]
    assert tr["protocol"] == "finetune" and tr["label_tiles"] == max(
        1, round(0.5 * tr["labelled_train_tiles"])
    )
    b = _tensors(ft)
    assert not torch.equal(a["stem.0.weight"], b["stem.0.weight"])


def test_pixel_encoders_get_their_dates_and_validity_through_ddp():
    """fit(client=) wraps the trained module in DDP, which hides the model's input kind: a pixel model (a
    protocol's FrozenEncoder too) must still be called with its dates and validity (one real gloo rank)."""
    import socket

    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from geoarray.chips import Batch
    from geoarray.models import create_model
    from geoarray.tasks import get_task
    from geoarray.tasks.finetune import FrozenEncoder

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    g = torch.Generator().manual_seed(0)
    x, v = torch.randn(5, 6, 2, generator=g), torch.rand(5, 6, generator=g) > 0.3
    d = torch.arange(6.0).repeat(5, 1) * 30
    batch = Batch(x=x, y=None, dates=d, valid=v)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    try:
        with torch.random.fork_rng():
            torch.manual_seed(0)
            m = create_model("pixel_cnn", in_channels=2, width=4, out_channels=4, num_classes=3).eval()
        want = m(x, d, v)
        assert not torch.equal(want, m(x))  # without dates and validity the output differs
        for net in (m, FrozenEncoder(m)):
            got = get_task("pixel_classification").forward(DistributedDataParallel(net), batch)
            assert torch.equal(got, want)
    finally:
        dist.destroy_process_group()

from __future__ import annotations

import pytest
import torch

from geoarray.errors import ModelError
from geoarray.models import create_model, list_models, model_info
from geoarray.models.base import fuse_batchnorm


def test_registry_lists_every_family():
    names = list_models()
    for n in (
        "unet",
        "res_unet",
        "attention_unet",
        "pixel_mlp",
        "pixel_cnn",
        "pixel_transformer",
        "resnet18",
        "resnet50",
    ):
        assert n in names
    assert list_models("pixel_*") == ["pixel_cnn", "pixel_mlp", "pixel_transformer"]
    assert model_info("unet")["depth"] == 5


def test_unknown_model_and_hparam():
    with pytest.raises(ModelError, match=r"unknown model 'unett'.*Did you mean 'unet'"):
        create_model("unett")
    with pytest.raises(ModelError, match=r"has no hparam\(s\) \['layers'\]"):
        create_model("unet", layers=3)
    with pytest.raises(ModelError, match="depth=9"):
        create_model("unet", depth=9)


def test_unet_seed004_shape_and_logits():
    m = create_model("unet", in_channels=20, num_classes=10, width=8).eval()
    assert m.hparams == {"in_channels": 20, "num_classes": 10, "depth": 5, "width": 8, "dropout": 0.2}
    assert m.stride == 16
    with torch.no_grad():
        y = m(torch.randn(2, 20, 224, 224) * 3)
    assert y.shape == (2, 10, 224, 224)
    assert (y < 0).any()  # logits: no sigmoid (or softmax) inside the model
    dropouts = [mod for mod in m.encoder.modules() if isinstance(mod, torch.nn.Dropout2d)]
    assert len(dropouts) == 4 and all(d.p == 0.2 for d in dropouts)


def test_models_accept_sizes_that_are_not_multiples_of_the_stride():
    for name in ("unet", "res_unet"):
        kw = {"encoder": "resnet18"} if name == "res_unet" else {}
        m = create_model(name, in_channels=3, num_classes=4, width=4, **kw).eval()
        with torch.no_grad():
            assert m(torch.randn(1, 3, 37, 50)).shape == (1, 4, 37, 50)


def test_res_unet_encoders_and_stem():
    for enc in ("resnet18", "resnet50"):
        m = create_model("res_unet", in_channels=20, num_classes=10, width=8, encoder=enc).eval()
        with torch.no_grad():
            assert m(torch.randn(1, 20, 64, 64)).shape == (1, 10, 64, 64)
        assert isinstance(m.stem_short[0], torch.nn.Conv2d) and m.stem_short[0].kernel_size == (1, 1)
        assert m.stem_short[0].in_channels == 20
        drops = [mod for mod in m.layers[2].modules() if isinstance(mod, torch.nn.Dropout2d)]
        assert drops and not [mod for mod in m.layers[0].modules() if isinstance(mod, torch.nn.Dropout2d)]


def test_resnet_classifiers_take_n_bands():
    for name in ("resnet18", "resnet50"):
        m = create_model(name, in_channels=5, num_classes=31, width=8).eval()
        with torch.no_grad():
            assert m(torch.randn(2, 5, 64, 64)).shape == (2, 31)


@pytest.mark.parametrize(
    ("name", "kw"),
    [
        ("unet", {"depth": 3, "width": 4}),
        ("unet", {"depth": 5, "width": 4}),
        ("res_unet", {"encoder": "resnet18", "width": 4}),
    ],
)
def test_receptive_field_matches_brute_force_perturbation(name, kw):
    """The measured radius is exact: a pixel r away changes the output, r + 1 away does not.

    Perturbed in float64 by a large step: at the edge of res_unet's field the effect is ~1e-17 of the output
    (it passes ~30 layers of random weights), below float32's resolution, yet real (seen in float64).
    """
    torch.manual_seed(0)
    m = create_model(name, in_channels=2, num_classes=2, **kw).eval()
    r, s = m.receptive_field(), m.stride  # measured in float32, as predict uses it
    m = m.double()
    size = 2 * (r + 2 * s) // s * s + 2 * s
    c0 = size // 2 // s * s
    x = torch.randn(1, 2, size, size, dtype=torch.float64)
    with torch.no_grad():
        base = m(x)[..., c0 : c0 + s, c0 : c0 + s]

    def changed(row: int, col: int) -> bool:
        x2 = x.clone()
        x2[..., row, col] += 1e6
        with torch.no_grad():
            out = m(x2)[..., c0 : c0 + s, c0 : c0 + s]
        return bool((out - base).abs().max() > 0)

    mid = c0 + s // 2
    # a pixel r away from the stride cell reaches it; r + 1 away does not (top, bottom, left, right)
    assert (
        changed(c0 - r, mid)
        or changed(c0 + s - 1 + r, mid)
        or changed(mid, c0 - r)
        or changed(mid, c0 + s - 1 + r)
    )
    for row, col in ((c0 - r - 1, mid), (c0 + s + r, mid), (mid, c0 - r - 1), (mid, c0 + s + r)):
        assert not changed(row, col)
    assert m.halo() % s == 0 and m.halo() >= r


def test_attention_unet_mixes_frames_and_encodes_dates():
    torch.manual_seed(0)
    x = torch.randn(1, 3, 2, 32, 32)
    dates = torch.tensor([[10.0, 100.0, 200.0]])
    m = create_model("attention_unet", in_channels=2, num_classes=2, width=4, depth=3).eval()
    m0 = create_model(
        "attention_unet",
        in_channels=2,
        num_classes=2,
        width=4,
        depth=3,
        num_attention_layers=0,
        positional_encoding="none",
    ).eval()
    with torch.no_grad():
        y = m(x, dates=dates)
        assert y.shape == (1, 3, 2, 32, 32)
        x2 = x.clone()
        x2[:, 2] += 1.0
        assert (m(x2, dates=dates)[:, 0] - y[:, 0]).abs().max() > 1e-6  # frame 0 sees frame 2
        y0 = m0(x)
        assert (m0(x2)[:, 0] - y0[:, 0]).abs().max() == 0  # no attention: frames independent
        assert (m(x, dates=dates + 30) - y).abs().max() > 1e-6  # dates matter
    with pytest.raises(ModelError, match="num_attention_layers=5"):
        create_model("attention_unet", num_attention_layers=5)
    for pe in ("concat", "add", "none"):
        mm = create_model(
            "attention_unet", in_channels=2, num_classes=2, width=4, depth=3, positional_encoding=pe
        )
        assert mm.eval()(x, dates=dates).shape == (1, 3, 2, 32, 32)


@pytest.mark.parametrize("name", ["pixel_mlp", "pixel_cnn", "pixel_transformer"])
def test_pixel_models_ignore_invalid_dates(name):
    torch.manual_seed(0)
    kw = {"num_timesteps": 6} if name == "pixel_mlp" else {}
    m = create_model(name, in_channels=3, out_channels=16, **kw).eval()
    x = torch.randn(4, 6, 3)
    doy = torch.linspace(1, 300, 6).repeat(4, 1)
    valid = torch.ones(4, 6, dtype=torch.bool)
    valid[:, 2] = False
    x2 = x.clone()
    x2[:, 2] = 1e3  # garbage at an invalid date
    with torch.no_grad():
        a, b = m(x, doy, valid), m(x2, doy, valid)
    assert a.shape == (4, 16)
    torch.testing.assert_close(a, b)
    mc = create_model(name, in_channels=3, out_channels=16, num_classes=5, **kw).eval()
    assert mc(x, doy, valid).shape == (4, 5) and mc.out_channels == 5


@pytest.mark.parametrize(
    ("name", "kw", "shape", "extra"),
    [
        ("unet", {"depth": 3, "width": 8}, (2, 4, 40, 40), {}),
        ("res_unet", {"encoder": "resnet18", "width": 8}, (1, 4, 64, 64), {}),
        ("pixel_cnn", {"out_channels": 6}, (8, 5, 4), "pixels"),
    ],
)
def test_fuse_batchnorm_keeps_outputs(name, kw, shape, extra):
    torch.manual_seed(1)
    m = create_model(name, in_channels=4, **kw)
    for mod in m.modules():  # non-trivial statistics, as after training
        if isinstance(mod, torch.nn.modules.batchnorm._BatchNorm):
            mod.running_mean.uniform_(-1, 1)
            mod.running_var.uniform_(0.5, 2.0)
            torch.nn.init.uniform_(mod.weight, 0.5, 1.5)
            torch.nn.init.uniform_(mod.bias, -0.5, 0.5)
    m.eval()
    x = torch.randn(*shape)
    args = (x, torch.linspace(1, 300, shape[1]).repeat(shape[0], 1), torch.ones(shape[:2], dtype=torch.bool))
    args = args if extra == "pixels" else (x,)

    def n_bn() -> int:
        return sum(isinstance(mod, torch.nn.modules.batchnorm._BatchNorm) for mod in m.modules())

    bn_before = n_bn()
    with torch.no_grad():
        before = m(*args)
        n = fuse_batchnorm(m)
        after = m(*args)
    assert n >= 2 and n_bn() == bn_before - n  # every folded BatchNorm is gone
    torch.testing.assert_close(after, before, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="eval mode"):
        fuse_batchnorm(m.train())


def test_fuse_batchnorm_leaves_unsafe_pairs_alone():
    class Residual(torch.nn.Sequential):  # overrides forward: its children's order is not the data flow
        def forward(self, x):
            y = self[0](x)
            return self[1](y) + y

    m = torch.nn.ModuleDict(
        {
            "res": Residual(torch.nn.Conv2d(3, 3, 1), torch.nn.BatchNorm2d(3)),
            "lin": torch.nn.Sequential(
                torch.nn.Linear(8, 8), torch.nn.BatchNorm1d(8)
            ),  # BN over axis 1 of 3-D
        }
    )
    for bn in (m["res"][1], m["lin"][1]):
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2.0)
    m.eval()
    x, z = torch.randn(2, 3, 5, 5), torch.randn(4, 8, 8)
    with torch.no_grad():
        before = (m["res"](x), m["lin"](z))
        assert fuse_batchnorm(m) == 0
        torch.testing.assert_close(m["res"](x), before[0])
        torch.testing.assert_close(m["lin"](z), before[1])

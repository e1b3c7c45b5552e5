"""The strip measurement of the receptive field gives the values of the square one, for every architecture.

The table was measured with the square-input probe this replaced (commit 5de6688, ``receptive_field`` in
geoarray/models/base.py): a square input of 64..2048 px, doubled until the gradient footprint of one stride-cell
of outputs no longer touched its border. Same seed (``torch.manual_seed(0)`` before ``create_model``).
``test_receptive_field_matches_brute_force_perturbation`` (test_models.py) checks independently that such a
radius is exact, and the seam tests in test_predict.py that predict with it is seamless.
"""

from __future__ import annotations

import pytest
import torch

from geoarray.models import create_model, list_models

SLOW = pytest.mark.slow
# (model, hparams, receptive field, halo), measured by the square probe
CASES = [
    ("linear", {"in_channels": 5}, 0, 0),
    ("unet", {"depth": 2, "width": 4}, 8, 8),
    ("unet", {"depth": 3, "width": 4, "in_channels": 1}, 22, 24),
    ("unet", {"depth": 4, "width": 4}, 46, 48),
    ("unet", {"depth": 5, "width": 4}, 94, 96),
    ("unet", {"depth": 5, "width": 8, "dropout": 0.0}, 94, 96),
    ("unet", {"depth": 6, "width": 4}, 190, 192),
    ("unet", {"depth": 7, "width": 4}, 382, 384),
    ("res_unet", {"encoder": "resnet18", "width": 4}, 140, 144),
    ("res_unet", {"encoder": "resnet50", "width": 4}, 138, 144),
    ("attention_unet", {"depth": 1, "width": 4, "num_attention_layers": 1}, 2, 2),
    ("attention_unet", {"depth": 3, "width": 4, "positional_encoding": "concat"}, 22, 24),
    ("attention_unet", {"depth": 5, "width": 4}, 94, 96),
    ("attention_unet", {"depth": 4, "width": 4, "num_attention_layers": 0, "positional_encoding": "none"}, 46, 48),
    ("attention_unet", {"depth": 4, "width": 4, "date_encoding": "days", "num_attention_layers": 4}, 46, 48),
    ("pretext_unet", {"width": 4}, 46, 48),
    ("pretext_unet", {"depth": 2, "width": 4, "pca_dim": 4}, 8, 8),
    ("pretext_unet", {"depth": 5, "width": 4, "heads": "temporal_association"}, 94, 96),
    ("pixel_mlp", {}, 0, 0),
    ("pixel_cnn", {}, 0, 0),
    ("pixel_transformer", {}, 0, 0),
    ("resnet18", {"width": 8}, 0, 0),
    ("resnet50", {"width": 8}, 0, 0),
    # the registry's default widths (the square probe took 3-150 s of CPU on these; the strips 0.3-5 s)
    pytest.param("unet", {}, 94, 96, marks=SLOW),
    pytest.param("attention_unet", {}, 94, 96, marks=SLOW),
    pytest.param("res_unet", {"encoder": "resnet18"}, 140, 144, marks=SLOW),
    pytest.param("res_unet", {}, 138, 144, marks=SLOW),
]


def test_the_table_covers_every_registered_model():
    names = {c.values[0] if hasattr(c, "values") else c[0] for c in CASES}
    assert names == set(list_models())


@pytest.mark.parametrize(("name", "hparams", "rf", "halo"), CASES)
def test_receptive_field_equals_the_square_probe(name, hparams, rf, halo):
    torch.manual_seed(0)
    m = create_model(name, **hparams)
    m.train()
    flags = [p.requires_grad for p in m.parameters()]
    threads = torch.get_num_threads()
    assert (m.receptive_field(), m.halo()) == (rf, halo)
    # the probe leaves the model as it found it: training mode, parameters trainable, no gradient left behind
    assert m.training and [p.requires_grad for p in m.parameters()] == flags
    assert all(p.grad is None for p in m.parameters())
    assert torch.get_num_threads() == threads

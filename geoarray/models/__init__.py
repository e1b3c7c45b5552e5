"""The model registry: ``create_model(name, **hparams)`` and ``list_models(pattern)``, timm style.

Every model is a plain ``torch.nn.Module`` that knows its registry ``name``, its ``hparams``, how it takes
input (``input_kind``), its spatial ``stride`` and its receptive field. Importing this package imports torch.
"""

from __future__ import annotations

from geoarray.models._registry import create_model, list_models, model_info, register_model
from geoarray.models.base import GeoModel, receptive_field

# Importing the family modules registers their factories.
from geoarray.models import attention, pixel, resnet, unet  # noqa: F401  isort: skip
from geoarray.models import pretext  # noqa: F401  isort: skip

__all__ = ["GeoModel", "create_model", "list_models", "model_info", "receptive_field", "register_model"]

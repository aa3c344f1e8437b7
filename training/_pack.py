"""The pack's sibling libraries as ``training`` sees them, however it was imported.

Inside ComfyUI the pack is one package, so this library is ``<pack>.training`` and its siblings are
``<pack>.model_patches`` and ``<pack>.rendering`` (the very modules the nodes use: one copy of every
class). Run on its own (tests, ``python -m training``, torchrun) the pack's folder is on ``sys.path`` and
they are the top-level ``model_patches`` and ``rendering``. Every name ``training`` takes from them is
imported here, so the rest of the library reads ``from ._pack import ...``.
"""
from __future__ import annotations

import importlib

_PACK = __package__.rpartition(".")[0]  # "" when training is a top-level package


def sibling(name: str):
    """The pack's module ``name`` ("model_patches", "rendering.views", ...)."""
    return importlib.import_module(f"{_PACK}.{name}" if _PACK else name)


model_patches = sibling("model_patches")
rendering = sibling("rendering")
_adapter = sibling("model_patches.adapter")
_release_format = sibling("model_patches.release_format")
_trainable = sibling("model_patches.trainable")

RefAny3DError = model_patches.RefAny3DError
ADAPTER_NAMES = _adapter.ADAPTER_NAMES
RELEASE_FILES = _release_format.RELEASE_FILES
LossOut = _trainable.LossOut
TrainableAdapter = _trainable.TrainableAdapter
Unconditional = _trainable.Unconditional
learning_statistics = _trainable.learning_statistics
training_loss = _trainable.training_loss
training_mode = _trainable.training_mode
RANK = _trainable.RANK
join_inside = rendering.join_inside
MAX_ABS_WEIGHT = sibling("model_patches.weight_values").MAX_ABS_WEIGHT

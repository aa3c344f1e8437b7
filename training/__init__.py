"""RefAny3D training (docs/method.md §6): a plain library on ``model_patches`` (never ``nodes``).

The model math (trainable adapter, loss) lives in :mod:`model_patches.training`; here are the loop
(:mod:`training.loop`) and saving (:mod:`training.checkpoint`).
"""
from .checkpoint import load_state, save_release, save_state
from .loop import PRODIGY_MISSING, TrainConfig, Trainer, make_optimizer

__all__ = ["PRODIGY_MISSING", "TrainConfig", "Trainer", "load_state", "make_optimizer", "save_release", "save_state"]

"""RefAny3D training (docs/method.md §6): a plain library on ``model_patches`` (never ``nodes``).

The model math (trainable adapter, loss) lives in :mod:`model_patches.trainable`; here are the loop
(:mod:`training.loop`, one process or many under torchrun through :mod:`training.distributed`),
saving (:mod:`training.checkpoint`), encoded datasets (:mod:`training.encoded`) and the command
line (:mod:`training.cli`, ``python -m training``).
"""
from .checkpoint import load_state, save_release, save_state
from .distributed import DistInfo, init_distributed, teardown
from .encoded import EncodedDataset, EncodingCancelled, encode_dataset, is_encoded
from .loop import (PRODIGY_MISSING, RELEASE_DTYPES, TrainConfig, Trainer, TrainingDiverged, make_optimizer,
                   option_table, write_embedder_pth)

__all__ = ["DistInfo", "EncodedDataset", "EncodingCancelled", "PRODIGY_MISSING", "RELEASE_DTYPES", "TrainConfig",
           "Trainer", "TrainingDiverged", "encode_dataset", "init_distributed", "is_encoded", "load_state", "make_optimizer",
           "option_table", "save_release", "save_state", "teardown", "write_embedder_pth"]

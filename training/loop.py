"""A minimal single-process RefAny3D trainer (docs/method.md §6).

:class:`Trainer` runs :func:`model_patches.training.training_loss` on a ComfyUI FLUX.1 with a
:class:`~model_patches.training.TrainableAdapter`: AdamW, or Prodigy (the release's optimizer,
from the optional ``prodigyopt`` package), gradient clipping, gradient accumulation, gradient
checkpointing, a data order and every random draw keyed on the seed, a Cancel hook called between
steps, and saving through :mod:`training.checkpoint`. Only the adapter is trained: the model's own
parameters are frozen (``requires_grad_(False)``).
"""
from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from model_patches.errors import RefAny3DError
from model_patches.training import TrainableAdapter, Unconditional, training_loss, training_mode

from . import checkpoint as ckpt

OPTIMIZERS = ("adamw", "prodigy")
PRODIGY_MISSING = ("the Prodigy optimizer needs the optional package 'prodigyopt', which is not installed: "
                   "pip install prodigyopt (or choose optimizer 'adamw')")


@dataclass
class TrainConfig:
    seed: int = 0
    optimizer: str = "adamw"        # "adamw" or "prodigy" (the release: lr 1, bias correction, safeguard warmup)
    lr: float | None = None          # None: 1e-4 for AdamW, 1.0 for Prodigy
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.999)
    grad_clip: float = 0.5           # max gradient norm; 0 disables
    accumulation: int = 1            # micro-batches per optimizer step
    batch_size: int = 1              # samples per micro-batch
    checkpointing: bool = True       # gradient checkpointing on every block
    p_drop_prompt: float = 0.1
    p_drop_references: float = 0.1
    fixed_noise: bool = False        # diagnostics (overfit one sample): every step reuses step 0's draws
    save_every: int = 0              # save the release files and a state every N steps (0: never)
    keep_states: int = 3

    def to_json(self) -> dict:
        return {**dataclasses.asdict(self), "betas": list(self.betas)}

    @classmethod
    def from_json(cls, values: dict) -> TrainConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        out = cls(**{k: v for k, v in values.items() if k in names})
        out.betas = tuple(out.betas)
        return out


def make_optimizer(params, config: TrainConfig) -> torch.optim.Optimizer:
    """AdamW, or Prodigy as the release ran it; a missing ``prodigyopt`` is an error, never a fallback."""
    params = list(params)
    if config.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=1e-4 if config.lr is None else config.lr, betas=tuple(config.betas),
                                 weight_decay=config.weight_decay)
    if config.optimizer == "prodigy":
        try:
            from prodigyopt import Prodigy
        except ImportError:
            raise RefAny3DError(PRODIGY_MISSING) from None
        return Prodigy(params, lr=1.0 if config.lr is None else config.lr, betas=tuple(config.betas),
                       weight_decay=config.weight_decay, use_bias_correction=True, safeguard_warmup=True)
    raise RefAny3DError(f"unknown optimizer {config.optimizer!r}: expected one of {', '.join(OPTIMIZERS)}")


def collate(samples: Sequence[dict], indices: Sequence[int], device) -> dict:
    """One batch from single samples (tensors without the batch dimension)."""
    keys = [k for k in samples[0] if isinstance(samples[0][k], torch.Tensor)]
    batch = {k: torch.stack([s[k] for s in samples]).to(device) for k in keys}
    batch["index"] = list(indices)
    return batch


class Trainer:
    """Single-process training of ``adapter`` on ``flux`` (``comfy.ldm.flux.model.Flux``).

    ``dataset``: a sequence of samples, each a dict of tensors without the batch dimension (``x0_rgb``,
    ``x0_point_map`` 16×H×W latents in the model's scale, ``refs_rgb``, ``refs_point_map`` N×16×h×w,
    ``context`` L×C, ``pooled`` P). ``uncond``: what the dropouts put in. ``cancel``: called between
    steps and micro-batches; it may raise (ComfyUI's interrupt) or return True to stop after the step.
    ``out_dir``: where ``save_every`` writes ``release-<step>/`` and ``state-<step>/``."""

    def __init__(self, flux, adapter: TrainableAdapter, dataset: Sequence[dict], uncond: Unconditional | None,
                 config: TrainConfig | None = None, out_dir=None, cancel: Callable[[], bool | None] | None = None):
        self.flux, self.adapter, self.dataset, self.uncond = flux, adapter, dataset, uncond
        self.config = config or TrainConfig()
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.cancel = cancel
        if len(dataset) == 0:
            raise RefAny3DError("the training set is empty")
        flux.requires_grad_(False)
        self.device = next(flux.parameters()).device
        adapter.to(self.device)
        self.optimizer = make_optimizer(adapter.parameters(), self.config)
        self.step = 0
        self.losses: list[float] = []

    # ---- data order: an epoch-wise permutation keyed on the seed

    def indices(self, step: int, micro: int) -> list[int]:
        n, bs = len(self.dataset), self.config.batch_size
        first = (step * self.config.accumulation + micro) * bs
        out = []
        for k in range(first, first + bs):
            epoch, pos = divmod(k, n)
            order = list(range(n))
            random.Random(f"refany3d-order:{self.config.seed}:{epoch}").shuffle(order)
            out.append(order[pos])
        return out

    def _stop_requested(self) -> bool:
        return bool(self.cancel()) if self.cancel is not None else False

    def train_step(self) -> float:
        """One optimizer step (``accumulation`` micro-batches); returns its mean loss."""
        cfg = self.config
        self.optimizer.zero_grad(set_to_none=True)
        total = 0.0
        noise_step = 0 if cfg.fixed_noise else self.step
        with training_mode():
            for micro in range(cfg.accumulation):
                if micro:
                    self._stop_requested()  # an interrupt may raise here; a plain stop finishes the step
                idx = self.indices(self.step, micro)
                batch = collate([self.dataset[i] for i in idx], idx, self.device)
                out = training_loss(self.flux, self.adapter, batch, cfg.seed, noise_step, self.uncond,
                                    p_drop_prompt=cfg.p_drop_prompt, p_drop_references=cfg.p_drop_references,
                                    checkpoint=cfg.checkpointing)
                (out.loss / cfg.accumulation).backward()
                total += float(out.loss.detach()) / cfg.accumulation
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.adapter.parameters(), cfg.grad_clip)
        self.optimizer.step()
        self.step += 1
        self.losses.append(total)
        if cfg.save_every and self.out_dir is not None and self.step % cfg.save_every == 0:
            self.save()
        return total

    def train(self, steps: int) -> list[float]:
        """Runs until ``self.step == steps`` or the Cancel hook asks to stop; returns the losses of this call."""
        start = len(self.losses)
        while self.step < steps:
            if self._stop_requested():
                break
            self.train_step()
        return self.losses[start:]

    # ---- saving and resuming

    def save(self, out_dir=None) -> Path:
        """The release files in ``release-<step>/`` and a resumable ``state-<step>/``; returns the state."""
        out = Path(out_dir) if out_dir is not None else self.out_dir
        if out is None:
            raise RefAny3DError("no output folder to save the training run in")
        ckpt.save_release(self.adapter, out / f"release-{self.step:08d}")
        return ckpt.save_state(out, self.step, self.adapter, self.optimizer, self.losses, self.config.to_json(),
                               keep=self.config.keep_states)

    def load(self, path) -> None:
        """Resumes from a saved state (a ``state-<step>`` folder or a folder of them: the latest)."""
        state = ckpt.load_state(path)
        with torch.no_grad():
            self.adapter.load_state_dict(state["adapter"], strict=True)
        self.optimizer.load_state_dict(state["optimizer"])
        self.step, self.losses = int(state["step"]), [float(x) for x in state["losses"]]

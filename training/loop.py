"""The RefAny3D trainer (docs/method.md §6), one process or many under torchrun.

:class:`Trainer` runs :func:`model_patches.trainable.training_loss` on a ComfyUI FLUX.1 with a
:class:`~model_patches.trainable.TrainableAdapter`: AdamW, or Prodigy (the release's optimizer,
from the optional ``prodigyopt`` package), gradient clipping, gradient accumulation, gradient
checkpointing, a data order and every random draw keyed on the seed, a Cancel hook called between
steps, and saving through :mod:`training.checkpoint`. Only the adapter is trained: the model's own
parameters are frozen (``requires_grad_(False)``).

With ``world_size`` > 1 (a process group joined by :func:`training.distributed.init_distributed`)
the loss runs inside PyTorch's ``DistributedDataParallel`` (the adapter is its only registered
module; the frozen Flux is not, so DDP neither broadcasts nor reduces it): each micro-batch of
``world_size × batch_size`` samples is taken from the seed-keyed order and rank r trains on its
r-th slice, gradients are averaged by DDP (``no_sync`` for all but the last micro-batch of an
accumulation), and the reported loss is the mean over ranks. Since all randomness is keyed on
(seed, step, sample index), N processes with batch b give the update one process gives with batch
N·b. Only rank 0 writes files; the others wait at a barrier.
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from ._pack import (MAX_ABS_WEIGHT, RANK, RELEASE_FILES, LossOut, RefAny3DError, TrainableAdapter, Unconditional,
                    learning_statistics, training_loss, training_mode)

from . import checkpoint as ckpt
from . import distributed as dist
from .files import replacing

OPTIMIZERS = ("adamw", "prodigy")
RELEASE_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
PRODIGY_MISSING = ("the Prodigy optimizer needs the optional package 'prodigyopt', which is not installed: "
                   "pip install prodigyopt (or choose optimizer 'adamw')")


class TrainingDiverged(RefAny3DError):
    """A step gave a non-finite loss or gradient, or weights past what a release file may hold: the run stopped
    before the step's update was saved anywhere. ``step``: the step that failed; ``last_state``: the last state
    saved (or resumed from) before it, None when there is none."""

    def __init__(self, message: str, step: int, last_state: Path | None):
        super().__init__(message)
        self.step, self.last_state = step, last_state


def setting(default, help: str, *, choices: tuple | None = None, low=None, high=None, node: bool = True,
            cli: bool = True):
    """A :class:`TrainConfig` field and what the command line and the RefAny3D Train node make of it: ``help``
    (the flag's help and the input's tooltip), ``choices``, the bounds ``low`` / ``high`` (both check them);
    ``node`` / ``cli``: False for a setting the node / the command line does not offer."""
    meta = {"help": help, "choices": choices, "low": low, "high": high, "node": node, "cli": cli}
    if isinstance(default, tuple):
        return dataclasses.field(default_factory=lambda: default, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


@dataclass
class TrainConfig:
    """The settings of a training run: the one option table. ``python -m training``'s options (``--<name>``,
    ``_`` as ``-``) and the RefAny3D Train node's inputs are made from these fields (:func:`option_table`),
    with these defaults and help texts; a saved state records them."""
    steps: int = setting(1000, "train until this optimizer step, counted from step 0 (a resumed run trains on "
                               "until it reaches it)", low=1, high=1000000)
    batch_size: int = setting(1, "samples per process and micro-batch (the release: 1)", low=1, high=64)
    accumulation: int = setting(1, "micro-batches per optimizer step (gradient accumulation): effective batch = "
                                   "batch size × accumulation × processes", low=1, high=256)
    optimizer: str = setting("adamw", "adamw: torch's AdamW. prodigy: the release's optimizer (lr 1, bias "
                                      "correction, safeguard warm-up; needs the package prodigyopt)",
                             choices=OPTIMIZERS)
    lr: float | None = setting(None, "learning rate; unset (the node: 0) = the optimizer's default (AdamW 1e-4, "
                                     "Prodigy 1.0)", low=0.0, high=10.0)
    rank: int = setting(RANK, f"LoRA rank of a new adapter (the release: {RANK}); a starting adapter keeps its own",
                        low=1, high=256)
    seed: int = setting(0, "seed of the initialisation, the data order, noise, timesteps and dropouts",
                        low=0, high=2 ** 31 - 1)
    save_every: int = setting(250, "every N steps, the release files and a resumable state (0: only at the end "
                                   "and on a stop)", low=0, high=1000000)
    weight_decay: float = setting(0.01, "decoupled weight decay", node=False)
    betas: tuple[float, float] = setting((0.9, 0.999), "the optimizer's betas", node=False, cli=False)
    grad_clip: float = setting(0.5, "max gradient norm, 0 = off", node=False)
    checkpointing: bool = setting(True, "gradient checkpointing on every block (off needs far more memory)",
                                  node=False)
    p_drop_prompt: float = setting(0.1, "probability of training a sample on the empty prompt", node=False)
    p_drop_references: float = setting(0.1, "probability of training a sample on black references", node=False)
    fixed_noise: bool = setting(False, "diagnostics (overfit one sample): every step reuses step 0's draws",
                                node=False, cli=False)
    keep_states: int = setting(3, "keep the last K resumable states", low=1, node=False)
    release_dtype: str = setting("fp32", "precision of the saved release files: fp32, or bf16 (the release's)",
                                 choices=tuple(RELEASE_DTYPES), node=False)
    write_pth: bool = setting(False, "also write domain_embedder.pth (a pickled state dict, for the authors' own "
                                     "code)", node=False)

    def to_json(self) -> dict:
        return {**dataclasses.asdict(self), "betas": list(self.betas)}

    @classmethod
    def from_json(cls, values: dict) -> TrainConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        out = cls(**{k: v for k, v in values.items() if k in names})
        out.betas = tuple(out.betas)
        return out


def option_table() -> list[dataclasses.Field]:
    """The fields of :class:`TrainConfig` in order, each with ``metadata`` help, choices, low, high, node."""
    return list(dataclasses.fields(TrainConfig))


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


class _LossModule(torch.nn.Module):
    """The loss as a module for ``DistributedDataParallel``: the adapter is its only submodule; the
    frozen Flux is held as a plain attribute so DDP neither broadcasts nor synchronises it."""

    def __init__(self, flux, adapter: TrainableAdapter):
        super().__init__()
        self.adapter = adapter
        object.__setattr__(self, "flux", flux)
        self.last: LossOut | None = None

    def forward(self, batch: dict, seed: int, step: int, uncond: Unconditional | None, p_drop_prompt: float,
                p_drop_references: float, checkpoint: bool) -> torch.Tensor:
        self.last = training_loss(self.flux, self.adapter, batch, seed, step, uncond, p_drop_prompt=p_drop_prompt,
                                  p_drop_references=p_drop_references, checkpoint=checkpoint)
        return self.last.loss


def adapter_summary(shapes: dict[str, tuple[int, ...]]) -> str:
    """"a 64-wide model with rank 4 (2 double and 1 single blocks)" from an adapter's tensor shapes."""
    width = shapes.get("domain_embedder.1.weight", (None,))[0]
    ranks = sorted({s[0] for k, s in shapes.items() if k.startswith("lora_A.")})
    blocks = {}
    for kind in ("transformer_blocks", "single_transformer_blocks"):
        idx = {int(k.split(f"{kind}__")[1].split("__")[0]) for k in shapes if f".{kind}__" in k}
        blocks[kind] = max(idx) + 1 if idx else 0
    rank = "/".join(str(r) for r in ranks) if ranks else "?"
    return (f"a {width if width is not None else '?'}-wide model with rank {rank} "
            f"({blocks['transformer_blocks']} double and {blocks['single_transformer_blocks']} single blocks)")


def first_difference(mine: dict[str, tuple], theirs: dict[str, tuple]) -> tuple[str, str]:
    """(this run's side, the state's side) of the first tensor name or shape in which two adapters differ."""
    def side(shapes: dict[str, tuple], key: str) -> str:
        return f"{key} of shape {shapes[key]}" if key in shapes else f"without {key}"
    for key in sorted(set(mine) | set(theirs)):
        if mine.get(key) != theirs.get(key):
            return side(mine, key), side(theirs, key)
    return "the same", "the same"


class Trainer:
    """Training of ``adapter`` on ``flux`` (``comfy.ldm.flux.model.Flux``), one process or one rank of many.

    ``dataset``: a sequence of samples, each a dict of tensors without the batch dimension (``x0_rgb``,
    ``x0_point_map`` 16×H×W latents in the model's scale, ``refs_rgb``, ``refs_point_map`` N×16×h×w,
    ``context`` L×C, ``pooled`` P). ``uncond``: what the dropouts put in. ``cancel``: called between
    steps and micro-batches; it may raise (ComfyUI's interrupt) or return True to stop after the step.
    ``out_dir``: where ``save_every`` writes ``release-<step>/`` and ``state-<step>/``.
    ``release_dir``: where :meth:`save` writes the release files instead (one folder, replaced at each save:
    the node's models/refany3d/<name>/). ``rank`` / ``world_size``: this process in a torchrun job (the process
    group already joined); ``on_step(step, loss)``: called after every optimizer step (on every rank, with the
    mean loss). The command line and the RefAny3D Train node both drive this class: progress, previews and
    Cancel are their callbacks."""

    def __init__(self, flux, adapter: TrainableAdapter, dataset: Sequence[dict], uncond: Unconditional | None,
                 config: TrainConfig | None = None, out_dir=None, cancel: Callable[[], bool | None] | None = None,
                 rank: int = 0, world_size: int = 1, on_step: Callable[[int, float], None] | None = None,
                 release_dir=None):
        self.flux, self.adapter, self.dataset, self.uncond = flux, adapter, dataset, uncond
        self.config = config or TrainConfig()
        self.release_dir = Path(release_dir) if release_dir is not None else None
        if self.config.release_dtype not in RELEASE_DTYPES:
            raise RefAny3DError(f"unknown release precision {self.config.release_dtype!r}: expected one of "
                                f"{', '.join(RELEASE_DTYPES)}")
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.cancel, self.on_step = cancel, on_step
        self.rank, self.world_size = int(rank), int(world_size)
        if len(dataset) == 0:
            raise RefAny3DError("the training set is empty")
        if self.world_size < 1 or not 0 <= self.rank < self.world_size:
            raise RefAny3DError(f"rank {rank} of {world_size} processes is not a valid place in a training job")
        flux.requires_grad_(False)
        self.device = next(flux.parameters()).device
        adapter.to(self.device)
        self.module = _LossModule(flux, adapter)
        self.ddp = None
        if self.world_size > 1:
            if not dist.active(self.world_size):
                raise RefAny3DError(f"world_size {self.world_size} needs a joined process group: start the run "
                                    "with torchrun (training.distributed.init_distributed)")
            from torch.nn.parallel import DistributedDataParallel
            ids = [self.device.index] if self.device.type == "cuda" else None
            # every factor is in the graph each step (the structural zeros of docs/method.md §6 get zero
            # gradients, not none; dropouts are torch.where), so DDP need not search for unused parameters
            self.ddp = DistributedDataParallel(self.module, device_ids=ids)
        self.optimizer = make_optimizer(adapter.parameters(), self.config)
        self.step = 0
        self.losses: list[float] = []
        #: the last state saved (or resumed from): what a stopped run names to resume from
        self.last_state: Path | None = None
        #: learning_statistics of the last step's gradients (structural zeros left out)
        self.statistics: dict | None = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    # ---- data order: an epoch-wise permutation keyed on the seed

    def global_indices(self, step: int, micro: int) -> list[int]:
        """The ``world_size × batch_size`` sample indices of one micro-batch of the whole job."""
        n, bs = len(self.dataset), self.config.batch_size * self.world_size
        first = (step * self.config.accumulation + micro) * bs
        out, orders = [], {}
        for k in range(first, first + bs):
            epoch, pos = divmod(k, n)
            if epoch not in orders:
                order = list(range(n))
                random.Random(f"refany3d-order:{self.config.seed}:{epoch}").shuffle(order)
                orders[epoch] = order
            out.append(orders[epoch][pos])
        return out

    def indices(self, step: int, micro: int) -> list[int]:
        """This rank's slice of :meth:`global_indices`."""
        bs = self.config.batch_size
        return self.global_indices(step, micro)[self.rank * bs:(self.rank + 1) * bs]

    def _stop_requested(self) -> bool:
        return bool(self.cancel()) if self.cancel is not None else False

    def train_step(self) -> float:
        """One optimizer step (``accumulation`` micro-batches); returns its mean loss (over all ranks)."""
        cfg = self.config
        if self.world_size > 1 and self.ddp is None:
            raise RefAny3DError("this trainer was closed (its DistributedDataParallel let go): it cannot train on")
        self.optimizer.zero_grad(set_to_none=True)
        total = 0.0
        noise_step = 0 if cfg.fixed_noise else self.step
        loss_fn = self.ddp if self.ddp is not None else self.module
        try:
            with training_mode():
                for micro in range(cfg.accumulation):
                    if micro:
                        self._stop_requested()  # an interrupt may raise here; a plain stop finishes the step
                    idx = self.indices(self.step, micro)
                    try:
                        batch = collate([self.dataset[i] for i in idx], idx, self.device)
                    except RefAny3DError as e:
                        self._stop(str(e), "Fix or re-make the data, then resume")
                    last = micro == cfg.accumulation - 1
                    sync = self.ddp.no_sync() if (self.ddp is not None and not last) else contextlib.nullcontext()
                    with sync:
                        loss = loss_fn(batch, cfg.seed, noise_step, self.uncond, cfg.p_drop_prompt, cfg.p_drop_references,
                                       cfg.checkpointing)
                        (loss / cfg.accumulation).backward()
                    total += float(loss.detach()) / cfg.accumulation
        except torch.OutOfMemoryError:
            self.optimizer.zero_grad(set_to_none=True)
            raise RefAny3DError(self._out_of_memory()) from None
        total = dist.mean_over_ranks(total, self.world_size, self.device)
        if not math.isfinite(total):
            self._diverged(f"the loss is {total}", idx)
        self.statistics = learning_statistics(self.adapter)
        if not math.isfinite(self.statistics["grad_norm"]):
            self._diverged(f"the gradient norm is {self.statistics['grad_norm']}", idx)
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.adapter.parameters(), cfg.grad_clip)
        self.optimizer.step()
        peak = self._peak_weight()
        if not peak <= MAX_ABS_WEIGHT:
            self._diverged(f"the update made a weight {peak:g} (a release file holds at most {MAX_ABS_WEIGHT:g})", idx)
        self.step += 1
        self.losses.append(total)
        if cfg.save_every and self.out_dir is not None and self.step % cfg.save_every == 0:
            self.save()
        if self.on_step is not None:
            self.on_step(self.step, total)
        return total

    def _peak_weight(self) -> float:
        """The largest |value| of the adapter's weights (NaN when one is NaN), in one transfer."""
        with torch.no_grad():
            return float(torch.stack([p.detach().abs().amax().float() for p in self.adapter.parameters()]).amax())

    def state_name(self, path: Path) -> str:
        """How a message names a saved state (the node names it inside models/)."""
        return str(path)

    def _diverged(self, what: str, indices: Sequence[int]) -> None:
        self._stop(f"{what} (not a finite number)", "Likely causes: a learning rate too large for this optimizer "
                   f"(lower it), or damaged data (samples {', '.join(str(i) for i in indices)} of this step's last "
                   "micro-batch)")

    def _stop(self, what: str, hint: str) -> None:
        """Stops the run at the step being computed: nothing of it is written (the weights in memory may hold
        its update; no file does), and the message names the step and the state to resume from."""
        self.optimizer.zero_grad(set_to_none=True)
        failed = self.step + 1
        last = self.last_state
        where = (f"the last good state is {self.state_name(last)} (step {self.step_of(last)}): resume from it"
                 if last is not None else "no state was saved before it: a new run starts from step 0")
        raise TrainingDiverged(f"training stopped at step {failed}: {what}. Nothing of step {failed} was saved; "
                               f"{where}. {hint}", failed, last)

    def _optimizer_problem(self, saved: dict) -> str | None:
        return _optimizer_problem_of(self.optimizer, saved, self.config)

    @staticmethod
    def step_of(path: Path) -> int:
        return int(path.name.rsplit("-", 1)[-1])

    def _out_of_memory(self) -> str:
        """The out-of-memory message, with the estimate for this model, sample size and settings."""
        from .memory import out_of_memory_message
        cfg = self.config
        sample = self.dataset[0]
        weights = [m.weight for m in self.flux.modules() if isinstance(m, torch.nn.Linear)]
        available = None
        if self.device.type == "cuda":
            available = torch.cuda.get_device_properties(self.device).total_memory / 1024 ** 3
            torch.cuda.empty_cache()
        return out_of_memory_message(
            available, size=int(sample["x0_rgb"].shape[-1]) * 8, views=int(sample["refs_rgb"].shape[0]),
            batch=cfg.batch_size, base_bytes=float(weights[0].element_size()) if weights else 2.0,
            optimizer=cfg.optimizer, checkpointing=cfg.checkpointing, width=int(self.flux.hidden_size),
            blocks=len(self.flux.double_blocks) + len(self.flux.single_blocks),
            base_params=sum(p.numel() for p in self.flux.parameters()),
            trainable=sum(p.numel() for p in self.adapter.parameters()), text=int(sample["context"].shape[0]))

    def train(self, steps: int | None = None) -> list[float]:
        """Runs until ``self.step == steps`` (default ``config.steps``) or the Cancel hook asks to stop (on any
        rank: all stop at the same step); returns the losses of this call."""
        steps = self.config.steps if steps is None else steps
        start = len(self.losses)
        while self.step < steps:
            if dist.any_rank(self._stop_requested(), self.world_size, self.device):
                break
            self.train_step()
        return self.losses[start:]

    def close(self) -> None:
        """Lets go of ``DistributedDataParallel`` before the process group is left (call it before
        :func:`training.distributed.teardown`); a closed multi-process trainer trains no more. The DDP
        reducer holds the group's communication state: left alive past ``destroy_process_group`` it is
        freed at interpreter exit, where gloo (seen with PyTorch 2.14) can abort the process ("terminate
        called without an active exception") when the ranks leave at different moments. Single-process
        trainers have nothing to let go of."""
        if self.ddp is not None:
            self.ddp = None
            import gc
            gc.collect()  # the reducer is freed now, not at some later collection

    # ---- saving and resuming

    def save(self, out_dir=None, sync: bool = True) -> Path:
        """The release files in ``release-<step>/`` and a resumable ``state-<step>/``; returns the state.
        Only rank 0 writes; with ``sync`` the other ranks wait for it at a barrier (pass ``sync=False``
        when the ranks may not all be here, e.g. after an interrupt)."""
        out = Path(out_dir) if out_dir is not None else self.out_dir
        if out is None:
            raise RefAny3DError("no output folder to save the training run in")
        path = out / f"{ckpt.STATE_PREFIX}{self.step:08d}"
        if self.is_main:
            self.save_release(self.release_dir or out / f"release-{self.step:08d}")
            config = {**self.config.to_json(), "world_size": self.world_size,
                      "adapter": adapter_summary({k: tuple(v.shape) for k, v in self.adapter.state_dict().items()})}
            path = ckpt.save_state(out, self.step, self.adapter, self.optimizer, self.losses, config,
                                   keep=self.config.keep_states)
        self.last_state = path
        if sync:
            dist.barrier(self.world_size)
        return path

    def save_unsaved(self, sync: bool = True) -> Path:
        """The state of the current step: the one already saved (or resumed from) at this step, else a new
        :meth:`save` (the end of a run, or a stop between two ``save_every`` steps)."""
        if self.last_state is not None and self.step_of(self.last_state) == self.step:
            return self.last_state
        return self.save(sync=sync)

    def save_release(self, folder) -> dict[str, Path]:
        """The release files of the current adapter in ``folder`` (precision ``config.release_dtype``;
        with ``config.write_pth`` also the release's ``domain_embedder.pth``, a plain state dict)."""
        return ckpt.save_release(self.adapter, folder, RELEASE_DTYPES[self.config.release_dtype],
                                 write_pth=self.config.write_pth)

    def load(self, path) -> None:
        """Resumes from a saved state (a ``state-<step>`` folder or a folder of them: the latest).
        A state of another adapter shape (model width, rank, depth) or optimizer is refused by name."""
        try:
            state = ckpt.load_state(path)
        except (FileNotFoundError, ValueError) as e:
            raise RefAny3DError(f"cannot resume: {e}") from None
        mine = {k: tuple(v.shape) for k, v in self.adapter.state_dict().items()}
        theirs = {k: tuple(v.shape) for k, v in state["adapter"].items()}
        if mine != theirs:
            ours, saved = adapter_summary(mine), adapter_summary(theirs)
            if ours == saved:  # the summaries agree: name the first tensor that differs instead
                ours, saved = first_difference(mine, theirs)
            raise RefAny3DError(f"cannot resume from {state['path']}: the state is from {saved}; this model and "
                                f"adapter are {ours}. Resume with the same model and rank, or start a new run in "
                                "another output folder")
        saved_opt = state["config"].get("optimizer")
        if saved_opt is not None and saved_opt != self.config.optimizer:
            raise RefAny3DError(f"cannot resume from {state['path']}: it was trained with the {saved_opt} optimizer, "
                                f"this run uses {self.config.optimizer}; use the same optimizer to resume")
        problem = self._optimizer_problem(state["optimizer"])
        if problem:
            raise RefAny3DError(f"cannot resume from {state['path']}: its optimizer state {problem}; the state is "
                                "damaged (resume from an older state-<step> folder, or start a new run)")
        with torch.no_grad():
            self.adapter.load_state_dict(state["adapter"], strict=True)
        try:
            self.optimizer.load_state_dict(state["optimizer"])
        except (ValueError, KeyError, RuntimeError, TypeError) as e:
            raise RefAny3DError(f"cannot resume from {state['path']}: its optimizer state does not load ({e}); "
                                "resume from an older state-<step> folder, or start a new run") from None
        self.step, self.losses = int(state["step"]), [float(x) for x in state["losses"]]
        self.last_state = state["path"]


def _same_kind(a, b) -> bool:
    """``a`` (saved) is the same kind of value as ``b`` (this run's): numbers finite, sequences of the same length."""
    if isinstance(b, bool) or b is None:
        return type(a) is type(b)
    if isinstance(b, (int, float)):
        return isinstance(a, (int, float)) and not isinstance(a, bool) and math.isfinite(a)
    if isinstance(b, (list, tuple)):
        return isinstance(a, (list, tuple)) and len(a) == len(b) and all(_same_kind(x, y) for x, y in zip(a, b))
    if isinstance(b, torch.Tensor):
        return isinstance(a, torch.Tensor) and a.dtype.is_floating_point == b.dtype.is_floating_point
    return type(a) is type(b)


def _fresh_entry(optimizer: torch.optim.Optimizer, config: TrainConfig) -> dict:
    """The per-parameter state this kind of optimizer keeps (one step of a throwaway copy on a zero gradient)."""
    p = torch.nn.Parameter(torch.zeros(2))
    p.grad = torch.zeros(2)
    probe = make_optimizer([p], config)
    probe.step()
    return probe.state_dict()["state"][0]


def _optimizer_problem_of(optimizer: torch.optim.Optimizer, saved: dict, config: TrainConfig) -> str | None:
    """What in a saved optimizer state dict does not fit ``optimizer`` (groups, their settings, parameter counts,
    the names, kinds and shapes of the per-parameter state), else None."""
    mine = [list(g["params"]) for g in optimizer.param_groups]
    groups = saved["param_groups"]
    if len(groups) != len(mine) or [len(g["params"]) for g in groups] != [len(g) for g in mine]:
        return (f"has {len(groups)} parameter group(s) of {[len(g['params']) for g in groups]} parameters, this "
                f"run {len(mine)} of {[len(g) for g in mine]}")
    for n, (group, ours) in enumerate(zip(groups, optimizer.param_groups)):
        for key, value in ours.items():
            if key != "params" and (key not in group or not _same_kind(group[key], value)):
                return f"has {key} = {group.get(key)!r} in parameter group {n}, not a value of the kind {value!r}"
    ids = [pid for g in groups for pid in g["params"]]
    if not all(isinstance(i, int) and not isinstance(i, bool) for i in ids) or len(set(ids)) != len(ids):
        return "lists a parameter twice or by a name that is not a number"
    params = dict(zip(ids, (p for g in mine for p in g)))
    fresh = _fresh_entry(optimizer, config)
    for pid, entry in saved["state"].items():
        if pid not in params:
            return f"names parameter {pid}, which no group lists"
        if not isinstance(entry, dict) or set(entry) != set(fresh):
            return (f"holds {sorted(entry) if isinstance(entry, dict) else type(entry).__name__} for parameter {pid}; "
                    f"this optimizer keeps {sorted(fresh)}")
        for name, value in entry.items():
            if not _same_kind(value, fresh[name]):
                return f"holds {name} = {value!r} for parameter {pid}, not a value of the kind {fresh[name]!r}"
            if isinstance(value, torch.Tensor) and value.ndim and tuple(value.shape) != tuple(params[pid].shape):
                return (f"holds {name} of shape {tuple(value.shape)} for a parameter of shape "
                        f"{tuple(params[pid].shape)}")
    return None


def write_embedder_pth(adapter: TrainableAdapter, folder, dtype: torch.dtype = torch.float32) -> Path:
    """The release's ``domain_embedder.pth`` (a plain state dict through ``torch.save``, for the authors'
    own code; the pack itself reads it only with ``weights_only=True``), written atomically."""
    final = Path(folder) / RELEASE_FILES["domain_embedder"]
    with replacing(final) as tmp:
        torch.save(adapter.to_release_state_dicts(dtype)["domain_embedder"], tmp)
    return final

"""How much accelerator memory a RefAny3D training step needs: an estimate from the sizes alone.

Used for the README's memory plan and for the out-of-memory message (which names what to change).
The terms, for a FLUX.1 of width D with ``double`` + ``single`` blocks and a step of T tokens:

* base weights: every Flux parameter at the base's bytes per value (bf16 2, fp8 1);
* the trainable adapter: 2 LoRAs + the domain embedder in fp32, its gradients (fp32) and the
  optimizer's state (AdamW: 2 tensors per parameter; Prodigy: 4, exp_avg, exp_avg_sq, s and p0);
* activations with per-block checkpointing: each block's input kept (T·D values in the compute
  dtype) plus one block recomputed with its gradients during the backward (≈ ``RECOMPUTE_WIDTHS``
  hidden widths per token: q, k, v, the MLP's 4·D, its activation, the attention output and the
  LoRA inputs) and the two targets' fp32 loss tensors;
* without checkpointing every block keeps its recomputed activations.

It is arithmetic, not a measurement (benchmarks/bench_training.py measures a small model on the
CPU and, where CUDA is present, the real width): real use adds the allocator's slack and
ComfyUI's own buffers (``OVERHEAD_GB``).
"""
from __future__ import annotations

from dataclasses import dataclass

GB = 1024 ** 3
#: FLUX.1-dev: width, blocks, parameters (the transformer only).
FLUX1_WIDTH, FLUX1_DOUBLE, FLUX1_SINGLE, FLUX1_PARAMS = 3072, 19, 38, 11_901_408_320
#: Trainable parameters at the release's rank 16 (docs/method.md §6): two LoRAs and the embedder.
RELEASE_TRAINABLE = 2 * 57_951_232 + 10_230_272
RECOMPUTE_WIDTHS = 16
OVERHEAD_GB = 1.0
OPTIMIZER_STATES = {"adamw": 2, "prodigy": 4}


def tokens(size: int = 512, views: int = 8, text: int = 512) -> int:
    """Tokens of one sample: two targets and 2·N references of (size/16)² each, plus the text."""
    per_image = (size // 16) ** 2
    return 2 * per_image + 2 * views * per_image + text


@dataclass
class MemoryEstimate:
    base: float
    adapter: float
    activations: float
    overhead: float = OVERHEAD_GB

    @property
    def total(self) -> float:
        return self.base + self.adapter + self.activations + self.overhead

    def describe(self) -> str:
        return (f"≈ {self.total:.1f} GB (base weights {self.base:.1f}, adapter with gradients and optimizer "
                f"{self.adapter:.1f}, activations {self.activations:.1f}, overhead {self.overhead:.1f})")


def estimate(size: int = 512, views: int = 8, batch: int = 1, base_bytes: float = 2.0, optimizer: str = "prodigy",
             checkpointing: bool = True, compute_bytes: int = 2, width: int = FLUX1_WIDTH,
             blocks: int = FLUX1_DOUBLE + FLUX1_SINGLE, base_params: int = FLUX1_PARAMS,
             trainable: int = RELEASE_TRAINABLE, text: int = 512) -> MemoryEstimate:
    """Memory of one training step in GB (see the module docstring for the terms)."""
    t = tokens(size, views, text) * batch
    base = base_params * base_bytes / GB
    adapter = trainable * 4 * (2 + OPTIMIZER_STATES.get(optimizer, 2)) / GB
    per_block_recompute = t * width * RECOMPUTE_WIDTHS * compute_bytes
    block_inputs = t * width * compute_bytes
    targets = 2 * batch * (size // 8) ** 2 * 16 * 4 * 4  # x_t, noise, target, prediction of both targets, fp32
    if checkpointing:
        act = blocks * block_inputs + per_block_recompute + targets
    else:
        act = blocks * (block_inputs + per_block_recompute) + targets
    return MemoryEstimate(base, adapter, act / GB)


def out_of_memory_message(available_gb: float | None, **options) -> str:
    """The message for a step that did not fit, with the estimate and what to change."""
    need = estimate(**options)
    have = f" on a card with {available_gb:.1f} GB" if available_gb else ""
    return (f"RefAny3D training ran out of accelerator memory{have}: this step needs {need.describe()}. "
            "Options: load the base model in fp8 (UNETLoader weight_dtype fp8_e4m3fn; ≈ 11 GB less), keep "
            "gradient checkpointing on, use the AdamW optimizer (≈ 1 GB less than Prodigy), batch size 1 with "
            "gradient accumulation instead of a bigger batch, fewer reference views or a smaller training size "
            "(the release: 512 px, 8 views), and close other models (text encoders and the VAE are not needed "
            "once the dataset is encoded).")

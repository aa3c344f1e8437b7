"""Test-only nodes for the training tests: a text-encoder stand-in and tiny models built in code.

* RefAny3DTestTextEncoder: a CLIP stand-in (T5-XXL cannot run in CI). Its object has the two methods
  RefAny3D Encode Training Data and core CLIPTextEncode call, ``tokenize(text)`` and
  ``encode_from_tokens_scheduled(tokens)``, and returns Flux-shaped conditioning
  ``[[cond [1, L, C], {"pooled_output": [1, P]}]]``, deterministic in the text (L grows with the words).
* RefAny3DTestTinyModel: a small random FLUX.1 (tools.tiny_models.build_flux), or a tiny SD1.5-type
  UNet as a model that is not Flux.
"""
from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import torch
from comfy_api.latest import io

PACK_ROOT = Path(__file__).resolve().parents[3]


class StandInTextEncoder:
    """Deterministic pseudo text conditioning: the same text gives the same tokens."""

    def __init__(self, context_dim: int, pooled_dim: int, max_tokens: int = 16):
        self.context_dim, self.pooled_dim, self.max_tokens = context_dim, pooled_dim, max_tokens

    def tokenize(self, text: str, **kwargs):
        return {"text": str(text)}

    def encode_from_tokens_scheduled(self, tokens, **kwargs):
        text = tokens["text"]
        seed = int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little") & ((1 << 63) - 1)
        g = torch.Generator().manual_seed(seed)
        length = min(self.max_tokens, len(text.split()) + 1)
        cond = torch.randn(1, length, self.context_dim, generator=g)
        pooled = torch.randn(1, self.pooled_dim, generator=g)
        return [[cond, {"pooled_output": pooled}]]


class RefAny3DTestTextEncoder(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="RefAny3DTestTextEncoder",
            display_name="RefAny3D Test Text Encoder",
            category="RefAny3D/testing",
            description="A text-encoder stand-in for tests: deterministic Flux-shaped conditioning from the text.",
            inputs=[
                io.Int.Input("context_dim", default=32, min=1, max=8192, tooltip="Token width C (T5-XXL: 4096)."),
                io.Int.Input("pooled_dim", default=16, min=1, max=8192, tooltip="Pooled width P (CLIP-L: 768)."),
            ],
            outputs=[io.Clip.Output(tooltip="An object with tokenize / encode_from_tokens_scheduled.")],
        )

    @classmethod
    def execute(cls, context_dim, pooled_dim) -> io.NodeOutput:
        return io.NodeOutput(StandInTextEncoder(context_dim, pooled_dim))


def tiny_models():
    sys.path.insert(0, str(PACK_ROOT))
    try:
        from tools import tiny_models
    finally:
        sys.path.remove(str(PACK_ROOT))
    return tiny_models


class RefAny3DTestTinyModel(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="RefAny3DTestTinyModel",
            display_name="RefAny3D Test Tiny Model",
            category="RefAny3D/testing",
            description="A tiny random model built in code: a FLUX.1 (context 32, pooled 16) or an SD1.5-type UNet.",
            inputs=[
                io.Combo.Input("kind", options=["flux", "sd15"], tooltip="flux: a tiny FLUX.1; sd15: not a Flux."),
                io.Int.Input("hidden_size", default=64, min=16, max=3072, step=16, tooltip="Flux width."),
                io.Int.Input("seed", default=0, min=0, max=2**31 - 1, tooltip="Seed of the random weights."),
            ],
            outputs=[io.Model.Output(tooltip="The model.")],
        )

    @classmethod
    def execute(cls, kind, hidden_size, seed) -> io.NodeOutput:
        if kind == "sd15":
            return io.NodeOutput(tiny_models().build_sd15())
        return io.NodeOutput(tiny_models().build_flux(hidden_size=hidden_size, num_heads=2, context_in_dim=32,
                                                      vec_in_dim=16, seed=seed))


NODES = [RefAny3DTestTextEncoder, RefAny3DTestTinyModel]

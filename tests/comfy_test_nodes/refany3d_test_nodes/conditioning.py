"""Test-only nodes: Flux-shaped conditioning without text encoders, and a probe of a REFANY3D_ADAPTER."""
from __future__ import annotations

import json

import torch
from comfy_api.latest import io


class RefAny3DTestConditioning(io.ComfyNode):
    """Random Flux conditioning: T5-like tokens [1, L, C], a pooled CLIP-like vector [1, P], guidance."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="RefAny3DTestConditioning",
            display_name="RefAny3D Test Conditioning",
            category="RefAny3D/testing",
            inputs=[
                io.Int.Input("seed", default=0, min=0, max=2**31 - 1, tooltip="Seed of the random tokens."),
                io.Int.Input("tokens", default=8, min=1, max=512, tooltip="Number of text tokens L."),
                io.Int.Input("context_dim", default=4096, min=1, max=8192, tooltip="Token width C (T5-XXL: 4096)."),
                io.Int.Input("pooled_dim", default=768, min=1, max=8192, tooltip="Pooled vector width P (CLIP-L: 768)."),
                io.Float.Input("guidance", default=3.5, min=0.0, max=100.0, step=0.1,
                               tooltip="Flux guidance stored in the conditioning."),
            ],
            outputs=[io.Conditioning.Output(tooltip="[[cond [1,L,C], {pooled_output [1,P], guidance}]]")],
        )

    @classmethod
    def execute(cls, seed, tokens, context_dim, pooled_dim, guidance) -> io.NodeOutput:
        g = torch.Generator().manual_seed(int(seed))
        cond = torch.randn(1, tokens, context_dim, generator=g)
        pooled = torch.randn(1, pooled_dim, generator=g)
        return io.NodeOutput([[cond, {"pooled_output": pooled, "guidance": float(guidance)}]])


def adapter_summary(adapter) -> dict:
    """What a test can compare with the same files loaded in-process."""
    loras = {name: {module: [list(down.shape), list(up.shape), float(down.double().sum() + up.double().sum())]
                    for module, (down, up) in sorted(mods.items())}
             for name, mods in adapter.loras.items()}
    emb = {k: float(v.double().sum()) for k, v in adapter.domain_embedder.state_dict().items()}
    return {"type": type(adapter).__name__, "hidden_size": adapter.hidden_size, "files": dict(adapter.files),
            "loras": loras, "domain_embedder": emb}


class RefAny3DTestAdapterInfo(io.ComfyNode):
    """Output node: a JSON summary of a REFANY3D_ADAPTER (shapes and sums of every factor)."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="RefAny3DTestAdapterInfo",
            display_name="RefAny3D Test Adapter Info",
            category="RefAny3D/testing",
            inputs=[io.Custom("REFANY3D_ADAPTER").Input("adapter", tooltip="The adapter to describe.")],
            outputs=[],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, adapter) -> io.NodeOutput:
        return io.NodeOutput(ui={"text": [json.dumps(adapter_summary(adapter))]})


NODES = [RefAny3DTestConditioning, RefAny3DTestAdapterInfo]

"""Test-only node: adds core model patches that stock Flux applies inside its blocks (an attention
patch, a block replacement), as third-party nodes do, to check that RefAny3D refuses them."""
from __future__ import annotations

from comfy_api.latest import io


def _identity_attn1(q, k, v, **kwargs):
    return {"q": q, "k": k, "v": v}


def _passthrough_block(args, extra):
    return extra["original_block"](args)


class RefAny3DTestModelPatch(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="RefAny3DTestModelPatch",
            display_name="RefAny3D Test Model Patch",
            category="RefAny3D/testing",
            inputs=[
                io.Model.Input("model", tooltip="The model to patch (a clone is patched)."),
                io.Combo.Input("patch", options=["attn1_patch", "double_block_replace"],
                               tooltip="Which core patch to add (both leave stock Flux's output unchanged)."),
            ],
            outputs=[io.Model.Output(tooltip="The patched clone.")],
        )

    @classmethod
    def execute(cls, model, patch) -> io.NodeOutput:
        m = model.clone()
        if patch == "attn1_patch":
            m.set_model_attn1_patch(_identity_attn1)
        else:
            m.set_model_patch_replace(_passthrough_block, "dit", "double_block", 0)
        return io.NodeOutput(m)


NODES = [RefAny3DTestModelPatch]

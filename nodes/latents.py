"""Latent nodes of the joined RefAny3D latent: RGB target | point-map target, side by side in width."""
from __future__ import annotations

import comfy.model_management
import torch
from comfy_api.latest import io

from ..model_patches import RefAny3DError, split_joined

LATENT_CHANNELS = 16


class RefAny3DEmptyLatent(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="RefAny3DEmptyLatent",
            display_name="RefAny3D Empty Latent",
            category="RefAny3D/latent",
            description=("An empty joined latent for RefAny3D: the RGB target and the point-map target side by "
                         "side (B×16×H/8×2·W/8). Sample it with any sampler on a RefAny3D Apply model, then "
                         "split it with RefAny3D Split Latent."),
            inputs=[
                io.Int.Input("width", default=512, min=16, max=4096, step=16,
                             tooltip="Width of ONE generated image in pixels (multiple of 16). The release: 512."),
                io.Int.Input("height", default=512, min=16, max=4096, step=16,
                             tooltip="Height of the generated image in pixels (multiple of 16)."),
                io.Int.Input("batch_size", default=1, min=1, max=64,
                             tooltip="Number of (image, point map) pairs to generate."),
            ],
            outputs=[io.Latent.Output(tooltip="Joined latent [B, 16, H/8, 2·W/8]: RGB left, point map right.")],
        )

    @classmethod
    def validate_inputs(cls, width=None, height=None, batch_size=None) -> bool | str:
        for name, v in (("width", width), ("height", height)):
            if v is not None and int(v) % 16:
                return f"{name} must be a multiple of 16 (the VAE's 8× and Flux's 2×2 patches), got {v}"
        return True

    @classmethod
    def execute(cls, width, height, batch_size=1) -> io.NodeOutput:
        if width % 16 or height % 16:
            raise RefAny3DError(f"width and height must be multiples of 16, got {width}×{height}")
        latent = torch.zeros([batch_size, LATENT_CHANNELS, height // 8, 2 * (width // 8)],
                             device=comfy.model_management.intermediate_device())
        return io.NodeOutput({"samples": latent})


class RefAny3DSplitLatent(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="RefAny3DSplitLatent",
            display_name="RefAny3D Split Latent",
            category="RefAny3D/latent",
            description="Splits a sampled joined RefAny3D latent into the RGB latent and the point-map latent.",
            inputs=[io.Latent.Input("samples", tooltip="The joined latent sampled with a RefAny3D Apply model.")],
            outputs=[io.Latent.Output(display_name="rgb", tooltip="The image latent (decode with VAE Decode)."),
                     io.Latent.Output(display_name="point_map",
                                      tooltip="The point-map latent (decode with VAE Decode: colours are x,y,z; "
                                              "white is background).")],
        )

    @classmethod
    def execute(cls, samples) -> io.NodeOutput:
        x = samples["samples"]
        if x.ndim != 4:
            raise RefAny3DError(f"RefAny3D Split Latent expects an image latent B×C×H×W, got shape {tuple(x.shape)}")
        rgb, pm = split_joined(x)
        extra = {k: v for k, v in samples.items() if k == "batch_index"}
        return io.NodeOutput(dict(extra, samples=rgb.contiguous()), dict(extra, samples=pm.contiguous()))


class RefAny3DPointMapToMask(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="RefAny3DPointMapToMask",
            display_name="RefAny3D Point Map To Mask",
            category="RefAny3D/latent",
            description=("The object's mask from a decoded point map: the background of a point map is white, "
                         "so a pixel is background (0) when all of R, G, B are at least the threshold."),
            inputs=[
                io.Image.Input("point_map", tooltip="A decoded point map (VAE Decode of the point-map latent)."),
                io.Float.Input("threshold", default=0.9, min=0.0, max=1.0, step=0.01,
                               tooltip="A pixel whose R, G and B are all ≥ this is background (mask 0); otherwise "
                                       "it is the object (mask 1)."),
            ],
            outputs=[io.Mask.Output(tooltip="1 on the object, 0 on the white background, B×H×W.")],
        )

    @classmethod
    def execute(cls, point_map, threshold=0.9) -> io.NodeOutput:
        if point_map.ndim != 4 or point_map.shape[-1] < 3:
            raise RefAny3DError(f"point_map must be an IMAGE batch B×H×W×3, got shape {tuple(point_map.shape)}")
        background = (point_map[..., :3] >= threshold).all(dim=-1)
        return io.NodeOutput((~background).float())


NODES = [RefAny3DEmptyLatent, RefAny3DSplitLatent, RefAny3DPointMapToMask]

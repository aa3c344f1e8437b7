"""Latent nodes of the joined RefAny3D latent: RGB target | point-map target, side by side in width."""
from __future__ import annotations

import logging
import math

import comfy.model_management
import torch
from comfy_api.latest import io, ui

from ..model_patches import RefAny3DError, split_joined
from ..model_patches.provenance import JOINED_KEY, sampled_by_refany3d
from .notify import show_on_node

LATENT_CHANNELS = 16
SIZE_MIN, SIZE_MAX, SIZE_STEP = 16, 4096, 16
log = logging.getLogger("RefAny3D")


def size_problem(name: str, value) -> str | None:
    """Why ``value`` is not a valid width/height of one image, else None."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not SIZE_MIN <= value <= SIZE_MAX or value % SIZE_STEP:
        return (f"{name} must be a multiple of {SIZE_STEP} between {SIZE_MIN} and {SIZE_MAX} px (the VAE's 8× and "
                f"Flux's 2×2 patches; the size of ONE image, not of the joined latent), got {value}")
    return None


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
                io.Int.Input("width", default=512, min=SIZE_MIN, max=SIZE_MAX, step=SIZE_STEP,
                             tooltip="Width of ONE generated image in pixels (multiple of 16). The release: 512."),
                io.Int.Input("height", default=512, min=SIZE_MIN, max=SIZE_MAX, step=SIZE_STEP,
                             tooltip="Height of the generated image in pixels (multiple of 16)."),
                io.Int.Input("batch_size", default=1, min=1, max=64,
                             tooltip="Number of (image, point map) pairs to generate."),
            ],
            outputs=[io.Latent.Output(tooltip="Joined latent [B, 16, H/8, 2·W/8]: RGB left, point map right.")],
        )

    # No validate_inputs: ComfyUI would show its message on every input it takes. ComfyUI checks each
    # input's range on that input; a width or height that is not a multiple of 16 (the UI's widgets
    # cannot make one, an API caller can) is refused here, naming the input.
    @classmethod
    def execute(cls, width, height, batch_size=1) -> io.NodeOutput:
        problem = size_problem("width", width) or size_problem("height", height)
        if problem:
            raise RefAny3DError(problem)
        latent = torch.zeros([batch_size, LATENT_CHANNELS, height // 8, 2 * (width // 8)],
                             device=comfy.model_management.intermediate_device())
        # the mark travels with the LATENT dict through the core samplers (they copy the dict's keys)
        return io.NodeOutput({"samples": latent, JOINED_KEY: True})


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
            hidden=[io.Hidden.dynprompt, io.Hidden.unique_id],
        )

    @classmethod
    def execute(cls, samples) -> io.NodeOutput:
        x = samples["samples"]
        if x.ndim != 4:
            raise RefAny3DError(f"RefAny3D Split Latent expects an image latent B×C×H×W, got shape {tuple(x.shape)}")
        rgb, pm = split_joined(x)
        extra = {k: v for k, v in samples.items() if k == "batch_index"}
        outputs = (dict(extra, samples=rgb.contiguous()), dict(extra, samples=pm.contiguous()))
        warning = check_sampled(cls, samples)
        if warning is None:
            return io.NodeOutput(*outputs)
        log.warning("%s", warning)
        hidden = getattr(cls, "hidden", None)
        show_on_node(getattr(hidden, "unique_id", None), warning)
        return io.NodeOutput(*outputs, ui=ui.PreviewText(warning))


NOT_SAMPLED = ("RefAny3D Split Latent: this joined latent from RefAny3D Empty Latent {what}, so the result would be "
               "{result}. Connect the FLUX.1 model through RefAny3D Apply (with the adapter, the VAE and the reference "
               "views) and sample the latent with the model RefAny3D Apply returns.")
UNRECOGNISED = ("RefAny3D Split Latent: WARNING: this latent does not come out of a sampler running a RefAny3D Apply "
                "model as it is (the last sampler's model may not pass through RefAny3D Apply, or the latent was "
                "changed after sampling). If the two halves look like one wide picture rather than an image and "
                "its point map, sample with the model from RefAny3D Apply.")


def check_sampled(node_cls, samples: dict) -> str | None:
    """None when ``samples`` came out of a RefAny3D sampling run (model_patches.provenance); raises when a
    latent of RefAny3D Empty Latent evidently was not sampled by RefAny3D (still empty, or no RefAny3D
    Apply upstream in the graph); otherwise the warning to show."""
    x = samples["samples"]
    if sampled_by_refany3d(x):
        return None
    if samples.get(JOINED_KEY):
        if not bool(torch.count_nonzero(x)):
            raise RefAny3DError(NOT_SAMPLED.format(what="is still empty (no sampler ran on it)",
                                                   result="a flat grey image and point map"))
        upstream = upstream_node_types(getattr(node_cls, "hidden", None))
        if upstream is not None and "RefAny3DApply" not in upstream:
            raise RefAny3DError(NOT_SAMPLED.format(
                what="was sampled by a model that does not come from RefAny3D Apply (there is no RefAny3D Apply "
                     "upstream of this node)",
                result="plain Flux's two unrelated pictures side by side instead of an image and its point map"))
    return UNRECOGNISED


def upstream_node_types(hidden) -> set[str] | None:
    """The class types of every node this node depends on in the running graph, or None when the graph
    cannot be read."""
    dynprompt = getattr(hidden, "dynprompt", None)
    start = getattr(hidden, "unique_id", None)
    if dynprompt is None or start is None:
        return None
    seen, todo, types = set(), [start], set()
    while todo:
        node_id = todo.pop()
        if node_id in seen:
            continue
        seen.add(node_id)
        try:
            node = dynprompt.get_node(node_id)
        except Exception:  # a node the graph does not list: no evidence either way
            return None
        if node_id != start:
            types.add(node.get("class_type"))
        for value in (node.get("inputs") or {}).values():
            if isinstance(value, list) and len(value) == 2 and isinstance(value[1], int):
                todo.append(str(value[0]))
    return types


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
    def validate_inputs(cls, threshold=None) -> bool | str:
        # an input of validate_inputs gets no range check from ComfyUI: the range is checked here too
        if threshold is not None and not (isinstance(threshold, (int, float)) and 0.0 <= threshold <= 1.0):
            return f"threshold must be a number between 0 and 1 (the release's background is ≥ 0.9), got {threshold}"
        return True

    @classmethod
    def execute(cls, point_map, threshold=0.9) -> io.NodeOutput:
        if not (isinstance(threshold, (int, float)) and math.isfinite(threshold) and 0.0 <= threshold <= 1.0):
            raise RefAny3DError(f"threshold must be a number between 0 and 1, got {threshold}")
        if point_map.ndim != 4 or point_map.shape[-1] < 3:
            raise RefAny3DError(f"point_map must be an IMAGE batch B×H×W×3, got shape {tuple(point_map.shape)}")
        background = (point_map[..., :3] >= threshold).all(dim=-1)
        return io.NodeOutput((~background).float())


NODES = [RefAny3DEmptyLatent, RefAny3DSplitLatent, RefAny3DPointMapToMask]

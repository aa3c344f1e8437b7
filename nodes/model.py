"""RefAny3DApply: a FLUX.1 MODEL that samples RefAny3D (see model_patches/patch.py for the design)."""
from __future__ import annotations

import logging
import math

from comfy_api.latest import io

from ..model_patches import DEFAULT_GUIDANCE_PASS, GUIDANCE_PASSES, RefAny3DError, apply_to_views
from ..model_patches.cache import GB, MemoryBudget
from .notify import log, show_on_node
from .sockets import Adapter

GUIDANCE_MIN, GUIDANCE_MAX = 0.0, 20.0
CACHE_GB_MAX = 4096.0


def cache_budget(device_gb: float = -1.0, cpu_gb: float = -1.0) -> MemoryBudget:
    """The reference cache's limits from the node's inputs (GB; negative: none of its own, only what
    ComfyUI reports free)."""
    def limit(gb):
        return None if gb is None or gb < 0 else int(gb * GB)
    return MemoryBudget(device=limit(device_gb), host=limit(cpu_gb))


def placement_notifier(node_id):
    """``notify(text, warning)`` for the patch: the cache's placement in the log and on the Apply node
    (sent when the first sampling step decides it, after the node itself has run)."""
    def notify(text: str, warning: bool) -> None:
        (log.warning if warning else log.info)("RefAny3D Apply (node %s): %s", node_id, text)
        show_on_node(node_id, text)
    return notify


def guidance_problem(image_guidance) -> str | None:
    """Why ``image_guidance`` cannot be used (NaN/inf, out of range), else None."""
    if image_guidance is None:
        return None
    if (isinstance(image_guidance, bool) or not isinstance(image_guidance, (int, float))
            or not math.isfinite(image_guidance) or not GUIDANCE_MIN <= image_guidance <= GUIDANCE_MAX):
        return (f"image_guidance must be a finite number between {GUIDANCE_MIN:g} and {GUIDANCE_MAX:g} (the release "
                f"uses 2.0; 1.0 turns the guidance pass off), got {image_guidance}")
    return None


class RefAny3DApply(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="RefAny3DApply",
            display_name="RefAny3D Apply",
            category="RefAny3D/model",
            description=("Turns a FLUX.1-dev MODEL into the RefAny3D model: the reference views are encoded once "
                         "with the VAE and every sampling step runs the RefAny3D transformer (token groups, "
                         "routed LoRAs, group mask) on a clone of the model. Sample a RefAny3D Empty Latent "
                         "with any sampler, then RefAny3D Split Latent → VAE Decode."),
            inputs=[
                io.Model.Input("model", tooltip="A FLUX.1-dev diffusion model (any weight dtype, other LoRAs allowed)."),
                Adapter.Input("adapter", tooltip="The RefAny3D files from RefAny3D Load Adapter."),
                io.Vae.Input("vae", tooltip="The Flux VAE (ae.safetensors): encodes the reference views once."),
                io.Image.Input("reference_rgb",
                               tooltip="The N RGB reference views (e.g. RefAny3D Render Views 'rgb'); sizes a "
                                       "multiple of 16, the release uses 512×512."),
                io.Image.Input("reference_point_map",
                               tooltip="The N point-map reference views, same views in the same order and size "
                                       "as reference_rgb (RefAny3D Render Views 'point_map')."),
                io.Float.Input("image_guidance", default=2.0, min=GUIDANCE_MIN, max=GUIDANCE_MAX, step=0.05,
                               tooltip="Image guidance s: v = v_black + s·(v_ref − v_black), with a second pass on "
                                       "black references. 2.0 as in the release demo; 1.0 skips the second pass."),
                io.Combo.Input("guidance_pass", options=list(GUIDANCE_PASSES), default=DEFAULT_GUIDANCE_PASS,
                               tooltip="How the black-reference pass attends. 'unmasked (release)': every token "
                                       "sees every token, as the authors' inference code runs it (reproduces the "
                                       "release). 'masked': the same group mask as the reference pass."),
                io.Boolean.Input("cache_references", default=False,
                                 tooltip="Cached variant (docs/method.md §4): references attend only to references, so their "
                                         "keys/values are computed at the first step and reused. Faster; uses "
                                         "more memory; results differ slightly from the default. The cache's size "
                                         "and where it was kept are shown here at the first step."),
                io.Float.Input("cache_device_gb", default=-1.0, min=-1.0, max=CACHE_GB_MAX, step=0.5, optional=True,
                               tooltip="Most GB the reference cache may take on the GPU. -1: whatever ComfyUI reports "
                                       "free beside the loaded model and the step's own memory. When it does not "
                                       "fit, the cache goes to CPU memory (brought in block by block), else it is "
                                       "not kept (same result, slower)."),
                io.Float.Input("cache_cpu_gb", default=-1.0, min=-1.0, max=CACHE_GB_MAX, step=0.5, optional=True,
                               tooltip="Most GB the reference cache may take in CPU memory when it does not fit on "
                                       "the GPU. -1: the free memory ComfyUI reports, less 4 GB. 0: never in CPU "
                                       "memory."),
            ],
            hidden=[io.Hidden.unique_id],
            outputs=[io.Model.Output(tooltip="The RefAny3D model (a patched clone; the input model is unchanged).")],
        )

    # A NaN passes ComfyUI's own min/max check (every comparison with NaN is false) and would paint a black
    # picture; an input of validate_inputs gets no range check from ComfyUI, so the range is checked here.
    @classmethod
    def validate_inputs(cls, image_guidance=None) -> bool | str:
        return guidance_problem(image_guidance) or True

    @classmethod
    def execute(cls, model, adapter, vae, reference_rgb, reference_point_map, image_guidance=2.0,
                guidance_pass=DEFAULT_GUIDANCE_PASS, cache_references=False, cache_device_gb=-1.0,
                cache_cpu_gb=-1.0) -> io.NodeOutput:
        problem = guidance_problem(image_guidance)
        if problem:
            raise RefAny3DError(problem)
        if reference_rgb.shape[2] > 512:
            logging.getLogger("RefAny3D").warning(
                "RefAny3D: reference views are %d px wide; the release shifts references by a fixed 32 token "
                "columns (512 px), so wider views overlap the target's positions. Use 512 px views.",
                reference_rgb.shape[2])
        node_id = cls.hidden.unique_id if cls.hidden else None
        return io.NodeOutput(apply_to_views(model, adapter, vae, reference_rgb, reference_point_map, image_guidance,
                                            guidance_pass, cache_references, cache_budget(cache_device_gb, cache_cpu_gb),
                                            placement_notifier(node_id)))


NODES = [RefAny3DApply]

"""RefAny3D's model layer: the RefAny3D transformer on ComfyUI's FLUX.1, its weights, and the
sampling patch (a plain library: it takes images and latents, never meshes; ComfyUI is imported
inside the functions that need it). See ARCHITECTURE.md for the module map and docs/method.md for
the method.

This is the surface that nodes, tools and tests use; everything else is internal.
"""
from .adapter import AdapterWeights, RefAny3DAdapter
from .cache import ReferenceCache
from .errors import AdapterError, RefAny3DError, RefAny3DInputError
from .flux_check import check_flux, check_transformer_options, unsupported_features
from .forward import refany3d_forward
from .patch import (DEFAULT_GUIDANCE_PASS, GUIDANCE_PASSES, RefAny3DPatch, apply_refany3d, apply_to_views,
                    check_model, check_reference_images, encode_references, join, split_joined)
from .release_format import RELEASE_FILES, map_diffusers_module, release_modules
from .groups import GROUPS, REFERENCE_POINT_MAP, REFERENCE_RGB, TARGET_POINT_MAP, TARGET_RGB, TEXT
from .weights import convert_domain_embedder, load_adapter, load_domain_embedder, load_lora, validate_adapter

__all__ = [
    "AdapterError", "AdapterWeights", "DEFAULT_GUIDANCE_PASS", "GROUPS", "GUIDANCE_PASSES", "REFERENCE_POINT_MAP",
    "REFERENCE_RGB", "RELEASE_FILES", "RefAny3DAdapter", "RefAny3DError", "RefAny3DInputError", "RefAny3DPatch",
    "ReferenceCache", "TARGET_POINT_MAP", "TARGET_RGB", "TEXT", "apply_refany3d", "apply_to_views", "check_flux",
    "check_model", "check_reference_images", "check_transformer_options", "convert_domain_embedder",
    "encode_references", "join", "load_adapter", "load_domain_embedder", "load_lora", "map_diffusers_module",
    "refany3d_forward", "release_modules", "split_joined", "unsupported_features", "validate_adapter",
]

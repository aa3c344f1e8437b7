"""The base colour of a glTF 2.0 primitive, as the spec defines it, and the file's extensions.

Base colour = COLOR_0 × texture × baseColorFactor (glTF 2.0 §3.9.2): the texture is read at the
UV set its ``texCoord`` names, through KHR_texture_transform (an affine map of the UVs, so it is
applied per vertex: interpolation commutes with it) and with the sampler's wrap modes. A material
without ``baseColorFactor`` has the factor (1, 1, 1, 1): white. The pack's colour conventions
(docs/method.md §1.6): texels are sRGB and the factor linear (texture × factor is decoded,
multiplied and encoded back); a factor alone shows as sRGB(factor); COLOR_0 is shown as stored and
multiplies that result; a primitive with no material and no COLOR_0 is mid grey.
alphaMode MASK: alpha = factor alpha × COLOR_0 alpha × texel alpha, and a surface point with alpha
below ``alphaCutoff`` (default 0.5) is not drawn. OPAQUE and BLEND are drawn opaque (see
rendering/README.md for why).
"""
from __future__ import annotations

import math

import numpy as np
import torch

from .asset import MID_GREY
from .colors import linear_to_srgb
from .errors import AssetError
from .gltf_compressed import DECODERS, install_hint
from .gltf_document import GltfDocument
from .gltf_scene import PlacedPrimitive

REPEAT = 10497
WRAP_MODES = (33071, 33648, REPEAT)  # CLAMP_TO_EDGE, MIRRORED_REPEAT, REPEAT

#: extensions the reader follows
HONOURED = {"KHR_mesh_quantization", "KHR_texture_transform", "EXT_mesh_gpu_instancing",
            "KHR_materials_pbrSpecularGlossiness", "EXT_texture_webp"}
#: extensions that change neither geometry nor base colour (lighting, shading, metadata)
NO_EFFECT = {"KHR_lights_punctual", "KHR_materials_unlit", "KHR_materials_emissive_strength",
             "KHR_materials_clearcoat", "KHR_materials_ior", "KHR_materials_specular", "KHR_materials_sheen",
             "KHR_materials_transmission", "KHR_materials_volume", "KHR_materials_iridescence",
             "KHR_materials_anisotropy", "KHR_materials_dispersion", "KHR_materials_diffuse_transmission",
             "KHR_materials_variants", "KHR_xmp_json_ld", "KHR_xmp", "KHR_animation_pointer",
             "EXT_lights_image_based", "KHR_node_visibility", "MSFT_lod", "MSFT_packing_normalRoughnessMetallic",
             "MSFT_packing_occlusionRoughnessMetallic"}
#: compressed textures: only a base-colour texture is read, so the decoder is asked for where one
#: needs it (a KTX2 normal map alone does not stop a file from loading)
CHECKED_WHERE_USED = {"KHR_texture_basisu"}
#: compressed geometry: a required one is refused up front when its decoder is not installed
DECODED = set(DECODERS) - CHECKED_WHERE_USED


def check_extensions(doc: GltfDocument, available) -> list[str]:
    """AssetError for a required extension the reader cannot honour; warnings for used ones it ignores.
    ``available(name)`` tells whether a compressed-data extension's decoder is installed."""
    required = [e for e in doc.tree.get("extensionsRequired") or [] if isinstance(e, str)]
    used = [e for e in doc.tree.get("extensionsUsed") or [] if isinstance(e, str)]
    for ext in required:
        if ext in DECODED and not available(ext):
            raise AssetError(f"{doc.name} requires the glTF extension {ext}, whose decoder is not installed: "
                             f"{install_hint(ext)}")
        if ext not in HONOURED | NO_EFFECT | CHECKED_WHERE_USED | DECODED:
            raise AssetError(f"{doc.name} requires the glTF extension {ext}, which this reader does not support: "
                             "export the asset without it (e.g. re-export from Blender as plain GLB)")
    return [f"the file uses the glTF extension {ext}, which the reader ignores: the views may differ from what "
            "the asset's author sees" for ext in used if ext not in HONOURED | NO_EFFECT | CHECKED_WHERE_USED | DECODED]


def base_colour_source(material: dict) -> tuple[list[float], dict | None]:
    """(baseColorFactor RGBA, baseColorTexture info or None); a KHR_materials_pbrSpecularGlossiness
    material shows its diffuse colour (its metallic-roughness block is then the fallback for
    viewers without the extension)."""
    pbr = material.get("pbrMetallicRoughness")
    spec = (material.get("extensions") or {}).get("KHR_materials_pbrSpecularGlossiness")
    if isinstance(spec, dict):
        return list(spec.get("diffuseFactor") or [1.0] * 4), spec.get("diffuseTexture")
    pbr = pbr if isinstance(pbr, dict) else {}
    return list(pbr.get("baseColorFactor") or [1.0] * 4), pbr.get("baseColorTexture")


def texture_transform(uv: np.ndarray, info: dict) -> np.ndarray:
    """KHR_texture_transform: uv' = T · R · S · uv (rotation counter-clockwise in UV space)."""
    tt = (info.get("extensions") or {}).get("KHR_texture_transform")
    if not isinstance(tt, dict):
        return uv
    ox, oy = tt.get("offset", (0.0, 0.0))
    r = float(tt.get("rotation", 0.0))
    sx, sy = tt.get("scale", (1.0, 1.0))
    c, s = math.cos(r), math.sin(r)
    u, v = uv[:, 0], uv[:, 1]
    return np.stack([ox + c * sx * u + s * sy * v, oy - s * sx * u + c * sy * v], axis=1)


def uv_set(info: dict) -> int:
    tt = (info.get("extensions") or {}).get("KHR_texture_transform")
    if isinstance(tt, dict) and "texCoord" in tt:
        return int(tt["texCoord"])
    return int(info.get("texCoord", 0))


class MaterialReader:
    """Turns placed primitives into loading.Part objects; images are decoded once per image."""

    def __init__(self, doc: GltfDocument, decode_image, notes: list[str]):
        self.doc = doc
        self.decode_image = decode_image  # (doc, texture dict, texture index) -> PIL image
        self.notes = notes
        self._images: dict[int, object] = {}

    def texture(self, index):
        """(PIL image, (wrapS, wrapT)) of textures[index]."""
        tex = self.doc.item("textures", index, "texture")
        if index not in self._images:
            self._images[index] = self.decode_image(self.doc, tex, index)
        sampler = self.doc.item("samplers", tex["sampler"], "sampler") if "sampler" in tex else {}
        wrap = (sampler.get("wrapS", REPEAT), sampler.get("wrapT", REPEAT))
        if any(w not in WRAP_MODES for w in wrap):
            raise AssetError(f"{self.doc.name} is damaged: texture {index} has the unknown wrap mode {wrap}")
        return self._images[index], wrap

    def part(self, placed: PlacedPrimitive):
        from .loading import Part
        v, f, prim = placed.vertices, placed.faces, placed.primitive
        n = len(v)
        color0 = placed.attributes.get("COLOR_0")
        c_rgb = np.clip(color0[:, :3], 0, 1).astype(np.float32) if color0 is not None else np.ones((n, 3), np.float32)
        c_alpha = np.clip(color0[:, 3], 0, 1) if color0 is not None and color0.shape[1] == 4 else np.ones(n)
        if "material" not in prim:
            colors = c_rgb if color0 is not None else np.full((n, 3), MID_GREY, np.float32)
            return Part(v, f, colors)
        material = self.doc.item("materials", prim["material"], "material")
        factor, info = base_colour_source(material)
        factor = [float(x) for x in (factor + [1.0] * 4)[:4]]
        cutoff = None
        if material.get("alphaMode") == "MASK":
            cutoff = float(material.get("alphaCutoff", 0.5))
        alpha = (factor[3] * c_alpha).astype(np.float32) if cutoff is not None else None
        if isinstance(info, dict) and "index" in info:
            image, wrap = self.texture(info["index"])
            k = uv_set(info)
            uv = placed.attributes.get(f"TEXCOORD_{k}")
            if uv is not None:
                uv = texture_transform(uv[:, :2], info)
                uv_up = np.stack([uv[:, 0], 1.0 - uv[:, 1]], axis=1).astype(np.float32)
                return Part(v, f, c_rgb, uv_up, image, tuple(factor[:3]), wrap=wrap, alpha=alpha, cutoff=cutoff)
            self.notes.append(f"{placed.label} has a base-colour texture but no TEXCOORD_{k}, so the texture cannot "
                              "be placed: that part shows its flat colour instead. Export the asset with UVs to "
                              "see its texture.")
        flat = linear_to_srgb(torch.tensor(factor[:3], dtype=torch.float64)).numpy().astype(np.float32)
        return Part(v, f, flat[None, :] * c_rgb, alpha=alpha, cutoff=cutoff)

"""RefAny3D end to end in the real headless ComfyUI (issue 4, "Must show" 7).

A 3072-wide Flux (1 double + 1 single block, random weights) through the stock UNETLoader, a
random TAESD-format VAE through VAELoader, test conditioning from a test-only node, release-format
adapter files through RefAny3D Load Adapter, reference renders from RefAny3D Load 3D Asset →
RefAny3D Render Views (64 px, 2 views), RefAny3D Apply, a few KSampler steps on the joined latent,
split, both halves decoded by core VAEDecode and saved. Progress arrives; Cancel stops the run within
a step. The runs meant to fail use a private server so their tracebacks stay out of the shared log.
"""
from __future__ import annotations

import os
import uuid

import numpy as np
import pytest
from tools.assets_gen import GltfPart, box, smooth_texture, uv_sphere, write_glb
from tools.comfy_server import ComfyServer
from PIL import Image

from conftest import COMFY_DIR, TEST_NODES
from tools import tiny_models as tiny
from tools.release_files import save_release_files

UNET, VAE = tiny.TINY_UNET_NAME, tiny.TINY_VAE_NAME
RES, VIEWS, SIZE = 64, 2, 64


def provide_models(models_dir, width=3072):
    """The tiny stock-loadable models (shared file names with the other ComfyUI tests) and a
    fresh sub-folder of release-format adapter files; returns the adapter sub-folder name."""
    tiny.provide_stock_models(models_dir)
    sub = f"transformer_{width}_{uuid.uuid4().hex[:6]}"
    save_release_files(models_dir / "refany3d" / sub, width, 1, 1, rank=16, seed=5)
    return sub


def upload_asset(server, tmp_path) -> str:
    v, f, uv = uv_sphere(12, 24, radius=0.8)
    bv, bf, _ = box((0.5, 0.5, 0.5))
    parts = [GltfPart(v, f, uv=np.c_[uv[:, 0], 1 - uv[:, 1]], texture=smooth_texture(32)),
             GltfPart(bv, bf, factor=(0.1, 0.6, 0.2, 1.0), translation=(0.0, 0.9, 0.0))]
    return server.upload(write_glb(tmp_path / "refany3d_transformer_asset.glb", parts), subfolder="3d")


def graph(sub, asset, steps=3, seed=0, image_guidance=2.0, guidance_pass="unmasked (release)", cache=False,
          rgb_ref=("render", 0), pm_ref=("render", 1), latent=None, weight_dtype="default"):
    g = {
        "unet": {"class_type": "UNETLoader", "inputs": {"unet_name": UNET, "weight_dtype": weight_dtype}},
        "vae": {"class_type": "VAELoader", "inputs": {"vae_name": VAE}},
        "cond": {"class_type": "RefAny3DTestConditioning",
                 "inputs": {"seed": 1, "tokens": 8, "context_dim": 4096, "pooled_dim": 768, "guidance": 3.5}},
        "adapter": {"class_type": "RefAny3DLoadAdapter",
                    "inputs": {"reference_lora": f"{sub}/default.safetensors", "domain_lora": f"{sub}/coord.safetensors",
                               "domain_embedder": f"{sub}/domain_embedder.pth"}},
        "asset": {"class_type": "RefAny3DLoadAsset", "inputs": {"asset_file": asset}},
        "render": {"class_type": "RefAny3DRenderViews",
                   "inputs": {"asset": ["asset", 0], "num_views": VIEWS, "preset": "release", "resolution": RES,
                              "pitch": 0.0, "y_rotation": 0.0, "radius": 4.0, "fov": 45.0}},
        "apply": {"class_type": "RefAny3DApply",
                  "inputs": {"model": ["unet", 0], "adapter": ["adapter", 0], "vae": ["vae", 0],
                             "reference_rgb": list(rgb_ref), "reference_point_map": list(pm_ref),
                             "image_guidance": image_guidance, "guidance_pass": guidance_pass,
                             "cache_references": cache}},
        "shift": {"class_type": "ModelSamplingFlux",
                  "inputs": {"model": ["apply", 0], "max_shift": 1.15, "base_shift": 0.5, "width": SIZE,
                             "height": SIZE}},
        "latent": {"class_type": "RefAny3DEmptyLatent", "inputs": {"width": SIZE, "height": SIZE, "batch_size": 1}},
        "ks": {"class_type": "KSampler",
               "inputs": {"model": ["shift", 0], "positive": ["cond", 0], "negative": ["cond", 0],
                          "latent_image": list(latent or ("latent", 0)), "seed": seed, "steps": steps, "cfg": 1.0,
                          "sampler_name": "euler", "scheduler": "simple", "denoise": 1.0}},
        "split": {"class_type": "RefAny3DSplitLatent", "inputs": {"samples": ["ks", 0]}},
        "dec_rgb": {"class_type": "VAEDecode", "inputs": {"samples": ["split", 0], "vae": ["vae", 0]}},
        "dec_pm": {"class_type": "VAEDecode", "inputs": {"samples": ["split", 1], "vae": ["vae", 0]}},
        "save_rgb": {"class_type": "SaveImage", "inputs": {"images": ["dec_rgb", 0], "filename_prefix": "refany3d/out_rgb"}},
        "save_pm": {"class_type": "SaveImage", "inputs": {"images": ["dec_pm", 0], "filename_prefix": "refany3d/out_pm"}},
        "mask": {"class_type": "RefAny3DPointMapToMask", "inputs": {"point_map": ["dec_pm", 0], "threshold": 0.9}},
        "mask_img": {"class_type": "MaskToImage", "inputs": {"mask": ["mask", 0]}},
        "save_mask": {"class_type": "SaveImage", "inputs": {"images": ["mask_img", 0], "filename_prefix": "refany3d/out_mask"}},
    }
    return g


@pytest.fixture(scope="module")
def setup(comfy, tmp_path_factory):
    sub = provide_models(comfy.models_dir)
    return sub, upload_asset(comfy, tmp_path_factory.mktemp("transformer-comfy"))


def load(path):
    with Image.open(path) as img:
        return np.asarray(img.convert("RGB"), dtype=np.float64) / 255


def test_schemas_have_tooltips_and_categories(comfy):
    info = comfy.object_info()
    expected = {"RefAny3DApply": ["MODEL"], "RefAny3DEmptyLatent": ["LATENT"],
                "RefAny3DSplitLatent": ["LATENT", "LATENT"], "RefAny3DPointMapToMask": ["MASK"]}
    for node, outputs in expected.items():
        assert info[node]["output"] == outputs
        assert info[node]["category"].startswith("RefAny3D/")
        for name, spec in info[node]["input"]["required"].items():
            assert spec[1].get("tooltip"), (node, name)
    apply = info["RefAny3DApply"]["input"]["required"]
    assert apply["adapter"][0] == "REFANY3D_ADAPTER" and apply["vae"][0] == "VAE"
    assert apply["image_guidance"][1]["default"] == 2.0
    assert apply["guidance_pass"][1]["default"] == "unmasked (release)"
    assert apply["cache_references"][1]["default"] is False


def test_sample_split_decode_save_with_progress(comfy, setup):
    sub, asset = setup
    steps = 3
    result = comfy.run(graph(sub, asset, steps=steps), timeout=600)
    assert result.status == "success", result.error_text() + comfy.log_text()[-3000:]
    ks = [p for p in result.progress() if p.get("node") == "ks"]
    assert [p["value"] for p in ks][-1] == steps and all(p["max"] == steps for p in ks)
    rgb, pm = (load(comfy.output_files(result, n)[0]) for n in ("save_rgb", "save_pm"))
    mask = load(comfy.output_files(result, "save_mask")[0])
    assert rgb.shape == pm.shape == mask.shape == (SIZE, SIZE, 3)
    assert np.isfinite(rgb).all() and rgb.std() > 0 and pm.std() > 0
    assert not np.array_equal(rgb, pm)  # two different latents were sampled and decoded
    assert set(np.unique(mask)) <= {0.0, 1.0}
    # the cached variant and the masked guidance pass run too, on fp8 weights (ComfyUI's manual cast)
    cached = comfy.run(graph(sub, asset, steps=2, cache=True, guidance_pass="masked", weight_dtype="fp8_e4m3fn"),
                       timeout=600)
    assert cached.status == "success", cached.error_text()
    assert [p["value"] for p in cached.progress() if p.get("node") == "ks"][-1] == 2
    assert "model weight dtype torch.float8_e4m3fn" in comfy.log_text(), comfy.log_text()[-3000:]
    fp8_rgb = load(comfy.output_files(cached, "save_rgb")[0])
    assert fp8_rgb.shape == (SIZE, SIZE, 3) and np.isfinite(fp8_rgb).all()


def test_cancel_stops_sampling_within_a_step(comfy, setup):
    sub, asset = setup
    steps = 30
    seen = {}

    def on_message(msg):
        data = msg.get("data") or {}
        if msg.get("type") == "progress" and data.get("node") == "ks" and "at" not in seen:
            seen["at"] = data["value"]
            comfy.interrupt()
    result = comfy.run(graph(sub, asset, steps=steps, seed=123), timeout=600, on_message=on_message)
    assert result.status == "interrupted", result.error_text()
    values = [p["value"] for p in result.progress() if p.get("node") == "ks"]
    assert "at" in seen and max(values) <= seen["at"] + 1 < steps, (seen, values)
    # and the server is fine afterwards
    assert comfy.run(graph(sub, asset, steps=1, seed=7), timeout=600).status == "success"


# ---------------------------------------------------------------------------------------------
# clear errors, on a private server (their tracebacks stay out of the shared server's log)

@pytest.fixture(scope="module")
def private(comfy, tmp_path_factory):
    with ComfyServer(tmp_path_factory.mktemp("comfy-transformer-errors"), COMFY_DIR,
                     extra_custom_nodes=[TEST_NODES]) as server:
        for folder, name in (("diffusion_models", UNET), ("vae", VAE)):
            src = comfy.models_dir / folder / name
            if not src.exists():
                provide_models(comfy.models_dir)
            dst = server.models_dir / folder / name
            dst.parent.mkdir(parents=True, exist_ok=True)
            os.link(src, dst)
        narrow = provide_models(server.models_dir, width=64)
        wide = provide_models(server.models_dir)
        asset = upload_asset(server, tmp_path_factory.mktemp("transformer-errors"))
        yield server, narrow, wide, asset


def failing(server, g, node):
    result = server.run(g, timeout=600)
    assert result.status == "error", result.status
    assert result.error["node_type"] == node, result.error_text()
    return result.error_text()


def test_adapter_of_another_width_is_rejected(private):
    server, narrow, _, asset = private
    text = failing(server, graph(narrow, asset, steps=1), "RefAny3DApply")
    assert "for a D=64 wide Flux" in text and "hidden size is 3072" in text, text


def test_reference_batches_of_different_length_or_size_are_rejected(private):
    server, _, wide, asset = private
    g = graph(wide, asset, steps=1, pm_ref=("img", 0))
    g["img"] = {"class_type": "EmptyImage", "inputs": {"width": RES, "height": RES, "batch_size": 3, "color": 0}}
    text = failing(server, g, "RefAny3DApply")
    assert "reference_rgb has 2 views but reference_point_map has 3" in text, text
    g["img"]["inputs"].update(batch_size=2, width=2 * RES)
    text = failing(server, g, "RefAny3DApply")
    assert "reference_rgb views are 64×64 but reference_point_map views are 128×64" in text, text


def test_reference_size_the_vae_cannot_take_is_rejected(private):
    server, _, wide, asset = private
    g = graph(wide, asset, steps=1, rgb_ref=("img", 0), pm_ref=("img", 0))
    g["img"] = {"class_type": "EmptyImage", "inputs": {"width": 72, "height": 72, "batch_size": 2, "color": 0}}
    text = failing(server, g, "RefAny3DApply")
    assert "reference views are 72×72; width and height must be multiples of 16" in text, text


def test_odd_joined_latent_is_rejected(private):
    server, _, wide, asset = private
    g = graph(wide, asset, steps=1, latent=("core_latent", 0))
    g["core_latent"] = {"class_type": "EmptySD3LatentImage", "inputs": {"width": 72, "height": 64, "batch_size": 1}}
    text = failing(server, g, "KSampler")
    assert "must be the RGB and point-map latents side by side (even width); got width 9" in text, text
    assert "RefAny3D Empty Latent" in text


# ---------------------------------------------------------------------------------------------
# core features the RefAny3D block loop does not apply are named, never silently dropped

def test_attention_patch_before_apply_is_named_at_apply(private):
    server, _, wide, asset = private
    g = graph(wide, asset, steps=1)
    g["patch"] = {"class_type": "RefAny3DTestModelPatch", "inputs": {"model": ["unet", 0], "patch": "attn1_patch"}}
    g["apply"]["inputs"]["model"] = ["patch", 0]
    text = failing(server, g, "RefAny3DApply")
    assert "RefAny3D Apply: the model carries an attention patch (attn1_patch" in text, text
    assert "remove the node(s) that add them between the model loader and the sampler" in text


@pytest.mark.parametrize("patch, words", [("attn1_patch", "an attention patch (attn1_patch"),
                                          ("double_block_replace", "block replacements (patches_replace dit: double_block 0")])
def test_patch_added_after_apply_is_named_at_the_first_step(private, patch, words):
    server, _, wide, asset = private
    g = graph(wide, asset, steps=2)
    g["patch"] = {"class_type": "RefAny3DTestModelPatch", "inputs": {"model": ["apply", 0], "patch": patch}}
    g["shift"]["inputs"]["model"] = ["patch", 0]
    text = failing(server, g, "KSampler")
    assert f"RefAny3D (sampling): the model carries {words}" in text, text


def test_core_nag_guidance_in_front_of_refany3d_is_named(private):
    server, _, wide, asset = private
    if "NAGuidance" not in server.object_info():
        pytest.skip("this ComfyUI has no NAGuidance node (added after v0.3.75)")
    g = graph(wide, asset, steps=1)
    g["nag"] = {"class_type": "NAGuidance",
                "inputs": {"model": ["unet", 0], "nag_scale": 5.0, "nag_alpha": 0.5, "nag_tau": 1.5}}
    g["apply"]["inputs"]["model"] = ["nag", 0]
    text = failing(server, g, "RefAny3DApply")
    assert "attention-output patch (attn1_output_patch; e.g. from Normalized Attention Guidance (NAGuidance)" in text, \
        text

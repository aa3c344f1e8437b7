"""The bad-input catalogue: every way a careless or hostile user was seen to get a quiet wrong result,
each as a test through the real server (or the real client), each checking three things: the message
says what is wrong and what to do, the server keeps serving, and nothing is written half-way.

To add a case: put it in the section of its area, use ``private`` (a server of its own, so expected
tracebacks stay out of the shared server's log) and end with ``still_serving(server)``.
"""
from __future__ import annotations

import pytest
from tools.comfy_server import ComfyServer

from conftest import COMFY_DIR, TEST_NODES


@pytest.fixture(scope="module")
def private(tmp_path_factory):
    """A ComfyUI server of this module's own, with the pack and the test-only nodes."""
    with ComfyServer(tmp_path_factory.mktemp("comfy-bad-input"), COMFY_DIR, extra_custom_nodes=[TEST_NODES]) as server:
        yield server


def still_serving(server) -> None:
    """The server answers and runs a small render graph after the bad input."""
    from tools.demo_asset import write_demo_asset
    name = "still_serving_box.glb"
    path = server.input_dir / "3d" / name
    if not path.exists():
        write_demo_asset(path)
    graph = {"asset": {"class_type": "RefAny3DLoadAsset", "inputs": {"asset_file": f"3d/{name}"}},
             "render": {"class_type": "RefAny3DRenderViews",
                        "inputs": {"asset": ["asset", 0], "num_views": 1, "preset": "release", "resolution": 32,
                                   "pitch": 0.0, "y_rotation": 0.0, "radius": 4.0, "fov": 45.0}},
             "preview": {"class_type": "PreviewImage", "inputs": {"images": ["render", 0]}}}
    result = server.run(graph, timeout=300)
    assert result.status == "success", result.error_text()


# ============================================================================ client (cases 1, 2, 8)


# ============================================================================ weights and latents (cases 3, 9)

WL_SIZE = 64  # px of one generated image (latent 8×8 per half)


@pytest.fixture(scope="module")
def wl_setup(private, tmp_path_factory):
    """The tiny stock-loadable Flux and VAE, release-format adapter files (3072 wide, 1 + 1 blocks) and a
    small asset in the private server's folders: (adapter sub-folder, asset name)."""
    import uuid

    from tools import tiny_models as tiny
    from tools.assets_gen import box, write_glb, GltfPart
    from tools.release_files import save_release_files
    tiny.provide_stock_models(private.models_dir)
    sub = f"wl_{uuid.uuid4().hex[:6]}"
    save_release_files(private.models_dir / "refany3d" / sub, 3072, 1, 1, rank=16, seed=5)
    v, f, _ = box((0.8, 0.5, 0.6))
    asset = private.upload(write_glb(tmp_path_factory.mktemp("wl") / "wl_box.glb",
                                     [GltfPart(v, f, factor=(0.8, 0.3, 0.1, 1.0))]), subfolder="3d")
    return sub, asset


def wl_graph(sub, asset, image_guidance=2.0, latent=("latent", 0), sampler_model=("apply", 0), steps=1):
    """Asset → 2 reference views (64 px) → RefAny3D Apply on the tiny Flux → KSampler on the joined latent →
    RefAny3D Split Latent → both halves saved as latents (cheap output nodes)."""
    from tools.tiny_models import TINY_UNET_NAME, TINY_VAE_NAME
    return {
        "unet": {"class_type": "UNETLoader", "inputs": {"unet_name": TINY_UNET_NAME, "weight_dtype": "default"}},
        "vae": {"class_type": "VAELoader", "inputs": {"vae_name": TINY_VAE_NAME}},
        "cond": {"class_type": "RefAny3DTestConditioning",
                 "inputs": {"seed": 1, "tokens": 8, "context_dim": 4096, "pooled_dim": 768, "guidance": 3.5}},
        "adapter": {"class_type": "RefAny3DLoadAdapter",
                    "inputs": {"reference_lora": f"{sub}/default.safetensors", "domain_lora": f"{sub}/coord.safetensors",
                               "domain_embedder": f"{sub}/domain_embedder.pth"}},
        "asset": {"class_type": "RefAny3DLoadAsset", "inputs": {"asset_file": asset}},
        "render": {"class_type": "RefAny3DRenderViews",
                   "inputs": {"asset": ["asset", 0], "num_views": 2, "preset": "release", "resolution": 64,
                              "pitch": 0.0, "y_rotation": 0.0, "radius": 4.0, "fov": 45.0}},
        "apply": {"class_type": "RefAny3DApply",
                  "inputs": {"model": ["unet", 0], "adapter": ["adapter", 0], "vae": ["vae", 0],
                             "reference_rgb": ["render", 0], "reference_point_map": ["render", 1],
                             "image_guidance": image_guidance, "guidance_pass": "unmasked (release)",
                             "cache_references": False}},
        "latent": {"class_type": "RefAny3DEmptyLatent", "inputs": {"width": WL_SIZE, "height": WL_SIZE, "batch_size": 1}},
        "ks": {"class_type": "KSampler",
               "inputs": {"model": list(sampler_model), "positive": ["cond", 0], "negative": ["cond", 0],
                          "latent_image": list(latent), "seed": 0, "steps": steps, "cfg": 1.0,
                          "sampler_name": "euler", "scheduler": "simple", "denoise": 1.0}},
        "split": {"class_type": "RefAny3DSplitLatent", "inputs": {"samples": ["ks", 0]}},
        "save_rgb": {"class_type": "SaveLatent", "inputs": {"samples": ["split", 0], "filename_prefix": "wl/rgb"}},
        "save_pm": {"class_type": "SaveLatent", "inputs": {"samples": ["split", 1], "filename_prefix": "wl/pm"}},
    }


def wl_failing(server, graph, node_type) -> str:
    result = server.run(graph, timeout=600)
    assert result.status == "error", f"{result.status}: the bad input went through"
    assert result.error["node_type"] == node_type, result.error_text()
    return result.error["exception_message"]


def wl_rejected(server, graph) -> dict:
    """The node errors of a graph the server refuses at validation: {node id: [(input, details)]}."""
    from tools.comfy_http import PromptRejected
    with pytest.raises(PromptRejected) as exc:
        server.submit(graph)
    return {node: [((e.get("extra_info") or {}).get("input_name"), e.get("details", "")) for e in err["errors"]]
            for node, err in (exc.value.body.get("node_errors") or {}).items()}


def wl_corrupt(folder, which: str, how: str) -> None:
    """Writes NaN, inf or an absurd magnitude into one tensor of a release-format file in ``folder``."""
    import safetensors.torch
    import torch
    value = {"nan": float("nan"), "inf": float("-inf"), "huge": 3.0e30}[how]
    if which == "domain_embedder":
        path = folder / "domain_embedder.pth"
        sd = torch.load(str(path), weights_only=True)
        sd["3.weight"][5, 7] = value
        torch.save(sd, str(path))
        return
    path = folder / {"reference": "default.safetensors", "domain": "coord.safetensors"}[which]
    sd = safetensors.torch.load_file(str(path))
    sd["transformer.single_transformer_blocks.0.proj_out.lora_B.weight"][3, 2] = value
    safetensors.torch.save_file(sd, str(path))


@pytest.mark.parametrize("which, how, file, words", [
    ("reference", "nan", "default.safetensors", "1 non-finite value(s) (NaN)"),
    ("domain", "huge", "coord.safetensors", "a value of magnitude 3e+30"),
    ("domain_embedder", "inf", "domain_embedder.pth", "1 non-finite value(s) (inf)"),
])
def test_weight_file_with_nan_inf_or_absurd_values_is_refused_by_load_adapter(private, which, how, file, words):
    """Case 3: such files used to load, and the run "succeeded" with a black image and point map."""
    import uuid

    from tools.release_files import save_release_files
    sub = f"bad_{which}_{uuid.uuid4().hex[:6]}"
    folder = private.models_dir / "refany3d" / sub
    save_release_files(folder, 64, 1, 1, rank=4, seed=2)
    wl_corrupt(folder, which, how)
    graph = {"adapter": {"class_type": "RefAny3DLoadAdapter",
                         "inputs": {"reference_lora": f"{sub}/default.safetensors", "domain_lora": f"{sub}/coord.safetensors",
                                    "domain_embedder": f"{sub}/domain_embedder.pth"}},
             "info": {"class_type": "RefAny3DTestAdapterInfo", "inputs": {"adapter": ["adapter", 0]}}}
    text = wl_failing(private, graph, "RefAny3DLoadAdapter")
    key = "'3.weight'" if which == "domain_embedder" else "'transformer.single_transformer_blocks.0.proj_out.lora_B.weight'"
    assert f"file '{file}'" in text and f"key {key}" in text and words in text, text
    assert "Use the released file again" in text, text
    still_serving(private)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -0.5, 25.0])
def test_image_guidance_nan_inf_or_out_of_range_is_refused_at_validation(private, wl_setup, value):
    """Case 3: an API caller's image_guidance NaN went through ComfyUI's min/max check (every comparison
    with NaN is false) and painted a black picture. The message lands on image_guidance only."""
    sub, asset = wl_setup
    errors = wl_rejected(private, wl_graph(sub, asset, image_guidance=value))
    assert list(errors) == ["apply"], errors
    (name, details), = errors["apply"]
    assert name == "image_guidance" and "image_guidance must be a finite number between 0 and 20" in details, details
    still_serving(private)


def test_every_float_input_of_the_pack_refuses_nan(private, wl_setup):
    """Case 3, every other float input: Point Map To Mask's threshold at validation (on that input);
    Render Views' pitch, y_rotation, radius and fov when the node runs (ComfyUI checks their ranges on
    their own widgets; the renderer refuses what is not finite, naming the input)."""
    _, asset = wl_setup
    mask = {"img": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0}},
            "mask": {"class_type": "RefAny3DPointMapToMask", "inputs": {"point_map": ["img", 0], "threshold": float("nan")}},
            "show": {"class_type": "MaskToImage", "inputs": {"mask": ["mask", 0]}},
            "preview": {"class_type": "PreviewImage", "inputs": {"images": ["show", 0]}}}
    errors = wl_rejected(private, mask)
    assert [n for n, _ in errors["mask"]] == ["threshold"] and "between 0 and 1" in errors["mask"][0][1], errors
    mask["mask"]["inputs"]["threshold"] = 1.5  # an API caller bypassing the widget's max
    assert [n for n, _ in wl_rejected(private, mask)["mask"]] == ["threshold"]
    for name in ("pitch", "y_rotation", "radius", "fov"):
        graph = {"asset": {"class_type": "RefAny3DLoadAsset", "inputs": {"asset_file": asset}},
                 "render": {"class_type": "RefAny3DRenderViews",
                            "inputs": {"asset": ["asset", 0], "num_views": 1, "preset": "release", "resolution": 32,
                                       "pitch": 0.0, "y_rotation": 0.0, "radius": 4.0, "fov": 45.0}},
                 "preview": {"class_type": "PreviewImage", "inputs": {"images": ["render", 0]}}}
        graph["render"]["inputs"][name] = float("nan")
        text = wl_failing(private, graph, "RefAny3DRenderViews")
        assert f"{name} must be a finite number, got nan" in text, text
    still_serving(private)


def test_core_latent_whose_halves_are_odd_is_named_at_the_sampler(private, wl_setup):
    """Case 9: a core EmptySD3LatentImage 80 px wide is 10 latent pixels: two halves of 5, which Flux's 2×2
    patches cannot take; the message used to be an internal shape error of the forward."""
    sub, asset = wl_setup
    graph = wl_graph(sub, asset, latent=("core", 0))
    graph["core"] = {"class_type": "EmptySD3LatentImage", "inputs": {"width": 80, "height": 64, "batch_size": 1}}
    text = wl_failing(private, graph, "KSampler")
    assert "the RefAny3D latent is 10×8 (latent pixels), so each half (RGB | point map) is 5×8" in text, text
    assert "Make the latent with RefAny3D Empty Latent (width and height of ONE image, multiples of 16)" in text, text
    still_serving(private)


def test_joined_latent_sampled_without_refany3d_apply_is_refused_at_split(private, wl_setup):
    """Case 9: sampling RefAny3D Empty Latent with the plain Flux "succeeded" (two pictures side by side).
    Split Latent now refuses it: the latent was not sampled by a RefAny3D model, and no RefAny3D Apply is
    upstream. An empty latent split without any sampling is refused too."""
    sub, asset = wl_setup
    graph = wl_graph(sub, asset, sampler_model=("unet", 0))
    for node in ("apply", "adapter", "render", "asset"):
        graph.pop(node)
    text = wl_failing(private, graph, "RefAny3DSplitLatent")
    assert "was sampled by a model that does not come from RefAny3D Apply" in text, text
    assert "plain Flux's two unrelated pictures side by side" in text and "through RefAny3D Apply" in text, text
    graph["split"]["inputs"]["samples"] = ["latent", 0]
    text = wl_failing(private, graph, "RefAny3DSplitLatent")
    assert "is still empty (no sampler ran on it)" in text, text
    still_serving(private)


def test_split_is_silent_after_refany3d_sampling_and_warns_after_a_plain_resampling(private, wl_setup):
    """Case 9, the other side: KSampler and SamplerCustomAdvanced (output and denoised_output) with the RefAny3D
    model split without a word; a plain-Flux sampler run after it (RefAny3D Apply still upstream, so no proof
    either way) gives a warning in the log and in the node's UI output, and the run goes on."""
    sub, asset = wl_setup
    graph = wl_graph(sub, asset, image_guidance=1.0)
    graph.update({
        "noise": {"class_type": "RandomNoise", "inputs": {"noise_seed": 3}},
        "guider": {"class_type": "BasicGuider", "inputs": {"model": ["apply", 0], "conditioning": ["cond", 0]}},
        "sampler": {"class_type": "KSamplerSelect", "inputs": {"sampler_name": "euler"}},
        "sigmas": {"class_type": "BasicScheduler", "inputs": {"model": ["apply", 0], "scheduler": "simple", "steps": 1,
                                                              "denoise": 1.0}},
        "sca": {"class_type": "SamplerCustomAdvanced",
                "inputs": {"noise": ["noise", 0], "guider": ["guider", 0], "sampler": ["sampler", 0],
                           "sigmas": ["sigmas", 0], "latent_image": ["latent", 0]}},
        "plain": {"class_type": "KSampler",
                  "inputs": {"model": ["unet", 0], "positive": ["cond", 0], "negative": ["cond", 0],
                             "latent_image": ["ks", 0], "seed": 4, "steps": 1, "cfg": 1.0, "sampler_name": "euler",
                             "scheduler": "simple", "denoise": 0.5}},
    })
    for name, source in (("split_out", ["sca", 0]), ("split_denoised", ["sca", 1]), ("split_plain", ["plain", 0])):
        graph[name] = {"class_type": "RefAny3DSplitLatent", "inputs": {"samples": source}}
        graph[f"save_{name}"] = {"class_type": "SaveLatent", "inputs": {"samples": [name, 0], "filename_prefix": f"wl/{name}"}}
    warned = private.log_text().count("RefAny3D Split Latent: WARNING")
    result = private.run(graph, timeout=600)
    assert result.status == "success", result.error_text()
    for quiet in ("split", "split_out", "split_denoised"):
        assert not result.outputs.get(quiet), (quiet, result.outputs.get(quiet))
    shown = result.outputs["split_plain"]["text"]
    assert len(shown) == 1 and "WARNING: this latent does not come out of a sampler running a RefAny3D Apply model" \
        in shown[0], shown
    assert private.log_text().count("RefAny3D Split Latent: WARNING") == warned + 1, private.log_text()[-3000:]
    still_serving(private)


# ============================================================================ assets and views (cases 4, 5, 6, 7)


# ============================================================================ friction (case 10)


def fr_render_graph(asset, **inputs):
    render = {"asset": ["asset", 0], "num_views": 1, "preset": "release", "resolution": 32, "pitch": 0.0,
              "y_rotation": 0.0, "radius": 4.0, "fov": 45.0}
    render.update(inputs)
    return {"asset": {"class_type": "RefAny3DLoadAsset", "inputs": {"asset_file": asset}},
            "render": {"class_type": "RefAny3DRenderViews", "inputs": render},
            "preview": {"class_type": "PreviewImage", "inputs": {"images": ["render", 0]}}}


@pytest.fixture(scope="module")
def fr_asset(private, tmp_path_factory):
    from tools.demo_asset import write_demo_asset
    return private.upload(write_demo_asset(tmp_path_factory.mktemp("fr") / "fr_box.glb"), subfolder="3d")


def test_resolution_error_is_one_message_on_the_resolution_input(private, fr_asset):
    """Case 10: a bad resolution was reported on two widgets (num_views and resolution). Now a resolution out
    of range is one message on resolution; one that is not a multiple of 16 (the UI's widget cannot make one,
    an API caller can) is refused when the node runs, naming the input."""
    errors = wl_rejected(private, fr_render_graph(fr_asset, resolution=5000))
    assert [name for name, _ in errors["render"]] == ["resolution"], errors
    result = private.run(fr_render_graph(fr_asset, resolution=40), timeout=300)
    assert result.status == "error" and result.error["node_type"] == "RefAny3DRenderViews", result.error_text()
    assert "resolution must be a multiple of 16 between 16 and 4096 (the VAE needs it), got 40" in \
        result.error["exception_message"]
    still_serving(private)


def test_61_to_64_views_with_the_release_preset_are_refused_at_validation(private, fr_asset):
    """Case 10: 61–64 views with the release preset passed validation and failed when rendering. The release
    preset takes frames of a 60-frame orbit; 'even' allows 64."""
    for views in (61, 64):
        errors = wl_rejected(private, fr_render_graph(fr_asset, num_views=views))
        assert sorted(name for name, _ in errors["render"]) == ["num_views", "preset"], errors
        assert all(f"60-frame orbit: at most 60 views (got {views}); use the 'even' preset" in d
                   for _, d in errors["render"]), errors
    assert sorted(n for n, _ in wl_rejected(private, fr_render_graph(fr_asset, num_views=65, preset="even"))["render"]) \
        == ["num_views", "preset"]
    result = private.run(fr_render_graph(fr_asset, num_views=64, preset="even", resolution=16), timeout=300)
    assert result.status == "success", result.error_text()
    still_serving(private)


def test_render_views_tooltips_say_how_the_angles_follow_from_n(private):
    """Case 10: the preset tooltip listed the 8-view angles whatever the count."""
    spec = private.object_info("RefAny3DRenderViews")["RefAny3DRenderViews"]["input"]["required"]
    preset, views = spec["preset"][1]["tooltip"], spec["num_views"][1]["tooltip"]
    assert "k = i·⌊60/N⌋" in preset and "angle k·6°" in preset and "angle i·360°/N" in preset, preset
    assert "N = 8: 0°, 42°" in preset and "at most 60 views" in preset and "at most 64 views" in preset, preset
    assert "At most 60 with the release preset, 64 with even" in views, views
    still_serving(private)


def test_readme_names_every_node_as_the_ui_shows_it(private):
    """Case 10: the README named a node by a title the UI does not show and left out RefAny3D Asset To Mesh.
    Its node table must list exactly the pack's nodes, by their display names."""
    import re

    from conftest import ROOT
    info = private.object_info()
    shown = {v["display_name"] for v in info.values() if v.get("category", "").startswith("RefAny3D/")
             and v["category"] != "RefAny3D/testing"}
    readme = (ROOT / "README.md").read_text()
    table = readme.split("## Nodes", 1)[1].split("\n## ", 1)[0]
    listed = {m.group(1).strip() for m in re.finditer(r"^\| (RefAny3D [^|]+?) \|", table, re.M)}
    assert listed == shown, (sorted(listed - shown), sorted(shown - listed))
    for name in re.findall(r"RefAny3D(?:\s+(?:[A-Z][a-z0-9]*|3D|To))+", readme):  # every node named in the text
        assert " ".join(name.split()) in shown, f"the README names '{name}', which the UI does not show"
    still_serving(private)


def test_startup_log_has_no_torchaudio_traceback_on_a_leg_with_torchaudio(private):
    """Case 10: `make run` printed ComfyUI's torchaudio traceback with "pip install -r requirements.txt" advice.
    The v0.31.0 leg that `make run` uses has torchaudio: its start-up log is clean. The v0.3.75 leg has none:
    the traceback is expected there, and the README's leg table says so."""
    import importlib.util

    from conftest import ROOT
    log = private.log_text()
    if importlib.util.find_spec("torchaudio") is not None:
        assert "No module named 'torchaudio'" not in log and "pip install -r requirements.txt" not in log, log[:5000]
    else:
        readme = (ROOT / "README.md").read_text()
        assert "no torchaudio (¹)" in readme and "expected and harmless" in readme
    still_serving(private)

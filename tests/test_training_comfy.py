"""RefAny3D training in the real headless ComfyUI (issue 11, "Must show" 6).

A generated asset uploaded → RefAny3D Load 3D Asset → RefAny3D Training Dataset (synthetic, 32 px,
2 views) → RefAny3D Encode Training Data (a random TAESD-format VAE, the test-only text-encoder
stand-in) → RefAny3D Train (a tiny random FLUX.1 built in code by a test-only node) → RefAny3D Save
Adapter; the trained adapter through RefAny3D Apply → KSampler → Split → VAE Decode, and the saved
files back through RefAny3D Load Adapter in a second graph. Progress and the loss arrive over the
websocket; Cancel mid-training leaves a state that a resumed run continues from; bad input gets a
clear error.
"""
from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import numpy as np
import pytest
import safetensors.torch
import torch
from tools.assets_gen import GltfPart, box, smooth_texture, uv_sphere, write_glb
from tools.comfy_http import PromptRejected
from PIL import Image

from model_patches import release_modules
from tools import tiny_models as tiny

VAE = tiny.TINY_VAE_NAME
SIZE, VIEWS, STEPS = 32, 2, 20


@pytest.fixture(scope="module")
def setup(comfy, tmp_path_factory):
    vae = comfy.models_dir / "vae" / VAE
    if not vae.exists():
        tiny.write_taesd_vae(vae, seed=0)
    v, f, uv = uv_sphere(10, 20, radius=0.8)
    bv, bf, _ = box((0.5, 0.5, 0.5))
    parts = [GltfPart(v, f, uv=np.c_[uv[:, 0], 1 - uv[:, 1]], texture=smooth_texture(32)),
             GltfPart(bv, bf, factor=(0.1, 0.6, 0.2, 1.0), translation=(0.0, 0.9, 0.0))]
    path = write_glb(tmp_path_factory.mktemp("training-comfy") / "refany3d_training_asset.glb", parts)
    return comfy.upload(path, subfolder="3d")


def train_graph(asset, name, steps=STEPS, resume=False, save_every=10, preview_every=10, kind="flux"):
    return {
        "model": {"class_type": "RefAny3DTestTinyModel", "inputs": {"kind": kind, "hidden_size": 64, "seed": 0}},
        "vae": {"class_type": "VAELoader", "inputs": {"vae_name": VAE}},
        "clip": {"class_type": "RefAny3DTestTextEncoder", "inputs": {"context_dim": 32, "pooled_dim": 16}},
        "asset": {"class_type": "RefAny3DLoadAsset", "inputs": {"asset_file": asset}},
        "data": {"class_type": "RefAny3DTrainingDataset",
                 "inputs": {"source": "synthetic", "folder": "", "count": 3, "size": SIZE, "views": VIEWS, "seed": 0,
                            "prompt_template": "a photo of {name}", "asset": ["asset", 0]}},
        "encode": {"class_type": "RefAny3DEncodeTrainingData",
                   "inputs": {"dataset": ["data", 0], "vae": ["vae", 0], "clip": ["clip", 0]}},
        "train": {"class_type": "RefAny3DTrain",
                  "inputs": {"model": ["model", 0], "encoded": ["encode", 0], "name": name, "steps": steps,
                             "batch_size": 1, "accumulation": 1, "optimizer": "adamw", "learning_rate": 1e-3,
                             "rank": 4, "seed": 0, "save_every": save_every, "preview_every": preview_every,
                             "resume": resume, "vae": ["vae", 0]}},
    }


def sample_graph(g, adapter_ref, prefix):
    """Apply → KSampler → Split → VAE Decode → SaveImage on ``g``'s tiny model, VAE and text encoder."""
    g.update({
        "render": {"class_type": "RefAny3DRenderViews",
                   "inputs": {"asset": ["asset", 0], "num_views": VIEWS, "preset": "release", "resolution": SIZE,
                              "pitch": 0.0, "y_rotation": 0.0, "radius": 4.0, "fov": 45.0}},
        "apply": {"class_type": "RefAny3DApply",
                  "inputs": {"model": ["model", 0], "adapter": list(adapter_ref), "vae": ["vae", 0],
                             "reference_rgb": ["render", 0], "reference_point_map": ["render", 1],
                             "image_guidance": 2.0, "guidance_pass": "unmasked (release)", "cache_references": False}},
        "cond": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["clip", 0], "text": "a photo of the object"}},
        "latent": {"class_type": "RefAny3DEmptyLatent", "inputs": {"width": SIZE, "height": SIZE, "batch_size": 1}},
        "ks": {"class_type": "KSampler",
               "inputs": {"model": ["apply", 0], "positive": ["cond", 0], "negative": ["cond", 0],
                          "latent_image": ["latent", 0], "seed": 0, "steps": 2, "cfg": 1.0, "sampler_name": "euler",
                          "scheduler": "simple", "denoise": 1.0}},
        "split": {"class_type": "RefAny3DSplitLatent", "inputs": {"samples": ["ks", 0]}},
        "dec_rgb": {"class_type": "VAEDecode", "inputs": {"samples": ["split", 0], "vae": ["vae", 0]}},
        "dec_pm": {"class_type": "VAEDecode", "inputs": {"samples": ["split", 1], "vae": ["vae", 0]}},
        "save_rgb": {"class_type": "SaveImage", "inputs": {"images": ["dec_rgb", 0], "filename_prefix": prefix + "_rgb"}},
        "save_pm": {"class_type": "SaveImage", "inputs": {"images": ["dec_pm", 0], "filename_prefix": prefix + "_pm"}},
    })
    return g


def load(path):
    with Image.open(path) as img:
        return np.asarray(img.convert("RGB"), dtype=np.float64) / 255


def release_keys() -> set[str]:
    return {f"transformer.{m}.lora_{ab}.weight" for m in release_modules(1, 1) for ab in "AB"}


def test_schemas_have_tooltips_and_categories(comfy):
    info = comfy.object_info()
    expected = {"RefAny3DTrainingDataset": ["REFANY3D_TRAINING_DATA"],
                "RefAny3DEncodeTrainingData": ["REFANY3D_ENCODED_DATA"],
                "RefAny3DTrain": ["REFANY3D_ADAPTER", "LOSS_MAP", "INT"], "RefAny3DSaveAdapter": []}
    for node, outputs in expected.items():
        assert info[node]["output"] == outputs, node
        assert info[node]["category"] == "RefAny3D/training" and info[node]["description"], node
        for group in ("required", "optional"):
            for name, spec in info[node]["input"].get(group, {}).items():
                assert spec[1].get("tooltip"), (node, name)
        assert all(info[node]["output_tooltips"]), node
    assert info["RefAny3DSaveAdapter"]["output_node"] is True
    assert info["RefAny3DTrain"]["input"]["optional"]["adapter"][0] == "REFANY3D_ADAPTER"


def test_train_save_load_apply_sample(comfy, setup):
    asset, name = setup, f"run_{uuid.uuid4().hex[:6]}"
    g = train_graph(asset, name)
    g["save"] = {"class_type": "RefAny3DSaveAdapter",
                 "inputs": {"adapter": ["train", 0], "name": name, "dtype": "fp32", "write_pth": True,
                            "overwrite": True}}  # the run's own folder: Train saved there
    sample_graph(g, ("train", 0), f"refany3d/{name}_trained")
    result = comfy.run(g, timeout=600)
    assert result.status == "success", result.error_text() + comfy.log_text()[-3000:]
    # progress of every step and the loss, on the node, over the websocket
    train = [p for p in result.progress() if p.get("node") == "train"]
    assert [p["value"] for p in train][-1] == STEPS and all(p["max"] == STEPS for p in train)
    texts = result.node_texts("train")
    assert texts[-1].startswith(f"RefAny3D Train: step {STEPS}/{STEPS}, loss "), texts[-3:]
    assert len([t for t in texts if "loss" in t]) == STEPS
    assert [p for p in result.progress() if p.get("node") == "encode"][-1]["value"] == 3
    # previews every 10 steps (RGB and point map each) and the dataset's first sample
    assert len(comfy.output_files(result, "train")) == 4 and len(comfy.output_files(result, "data")) == 2
    # the release files, with the release's keys, and a resumable state of the last step
    folder = comfy.models_dir / "refany3d" / name
    for file in ("default.safetensors", "coord.safetensors"):
        sd = safetensors.torch.load_file(str(folder / file))
        assert set(sd) == release_keys() and all(v.dtype == torch.float32 for v in sd.values())
        assert any(bool(v.abs().sum()) for k, v in sd.items() if "lora_B" in k)  # trained: B moved off zero
    emb = safetensors.torch.load_file(str(folder / "domain_embedder.safetensors"))
    pth = torch.load(folder / "domain_embedder.pth", weights_only=True)
    assert emb and sorted(emb) == sorted(pth)
    assert all(torch.equal(emb[k], pth[k]) for k in emb)
    states = sorted(p.name for p in (folder / "training_state").iterdir())
    assert states == ["state-00000010", "state-00000020"], states
    rgb = load(comfy.output_files(result, "save_rgb")[0])
    assert rgb.shape == (SIZE, SIZE, 3) and np.isfinite(rgb).all()

    # the saved files through RefAny3D Load Adapter (its lists leave the training states out)
    spec = comfy.object_info("RefAny3DLoadAdapter")["RefAny3DLoadAdapter"]["input"]["required"]["reference_lora"]
    options = spec[1]["options"] if spec[0] == "COMBO" else spec[0]  # newer ComfyUI: ["COMBO", {"options"}]
    assert f"{name}/default.safetensors" in options and not [o for o in options if "training_state" in o]
    g2 = {k: v for k, v in train_graph(asset, name).items() if k in ("model", "vae", "clip", "asset")}
    g2["adapter"] = {"class_type": "RefAny3DLoadAdapter",
                     "inputs": {"reference_lora": f"{name}/default.safetensors",
                                "domain_lora": f"{name}/coord.safetensors",
                                "domain_embedder": f"{name}/domain_embedder.pth"}}
    sample_graph(g2, ("adapter", 0), f"refany3d/{name}_loaded")
    loaded = comfy.run(g2, timeout=600)
    assert loaded.status == "success", loaded.error_text()
    # the same adapter (fp32 files) and the same seed give the same picture
    for node in ("save_rgb", "save_pm"):
        assert np.array_equal(load(comfy.output_files(loaded, node)[0]), load(comfy.output_files(result, node)[0]))


def test_cancel_saves_a_state_that_resumes(comfy, setup):
    asset, name = setup, f"cancel_{uuid.uuid4().hex[:6]}"
    seen = {}

    def on_message(msg):
        data = msg.get("data") or {}
        if msg.get("type") == "progress" and data.get("node") == "train" and data["value"] >= 2 and "at" not in seen:
            seen["at"] = data["value"]
            comfy.interrupt()
    result = comfy.run(train_graph(asset, name, steps=500, save_every=0, preview_every=0), timeout=600,
                       on_message=on_message)
    assert result.status == "interrupted", result.error_text()
    states = sorted((comfy.models_dir / "refany3d" / name / "training_state").glob("state-*"))
    assert len(states) == 1, states
    step = int(states[0].name.split("-")[1])
    assert seen["at"] <= step < 500, (seen, step)
    texts = result.node_texts("train")
    assert f"cancelled; state of step {step} saved" in texts[-1], texts[-2:]

    # a new run of the same name is refused rather than mixed with the old state
    fresh = comfy.run(train_graph(asset, name, steps=step + 3, save_every=0, preview_every=0), timeout=600)
    assert fresh.status == "error" and "turn 'resume' on to continue" in fresh.error_text(), fresh.error_text()
    resumed = comfy.run(train_graph(asset, name, steps=step + 3, resume=True, save_every=0, preview_every=0),
                        timeout=600)
    assert resumed.status == "success", resumed.error_text()
    values = [p["value"] for p in resumed.progress() if p.get("node") == "train"]
    # (the server may coalesce progress messages of quick steps: first, last and order are what arrive surely)
    assert values[0] == step and values[-1] == step + 3 and values == sorted(values), values
    texts = [t for t in resumed.node_texts("train") if "loss" in t]
    assert [t.split(",")[0] for t in texts] == [f"RefAny3D Train: step {k}/{step + 3}" for k in range(step + 1, step + 4)]
    states = sorted(p.name for p in (comfy.models_dir / "refany3d" / name / "training_state").glob("state-*"))
    assert states[-1] == f"state-{step + 3:08d}", states


def command_line(args, comfy_dir):
    """``python -m training`` in a subprocess, against the server's ComfyUI folder."""
    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(root), "COMFYUI_DIR": str(comfy_dir)}
    return subprocess.run([sys.executable, "-m", "training", *map(str, args)], cwd=root, env=env, text=True,
                          capture_output=True, timeout=600)


def test_node_and_command_line_resume_each_others_states(comfy, setup):
    """One Trainer, one state format: a state saved by RefAny3D Train resumes in ``python -m training``, and
    the command line's state resumes in the node (a stock-loadable FLUX.1 file both load the same way)."""
    from training import load_state
    model = comfy.models_dir / "diffusion_models" / "refany3d_cross_flux.safetensors"
    if not model.exists():
        tiny.write_flux_checkpoint(model)
    name = f"cross_{uuid.uuid4().hex[:6]}"

    def graph(steps, resume):
        g = train_graph(setup, name, steps=steps, resume=resume, save_every=0, preview_every=0)
        g["model"] = {"class_type": "UNETLoader", "inputs": {"unet_name": model.name, "weight_dtype": "default"}}
        g["clip"]["inputs"] = {"context_dim": 4096, "pooled_dim": 768}
        g["train"]["inputs"].update(rank=2, learning_rate=1e-3)
        return g
    first = comfy.run(graph(2, False), timeout=600)
    assert first.status == "success", first.error_text()
    encoded = first.node_texts("encode")[-1].rsplit(" in ", 1)[1]
    states = comfy.models_dir / "refany3d" / name / "training_state"
    node_state = load_state(states)
    assert node_state["step"] == 2

    cli = command_line(["--model", model, "--data", encoded, "--out", states, "--resume", "latest", "--steps", 4,
                        "--rank", 2, "--lr", 1e-3, "--save-every", 0, "--device", "cpu"], comfy.comfy_dir)
    assert cli.returncode == 0, cli.stdout + cli.stderr
    assert "resumed at step 2" in cli.stdout and "step 3/4" in cli.stdout and "step 1/" not in cli.stdout
    cli_state = load_state(states)
    assert cli_state["step"] == 4 and cli_state["losses"][:2] == node_state["losses"]
    assert set(cli_state["config"]) == set(node_state["config"])  # the same state format, entry for entry
    assert {k: v for k, v in cli_state["config"].items() if k != "steps"} == \
        {k: v for k, v in node_state["config"].items() if k != "steps"}

    resumed = comfy.run(graph(6, True), timeout=600)
    assert resumed.status == "success", resumed.error_text()
    values = [p["value"] for p in resumed.progress() if p.get("node") == "train"]
    assert values[0] == 4 and values[-1] == 6, values
    last = load_state(states)
    assert last["step"] == 6 and last["losses"][:4] == cli_state["losses"]


def test_command_line_node_and_trainconfig_offer_the_same_options(comfy):
    """One option table: ``python -m training --help``, RefAny3D Train's inputs in /object_info and TrainConfig
    name the same settings with the same defaults, choices and help."""
    import dataclasses

    from training import TrainConfig, option_table
    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "COLUMNS": "100000", "PYTHONPATH": str(root)}  # one line per option
    proc = subprocess.run([sys.executable, "-m", "training", "--help"], cwd=root, env=env, text=True,
                          capture_output=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    flags, entry = {}, None
    for line in proc.stdout[proc.stdout.index("\n  -h"):].splitlines():
        if line.startswith("  -"):  # an option; its help on the same line or the next
            entry = next(w for w in line.replace(",", " ").split() if w.startswith("--"))
            flags[entry] = line
        elif entry and line.startswith("    "):
            flags[entry] += " " + line.strip()
        else:
            entry = None
    inputs = comfy.object_info("RefAny3DTrain")["RefAny3DTrain"]["input"]["required"]
    defaults = TrainConfig()
    on_node, on_cli = set(), set()
    for field in option_table():
        meta, default = field.metadata, getattr(defaults, field.name)
        assert default == (field.default if field.default is not dataclasses.MISSING else field.default_factory())
        if meta["cli"]:
            flag = "--" + field.name.replace("_", "-")
            on_cli.add(flag)
            line = flags[flag]
            assert meta["help"] in line and line.endswith(f"(default {default})"), line
            if meta["choices"]:
                assert "{" + ",".join(meta["choices"]) + "}" in line, line
        if meta["node"]:
            name = "learning_rate" if field.name == "lr" else field.name
            on_node.add(name)
            kind, spec = inputs[name][0], inputs[name][1]
            assert spec["tooltip"].lower().startswith(meta["help"].lower()), (name, spec["tooltip"])
            assert spec["default"] == (0.0 if default is None else default), (name, spec["default"])
            if meta["choices"]:
                options = spec["options"] if kind == "COMBO" else kind
                assert list(options) == list(meta["choices"]), (name, options)
            else:
                assert (spec["min"], spec["max"]) == (meta["low"], meta["high"]), (name, spec)
    run_flags = {"--model", "--data", "--out", "--adapter", "--resume", "--base-dtype", "--device", "--comfyui",
                 "--overwrite", "--config", "--help"}
    assert set(flags) - run_flags == on_cli, sorted(set(flags) ^ (on_cli | run_flags))
    node_only = {"model", "encoded", "name", "preview_every", "resume"}
    assert set(inputs) - node_only == on_node, sorted(set(inputs) ^ (on_node | node_only))


def test_bad_input_gets_a_clear_error(comfy, setup):
    result = comfy.run(train_graph(setup, "not_flux", kind="sd15"), timeout=600)
    assert result.status == "error" and result.error["node_type"] == "RefAny3DTrain", result.error_text()
    assert "RefAny3D needs a FLUX.1 model" in result.error_text(), result.error_text()
    for bad, words in (("", "name is empty"), ("../x", "must be a plain folder name")):
        with pytest.raises(PromptRejected, match=words):
            comfy.submit(train_graph(setup, bad))
    g = train_graph(setup, "no_asset")
    del g["data"]["inputs"]["asset"]
    result = comfy.run(g, timeout=600)
    assert result.status == "error" and "synthetic source renders an asset" in result.error_text(), result.error_text()
    g["data"]["inputs"]["source"] = "sample folders"
    result = comfy.run(g, timeout=600)
    assert result.status == "error" and "reads a folder: set 'folder'" in result.error_text(), result.error_text()
    g = train_graph(setup, "odd_size")
    g["data"]["inputs"]["size"] = 40
    result = comfy.run(g, timeout=600)
    assert result.status == "error" and "size must be a multiple of 16" in result.error_text(), result.error_text()


def test_train_node_refuses_a_learning_rate_that_is_not_a_number():
    """NaN passes ComfyUI's own min/max check (every comparison with NaN is false): the node names it."""
    import importlib
    pack = import_pack().__name__
    nodes = importlib.import_module(f"{pack}.nodes.training")
    error = importlib.import_module(f"{pack}.model_patches").RefAny3DError  # the pack's own class
    for bad in (float("nan"), float("inf"), -1.0):
        with pytest.raises(error, match="learning_rate must be a finite number"):
            nodes.RefAny3DTrain.execute(None, None, "lr_check", learning_rate=bad)


# ---------------------------------------------------------------------------------------------
# in-process: the Train node's frozen view of the shared model

def import_pack():
    """The pack as ComfyUI imports it (one package, relative imports), under a private name."""
    import importlib
    import importlib.util
    import sys
    from pathlib import Path
    root = Path(__file__).resolve().parent.parent
    name = "refany3d_pack_under_test"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, root / "__init__.py", submodule_search_locations=[str(root)])
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def test_inside_the_pack_training_uses_the_packs_own_libraries():
    """ComfyUI imports the pack as a package: its training library must then use the pack's own
    model_patches and rendering (one copy of every class, shared with the nodes), not top-level modules."""
    import importlib
    pack = import_pack()
    nodes = importlib.import_module(f"{pack.__name__}.nodes.training")
    loop = importlib.import_module(f"{pack.__name__}.training.loop")
    mp_training = importlib.import_module(f"{pack.__name__}.model_patches.trainable")
    assert loop.TrainableAdapter is mp_training.TrainableAdapter
    assert loop.RefAny3DError is importlib.import_module(f"{pack.__name__}.model_patches").RefAny3DError
    assert nodes.Trainer is loop.Trainer and nodes.frozen_view is mp_training.frozen_view
    datasets = importlib.import_module(f"{pack.__name__}.training.datasets")
    assert datasets.rendering is importlib.import_module(f"{pack.__name__}.rendering")


def test_frozen_view_trains_on_inference_mode_weights_and_leaves_the_model_as_it_was():
    from model_patches.trainable import TrainableAdapter, Unconditional, frozen_view, training_loss, training_mode
    with torch.inference_mode():  # as ComfyUI's loaders run
        flux = tiny.build_flux_module(hidden_size=32, num_heads=2, context_in_dim=8, vec_in_dim=4, seed=0)
    before = {k: (p, p.requires_grad, p.detach().clone()) for k, p in flux.named_parameters()}
    assert all(p.is_inference() for p, _, _ in before.values())
    g = torch.Generator().manual_seed(0)
    batch = {"x0_rgb": torch.randn(1, 16, 4, 4, generator=g), "x0_point_map": torch.randn(1, 16, 4, 4, generator=g),
             "refs_rgb": torch.randn(1, 2, 16, 4, 4, generator=g),
             "refs_point_map": torch.randn(1, 2, 16, 4, 4, generator=g),
             "context": torch.randn(1, 3, 8, generator=g), "pooled": torch.randn(1, 4, generator=g)}
    uncond = Unconditional(torch.zeros(3, 8), torch.zeros(4), torch.zeros(16, 4, 4))
    with torch.inference_mode(False):
        adapter = TrainableAdapter.for_flux(flux, rank=2, seed=0)
        with pytest.raises(RuntimeError, match="Inference tensors cannot be saved for backward"), training_mode():
            training_loss(flux, adapter, batch, 0, 0, uncond, checkpoint=False).loss.backward()
        with frozen_view(flux), training_mode():
            flux.requires_grad_(False)  # as the Trainer does
            training_loss(flux, adapter, batch, 0, 0, uncond, checkpoint=True).loss.backward()
    assert any(bool(p.grad.abs().sum()) for p in adapter.parameters() if p.grad is not None)
    after = dict(flux.named_parameters())
    for k, (p, requires_grad, value) in before.items():
        assert after[k] is p and p.requires_grad == requires_grad and torch.equal(p, value), k


def test_dataset_node_fingerprint_follows_the_folder(tmp_path):
    """Samples added, removed or edited in a dataset folder change Training Dataset's fingerprint (so ComfyUI
    runs it again rather than handing back the cached dataset); the reference cache does not. The folder is
    named inside the input folder; a name that leaves it is not looked at; the walk is bounded."""
    import importlib
    import os

    import folder_paths
    nodes = importlib.import_module(f"{import_pack().__name__}.nodes.training")
    before = folder_paths.get_input_directory()
    folder_paths.set_input_directory(str(tmp_path))
    try:
        ds = tmp_path / "ds"
        (ds / "a").mkdir(parents=True)
        (ds / "a" / "prompt.txt").write_text("a chair")

        def stamp(folder="ds"):
            return nodes.RefAny3DTrainingDataset.fingerprint_inputs(source="sample folders", folder=folder)
        first = stamp()
        assert first and stamp() == first
        (ds / "a" / ".refany3d-cache").mkdir()
        (ds / "a" / ".refany3d-cache" / "refs-0.safetensors").write_bytes(b"x")
        assert stamp() == first
        (ds / "b").mkdir()
        (ds / "b" / "prompt.txt").write_text("a table")
        second = stamp()
        assert second != first
        (ds / "b" / "prompt.txt").write_text("a red table")
        assert stamp() != second
        third = stamp()
        os.utime(ds / "b" / "prompt.txt", ns=(1, 1))
        assert stamp() != third
        assert nodes.RefAny3DTrainingDataset.fingerprint_inputs(source="synthetic", folder="ds") == ""
        missing = stamp("no")
        assert missing not in (first, second, third)
        assert stamp(str(ds)) == "" and stamp("../" + tmp_path.name + "/ds") == ""  # names that leave input/
        # a link cycle is walked once; a tree larger than the bound is not walked to its end
        os.symlink(ds, ds / "b" / "loop")
        assert stamp() == stamp()
        assert nodes.folder_stamp(ds, limit=3) != nodes.folder_stamp(ds, limit=3)
    finally:
        folder_paths.set_input_directory(before)

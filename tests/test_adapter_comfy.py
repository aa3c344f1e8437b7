"""RefAny3DLoadAdapter and the tiny test models inside a real headless ComfyUI.

Happy paths use the session server (``comfy``). The runs that are meant to fail (missing file,
a pickle carrying code) use a private server of this module, so that their expected tracebacks do
not land in the session server's log, which other tests inspect.
"""
from __future__ import annotations

import json
import uuid

import pytest
import torch
from tools.comfy_server import ComfyServer

from conftest import COMFY_DIR, TEST_NODES
from tools import tiny_models as tiny
from model_patches import load_adapter
from tools.release_files import save_release_files

D = 64


def options(info: dict, node: str, name: str) -> tuple[list, str | None]:
    spec = info[node]["input"]["required"][name]
    opts = spec[1] if len(spec) > 1 else {}
    values = spec[0] if isinstance(spec[0], list) else opts.get("options", [])
    return values, opts.get("default")


def adapter_graph(ref: str, dom: str, emb: str) -> dict:
    return {
        "1": {"class_type": "RefAny3DLoadAdapter",
              "inputs": {"reference_lora": ref, "domain_lora": dom, "domain_embedder": emb}},
        "2": {"class_type": "RefAny3DTestAdapterInfo", "inputs": {"adapter": ["1", 0]}},
    }


def release_in(models_dir, seed=0):
    """Release files in a fresh sub-folder of models/refany3d/; returns (sub-folder name, paths)."""
    sub = f"test_{uuid.uuid4().hex[:8]}"
    return sub, save_release_files(models_dir / "refany3d" / sub, D, 1, 1, rank=4, seed=seed)


@pytest.fixture(scope="module")
def private_comfy(tmp_path_factory):
    with ComfyServer(tmp_path_factory.mktemp("comfy-adapter-errors"), COMFY_DIR, extra_custom_nodes=[TEST_NODES]) as server:
        yield server


def test_release_files_appear_in_the_combos_and_load(comfy):
    sub, paths = release_in(comfy.models_dir, seed=11)
    info = comfy.object_info("RefAny3DLoadAdapter")
    assert info["RefAny3DLoadAdapter"]["category"] == "RefAny3D/model"
    assert info["RefAny3DLoadAdapter"]["output"] == ["REFANY3D_ADAPTER"]
    names = {}
    for inp, fname in (("reference_lora", "default.safetensors"), ("domain_lora", "coord.safetensors"),
                       ("domain_embedder", "domain_embedder.pth")):
        values, default = options(info, "RefAny3DLoadAdapter", inp)
        names[inp] = f"{sub}/{fname}"
        assert names[inp] in values, (inp, values)
        assert default is not None and default.rsplit("/", 1)[-1] == fname, (inp, default)
    result = comfy.run(adapter_graph(names["reference_lora"], names["domain_lora"], names["domain_embedder"]), timeout=120)
    assert result.status == "success", result.error_text()
    summary = json.loads(result.outputs["2"]["text"][0])
    local = load_adapter(paths["reference"], paths["domain"], paths["domain_embedder"])
    assert summary["type"] == "RefAny3DAdapter" and summary["hidden_size"] == D
    assert summary["files"] == {"reference": "default.safetensors", "domain": "coord.safetensors",
                                "domain_embedder": "domain_embedder.pth"}
    for name, mods in local.loras.items():
        assert set(summary["loras"][name]) == set(mods)
        for module, (down, up) in mods.items():
            shape_d, shape_u, total = summary["loras"][name][module]
            assert (shape_d, shape_u) == (list(down.shape), list(up.shape))
            assert total == pytest.approx(float(down.double().sum() + up.double().sum()), rel=1e-9, abs=1e-9)
    for k, v in local.domain_embedder.state_dict().items():
        assert summary["domain_embedder"][k] == pytest.approx(float(v.double().sum()), rel=1e-9, abs=1e-9)


def test_converted_embedder_and_replaced_files_are_picked_up(comfy):
    from model_patches import convert_domain_embedder
    sub, paths = release_in(comfy.models_dir, seed=12)
    st = convert_domain_embedder(paths["domain_embedder"], paths["domain_embedder"].with_suffix(".safetensors"))
    graph = adapter_graph(f"{sub}/default.safetensors", f"{sub}/coord.safetensors", f"{sub}/{st.name}")
    values, _ = options(comfy.object_info("RefAny3DLoadAdapter"), "RefAny3DLoadAdapter", "domain_embedder")
    assert f"{sub}/{st.name}" in values
    first = comfy.run(graph, timeout=120)
    assert first.status == "success", first.error_text()
    assert json.loads(first.outputs["2"]["text"][0])["files"]["domain_embedder"] == "domain_embedder.safetensors"
    # new weights under the same name are loaded again, not served from the execution cache
    save_release_files(paths["reference"].parent, D, 1, 1, rank=4, seed=13)
    second = comfy.run(graph, timeout=120)
    assert second.status == "success", second.error_text()
    a = json.loads(first.outputs["2"]["text"][0])["loras"]["reference"]["img_in"][2]
    b = json.loads(second.outputs["2"]["text"][0])["loras"]["reference"]["img_in"][2]
    assert a != b


def test_missing_file_gives_a_clear_execution_error(private_comfy):
    sub, _ = release_in(private_comfy.models_dir)
    result = private_comfy.run(adapter_graph("gone/default.safetensors", f"{sub}/coord.safetensors",
                                             f"{sub}/domain_embedder.pth"), timeout=120)
    assert result.status == "error"
    text = result.error_text()
    assert result.error["node_type"] == "RefAny3DLoadAdapter"
    assert result.error["exception_type"].endswith("NodeInputError"), text  # the node's input, not a bare OSError
    assert "Reference-LoRA file 'gone/default.safetensors' not found in the refany3d model folder" in text, text
    assert str(private_comfy.models_dir / "refany3d") in text and f"{sub}/coord.safetensors" in text, text


class RunsCode:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        import os
        return (os.system, (f"touch '{self.marker}'",))


def test_pickle_with_code_is_refused_in_the_server(private_comfy, tmp_path):
    sub, paths = release_in(private_comfy.models_dir)
    marker = tmp_path / "pwned"
    good = torch.load(str(paths["domain_embedder"]), weights_only=True)
    torch.save(dict(good, **{"1.bias": RunsCode(marker)}), str(paths["domain_embedder"].parent / "evil.pth"))
    result = private_comfy.run(adapter_graph(f"{sub}/default.safetensors", f"{sub}/coord.safetensors",
                                             f"{sub}/evil.pth"), timeout=120)
    assert result.status == "error"
    assert "refused to load domain embedder file 'evil.pth'" in result.error_text(), result.error_text()
    assert "GLOBAL posix.system" in result.error_text()
    assert not marker.exists(), "the pickle's code ran inside the server"


def test_tiny_models_load_through_stock_loaders_and_sample(comfy):
    """The 3072-wide checkpoint through UNETLoader, the TAESD VAE through VAELoader, conditioning
    from the test node: a stock KSampler graph runs and decodes an image of the right size."""
    unet_name, vae_name = tiny.provide_stock_models(comfy.models_dir)
    info = comfy.object_info("RefAny3DTestConditioning")["RefAny3DTestConditioning"]
    assert set(info["input"]["required"]) == {"seed", "tokens", "context_dim", "pooled_dim", "guidance"}
    assert info["output"] == ["CONDITIONING"]
    graph = {
        "unet": {"class_type": "UNETLoader", "inputs": {"unet_name": unet_name, "weight_dtype": "default"}},
        "vae": {"class_type": "VAELoader", "inputs": {"vae_name": vae_name}},
        "pos": {"class_type": "RefAny3DTestConditioning",
                "inputs": {"seed": 1, "tokens": 8, "context_dim": 4096, "pooled_dim": 768, "guidance": 3.5}},
        "neg": {"class_type": "RefAny3DTestConditioning",
                "inputs": {"seed": 2, "tokens": 8, "context_dim": 4096, "pooled_dim": 768, "guidance": 3.5}},
        "lat": {"class_type": "EmptySD3LatentImage", "inputs": {"width": 64, "height": 96, "batch_size": 1}},
        "ks": {"class_type": "KSampler", "inputs": {"model": ["unet", 0], "positive": ["pos", 0], "negative": ["neg", 0],
                                                    "latent_image": ["lat", 0], "seed": 0, "steps": 2, "cfg": 1.0,
                                                    "sampler_name": "euler", "scheduler": "simple", "denoise": 1.0}},
        "dec": {"class_type": "VAEDecode", "inputs": {"samples": ["ks", 0], "vae": ["vae", 0]}},
        "enc": {"class_type": "VAEEncode", "inputs": {"pixels": ["dec", 0], "vae": ["vae", 0]}},
        "dec2": {"class_type": "VAEDecode", "inputs": {"samples": ["enc", 0], "vae": ["vae", 0]}},
        "save": {"class_type": "SaveImage", "inputs": {"images": ["dec2", 0], "filename_prefix": "refany3d_tiny_models"}},
    }
    result = comfy.run(graph, timeout=300)
    assert result.status == "success", result.error_text()
    assert any(p["value"] == 2 and p["max"] == 2 for p in result.progress())
    from PIL import Image
    files = comfy.output_files(result, "save")
    assert len(files) == 1
    with Image.open(files[0]) as img:
        assert img.size == (64, 96)

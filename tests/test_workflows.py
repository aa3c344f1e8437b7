"""The example workflows (issue 5): UI files and their API twins agree, the twins pass the real
server's /prompt validation, and the render-only twin runs to completion.

The UI→API comparison here is done from the server's /object_info (widget order, socket names),
independently of the frontend; tests/test_frontend.py checks the same twins against the real
frontend's own graphToPrompt(). Validation of the FLUX.1-dev twins needs the standard model file
names in the combos: a private server gets empty placeholder files under those names. A prompt
that passes validation is also executed, and those runs then stop at the first loader (empty
file): that happens on the private server, so the shared server's log stays clean.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from tools.client import StrictClient
from tools.comfy_http import PromptRejected
from tools.comfy_server import ComfyServer
from tools.demo_asset import ASSET_NAME, write_example_inputs
from tools.make_workflows import MODEL_FILES, WORKFLOWS, write_placeholder_models
from PIL import Image

from conftest import COMFY_DIR, ROOT, TEST_NODES

EXAMPLES = ROOT / "example_workflows"
NAMES = sorted(WORKFLOWS)
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
VIRTUAL = {"Note", "MarkdownNote", "Reroute", "PrimitiveNode"}


def ui(name) -> dict:
    return json.loads((EXAMPLES / f"{name}.json").read_text())


def api(name) -> dict:
    return json.loads((EXAMPLES / "api" / f"{name}.json").read_text())


def widget_inputs(info: dict, class_type: str) -> list[tuple[str, dict]]:
    """(name, options) of the widget inputs of a node, in the order the frontend lays them out."""
    node = info[class_type]
    out = []
    for section in ("required", "optional"):
        for name in node.get("input_order", {}).get(section, node["input"].get(section, {}).keys()):
            spec = node["input"][section][name]
            opts = spec[1] if len(spec) > 1 else {}
            if isinstance(spec[0], list) or spec[0] in WIDGET_TYPES:
                out.append((name, opts))
    return out


def ui_to_api(workflow: dict, info: dict) -> dict:
    """An independent UI→API conversion from /object_info (what 'Export (API)' must give)."""
    links = {lk[0]: lk for lk in workflow["links"]}
    graph = {}
    for node in workflow["nodes"]:
        if node["type"] in VIRTUAL or node.get("mode", 0) != 0:
            continue
        assert node["type"] in info, f"{node['type']} is not a node of this server"
        inputs = {}
        values = list(node.get("widgets_values") or [])
        k = 0
        for name, opts in widget_inputs(info, node["type"]):
            if k >= len(values) and name in info[node["type"]]["input"].get("optional", {}):
                break  # an optional widget added after the workflow was saved: the server gives it its default
            inputs[name] = values[k]
            k += 2 if opts.get("control_after_generate") else 1
        for inp in node.get("inputs", []):
            if inp.get("link") is not None:
                lk = links[inp["link"]]
                inputs[inp["name"]] = [str(lk[1]), lk[2]]
        graph[str(node["id"])] = {"class_type": node["type"], "inputs": inputs}
    return graph


@pytest.fixture(scope="module")
def info(comfy):
    return comfy.object_info()


def test_every_example_has_a_thumbnail_and_an_api_twin():
    top = sorted(p.stem for p in EXAMPLES.glob("*.json"))
    assert top == NAMES
    for name in NAMES:
        with Image.open(EXAMPLES / f"{name}.jpg") as img:
            assert img.format == "JPEG" and min(img.size) >= 256
        assert (EXAMPLES / "api" / f"{name}.json").is_file()
        wf = ui(name)
        assert wf["version"] == 0.4 and wf["nodes"] and wf["links"]
        notes = [n for n in wf["nodes"] if n["type"] == "Note"]
        assert notes and all(len(n["widgets_values"][0]) > 200 for n in notes), name


@pytest.mark.parametrize("name", NAMES)
def test_api_twin_has_the_nodes_and_widget_values_of_the_ui_workflow(name, info):
    expected = ui_to_api(ui(name), info)
    twin = api(name)
    assert set(twin) == set(expected)
    for node_id, node in expected.items():
        got = twin[node_id]
        assert got["class_type"] == node["class_type"], node_id
        for key, value in node["inputs"].items():
            assert got["inputs"].get(key) == value, (name, node_id, node["class_type"], key)
        # nothing else but frontend-only widgets (e.g. SaveGLB's 3D preview) beyond the schema
        declared = {n for s in ("required", "optional") for n in info[node["class_type"]]["input"].get(s, {})}
        assert set(got["inputs"]) - set(node["inputs"]) <= {k for k in got["inputs"] if k not in declared}


def test_only_core_and_pack_nodes_are_used(info):
    for name in NAMES:
        for node in api(name).values():
            module = info[node["class_type"]]["python_module"]
            assert module in ("nodes",) or module.startswith(("comfy_extras.", "custom_nodes.comfyui-refany3d")), \
                (name, node["class_type"], module)


def test_release_settings_in_the_generation_workflows():
    for name in NAMES:
        g = api(name)
        by_class = {}
        for node in g.values():
            by_class.setdefault(node["class_type"], []).append(node["inputs"])
        if "KSampler" not in by_class:
            continue
        (ms,), (lat,), (ks,), (apply_,) = (by_class[c] for c in ("ModelSamplingFlux", "RefAny3DEmptyLatent",
                                                                  "KSampler", "RefAny3DApply"))
        assert (ms["max_shift"], ms["base_shift"]) == (1.15, 0.5)
        assert (ms["width"], ms["height"]) == (lat["width"], lat["height"]) == (512, 512)
        assert (ks["cfg"], ks["steps"]) == (1.0, 28)
        assert apply_["image_guidance"] == 2.0 and apply_["guidance_pass"] == "unmasked (release)"
        assert by_class["UNETLoader"][0]["unet_name"] == "flux1-dev.safetensors"
        assert by_class["DualCLIPLoader"][0]["type"] == "flux"
        assert by_class["FluxGuidance"][0]["guidance"] == 3.5
    vp = {n["class_type"]: n["inputs"] for n in api("refany3d_viewpoint_control").values()}
    assert vp["RefAny3DRenderViews"]["y_rotation"] != 0 and vp["RefAny3DRenderViews"]["pitch"] != 0


@pytest.fixture(scope="module")
def validating_comfy(tmp_path_factory):
    base = tmp_path_factory.mktemp("comfy-workflows")
    write_placeholder_models(base / "models")
    write_example_inputs(base / "input")
    with ComfyServer(base, COMFY_DIR, extra_custom_nodes=[TEST_NODES]) as server:
        server.client = StrictClient(server.url)  # all outputs must validate (no node_errors)
        yield server


@pytest.mark.parametrize("name", NAMES)
def test_api_twin_passes_prompt_validation(name, validating_comfy):
    graph = api(name)
    try:
        result = validating_comfy.client.run(graph, timeout=300)
    except PromptRejected as e:  # pragma: no cover - the failure message is the assertion
        pytest.fail(f"{name} rejected: {e}")
    if any(n["class_type"] == "UNETLoader" for n in graph.values()):
        # validated and queued; the run itself stops at a loader reading an empty placeholder
        assert result.status == "error"
        assert result.error["node_type"] in ("UNETLoader", "DualCLIPLoader", "VAELoader", "RefAny3DLoadAdapter"), \
            result.error_text()
    else:
        assert result.status == "success", result.error_text()


def test_validation_lists_missing_model_files_by_name(validating_comfy, tmp_path):
    """Without the model files the server names the missing value, so users learn what to add."""
    graph = api("refany3d_asset_to_image")
    for node in graph.values():
        if node["class_type"] == "UNETLoader":
            node["inputs"]["unet_name"] = "not-there.safetensors"
    with pytest.raises(PromptRejected) as exc:
        validating_comfy.client.submit(graph)
    assert "not-there.safetensors" in str(exc.value) and "unet_name" in str(exc.value)
    assert set(MODEL_FILES) >= {"diffusion_models", "vae", "refany3d"}


def test_render_only_twin_runs_to_completion(comfy, tmp_path):
    inputs = write_example_inputs(tmp_path / "input", num_views=1, resolution=16)
    assert comfy.upload(inputs["asset"], subfolder="3d") == ASSET_NAME
    graph = api("refany3d_render_preview")
    result = comfy.run(graph, timeout=300)
    assert result.status == "success", result.error_text()
    saved = {graph[nid]["inputs"]["filename_prefix"].rsplit("/", 1)[-1]: comfy.output_files(result, nid)
             for nid in graph if graph[nid]["class_type"] == "SaveImage"}
    assert {k: len(v) for k, v in saved.items()} == {"rgb": 8, "point_map": 8, "mask": 8}
    for kind in ("rgb", "point_map"):
        for path in saved[kind]:
            img = np.asarray(Image.open(path).convert("RGB"))
            assert img.shape == (512, 512, 3)
            assert (img[:8, :8] == 255).all() and (img[-8:, -8:] == 255).all()  # white background
            ys, xs = np.nonzero((img < 250).any(-1))
            assert abs(ys.mean() - 256) < 40 and abs(xs.mean() - 256) < 40  # object centred
    glb = [n for n in graph if graph[n]["class_type"] == "SaveGLB"]
    records = result.outputs[glb[0]]
    files = [r for recs in records.values() if isinstance(recs, list) for r in recs if isinstance(r, dict)]
    assert any(Path(r["filename"]).suffix == ".glb" for r in files), records

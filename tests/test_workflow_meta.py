"""The example workflows carry what the frontend reads besides the graph (tools/workflow_meta.py):
a download link and models folder for every model file a node names, and the pack of every node."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from tools import workflow_meta
from tools.make_workflows import MODEL_FILES, WORKFLOWS
from tools.workflow_meta import FRONTEND_ONLY, MODELS, MODELS_BY_NAME, node_models, read_packs, with_metadata

from conftest import ROOT

EXAMPLES = ROOT / "example_workflows"
UI_FILES = sorted(EXAMPLES.glob("*.json"))
MODEL_SUFFIXES = (".safetensors", ".sft", ".ckpt", ".pt", ".pth", ".bin", ".gguf")
#: ComfyUI's own models sub-folders the table may use, and the pack's (nodes/folders.py)
KNOWN_FOLDERS = {"diffusion_models", "text_encoders", "vae", "refany3d"}


def nodes_of(path: Path) -> list[dict]:
    return json.loads(path.read_text())["nodes"]


def test_every_example_is_listed_and_carries_the_metadata():
    assert sorted(p.stem for p in UI_FILES) == sorted(WORKFLOWS)
    for path in UI_FILES:  # applying it again changes nothing: the committed files are up to date
        text = path.read_text()
        assert workflow_meta.dumps(with_metadata(json.loads(text))) == text, \
            f"{path.name}: run `python -m tools.workflow_meta`"


@pytest.mark.parametrize("path", UI_FILES, ids=lambda p: p.stem)
def test_every_model_file_a_node_names_has_its_download(path):
    for node in nodes_of(path):
        named = [v for v in node.get("widgets_values") or [] if isinstance(v, str) and v.endswith(MODEL_SUFFIXES)]
        models = node.get("properties", {}).get("models", [])
        assert [m["name"] for m in models] == named, (node["type"], named, models)
        for m in models:
            assert set(m) == {"name", "url", "directory"}
            assert m == {"name": m["name"], **{k: getattr(MODELS_BY_NAME[m["name"]], k) for k in ("url", "directory")}}


@pytest.mark.parametrize("path", UI_FILES, ids=lambda p: p.stem)
def test_every_node_names_its_pack(path):
    packs = read_packs()
    for node in nodes_of(path):
        props = node.get("properties", {})
        if node["type"] in FRONTEND_ONLY:
            assert "cnr_id" not in props and "ver" not in props
        elif node["type"].startswith("RefAny3D"):
            assert (props["cnr_id"], props["ver"]) == ("comfyui-refany3d", packs.pack_version)
        else:
            assert (props["cnr_id"], props["ver"]) == ("comfy-core", "0.3.75")


def test_the_table_links_each_file_to_a_public_download_in_a_known_folder():
    assert len(MODELS_BY_NAME) == len(MODELS)
    for m in MODELS:
        # a Hugging Face file download (what the frontend offers to download), ending in the file's name
        assert re.fullmatch(r"https://huggingface\.co/[\w.-]+/[\w.-]+/resolve/main/([\w./-]+/)?" + re.escape(m.name), m.url), m
        assert m.directory in KNOWN_FOLDERS
    assert set(MODEL_FILES) == {m.directory for m in MODELS}  # the builder's placeholders come from the table
    release = {m.name for m in MODELS if m.directory == "refany3d"}
    assert release == {"default.safetensors", "coord.safetensors", "domain_embedder.pth"}  # docs/method.md §7


def test_with_metadata_is_pure_and_reaches_subgraphs():
    node = {"id": 1, "type": "VAELoader", "widgets_values": ["ae.safetensors"], "properties": {"Node name for S&R": "x"}}
    note = {"id": 2, "type": "Note", "widgets_values": ["ae.safetensors is mentioned here"], "properties": {}}
    wf = {"nodes": [note], "definitions": {"subgraphs": [{"nodes": [node]}]}}
    before = json.dumps(wf)
    out = with_metadata(wf)
    assert json.dumps(wf) == before  # the input is untouched
    sub = out["definitions"]["subgraphs"][0]["nodes"][0]
    assert list(sub["properties"]) == ["cnr_id", "ver", "Node name for S&R", "models"]
    assert sub["properties"]["models"] == node_models(node) == [
        {"name": "ae.safetensors", "url": MODELS_BY_NAME["ae.safetensors"].url, "directory": "vae"}]
    assert out["nodes"][0]["properties"] == {}
    assert with_metadata(out) == out


def test_the_command_rewrites_a_folder_in_place(tmp_path):
    bare = {"nodes": [{"id": 1, "type": "UNETLoader", "widgets_values": ["flux1-dev.safetensors", "default"]}]}
    (tmp_path / "new_one.json").write_text(json.dumps(bare))
    assert workflow_meta.main(["--folder", str(tmp_path), "--check"]) == 1
    assert workflow_meta.main(["--folder", str(tmp_path)]) == 0
    props = json.loads((tmp_path / "new_one.json").read_text())["nodes"][0]["properties"]
    assert props["models"][0]["directory"] == "diffusion_models"
    assert workflow_meta.main(["--folder", str(tmp_path), "--check"]) == 0

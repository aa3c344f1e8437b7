"""The pack inside a real ComfyUI server: registration, categories, a clean log, isolation of
nodes whose optional dependency is missing."""
from __future__ import annotations

import re
import sys

import pytest
from tools.comfy_server import ComfyServer

from conftest import COMFY_DIR, ROOT


def pack_nodes(info: dict) -> dict:
    return {name: spec for name, spec in info.items() if spec.get("python_module", "").endswith("comfyui-refany3d")}


def test_nodes_registered_under_refany3d_categories(comfy):
    nodes = pack_nodes(comfy.object_info())
    assert nodes, "no node of the pack in /object_info"
    for name, spec in nodes.items():
        assert name.startswith("RefAny3D"), name
        assert spec["category"].startswith("RefAny3D/"), (name, spec["category"])


def test_every_input_has_a_tooltip(comfy):
    for name, spec in pack_nodes(comfy.object_info()).items():
        for section in ("required", "optional"):
            for inp, desc in spec["input"].get(section, {}).items():
                opts = desc[1] if len(desc) > 1 else {}
                assert opts.get("tooltip"), f"{name}.{inp} has no tooltip"


def tracebacks(log: str) -> list[str]:
    """Each traceback block of a server log (ComfyUI's own optional extras, e.g. audio nodes
    without torchaudio, may log some; only the pack's matter here)."""
    blocks = re.split(r"(?=Traceback \(most recent call last\))", log)[1:]
    return [b.split("\n\n")[0] for b in blocks]


def pack_tracebacks(log: str) -> list[str]:
    return [b for b in tracebacks(log) if "refany3d" in b.lower()]


def test_server_log_has_no_traceback_from_the_pack(comfy):
    # start-up only: later tests provoke execution errors on purpose, and ComfyUI logs those
    log = comfy.log_text().split("got prompt")[0]
    assert not pack_tracebacks(log), pack_tracebacks(log)
    assert "comfyui-refany3d" in log  # the pack was imported (import times list it)
    assert not re.search(r"IMPORT FAILED.*refany3d", log), log[-4000:]


def test_refany3d_model_folder_registered(comfy):
    (comfy.models_dir / "refany3d").mkdir(parents=True, exist_ok=True)
    status, body = comfy.client._json("GET", "/models")
    assert status == 200 and "refany3d" in body, body


@pytest.fixture
def blocked_trimesh(tmp_path):
    """A folder that shadows trimesh with a package that refuses to import."""
    fake = tmp_path / "blocked" / "trimesh"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('trimesh blocked by the test')\n")
    return fake.parent


def test_missing_optional_dependency_disables_only_its_node(tmp_path, blocked_trimesh, comfy):
    import os
    full = set(pack_nodes(comfy.object_info()))
    needs_trimesh = {"RefAny3DLoadAsset"}
    assert needs_trimesh <= full, f"the pack's server lacks {needs_trimesh - full}: it must load with trimesh present"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(blocked_trimesh), os.environ.get("PYTHONPATH", "")]))
    with ComfyServer(tmp_path / "base", COMFY_DIR, python=sys.executable, env=env) as server:
        nodes = set(pack_nodes(server.object_info()))
        log = server.log_text()
    assert nodes == full - needs_trimesh
    assert "RefAny3D: node RefAny3DLoadAsset disabled: missing Python package(s) 'trimesh' (pip install trimesh)" in log
    assert not pack_tracebacks(log), pack_tracebacks(log)


def test_pack_libraries_import_without_server():
    """rendering/ and model_patches/ are plain libraries: importable with no server module loaded."""
    import subprocess
    code = ("import sys; sys.path.insert(0, %r); import rendering, model_patches; "
            "bad = [m for m in ('server', 'execution', 'nodes', 'folder_paths') if m in sys.modules]; "
            "assert not bad, bad" % str(ROOT))
    subprocess.run([sys.executable, "-c", code], check=True)

"""The pack as the ecosystem's own tools see it (requirements-test.txt installs them):

- comfy-cli (`comfy node validate` / `pack`): its pyproject parser reads the registry metadata, and its
  packer (git-tracked files minus .comfyignore) makes an archive of runtime files only;
- comfy-lint: nothing to report in the API twins, against the real server's /object_info;
- comfy-import-guard: every comfy.* reference it counts as hard resolves in the ComfyUI under test
  (on the v0.3.75 leg that is the declared floor, requires-comfyui >= 0.3.75); newer ones are guarded.

comfy-cli runs in a subprocess with its own HOME (it writes a config folder there on import).
"""
from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

from PIL import Image
from tools.demo_asset import write_example_inputs
from tools.make_workflows import write_placeholder_models
from tools.workflow_meta import MODELS, read_packs

from conftest import ROOT

BIN = Path(sys.executable).parent

CLI_CONFIG = """
import dataclasses, json
from comfy_cli.registry.config_parser import extract_node_configuration

def plain(o):  # the parser's dataclasses (holding tomlkit values) as JSON
    if dataclasses.is_dataclass(o):
        return {f.name: plain(getattr(o, f.name)) for f in dataclasses.fields(o)}
    if hasattr(o, "unwrap"):
        o = o.unwrap()
    if isinstance(o, dict):
        return {str(k): plain(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [plain(v) for v in o]
    return o

print(json.dumps(plain(extract_node_configuration("pyproject.toml"))))
"""
CLI_PACK = """
import sys, zipfile
from comfy_cli.file_utils import zip_files
zip_files(sys.argv[1])
print("\\n".join(sorted(zipfile.ZipFile(sys.argv[1]).namelist())))
"""

#: What the registry archive holds: what ComfyUI loads, what users run from the pack's folder, the
#: licence and the documents a user reads (see .comfyignore).
RUNTIME_DIRS = ("nodes/", "rendering/", "model_patches/", "training/", "example_workflows/")
RUNTIME_FILES = {"__init__.py", "LICENSE", "README.md", "pyproject.toml", "requirements.txt", "docs/method.md",
                 "tools/__init__.py", "tools/client.py", "tools/asset_refs.py", "tools/comfy_http.py"}


def comfy_cli(code: str, *args, home: Path) -> str:
    env = {**os.environ, "HOME": str(home), "XDG_CONFIG_HOME": str(home / ".config")}
    done = subprocess.run([sys.executable, "-c", code, *map(str, args)], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_comfy_cli_reads_the_registry_metadata(tmp_path):
    out = comfy_cli(CLI_CONFIG, home=tmp_path)
    assert "Warning" not in out, out  # the parser warns (and drops the field) on a form it does not accept
    config = json.loads(out.strip().splitlines()[-1])
    project, comfy = config["project"], config["tool_comfy"]
    packs = read_packs()
    assert (project["name"], project["version"]) == (packs.pack_id, packs.pack_version)
    urls = project["urls"]
    repo = urls["repository"]
    assert repo.startswith("https://github.com/")
    assert urls == {"homepage": repo, "documentation": f"{repo}#readme", "repository": repo, "issues": f"{repo}/issues"}
    assert project["license"] == {"file": "LICENSE", "text": ""} and (ROOT / "LICENSE").read_text().startswith(
        "                    GNU GENERAL PUBLIC LICENSE")
    assert project["supported_os"] == ["OS Independent"]
    assert project["supported_accelerators"] == ["GPU :: NVIDIA CUDA"]
    assert project["supported_comfyui_version"] == ">=0.3.75"
    assert comfy["publisher_id"] and comfy["display_name"] == "RefAny3D"
    # the icon: a square image of the repository, at most 400 px
    prefix = repo.replace("https://github.com/", "https://raw.githubusercontent.com/") + "/main/"
    assert comfy["icon"].startswith(prefix)
    with Image.open(ROOT / comfy["icon"][len(prefix):]) as icon:
        assert icon.width == icon.height <= 400
    # Models: every file of the workflows' table, at /<models folder>/<name>, with its download
    assert comfy["models"] == [{"location": f"/{m.directory}/{m.name}", "model_url": m.url} for m in MODELS]


def test_the_registry_archive_holds_only_runtime_files(tmp_path):
    names = comfy_cli(CLI_PACK, tmp_path / "node.zip", home=tmp_path).split()
    assert names == sorted(zipfile.ZipFile(tmp_path / "node.zip").namelist())
    outside = [n for n in names if not n.startswith(RUNTIME_DIRS) and n not in RUNTIME_FILES]
    assert not outside, outside
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    runtime = [n for n in tracked if n.startswith(RUNTIME_DIRS) or n in RUNTIME_FILES]
    assert sorted(runtime) == names  # and nothing of it is left out
    print(f"registry archive: {len(names)} files of {len(tracked)} tracked")


def comfyui_accepts(diagnostic: dict, twin: dict, object_info: dict) -> bool:
    """Whether a comfy-lint type-mismatch is a link ComfyUI itself accepts, by ComfyUI's own rule
    (comfy_execution.validation): comfy-lint 0.1.0 compares a multi-type input ("MESH,FILE_3D_GLB,…",
    core Save GLB in v0.31) with the whole string instead of its types."""
    from comfy_execution.validation import validate_node_input

    if diagnostic["rule"] != "type-mismatch":
        return False
    node = twin[diagnostic["node_id"]]
    source, slot = node["inputs"][diagnostic["field"]]
    produced = object_info[twin[source]["class_type"]]["output"][slot]
    spec = object_info[node["class_type"]]["input"]
    expected = {**spec.get("required", {}), **spec.get("optional", {})}[diagnostic["field"]][0]
    return validate_node_input(produced, expected)


def test_comfy_lint_finds_nothing_in_the_api_twins(comfy):
    """Against the session server, given the files the examples load (placeholder models, the demo inputs;
    the ones added here are removed again)."""
    before = {p for d in (comfy.models_dir, comfy.input_dir) for p in d.rglob("*")}
    write_placeholder_models(comfy.models_dir)
    write_example_inputs(comfy.input_dir)
    try:
        twins = sorted((ROOT / "example_workflows" / "api").glob("*.json"))
        done = subprocess.run([str(BIN / "comfy-lint"), "--server", comfy.url, "--json", "--strict", *map(str, twins)],
                              capture_output=True, text=True, timeout=300)
        assert done.stdout.strip().startswith("{"), done.stdout[-4000:] + done.stderr[-2000:]
        files = json.loads(done.stdout)["files"]
        assert [Path(f["path"]).name for f in files] == [t.name for t in twins]
        object_info = comfy.client._json("GET", "/object_info")[1]
        left = {t.name: [d for d in f["diagnostics"] if not comfyui_accepts(d, json.loads(t.read_text()), object_info)]
                for t, f in zip(twins, files)}
        assert left == {t.name: [] for t in twins}, left
        print("comfy-lint:", json.dumps(json.loads(done.stdout)["summary"]))
    finally:
        # the files only: the folders stay, as ComfyUI keeps listing the ones it knows for later tests
        for p in {p for d in (comfy.models_dir, comfy.input_dir) for p in d.rglob("*")} - before:
            if not p.is_dir():
                p.unlink()


def resolves(dotted: str) -> bool:
    """Whether ``comfy.a.b.c`` names something in the ComfyUI under test (a module, then attributes)."""
    parts = dotted.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        try:
            for name in parts[i:]:
                obj = getattr(obj, name)
            return True
        except AttributeError:
            return False
    return False


def test_comfy_import_guard_counts_only_references_this_comfyui_has():
    from comfy_import_guard.derive import hard_references
    from comfy_import_guard.extract import scan_pack

    scan = scan_pack(str(ROOT))
    hard = hard_references(scan)
    assert len(hard) > 40  # the scan sees the pack's use of ComfyUI
    assert not [(r.dotted, r.file, r.lineno) for r in hard if not resolves(r.dotted)]
    # the one newer than the floor is a guarded use (ComfyUI v0.31's training flag)
    assert "comfy.model_management.in_training" in {r.dotted for r in scan.references if r.soft}
    assert "comfy.model_management.in_training" not in {r.dotted for r in hard}


def test_training_mode_sets_comfyuis_flag_and_leaves_it_as_it_found_it():
    """The guarded use above: ComfyUI v0.3.75 has no flag (added for the step, removed after), v0.31 has one.
    (The flag is named through TRAINING_FLAG here too, or this test would be a hard use the scan counts.)"""
    import comfy.model_management as mm
    from model_patches.trainable import TRAINING_FLAG, training_mode

    had, before = hasattr(mm, TRAINING_FLAG), getattr(mm, TRAINING_FLAG, None)
    with training_mode():
        assert getattr(mm, TRAINING_FLAG) is True
    assert (hasattr(mm, TRAINING_FLAG), getattr(mm, TRAINING_FLAG, None)) == (had, before)

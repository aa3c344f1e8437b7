"""The headless client (tools/client.py) against the real server, run as users run it:
``python tools/client.py ...`` in a subprocess.

End to end: the 'asset to image' example with a tiny random Flux (the demo's wiring-check graph:
text encoders replaced by the test-only conditioning node) on the shared server. Failures (an
execution error inside the pack, a validation error) run on a private server so that their
tracebacks stay out of the shared server's log.
"""
from __future__ import annotations

import json
import re
import subprocess
import sys
import time

import pytest
from tools.asset_refs import SUPPORTED_EXTENSIONS, AssetInputError, collect, gltf_uris, map_file_name
from tools.client import upload_folder
from tools.comfy_server import ComfyServer, free_port
from tools.demo import FULL_WORKFLOW, RENDER_WORKFLOW, provide_tiny_models, wiring_graph
from tools.demo_asset import write_demo_asset
from PIL import Image

from conftest import COMFY_DIR, ROOT, TEST_NODES

CLIENT = ROOT / "tools" / "client.py"


def client(*args, timeout=600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(CLIENT), *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT)


def queued_id(stderr: str) -> str:
    m = re.search(r"queued prompt ([0-9a-f-]+)", stderr)
    assert m, stderr
    return m.group(1)


def test_help_documents_every_setting():
    res = client("--help")
    assert res.returncode == 0
    for opt in ("--server", "--workflow", "--asset", "--prompt", "--seed", "--steps", "--views",
                "--image-guidance", "--pitch", "--y-rotation", "--set", "--out", "Exit status"):
        assert opt in res.stdout, opt


def test_dry_run_fills_the_example_workflow(tmp_path):
    res = client("--dry-run", "--prompt", "a red box on a table", "--seed", 7, "--steps", 12, "--views", 6,
                 "--image-guidance", 1.5, "--pitch", 15, "--y-rotation", 90, "--set", "15.sampler_name=\"dpmpp_2m\"")
    assert res.returncode == 0, res.stderr
    g = json.loads(res.stdout)
    original = json.loads(FULL_WORKFLOW.read_text())
    by_class = {n["class_type"]: (nid, n["inputs"]) for nid, n in g.items()}
    assert by_class["CLIPTextEncode"][1]["text"] == "a red box on a table"
    ks_id, ks = by_class["KSampler"]
    assert (ks["seed"], ks["steps"]) == (7, 12)
    assert ks_id == "15" and ks["sampler_name"] == "dpmpp_2m"
    rv = by_class["RefAny3DRenderViews"][1]
    assert (rv["num_views"], rv["pitch"], rv["y_rotation"]) == (6, 15.0, 90.0)
    assert by_class["RefAny3DApply"][1]["image_guidance"] == 1.5
    # every output gets a folder of this run (names never collide with another run's)
    prefixes = {nid: g[nid]["inputs"]["filename_prefix"] for nid in g if "filename_prefix" in g[nid]["inputs"]}
    run_ids = set()
    for nid, prefix in prefixes.items():
        head, tail = original[nid]["inputs"]["filename_prefix"].rsplit("/", 1)
        m = re.fullmatch(re.escape(head) + r"/(client-[0-9-]+-[0-9a-f]{8})/" + re.escape(tail), prefix)
        assert m, prefix
        run_ids.add(m.group(1))
    assert len(run_ids) == 1
    assert run_ids.isdisjoint(re.findall(r"client-[0-9-]+-[0-9a-f]{8}", client("--dry-run").stdout))
    # nothing else changed
    changed = {(nid, k) for nid in g for k in g[nid]["inputs"] if g[nid]["inputs"][k] != original[nid]["inputs"][k]}
    assert {k for _, k in changed} == {"text", "seed", "steps", "sampler_name", "num_views", "pitch", "y_rotation",
                                        "image_guidance", "filename_prefix"}


def test_a_setting_no_node_takes_is_an_error():
    res = client("--dry-run", "--workflow", RENDER_WORKFLOW, "--prompt", "x")
    assert res.returncode == 2 and "--prompt was given but the workflow has no text encoder" in res.stderr


def test_a_ui_example_is_replaced_by_its_api_twin():
    res = client("--dry-run", "--workflow", ROOT / "example_workflows" / "refany3d_render_preview.json", "--views", 3)
    assert res.returncode == 0, res.stderr
    g = json.loads(res.stdout)
    expected = json.loads(RENDER_WORKFLOW.read_text())
    expected["2"]["inputs"]["num_views"] = 3
    for node in g.values():  # the run's own output folder aside
        if "filename_prefix" in node["inputs"]:
            node["inputs"]["filename_prefix"] = re.sub(r"client-[0-9-]+-[0-9a-f]{8}/", "",
                                                       node["inputs"]["filename_prefix"])
    assert g == expected


def test_without_websocket_client_the_run_is_followed_by_polling(comfy, tmp_path):
    """websocket-client is optional: hidden from the import system, the client polls /history."""
    asset = write_demo_asset(tmp_path / "polling_box.glb")
    argv = [str(CLIENT), "--server", comfy.url, "--workflow", str(RENDER_WORKFLOW), "--asset", str(asset),
            "--views", 1, "--out", str(tmp_path / "out")]
    code = ("import runpy, sys; sys.modules['websocket'] = None; sys.argv = %r; "  # also: python -m tools.client
            "runpy.run_module('tools.client', run_name='__main__')" % [str(a) for a in argv])
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert res.returncode == 0, res.stderr
    assert "polling /history" in res.stderr
    assert len(list((tmp_path / "out").glob("*.png"))) == 3  # 1 view: RGB, point map, mask
    assert len(list((tmp_path / "out").glob("*.glb"))) == 1


def test_unreachable_server_exits_nonzero():
    res = client("--server", f"http://127.0.0.1:{free_port()}", "--workflow", RENDER_WORKFLOW, timeout=60)
    assert res.returncode == 3
    assert "unreachable" in res.stderr


def test_end_to_end_with_the_tiny_model(comfy, tmp_path):
    provide_tiny_models(comfy.models_dir)
    workflow = tmp_path / "wiring.json"
    workflow.write_text(json.dumps(wiring_graph(json.loads(FULL_WORKFLOW.read_text()), steps=1, views=1)))
    asset = write_demo_asset(tmp_path / "client_box.glb")
    out = tmp_path / "results"
    res = client("--server", comfy.url, "--workflow", workflow, "--asset", asset, "--seed", 3, "--steps", 2,
                 "--views", 2, "--image-guidance", 2.0, "--pitch", 10, "--out", out)
    assert res.returncode == 0, res.stderr + comfy.log_text()[-3000:]
    asset_name = re.search(r"uploaded \S+ as (3d/refany3d_client/[0-9a-f]{16}/client_box\.glb)", res.stderr)
    assert asset_name, res.stderr
    assert re.search(r"KSampler \(node \d+\): 2/2", res.stderr), res.stderr  # progress from /ws
    saved = sorted(p.name for p in out.iterdir())
    assert saved == sorted(line.rsplit("/", 1)[-1] for line in res.stdout.split())
    for kind in ("image", "point_map", "mask"):
        files = [p for p in out.iterdir() if p.name.startswith(f"{kind}_")]
        assert len(files) == 1, saved
        with Image.open(files[0]) as img:
            assert img.size == (64, 64)
    # the server ran the values the client filled in
    prompt = comfy.history(queued_id(res.stderr))["prompt"][2]
    nodes = {n["class_type"]: n["inputs"] for n in prompt.values()}
    assert (nodes["KSampler"]["seed"], nodes["KSampler"]["steps"]) == (3, 2)
    assert (nodes["RefAny3DRenderViews"]["num_views"], nodes["RefAny3DRenderViews"]["pitch"]) == (2, 10.0)
    assert nodes["RefAny3DApply"]["image_guidance"] == 2.0
    assert nodes["RefAny3DLoadAsset"]["asset_file"] == asset_name.group(1)


@pytest.fixture(scope="module")
def private_comfy(tmp_path_factory):
    with ComfyServer(tmp_path_factory.mktemp("comfy-client-errors"), COMFY_DIR,
                     extra_custom_nodes=[TEST_NODES]) as server:
        yield server


def test_execution_error_exits_nonzero_with_the_server_message(private_comfy, tmp_path):
    broken = tmp_path / "broken_asset.glb"
    broken.write_bytes(b"glTF\x02\x00\x00\x00 truncated")
    res = client("--server", private_comfy.url, "--workflow", RENDER_WORKFLOW, "--asset", broken, "--out",
                 tmp_path / "out")
    assert res.returncode == 1, res.stderr
    hist = private_comfy.history(queued_id(res.stderr))
    errors = [m[1] for m in hist["status"]["messages"] if m[0] == "execution_error"]
    assert errors and errors[0]["node_type"] == "RefAny3DLoadAsset"
    assert errors[0]["exception_message"].strip() in res.stderr
    assert "the run failed on the server" in res.stderr
    assert not (tmp_path / "out").exists()


def test_validation_error_exits_nonzero_with_the_server_message(private_comfy, tmp_path):
    asset = write_demo_asset(tmp_path / "ok_box.glb")
    res = client("--server", private_comfy.url, "--workflow", RENDER_WORKFLOW, "--asset", asset,
                 "--set", "2.resolution=5000", "--out", tmp_path / "out")
    assert res.returncode == 4, res.stderr
    assert "rejected" in res.stderr and "RefAny3DRenderViews" in res.stderr and "4096" in res.stderr
    assert "queued prompt" not in res.stderr
    # a partly valid graph (one output fails, the others would run) is refused too, and not left running
    res = client("--server", private_comfy.url, "--workflow", RENDER_WORKFLOW, "--asset", asset,
                 "--set", '5.mask=["2", 0]', "--out", tmp_path / "out")  # an IMAGE into a MASK input
    assert res.returncode == 4, res.stderr
    assert "MaskToImage" in res.stderr
    deadline = time.monotonic() + 60
    while True:  # bounded wait for the server to drop or stop the cancelled prompt
        queue = private_comfy.client._json("GET", "/queue")[1]
        if not queue["queue_pending"] and not queue["queue_running"]:
            break
        assert time.monotonic() < deadline, queue
        time.sleep(0.2)
    history = private_comfy.client._json("GET", "/history")[1]
    for item in history.values():
        if item["prompt"][2].get("5", {}).get("inputs", {}).get("mask") == ["2", 0]:
            kinds = [m[0] for m in item["status"]["messages"]]
            assert "execution_interrupted" in kinds and "execution_success" not in kinds, kinds


# --- the files an asset references (tools/asset_refs.py), read locally

def test_supported_extensions_are_the_loaders():
    import rendering
    assert SUPPORTED_EXTENSIONS == rendering.SUPPORTED_EXTENSIONS


@pytest.mark.parametrize("args, name", [
    (["tex.png"], "tex.png"),
    (["-s", "1", "1", "1", "tex.png"], "tex.png"),
    (["-o", "0.5", "-s", "2", "2", "-clamp", "on", "tex.png"], "tex.png"),
    (["-bm", "0.3", "maps/bump map.png"], "maps/bump map.png"),
    (["-imfchan", "r", "-mm", "0", "1", "rough.png"], "rough.png"),
    (["-type", "sphere", "env.png"], "env.png"),
    (["-blendu", "off", "-blendv", "off", "-texres", "512", "t.jpg"], "t.jpg"),
    (["1.png"], "1.png"),
])
def test_mtl_map_options_are_skipped(args, name):
    assert map_file_name(args) == name


def test_obj_mtl_and_maps_are_collected(tmp_path):
    (tmp_path / "mats" / "tex").mkdir(parents=True)
    (tmp_path / "shared").mkdir()
    (tmp_path / "a.obj").write_text("# mtllib commented.mtl\nmtllib mats/a.mtl other.mtl\nv 0 0 0\n")
    (tmp_path / "mats" / "a.mtl").write_text(
        "newmtl m\nmap_Kd -s 1 1 1 tex/kd.png\nmap_Bump -bm 0.5 shared/n.png\nbump tex/kd.png\n# map_Ks gone.png\n")
    (tmp_path / "other.mtl").write_text("newmtl o\nKd 1 0 0\nmap_d tex\\alpha.png\n")
    (tmp_path / "tex").mkdir()
    for rel in ("mats/tex/kd.png", "shared/n.png", "tex/alpha.png"):
        (tmp_path / rel).write_bytes(b"png")
    bundle = collect(tmp_path / "a.obj")
    # kd.png beside the MTL, n.png relative to the OBJ (as trimesh reads it), Windows separators
    assert sorted(bundle.files) == ["a.obj", "mats/a.mtl", "mats/tex/kd.png", "other.mtl", "shared/n.png",
                                    "tex/alpha.png"]
    assert bundle.sidecars[0] != "a.obj" and len(bundle.sidecars) == 5


def test_gltf_and_glb_uris(tmp_path):
    from tools.assets_gen import GltfPart, box, write_glb
    v, f, uv = box()
    doc = {"asset": {"version": "2.0"}, "buffers": [{"uri": "data:application/octet-stream;base64,AAAA"},
                                                     {"uri": "my%20mesh.bin"}],
           "images": [{"uri": "tex/a%2Bb.png"}, {"bufferView": 0}, {"uri": "data:image/png;base64,AA=="}]}
    (tmp_path / "s.gltf").write_text(json.dumps(doc))
    assert gltf_uris(tmp_path / "s.gltf") == ["my mesh.bin", "tex/a+b.png"]
    glb = write_glb(tmp_path / "m.glb", [GltfPart(v, f, uv=uv)])
    assert gltf_uris(glb) == [] and list(collect(glb).files) == ["m.glb"]
    (tmp_path / "broken.gltf").write_text("{ not json")
    assert gltf_uris(tmp_path / "broken.gltf") == []  # the server's loader reports it
    (tmp_path / "broken.glb").write_bytes(b"glTF\x02\0\0\0 truncated")
    assert gltf_uris(tmp_path / "broken.glb") == []


def test_same_content_same_folder_different_content_different_folder(tmp_path):
    from tools.assets_gen import box, write_obj
    from PIL import Image
    v, f, uv = box()
    for name, colour in (("a", (255, 0, 0)), ("b", (255, 0, 0)), ("c", (0, 0, 255))):
        (tmp_path / name).mkdir()
        write_obj(tmp_path / name / "model.obj", v, f, uv, texture=Image.new("RGB", (4, 4), colour))
    a, b, c = (upload_folder(collect(tmp_path / n / "model.obj")) for n in "abc")
    assert a == b != c  # only the texture differs between a and c
    assert re.fullmatch(r"3d/refany3d_client/[0-9a-f]{16}", a)


@pytest.mark.parametrize("ref, message", [
    ("../up.png", "outside the asset's folder"),
    ("sub/../../up.png", "outside the asset's folder"),
    ("/etc/passwd", "absolute path"),
    ("C:\\textures\\a.png", "absolute path"),
    ("file:///etc/passwd", "a URL"),
    ("missing.png", "which is missing"),
])
def test_references_outside_the_folder_or_missing_are_refused(tmp_path, ref, message):
    (tmp_path / "up.png").write_bytes(b"png")
    src = tmp_path / "asset"
    src.mkdir()
    (src / "m.obj").write_text("mtllib m.mtl\nv 0 0 0\n")
    (src / "m.mtl").write_text(f"newmtl a\nmap_Kd {ref}\n")
    with pytest.raises(AssetInputError, match=re.escape(message)):
        collect(src / "m.obj")


def test_a_link_out_of_the_folder_is_refused(tmp_path):
    (tmp_path / "secret.png").write_bytes(b"png")
    src = tmp_path / "asset"
    src.mkdir()
    (src / "tex.png").symlink_to(tmp_path / "secret.png")
    (src / "m.obj").write_text("mtllib m.mtl\nv 0 0 0\n")
    (src / "m.mtl").write_text("newmtl a\nmap_Kd tex.png\n")
    with pytest.raises(AssetInputError, match="through a link"):
        collect(src / "m.obj")


def test_saving_never_replaces_a_file_without_overwrite(tmp_path):
    from tools.client import save_file
    (tmp_path / "a.png").write_bytes(b"old")
    assert save_file(tmp_path, "a.png", b"new") == tmp_path / "a-1.png"
    assert save_file(tmp_path, "a.png", b"newer") == tmp_path / "a-2.png"
    assert (tmp_path / "a.png").read_bytes() == b"old"
    assert save_file(tmp_path, "a.png", b"replaced", overwrite=True) == tmp_path / "a.png"
    assert (tmp_path / "a.png").read_bytes() == b"replaced"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-1.png", "a-2.png", "a.png"]  # no .part left

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
#
# The headless client (tools/client.py) run as users run it, in a subprocess, against ``private``.
# Each test checks the message and exit code, that nothing was sent, uploaded or written that should
# not be (the server's input folder, its history, the local --out folder), and still_serving.
# (This section's imports stay in it, so that the sections of the catalogue merge independently.)

import json  # noqa: E402
import re  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402
from tools.assets_gen import GltfPart, box, write_glb, write_gltf, write_obj  # noqa: E402
from tools.comfy_server import free_port  # noqa: E402
from tools.demo import RENDER_WORKFLOW  # noqa: E402
from tools.demo_asset import write_demo_asset  # noqa: E402

from conftest import ROOT  # noqa: E402

CLIENT = ROOT / "tools" / "client.py"


def run_client(*args, timeout=300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(CLIENT), *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT)


def render_args(server, out, *extra):
    """The render-only example (one 64 px view): cheap, and its RGB view shows the asset's colours."""
    return ["--server", server.url, "--workflow", RENDER_WORKFLOW, "--views", 1, "--set", "2.resolution=64",
            "--out", out, *extra]


def input_files(server) -> dict[str, bytes]:
    """Every file in the server's input folder (relative POSIX path -> bytes)."""
    return {p.relative_to(server.input_dir).as_posix(): p.read_bytes()
            for p in sorted(server.input_dir.rglob("*")) if p.is_file()}


def history_ids(server) -> set[str]:
    return set(server.client._json("GET", "/history")[1])


def object_colour(png) -> np.ndarray:
    """Mean RGB (0..255) of the pixels that are not the white background."""
    with Image.open(png) as img:
        rgb = np.asarray(img.convert("RGB")).astype(np.float64)
    obj = (rgb < 245).any(-1)
    assert obj.sum() > 50, f"{png}: almost nothing rendered"
    return rgb[obj].mean(0)


def rendered_view(out) -> Path:
    views = sorted(Path(out).glob("rgb_*.png"))
    assert len(views) == 1, sorted(p.name for p in Path(out).iterdir())
    return views[0]


def solid(colour, size=8) -> Image.Image:
    return Image.new("RGB", (size, size), colour)


# --- case 1: an asset's sidecar files go with it

def test_client_obj_is_sent_with_its_mtl_and_texture(private, tmp_path):
    """An OBJ's .mtl and the texture it names are uploaded with it, into one folder, and the object
    renders with its texture (it rendered flat grey with exit 0 when only the .obj was sent)."""
    src = tmp_path / "my asset"
    src.mkdir()
    v, f, uv = box()
    write_obj(src / "thing.obj", v, f, uv, texture=solid((255, 0, 0)))
    before = input_files(private)
    res = run_client(*render_args(private, tmp_path / "out", "--asset", src / "thing.obj"))
    assert res.returncode == 0, res.stderr
    assert "2 file(s) it references (thing.mtl, thing_kd.png)" in res.stderr
    new = {k: b for k, b in input_files(private).items() if k not in before}
    folders = {k.rsplit("/", 1)[0] for k in new}
    assert len(folders) == 1 and re.fullmatch(r"3d/refany3d_client/[0-9a-f]{16}", folders.pop()), new
    assert sorted(k.rsplit("/", 1)[1] for k in new) == ["thing.mtl", "thing.obj", "thing_kd.png"]
    assert all(new[k] == (src / k.rsplit("/", 1)[1]).read_bytes() for k in new)
    r, g, b = object_colour(rendered_view(tmp_path / "out"))
    assert r > 200 and g < 60 and b < 60, (r, g, b)  # the red texture, not mid grey
    still_serving(private)


def test_client_gltf_is_sent_with_its_buffer_and_images_in_sub_folders(private, tmp_path):
    """A .gltf's external .bin and images (here in sub-folders) keep their relative layout on the
    server (the run failed when only the .gltf was sent); a data: URI needs no file."""
    v, f, uv = box()
    gltf = write_gltf(tmp_path / "scene.gltf", [GltfPart(v, f, uv=uv, texture=solid((0, 0, 255)))])
    doc = json.loads(gltf.read_text())
    src = tmp_path / "asset"
    (src / "bin").mkdir(parents=True)
    (src / "textures").mkdir()
    (tmp_path / "scene.bin").rename(src / "bin" / "scene.bin")
    (tmp_path / "scene_tex0.png").rename(src / "textures" / "blue.png")
    doc["buffers"][0]["uri"] = "bin/scene.bin"
    doc["images"][0]["uri"] = "textures/blue.png"
    doc["images"].append({"uri": "data:image/png;base64,iVBORw0KGgo="})  # inline: nothing to send
    (src / "scene.gltf").write_text(json.dumps(doc))
    before = input_files(private)
    res = run_client(*render_args(private, tmp_path / "out", "--asset", src / "scene.gltf"))
    assert res.returncode == 0, res.stderr
    new = sorted(k for k in input_files(private) if k not in before)
    folder = new[0].split("/")[2]
    assert new == [f"3d/refany3d_client/{folder}/{rel}"
                   for rel in ("bin/scene.bin", "scene.gltf", "textures/blue.png")], new
    r, g, b = object_colour(rendered_view(tmp_path / "out"))
    assert b > 200 and r < 60 and g < 60, (r, g, b)
    still_serving(private)


def test_client_refuses_missing_or_escaping_sidecars_before_sending_anything(private, tmp_path):
    """A referenced file that is missing, or outside the asset's folder (../, absolute path, URL), is
    a local error (exit 2) named with its referrer, before any upload."""
    v, f, uv = box()
    src = tmp_path / "asset"
    src.mkdir()
    write_obj(src / "thing.obj", v, f, uv, texture=solid((255, 0, 0)))
    solid((0, 255, 0)).save(tmp_path / "outside.png")
    gltf = write_gltf(src / "scene.gltf", [GltfPart(v, f, uv=uv, texture=solid((0, 0, 255)))])
    doc = json.loads(gltf.read_text())
    cases = {
        "map_Kd missing.png": ("thing.mtl references 'missing.png', which is missing", "thing.obj"),
        "map_Kd -s 1 1 1 -clamp on ../outside.png": ("outside the asset's folder", "thing.obj"),
        f"map_Kd {tmp_path / 'outside.png'}": ("by an absolute path", "thing.obj"),
        "gltf-buffer": ("scene.gltf references 'gone.bin', which is missing", "scene.gltf"),
        "gltf-image": ("a URL", "scene.gltf"),
    }
    before, history = input_files(private), history_ids(private)
    for line, (message, asset) in cases.items():
        if line == "gltf-buffer":
            (src / "scene.gltf").write_text(json.dumps({**doc, "buffers": [{"uri": "gone.bin", "byteLength": 4}]}))
        elif line == "gltf-image":
            (src / "scene.gltf").write_text(json.dumps({**doc, "images": [{"uri": "https://example.com/t.png"}]}))
        else:
            (src / "thing.mtl").write_text(f"newmtl m0\nKd 1 1 1\n{line}\n")
        res = run_client(*render_args(private, tmp_path / "out", "--asset", src / asset))
        assert res.returncode == 2, (line, res.stderr)
        assert message in res.stderr and "Traceback" not in res.stderr, (line, res.stderr)
    (src / "thing.mtl").unlink()  # the .mtl itself missing
    res = run_client(*render_args(private, tmp_path / "out", "--asset", src / "thing.obj"))
    assert res.returncode == 2 and "thing.obj references 'thing.mtl', which is missing" in res.stderr, res.stderr
    assert input_files(private) == before and history_ids(private) == history
    assert not (tmp_path / "out").exists()
    still_serving(private)


# --- case 2: no name collisions, on the server or in --out

def test_client_two_concurrent_clients_with_same_named_assets_get_their_own_results(private, tmp_path):
    """Two clients started together, each with its own model.glb (red, blue): each run renders its
    own asset, the server keeps both files, and the outputs have different names."""
    v, f, _ = box()
    runs = {}
    for colour, rgba in (("red", (1.0, 0.0, 0.0, 1.0)), ("blue", (0.0, 0.0, 1.0, 1.0))):
        (tmp_path / colour).mkdir()
        runs[colour] = write_glb(tmp_path / colour / "model.glb", [GltfPart(v, f, factor=rgba)])
    before = input_files(private)
    procs = {colour: subprocess.Popen(
        [sys.executable, str(CLIENT), *map(str, render_args(private, tmp_path / f"out_{colour}", "--asset", asset))],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT) for colour, asset in runs.items()}
    results = {}
    for colour, proc in procs.items():
        out, err = proc.communicate(timeout=300)
        results[colour] = (proc.returncode, out, err)
    for colour, (code, _out, err) in results.items():
        assert code == 0, (colour, err)
    red = object_colour(rendered_view(tmp_path / "out_red"))
    blue = object_colour(rendered_view(tmp_path / "out_blue"))
    assert red[0] > 200 and red[2] < 60, red
    assert blue[2] > 200 and blue[0] < 60, blue
    # both assets are on the server, each under its own folder, each with its own bytes
    new = {k: b for k, b in input_files(private).items() if k not in before}
    assert sorted(new.values()) == sorted(p.read_bytes() for p in runs.values()), sorted(new)
    assert len({k.rsplit("/", 1)[0] for k in new}) == 2 and all(k.endswith("/model.glb") for k in new)
    # and each prompt loaded its own file and saved under its own prefix
    prompts = {}
    for colour, (_code, _out, err) in results.items():
        graph = private.history(re.search(r"queued prompt ([0-9a-f-]+)", err).group(1))["prompt"][2]
        prompts[colour] = (graph["1"]["inputs"]["asset_file"], graph["3"]["inputs"]["filename_prefix"])
    assert new[prompts["red"][0]] == runs["red"].read_bytes() and new[prompts["blue"][0]] == runs["blue"].read_bytes()
    assert prompts["red"][1] != prompts["blue"][1]
    still_serving(private)


def test_client_same_content_shares_its_folder_and_out_files_are_kept(private, tmp_path):
    """The same asset twice: one upload folder, no duplicate; the second run into the same --out keeps
    the first run's files (new ones get a -1 suffix); --overwrite replaces them."""
    src = tmp_path / "asset"
    src.mkdir()
    v, f, uv = box()
    write_obj(src / "same.obj", v, f, uv, texture=solid((255, 0, 0)))
    out = tmp_path / "out"
    before = input_files(private)
    assert run_client(*render_args(private, out, "--asset", src / "same.obj")).returncode == 0
    first = {p.name: p.read_bytes() for p in out.iterdir()}
    uploaded = input_files(private)
    res = run_client(*render_args(private, out, "--asset", src / "same.obj"))
    assert res.returncode == 0, res.stderr
    assert input_files(private) == uploaded and len(uploaded) == len(before) + 3  # shared, not duplicated
    now = {p.name: p.read_bytes() for p in out.iterdir()}
    assert {k: now[k] for k in first} == first  # nothing replaced
    assert sorted(set(now) - set(first)) == sorted(f"{Path(n).stem}-1{Path(n).suffix}" for n in first)
    assert "kept the existing" in res.stderr
    res = run_client(*render_args(private, out, "--asset", src / "same.obj", "--overwrite"))
    assert res.returncode == 0, res.stderr
    assert sorted(p.name for p in out.iterdir()) == sorted(now)
    assert not [p for p in out.iterdir() if p.name.endswith(".part")]
    still_serving(private)


def test_client_never_overwrites_a_different_file_on_the_server(private, tmp_path):
    """A different file already where the asset's upload goes is kept, and the run refused (exit 4)."""
    from tools.asset_refs import collect
    from tools.client import upload_folder
    v, f, _ = box()
    asset = write_glb(tmp_path / "taken.glb", [GltfPart(v, f, factor=(0.0, 1.0, 0.0, 1.0))])
    target = private.input_dir / upload_folder(collect(asset)) / "taken.glb"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(b"someone else's file")
    history = history_ids(private)
    res = run_client(*render_args(private, tmp_path / "out", "--asset", asset))
    assert res.returncode == 4, res.stderr
    assert "already holds a different file" in res.stderr and "nothing was queued" in res.stderr
    assert target.read_bytes() == b"someone else's file"
    assert history_ids(private) == history and not (tmp_path / "out").exists()
    still_serving(private)


# --- case 8: exit codes as documented, local inputs checked before anything is sent

def test_client_out_naming_a_file_is_refused_before_the_run(private, tmp_path):
    out = tmp_path / "results.png"
    out.write_bytes(b"keep me")
    asset = write_demo_asset(tmp_path / "box.glb")
    before, history = input_files(private), history_ids(private)
    res = run_client(*render_args(private, out, "--asset", asset))
    assert res.returncode == 2, res.stderr
    assert "--out" in res.stderr and "is an existing file" in res.stderr and "Traceback" not in res.stderr
    assert out.read_bytes() == b"keep me"
    assert input_files(private) == before and history_ids(private) == history
    still_serving(private)


def test_client_server_address_without_scheme_means_http(private, tmp_path):
    asset = write_demo_asset(tmp_path / "box.glb")
    args = render_args(private, tmp_path / "out", "--asset", asset)
    args[1] = private.url.removeprefix("http://")  # 127.0.0.1:PORT
    res = run_client(*args)
    assert res.returncode == 0, res.stderr
    assert len(list((tmp_path / "out").glob("*.png"))) == 3
    res = run_client("--server", "ftp://127.0.0.1:1", "--workflow", RENDER_WORKFLOW, "--out", tmp_path / "o2")
    assert res.returncode == 2 and "http://HOST:PORT" in res.stderr, res.stderr
    still_serving(private)


def test_client_checks_local_inputs_before_any_network_call(private, tmp_path):
    """A missing asset, an unsupported type, a workflow without a Load Asset node: exit 2 with the
    reason, against a live server (nothing uploaded) and a dead address (no 'unreachable')."""
    (tmp_path / "thing.fbx").write_bytes(b"Kaydara FBX Binary  \0")
    (tmp_path / "notes.txt").write_text("not a mesh")
    asset = write_demo_asset(tmp_path / "box.glb")
    no_loader = tmp_path / "no_loader.json"
    no_loader.write_text(json.dumps({"1": {"class_type": "EmptyImage", "inputs": {
        "width": 8, "height": 8, "batch_size": 1, "color": 0}}}))
    cases = [(["--asset", tmp_path / "thing.fbx"], "FBX is not supported"),
             (["--asset", tmp_path / "notes.txt"], "unsupported 3D file type '.txt'"),
             (["--asset", tmp_path / "nothing.glb"], "does not exist"),
             (["--asset", asset, "--workflow", no_loader], "no node that takes it")]
    before, history = input_files(private), history_ids(private)
    for server in (private.url, f"http://127.0.0.1:{free_port()}"):
        for extra, message in cases:
            res = run_client("--server", server, "--workflow", RENDER_WORKFLOW, "--out", tmp_path / "out", *extra)
            assert res.returncode == 2, (extra, res.stderr)
            assert message in res.stderr and "unreachable" not in res.stderr, (extra, res.stderr)
    assert input_files(private) == before and history_ids(private) == history
    still_serving(private)


def test_client_partly_valid_graph_is_rejected_with_the_per_node_messages(private, tmp_path):
    """HTTP 200 with node_errors (the valid outputs were queued) is a rejection like HTTP 400: exit 4
    with the server's per-node messages, the prompt taken off the queue; ComfyClient.submit too."""
    from tools.comfy_http import ComfyClient, PromptRejected
    still_serving(private)  # puts 3d/still_serving_box.glb in place
    graph = json.loads(RENDER_WORKFLOW.read_text())
    graph["1"]["inputs"]["asset_file"] = "3d/still_serving_box.glb"
    graph["5"]["inputs"]["mask"] = ["2", 0]  # an IMAGE into MaskToImage's MASK input
    workflow = tmp_path / "partly_valid.json"
    workflow.write_text(json.dumps(graph))
    before = input_files(private)
    res = run_client("--server", private.url, "--workflow", workflow, "--out", tmp_path / "out")
    assert res.returncode == 4, res.stderr
    assert "failed validation" in res.stderr and "node 5 (MaskToImage)" in res.stderr, res.stderr
    assert "HTTP 200" not in res.stderr and "queued prompt" not in res.stderr
    with pytest.raises(PromptRejected, match=r"node 5 \(MaskToImage\)"):
        ComfyClient(private.url).submit(graph)
    deadline = time.monotonic() + 60
    while True:  # bounded wait for the server to drop or stop the cancelled prompts
        queue = private.client._json("GET", "/queue")[1]
        if not queue["queue_pending"] and not queue["queue_running"]:
            break
        assert time.monotonic() < deadline, queue
        time.sleep(0.2)
    for item in private.client._json("GET", "/history")[1].values():
        if item["prompt"][2].get("5", {}).get("inputs", {}).get("mask") == ["2", 0]:
            assert "execution_success" not in [m[0] for m in item["status"]["messages"]]
    assert input_files(private) == before and not (tmp_path / "out").exists()
    still_serving(private)


def test_client_names_every_missing_model_file_including_the_adapter(private, tmp_path):
    """The full example on a server without weights: exit 4 naming each missing file with its
    models/ folder, the RefAny3D adapter's three files included (its node checks them only when
    it runs), before anything is uploaded or queued."""
    asset = write_demo_asset(tmp_path / "box.glb")
    before, history = input_files(private), history_ids(private)
    res = run_client("--server", private.url, "--asset", asset, "--out", tmp_path / "out")
    assert res.returncode == 4, res.stderr
    for path in ("models/diffusion_models/flux1-dev.safetensors", "models/text_encoders/clip_l.safetensors",
                 "models/text_encoders/t5xxl_fp16.safetensors", "models/vae/ae.safetensors",
                 "models/refany3d/default.safetensors", "models/refany3d/coord.safetensors",
                 "models/refany3d/domain_embedder.pth"):
        assert path in res.stderr, (path, res.stderr)
    assert input_files(private) == before and history_ids(private) == history
    still_serving(private)


@pytest.fixture(scope="module")
def small_uploads(tmp_path_factory):
    """A server that accepts uploads up to 50 kB (--max-upload-size 0.05)."""
    with ComfyServer(tmp_path_factory.mktemp("comfy-small-uploads"), COMFY_DIR, extra_custom_nodes=[TEST_NODES],
                     extra_args=["--max-upload-size", "0.05"]) as server:
        yield server


def test_client_upload_too_large_is_a_rejection_not_unreachable(small_uploads, tmp_path):
    """The server refuses a sidecar as too large (HTTP 413): exit 4 with what to do, and nothing of
    the asset is left on the server (the largest file goes first)."""
    v, f, uv = box()
    noise = Image.fromarray(np.random.default_rng(0).integers(0, 256, (160, 160, 3), dtype=np.uint8))
    asset = write_obj(tmp_path / "big.obj", v, f, uv, texture=noise)
    assert (tmp_path / "big_kd.png").stat().st_size > 60_000
    before, history = input_files(small_uploads), history_ids(small_uploads)
    res = run_client(*render_args(small_uploads, tmp_path / "out", "--asset", asset))
    assert res.returncode == 4, res.stderr
    assert "big_kd.png" in res.stderr and "--max-upload-size" in res.stderr and "unreachable" not in res.stderr
    glb = write_glb(tmp_path / "big.glb", [GltfPart(v, f, uv=uv, texture=noise)])  # the asset itself too large
    res = run_client(*render_args(small_uploads, tmp_path / "out", "--asset", glb))
    assert res.returncode == 4, res.stderr
    assert "big.glb" in res.stderr and "--max-upload-size" in res.stderr and "unreachable" not in res.stderr
    assert input_files(small_uploads) == before and history_ids(small_uploads) == history
    assert not (tmp_path / "out").exists()
    still_serving(small_uploads)




# ============================================================================ weights and latents (cases 3, 9)


# ============================================================================ assets and views (cases 4, 5, 6, 7)


# ============================================================================ friction (case 10)

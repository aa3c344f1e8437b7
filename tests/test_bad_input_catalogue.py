"""The bad-input catalogue: every way a careless or hostile user was seen to get a quiet wrong result,
each as a test through the real server (or the real client), each checking three things: the message
says what is wrong and what to do, the server keeps serving, and nothing is written half-way.

The sections are by area, each titled by what it protects: the headless client, weights and latents,
assets and views, node inputs in the UI, training on a shared server, the client against a hostile
server, Read Pose, target camera and Best Of. To add a case: put it in the section of its area, use
``private`` (a server of its own, so expected tracebacks stay out of the shared server's log) and end
with ``still_serving(server)``.
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


# ============================================================================ the headless client: sidecars, names, exit codes
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


# --- an asset's sidecar files go with it

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


# --- no name collisions, on the server or in --out

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


# --- exit codes as documented, local inputs checked before anything is sent

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
    (tmp_path / "thing.blend").write_bytes(b"BLENDER-v300")
    (tmp_path / "notes.txt").write_text("not a mesh")
    asset = write_demo_asset(tmp_path / "box.glb")
    no_loader = tmp_path / "no_loader.json"
    no_loader.write_text(json.dumps({"1": {"class_type": "EmptyImage", "inputs": {
        "width": 8, "height": 8, "batch_size": 1, "color": 0}}}))
    cases = [(["--asset", tmp_path / "thing.blend"], "export the asset from Blender as GLB"),
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
    """A server that accepts uploads up to 50 kB (--max-upload-size 0.05) and whose Python lacks the
    optional glTF decoders: a folder first on its PYTHONPATH holds a DracoPy, a meshopt and an alktx2
    that refuse to import (see test_compressed_gltf_without_its_decoder_names_the_package_and_serves_on)."""
    import os
    blocked = tmp_path_factory.mktemp("no-decoders")
    for module in ("DracoPy", "meshopt", "alktx2"):
        (blocked / f"{module}.py").write_text(f"raise ImportError('{module} blocked by the test')\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(blocked), os.environ.get("PYTHONPATH", "")]))
    with ComfyServer(tmp_path_factory.mktemp("comfy-small-uploads"), COMFY_DIR, extra_custom_nodes=[TEST_NODES],
                     extra_args=["--max-upload-size", "0.05"], env=env) as server:
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




# ============================================================================ weights and latents: values, guidance, joined latents

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


# ============================================================================ assets and views: sidecar freshness, textures, blank views, links


def assets_graph(asset_file: str, views: int = 1, res: int = 32, **render) -> dict:
    """Load 3D Asset -> Render Views -> Save Image (rgb) and Mask To Image -> Save Image (mask)."""
    inputs = {"asset": ["load", 0], "num_views": views, "preset": "release", "resolution": res, "pitch": 0.0,
              "y_rotation": 0.0, "radius": 4.0, "fov": 45.0}
    inputs.update(render)
    return {"load": {"class_type": "RefAny3DLoadAsset", "inputs": {"asset_file": asset_file}},
            "render": {"class_type": "RefAny3DRenderViews", "inputs": inputs},
            "save": {"class_type": "SaveImage", "inputs": {"images": ["render", 0], "filename_prefix": "catalogue/rgb"}},
            "mask": {"class_type": "MaskToImage", "inputs": {"mask": ["render", 2]}},
            "save_mask": {"class_type": "SaveImage",
                          "inputs": {"images": ["mask", 0], "filename_prefix": "catalogue/mask"}}}


def assets_outputs(server) -> set:
    """Every file under the server's output folder (to show that a refused run wrote nothing)."""
    return {p for p in server.output_dir.rglob("*") if p.is_file()}


def assets_colour(server, result):
    """Mean RGB (0..255) of the asset's pixels in the first saved view (mask from the mask output)."""
    import numpy as np
    from PIL import Image
    rgb = np.asarray(Image.open(server.output_files(result, "save")[0]).convert("RGB"), dtype=np.float64)
    mask = np.asarray(Image.open(server.output_files(result, "save_mask")[0]).convert("L")) > 127
    assert mask.sum() > 50, "the asset does not show in the view"
    return rgb[mask].mean(axis=0)


def assets_refused(server, graph, *words, before=None):
    """Run ``graph``; it must fail at Load/Render with an AssetError whose message holds ``words``,
    and write nothing. Returns the message."""
    before = assets_outputs(server) if before is None else before
    result = server.run(graph, timeout=300)
    assert result.status == "error", f"expected a clear error, got {result.status}"
    message = result.error["exception_message"]
    assert result.error["exception_type"].endswith("AssetError"), result.error_text()
    for word in words:
        assert word in message, f"{word!r} not in the message: {message}"
    assert not result.outputs.get("save") and assets_outputs(server) == before, "a refused run wrote files"
    return message


def assets_tint(rgb):
    from PIL import Image
    return Image.new("RGB", (8, 8), rgb)


def test_a_replaced_or_later_uploaded_texture_or_mtl_is_seen_at_the_next_run(private, tmp_path):
    """Case 4: Load Asset's cache key covers the .mtl and the textures, not only the .obj."""
    from tools.assets_gen import box, write_obj
    server = private
    folder = server.input_dir / "3d" / "case4"
    folder.mkdir(parents=True)
    v, f, uv = box()
    write_obj(folder / "crate.obj", v, f, uv, texture=assets_tint((220, 30, 30)))
    graph = assets_graph("3d/case4/crate.obj")
    first = server.run(graph, timeout=300)
    assert first.status == "success", first.error_text()
    assert abs(assets_colour(server, first) - [220, 30, 30]).max() < 3
    # the user uploads a new texture under the same name; the .obj is unchanged
    assets_tint((30, 30, 220)).save(tmp_path / "crate_kd.png")
    assert server.upload(tmp_path / "crate_kd.png", subfolder="3d/case4") == "3d/case4/crate_kd.png"
    second = server.run(graph, timeout=300)
    assert second.status == "success", second.error_text()
    assert abs(assets_colour(server, second) - [30, 30, 220]).max() < 3, "the old texture was served from cache"

    # an .obj uploaded alone: a clear error; uploading its .mtl, then its texture, is seen at once
    write_obj(tmp_path / "barrel.obj", v, f, uv, texture=assets_tint((30, 200, 30)))
    server.upload(tmp_path / "barrel.obj", subfolder="3d/case4")
    graph = assets_graph("3d/case4/barrel.obj")
    assets_refused(server, graph, "barrel.mtl", "missing", "input/3d/case4")
    server.upload(tmp_path / "barrel.mtl", subfolder="3d/case4")
    assets_refused(server, graph, "barrel_kd.png", "missing", "input/3d/case4")
    server.upload(tmp_path / "barrel_kd.png", subfolder="3d/case4")
    done = server.run(graph, timeout=300)
    assert done.status == "success", done.error_text()
    assert abs(assets_colour(server, done) - [30, 200, 30]).max() < 3
    still_serving(server)


def test_a_texture_the_mtl_names_but_is_missing_is_an_error_naming_file_and_folder(private):
    """Case 5a: it rendered white on white (Kd 1 1 1, no texture) without a word."""
    from tools.assets_gen import box, write_obj
    server = private
    folder = server.input_dir / "3d" / "case5a"
    folder.mkdir(parents=True)
    v, f, uv = box()
    write_obj(folder / "vase.obj", v, f, uv, texture=assets_tint((200, 120, 40)))
    (folder / "vase_kd.png").unlink()
    message = assets_refused(server, assets_graph("3d/case5a/vase.obj"), "'vase_kd.png'", "vase.mtl", "missing",
                             "input/3d/case5a", "Upload it there")
    assert str(server.base_dir) not in message  # the folder as the user knows it, not the server's path
    still_serving(server)


def test_a_texture_over_the_decompression_bomb_limit_is_an_error_naming_size_and_limit(private):
    """Case 5b: Pillow refused the texture inside trimesh, which dropped it: grey without a word."""
    from PIL import Image
    from tools.assets_gen import box, huge_png, write_obj
    server = private
    folder = server.input_dir / "3d" / "case5b"
    folder.mkdir(parents=True)
    v, f, uv = box()
    write_obj(folder / "poster.obj", v, f, uv, texture=assets_tint((1, 2, 3)))
    huge_png(folder / "poster_kd.png", 20_000, 10_000)  # 200 Mpx, a few kB on disk
    limit = 2 * Image.MAX_IMAGE_PIXELS
    assets_refused(server, assets_graph("3d/case5b/poster.obj"), "'poster_kd.png'", "20,000 × 10,000",
                   "200,000,000 pixels", f"{limit:,} pixels", "Downscale")
    still_serving(server)


def test_a_gltf_texture_uri_outside_the_folder_is_an_error_naming_the_uri(private):
    """Case 5c: trimesh refused the URI (right) and rendered grey (silently)."""
    import json
    from tools.assets_gen import GltfPart, marked_quad, marked_texture, write_gltf
    server = private
    folder = server.input_dir / "3d" / "case5c"
    folder.mkdir(parents=True)
    v, f, uv = marked_quad()
    path = write_gltf(folder / "sign.gltf", [GltfPart(v, f, uv=uv, texture=marked_texture(16))])
    (folder / "sign_tex0.png").rename(server.base_dir / "outside.png")  # exists, outside the input folder
    for uri in ("../../../outside.png", str(server.base_dir / "outside.png"), "file:///etc/hostname"):
        tree = json.loads(path.read_text())
        tree["images"][0]["uri"] = uri
        path.write_text(json.dumps(tree))
        assets_refused(server, assets_graph("3d/case5c/sign.gltf"), f"'{uri}'", "outside the asset's folder",
                       "refused")
    still_serving(server)


def test_a_texture_without_uvs_renders_flat_with_a_warning_in_log_node_and_description(private):
    """Case 5d: a texture the mesh cannot place (no UVs) still gives a useful render (shape, point map,
    flat colour), so it is a loud warning, not an error."""
    from tools.assets_gen import box, write_obj
    server = private
    folder = server.input_dir / "3d" / "case5d"
    folder.mkdir(parents=True)
    v, f, _ = box()
    write_obj(folder / "stool.obj", v, f, None, texture=assets_tint((200, 0, 0)), diffuse=(0.2, 0.4, 0.6))
    result = server.run(assets_graph("3d/case5d/stool.obj"), timeout=300)
    assert result.status == "success", result.error_text()
    assert abs(assets_colour(server, result) - [51, 102, 153]).max() < 3  # the Kd colour
    ui_text = "\n".join(result.outputs["load"]["text"])  # the node's UI output (the asset's description)
    on_node = "\n".join(result.node_texts("load"))  # the text the frontend shows on the node
    for text in (ui_text, on_node, server.log_text()):
        assert "stool.obj" in text and "no UV coordinates" in text and "stool_kd.png" in text, text[-2000:]
    assert "WARNING" in ui_text and "WARNING" in on_node
    still_serving(server)


def test_blank_views_warn_by_name_and_all_blank_is_an_error(private):
    """Case 6: a flat card is seen edge-on at 0° and 180° (the 2-view release preset)."""
    from tools.assets_gen import GltfPart, flat_card, write_glb
    server = private
    v, f, _ = flat_card()
    write_glb(server.input_dir / "3d" / "case6_card.glb", [GltfPart(v, f, factor=(0.8, 0.1, 0.1, 1.0))])
    message = assets_refused(server, assets_graph("3d/case6_card.glb", views=2), "all 2 views are blank",
                             "view 0 (0°)", "view 1 (180°)", "pitch", "'even' preset")
    assert "more views" in message
    # 4 views: 90° and 270° see it, 0° and 180° do not: the run goes on, loudly
    result = server.run(assets_graph("3d/case6_card.glb", views=4), timeout=300)
    assert result.status == "success", result.error_text()
    ui_text = "\n".join(result.outputs["render"]["text"])
    on_node = "\n".join(result.node_texts("render"))
    for text in (ui_text, on_node, server.log_text()):
        assert "2 of 4 views are blank" in text and "view 0 (0°), view 2 (180°)" in text, text[-2000:]
        assert "pitch" in text and "more views" in text
    assert len(server.output_files(result, "save")) == 4
    still_serving(server)


def test_linked_files_and_linked_folders_in_input_work_names_leaving_it_do_not(private):
    """Case 7: a studio library linked into input/3d was listed, then refused at validation."""
    import os
    import re

    from tools.assets_gen import box, textured_box_glb, write_obj
    from tools.comfy_http import PromptRejected
    server = private
    library = server.base_dir / "studio_library"  # outside ComfyUI's input folder
    (library / "props").mkdir(parents=True)
    textures = server.base_dir / "studio_textures"
    textures.mkdir()
    textured_box_glb(library / "lamp.glb")
    v, f, uv = box()
    write_obj(library / "props" / "crate.obj", v, f, uv, texture=assets_tint((240, 200, 10)))
    # the texture itself is a link into another folder of the studio
    (library / "props" / "crate_kd.png").rename(textures / "crate_yellow.png")
    os.symlink(textures / "crate_yellow.png", library / "props" / "crate_kd.png")
    os.symlink(library / "lamp.glb", server.input_dir / "3d" / "case7_lamp.glb")  # a linked file
    os.symlink(library, server.input_dir / "3d" / "case7_studio", target_is_directory=True)  # a linked folder

    spec = server.object_info("RefAny3DLoadAsset")["RefAny3DLoadAsset"]["input"]["optional"]["asset_file"]
    options = spec[0] if isinstance(spec[0], list) else spec[1]["options"]  # v0.3.75 / v0.31 layouts
    assert {"3d/case7_lamp.glb", "3d/case7_studio/lamp.glb", "3d/case7_studio/props/crate.obj"} <= set(options)
    for name in ("3d/case7_lamp.glb", "3d/case7_studio/lamp.glb"):
        result = server.run(assets_graph(name), timeout=300)
        assert result.status == "success", result.error_text()
    result = server.run(assets_graph("3d/case7_studio/props/crate.obj"), timeout=300)
    assert result.status == "success", result.error_text()
    assert abs(assets_colour(server, result) - [240, 200, 10]).max() < 3  # .mtl and linked texture read

    # what stays refused is a name that leaves the folder
    before = assets_outputs(server)
    for name, word in (("3d/../../studio_library/lamp.glb", "('..')"), ("3d/case7_studio/../../../x.glb", "('..')"),
                       (str(library / "lamp.glb"), "absolute")):
        with pytest.raises(PromptRejected, match=re.escape(word)):
            server.submit(assets_graph(name))
    assert assets_outputs(server) == before
    still_serving(server)




def test_compressed_gltf_without_its_decoder_names_the_package_and_serves_on(small_uploads, tmp_path):
    """A Draco, a meshopt and a KTX2-textured GLB on a server whose Python lacks DracoPy,
    meshopt and alktx2 (small_uploads blocks them): Load 3D Asset fails with an AssetError that names
    the package to install, nothing is written, and the next ordinary prompt on the same server succeeds."""
    from test_gltf_compressed import write_ktx2_twins, write_meshopt_twins, write_twins
    server = small_uploads
    _, draco = write_twins(tmp_path)
    _, meshopt_glb, _ = write_meshopt_twins(tmp_path, quantized=True)
    _, ktx2 = write_ktx2_twins(tmp_path, sphere=(8, 16))  # under the server's 50 kB upload limit
    for path, words in ((draco, ("KHR_draco_mesh_compression", "pip install DracoPy")),
                        (meshopt_glb, ("EXT_meshopt_compression", "pip install meshopt", "Python 3.11")),
                        (ktx2, ("KTX2", "pip install alktx2", "PNG or JPEG"))):
        name = server.upload(path, subfolder="3d/no_decoder")
        assets_refused(server, assets_graph(name), *words)
    still_serving(server)


# ============================================================================ node inputs in the UI: validation, tooltips, names, startup


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


# ============================================================================ training on a shared server: paths, states, adapters kept
#
# The training nodes on ``private`` with the test-only tiny FLUX.1 and text encoder and a random TAESD VAE:
# every path a user names stays inside input/ (links inside followed), a run never destroys good work (a
# non-finite step stops the run, resume states and encodings are checked field by field, an adapter folder
# is replaced only when asked), and what is written is readable as the umask says.

import os as _os  # noqa: E402
import random as _random  # noqa: E402


def tr_setup(server):
    from tools import tiny_models
    vae = server.models_dir / "vae" / tiny_models.TINY_VAE_NAME
    if not vae.exists():
        vae.parent.mkdir(parents=True, exist_ok=True)
        tiny_models.write_taesd_vae(vae, seed=0)
    asset = server.input_dir / "3d" / "tr_box.glb"
    if not asset.exists():
        write_demo_asset(asset)
    return tiny_models.TINY_VAE_NAME


def tr_graph(server, name, source="synthetic", folder="", steps=2, save_every=1, resume=False, **train):
    vae = tr_setup(server)
    return {
        "model": {"class_type": "RefAny3DTestTinyModel", "inputs": {"kind": "flux", "hidden_size": 64, "seed": 0}},
        "vae": {"class_type": "VAELoader", "inputs": {"vae_name": vae}},
        "clip": {"class_type": "RefAny3DTestTextEncoder", "inputs": {"context_dim": 32, "pooled_dim": 16}},
        "asset": {"class_type": "RefAny3DLoadAsset", "inputs": {"asset_file": "3d/tr_box.glb"}},
        "data": {"class_type": "RefAny3DTrainingDataset",
                 "inputs": {"source": source, "folder": folder, "count": 3, "size": 32, "views": 1, "seed": 0,
                            "prompt_template": "a photo of {name}", "asset": ["asset", 0]}},
        "encode": {"class_type": "RefAny3DEncodeTrainingData",
                   "inputs": {"dataset": ["data", 0], "vae": ["vae", 0], "clip": ["clip", 0]}},
        "train": {"class_type": "RefAny3DTrain",
                  "inputs": {"model": ["model", 0], "encoded": ["encode", 0], "name": name, "steps": steps,
                             "batch_size": 1, "accumulation": 1, "optimizer": "adamw", "learning_rate": 1e-3,
                             "rank": 2, "seed": 0, "save_every": save_every, "preview_every": 0, "resume": resume,
                             **train}},
    }


def tr_encoding(server) -> Path:
    """The encoding of the synthetic training set in output/refany3d_encoded/."""
    import json as _json
    found = [p for p in (server.output_dir / "refany3d_encoded").iterdir() if (p / "encoded.json").is_file()
             and "synthetic" in _json.loads((p / "encoded.json").read_text())["source"]["describe"].lower()]
    assert len(found) == 1, found
    return found[0]


def tr_files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def tr_failure(server, graph, node_type) -> str:
    result = server.run(graph, timeout=600)
    assert result.status == "error", result.status
    assert result.error["node_type"] == node_type, result.error_text()
    return result.error["exception_message"]


def tr_umask() -> int:
    mask = _os.umask(0o022)
    _os.umask(mask)
    return mask


def tr_modes_follow_the_umask(*folders: Path) -> int:
    """Every file and folder below ``folders`` has the mode a plain open/mkdir gives under this umask (the
    server inherits the test's); returns how many were checked."""
    mask, n = tr_umask(), 0
    for folder in folders:
        for p in [folder, *folder.rglob("*")]:
            want = (0o777 if p.is_dir() else 0o666) & ~mask
            assert p.stat().st_mode & 0o777 == want, (p, oct(p.stat().st_mode & 0o777), oct(want))
            n += 1
    return n


def test_tr_dataset_folder_outside_input_is_refused_without_a_word_about_the_server(private):
    """'/', '../..', absolute paths, a drive, NUL: refused before anything is read; the message lists no folder
    of the server (it used to list '/': 'bin', 'boot', ...) and names no path of it."""
    server = private
    secret = server.base_dir / "tr_private_dataset"
    write_demo_asset(secret / "s0" / "asset.glb")
    for source in ("sample folders", "release layout"):
        for folder, words in (("/", "absolute path"), ("/etc", "absolute path"), (str(secret), "absolute path"),
                              ("../..", "leaves ComfyUI's input folder"),
                              ("3d/../../tr_private_dataset", "leaves ComfyUI's input folder"),
                              ("C:\\Windows", "absolute path"), ("ds\x00x", "NUL character"),
                              ("no_such_dataset", "not found in ComfyUI's input folder")):
            message = tr_failure(server, tr_graph(server, "tr_refused", source, folder), "RefAny3DTrainingDataset")
            assert words in message, (folder, message)
            for leak in ("bin", "boot", "'etc'", "usr", str(server.base_dir), "s0", "asset.glb"):
                assert leak not in message.replace(folder, ""), (folder, leak, message)
    assert not (server.models_dir / "refany3d" / "tr_refused").exists()
    still_serving(server)


def test_tr_release_layout_paths_leaving_the_dataset_folder_are_refused(private):
    """meta_data.json names files relative to its folder: '..' and absolute paths are refused by entry."""
    from tools.training_fixtures import write_meta, write_release_dataset
    server = private
    root = server.input_dir / "tr_release"
    entries = write_release_dataset(root, samples=(("mug", "box"),), width=32, height=32, video_size=16)
    outside = server.base_dir / "tr_outside.png"
    outside.write_bytes((root / entries[0]["image"]).read_bytes())
    for bad in ("../../tr_outside.png", str(outside), "samples/../../tr_outside.png"):
        write_meta(root, [{**entries[0], "image": bad}])
        message = tr_failure(server, tr_graph(server, "tr_refused", "release layout", "tr_release"),
                             "RefAny3DTrainingDataset")
        assert "entry 0" in message and ("leaves the dataset folder" in message or "absolute path" in message), message
    write_meta(root, entries)
    still_serving(server)


def test_tr_a_run_on_a_linked_dataset_then_adapters_are_never_replaced_unasked(private):
    """A dataset folder linked into input/ trains (links inside are followed); what it wrote follows the
    umask; a new run or Save Adapter into a folder holding an adapter is refused with nothing changed, and
    'overwrite' replaces the whole adapter (no stale domain_embedder.pth beside the new files)."""
    from model_patches import load_adapter
    from tools.release_files import save_release_files
    from tools.training_fixtures import write_folder_dataset
    server = private
    outside = server.base_dir / "tr_studio_datasets" / "chairs"
    write_folder_dataset(outside, samples=(("mug", "box"), ("lamp", "low_poly")), width=32, height=32)
    _os.symlink(outside, server.input_dir / "tr_linked", target_is_directory=True)
    result = server.run(tr_graph(server, "tr_run", "sample folders", "tr_linked"), timeout=900)
    assert result.status == "success", result.error_text()
    run = server.models_dir / "refany3d" / "tr_run"
    assert sorted(p.name for p in (run / "training_state").iterdir()) == ["state-00000001", "state-00000002"]
    encodings = server.output_dir / "refany3d_encoded"
    checked = tr_modes_follow_the_umask(run, encodings)
    assert checked >= 12
    if tr_umask() == 0o022:  # the usual case: another user of the machine can read what the pack wrote
        assert (run / "default.safetensors").stat().st_mode & 0o777 == 0o644
        assert (run / "training_state").stat().st_mode & 0o777 == 0o755

    # a new run of that name, with its state removed: the adapter there is not replaced unasked
    import shutil
    shutil.rmtree(run / "training_state")
    before = tr_files(run)
    message = tr_failure(server, tr_graph(server, "tr_run", "sample folders", "tr_linked", steps=3), "RefAny3DTrain")
    assert "already holds an adapter" in message and "'overwrite'" in message, message
    assert tr_files(run) == before

    # Save Adapter: refused, then replaced as a whole with overwrite on
    release = server.models_dir / "refany3d" / "tr_release_src"
    save_release_files(release, 64, 1, 1, rank=2, seed=5)

    def save_graph(name, write_pth, overwrite, source="tr_release_src"):
        return {"load": {"class_type": "RefAny3DLoadAdapter",
                         "inputs": {"reference_lora": f"{source}/default.safetensors",
                                    "domain_lora": f"{source}/coord.safetensors",
                                    "domain_embedder": f"{source}/domain_embedder.pth"}},
                "save": {"class_type": "RefAny3DSaveAdapter",
                         "inputs": {"adapter": ["load", 0], "name": name, "dtype": "fp32", "write_pth": write_pth,
                                    "overwrite": overwrite}}}
    saved = server.models_dir / "refany3d" / "tr_saved"
    assert server.run(save_graph("tr_saved", True, False), timeout=300).status == "success"
    assert sorted(tr_files(saved)) == ["coord.safetensors", "default.safetensors", "domain_embedder.pth",
                                       "domain_embedder.safetensors"]
    tr_modes_follow_the_umask(saved)
    before = tr_files(run)
    message = tr_failure(server, save_graph("tr_run", False, False), "RefAny3DSaveAdapter")
    assert "models/refany3d/tr_run/ already holds an adapter" in message and "nothing was written" in message
    assert tr_files(run) == before
    release = server.models_dir / "refany3d" / "tr_release_src2"
    save_release_files(release, 64, 1, 1, rank=2, seed=6)  # another adapter, saved over tr_saved without .pth
    assert server.run(save_graph("tr_saved", False, True, "tr_release_src2"), timeout=300).status == "success"
    assert sorted(tr_files(saved)) == ["coord.safetensors", "default.safetensors", "domain_embedder.safetensors"]
    adapter = load_adapter(saved / "default.safetensors", saved / "coord.safetensors",
                           saved / "domain_embedder.safetensors")
    want = load_adapter(release / "default.safetensors", release / "coord.safetensors",
                        release / "domain_embedder.pth")
    for role in ("reference", "domain"):
        for key, (down, up) in want.loras[role].items():
            assert torch.equal(adapter.loras[role][key][0].float(), down.float())
            assert torch.equal(adapter.loras[role][key][1].float(), up.float())

    # Train into a folder holding an adapter and no state: refused; with overwrite on it trains
    before = tr_files(saved)
    message = tr_failure(server, tr_graph(server, "tr_saved", "sample folders", "tr_linked"), "RefAny3DTrain")
    assert "already holds an adapter" in message
    assert tr_files(saved) == before
    result = server.run(tr_graph(server, "tr_saved", "sample folders", "tr_linked", steps=1, overwrite=True),
                        timeout=900)
    assert result.status == "success", result.error_text()
    assert tr_files(saved) != before and sorted(p.name for p in saved.iterdir() if p.is_file()) == [
        "coord.safetensors", "default.safetensors", "domain_embedder.safetensors"]
    still_serving(server)


import torch  # noqa: E402


def tr_order(seed: int, n: int) -> list[int]:
    """The data order of the first epoch (docs/method.md §6: a permutation keyed on the seed)."""
    order = list(range(n))
    _random.Random(f"refany3d-order:{seed}:0").shuffle(order)
    return order


def tr_poison(encoding: Path, sample: int, value: float) -> None:
    """One value of one sample's photo latent set to ``value`` in place (sizes and header unchanged)."""
    import safetensors.torch
    for shard in sorted(encoding.glob("shard-*.safetensors")):
        tensors = safetensors.torch.load_file(str(shard))
        key = f"{sample:06d}.x0_rgb"
        if key in tensors:
            size = shard.stat().st_size
            tensors[key].view(-1)[0] = value
            safetensors.torch.save_file(tensors, str(shard), metadata={"format": "refany3d-encoded-dataset"})
            assert shard.stat().st_size == size
            return
    raise AssertionError(f"no sample {sample} in {encoding}")


@pytest.mark.parametrize("value, words", [(1e30, "(not a finite number)"),
                                          (float("nan"), "holds non-finite values (NaN or infinity)")])
def test_tr_a_non_finite_step_stops_the_run_and_keeps_the_last_good_state(private, value, words):
    """Must-show 2: a value in the encoded data that makes step k non-finite (a huge latent: an infinite loss;
    a NaN: caught when the sample is read). The run stops at k, nothing of step k is written, the states and
    release files from before k load, and the message names the step and the state to resume from."""
    from model_patches import load_adapter
    from training import load_state
    server = private
    k, name = 3, f"tr_nan_{'inf' if value == 1e30 else 'nan'}"
    graph = tr_graph(server, name, steps=1, save_every=1)
    result = server.run(graph, timeout=900)  # encodes the synthetic set (re-used below) and trains step 1
    assert result.status == "success", result.error_text()
    encoding = tr_encoding(server)
    tr_poison(encoding, tr_order(0, 3)[k - 1], value)
    try:
        message = tr_failure(server, tr_graph(server, name, steps=6, save_every=1, resume=True), "RefAny3DTrain")
    finally:
        import shutil
        shutil.rmtree(encoding)  # the next run encodes it again
    state = f"models/refany3d/{name}/training_state/state-{k - 1:08d}"
    assert f"training stopped at step {k}: " in message and words in message, message
    assert f"Nothing of step {k} was saved" in message and f"the last good state is {state} (step {k - 1})" in message
    run = server.models_dir / "refany3d" / name
    states = sorted(p.name for p in (run / "training_state").iterdir())
    assert states == [f"state-{s:08d}" for s in range(1, k)], states
    last = load_state(run / "training_state")
    assert last["step"] == k - 1 and all(np.isfinite(last["losses"]))
    assert all(bool(torch.isfinite(v).all()) for v in last["adapter"].values())
    adapter = load_adapter(run / "default.safetensors", run / "coord.safetensors", run / "domain_embedder.safetensors")
    for role in ("reference", "domain"):
        assert all(bool(torch.isfinite(up).all()) for _, up in adapter.loras[role].values())
    still_serving(server)


def test_tr_tampered_resume_states_and_a_truncated_shard(private):
    """A resume state with step -1000, a step its folder contradicts, a NaN learning rate or a wrong shape is
    refused by field with nothing written; a truncated shard makes Encode Training Data encode again rather
    than hand back the damaged folder, and the resumed run goes on."""
    import json as _json
    import shutil

    import safetensors.torch
    server = private
    name = "tr_resume"
    result = server.run(tr_graph(server, name, steps=2, save_every=1), timeout=900)
    assert result.status == "success", result.error_text()
    states = server.models_dir / "refany3d" / name / "training_state"
    latest = states / "state-00000002"
    originals = {f: (latest / f).read_bytes() for f in ("state.json", "tensors.safetensors")}
    meta = _json.loads(originals["state.json"])
    tensors = safetensors.torch.load_file(str(latest / "tensors.safetensors"))
    lora = next(k for k in tensors if k.startswith("adapter.lora_A"))
    cases = [({"step": -1000}, None, "'step' must be a whole number ≥ 0, got -1000"),
             ({"step": 7}, None, "'step' is 7 but the folder is state-00000002"),
             ({"losses": [0.5]}, None, "'losses' must hold one finite number per step (2)"),
             ({"optimizer": {**meta["optimizer"], "param_groups": [
                 {**meta["optimizer"]["param_groups"][0], "lr": float("nan")}]}}, None,
              "the optimizer's learning rate (param group 0) must be a finite number ≥ 0, got nan"),
             ({}, {lora: tensors[lora][:1].clone()}, "rank 1"),
             # same width, rank and depth: the two sides are told apart by the first tensor that differs
             ({}, {lora + "_extra": tensors[lora].clone()}, f"the state is from {lora[len('adapter.'):]}_extra of shape"),
             ({}, {lora: torch.full_like(tensors[lora], float("nan"))}, "holds non-finite values (NaN or infinity)")]
    good = tr_files(states.parent)
    for fields, swap, words in cases:
        (latest / "state.json").write_text(_json.dumps({**meta, **fields}))
        safetensors.torch.save_file({**tensors, **(swap or {})}, str(latest / "tensors.safetensors"))
        message = tr_failure(server, tr_graph(server, name, steps=4, resume=True), "RefAny3DTrain")
        assert words in message and "state-00000002" in message, (fields, message)
        assert sorted(p.name for p in states.iterdir()) == ["state-00000001", "state-00000002"]
    for f, data in originals.items():
        (latest / f).write_bytes(data)
    assert tr_files(states.parent) == good

    # a truncated shard: the encoding is made again, and the resumed run trains on it
    encoding = tr_encoding(server)
    shard = sorted(encoding.glob("shard-*.safetensors"))[0]
    shard.write_bytes(shard.read_bytes()[:-100])
    result = server.run(tr_graph(server, name, steps=3, resume=True), timeout=900)
    assert result.status == "success", result.error_text()
    assert any("samples encoded in" in t for t in result.node_texts("encode")), result.node_texts("encode")
    assert sorted(p.name for p in states.iterdir())[-1] == "state-00000003"
    shutil.rmtree(encoding)
    still_serving(server)


def tr_png_header(path: Path, width: int, height: int, colour_type: int) -> None:
    """A PNG whose header (IHDR, PNG spec §11.2.2) says width × height, with a token IDAT: what Pillow reads
    when it opens a file, without the gigabytes a real 80-Mpx picture would cost the test."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    ihdr = struct.pack(">IIBBBBB", width, height, 8, colour_type, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
                     + chunk(b"IEND", b""))


def test_tr_an_80_mpx_photo_and_nul_in_names_are_refused_by_name(private):
    """An 80-Mpx photo is refused from its header, before anything is decoded (it took a server from 1.1 GB to
    7.5 GB); a NUL in a run name or a dataset folder is named as such, not a bare 'embedded null byte'."""
    from tools.comfy_http import PromptRejected
    from tools.training_fixtures import write_folder_dataset
    server = private
    root = write_folder_dataset(server.input_dir / "tr_huge", samples=(("mug", "box"),), width=32, height=32)
    tr_png_header(root / "mug" / "photo.png", 10000, 8000, 2)
    tr_png_header(root / "mug" / "point_map.png", 10000, 8000, 6)
    message = tr_failure(server, tr_graph(server, "tr_huge", "sample folders", "tr_huge"), "RefAny3DTrainingDataset")
    assert "photo.png is 10000x8000 (80 Mpx); at most 40 Mpx are read" in message, message
    with pytest.raises(PromptRejected, match="contains a NUL character"):  # Save Adapter shares the check
        server.submit(tr_graph(server, "tr\x00run"))
    message = tr_failure(server, tr_graph(server, "tr_nul", "sample folders", "tr_huge\x00"), "RefAny3DTrainingDataset")
    assert "contains a NUL character" in message and "embedded null byte" not in message
    still_serving(server)


# ============================================================================ client against a hostile server: exit codes, nothing half-written
#
# The real client (tools/client.py, a subprocess) against a small server in this process that answers as
# a broken proxy or a hostile server would: garbage instead of JSON, a /ws that answers 404, a /ws or a
# download closed half-way, outputs named with a path or '..', outputs named like the user's own files.
# Each ends with its documented exit code and one line, no traceback, and nothing half-written in --out.

import base64  # noqa: E402
import hashlib  # noqa: E402
import threading  # noqa: E402
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer  # noqa: E402

WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"  # RFC 6455 §1.3


class HostileHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    mode, outputs = "garbage", []

    def log_message(self, *args):
        pass

    def answer(self, body: bytes, status: int = 200) -> None:
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        if self.path.startswith("/object_info"):
            return self.answer(b"<html>502 bad gateway</html>" if self.mode == "garbage" else b"{}")
        if self.path.startswith("/ws"):
            return self.websocket()
        if self.path.startswith("/history"):
            entry = {"status": {"completed": True, "status_str": "success", "messages": []},
                     "outputs": {"9": {"images": [{"filename": n, "subfolder": "", "type": "output"}
                                                  for n in self.outputs]}}}
            return self.answer(json.dumps({"p1": entry}).encode())
        if self.path.startswith("/view"):
            if self.mode == "cut":  # promises 100 kB, sends 10 bytes, hangs up
                self.send_response(200)
                self.send_header("Content-Length", "100000")
                self.end_headers()
                self.wfile.write(b"0123456789")
                self.wfile.flush()
                self.close_connection = True
                return None
            return self.answer(b"written by the server: " + self.path.encode())
        return self.answer(b"{}")

    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        if self.path == "/prompt":
            return self.answer(json.dumps({"prompt_id": "p1", "number": 0, "node_errors": {}}).encode())
        return self.answer(b"{}")

    def websocket(self):
        if self.mode == "ws404":
            return self.answer(b"Not Found", 404)
        accept = base64.b64encode(hashlib.sha1((self.headers["Sec-WebSocket-Key"] + WS_GUID).encode()).digest())
        self.send_response(101)
        self.send_header("Upgrade", "websocket")
        self.send_header("Connection", "Upgrade")
        self.send_header("Sec-WebSocket-Accept", accept.decode())
        self.end_headers()
        self.close_connection = True
        if self.mode == "wsclose":
            return None  # the stream ends before the run does
        msg = json.dumps({"type": "execution_success", "data": {"prompt_id": "p1"}}).encode()
        self.wfile.write(bytes([0x81, len(msg)]) + msg)  # one unmasked text frame (RFC 6455 §5.2)
        self.wfile.flush()
        try:
            self.rfile.read(2)  # until the client closes
        except OSError:
            pass
        return None


@pytest.fixture
def hostile(tmp_path):
    server = ThreadingHTTPServer(("127.0.0.1", free_port()), HostileHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    workflow = tmp_path / "save.json"
    workflow.write_text(json.dumps({
        "1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0}},
        "9": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "RefAny3D/image"}}}))
    yield f"http://127.0.0.1:{server.server_address[1]}", workflow
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize("mode, outputs, words", [
    ("garbage", [], "answered GET /object_info with '<html>502 bad gateway</html>'"),
    ("ws404", [], "did not open its /ws websocket"),
    ("wsclose", [], "closed the /ws stream while prompt p1 was queued or running"),
    ("cut", ["image_00001_.png"], "broke off its answer to GET /view"),
    ("ok", ["image_00001_.png", ".."], "the server named an output '..'"),
    ("ok", ["image_00001_.png", "../escape.png"], "the server named an output '../escape.png'"),
    ("ok", ["image_00001_.png", "sub\\\\x.png"], "not a plain file name"),
])
def test_hc_network_failures_are_exit_3_with_one_line_and_nothing_written(hostile, tmp_path, mode, outputs, words):
    url, workflow = hostile
    HostileHandler.mode, HostileHandler.outputs = mode, outputs
    out = tmp_path / "out"
    proc = run_client("--server", url, "--workflow", workflow, "--out", out, "--quiet", timeout=120)
    assert proc.returncode == 3, (proc.returncode, proc.stderr)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and words in errors[0], proc.stderr
    assert "Traceback" not in proc.stderr
    assert not out.exists() or not list(out.iterdir())
    assert not (tmp_path / "escape.png").exists()


def test_hc_overwrite_replaces_only_the_workflows_own_names(hostile, tmp_path):
    """--overwrite lets the workflow's own outputs replace files of the same name; a name the server chose
    otherwise (here the user's notes.txt) is never replaced: the new file is kept beside it."""
    url, workflow = hostile
    HostileHandler.mode, HostileHandler.outputs = "ok", ["image_00001_.png", "notes.txt", "image_00001_.png"]
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    (out / "image_00001_.png").write_text("an older run")
    proc = run_client("--server", url, "--workflow", workflow, "--out", out, "--quiet", "--overwrite", timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert (out / "notes.txt").read_text() == "mine"
    assert (out / "notes-1.txt").read_text().startswith("written by the server")
    assert (out / "image_00001_.png").read_text().startswith("written by the server")
    assert (out / "image_00001_-1.png").read_text().startswith("written by the server")  # not over its own twin
    assert sorted(p.name for p in out.iterdir()) == ["image_00001_-1.png", "image_00001_.png", "notes-1.txt",
                                                     "notes.txt"]


# ============================================================================ Read Pose: masks per picture, OpenCV failures
#
# RefAny3D Read Pose took one mask for a batch of point maps without a word (that mask is right for one
# picture at most), and a point map it could not solve ended in a raw OpenCV assertion.

def _pose_graph(asset: str, pose_asset: str, point_map, mask, views: int = 3) -> dict:
    return {"asset": {"class_type": "RefAny3DLoadAsset", "inputs": {"asset_file": asset}},
            "other": {"class_type": "RefAny3DLoadAsset", "inputs": {"asset_file": pose_asset}},
            "render": {"class_type": "RefAny3DRenderViews",
                       "inputs": {"asset": ["asset", 0], "num_views": views, "preset": "even", "resolution": 64,
                                  "pitch": 20.0, "y_rotation": 0.0, "radius": 4.0, "fov": 45.0}},
            "solid": {"class_type": "SolidMask", "inputs": {"value": 1.0, "width": 64, "height": 64}},
            "grey": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 1,
                                                            "color": 0x808080}},
            "pose": {"class_type": "RefAny3DReadPose",
                     "inputs": {"point_map": point_map, "mask": mask, "asset": ["other", 0], "y_rotation": 0.0}},
            "preview": {"class_type": "PreviewImage", "inputs": {"images": ["pose", 5]}}}


@pytest.fixture(scope="module")
def pose_files(private):
    from tools.assets_gen import flat_card
    from tools.demo_asset import write_demo_asset
    folder = private.input_dir / "3d"
    write_demo_asset(folder / "pose_box.glb")
    v, f, _ = flat_card()
    write_glb(folder / "pose_card.glb", [GltfPart(v, f, factor=(0.8, 0.1, 0.1, 1.0))])
    return "3d/pose_box.glb", "3d/pose_card.glb"


def _pose_failed(server, graph, *words) -> str:
    result = server.run(graph, timeout=300)
    assert result.status == "error" and result.error["node_type"] == "RefAny3DReadPose", result.error_text()
    message = result.error["exception_message"]
    for word in words:
        assert word in message, message
    assert "OpenCV(" not in message and "cv::" not in message and "Traceback" not in message, message
    return message


def test_read_pose_refuses_one_mask_for_three_point_maps(private, pose_files):
    box_, _ = pose_files
    _pose_failed(private, _pose_graph(box_, box_, ["render", 1], ["solid", 0]),
                 "1 mask(s) for 3 point map(s)", "one mask per point map")
    graph = _pose_graph(box_, box_, ["render", 1], ["render", 2])  # the right batch still reads
    graph["pose"]["inputs"]["photo"] = ["grey", 0]  # one photo for three point maps: refused as well
    _pose_failed(private, graph, "photo is (1, 64, 64)", "one per point map")
    del graph["pose"]["inputs"]["photo"]
    result = private.run(graph, timeout=300)
    assert result.status == "success", result.error_text()
    assert len(result.outputs["pose"]["refany3d_pose"]) == 3
    still_serving(private)


def test_read_pose_failures_inside_opencv_are_the_packs_message(private, pose_files):
    """A point map whose points all decode to one spot (a flat grey picture) made OpenCV's SQPnP assert;
    reading the box's point maps against another, flat asset did too. Now: the pack's message, or a
    read, never OpenCV's text."""
    box_, card = pose_files
    _pose_failed(private, _pose_graph(box_, box_, ["grey", 0], ["solid", 0], views=1),
                 "is it a point map of this asset")
    result = private.run(_pose_graph(box_, card, ["render", 1], ["render", 2]), timeout=300)
    if result.status == "success":  # a box's face is a card: any score, but a read
        assert all(p is None or 0.0 <= p["scores"]["score"] <= 1.0 for p in result.outputs["pose"]["refany3d_pose"])
    else:
        message = result.error["exception_message"]
        assert "is it a point map of this asset" in message and "OpenCV(" not in message, message
    still_serving(private)


# ============================================================================ target camera and Best Of: cameras and wiring
#
# A camera the pack cannot honour (an orthographic viewer camera, one looking away from the asset), a
# sort by distance with no target and Best Of's other wiring mistakes: each refused by name (the wiring
# ones as the node's input errors, NodeInputError).

def _failed(server, graph, node_type, *words, exception: str | None = None) -> None:
    result = server.run(graph, timeout=300)
    assert result.status == "error" and result.error["node_type"] == node_type, result.error_text()
    if exception is not None:
        assert result.error["exception_type"].endswith(exception), result.error_text()
    for word in words:
        assert word in result.error["exception_message"], result.error["exception_message"]


def test_best_of_wiring_mistakes_are_the_nodes_input_errors(private, pose_files):
    """RefAny3D Best Of with no scores to rank by, with point maps of another batch, or sorted by distance
    with no target: each a NodeInputError (the node's input, not the asset's) naming what to connect."""
    box_, _ = pose_files
    camera = {"asset": ["asset", 0], "width": 64, "height": 64, "yaw": 30.0, "pitch": 15.0, "fov": 45.0, "fill": 0.6,
              "x": 0.0, "y": 0.0, "y_rotation": 0.0, "viewer_frame": "fitted"}
    graph = {"asset": {"class_type": "RefAny3DLoadAsset", "inputs": {"asset_file": box_}},
             "target": {"class_type": "RefAny3DTargetCamera", "inputs": camera},
             "twice": {"class_type": "RepeatImageBatch", "inputs": {"image": ["target", 2], "amount": 2}},
             "best": {"class_type": "RefAny3DBestOf",
                      "inputs": {"images": ["target", 4], "point_maps": ["target", 2], "masks": ["target", 3],
                                 "top_k": 1, "sort_by": "score"}},
             "preview": {"class_type": "PreviewImage", "inputs": {"images": ["best", 0]}}}
    _failed(private, graph, "RefAny3DBestOf", "needs the scores", "connect the pose output", exception="NodeInputError")
    graph["best"]["inputs"] |= {"asset": ["asset", 0], "point_maps": ["twice", 0]}
    _failed(private, graph, "RefAny3DBestOf", "1 images but 2 point maps", exception="NodeInputError")
    graph["best"]["inputs"] |= {"point_maps": ["target", 2], "sort_by": "distance to target"}
    _failed(private, graph, "RefAny3DBestOf", "needs the target input", exception="NodeInputError")
    still_serving(private)


def test_target_camera_refuses_what_it_cannot_honour(private, pose_files, tmp_path):
    from PIL import Image
    box_, _ = pose_files
    Image.new("RGB", (8, 8)).save(tmp_path / "capture.png")
    shot = private.upload(tmp_path / "capture.png", subfolder="")
    camera = {"position": {"x": 5, "y": 5, "z": 5}, "target": {"x": 0, "y": 1, "z": 0}, "zoom": 1,
              "cameraType": "orthographic"}
    numbers = {"asset": ["asset", 0], "width": 64, "height": 64, "yaw": 0.0, "pitch": 0.0, "fov": 45.0, "fill": 0.6,
               "x": 0.0, "y": 0.0, "y_rotation": 0.0, "viewer_frame": "fitted"}

    def graph(info, **extra):
        widget = {"image": shot, "mask": shot, "normal": shot, "recording": "", "camera_info": info}
        return {"asset": {"class_type": "RefAny3DLoadAsset", "inputs": {"asset_file": box_}},
                "load3d": {"class_type": "Load3D", "inputs": {"model_file": box_, "image": widget, "width": 8,
                                                              "height": 8}},
                "target": {"class_type": "RefAny3DTargetCamera",
                           "inputs": numbers | {"camera_info": ["load3d", 4]} | extra},
                "preview": {"class_type": "PreviewImage", "inputs": {"images": ["target", 2]}}}
    _failed(private, graph(camera), "RefAny3DTargetCamera", "only a perspective camera")
    away = dict(camera, cameraType="perspective", target={"x": 10, "y": 10, "z": 10})  # looking away
    _failed(private, graph(away), "RefAny3DTargetCamera", "not in the picture at this camera")
    best = graph(dict(away, target={"x": 0, "y": 1, "z": 0}))
    best["best"] = {"class_type": "RefAny3DBestOf",
                    "inputs": {"images": ["target", 4], "point_maps": ["target", 2], "masks": ["target", 3],
                               "top_k": 1, "asset": ["asset", 0], "sort_by": "distance to target"}}
    best["preview"]["inputs"]["images"] = ["best", 0]
    _failed(private, best, "RefAny3DBestOf", "needs the target input")
    still_serving(private)


def test_hold_point_map_refuses_what_it_cannot_hold(private, wl_setup):
    """RefAny3D Hold Point Map on the tiny Flux: a latent that is not a joined one, a target point map of
    another size, more point maps than pictures, a strength outside 0..1: each refused by name."""
    sub, asset = wl_setup

    def graph(width=WL_SIZE, latent=None, strength=0.3, point_map=("target", 2)):
        g = wl_graph(sub, asset, latent=("hold", 1), sampler_model=("hold", 0))
        g["target"] = {"class_type": "RefAny3DTargetCamera",
                       "inputs": {"asset": ["asset", 0], "width": width, "height": WL_SIZE, "yaw": 30.0, "pitch": 15.0,
                                  "fov": 45.0, "fill": 0.6, "x": 0.0, "y": 0.0, "y_rotation": 0.0,
                                  "viewer_frame": "fitted"}}
        g["hold"] = {"class_type": "RefAny3DHoldPointMap",
                     "inputs": {"model": ["apply", 0], "vae": ["vae", 0], "samples": list(latent or ("latent", 0)),
                                "point_map": list(point_map), "strength": strength}}
        return g

    message = wl_failing(private, graph(width=2 * WL_SIZE), "RefAny3DHoldPointMap")
    assert "the size of ONE generated picture" in message and "encodes to" in message, message
    plain = graph(latent=("plain", 0))
    plain["plain"] = {"class_type": "EmptyLatentImage", "inputs": {"width": 72, "height": WL_SIZE, "batch_size": 1}}
    assert "must be a joined latent" in wl_failing(private, plain, "RefAny3DHoldPointMap")  # odd width: no halves
    plain["plain"]["inputs"]["width"] = 2 * WL_SIZE  # two halves, but a 4-channel latent: not the FLUX VAE's
    assert "point-map half of the latent is (4," in wl_failing(private, plain, "RefAny3DHoldPointMap")
    two = graph(point_map=("two", 0))
    two["two"] = {"class_type": "ImageBatch", "inputs": {"image1": ["target", 2], "image2": ["target", 2]}}
    two["latent"]["inputs"]["batch_size"] = 3
    assert "2 point maps for a batch of 3" in wl_failing(private, two, "RefAny3DHoldPointMap")
    for strength in (1.5, -0.1):
        errors = wl_rejected(private, graph(strength=strength))
        assert [name for name, _ in errors["hold"]] == ["strength"], errors
    nan = graph(strength=float("nan"))  # JSON NaN passes the server's min/max check: the node refuses it
    result = private.run(nan, timeout=600)
    assert result.status == "error" and result.error["node_type"] == "RefAny3DHoldPointMap", result.error_text()
    assert "strength must be between 0 and 1, got nan" in result.error["exception_message"]
    still_serving(private)

"""The 'choose the camera' example (issue 19) through the real server with the tiny random Flux of the
wiring check: core Load 3D's camera → RefAny3D Target Camera → Hold Point Map → KSampler keeps the
point-map half of the latent where it is held; Read Pose's camera_info reaches core Preview 3D; the
headless client's camera flags reach the nodes; the adherence script runs end to end.

The tiny random model cannot generate a readable point map, so where a read camera is needed Read Pose
reads the target's own point map (what a model that follows the hold exactly would give back).
"""
from __future__ import annotations

import json
import math
import re
import subprocess
import sys

import pytest
import torch
from tools.demo import provide_tiny_models, wiring_graph
from tools.demo_asset import ASSET_NAME, write_demo_asset

from conftest import ROOT

API = ROOT / "example_workflows" / "api" / "refany3d_camera_control.json"
CAMERA = dict(yaw=-120.0, pitch=25.0, fov=38.0, fill=0.7, x=0.1, y=-0.1)


def example(steps=2) -> dict:
    return wiring_graph(json.loads(API.read_text()), steps=steps, views=1)


def node_of(graph: dict, class_type: str) -> str:
    (node_id,) = [i for i, n in graph.items() if n["class_type"] == class_type]
    return node_id


def read_the_target(graph: dict) -> None:
    """Read Pose reads the target's point map and mask (see the module's note)."""
    target, pose = node_of(graph, "RefAny3DTargetCamera"), node_of(graph, "RefAny3DReadPose")
    graph[pose]["inputs"].update(point_map=[target, 2], mask=[target, 3])


@pytest.fixture(scope="module")
def served(comfy):
    provide_tiny_models(comfy.models_dir)
    if not (comfy.input_dir / ASSET_NAME).exists():
        write_demo_asset(comfy.input_dir / ASSET_NAME)
    return comfy


def test_load3d_camera_is_held_through_sampling_and_shown_by_preview3d(served, tmp_path):
    """Must show 3: core Load 3D holding a viewer camera → Target Camera from its camera_info → Hold Point Map
    (every step) → KSampler: the point-map half of the sampled latent equals the held latent; the picture half
    was sampled; Read Pose reports the distance to the target; core Preview 3D takes Read Pose's camera_info."""
    from PIL import Image
    from safetensors.torch import load_file

    import rendering
    from rendering.camera import target_camera
    from rendering.viewer import camera_to_load3d

    g = example()
    target, hold, ks, pose = (node_of(g, c) for c in ("RefAny3DTargetCamera", "RefAny3DHoldPointMap", "KSampler",
                                                      "RefAny3DReadPose"))
    Image.new("RGB", (16, 16), (200, 200, 200)).save(tmp_path / "viewer_shot.png")
    shot = served.upload(tmp_path / "viewer_shot.png", subfolder="")
    info = camera_to_load3d(target_camera(**CAMERA), rendering.load_asset(served.input_dir / ASSET_NAME), "fitted")
    info = {"position": info["position"], "target": info["target"], "zoom": 1, "cameraType": "perspective"}
    g["load3d"] = {"class_type": "Load3D", "inputs": {"model_file": ASSET_NAME, "width": 16, "height": 16, "image": {
        "image": shot, "mask": shot, "normal": shot, "recording": "", "camera_info": info}}}
    g[target]["inputs"].update(camera_info=["load3d", 4], fov=CAMERA["fov"])
    g[hold]["inputs"]["strength"] = 1.0
    read_the_target(g)
    g["preview3d"] = {"class_type": "Preview3D", "inputs": {"model_file": ASSET_NAME, "camera_info": [pose, 7]}}
    for name, (source, slot) in {"save_held": (hold, 1), "save_sampled": (ks, 0)}.items():
        g[name] = {"class_type": "SaveLatent", "inputs": {"samples": [source, slot], "filename_prefix": f"camera/{name}"}}
    result = served.run(g, timeout=600)
    assert result.status == "success", result.error_text()
    held, sampled = (load_file(served.output_files(result, n, "latents")[0])["latent_tensor"]
                     for n in ("save_held", "save_sampled"))
    half = held.shape[-1] // 2
    assert held[..., half:].abs().max() > 0  # the target's encoded point map is in the latent
    torch.testing.assert_close(sampled[..., half:], held[..., half:], atol=1e-4, rtol=1e-4)
    assert (sampled[..., :half] - held[..., :half]).abs().max() > 0.1  # the picture half was sampled
    (read,) = result.outputs[pose]["refany3d_pose"]
    assert read["target_distance"]["rotation_deg"] < 0.1 and abs(read["pack"]["fov_deg"] - CAMERA["fov"]) < 0.1
    shown = result.outputs["preview3d"]["result"]
    assert shown[0] == ASSET_NAME and shown[1]["cameraType"] == "perspective"
    assert abs(shown[1]["fov"] - CAMERA["fov"]) < 0.1 and set(shown[1]["position"]) == {"x", "y", "z"}


CLIENT = ROOT / "tools" / "client.py"
FLAGS = ("--camera-yaw", 150, "--camera-pitch", 35, "--camera-fov", 50, "--camera-fill", 0.8, "--camera-x", -0.2,
         "--camera-y", 0.1, "--hold-strength", 0.5)


def test_client_dry_run_fills_the_camera_flags():
    res = subprocess.run([sys.executable, str(CLIENT), "--dry-run", "--workflow", str(API), *map(str, FLAGS)],
                         capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert res.returncode == 0, res.stderr
    g = json.loads(res.stdout)
    cam = g[node_of(g, "RefAny3DTargetCamera")]["inputs"]
    assert (cam["yaw"], cam["pitch"], cam["fov"], cam["fill"], cam["x"], cam["y"]) == (150, 35, 50, 0.8, -0.2, 0.1)
    assert g[node_of(g, "RefAny3DHoldPointMap")]["inputs"]["strength"] == 0.5
    other = subprocess.run([sys.executable, str(CLIENT), "--dry-run", "--camera-yaw", "10"], capture_output=True,
                           text=True, timeout=120, cwd=ROOT)
    assert other.returncode == 2 and "--camera-yaw was given but the workflow has no node" in other.stderr


def test_client_runs_the_camera_example_with_its_flags(served, tmp_path):
    g = example(steps=1)
    read_the_target(g)
    workflow = tmp_path / "camera_wiring.json"
    workflow.write_text(json.dumps(g))
    res = subprocess.run([sys.executable, str(CLIENT), "--server", served.url, "--workflow", str(workflow),
                          "--asset", str(write_demo_asset(tmp_path / "camera_box.glb")), *map(str, FLAGS),
                          "--out", str(tmp_path / "out")], capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert res.returncode == 0, res.stderr
    prompt_id = re.search(r"queued prompt ([0-9a-f-]+)", res.stderr).group(1)
    ran = {n["class_type"]: n["inputs"] for n in served.history(prompt_id)["prompt"][2].values()}
    cam = ran["RefAny3DTargetCamera"]
    assert (cam["yaw"], cam["pitch"], cam["fov"], cam["fill"], cam["x"], cam["y"]) == (150, 35, 50, 0.8, -0.2, 0.1)
    assert ran["RefAny3DHoldPointMap"]["strength"] == 0.5
    (line,) = [s for s in res.stderr.splitlines() if s.startswith("read pose")]
    m = re.search(r"; ([0-9.]+)° and ([0-9.]+) % from the target camera", line)
    assert m and float(m.group(1)) < 0.1, line
    assert {p.name.split("_")[0] for p in (tmp_path / "out").iterdir()} >= {"image", "point", "mask", "overlay"}


def test_adherence_script_runs_end_to_end_with_the_tiny_models(served, tmp_path):
    out = tmp_path / "adherence.json"
    res = subprocess.run([sys.executable, "-m", "benchmarks.camera_adherence", "--server", served.url, "--tiny",
                          "--seeds", "0", "1", "--strengths", "0", "1", "--cameras", "0", "--json", str(out)],
                         capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert res.returncode == 0, res.stderr
    assert "TINY RANDOM MODELS" in res.stdout and res.stdout.count("| front, high |") == 2
    data = json.loads(out.read_text())
    assert [(p["strength"], p["seed"]) for p in data["pictures"]] == [(0.0, 0), (0.0, 1), (1.0, 0), (1.0, 1)]
    assert all(r["pictures"] == 2 for r in data["summary"])


def test_adherence_errors_from_read_pose_entries():
    """The script's arithmetic on Read Pose entries: focal error from the fields of view, medians, shares."""
    from benchmarks.camera_adherence import focal_error_pct, measure, summarise
    assert focal_error_pct(40.0, 40.0) == 0.0
    want = 100 * abs(math.tan(math.radians(20)) / math.tan(math.radians(22)) - 1)
    assert math.isclose(focal_error_pct(44.0, 40.0), want)
    entry = lambda rot: {"target_distance": {"rotation_deg": rot, "position_pct": 2.0, "fov_deg": 4.0},  # noqa: E731
                         "pack": {"fov_deg": 44.0}, "scores": {"score": 0.9}}
    reads = [measure(entry(r), 40.0) for r in (3.0, 8.0, 20.0)] + [measure(None, 40.0)]
    s = summarise(reads)
    assert (s["pictures"], s["unread"], s["rotation_deg"]) == (4, 1, 8.0)
    assert (s["within_5deg_pct"], s["within_10deg_pct"]) == (25.0, 50.0)
    assert math.isclose(s["focal_pct"], want)

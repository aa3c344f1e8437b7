"""How closely generated pictures follow a chosen camera (not a test): RefAny3D Target Camera → Hold Point
Map → sampling → Read Pose against the target, over target cameras × hold strengths × seeds.

Each run is the 'choose the camera' example (example_workflows/api/refany3d_camera_control.json) on a
running ComfyUI with the pack, FLUX.1-dev and the RefAny3D files (a GPU); only the camera, the strength and
the seed change. Per picture, the camera Read Pose reads from the generated point map is compared with
the target: rotation error (degrees), focal-length error (%), eye distance (% of the target's distance).
The table gives, per camera and strength, the median of each, the share of pictures within 5° and 10°,
and how many pictures had no readable camera.

    python -m benchmarks.camera_adherence --server 127.0.0.1:8188 --asset box.glb [--seeds 0 1 2 3]
        [--strengths 0 0.15 0.3 0.5 1] [--steps 28] [--json results.json]

--tiny runs the same loop with the tiny random models of the wiring check (tools/demo.py; they must be in
the server's models folders, e.g. put there by `make demo` or tools.demo.provide_tiny_models) at 64 px
and 1 step: it checks the script end to end on a CPU; its numbers mean nothing.
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import statistics
import sys
import tempfile
from pathlib import Path

from tools.client import collect, upload_bundle, upload_folder
from tools.comfy_http import ComfyClient, normalize_url
from tools.demo import FULL_WORKFLOW, wiring_graph
from tools.demo_asset import write_demo_asset

WORKFLOW = FULL_WORKFLOW.parent / "refany3d_camera_control.json"
#: (name, RefAny3D Target Camera numbers): sides, distances and framings an artist asks for
CAMERAS = (
    ("front, high", dict(yaw=0.0, pitch=30.0, fov=40.0, fill=0.6, x=0.0, y=0.0)),
    ("back-left, close", dict(yaw=150.0, pitch=15.0, fov=40.0, fill=0.9, x=0.0, y=0.0)),
    ("side, wide, off-centre", dict(yaw=-90.0, pitch=10.0, fov=60.0, fill=0.45, x=-0.3, y=0.1)),
    ("from above", dict(yaw=45.0, pitch=60.0, fov=35.0, fill=0.7, x=0.0, y=0.0)),
)


def nodes_of(graph: dict, class_type: str) -> list[str]:
    return [i for i, n in graph.items() if n["class_type"] == class_type]


def run_graph(base: dict, numbers: dict, strength: float, seed: int) -> dict:
    """The example with one camera, strength and seed; outputs under output/RefAny3D_camera_adherence/."""
    g = copy.deepcopy(base)
    for i in nodes_of(g, "RefAny3DTargetCamera"):
        g[i]["inputs"].update(numbers)
    for i in nodes_of(g, "RefAny3DHoldPointMap"):
        g[i]["inputs"]["strength"] = strength
    for i in nodes_of(g, "KSampler"):
        g[i]["inputs"]["seed"] = seed
    for node in g.values():
        prefix = node["inputs"].get("filename_prefix")
        if isinstance(prefix, str):
            node["inputs"]["filename_prefix"] = prefix.replace("RefAny3D_camera", "RefAny3D_camera_adherence", 1)
    return g


def focal_error_pct(read_fov: float, target_fov: float) -> float:
    """|f_read / f_target − 1| in %, focal lengths from vertical fields of view (f ∝ 1 / tan(fov / 2))."""
    return 100.0 * abs(math.tan(math.radians(target_fov) / 2) / math.tan(math.radians(read_fov) / 2) - 1.0)


def measure(pose: dict | None, target_fov: float) -> dict | None:
    """One picture's errors from Read Pose's entry (None: no camera could be read)."""
    if pose is None:
        return None
    d = pose["target_distance"]
    return {"rotation_deg": d["rotation_deg"], "position_pct": d["position_pct"],
            "focal_pct": focal_error_pct(pose["pack"]["fov_deg"], target_fov), "score": pose["scores"]["score"]}


def summarise(reads: list) -> dict:
    """Medians and shares over the pictures of one camera and strength; unread pictures counted apart."""
    ok = [r for r in reads if r is not None]
    med = (lambda key: statistics.median(r[key] for r in ok)) if ok else (lambda key: math.nan)
    share = (lambda deg: 100.0 * sum(r["rotation_deg"] < deg for r in ok) / len(reads)) if reads else (lambda deg: 0.0)
    return {"pictures": len(reads), "unread": len(reads) - len(ok), "rotation_deg": med("rotation_deg"),
            "focal_pct": med("focal_pct"), "position_pct": med("position_pct"), "within_5deg_pct": share(5.0),
            "within_10deg_pct": share(10.0)}


def table(rows: list[dict]) -> str:
    head = ("| camera | strength | pictures | unread | rotation err (median °) | within 5° | within 10° | "
            "focal err (median %) | eye distance (median %) |\n|---|---|---|---|---|---|---|---|---|")
    lines = [f"| {r['camera']} | {r['strength']:.2f} | {r['pictures']} | {r['unread']} | {r['rotation_deg']:.1f} | "
             f"{r['within_5deg_pct']:.0f} % | {r['within_10deg_pct']:.0f} % | {r['focal_pct']:.1f} | "
             f"{r['position_pct']:.1f} |" for r in rows]
    return "\n".join([head, *lines])


def one_picture(client: ComfyClient, graph: dict, timeout: float):
    """Read Pose's entry for the picture, None when its camera could not be read; other failures raise."""
    result = client.run(graph, timeout=timeout)
    if result.status == "error" and (result.error or {}).get("node_type") == "RefAny3DReadPose":
        return None
    if result.status != "success":
        raise RuntimeError(f"the run failed: {result.error_text()}")
    (node,) = nodes_of(graph, "RefAny3DReadPose")
    (pose,) = result.outputs[node]["refany3d_pose"]
    return pose


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--server", default="http://127.0.0.1:8188", help="ComfyUI with the pack (default %(default)s)")
    p.add_argument("--asset", type=Path, help="the 3D file (default: the demo box)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3])
    p.add_argument("--strengths", type=float, nargs="+", default=[0.0, 0.15, 0.3, 0.5, 1.0])
    p.add_argument("--cameras", type=int, nargs="+", help=f"indices into the {len(CAMERAS)} cameras (default all)")
    p.add_argument("--steps", type=int, default=28, help="sampling steps (release: 28)")
    p.add_argument("--timeout", type=float, default=1800.0, help="seconds per run")
    p.add_argument("--json", type=Path, help="also write every picture's errors here")
    p.add_argument("--tiny", action="store_true",
                   help="the tiny random models (wiring check): end to end on a CPU, meaningless numbers")
    args = p.parse_args(argv)
    client = ComfyClient(normalize_url(args.server))
    base = json.loads(WORKFLOW.read_text())
    if args.tiny:
        base = wiring_graph(base, steps=1, views=1)
    for i in nodes_of(base, "KSampler"):
        base[i]["inputs"]["steps"] = 1 if args.tiny else args.steps
    asset = args.asset or write_demo_asset(Path(tempfile.mkdtemp()) / "adherence_box.glb")
    bundle = collect(asset)
    name = upload_bundle(client, bundle, upload_folder(bundle))
    for i in nodes_of(base, "RefAny3DLoadAsset"):
        base[i]["inputs"]["asset_file"] = name
    cameras = [CAMERAS[k] for k in (args.cameras or range(len(CAMERAS)))]
    label = "TINY RANDOM MODELS: a wiring check, the numbers mean nothing" if args.tiny else "FLUX.1-dev + RefAny3D"
    print(f"camera adherence ({label}); {len(args.seeds)} seed(s), {args.steps if not args.tiny else 1} steps",
          file=sys.stderr)
    rows, pictures = [], []
    for cam_name, numbers in cameras:
        for strength in args.strengths:
            reads = []
            for seed in args.seeds:
                pose = one_picture(client, run_graph(base, numbers, strength, seed), args.timeout)
                reads.append(measure(pose, numbers["fov"]))
                pictures.append({"camera": cam_name, "target": numbers, "strength": strength, "seed": seed,
                                 "errors": reads[-1]})
                print(f"{cam_name}, strength {strength:.2f}, seed {seed}: "
                      + ("no camera read" if reads[-1] is None else
                         f"{reads[-1]['rotation_deg']:.1f}°, focal {reads[-1]['focal_pct']:.1f} %"), file=sys.stderr)
            rows.append({"camera": cam_name, "strength": strength} | summarise(reads))
    print(f"Camera adherence, {label}\n")
    print(table(rows))
    if args.json:
        args.json.write_text(json.dumps({"label": label, "summary": rows, "pictures": pictures}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

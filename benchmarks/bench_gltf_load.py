"""Benchmark of loading a glTF (not a test): a 500k-triangle textured GLB loaded and rendered as
8 views x 512^2, before (trimesh's glTF reader, the pack's earlier path) and after (the pack's
glTF 2.0 reader), side by side in one run. Each load + render runs in a fresh process, so its
peak resident memory (ru_maxrss) is its own; the two alternate, and the medians are printed.
Run: .legs/v0.31.0/venv/bin/python -m benchmarks.bench_gltf_load [--faces 500000] [--repeats 3]
"""
from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def write_asset(folder: Path, n_faces: int) -> Path:
    from tools.assets_gen import GltfPart, smooth_texture, sphere_with_faces, write_glb
    v, f, uv = sphere_with_faces(n_faces)
    return write_glb(folder / "big.glb", [GltfPart(v, f, uv=np.c_[uv[:, 0], 1 - uv[:, 1]],
                                                   texture=smooth_texture(1024), factor=(0.9, 0.8, 0.7, 1.0))])


def load_with_trimesh(path: Path):
    """The earlier path: trimesh's glTF reader, then the pack's per-node parts."""
    import trimesh

    from rendering.loading import combine_parts, scene_parts
    scene = trimesh.load_scene(str(path), process=False) if hasattr(trimesh, "load_scene") \
        else trimesh.load(str(path), force="scene", process=False)
    return combine_parts(list(scene_parts(scene, [])), path.name)


def run_one(path: Path, variant: str) -> dict:
    import rendering
    t0 = time.perf_counter()
    asset = load_with_trimesh(path) if variant == "trimesh" else rendering.load_asset(path)
    t1 = time.perf_counter()
    rendering.render_views(asset, num_views=8, resolution=512)
    t2 = time.perf_counter()
    return {"load_s": t1 - t0, "render_s": t2 - t1, "faces": asset.num_faces,
            "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--faces", type=int, default=500_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(run_one(Path(args.child[0]), args.child[1])))
        return
    root = Path(__file__).resolve().parents[1]
    with tempfile.TemporaryDirectory() as tmp:
        path = write_asset(Path(tmp), args.faces)
        print(f"{path.stat().st_size / 2**20:.1f} MiB GLB, {args.faces:,} faces requested, 1024² texture")
        results: dict[str, list[dict]] = {"trimesh": [], "pack": []}
        for _ in range(args.repeats):
            for variant in results:
                out = subprocess.run([sys.executable, "-m", "benchmarks.bench_gltf_load", "--child", str(path), variant],
                                     cwd=root, capture_output=True, text=True, check=True)
                results[variant].append(json.loads(out.stdout.strip().splitlines()[-1]))
    print(f"{'reader':<10}{'faces':>10}{'load s':>9}{'render s':>10}{'total s':>9}{'peak MiB':>10}")
    for variant, runs in results.items():
        med = {k: statistics.median(r[k] for r in runs) for k in ("load_s", "render_s", "peak_mib")}
        print(f"{variant:<10}{runs[0]['faces']:>10,}{med['load_s']:>9.2f}{med['render_s']:>10.2f}"
              f"{med['load_s'] + med['render_s']:>9.2f}{med['peak_mib']:>10.0f}")
    a, b = (statistics.median(r["load_s"] + r["render_s"] for r in results[k]) for k in ("pack", "trimesh"))
    print(f"load + render, pack / trimesh: {a / b:.2f}")


if __name__ == "__main__":
    main()

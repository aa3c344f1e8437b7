"""Benchmark of the camera read-out (not a test): time of one read_pose at 512² on the CPU, for a
point map rendered by the pack at a random camera, exact and with noise/outliers, median of N, and
how the time splits between the solve and the re-render used for the scores.

Run: .legs/v0.31.0/venv/bin/python -m benchmarks.bench_pose [--repeats 5]
"""
from __future__ import annotations

import argparse
import math
import statistics
import time

import numpy as np
import torch

import rendering
from rendering.camera import look_at
from rendering.pose import read_pose, render_at
from tools.assets_gen import GltfPart, box, smooth_texture, uv_sphere


def asset():
    from tools.assets_gen import write_glb
    import tempfile
    from pathlib import Path
    v, f, uv = uv_sphere(48, 96, radius=0.8)
    bv, bf, _ = box((0.5, 0.5, 0.5))
    path = Path(tempfile.mkdtemp()) / "bench.glb"
    write_glb(path, [GltfPart(v * [1.0, 0.7, 1.3], f, uv=np.c_[uv[:, 0], 1 - uv[:, 1]], texture=smooth_texture(64)),
                     GltfPart(bv, bf, factor=(0.1, 0.6, 0.2, 1.0), translation=(0.3, 0.9, 0.0))])
    return rendering.load_asset(path)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    a = asset()
    cam = look_at(torch.tensor([2.2, 1.1, 2.6], dtype=torch.float64), 40.0, target=(0.1, 0.0, -0.1))
    view = render_at(a, cam, 512, 512)
    pm, mask = view.point_map[0].numpy(), view.mask[0].numpy()
    rng = np.random.default_rng(0)
    noisy = np.clip(pm + rng.normal(0, 4 / 255, pm.shape), 0, 1)
    bad = (mask > 0.5) & (rng.random(mask.shape) < 0.1)
    noisy[bad] = rng.random((bad.sum(), 3))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; 512² point map, {int(mask.sum())} object "
          f"pixels, {a.num_faces} faces; median of {args.repeats}")
    for label, p in (("exact", pm), ("noise 4/255 + 10 % outliers", noisy)):
        times, renders = [], []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            r = read_pose(p, mask, a)
            times.append(time.perf_counter() - t0)
            t1 = time.perf_counter()
            render_at(a, r.camera, 512, 512)
            renders.append(time.perf_counter() - t1)
        err = math.degrees(math.acos(np.clip((np.trace(cam.rotation.numpy().T @ r.camera.rotation.numpy()) - 1) / 2,
                                             -1, 1)))
        print(f"{label:<28s} read_pose {statistics.median(times):.3f} s (of which the scoring re-render "
              f"≈ {statistics.median(renders):.3f} s); rotation error {err:.3f}°, score {r.score:.3f}")


if __name__ == "__main__":
    main()

"""Benchmark of the camera read-out (not a test): the read-out before issue 19 (benchmarks/pose_baseline.py)
and today's (rendering/pose.py) side by side in one run, on the same decoder-like point maps
(tools/pose_cases.py: soft silhouettes 1–3 px, colour noise 4/255, 10 % wrong pixels, objects covering
1–50 % of rectangular pictures; a sphere, a plate, a multi-part scene, a textured ellipsoid, a low-poly
solid), then on one 512² picture: time per read, split into the solve and the scoring re-render.

Accuracy table per read-out: rotation error < 2° (all), focal error < 5 % (objects covering ≥ 5 %),
reads with the asset behind the camera, the lowest score of a right-asset read (all, and those that
found the camera: rotation < 2°) and the highest of a wrong-asset read (each point map read against
the next asset of the list). Timing: wall time per 512² picture, the two read-outs alternating.

Run: .legs/v0.31.0/venv/bin/python -m benchmarks.bench_pose [--per-asset 10] [--repeats 5] [--threads N]
[--timing-only]
"""
from __future__ import annotations

import argparse
import math
import statistics
import tempfile
import time

import numpy as np
import torch

from benchmarks.pose_baseline import read_pose_baseline
from rendering.camera import look_at
from rendering.pose import read_pose, render_at
from tools.pose_cases import decoder_like, decoder_like_cases, pose_assets, rotation_error_deg

READERS = {"before": read_pose_baseline, "after": read_pose}


def accuracy(cases, assets) -> dict:
    names = list(assets)
    table = {}
    for label, read in READERS.items():
        rot, focal, behind, right, found, wrong, failed = [], [], 0, [], [], [], 0
        for c in cases:
            try:
                r = read(c.point_map, c.mask, assets[c.asset])
            except Exception:  # the baseline may end in a raw OpenCV assertion
                failed += 1
                rot.append(180.0)
                focal.append(math.inf) if c.coverage >= 0.05 else None
                right.append(0.0)
                continue
            f_true = (c.height / 2) / math.tan(math.radians(c.camera.fov) / 2)
            rot.append(rotation_error_deg(c.camera, r.camera))
            if c.coverage >= 0.05:
                focal.append(abs(r.focal_px - f_true) / f_true)
            behind += float(np.asarray(r.translation_cv)[2]) <= 0
            right.append(r.score)
            if rot[-1] < 2:
                found.append(r.score)
            other = assets[names[(names.index(c.asset) + 1) % len(names)]]
            try:
                wrong.append(read(c.point_map, c.mask, other).score)
            except Exception:
                wrong.append(0.0)
        table[label] = {"rotation < 2°": np.mean(np.array(rot) < 2), "focal < 5 % (≥ 5 % cover)":
                        np.mean(np.array(focal) < 0.05), "asset behind": behind, "failed": failed,
                        "min right score": min(right), "min right, found": min(found, default=0.0),
                        "max wrong score": max(wrong),
                        "median rotation °": float(np.median(rot))}
    return table


def timing(repeats: int, asset):
    """Per picture (512², exact and decoder-like): the median wall time of a read, before and after, the
    two read-outs alternating so that both see the same load; the scoring re-render timed apart."""
    cam = look_at(torch.tensor([2.2, 1.1, 2.6], dtype=torch.float64), 40.0, target=(0.1, 0.0, -0.1))
    view = render_at(asset, cam, 512, 512)
    pm, mask = decoder_like(np.random.default_rng(0), view.point_map[0].numpy(), view.mask[0].numpy())
    rows = []
    for label, p, m in (("exact", view.point_map[0].numpy(), view.mask[0].numpy()), ("decoder-like", pm, mask)):
        times, reads, render = {name: [] for name in READERS}, {}, []
        for _ in range(repeats):
            for name, read in READERS.items():
                t0 = time.perf_counter()
                reads[name] = read(p, m, asset)
                times[name].append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            render_at(asset, reads["after"].camera, 512, 512)
            render.append(time.perf_counter() - t0)
        before, after = (statistics.median(times[n]) for n in READERS)
        rerender = statistics.median(render)
        rows.append(f"{label:<13s} before {before:.3f} s, after {after:.3f} s (of which the scoring re-render "
                    f"{rerender:.3f} s): after/before {after / before:.2f}; rotation error before "
                    f"{rotation_error_deg(cam, reads['before'].camera):.3f}°, after "
                    f"{rotation_error_deg(cam, reads['after'].camera):.3f}°; score after {reads['after'].score:.3f}")
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--per-asset", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default); on a machine "
                    "shared with other work, 1 keeps the renderer's threads from waiting on each other")
    ap.add_argument("--timing-only", action="store_true", help="skip the accuracy table")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    assets = pose_assets(tempfile.mkdtemp())
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    if not args.timing_only:
        cases = decoder_like_cases(assets, args.per_asset)
        table = accuracy(cases, assets)
        print(f"{len(cases)} decoder-like point maps\n{'':28s}{'before':>12s}{'after':>12s}")
        for k in table["before"]:
            print(f"{k:28s}" + "".join(f"{table[s][k]:12.3f}" for s in ("before", "after")))
    print(f"timing on 512², median of {args.repeats}:")
    for row in timing(args.repeats, assets["textured"]):
        print(" ", row)


if __name__ == "__main__":
    main()

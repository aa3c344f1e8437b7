"""Benchmark of the pure-PyTorch reference renderer (not a test).

Prints the median time to render 8 views x 512^2 (RGB + point map + mask, release preset) of a
textured sphere with about 100k and 500k faces, and the ratio against an Embree ray caster
(trimesh + embreex) casting one ray per pixel centre of the same 8 views in the same run.
Where PyTorch3D loads, the "pytorch3d" backend is timed beside both: on the CPU only on small
meshes at 256^2 (PyTorch3D's CPU rasterizer is slow), on CUDA at every size.
Run: .legs/v0.31.0/venv/bin/python -m benchmarks.bench_render [--repeats 5] [--device cuda]
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

import rendering
from rendering.asset import Asset, Texture
from rendering.views import pixel_rays
from tools.assets_gen import smooth_texture, sphere_with_faces

VIEWS, RES = 8, 512


def textured_sphere(n_faces: int) -> Asset:
    v, f, uv = sphere_with_faces(n_faces)
    tex = torch.from_numpy(np.asarray(smooth_texture(256)).copy())
    vt = torch.tensor(v, dtype=torch.float32)
    return Asset(vt, torch.tensor(f), torch.full_like(vt, 0.5), uv=torch.tensor(uv, dtype=torch.float32),
                 face_texture=torch.zeros(len(f), dtype=torch.int64),
                 textures=[Texture(tex, torch.ones(3))], name=f"sphere{n_faces}")


def median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def embree_setup(asset: Asset, res: int = RES):
    import trimesh
    from trimesh.ray.ray_pyembree import RayMeshIntersector

    mesh = trimesh.Trimesh(asset.normalised_vertices().numpy(), asset.faces.numpy(), process=False)
    caster = RayMeshIntersector(mesh)
    rays = []
    for cam in rendering.orbit_cameras(VIEWS):
        d = torch.stack(pixel_rays(cam, torch.arange(res * res), res), -1).numpy()
        rays.append((np.repeat(cam.eye.numpy()[None], len(d), 0), d / np.linalg.norm(d, axis=1, keepdims=True)))
    return caster, rays


def embree_cast(caster, rays):
    for origins, dirs in rays:
        caster.intersects_id(origins, dirs, multiple_hits=False, return_locations=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--faces", type=int, nargs="*", default=[100_000, 500_000])
    args = ap.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {args.device}; "
          f"{VIEWS} views x {RES}^2, median of {args.repeats}")
    for n in args.faces:
        bench_one(textured_sphere(n), args.device, args.repeats)
    from rendering.pytorch3d_backend import pytorch3d_available
    if not pytorch3d_available():
        print("PyTorch3D does not load here: the 'pytorch3d' backend is not timed")
        return
    small = args.faces if args.device.startswith("cuda") else [1_280, 5_120]
    res = RES if args.device.startswith("cuda") else 256
    print(f"backends side by side, {VIEWS} views x {res}^2, median of {args.repeats}:")
    for n in small:
        bench_backends(textured_sphere(n), args.device, args.repeats, res)


def bench_backends(asset: Asset, device: str, repeats: int, res: int) -> None:
    def run(backend):
        def go():
            rendering.render_views(asset, VIEWS, resolution=res, device=device, backend=backend)
            if device.startswith("cuda"):
                torch.cuda.synchronize()
        go()  # warm-up
        return median_time(go, repeats)
    t_pack, t_p3d = run("pack"), run("pytorch3d")
    caster, rays = embree_setup(asset, res)
    embree_cast(caster, rays)
    t_embree = median_time(lambda: embree_cast(caster, rays), repeats)
    print(f"{asset.num_faces:>8} faces: pack {t_pack:.3f} s | pytorch3d {t_p3d:.3f} s | Embree {t_embree:.3f} s | "
          f"pytorch3d/pack = {t_p3d / t_pack:.2f}, pack/Embree = {t_pack / t_embree:.2f}")


def bench_one(asset: Asset, device: str, repeats: int) -> None:
    t0 = time.perf_counter()
    asset.closed_orientation()  # one-time analysis, cached on the asset
    analysis = time.perf_counter() - t0

    def ours(cull=None):
        rendering.render_views(asset, VIEWS, resolution=RES, device=device, cull_back_faces=cull)
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    ours()  # warm-up
    t_ours = median_time(ours, repeats)
    t_nocull = median_time(lambda: ours(False), repeats)
    t0 = time.perf_counter()
    caster, rays = embree_setup(asset)
    embree_cast(caster, rays)  # builds the BVH
    build = time.perf_counter() - t0
    t_embree = median_time(lambda: embree_cast(caster, rays), repeats)
    print(f"{asset.num_faces:>8} faces: ours {t_ours:.3f} s (back faces not skipped: {t_nocull:.3f} s; "
          f"one-time closed-mesh check {analysis:.3f} s) | Embree ray cast {t_embree:.3f} s "
          f"(+ BVH build/first cast {build:.3f} s) | ours/Embree = {t_ours / t_embree:.2f}")


if __name__ == "__main__":
    main()

"""Training datasets written for tests, benchmarks and the demo, in every layout training.datasets reads.

Assets come from tools.assets_gen (vertex-coloured meshes written as GLB); photos and scene point maps
are the pack's renderer at a fixed pose (rendering.render_at) over a flat background; the release
layout's orbit videos are real H.264 mp4 files written with PyAV from rendering.render_views with 60
release-preset views (so frame k is the view at 2πk/60).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from tools import assets_gen

MESH_KINDS = ("box", "low_poly", "sphere")


def mesh(kind: str = "box"):
    """(vertices, faces, colours) of a small vertex-coloured test mesh."""
    if kind == "box":
        v, f, _ = assets_gen.box(size=(2.0, 1.2, 0.8))
    elif kind == "low_poly":
        v, f = assets_gen.low_poly()
    elif kind == "sphere":
        v, f, _ = assets_gen.uv_sphere(8, 12)
    else:
        raise ValueError(f"unknown mesh kind {kind!r} (one of {MESH_KINDS})")
    lo, hi = v.min(0), v.max(0)
    colours = 0.15 + 0.7 * (v - lo) / np.where(hi > lo, hi - lo, 1.0)  # smooth, never white
    return v, f, colours[:, [2, 0, 1]]


def mesh_file(path, kind: str = "box") -> Path:
    """A GLB of ``mesh(kind)``."""
    v, f, c = mesh(kind)
    return assets_gen.write_glb(path, [assets_gen.GltfPart(v, f, colors=c)])


def mesh_asset(kind: str = "box"):
    from rendering import asset_from_mesh
    v, f, c = mesh(kind)
    return asset_from_mesh(v, f, c, name=kind)


def scene_images(asset, width: int, height: int, theta: float = 0.6, pitch: float = 15.0, radius: float = 5.0,
                 background=(0.3, 0.5, 0.7)) -> tuple[np.ndarray, np.ndarray]:
    """A 'photo' (uint8 [H, W, 3]: the asset over a flat colour) and its scene point map (uint8 RGBA
    [H, W, 4], alpha = mask, colour 0 where there is no object) seen from an orbit camera."""
    from rendering import orbit_camera, render_at
    v = render_at(asset, orbit_camera(theta, pitch, radius), width, height)
    mask = v.mask[0][..., None]
    photo = torch.where(mask > 0, v.rgb[0], torch.tensor(background, dtype=torch.float32))
    rgba = torch.cat([v.point_map[0] * mask, mask], dim=-1)
    return to_u8(photo), to_u8(rgba)


def to_u8(x: torch.Tensor) -> np.ndarray:
    return (x.clamp(0, 1) * 255).round().to(torch.uint8).numpy()


def orbit_frames(asset, size: int, frames: int = 60) -> tuple[np.ndarray, np.ndarray]:
    """The 60-frame orbit of the release videos: uint8 RGB and point-map frames [T, size, size, 3]
    (frame k = release view at θ = 2πk/60); ``frames`` < 60 keeps the first ones."""
    from rendering import render_views
    v = render_views(asset, num_views=60, preset="release", resolution=size)
    return to_u8(v.rgb[:frames]), to_u8(v.point_map[:frames])


def numbered_frames(count: int, size: int) -> np.ndarray:
    """Flat grey frames [T, size, size, 3] whose level tells the frame index: 4·k (survives H.264)."""
    levels = (np.arange(count) * 4).astype(np.uint8)
    return np.broadcast_to(levels[:, None, None, None], (count, size, size, 3)).copy()


def write_video(path, frames: np.ndarray, fps: int = 30, crf: int = 10) -> Path:
    """An H.264 mp4 (yuv420p, PyAV/libx264) of uint8 frames [T, H, W, 3] (H and W even)."""
    import av
    path = Path(path)
    frames = np.ascontiguousarray(frames, dtype=np.uint8)
    with av.open(str(path), mode="w") as out:
        stream = out.add_stream("libx264", rate=fps)
        stream.width, stream.height = int(frames.shape[2]), int(frames.shape[1])
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": str(crf), "preset": "ultrafast"}
        for f in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def save_png(path, array: np.ndarray) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.ascontiguousarray(array)).save(path)
    return path


# ---------------------------------------------------------------- the release layout


def write_release_sample(root, name: str, kind: str = "box", width: int = 80, height: int = 64,
                         video_size: int = 32, theta: float = 0.6, prompt: str | None = None,
                         rgb_frames: np.ndarray | None = None, coord_frames: np.ndarray | None = None) -> dict:
    """One release-layout sample under root/samples/<name>/ (<name>.json, image.png, scene_coord_map.png,
    video.mp4, coord.mp4); returns its meta_data.json entry plus "frames": the (rgb, coord) frames written."""
    root = Path(root)
    folder = root / "samples" / name
    folder.mkdir(parents=True, exist_ok=True)
    asset = mesh_asset(kind)
    photo, rgba = scene_images(asset, width, height, theta=theta)
    save_png(folder / "image.png", photo)
    save_png(folder / "scene_coord_map.png", rgba)
    (folder / f"{name}.json").write_text(json.dumps({"text": prompt or f"a photo of a {kind} on a table", "item": kind}))
    if rgb_frames is None or coord_frames is None:
        rgb, coord = orbit_frames(asset, video_size)
        rgb_frames = rgb if rgb_frames is None else rgb_frames
        coord_frames = coord if coord_frames is None else coord_frames
    write_video(folder / "video.mp4", rgb_frames)
    write_video(folder / "coord.mp4", coord_frames)
    rel = f"samples/{name}"
    return {"json": f"{rel}/{name}.json", "image": f"{rel}/image.png", "video": f"{rel}/video.mp4",
            "coord": f"{rel}/coord.mp4", "pose_coord": f"{rel}/scene_coord_map.png",
            "frames": (rgb_frames, coord_frames)}


def write_release_dataset(root, samples=(("mug", "box"), ("lamp", "low_poly")), **kwargs) -> list[dict]:
    """A release-layout dataset (meta_data.json + one write_release_sample per (name, kind)); returns the
    entries (with their "frames")."""
    root = Path(root)
    entries = [write_release_sample(root, name, kind, theta=0.6 + 0.9 * n, **kwargs)
               for n, (name, kind) in enumerate(samples)]
    write_meta(root, entries)
    return entries


def write_meta(root, entries: list[dict]) -> Path:
    path = Path(root) / "meta_data.json"
    path.write_text(json.dumps([{k: e[k] for k in ("json", "image", "video", "coord", "pose_coord")} for e in entries]))
    return path


# ---------------------------------------------------------------- a folder per sample


def write_folder_sample(root, name: str, kind: str = "box", width: int = 80, height: int = 64,
                        theta: float = 0.6, prompt: str | None = None) -> Path:
    """root/<name>/ with photo.png, prompt.txt, point_map.png (RGBA) and asset.glb; returns the sub-folder."""
    from rendering import load_asset
    folder = Path(root) / name
    folder.mkdir(parents=True, exist_ok=True)
    asset = load_asset(mesh_file(folder / "asset.glb", kind))
    photo, rgba = scene_images(asset, width, height, theta=theta)
    save_png(folder / "photo.png", photo)
    save_png(folder / "point_map.png", rgba)
    (folder / "prompt.txt").write_text((prompt or f"a photo of a {kind}") + "\n")
    return folder


def write_folder_dataset(root, samples=(("mug", "box"), ("lamp", "low_poly")), **kwargs) -> Path:
    """A folder dataset: one write_folder_sample per (name, kind)."""
    root = Path(root)
    for n, (name, kind) in enumerate(samples):
        write_folder_sample(root, name, kind, theta=0.6 + 0.9 * n, **kwargs)
    return root

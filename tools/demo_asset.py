"""The demo's own 3D asset: a textured box with readable markings, written as a GLB.

Nothing is downloaded: the texture is drawn with PIL (one coloured tile per face with a big word, a
letter and an "up" arrow) and the mesh is built and exported with trimesh. Each face's texture is
laid out so that its word reads upright and unmirrored when the face is seen from outside with +Y
up, which makes orientation mistakes in the reference renders obvious at a glance.

    python tools/demo_asset.py out.glb [--size 1.6 1.0 1.0]
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

TILE = 256  # pixels per face tile; the atlas is 3 x 2 tiles

# (label, outward normal, screen-up direction when the face is seen from outside, tile colour)
FACES = [
    ("FRONT", (0, 0, 1), (0, 1, 0), (220, 60, 50)),
    ("BACK", (0, 0, -1), (0, 1, 0), (60, 110, 220)),
    ("RIGHT", (1, 0, 0), (0, 1, 0), (60, 170, 80)),
    ("LEFT", (-1, 0, 0), (0, 1, 0), (235, 175, 40)),
    ("TOP", (0, 1, 0), (0, 0, -1), (150, 80, 190)),
    ("BASE", (0, -1, 0), (0, 0, 1), (90, 90, 90)),
]


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)  # Pillow >= 10.1 ships a scalable default font
    except TypeError:  # very old Pillow: bitmap font
        return ImageFont.load_default()


def draw_tile(label: str, colour: tuple[int, int, int], letter: str) -> Image.Image:
    """One face: coloured background, a white frame, an up arrow, the word and a corner letter."""
    img = Image.new("RGB", (TILE, TILE), colour)
    d = ImageDraw.Draw(img)
    d.rectangle([6, 6, TILE - 7, TILE - 7], outline=(255, 255, 255), width=8)
    # up arrow in the upper part of the tile
    cx = TILE // 2
    d.polygon([(cx, 28), (cx - 36, 80), (cx + 36, 80)], fill=(255, 255, 255))
    d.rectangle([cx - 12, 80, cx + 12, 112], fill=(255, 255, 255))
    font = _font(52 if len(label) <= 4 else 44)
    box = d.textbbox((0, 0), label, font=font)
    w, h = box[2] - box[0], box[3] - box[1]
    d.text((cx - w / 2 - box[0], 150 - h / 2 - box[1]), label, fill=(255, 255, 255), font=font)
    # a letter in the lower-left corner: mirrored renders show it on the wrong side
    small = _font(40)
    d.text((22, TILE - 66), letter, fill=(20, 20, 20), font=small)
    return img


def build_texture() -> Image.Image:
    atlas = Image.new("RGB", (3 * TILE, 2 * TILE), (255, 255, 255))
    for i, (label, _n, _up, colour) in enumerate(FACES):
        atlas.paste(draw_tile(label, colour, "ABCDEF"[i]), ((i % 3) * TILE, (i // 3) * TILE))
    return atlas


def box_geometry(size=(1.6, 1.0, 1.0)):
    """Vertices (24, 3), faces (12, 3) and UVs (24, 2) of a box whose six faces each use one tile."""
    half = np.asarray(size, dtype=np.float64) / 2
    verts, faces, uvs = [], [], []
    width, height = 3 * TILE, 2 * TILE
    for i, (_label, n, up, _c) in enumerate(FACES):
        n, up = np.asarray(n, float), np.asarray(up, float)
        right = np.cross(-n, up)  # screen-right for a viewer looking at the face along -n
        centre = n * half
        hr, hu = abs(right @ half), abs(up @ half)
        corners = [centre - right * hr - up * hu, centre + right * hr - up * hu,
                   centre + right * hr + up * hu, centre - right * hr + up * hu]  # bl, br, tr, tl
        x0, y0 = (i % 3) * TILE + 2, (i // 3) * TILE + 2  # 2 px inset against bleeding between tiles
        x1, y1 = x0 + TILE - 4, y0 + TILE - 4
        px = [(x0, y1), (x1, y1), (x1, y0), (x0, y0)]
        base = len(verts)
        verts += corners
        uvs += [(x / width, 1.0 - y / height) for x, y in px]  # trimesh UVs: v points up the image
        faces += [(base, base + 1, base + 2), (base, base + 2, base + 3)]  # counter-clockwise from outside
    return np.asarray(verts), np.asarray(faces, dtype=np.int64), np.asarray(uvs)


def write_demo_asset(path, size=(1.6, 1.0, 1.0)) -> Path:
    """Writes the textured box to ``path`` (.glb) and returns the path."""
    import trimesh
    from trimesh.visual.material import PBRMaterial

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    v, f, uv = box_geometry(size)
    material = PBRMaterial(name="markings", baseColorTexture=build_texture(), metallicFactor=0.0,
                           roughnessFactor=1.0)
    mesh = trimesh.Trimesh(vertices=v, faces=f, process=False,
                           visual=trimesh.visual.TextureVisuals(uv=uv, material=material))
    path.write_bytes(trimesh.Scene(mesh).export(file_type="glb"))
    return path


ASSET_NAME = "3d/refany3d_demo_box.glb"  # the name the example workflows load from input/


def reference_image_names(num_views: int = 8) -> tuple[list[str], list[str]]:
    """File names (in input/) of the reference images the 'references from images' example loads."""
    return ([f"refany3d_ref_rgb_{i}.png" for i in range(num_views)],
            [f"refany3d_ref_point_map_{i}.png" for i in range(num_views)])


def write_example_inputs(input_dir, num_views: int = 8, resolution: int = 512) -> dict:
    """Puts what the example workflows load into a ComfyUI input folder: the demo box as
    input/3d/refany3d_demo_box.glb, and its release-preset reference views as PNGs (RGB and point
    map, view i in refany3d_ref_*_i.png). Returns {"asset": path, "rgb": [paths], "point_map": [paths]}."""
    import rendering  # the pack's own renderer (plain library)

    input_dir = Path(input_dir)
    asset = write_demo_asset(input_dir / ASSET_NAME)

    views = rendering.render_views(rendering.load_asset(asset), num_views=num_views, resolution=resolution)
    rgb_names, pm_names = reference_image_names(num_views)
    out = {"asset": asset, "rgb": [], "point_map": []}
    for key, names, images in (("rgb", rgb_names, views.rgb), ("point_map", pm_names, views.point_map)):
        for name, img in zip(names, images):
            path = input_dir / name
            Image.fromarray((img.clamp(0, 1).cpu().numpy() * 255).round().astype(np.uint8)).save(path)
            out[key].append(path)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("output", help="where to write the .glb")
    p.add_argument("--size", type=float, nargs=3, default=(1.6, 1.0, 1.0), metavar=("X", "Y", "Z"),
                   help="box size along x, y, z (default 1.6 1.0 1.0)")
    args = p.parse_args(argv)
    print(write_demo_asset(args.output, tuple(args.size)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

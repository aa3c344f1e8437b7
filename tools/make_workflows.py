"""Builds example_workflows/ (UI format + .jpg thumbnail) and example_workflows/api/ (API twins).

The graphs are described below in a few lines each; the real ComfyUI frontend does the rest: a
headless ComfyUI with the pack is started, its frontend is opened in headless Chromium, every
node is created there with LiteGraph, widgets are set by name and sockets connected by name,
and the frontend's own ``graph.serialize()`` and ``graphToPrompt()`` give the UI workflow and its
API twin. So the files are exactly what ComfyUI itself saves and exports.

    .legs/v0.31.0/venv/bin/python -m tools.make_workflows [--out example_workflows]

Needs Debian's chromium (/usr/bin/chromium, or CHROMIUM=path) and the playwright package.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import tempfile
from pathlib import Path

from .comfy_env import PACK_ROOT
from . import workflow_meta
from .demo_asset import ASSET_NAME, reference_image_names, write_example_inputs

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]

# model files the workflows name, by ComfyUI models sub-folder (the table with their download links
# is tools/workflow_meta.py, which also gives every node its properties.models and cnr_id/ver)
MODEL_FILES = workflow_meta.files_by_folder()

SIZE = 512  # target image size: RefAny3D Empty Latent and ModelSamplingFlux must agree (docs/method.md §5)


def chromium_path() -> str:
    return os.environ.get("CHROMIUM", "/usr/bin/chromium")


def write_placeholder_models(models_dir) -> list[Path]:
    """Empty files under the standard names, so that the loaders' combos list them (validation only)."""
    made = []
    for sub, names in MODEL_FILES.items():
        for name in names:
            path = Path(models_dir) / sub / name
            if not path.exists():
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(b"")
                made.append(path)
    return made


# --- graph descriptions ------------------------------------------------------------------------
class Graph:
    def __init__(self):
        self.nodes: list[dict] = []
        self.links: list[tuple] = []
        self.groups: list[dict] = []

    def node(self, type_: str, pos, size=None, title=None, color=None, widgets=None, **more_widgets) -> int:
        """A node; its widget values by name, as keywords or in ``widgets`` (for widgets named like the
        parameters here, e.g. a ``size`` widget)."""
        widgets = {**(widgets or {}), **more_widgets}
        node_id = len(self.nodes) + 1
        self.nodes.append({"id": node_id, "type": type_, "pos": list(pos), "size": size, "title": title,
                           "color": color, "widgets": widgets})
        return node_id

    def note(self, pos, size, text: str) -> int:
        return self.node("Note", pos, size=size, color="yellow", text=text)

    def link(self, src: int, output, dst: int, input_name: str) -> None:
        self.links.append((src, output, dst, input_name))

    def group(self, title: str, bounding, color="#3f789e") -> None:
        self.groups.append({"title": title, "bounding": list(bounding), "color": color})


def reference_section(g: Graph, pitch=0.0, y_rotation=0.0, previews=True):
    """Load asset → render views (+ previews). Returns the RenderViews node id (the asset's is one less)."""
    g.group("1 · Reference views of your 3D asset", (0, 0, 420, 640))
    asset = g.node("RefAny3DLoadAsset", (20, 50), size=[380, 90], asset_file=ASSET_NAME)
    views = g.node("RefAny3DRenderViews", (20, 180), size=[380, 250], num_views=8, preset="release",
                   resolution=512, pitch=pitch, y_rotation=y_rotation, radius=4.0, fov=45.0)
    g.link(asset, "asset", views, "asset")
    if previews:
        p1 = g.node("PreviewImage", (20, 460), size=[185, 160], title="Reference RGB views")
        p2 = g.node("PreviewImage", (215, 460), size=[185, 160], title="Reference point maps")
        g.link(views, "rgb", p1, "images")
        g.link(views, "point_map", p2, "images")
    return views


def generation_section(g: Graph, rgb_src, pm_src, prefix: str, prompt: str, batch_size: int = 1,
                       hold=None) -> dict:
    """FLUX.1-dev + RefAny3D sampling from reference images ``rgb_src``/``pm_src`` ((node, output)).
    ``hold(model, latent, vae)``, when given, puts nodes between RefAny3D Apply / Empty Latent and the
    sampler and returns the (node, output) pairs the sampler takes instead.
    Returns the ids of the decoded image, point map and mask nodes."""
    x = 460
    g.group("2 · FLUX.1-dev and the RefAny3D files", (x, 0, 400, 640))
    unet = g.node("UNETLoader", (x + 20, 50), size=[360, 82], unet_name="flux1-dev.safetensors", weight_dtype="default")
    clip = g.node("DualCLIPLoader", (x + 20, 170), size=[360, 130], clip_name1="clip_l.safetensors",
                  clip_name2="t5xxl_fp16.safetensors", type="flux", device="default")
    vae = g.node("VAELoader", (x + 20, 340), size=[360, 58], vae_name="ae.safetensors")
    adapter = g.node("RefAny3DLoadAdapter", (x + 20, 440), size=[360, 130], reference_lora="default.safetensors",
                     domain_lora="coord.safetensors", domain_embedder="domain_embedder.pth")
    x = 900
    g.group("3 · Prompt and RefAny3D model", (x, 0, 440, 880))
    msf = g.node("ModelSamplingFlux", (x + 20, 50), size=[400, 130], max_shift=1.15, base_shift=0.5,
                 width=SIZE, height=SIZE)
    apply_ = g.node("RefAny3DApply", (x + 20, 220), size=[400, 230], image_guidance=2.0,
                    guidance_pass="unmasked (release)", cache_references=False)
    text = g.node("CLIPTextEncode", (x + 20, 490), size=[400, 160], title="Prompt", text=prompt)
    fg = g.node("FluxGuidance", (x + 20, 690), size=[400, 58], guidance=3.5)
    zero = g.node("ConditioningZeroOut", (x + 20, 790), size=[400, 26], title="Negative (unused at cfg 1)")
    g.link(unet, "MODEL", msf, "model")
    g.link(msf, "MODEL", apply_, "model")
    g.link(adapter, "adapter", apply_, "adapter")
    g.link(vae, "VAE", apply_, "vae")
    g.link(*rgb_src, apply_, "reference_rgb")
    g.link(*pm_src, apply_, "reference_point_map")
    g.link(clip, "CLIP", text, "clip")
    g.link(text, "CONDITIONING", fg, "conditioning")
    g.link(text, "CONDITIONING", zero, "conditioning")
    x = 1380
    g.group("4 · Joint sampling of image and point map", (x, 0, 360, 880))
    latent = g.node("RefAny3DEmptyLatent", (x + 20, 50), size=[320, 110], width=SIZE, height=SIZE,
                    batch_size=batch_size)
    ks = g.node("KSampler", (x + 20, 200), size=[320, 270], seed=42, control_after_generate="fixed", steps=28,
                cfg=1.0, sampler_name="euler", scheduler="simple", denoise=1.0)
    split = g.node("RefAny3DSplitLatent", (x + 20, 510), size=[320, 50])
    dec_rgb = g.node("VAEDecode", (x + 20, 600), size=[320, 50], title="VAE Decode (image)")
    dec_pm = g.node("VAEDecode", (x + 20, 690), size=[320, 50], title="VAE Decode (point map)")
    mask = g.node("RefAny3DPointMapToMask", (x + 20, 780), size=[320, 60], threshold=0.9)
    model_src, latent_src = (apply_, "MODEL"), (latent, "LATENT")
    if hold is not None:
        model_src, latent_src = hold(model_src, latent_src, vae)
    g.link(*model_src, ks, "model")
    g.link(fg, "CONDITIONING", ks, "positive")
    g.link(zero, "CONDITIONING", ks, "negative")
    g.link(*latent_src, ks, "latent_image")
    g.link(ks, "LATENT", split, "samples")
    g.link(split, "rgb", dec_rgb, "samples")
    g.link(split, "point_map", dec_pm, "samples")
    g.link(vae, "VAE", dec_rgb, "vae")
    g.link(vae, "VAE", dec_pm, "vae")
    g.link(dec_pm, "IMAGE", mask, "point_map")
    x = 1780
    g.group("5 · Results", (x, 0, 860, 880))
    s_rgb = g.node("SaveImage", (x + 20, 50), size=[400, 400], title="Save image", filename_prefix=f"{prefix}/image")
    s_pm = g.node("SaveImage", (x + 440, 50), size=[400, 400], title="Save point map",
                  filename_prefix=f"{prefix}/point_map")
    m2i = g.node("MaskToImage", (x + 20, 480), size=[400, 26])
    s_mask = g.node("SaveImage", (x + 440, 480), size=[400, 380], title="Save mask", filename_prefix=f"{prefix}/mask")
    g.link(dec_rgb, "IMAGE", s_rgb, "images")
    g.link(dec_pm, "IMAGE", s_pm, "images")
    g.link(mask, "MASK", m2i, "mask")
    g.link(m2i, "IMAGE", s_mask, "images")
    return {"image": dec_rgb, "point_map": dec_pm, "mask": mask}


ASSET_HOWTO = ("ComfyUI/input/3d/ (copy it there, or upload it with a core Load 3D node, which saves "
               "uploads there; then press R to refresh the list). The demo box refany3d_demo_box.glb is made by "
               "`python tools/demo_asset.py ComfyUI/input/3d/refany3d_demo_box.glb`.")

FILES_NOTE = """Model files (standard names; pick yours in the loaders):
• models/diffusion_models/flux1-dev.safetensors  (FLUX.1-dev; fp8 works with weight_dtype fp8_e4m3fn)
• models/text_encoders/clip_l.safetensors and t5xxl_fp16.safetensors  (DualCLIPLoader, type flux)
• models/vae/ae.safetensors  (the FLUX VAE)
• models/refany3d/default.safetensors, coord.safetensors, domain_embedder.pth  (the RefAny3D release)"""

SIZE_NOTE = f"""Image size: RefAny3D Empty Latent and ModelSamplingFlux must have the same width and height \
({SIZE}×{SIZE} here, as the release). ModelSamplingFlux gives the release's sigma schedule \
(max_shift 1.15, base_shift 0.5). KSampler: cfg 1.0 (FLUX.1-dev is guidance-distilled; FluxGuidance 3.5 \
sets the text guidance), 28 steps. RefAny3D Apply's image_guidance (2.0) is the reference guidance of the \
release; 1.0 halves the work and follows the references less."""

PROMPT = "a product photo of the box on a wooden desk next to a window, soft daylight"


def link_read_pose(g: Graph, out: dict, asset: int, pose: int) -> None:
    """Read Pose's inputs: the generated point map, mask and picture (``out`` of generation_section) and the asset."""
    g.link(out["point_map"], "IMAGE", pose, "point_map")
    g.link(out["mask"], "MASK", pose, "mask")
    g.link(asset, "asset", pose, "asset")
    g.link(out["image"], "IMAGE", pose, "photo")


def asset_to_image() -> Graph:
    g = Graph()
    views = reference_section(g)
    generation_section(g, (views, "rgb"), (views, "point_map"), "RefAny3D", PROMPT)
    g.note((0, -330), [860, 300], "RefAny3D · asset to image\n\n"
           "Generates a picture that shows YOUR 3D asset, from a text prompt. The asset is rendered from 8 "
           "views (RGB and point map, exactly as the RefAny3D release); FLUX.1-dev with the RefAny3D files "
           "then generates the image together with its point map (where each pixel lies on the asset) and "
           "an object mask.\n\nWhat to set:\n1. RefAny3D Load 3D Asset: your .glb/.gltf/.obj/.ply/.stl in "
           f"{ASSET_HOWTO}\n"
           "2. The prompt: describe the scene, mention the object.\n3. Seed; then Queue.\n\n" + FILES_NOTE)
    g.note((900, -330), [840, 300], SIZE_NOTE + "\n\nOutputs (output/RefAny3D/): image, point map "
           "(x,y,z of the asset as R,G,B on white) and mask (1 on the object).\n\nLow on memory? Set "
           "weight_dtype to fp8_e4m3fn, or cache_references on in RefAny3D Apply (faster, slightly "
           "different results).")
    return g


def viewpoint_control() -> Graph:
    g = Graph()
    views = reference_section(g, pitch=20.0, y_rotation=90.0)
    generation_section(g, (views, "rgb"), (views, "point_map"), "RefAny3D_viewpoint",
                       "a product photo of the box on a kitchen counter, morning light")
    g.note((0, -330), [860, 300], "RefAny3D · viewpoint control\n\n"
           "The same pipeline as 'asset to image', set up to show a different side of the asset "
           "(paper §3, docs/method.md §1.8).\n\nRefAny3D Render Views:\n• y_rotation (here 90°) rotates the point-map "
           "coordinate frame of the references about the vertical axis. The model generates the object in "
           "the frame the point maps describe, so this turns the object in the generated picture: try 0, 90, "
           "180, 270 with the same seed and compare the point-map outputs.\n• pitch (here 20°) lifts the "
           "reference cameras so the top is seen; the release rendered at pitch 0, so keep it small.\n"
           "The RGB references are unchanged by y_rotation.\n\n" + FILES_NOTE)
    g.note((900, -330), [840, 300], SIZE_NOTE)
    return g


def references_from_images() -> Graph:
    g = Graph()
    rgb_names, pm_names = reference_image_names(8)
    g.group("1 · Reference images (8 views: RGB and point map)", (-1260, 0, 1700, 1240))
    batches = {}
    for row, (kind, names) in enumerate((("rgb", rgb_names), ("point_map", pm_names))):
        prev = None
        for i, name in enumerate(names):
            x, y = -1240 + (i % 4) * 210, 50 + row * 600 + (i // 4) * 290
            load = g.node("LoadImage", (x, y), size=[200, 270], title=f"{'RGB' if kind == 'rgb' else 'Point map'} view {i}",
                          image=name)
            if prev is None:
                prev = (load, "IMAGE")
                continue
            b = g.node("ImageBatch", (-380, 50 + row * 600 + (i - 1) * 60), size=[200, 46])
            g.link(*prev, b, "image1")
            g.link(load, "IMAGE", b, "image2")
            prev = (b, "IMAGE")
        batches[kind] = prev
    p1 = g.node("PreviewImage", (-160, 50), size=[300, 540], title="RGB references")
    p2 = g.node("PreviewImage", (-160, 650), size=[300, 540], title="Point-map references")
    g.link(*batches["rgb"], p1, "images")
    g.link(*batches["point_map"], p2, "images")
    generation_section(g, batches["rgb"], batches["point_map"], "RefAny3D_from_images",
                       "a product photo of the box on a shelf in a toy shop")
    g.note((-1260, -330), [1700, 300], "RefAny3D · references from images (paper Fig. 6)\n\n"
           "No 3D file? Give RefAny3D the reference views as images: 8 RGB views of the object and the 8 "
           "matching point maps, same size (512×512 as the release), same order (view i in both rows), on "
           "a pure white background. A point map stores, per pixel, the object's normalised x,y,z as R,G,B "
           "(0..1 over its bounding box, white = background); see RefAny3D Render Views for the exact "
           "convention and the release's camera angles (0°, 42°, 84°, … around the object).\n\n"
           "What to set: the 16 Load Image nodes (upload your images). The files refany3d_ref_*.png are the "
           "demo box's renders, written by `make demo`. Fewer views also work: remove Load Image / "
           "Batch Images pairs from both rows alike.\n\n" + FILES_NOTE)
    g.note((900, -330), [840, 300], SIZE_NOTE)
    return g


def render_preview() -> Graph:
    g = Graph()
    g.group("Reference views (no model needed)", (0, 0, 1300, 940))
    asset = g.node("RefAny3DLoadAsset", (20, 50), size=[380, 90], asset_file=ASSET_NAME)
    views = g.node("RefAny3DRenderViews", (20, 180), size=[380, 250], num_views=8, preset="release",
                   resolution=512, pitch=0.0, y_rotation=0.0, radius=4.0, fov=45.0)
    s_rgb = g.node("SaveImage", (440, 50), size=[400, 420], title="Save RGB views",
                   filename_prefix="RefAny3D_preview/rgb")
    s_pm = g.node("SaveImage", (880, 50), size=[400, 420], title="Save point-map views",
                  filename_prefix="RefAny3D_preview/point_map")
    m2i = g.node("MaskToImage", (20, 470), size=[380, 26])
    s_mask = g.node("SaveImage", (440, 500), size=[400, 420], title="Save masks",
                    filename_prefix="RefAny3D_preview/mask")
    to_mesh = g.node("RefAny3DAssetToMesh", (20, 540), size=[380, 60], normalised=True)
    glb = g.node("SaveGLB", (880, 500), size=[400, 420], filename_prefix="mesh/RefAny3D_preview")
    g.link(asset, "asset", views, "asset")
    g.link(views, "rgb", s_rgb, "images")
    g.link(views, "point_map", s_pm, "images")
    g.link(views, "mask", m2i, "mask")
    g.link(m2i, "IMAGE", s_mask, "images")
    g.link(asset, "asset", to_mesh, "asset")
    g.link(to_mesh, "mesh", glb, "mesh")
    g.note((20, 640), [380, 280], "RefAny3D · render-only preview\n\nChecks an asset before generating: "
           "renders the reference views RefAny3D will condition on, with no model at all (runs on CPU in "
           "about a second).\n\nWhat to set: the asset in RefAny3D Load 3D Asset: your file in "
           f"{ASSET_HOWTO} Look for: object centred, upright (+Y up), textures readable and not mirrored, "
           "point maps smooth rainbow colours on white. Save GLB shows the normalised mesh in 3D.")
    return g


def best_seed() -> Graph:
    g = Graph()
    views = reference_section(g)
    out = generation_section(g, (views, "rgb"), (views, "point_map"), "RefAny3D_best_seed", PROMPT, batch_size=4)
    x = 2680
    g.group("6 · Check each picture and keep the best seed", (x, 0, 860, 880))
    pose = g.node("RefAny3DReadPose", (x + 20, 50), size=[400, 220], y_rotation=0.0)
    best = g.node("RefAny3DBestOf", (x + 20, 320), size=[400, 180], top_k=1, y_rotation=0.0)
    s_best = g.node("SaveImage", (x + 440, 50), size=[400, 400], title="Save best picture",
                    filename_prefix="RefAny3D_best_seed/best")
    s_over = g.node("SaveImage", (x + 440, 480), size=[400, 380], title="Save overlays (read camera)",
                    filename_prefix="RefAny3D_best_seed/overlay")
    link_read_pose(g, out, views - 1, pose)
    g.link(out["image"], "IMAGE", best, "images")
    g.link(out["point_map"], "IMAGE", best, "point_maps")
    g.link(out["mask"], "MASK", best, "masks")
    g.link(pose, "pose", best, "pose")
    g.link(best, "images", s_best, "images")
    g.link(pose, "overlay", s_over, "images")
    g.note((0, -330), [860, 300], "RefAny3D · check and pick the best seed\n\n"
           "The 'asset to image' pipeline with 4 seeds at once (RefAny3D Empty Latent batch_size 4). For each "
           "picture, RefAny3D Read Pose reads the camera from the generated point map (every object pixel names a "
           "point of the asset), re-renders the asset at that camera and scores how well the picture kept the "
           "asset's geometry (0..1). RefAny3D Best Of keeps the best one.\n\nOutputs (output/RefAny3D_best_seed/): "
           "the best picture, and per seed an overlay of the re-rendered silhouette on the picture. Read Pose's "
           "camera_json output has each camera for OpenCV and for glTF/Blender.\n\nWhat to set: the asset "
           f"(in {ASSET_HOWTO}), the prompt, the seed of the first picture.\n\n" + FILES_NOTE)
    g.note((900, -330), [840, 300], SIZE_NOTE + "\n\nRead Pose needs OpenCV in ComfyUI's Python "
           "(pip install opencv-python-headless). A score below ~0.45 means the picture shows another shape, "
           "or y_rotation differs from the one the references used.")
    return g


#: The camera of the 'choose the camera' example (RefAny3D Target Camera's numbers).
TARGET = dict(yaw=60.0, pitch=20.0, fov=40.0, fill=0.6, x=0.0, y=0.0)
HOLD_STRENGTH = 0.3


def camera_control() -> Graph:
    g = Graph()
    views = reference_section(g)
    asset = views - 1
    g.group("Target camera: the side, distance and framing to generate", (0, 680, 860, 620))
    target = g.node("RefAny3DTargetCamera", (20, 730), size=[380, 420], width=SIZE, height=SIZE, y_rotation=0.0,
                    viewer_frame="fitted", **TARGET)
    p_pm = g.node("PreviewImage", (440, 730), size=[190, 220], title="Target point map (held)")
    p_rgb = g.node("PreviewImage", (650, 730), size=[190, 220], title="The asset from the target camera")
    g.link(asset, "asset", target, "asset")
    g.link(target, "point_map", p_pm, "images")
    g.link(target, "rgb", p_rgb, "images")

    def hold(model_src, latent_src, vae):
        node = g.node("RefAny3DHoldPointMap", (440, 990), size=[400, 130], strength=HOLD_STRENGTH)
        g.link(*model_src, node, "model")
        g.link(vae, "VAE", node, "vae")
        g.link(*latent_src, node, "samples")
        g.link(target, "point_map", node, "point_map")
        return (node, "model"), (node, "samples")

    out = generation_section(g, (views, "rgb"), (views, "point_map"), "RefAny3D_camera",
                             "a product photo of the box on a wooden desk, soft daylight", hold=hold)
    x = 2680
    g.group("6 · How close the picture came to the target camera", (x, 0, 860, 500))
    pose = g.node("RefAny3DReadPose", (x + 20, 50), size=[400, 260], y_rotation=0.0, viewer_frame="fitted")
    s_over = g.node("SaveImage", (x + 440, 50), size=[400, 400], title="Save overlay (read camera)",
                    filename_prefix="RefAny3D_camera/overlay")
    link_read_pose(g, out, asset, pose)
    g.link(target, "camera", pose, "target")
    g.link(pose, "overlay", s_over, "images")
    g.note((0, -330), [860, 300], "RefAny3D · choose the camera (experimental)\n\n"
           "Generates the asset from a side, distance and framing you choose, instead of the one the prompt "
           "happens to give. RefAny3D Target Camera renders the asset's point map at that camera; RefAny3D Hold "
           "Point Map encodes it and holds the point-map half of the joined latent to it for the first "
           f"{HOLD_STRENGTH:.0%} of the steps (core's noise mask, so any core sampler works). The picture is never "
           "held: it is generated together with the held point map. RefAny3D Read Pose then reads the camera "
           "back from the generated point map and reports how far it is from the target (degrees, % of the "
           "distance).\n\nWhat to set:\n1. RefAny3D Load 3D Asset: your file in "
           f"{ASSET_HOWTO}\n2. RefAny3D Target Camera: yaw (0 = from +X, 90 = from +Z), pitch, fov, fill (share "
           "of the picture's height), x/y (where the asset sits). Width and height as RefAny3D Empty Latent's.\n"
           "3. Or orbit the asset in core Load 3D (the same file) and connect its camera_info output to "
           "Target Camera's camera_info input.\n\n" + FILES_NOTE)
    g.note((900, -330), [840, 300], SIZE_NOTE + "\n\nHold Point Map is EXPERIMENTAL: strength is the share "
           "of steps held (0.3 here; 1 keeps the point map exactly the target). How closely the picture follows "
           "the held point map is not yet measured with the real weights; `python -m benchmarks.camera_adherence` "
           "measures it (seeds × strengths, read camera vs target). Read Pose's camera_info output is the read "
           "camera for core Preview 3D (give it a mesh of the asset in output/, e.g. RefAny3D Asset To Mesh → "
           "Save GLB, and that file's name). Read Pose needs "
           "OpenCV (pip install opencv-python-headless).")
    return g


TRAIN_NAME = "my_object"  # the run's folder: models/refany3d/<name>/

TRAIN_FILES_NOTE = """Model files (standard names; pick yours in the loaders):
• models/diffusion_models/flux1-dev.safetensors  (FLUX.1-dev, frozen: only the adapter learns; \
weight_dtype fp8_e4m3fn for less memory)
• models/text_encoders/clip_l.safetensors and t5xxl_fp16.safetensors  (DualCLIPLoader, type flux)
• models/vae/ae.safetensors  (the FLUX VAE)
No RefAny3D files are needed: a new adapter starts from the release's initialisation (rank 16); connect \
RefAny3D Load Adapter to Train's adapter input to fine-tune the release instead. Optimizer prodigy (the \
release's) needs `pip install prodigyopt` in ComfyUI's Python, or choose adamw."""


def train_adapter() -> Graph:
    g = Graph()
    g.group("1 · Training data from your 3D asset", (0, 0, 420, 640))
    asset = g.node("RefAny3DLoadAsset", (20, 50), size=[380, 90], asset_file=ASSET_NAME)
    data = g.node("RefAny3DTrainingDataset", (20, 180), size=[380, 260],
                  widgets={"source": "synthetic", "count": 64, "size": 512, "views": 8})
    g.link(asset, "asset", data, "asset")
    x = 460
    g.group("2 · Encode the data once", (x, 0, 400, 640))
    vae = g.node("VAELoader", (x + 20, 50), size=[360, 58], vae_name="ae.safetensors")
    clip = g.node("DualCLIPLoader", (x + 20, 150), size=[360, 130], clip_name1="clip_l.safetensors",
                  clip_name2="t5xxl_fp16.safetensors", type="flux", device="default")
    enc = g.node("RefAny3DEncodeTrainingData", (x + 20, 330), size=[360, 100])
    g.link(data, "dataset", enc, "dataset")
    g.link(vae, "VAE", enc, "vae")
    g.link(clip, "CLIP", enc, "clip")
    x = 900
    g.group("3 · Train the adapter (GPU)", (x, 0, 440, 640))
    unet = g.node("UNETLoader", (x + 20, 50), size=[400, 82], unet_name="flux1-dev.safetensors", weight_dtype="default")
    train = g.node("RefAny3DTrain", (x + 20, 170), size=[400, 440], name=TRAIN_NAME, steps=1000, optimizer="prodigy",
                   save_every=250, preview_every=100, resume=False)
    g.link(unet, "MODEL", train, "model")
    g.link(enc, "encoded", train, "encoded")
    g.link(vae, "VAE", train, "vae")
    x = 1380
    g.group("4 · Results", (x, 0, 440, 640))
    save = g.node("RefAny3DSaveAdapter", (x + 20, 50), size=[400, 140], name=TRAIN_NAME, dtype="bf16")
    loss = g.node("LossGraphNode", (x + 20, 230), size=[400, 380], filename_prefix="RefAny3D_train/loss_graph")
    g.link(train, "adapter", save, "adapter")
    g.link(train, "loss_map", loss, "loss")
    g.note((0, -370), [860, 340], "RefAny3D · train an adapter on your 3D asset\n\n"
           "Trains RefAny3D's adapter (Reference-LoRA, Domain-LoRA and domain embedder, docs/method.md §6) with "
           "the release's loss; FLUX.1-dev itself is frozen and unchanged. The synthetic training set renders "
           "your asset at 64 random poses over backgrounds (512 px, 8 reference views each, as the release); "
           "'sample folders' or 'release layout' train on your own photos instead. RefAny3D Encode Training Data "
           "encodes it once with the VAE and the text encoders into output/refany3d_encoded/<key>/ (the folder is "
           "shown on the node; the same data is re-used, not encoded again), so training needs neither in memory."
           "\n\nWhat to set:\n1. RefAny3D Load 3D Asset: your .glb/.gltf/.obj/.ply/.stl in "
           f"{ASSET_HOWTO}\n2. RefAny3D Train: the run's name (here {TRAIN_NAME}; the same in Save Adapter), "
           "steps; then Queue.\n\n" + TRAIN_FILES_NOTE)
    g.note((900, -370), [920, 340], "Training wants a GPU. Memory plan (an estimate) at 512 px, 8 views, Prodigy "
           "and gradient checkpointing: ≈ 34 GB with a bf16 base, ≈ 23 GB with an fp8 base (UNETLoader "
           "weight_dtype fp8_e4m3fn). It runs on a CPU too, far too slowly for more than a test.\n\n"
           "While it trains: step and loss on the Train node, a preview (one-step prediction of the first "
           f"sample, RGB and point map; needs the VAE connected) every 100 steps. Every 250 steps (save_every) and "
           f"at the end the trained files are written to models/refany3d/{TRAIN_NAME}/ (default.safetensors, "
           "coord.safetensors, domain_embedder.safetensors): pick them in RefAny3D Load Adapter (press R to "
           "refresh) and use them with RefAny3D Apply as the release's. Save Adapter writes the final adapter "
           "there (bf16, as the release); Plot Loss Graph saves the loss curve in output/RefAny3D_train/.\n\n"
           f"Cancel saves a resumable state of the last finished step in models/refany3d/{TRAIN_NAME}/"
           "training_state/: turn 'resume' on and Queue again to continue it up to 'steps' (a new run under "
           "the same name is refused while a state is there).\n\n"
           "Many GPUs: the same encoded folder trains from the command line, in the pack's folder "
           "(ComfyUI/custom_nodes/comfyui-refany3d): `torchrun --nproc_per_node N -m training --model "
           "../../models/diffusion_models/flux1-dev.safetensors --data ../../output/refany3d_encoded/<key> "
           f"--out ../../models/refany3d/{TRAIN_NAME} --optimizer prodigy --steps 1000` (PyTorch DDP over N "
           "GPUs; `python -m training …` for one, --help for the rest).")
    return g


WORKFLOWS = {
    "refany3d_asset_to_image": asset_to_image,
    "refany3d_best_seed": best_seed,
    "refany3d_camera_control": camera_control,
    "refany3d_viewpoint_control": viewpoint_control,
    "refany3d_references_from_images": references_from_images,
    "refany3d_render_preview": render_preview,
    "refany3d_train_adapter": train_adapter,
}

# --- building in the real frontend ---------------------------------------------------------------
BUILD_JS = """async (spec) => {
  const graph = app.graph;
  graph.clear();
  for (const n of spec.nodes) {
    const node = LiteGraph.createNode(n.type);
    if (!node) throw new Error(`node type ${n.type} is not registered in the frontend`);
    node.id = n.id;
    graph.add(node);
    node.pos = n.pos;
    if (n.title) node.title = n.title;
    if (n.color && LGraphCanvas.node_colors[n.color]) {
      node.color = LGraphCanvas.node_colors[n.color].color;
      node.bgcolor = LGraphCanvas.node_colors[n.color].bgcolor;
    }
    for (const [name, value] of Object.entries(n.widgets)) {
      const w = (node.widgets || []).find(w => w.name === name);
      if (!w) throw new Error(`${n.type} has no widget ${name}: ${(node.widgets || []).map(w => w.name)}`);
      w.value = value;
      if (w.callback) { try { w.callback(value); } catch (e) {} }
    }
    if (n.size) node.setSize(n.size);
  }
  for (const [src, out, dst, inp] of spec.links) {
    const a = graph.getNodeById(src), b = graph.getNodeById(dst);
    const o = typeof out === "number" ? out : a.findOutputSlot(out);
    const i = b.findInputSlot(inp);
    if (o < 0 || i < 0) throw new Error(`cannot link ${a.type}.${out} -> ${b.type}.${inp}`);
    if (!a.connect(o, b, i)) throw new Error(`link refused: ${a.type}.${out} -> ${b.type}.${inp}`);
  }
  spec.groups.forEach((gr, k) => {
    const group = new LiteGraph.LGraphGroup();
    group.configure({id: k + 1, title: gr.title, bounding: gr.bounding, color: gr.color, font_size: 24, flags: {}});
    graph.add(group);
  });
  graph.setDirtyCanvas(true, true);
  // through JSON, as the frontend saves files: undefined fields vanish (Playwright would turn them into nulls)
  const workflow = JSON.parse(JSON.stringify(graph.serialize()));
  const prompt = await app.graphToPrompt();
  return {workflow, api: JSON.parse(JSON.stringify(prompt.output))};
}"""

FIT_JS = """() => {
  const nodes = app.graph._nodes;
  let x0 = Infinity, y0 = Infinity, x1 = -Infinity, y1 = -Infinity;
  for (const n of nodes) {
    x0 = Math.min(x0, n.pos[0]); y0 = Math.min(y0, n.pos[1] - 40);
    x1 = Math.max(x1, n.pos[0] + n.size[0]); y1 = Math.max(y1, n.pos[1] + n.size[1]);
  }
  for (const g of app.graph._groups || []) {
    x0 = Math.min(x0, g.pos[0]); y0 = Math.min(y0, g.pos[1]);
    x1 = Math.max(x1, g.pos[0] + g.size[0]); y1 = Math.max(y1, g.pos[1] + g.size[1]);
  }
  // leave room for the side bar (left) and the menu and tab bars (top)
  const c = app.canvas.canvas, left = 70, top = 130, right = 20, bottom = 20;
  const cw = c.clientWidth - left - right, ch = c.clientHeight - top - bottom;
  const s = Math.min(cw / (x1 - x0), ch / (y1 - y0));
  app.canvas.ds.scale = s;
  app.canvas.ds.offset = [left / s - x0 + (cw / s - (x1 - x0)) / 2, top / s - y0 + (ch / s - (y1 - y0)) / 2];
  app.canvas.setDirty(true, true);
  app.canvas.draw(true, true);
  return [x0, y0, x1, y1, s];
}"""


def open_frontend(playwright, url: str, user_data_dir: str, viewport=(1600, 1000)):
    """Headless Chromium on the ComfyUI frontend at ``url``; returns (context, page, console lines).

    The user is marked as past the first-run tutorial (a server setting) so that no template dialog
    covers the canvas, and the frontend's workflow validation is switched on (newer frontends, e.g.
    1.48, ship with it off; 1.32 has it on)."""
    import urllib.request

    for setting in ("Comfy.TutorialCompleted", "Comfy.Validation.Workflows"):
        req = urllib.request.Request(f"{url}/settings/{setting}", data=b"true", method="POST",
                                     headers={"Content-Type": "application/json"})
        urllib.request.urlopen(req, timeout=30).close()
    ctx = playwright.chromium.launch_persistent_context(
        user_data_dir, executable_path=chromium_path(), headless=True, args=CHROMIUM_FLAGS,
        viewport={"width": viewport[0], "height": viewport[1]})
    page = ctx.new_page()
    console: list[str] = []
    page.on("console", lambda m: console.append(f"{m.type}: {m.text}"))
    page.on("pageerror", lambda e: console.append(f"pageerror: {e}"))
    page.goto(url)
    page.wait_for_function("() => window.app && window.app.graph && window.LiteGraph && "
                           "LiteGraph.registered_node_types['KSampler']", timeout=120_000)
    return ctx, page, console


#: What each card in the template browser says above its picture (the frontend itself shows only the
#: file name), and its colour band: one look tells them apart. Short: the card shows about 220 px of it.
CARD = {
    "refany3d_asset_to_image": ("Asset to photo", (52, 101, 164)),
    "refany3d_best_seed": ("Best of 4 seeds", (78, 154, 6)),
    "refany3d_camera_control": ("Choose the camera", (6, 128, 140)),
    "refany3d_viewpoint_control": ("Turn the object", (117, 80, 123)),
    "refany3d_references_from_images": ("From 8 images", (206, 92, 0)),
    "refany3d_render_preview": ("Preview, no model", (85, 87, 83)),
    "refany3d_train_adapter": ("Train an adapter", (164, 0, 0)),
}


def _tiles(images, size: int):
    """[H, W, 3] tensors in 0..1 (or PIL images, or image files) as PIL tiles of ``size``."""
    import numpy as np
    from PIL import Image

    out = []
    for img in images:
        if isinstance(img, (str, Path)):
            img = Image.open(img)
        if not isinstance(img, Image.Image):
            img = Image.fromarray((img.clamp(0, 1).cpu().numpy() * 255).round().astype(np.uint8))
        out.append(img.convert("RGB").resize((size, size)))
    return out


def card_picture(name: str, inputs: dict):
    """A 512x272 picture of what the workflow makes, from real renders of the demo box by the pack."""
    import torch
    from PIL import Image

    import rendering
    from rendering.overlay import overlay

    asset = rendering.load_asset(inputs["asset"])
    canvas = Image.new("RGB", (512, 272), (255, 255, 255))

    def row(images, y, size=128):
        for k, tile in enumerate(_tiles(images, size)):
            canvas.paste(tile, (k * size, y))

    if name == "refany3d_viewpoint_control":  # the same view, the point-map frame turned 0/90/180/270°
        maps = [rendering.render_views(asset, num_views=8, resolution=128, pitch=20.0, y_rotation=r).point_map[1]
                for r in (0.0, 90.0, 180.0, 270.0)]
        row([rendering.render_views(asset, num_views=8, resolution=128, pitch=20.0).rgb[1]] * 4, 8)
        row(maps, 136)
    elif name == "refany3d_references_from_images":  # the 16 input images, RGB row over point-map row
        for k, tile in enumerate(_tiles(inputs["rgb"], 64)):
            canvas.paste(tile, (k * 64, 8))
        for k, tile in enumerate(_tiles(inputs["point_map"], 64)):
            canvas.paste(tile, (k * 64, 76))
        big = _tiles([Image.open(inputs["rgb"][1])], 120)[0]
        canvas.paste(big, (196, 146))
    elif name == "refany3d_render_preview":  # what it saves: RGB, point map, mask (and the mesh)
        v = rendering.render_views(asset, num_views=8, resolution=160, pitch=20.0)
        row([v.rgb[1], v.point_map[1], v.mask[1][..., None].expand(-1, -1, 3)], 56, 168)
    elif name == "refany3d_best_seed":  # the asset's silhouette read back on four candidates, one kept
        v = rendering.render_views(asset, num_views=8, resolution=128, pitch=10.0)
        shots = [overlay(v.rgb[i], v.mask[i]) for i in (1, 2, 6, 7)]
        row(shots, 72)
        from PIL import ImageDraw
        ImageDraw.Draw(canvas).rectangle((128, 70, 257, 201), outline=(78, 154, 6), width=5)
    elif name == "refany3d_camera_control":  # four chosen cameras: the asset seen there over the held point map
        from rendering.camera import target_camera
        from rendering.pose import render_at
        shots = [render_at(asset, target_camera(yaw, pitch, fov, fill, x, y), 128, 128)
                 for yaw, pitch, fov, fill, x, y in ((60, 20, 40, 0.9, 0, 0), (150, 35, 40, 1.0, 0, 0),
                                                     (-120, 10, 60, 0.7, -0.2, 0.1), (0, 60, 30, 0.9, 0.1, -0.1))]
        row([v.rgb[0] for v in shots], 4)
        row([v.point_map[0] for v in shots], 140)
    elif name == "refany3d_train_adapter":  # training samples: the asset seen around its orbit, over backgrounds
        v = rendering.render_views(asset, num_views=8, preset="even", resolution=128, pitch=25.0)
        for k in range(8):
            m = v.mask[k][..., None]
            img = v.rgb[k] * m + (1 - m) * torch.tensor([0.55 + 0.05 * k, 0.7, 0.85 - 0.05 * k])
            canvas.paste(_tiles([img], 128)[0], ((k % 4) * 128, 8 + (k // 4) * 132))
    else:  # asset to image (and any new workflow): the 8 reference views it renders, RGB over point maps
        spec = WORKFLOWS[name]()
        views = next((n["widgets"] for n in spec.nodes if n["type"] == "RefAny3DRenderViews"), {})
        v = rendering.render_views(asset, num_views=8, resolution=128, pitch=views.get("pitch", 0.0),
                                   y_rotation=views.get("y_rotation", 0.0))
        row(v.rgb[:4], 4)
        row(v.point_map[:4], 140)
    return canvas


def thumbnail(screenshot_png: bytes, name: str, inputs: dict) -> bytes:
    """A 512x512 JPEG: a coloured band with what the workflow does, a picture of what it makes (real
    renders of the demo box by the pack), the graph below."""
    from PIL import Image, ImageDraw

    from .demo_asset import _font

    title, colour = CARD.get(name, (name, (46, 52, 54)))
    canvas = Image.new("RGB", (512, 512), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    draw.rectangle((0, 0, 512, 44), fill=colour)
    # right-aligned: newer frontends lay a "Node graph" badge over the card's top-left corner
    draw.text((498, 22), title, fill=(255, 255, 255), font=_font(30), anchor="rm")
    canvas.paste(card_picture(name, inputs), (0, 44))
    shot = Image.open(io.BytesIO(screenshot_png)).convert("RGB")
    shot.thumbnail((512, 196))
    canvas.paste(shot, ((512 - shot.width) // 2, 316 + (196 - shot.height) // 2))
    buf = io.BytesIO()
    canvas.save(buf, "JPEG", quality=88)
    return buf.getvalue()


@contextlib.contextmanager
def frontend_session():
    """(server, page, example inputs): a ComfyUI server with the example inputs and placeholder models in a
    temporary folder, and the frontend open in headless chromium; all of it gone afterwards."""
    from .comfy_server import ComfyServer
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory(prefix="refany3d-workflows-") as tmp:
        base = Path(tmp) / "comfy"
        inputs = write_example_inputs(base / "input")
        write_placeholder_models(base / "models")
        with ComfyServer(base) as server, sync_playwright() as pw:
            ctx, page, _console = open_frontend(pw, server.url, str(Path(tmp) / "chromium"))
            try:
                yield server, page, inputs
            finally:
                ctx.close()


def build(out_dir: Path, names=None) -> list[Path]:
    out_dir = Path(out_dir)
    (out_dir / "api").mkdir(parents=True, exist_ok=True)
    written = []
    with frontend_session() as (server, page, inputs):
        object_info = server.client._json("GET", "/object_info")[1]
        for name in names or WORKFLOWS:
            page.reload()  # a fresh page: no previews left over from the previous graph
            page.wait_for_function("() => window.app && window.app.graph && window.LiteGraph && "
                                   "LiteGraph.registered_node_types['KSampler']", timeout=120_000)
            g = WORKFLOWS[name]()
            spec = {"nodes": [dict(n, widgets=({"text": n["widgets"]["text"]} if n["type"] == "Note" else n["widgets"]))
                              for n in g.nodes], "links": g.links, "groups": g.groups}
            for n in spec["nodes"]:
                n["size"] = n["size"] or None
            result = page.evaluate(BUILD_JS, spec)
            wf, api = result["workflow"], result["api"]
            wf["extra"] = {"ds": {"scale": 0.6, "offset": [400, 380]}}
            wf = workflow_meta.with_metadata(wf)  # download links, cnr_id/ver
            (out_dir / f"{name}.json").write_text(workflow_meta.dumps(wf))
            api = workflow_meta.declared_inputs_only(api, object_info)  # no frontend-only widgets
            (out_dir / "api" / f"{name}.json").write_text(json.dumps(api, indent=2) + "\n")
            page.evaluate(FIT_JS)
            shot = page.locator("canvas#graph-canvas").screenshot()
            (out_dir / f"{name}.jpg").write_bytes(thumbnail(shot, name, inputs))
            written += [out_dir / f"{name}.json", out_dir / "api" / f"{name}.json", out_dir / f"{name}.jpg"]
            print(f"{name}: {len(wf['nodes'])} nodes, {len(api)} API nodes")
    return written


def thumbnails(out_dir: Path, names=None) -> list[Path]:
    """Only the .jpg thumbnails again, each from its committed UI workflow as the frontend shows it."""
    out_dir = Path(out_dir)
    written = []
    with frontend_session() as (_server, page, inputs):
        for name in names or WORKFLOWS:
            wf = json.loads((out_dir / f"{name}.json").read_text())
            page.evaluate("async ([wf, name]) => { await app.loadGraphData(wf, true, true, name); }", [wf, name])
            page.evaluate(FIT_JS)
            shot = page.locator("canvas#graph-canvas").screenshot()
            (out_dir / f"{name}.jpg").write_bytes(thumbnail(shot, name, inputs))
            written.append(out_dir / f"{name}.jpg")
            print(f"{name}.jpg")
    return written


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=PACK_ROOT / "example_workflows", help="output folder")
    p.add_argument("names", nargs="*", help=f"only these workflows (of {', '.join(WORKFLOWS)})")
    p.add_argument("--thumbnails", action="store_true", help="only the thumbnails, from the workflows as they are")
    args = p.parse_args(argv)
    unknown = sorted(set(args.names) - set(WORKFLOWS))
    if unknown:
        p.error(f"unknown workflow(s): {', '.join(unknown)}")
    (thumbnails if args.thumbnails else build)(args.out, args.names or None)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""`make demo`: RefAny3D end to end in a headless ComfyUI, on an asset the project makes itself.

1. Writes the demo asset (a textured box with readable markings, tools/demo_asset.py) and starts
   ComfyUI headless with the pack (tools/comfy_server.py), in demo_output/comfyui/.
2. Runs the render-only example workflow (example_workflows/api/refany3d_render_preview.json).
3. If FLUX.1-dev, its text encoders and VAE and the RefAny3D release files are in the ComfyUI's
   models folders, runs the full 'asset to image' example. Otherwise it says exactly which files
   are missing and where they go, and runs the same graph with a tiny random Flux as a WIRING
   CHECK (every node executes; the result is noise, not a picture).
4. Writes demo_output/contact_sheet.png: the references and the results.

    .legs/v0.31.0/venv/bin/python -m tools.demo [--out demo_output] [--models DIR] [--prompt TEXT] [--steps N]
"""
from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

from .comfy_env import PACK_ROOT, default_comfy_dir, use_comfy
from .comfy_http import ComfyError, PromptRejected
from .comfy_server import ComfyServer
from .demo_asset import write_example_inputs

API_DIR = PACK_ROOT / "example_workflows" / "api"
RENDER_WORKFLOW = API_DIR / "refany3d_render_preview.json"
FULL_WORKFLOW = API_DIR / "refany3d_asset_to_image.json"
TEST_NODES = PACK_ROOT / "tests" / "comfy_test_nodes"

# the files the full workflow loads: (models sub-folder, loader class, input name, file name)
REQUIRED = [
    ("diffusion_models", "UNETLoader", "unet_name", "flux1-dev.safetensors"),
    ("text_encoders", "DualCLIPLoader", "clip_name1", "clip_l.safetensors"),
    ("text_encoders", "DualCLIPLoader", "clip_name2", "t5xxl_fp16.safetensors"),
    ("vae", "VAELoader", "vae_name", "ae.safetensors"),
    ("refany3d", "RefAny3DLoadAdapter", "reference_lora", "default.safetensors"),
    ("refany3d", "RefAny3DLoadAdapter", "domain_lora", "coord.safetensors"),
    ("refany3d", "RefAny3DLoadAdapter", "domain_embedder", "domain_embedder.pth"),
]
TINY_UNET = "refany3d_tiny_flux.safetensors"
TINY_VAE = "refany3d_tiny_taesd.safetensors"
TINY_ADAPTER = "refany3d_tiny"


def load_api(path: Path) -> dict:
    return json.loads(Path(path).read_text())


def combo_values(info: dict, node: str, name: str) -> list:
    spec = (info.get(node, {}).get("input", {}).get("required", {}).get(name)
            or info.get(node, {}).get("input", {}).get("optional", {}).get(name))
    if not spec:
        return []
    if isinstance(spec[0], list):
        return spec[0]
    return (spec[1] if len(spec) > 1 else {}).get("options", [])


def missing_files(info: dict) -> list[tuple[str, str]]:
    """(models sub-folder, file name) of every required file the server's loaders do not list."""
    missing = []
    for sub, node, name, fname in REQUIRED:
        values = combo_values(info, node, name)
        if not any(v == fname or str(v).replace("\\", "/").rsplit("/", 1)[-1] == fname for v in values):
            missing.append((sub, fname))
    return missing


def matching_value(info: dict, node: str, name: str, fname: str) -> str:
    values = combo_values(info, node, name)
    return next(v for v in values if v == fname or str(v).replace("\\", "/").rsplit("/", 1)[-1] == fname)


def wiring_graph(api: dict, unet: str = TINY_UNET, vae: str = TINY_VAE, adapter_dir: str = TINY_ADAPTER,
                 size: int = 64, views: int = 2, steps: int = 2, seed: int = 0) -> dict:
    """The full example graph for a tiny random Flux: text encoders replaced by the test-only
    RefAny3DTestConditioning node (same node id, so every link stays), small renders and latents."""
    g = copy.deepcopy(api)
    for node_id, node in list(g.items()):
        ct, inp = node["class_type"], node["inputs"]
        if ct == "DualCLIPLoader":
            del g[node_id]
        elif ct in ("CLIPTextEncode",):
            g[node_id] = {"class_type": "RefAny3DTestConditioning", "_meta": {"title": "Test conditioning"},
                          "inputs": {"seed": seed, "tokens": 8, "context_dim": 4096, "pooled_dim": 768, "guidance": 3.5}}
        elif ct == "UNETLoader":
            inp["unet_name"] = unet
        elif ct == "VAELoader":
            inp["vae_name"] = vae
        elif ct == "RefAny3DLoadAdapter":
            inp.update(reference_lora=f"{adapter_dir}/default.safetensors", domain_lora=f"{adapter_dir}/coord.safetensors",
                       domain_embedder=f"{adapter_dir}/domain_embedder.pth")
        elif ct == "RefAny3DRenderViews":
            inp.update(resolution=size, num_views=views)
        elif ct in ("RefAny3DEmptyLatent", "ModelSamplingFlux", "RefAny3DTargetCamera"):
            inp.update(width=size, height=size)
        elif ct == "KSampler":
            inp.update(steps=steps, seed=seed)
        elif ct == "SaveImage":
            inp["filename_prefix"] = inp["filename_prefix"].replace("RefAny3D", "RefAny3D_wiring_check", 1)
    return g


def provide_tiny_models(models_dir: Path) -> None:
    """The tiny random models of the wiring check (tools/tiny_models.py), written once."""
    use_comfy(default_comfy_dir(), cpu=True)  # only builds tensors on the CPU; the server picks its own device
    from . import tiny_models as tiny
    from .release_files import save_release_files

    tiny.provide_stock_models(models_dir)
    adapter = models_dir / "refany3d" / TINY_ADAPTER
    if not (adapter / "domain_embedder.pth").exists():
        save_release_files(adapter, 3072, 1, 1, rank=16, seed=5)


def model_paths_yaml(path: Path, user_models: Path, own_models: Path) -> Path:
    """Makes the server see the user's model folders (read only) besides its own."""
    keys = ["diffusion_models", "unet", "text_encoders", "clip", "vae", "refany3d"]
    lines = ["user_comfyui:", f"  base_path: {user_models}"] + [f"  {k}: {k}" for k in keys]
    lines += ["demo_own:", f"  base_path: {own_models}", "  refany3d: refany3d"]
    path.write_text("\n".join(lines) + "\n")
    return path


def run(server: ComfyServer, graph: dict, label: str, timeout: float) -> dict:
    """Runs ``graph``; returns {node_id: [Path, ...]} of saved images. Exits on failure."""
    last = {"t": 0.0}

    def progress(msg):
        data = msg.get("data") or {}
        if msg.get("type") == "progress" and time.monotonic() - last["t"] > 2:
            last["t"] = time.monotonic()
            node = graph.get(str(data.get("node"))) or {}
            title = (node.get("_meta") or {}).get("title") or node.get("class_type", "?")
            print(f"  {label}: {title} {data.get('value')}/{data.get('max')}", flush=True)

    started = time.monotonic()
    try:
        result = server.run(graph, timeout=timeout, on_message=progress)
    except PromptRejected as e:
        raise SystemExit(f"[demo] {label}: the server rejected the workflow: {e}") from None
    if result.status != "success":
        raise SystemExit(f"[demo] {label} failed: {result.error_text()}\n{server.log_text()[-3000:]}")
    print(f"[demo] {label}: done in {time.monotonic() - started:.1f} s", flush=True)
    return {nid: server.output_files(result, nid) for nid in result.outputs}


def files_by_prefix(graph: dict, files: dict, word: str) -> list[Path]:
    """Saved files of the SaveImage nodes whose filename prefix ends in ``word``."""
    out = []
    for nid, node in graph.items():
        if node["class_type"] == "SaveImage" and node["inputs"]["filename_prefix"].endswith(word):
            out += files.get(nid, [])
    return out


def contact_sheet(rows: list[tuple[str, list[Path]]], path: Path, banner: str | None, tile: int = 192) -> Path:
    from PIL import Image, ImageDraw, ImageFont

    try:
        font = ImageFont.load_default(size=18)
    except TypeError:
        font = ImageFont.load_default()
    label_h, top = 28, (40 if banner else 0)
    cols = max(len(files) for _, files in rows)
    sheet = Image.new("RGB", (cols * tile + 20, top + len(rows) * (tile + label_h) + 10), (245, 245, 245))
    d = ImageDraw.Draw(sheet)
    if banner:
        d.rectangle([0, 0, sheet.width, top - 4], fill=(200, 30, 30))
        d.text((10, 9), banner, fill=(255, 255, 255), font=font)
    y = top
    for label, files in rows:
        d.text((10, y + 4), label, fill=(20, 20, 20), font=font)
        for i, f in enumerate(files):
            with Image.open(f) as img:
                im = img.convert("RGB").resize((tile, tile), Image.NEAREST if img.width < tile else Image.LANCZOS)
            sheet.paste(im, (10 + i * tile, y + label_h))
        y += tile + label_h
    sheet.save(path)
    return path


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=PACK_ROOT / "demo_output", help="output folder (default demo_output/)")
    p.add_argument("--models", type=Path, default=None,
                   help="ComfyUI models folder with FLUX.1-dev and the RefAny3D files (default: <ComfyUI>/models)")
    p.add_argument("--prompt", default=None, help="prompt of the full generation")
    p.add_argument("--steps", type=int, default=28, help="sampling steps of the full generation (default 28)")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--wiring-check", action="store_true", help="always run the tiny-model wiring check")
    p.add_argument("--timeout", type=float, default=7200)
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    comfy_dir = default_comfy_dir()
    user_models = (args.models or comfy_dir / "models").resolve()
    out = args.out.resolve()
    base = out / "comfyui"
    (base / "models").mkdir(parents=True, exist_ok=True)
    print(f"[demo] ComfyUI: {comfy_dir}; models looked up in {user_models}; output in {out}", flush=True)
    inputs = write_example_inputs(base / "input")
    print(f"[demo] generated asset: {inputs['asset']}", flush=True)
    yaml = model_paths_yaml(base / "demo_model_paths.yaml", user_models, base / "models")

    server = ComfyServer(base, comfy_dir, extra_custom_nodes=[TEST_NODES],
                         extra_args=["--extra-model-paths-config", str(yaml)])
    try:
        server.start()
    except (ComfyError, FileNotFoundError) as e:
        raise SystemExit(f"[demo] could not start ComfyUI: {e}") from None
    try:
        render = load_api(RENDER_WORKFLOW)
        files = run(server, render, "render-only workflow", args.timeout)
        rows = [("References: RGB (release views 0°, 42°, 84°, …)", files_by_prefix(render, files, "/rgb")),
                ("References: point maps", files_by_prefix(render, files, "/point_map"))]
        info = server.object_info()
        missing = missing_files(info)
        if not missing and not args.wiring_check:
            full, files, label, banner = full_generation(server, info, args)
        else:
            full, files, label, banner = wiring_check(server, missing, user_models, base, args.timeout)
        results = (files_by_prefix(full, files, "/image") + files_by_prefix(full, files, "/point_map")
                   + files_by_prefix(full, files, "/mask"))
        rows.append((f"{label}: image | point map | mask", results))
        sheet = contact_sheet(rows, out / "contact_sheet.png", banner)
        print(f"[demo] contact sheet: {sheet}", flush=True)
        print(f"[demo] all outputs: {base / 'output'}", flush=True)
    finally:
        server.stop()
    return 0


def full_generation(server, info: dict, args) -> tuple[dict, dict, str, None]:
    """The example workflow on the user's FLUX.1-dev and RefAny3D files: (graph, files, label, no banner)."""
    full = load_api(FULL_WORKFLOW)
    for node in full.values():
        for _sub, cls, name, fname in REQUIRED:
            if node["class_type"] == cls:
                node["inputs"][name] = matching_value(info, cls, name, fname)
        if node["class_type"] == "KSampler":
            node["inputs"].update(steps=args.steps, seed=args.seed)
        if node["class_type"] == "CLIPTextEncode" and args.prompt:
            node["inputs"]["text"] = args.prompt
    print("[demo] FLUX.1-dev and the RefAny3D files found: running the full generation", flush=True)
    files = run(server, full, "full generation (asset to image)", args.timeout)
    return full, files, "Result", None


def wiring_check(server, missing: list, user_models: Path, base: Path, timeout: float) -> tuple[dict, dict, str, str]:
    """The whole graph on a tiny random Flux, naming the model files that are missing:
    (graph, files, label, banner)."""
    if missing:
        print("[demo] The full generation needs these files, which are missing:", flush=True)
        for sub, fname in missing:
            print(f"         {user_models / sub / fname}", flush=True)
        print("       (FLUX.1-dev: flux1-dev.safetensors, ae.safetensors; text encoders clip_l and "
              "t5xxl_fp16; RefAny3D: default.safetensors, coord.safetensors, domain_embedder.pth from "
              "the RefAny3D release.)", flush=True)
    print("[demo] Running the whole graph with a tiny RANDOM Flux as a WIRING CHECK "
          "(every node runs; the result is noise, not a picture)", flush=True)
    provide_tiny_models(base / "models")
    full = wiring_graph(load_api(FULL_WORKFLOW))
    files = run(server, full, "wiring check (tiny random model)", timeout)
    banner = "WIRING CHECK: tiny random Flux, not a picture. " + (
        f"{len(missing)} model file(s) missing, see the log." if missing else "")
    return full, files, "Wiring check (tiny random model, not a picture)", banner


if __name__ == "__main__":
    raise SystemExit(main())

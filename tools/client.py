"""Headless RefAny3D client: run an API-format workflow on a running ComfyUI and fetch the results.

It checks everything local first (workflow, settings, --out, the asset and the files it references),
uploads the asset with its sidecar files (an OBJ's .mtl and textures, a glTF's .bin and images) into
one folder of the server's input/3d, fills the workflow's settings (prompt, seed, steps, number of
views, image guidance, pitch, y rotation, the target camera, or any NODE.INPUT=VALUE), submits it through
POST /prompt, shows progress from the /ws stream (or polls /history when the websocket-client package is missing),
and downloads every output file into a folder.

Examples:

    python tools/client.py --asset box.glb --prompt "a toy box on a wooden desk" --out results/
    python tools/client.py --workflow example_workflows/api/refany3d_render_preview.json \\
        --asset chair.obj --views 4 --pitch 20 --out previews/
    python tools/client.py --server 10.0.0.5:8188 --set 12.text="..." --out results/
    python tools/client.py --workflow example_workflows/api/refany3d_camera_control.json --asset box.glb \\
        --camera-yaw 150 --camera-pitch 30 --camera-fill 0.8 --hold-strength 0.4 --out results/

Names never collide: the asset and its sidecars go to input/3d/refany3d_client/<first 16 hex digits
of the sha256 of their content>/ (the same content shares a folder; a different file of the same
name never replaces another), every filename_prefix gets a folder of its own per run, and files
already in --out are kept (a new download gets a -1, -2... suffix) unless --overwrite is given, and even
then only a file named by one of the workflow's own filename_prefix values is replaced: the server
names files, it never chooses which of yours are replaced. All outputs are downloaded before the first
is written; a failed write removes what this run wrote.

Exit status:
  0  the run succeeded and its outputs were downloaded
  1  the run failed on the server (the server's own message is printed)
  2  bad arguments or local input, found before anything is sent: a setting no node takes, a workflow
     that is not API format, an --asset that is missing or not .glb .gltf .obj .ply .stl .off, a file
     it references that is missing or outside its folder, --out naming a file, a --server that is
     not http(s)
  3  the server cannot be reached, or answers out of protocol: not JSON, a /ws that is not a websocket
     (a proxy answering 404), a connection closed mid-answer or mid-download, an output named with a
     path or '..' (nothing is then written to --out)
  4  rejected by the server: the workflow failed validation (its per-node messages are printed,
     also when only some outputs failed), an upload was refused (e.g. larger than the server's
     --max-upload-size), or model files the workflow loads are not on the server (each is named
     with its models/ folder); nothing is left queued
  5  timeout or interruption (the prompt is cancelled)
"""
from __future__ import annotations

import argparse
import copy
import itertools
import json
import os
import sys
import time
import uuid
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit

if __package__:  # python -m tools.client
    from .asset_refs import AssetBundle, AssetInputError, collect
    from .comfy_http import ComfyClient, ComfyError, PromptRejected, UploadRejected, normalize_url
else:  # python tools/client.py: this folder is first on sys.path
    from asset_refs import AssetBundle, AssetInputError, collect
    from comfy_http import ComfyClient, ComfyError, PromptRejected, UploadRejected, normalize_url

PACK_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_WORKFLOW = PACK_ROOT / "example_workflows" / "api" / "refany3d_asset_to_image.json"

EXIT_OK, EXIT_RUN_ERROR, EXIT_USAGE, EXIT_UNREACHABLE, EXIT_REJECTED, EXIT_TIMEOUT = 0, 1, 2, 3, 4, 5
#: what an answer no ComfyUI gives can raise in the code that reads it (the network errors are ComfyError)
OUT_OF_PROTOCOL = (ValueError, KeyError, TypeError, AttributeError, IndexError)

# setting -> [(class_type, input name)]: every node of these classes in the workflow gets the value
TARGETS = {
    "seed": [("KSampler", "seed"), ("KSamplerAdvanced", "noise_seed"), ("RandomNoise", "noise_seed")],
    "steps": [("KSampler", "steps"), ("KSamplerAdvanced", "steps"), ("BasicScheduler", "steps")],
    "views": [("RefAny3DRenderViews", "num_views")],
    "image_guidance": [("RefAny3DApply", "image_guidance")],
    "pitch": [("RefAny3DRenderViews", "pitch")],
    "y_rotation": [("RefAny3DRenderViews", "y_rotation")],
    "asset": [("RefAny3DLoadAsset", "asset_file")],
    # the target camera of the 'choose the camera' example (RefAny3D Target Camera, Hold Point Map)
    "camera_yaw": [("RefAny3DTargetCamera", "yaw")],
    "camera_pitch": [("RefAny3DTargetCamera", "pitch")],
    "camera_fov": [("RefAny3DTargetCamera", "fov")],
    "camera_fill": [("RefAny3DTargetCamera", "fill")],
    "camera_x": [("RefAny3DTargetCamera", "x")],
    "camera_y": [("RefAny3DTargetCamera", "y")],
    "hold_strength": [("RefAny3DHoldPointMap", "strength")],
}
#: the settings given by a flag of the same name (--image-guidance for image_guidance), in TARGETS' order
FLAG_SETTINGS = ("seed", "steps", "views", "image_guidance", "pitch", "y_rotation", "camera_yaw", "camera_pitch",
                 "camera_fov", "camera_fill", "camera_x", "camera_y", "hold_strength")
SAMPLERS = {"KSampler": "positive", "KSamplerAdvanced": "positive", "CFGGuider": "positive",
            "BasicGuider": "conditioning"}
TEXT_ENCODERS = {"CLIPTextEncode": "text", "CLIPTextEncodeFlux": "t5xxl"}
# loader class -> {input: models sub-folder}: the files checked on the server before anything is sent
MODEL_INPUTS = {
    "UNETLoader": {"unet_name": "diffusion_models"},
    "DualCLIPLoader": {"clip_name1": "text_encoders", "clip_name2": "text_encoders"},
    "CLIPLoader": {"clip_name": "text_encoders"},
    "VAELoader": {"vae_name": "vae"},
    "CheckpointLoaderSimple": {"ckpt_name": "checkpoints"},
    "LoraLoader": {"lora_name": "loras"},
    "LoraLoaderModelOnly": {"lora_name": "loras"},
    "RefAny3DLoadAdapter": {"reference_lora": "refany3d", "domain_lora": "refany3d", "domain_embedder": "refany3d"},
}
UPLOAD_FOLDER = "3d/refany3d_client"  # under the server's input folder


class UsageError(Exception):
    """A setting that the workflow cannot take."""


class OutputNameError(ComfyError):
    """An output record whose file name is not a plain name (a path, '..')."""


class UploadConflict(ComfyError):
    """The server already holds a different file where an upload was to go."""


# ComfyClient.submit itself refuses a partly valid graph (HTTP 200 with node_errors); kept for callers
StrictClient = ComfyClient


def load_api_workflow(path: Path) -> dict:
    """An API-format graph from ``path``; a UI-format example is swapped for its api/ twin."""
    data = json.loads(Path(path).read_text())
    if isinstance(data, dict) and isinstance(data.get("nodes"), list):
        twin = Path(path).parent / "api" / Path(path).name
        if twin.exists():
            return json.loads(twin.read_text())
        raise UsageError(f"{path} is a UI (editor) workflow; the API accepts only API-format graphs "
                         "(ComfyUI: Workflow > Export (API))")
    if isinstance(data, dict) and "prompt" in data and isinstance(data["prompt"], dict):
        data = data["prompt"]
    if not isinstance(data, dict) or not all(isinstance(n, dict) and "class_type" in n for n in data.values()):
        raise UsageError(f"{path} is not an API-format ComfyUI workflow")
    return data


def set_on_class(graph: dict, setting: str, value) -> list[str]:
    """Sets ``value`` on every node input that ``setting`` maps to; returns the node ids changed."""
    changed = []
    for node_id, node in graph.items():
        for class_type, name in TARGETS[setting]:
            if node["class_type"] == class_type:
                node.setdefault("inputs", {})[name] = value
                changed.append(node_id)
    if not changed:
        classes = ", ".join(sorted({c for c, _ in TARGETS[setting]}))
        raise UsageError(f"--{setting.replace('_', '-')} was given but the workflow has no node that takes it "
                         f"(looked for {classes})")
    return changed


def prompt_nodes(graph: dict) -> list[str]:
    """Ids of the text encoders feeding a sampler's positive conditioning (through any chain of nodes)."""
    found, seen = [], set()
    stack = [node["inputs"][inp] for node in graph.values() for cls, inp in SAMPLERS.items()
             if node["class_type"] == cls and isinstance(node.get("inputs", {}).get(inp), list)]
    while stack:
        link = stack.pop()
        node_id = str(link[0])
        if node_id in seen or node_id not in graph:
            continue
        seen.add(node_id)
        node = graph[node_id]
        if node["class_type"] in TEXT_ENCODERS:
            found.append(node_id)
            continue
        stack += [v for v in node.get("inputs", {}).values() if isinstance(v, list) and len(v) == 2]
    if not found:
        found = [i for i, n in graph.items() if n["class_type"] in TEXT_ENCODERS]
        if len(found) != 1:
            found = []
    return sorted(found)


def parse_value(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def apply_settings(graph: dict, args, asset_name: str | None) -> dict:
    graph = copy.deepcopy(graph)
    if args.prompt is not None:
        ids = prompt_nodes(graph)
        if not ids:
            raise UsageError("--prompt was given but the workflow has no text encoder (CLIPTextEncode) "
                             "feeding a sampler's positive input")
        for node_id in ids:
            graph[node_id]["inputs"][TEXT_ENCODERS[graph[node_id]["class_type"]]] = args.prompt
    for setting in FLAG_SETTINGS:
        value = getattr(args, setting)
        if value is not None:
            set_on_class(graph, setting, value)
    if asset_name is not None:
        set_on_class(graph, "asset", asset_name)
    for item in args.set or []:
        target, sep, value = item.partition("=")
        node_id, dot, name = target.partition(".")
        if not sep or not dot or not name:
            raise UsageError(f"--set {item!r}: expected NODE_ID.INPUT=VALUE")
        if node_id not in graph:
            raise UsageError(f"--set {item!r}: the workflow has no node {node_id!r} (ids: {', '.join(graph)})")
        graph[node_id].setdefault("inputs", {})[name] = parse_value(value)
    return graph


class Progress:
    """Prints the /ws stream as short lines on stderr."""

    def __init__(self, graph: dict, stream=sys.stderr):
        self.graph, self.stream = graph, stream
        self.last_line = ""

    def _name(self, node_id) -> str:
        node = self.graph.get(str(node_id)) or {}
        title = (node.get("_meta") or {}).get("title") or node.get("class_type", "?")
        return f"{title} (node {node_id})"

    def __call__(self, msg: dict) -> None:
        kind, data = msg.get("type"), msg.get("data") or {}
        line = None
        if kind == "execution_start":
            line = "started"
        elif kind == "execution_cached" and data.get("nodes"):
            line = f"cached: {', '.join(str(n) for n in data['nodes'])}"
        elif kind == "executing" and data.get("node") is not None:
            line = f"running {self._name(data['node'])}"
        elif kind == "progress":
            line = f"  {self._name(data.get('node'))}: {data.get('value')}/{data.get('max')}"
        elif kind == "execution_success":
            line = "finished"
        if line and line != self.last_line:
            print(line, file=self.stream, flush=True)
            self.last_line = line


def server_url(text: str) -> str:
    """The --server address as a URL: ``host:port`` means ``http://host:port``."""
    url = normalize_url(text)
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise UsageError(f"--server {text!r}: give ComfyUI's address as http://HOST:PORT (or https://…)")
    return url


def check_out_dir(out: Path) -> None:
    """--out must be a folder, or creatable as one; checked before anything is sent."""
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} is an existing file: name a folder for the outputs (it is created if "
                         "missing)")
    parent = out
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise UsageError(f"--out {out}: {parent} is a file, so the folder cannot be created; name another folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UsageError(f"--out {out}: no permission to write in {parent}")


def upload_folder(bundle: AssetBundle) -> str:
    """The asset's folder on the server (under input/): named by the content of all its files."""
    return f"{UPLOAD_FOLDER}/{bundle.digest()[:16]}"


def unique_prefixes(graph: dict, run_id: str) -> None:
    """Every filename_prefix gets a folder of this run: 'RefAny3D/image' -> 'RefAny3D/<run_id>/image'."""
    for node in graph.values():
        inputs = node.get("inputs") or {}
        prefix = inputs.get("filename_prefix")
        if isinstance(prefix, str):
            head, sep, tail = prefix.rpartition("/")
            inputs["filename_prefix"] = f"{head}/{run_id}/{tail}" if sep else f"{run_id}/{prefix}"


def combo_values(info: dict, node_class: str, name: str) -> list | None:
    """The options of a combo input from /object_info; None when the input is not a combo."""
    spec = (info.get(node_class, {}).get("input", {}).get("required", {}).get(name)
            or info.get(node_class, {}).get("input", {}).get("optional", {}).get(name))
    if not spec:
        return None
    if isinstance(spec[0], list):
        return spec[0]
    options = (spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}).get("options")
    return options if isinstance(options, list) else None


def missing_model_files(client: ComfyClient, graph: dict) -> list[str]:
    """'models/<folder>/<file> (node N Class.input)' for each model file the graph loads that the
    server does not list, the RefAny3D adapter files included (its node checks them only when it
    runs)."""
    missing, infos = [], {}
    for node_id, node in sorted(graph.items(), key=lambda kv: (len(kv[0]), kv[0])):
        cls = node.get("class_type")
        if cls not in MODEL_INPUTS:
            continue
        if cls not in infos:
            infos[cls] = client.object_info(cls)
        if cls not in infos[cls]:
            continue  # not installed: the server's validation names it
        for name, folder in MODEL_INPUTS[cls].items():
            value = (node.get("inputs") or {}).get(name)
            options = combo_values(infos[cls], cls, name)
            if not isinstance(value, str) or options is None:
                continue
            if value not in options and value.replace("\\", "/") not in [str(o).replace("\\", "/") for o in options]:
                missing.append(f"models/{folder}/{value} (node {node_id}, {cls}.{name})")
    return missing


def upload_bundle(client: ComfyClient, bundle: AssetBundle, folder: str) -> str:
    """Uploads the asset and its sidecars into ``folder`` (their relative layout kept), the largest
    first: a file the server refuses as too large is refused before anything is written. Never
    overwrites: the same file already there is kept; a different one is an UploadConflict."""
    for rel in sorted(bundle.files, key=lambda r: (-bundle.files[r].stat().st_size, r)):
        parent = PurePosixPath(rel).parent.as_posix()
        subfolder = folder if parent == "." else f"{folder}/{parent}"
        expected = f"{subfolder}/{PurePosixPath(rel).name}"
        got = client.upload(bundle.files[rel], subfolder=subfolder, overwrite=False)
        if got != expected:
            raise UploadConflict(
                f"the server already holds a different file at input/{expected} (the upload was kept as "
                f"input/{got}); remove that folder from the server's input/{UPLOAD_FOLDER} and run again")
    return f"{folder}/{bundle.asset.name}"


def output_records(result, include_temp: bool = False) -> list[dict]:
    records = []
    outputs = result.outputs if isinstance(result.outputs, dict) else {}
    for _node_id, node_outputs in sorted(outputs.items(), key=lambda kv: str(kv[0])):
        for recs in (node_outputs.values() if isinstance(node_outputs, dict) else []):
            if not isinstance(recs, list):
                continue
            for rec in recs:
                if not isinstance(rec, dict) or "filename" not in rec:
                    continue
                if rec.get("type", "output") != "output" and not include_temp:
                    continue
                records.append(rec)
    return records


def output_name(rec: dict) -> str:
    """The file name an output record gives, when it is a plain name; else OutputNameError (nothing is then
    downloaded or written): the server names a file, never a place in --out."""
    name = rec.get("filename")
    if not isinstance(name, str) or not name or name in (".", "..") or name.startswith(".") \
            or any(c in name for c in "/\\\x00:") or name != name.strip():
        raise OutputNameError(f"the server named an output {str(name)[:80]!r}, which is not a plain file name (a "
                              "path, '..', a hidden or empty name): nothing was downloaded or written")
    return name


def prefix_names(graph: dict) -> tuple[str, ...]:
    """The file-name starts the workflow's own filename_prefix values give (the part after the last '/')."""
    return tuple(sorted({p.rpartition("/")[2] for n in graph.values()
                         if isinstance(p := (n.get("inputs") or {}).get("filename_prefix"), str) and p}))


def save_file(out_dir: Path, name: str, data: bytes, overwrite: bool = False) -> Path:
    """Writes ``data`` as ``out_dir/name`` in one step (a temporary file, then a rename or link): no
    half-written file, and without ``overwrite`` an existing file is kept and the new one gets the
    first free name ``stem-1.ext``, ``stem-2.ext``…"""
    tmp = out_dir / f".{name}.{uuid.uuid4().hex[:8]}.part"
    tmp.write_bytes(data)
    try:
        if overwrite:
            os.replace(tmp, out_dir / name)
            return out_dir / name
        stem, suffix = os.path.splitext(name)
        for n in itertools.count():
            target = out_dir / (name if n == 0 else f"{stem}-{n}{suffix}")
            try:
                os.link(tmp, target)  # fails if the target exists: never replaces a file
                return target
            except FileExistsError:
                continue
            except OSError:  # no hard links on this file system
                if target.exists():
                    continue
                os.replace(tmp, target)
                return target
    finally:
        tmp.unlink(missing_ok=True)


def download_outputs(client: ComfyClient, result, out_dir: Path, include_temp: bool = False,
                     overwrite: bool = False, prefixes: tuple[str, ...] = ()) -> list[Path]:
    """Downloads every output file, then writes them all into ``out_dir`` (created now): a failed
    download, a name that is not a plain file name, or a failed write leaves nothing behind. With
    ``overwrite`` only a file named by the workflow's own ``prefixes`` (and not already written by this run)
    replaces one of the same name; any other name the server gives is kept beside as ``name-1.ext``."""
    records = output_records(result, include_temp)
    names = [output_name(rec) for rec in records]
    blobs = [(name, client.download(rec)) for name, rec in zip(names, records)]
    out_dir.mkdir(parents=True, exist_ok=True)
    saved: list[Path] = []
    try:
        for name, data in blobs:
            replace = overwrite and bool(prefixes) and name.startswith(prefixes) and out_dir / name not in saved
            path = save_file(out_dir, name, data, replace)
            if path.name != name:
                why = "--overwrite replaces" if not overwrite else "the name is not one the workflow's prefixes give"
                print(f"kept the existing {out_dir / name}; saved the new one as {path.name} ({why})", file=sys.stderr)
            saved.append(path)
    except OSError:
        for path in saved:
            path.unlink(missing_ok=True)
        raise
    return saved


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python tools/client.py", description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--server", default="http://127.0.0.1:8188", help="ComfyUI address (default %(default)s)")
    p.add_argument("--workflow", type=Path, default=DEFAULT_WORKFLOW,
                   help="API-format workflow (default: example_workflows/api/refany3d_asset_to_image.json); "
                        "a UI example is replaced by its api/ twin")
    p.add_argument("--asset", type=Path,
                   help="3D file (.glb .gltf .obj .ply .stl .off) to load in every RefAny3D Load 3D Asset node; "
                        "uploaded with the files it references (OBJ: .mtl and textures; glTF: .bin and images) "
                        "to input/3d/refany3d_client/<content hash>/")
    p.add_argument("--prompt", help="text prompt (the text encoder feeding the sampler's positive input)")
    p.add_argument("--seed", type=int, help="noise seed (KSampler / RandomNoise)")
    p.add_argument("--steps", type=int, help="sampling steps (release: 28)")
    p.add_argument("--views", type=int, help="number of reference views (release: 8)")
    p.add_argument("--image-guidance", dest="image_guidance", type=float,
                   help="RefAny3D image guidance scale (release: 2.0)")
    p.add_argument("--pitch", type=float, help="camera pitch of the reference views in degrees (release: 0)")
    p.add_argument("--y-rotation", dest="y_rotation", type=float,
                   help="rotation of the point-map frame about +Y in degrees (steers the generated view)")
    camera = p.add_argument_group(
        "target camera", "for workflows with RefAny3D Target Camera and Hold Point Map (example_workflows/api/"
        "refany3d_camera_control.json): the camera to generate from, chosen before generating")
    camera.add_argument("--camera-yaw", dest="camera_yaw", type=float,
                        help="the side the asset is seen from, degrees about the vertical (0: from +X, 90: from +Z)")
    camera.add_argument("--camera-pitch", dest="camera_pitch", type=float,
                        help="degrees above (positive) or below the asset")
    camera.add_argument("--camera-fov", dest="camera_fov", type=float, help="vertical field of view in degrees")
    camera.add_argument("--camera-fill", dest="camera_fill", type=float,
                        help="share of the picture's height the asset's bounding sphere spans (0.05..1)")
    camera.add_argument("--camera-x", dest="camera_x", type=float,
                        help="where the asset's centre appears, left (-1) to right (1)")
    camera.add_argument("--camera-y", dest="camera_y", type=float,
                        help="where the asset's centre appears, bottom (-1) to top (1)")
    camera.add_argument("--hold-strength", dest="hold_strength", type=float,
                        help="share of the sampling steps the point map is held to the target (0..1; experimental)")
    p.add_argument("--set", action="append", metavar="NODE_ID.INPUT=VALUE",
                   help="set any input of any node (VALUE is parsed as JSON when it can be); repeatable")
    p.add_argument("--out", type=Path, default=Path("refany3d_output"),
                   help="folder for the downloaded outputs (default %(default)s); existing files are kept")
    p.add_argument("--overwrite", action="store_true",
                   help="replace files of the same name in --out (default: keep them, save the new one as name-1.ext)")
    p.add_argument("--timeout", type=float, default=3600.0, help="seconds to wait for the run (default %(default)s)")
    p.add_argument("--include-temp", action="store_true", help="also download temporary previews")
    p.add_argument("--dry-run", action="store_true", help="print the filled workflow as JSON and exit")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    return p


def fail(code: int, text: str) -> int:
    print(f"error: {text}", file=sys.stderr, flush=True)
    return code


def prepare(args):
    """Everything local, before anything is sent: the filled workflow, the asset bundle and its server
    folder (None without --asset), the server's URL. UsageError, AssetInputError or OSError otherwise."""
    url = server_url(args.server)
    check_out_dir(args.out)
    bundle = folder = None
    if args.asset is not None:
        bundle = collect(args.asset)
        folder = upload_folder(bundle)
    filled = apply_settings(args.graph, args, f"{folder}/{bundle.asset.name}" if bundle else None)
    unique_prefixes(filled, time.strftime("client-%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:8])
    return filled, bundle, folder, url


def upload_and_run(client: ComfyClient, args, filled: dict, bundle, folder):
    """Checks the server has the model files, uploads the asset, queues the workflow and follows it to
    its end; a timeout or Ctrl-C cancels our prompt. Returns the run's result or an exit code."""
    client.object_info("KSampler")
    missing = missing_model_files(client, filled)
    if missing:
        return fail(EXIT_REJECTED, "the server does not have the model files this workflow loads (nothing was "
                                   "uploaded or queued); put them in these folders of its ComfyUI and run "
                                   "again:\n  " + "\n  ".join(missing))
    if bundle:
        asset_name = upload_bundle(client, bundle, folder)
        extra = f" with {len(bundle.sidecars)} file(s) it references ({', '.join(bundle.sidecars)})" \
            if bundle.sidecars else ""
        print(f"uploaded {args.asset}{extra} as {asset_name}", file=sys.stderr)
    if not args.quiet and not have_websocket():
        print("websocket-client is not installed: following the run by polling /history "
              "(no step-by-step progress)", file=sys.stderr)
    submitted: list[str] = []

    def on_submitted(prompt_id: str) -> None:
        submitted.append(prompt_id)
        print(f"queued prompt {prompt_id}", file=sys.stderr, flush=True)

    try:
        return client.run(filled, timeout=args.timeout, on_message=None if args.quiet else Progress(filled),
                          on_submitted=on_submitted)
    except (TimeoutError, KeyboardInterrupt):
        cancel(client, submitted)
        raise


def run_on_server(client: ComfyClient, args, filled: dict, bundle, folder, url: str):
    """upload_and_run with every way it can fail as its exit code and one line."""
    try:
        return upload_and_run(client, args, filled, bundle, folder)
    except PromptRejected as e:
        return fail(EXIT_REJECTED, f"the server rejected the workflow (nothing runs): {e}")
    except (UploadRejected, UploadConflict) as e:
        return fail(EXIT_REJECTED, f"{e} (nothing was queued)")
    except TimeoutError as e:
        return fail(EXIT_TIMEOUT, f"{e}; the prompt was cancelled")
    except KeyboardInterrupt:
        return fail(EXIT_TIMEOUT, "stopped by the user; the prompt was cancelled")
    except ComfyError as e:
        return fail(EXIT_UNREACHABLE, str(e))
    except OUT_OF_PROTOCOL as e:  # an answer no ComfyUI gives: one line, not a traceback
        return fail(EXIT_UNREACHABLE, f"ComfyUI at {url} answered out of protocol ({type(e).__name__}: "
                                      f"{str(e)[:200]})")


def run_outcome(result, url: str) -> int | None:
    """The exit code of a run that did not succeed (its server's message printed); None on success."""
    if not isinstance(result.status, str) or result.status not in ("success", "error", "interrupted"):
        return fail(EXIT_UNREACHABLE, f"ComfyUI at {url} reported the run's end out of protocol")
    if result.status == "error":
        err = result.error or {}
        text = result.error_text()
        tb = err.get("traceback") or []
        if tb:
            text += "\n" + "".join(tb[-3:]).rstrip()
        return fail(EXIT_RUN_ERROR, f"the run failed on the server: {text}")
    if result.status == "interrupted":
        return fail(EXIT_TIMEOUT, "the run was interrupted on the server")
    return None


def fetch_outputs(client: ComfyClient, args, result, filled: dict, url: str):
    """Downloads the outputs into --out; the saved paths, or an exit code (nothing left in --out)."""
    try:
        return download_outputs(client, result, args.out, args.include_temp, args.overwrite, prefix_names(filled))
    except OutputNameError as e:
        return fail(EXIT_UNREACHABLE, str(e))
    except ComfyError as e:
        return fail(EXIT_UNREACHABLE, f"{e} (nothing was written to {args.out})")
    except OSError as e:
        return fail(EXIT_RUN_ERROR, f"could not write the outputs into {args.out} (nothing was left there): {e}")
    except OUT_OF_PROTOCOL as e:
        return fail(EXIT_UNREACHABLE, f"ComfyUI at {url} answered out of protocol ({type(e).__name__}: "
                                      f"{str(e)[:200]}); nothing was written to {args.out}")


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.graph = load_api_workflow(args.workflow)
    except (OSError, ValueError, UsageError) as e:
        return fail(EXIT_USAGE, f"cannot use workflow {args.workflow}: {e}")
    try:
        filled, bundle, folder, url = prepare(args)
    except (UsageError, AssetInputError, OSError) as e:
        return fail(EXIT_USAGE, str(e))
    if args.dry_run:
        print(json.dumps(filled, indent=2))
        return EXIT_OK
    client = ComfyClient(url)
    started = time.monotonic()
    result = run_on_server(client, args, filled, bundle, folder, url)
    if isinstance(result, int):
        return result
    code = run_outcome(result, url)
    if code is not None:
        return code
    saved = fetch_outputs(client, args, result, filled, url)
    if isinstance(saved, int):
        return saved
    print(f"done in {time.monotonic() - started:.1f} s; {len(saved)} file(s) in {args.out}", file=sys.stderr)
    for line in pose_scores(result):
        print(line, file=sys.stderr)
    for path in saved:
        print(path)
    return EXIT_OK


def pose_scores(result) -> list[str]:
    """One line per image that RefAny3D Read Pose scored in this run (the camera read from the point map)."""
    lines = []
    for node_id, outputs in sorted(result.outputs.items(), key=lambda kv: kv[0]):
        for i, pose in enumerate(outputs.get("refany3d_pose") or []):
            if pose is None:
                lines.append(f"read pose (node {node_id}) image {i}: no camera could be read (score 0)")
                continue
            sc = pose["scores"]
            line = (f"read pose (node {node_id}) image {i}: score {sc['score']:.3f} (mask IoU {sc['iou']:.3f}, "
                    f"median 3D error {sc['median_error_pct']:.2f} %, vertical fov {pose['pack']['fov_deg']:.1f}°)")
            distance = pose.get("target_distance")
            if distance:
                line += (f"; {distance['rotation_deg']:.1f}° and {distance['position_pct']:.1f} % from the target "
                         f"camera, fov {distance['fov_deg']:+.1f}°")
            lines.append(line)
    return lines


def have_websocket() -> bool:
    try:
        import websocket  # noqa: F401  (websocket-client)
    except ImportError:
        return False
    return True


def cancel(client: ComfyClient, prompt_ids: list[str]) -> None:
    """Stops our own prompts only: dropped from the queue, or interrupted if running."""
    for prompt_id in prompt_ids:
        client.cancel(prompt_id)


if __name__ == "__main__":
    raise SystemExit(main())

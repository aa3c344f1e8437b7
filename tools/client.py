"""Headless RefAny3D client: run an API-format workflow on a running ComfyUI and fetch the results.

It uploads a 3D asset to the server's input/3d folder, fills the workflow's settings (prompt, seed,
steps, number of views, image guidance, pitch, y rotation, or any NODE.INPUT=VALUE), submits it
through POST /prompt, shows progress from the /ws stream (or polls /history when the
websocket-client package is missing), and downloads every output file into a folder.

Examples:

    python tools/client.py --asset box.glb --prompt "a toy box on a wooden desk" --out results/
    python tools/client.py --workflow example_workflows/api/refany3d_render_preview.json \\
        --asset box.glb --views 4 --pitch 20 --out previews/
    python tools/client.py --server http://10.0.0.5:8188 --set 12.text="..." --out results/

Exit status: 0 when the run succeeded; 1 when the server reported an execution error (its own
message is printed); 2 for bad arguments (argparse) or a setting that no node of the workflow takes;
3 when the server cannot be reached; 4 when the server rejected the workflow at validation (its
per-node messages are printed); 5 on timeout or interruption.
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

if __package__:  # python -m tools.client
    from .comfy_http import ComfyClient, ComfyError, PromptRejected
else:  # python tools/client.py: this folder is first on sys.path
    from comfy_http import ComfyClient, ComfyError, PromptRejected

PACK_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_WORKFLOW = PACK_ROOT / "example_workflows" / "api" / "refany3d_asset_to_image.json"

EXIT_OK, EXIT_RUN_ERROR, EXIT_USAGE, EXIT_UNREACHABLE, EXIT_REJECTED, EXIT_TIMEOUT = 0, 1, 2, 3, 4, 5

# setting -> [(class_type, input name)]: every node of these classes in the workflow gets the value
TARGETS = {
    "seed": [("KSampler", "seed"), ("KSamplerAdvanced", "noise_seed"), ("RandomNoise", "noise_seed")],
    "steps": [("KSampler", "steps"), ("KSamplerAdvanced", "steps"), ("BasicScheduler", "steps")],
    "views": [("RefAny3DRenderViews", "num_views")],
    "image_guidance": [("RefAny3DApply", "image_guidance")],
    "pitch": [("RefAny3DRenderViews", "pitch")],
    "y_rotation": [("RefAny3DRenderViews", "y_rotation")],
    "asset": [("RefAny3DLoadAsset", "asset_file")],
}
SAMPLERS = {"KSampler": "positive", "KSamplerAdvanced": "positive", "CFGGuider": "positive",
            "BasicGuider": "conditioning"}
TEXT_ENCODERS = {"CLIPTextEncode": "text", "CLIPTextEncodeFlux": "t5xxl"}


class UsageError(Exception):
    """A setting that the workflow cannot take."""


class StrictClient(ComfyClient):
    """A ComfyClient whose submit() also refuses a partly valid graph.

    ComfyUI answers 200 and runs the outputs that validated when only some output nodes fail
    validation; their errors come back in ``node_errors``. A scripted run wants all of its outputs,
    so such a prompt is taken off the queue again and reported like a rejected one."""

    def submit(self, graph: dict) -> str:
        status, body = self._json("POST", "/prompt", {"prompt": graph, "client_id": self.client_id})
        if status == 200 and isinstance(body, dict) and body.get("node_errors"):
            cancel(self, [body.get("prompt_id")])
            raise PromptRejected(status, body)
        if status == 400:
            raise PromptRejected(status, body)
        if status != 200:
            raise ComfyError(f"POST /prompt answered {status}: {body}")
        return body["prompt_id"]


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
    for setting in ("seed", "steps", "views", "image_guidance", "pitch", "y_rotation"):
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


def download_outputs(client: ComfyClient, result, out_dir: Path, include_temp: bool = False) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    saved = []
    for _node_id, outputs in sorted(result.outputs.items(), key=lambda kv: kv[0]):
        for records in outputs.values():
            if not isinstance(records, list):
                continue
            for rec in records:
                if not isinstance(rec, dict) or "filename" not in rec:
                    continue
                if rec.get("type", "output") != "output" and not include_temp:
                    continue
                target = out_dir / Path(rec["filename"]).name
                target.write_bytes(client.download(rec))
                saved.append(target)
    return saved


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python tools/client.py", description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--server", default="http://127.0.0.1:8188", help="ComfyUI address (default %(default)s)")
    p.add_argument("--workflow", type=Path, default=DEFAULT_WORKFLOW,
                   help="API-format workflow (default: example_workflows/api/refany3d_asset_to_image.json); "
                        "a UI example is replaced by its api/ twin")
    p.add_argument("--asset", type=Path, help="3D file (.glb .gltf .obj .ply .stl) to upload to input/3d and "
                                              "load in every RefAny3D Load 3D Asset node")
    p.add_argument("--prompt", help="text prompt (the text encoder feeding the sampler's positive input)")
    p.add_argument("--seed", type=int, help="noise seed (KSampler / RandomNoise)")
    p.add_argument("--steps", type=int, help="sampling steps (release: 28)")
    p.add_argument("--views", type=int, help="number of reference views (release: 8)")
    p.add_argument("--image-guidance", dest="image_guidance", type=float,
                   help="RefAny3D image guidance scale (release: 2.0)")
    p.add_argument("--pitch", type=float, help="camera pitch of the reference views in degrees (release: 0)")
    p.add_argument("--y-rotation", dest="y_rotation", type=float,
                   help="rotation of the point-map frame about +Y in degrees (steers the generated view)")
    p.add_argument("--set", action="append", metavar="NODE_ID.INPUT=VALUE",
                   help="set any input of any node (VALUE is parsed as JSON when it can be); repeatable")
    p.add_argument("--out", type=Path, default=Path("refany3d_output"),
                   help="folder for the downloaded outputs (default %(default)s)")
    p.add_argument("--timeout", type=float, default=3600.0, help="seconds to wait for the run (default %(default)s)")
    p.add_argument("--include-temp", action="store_true", help="also download temporary previews")
    p.add_argument("--dry-run", action="store_true", help="print the filled workflow as JSON and exit")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    return p


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)

    def fail(code: int, text: str) -> int:
        print(f"error: {text}", file=sys.stderr, flush=True)
        return code

    try:
        graph = load_api_workflow(args.workflow)
    except (OSError, ValueError, UsageError) as e:
        return fail(EXIT_USAGE, f"cannot use workflow {args.workflow}: {e}")
    if args.asset is not None and not args.asset.is_file():
        return fail(EXIT_USAGE, f"asset file {args.asset} does not exist")
    if args.dry_run:
        try:
            filled = apply_settings(graph, args, f"3d/{args.asset.name}" if args.asset else None)
        except UsageError as e:
            return fail(EXIT_USAGE, str(e))
        print(json.dumps(filled, indent=2))
        return EXIT_OK

    client = StrictClient(args.server)
    try:
        client.object_info("KSampler")
        asset_name = client.upload(args.asset, subfolder="3d") if args.asset else None
        if asset_name:
            print(f"uploaded {args.asset} as {asset_name}", file=sys.stderr)
        filled = apply_settings(graph, args, asset_name)
        if not args.quiet and not have_websocket():
            print("websocket-client is not installed: following the run by polling /history "
                  "(no step-by-step progress)", file=sys.stderr)
        started = time.monotonic()
        submitted: list[str] = []

        def on_submitted(prompt_id: str) -> None:
            submitted.append(prompt_id)
            print(f"queued prompt {prompt_id}", file=sys.stderr, flush=True)

        try:
            result = client.run(filled, timeout=args.timeout, on_message=None if args.quiet else Progress(filled),
                                on_submitted=on_submitted)
        except (TimeoutError, KeyboardInterrupt):
            cancel(client, submitted)
            raise
    except UsageError as e:
        return fail(EXIT_USAGE, str(e))
    except PromptRejected as e:
        return fail(EXIT_REJECTED, f"the server rejected the workflow: {e}")
    except TimeoutError as e:
        return fail(EXIT_TIMEOUT, f"{e}; the prompt was cancelled")
    except KeyboardInterrupt:
        return fail(EXIT_TIMEOUT, "stopped by the user; the prompt was cancelled")
    except ComfyError as e:
        return fail(EXIT_UNREACHABLE, str(e))

    if result.status == "error":
        err = result.error or {}
        text = result.error_text()
        tb = err.get("traceback") or []
        if tb:
            text += "\n" + "".join(tb[-3:]).rstrip()
        return fail(EXIT_RUN_ERROR, f"the run failed on the server: {text}")
    if result.status == "interrupted":
        return fail(EXIT_TIMEOUT, "the run was interrupted on the server")
    try:
        saved = download_outputs(client, result, args.out, args.include_temp)
    except ComfyError as e:
        return fail(EXIT_UNREACHABLE, str(e))
    print(f"done in {time.monotonic() - started:.1f} s; {len(saved)} file(s) in {args.out}", file=sys.stderr)
    for path in saved:
        print(path)
    return EXIT_OK


def have_websocket() -> bool:
    try:
        import websocket  # noqa: F401  (websocket-client)
    except ImportError:
        return False
    return True


def cancel(client: ComfyClient, prompt_ids: list[str]) -> None:
    """Stops our own prompt only: dropped from the queue, or interrupted if it is running."""
    for prompt_id in prompt_ids:
        try:
            client._json("POST", "/queue", {"delete": [prompt_id]})
            client._json("POST", "/interrupt", {"prompt_id": prompt_id})
        except ComfyError:
            pass


if __name__ == "__main__":
    raise SystemExit(main())

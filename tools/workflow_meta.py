"""What ComfyUI's frontend reads from the nodes of a workflow besides the graph: where each model file
comes from and which node pack each node belongs to.

- ``properties.models`` on a loader node: a list of ``{name, url, directory}``, one per model file its
  widgets name. When the file is not in that ``models/<directory>/`` folder, the frontend's
  missing-models list offers Download (the URL must be a Hugging Face or Civitai download, the name
  end in .safetensors/.sft, or .pth/.pt in newer frontends) instead of only "Copy model name".
- ``properties.cnr_id`` / ``ver``: the registry id and version of the pack a node comes from
  (``comfy-core`` and a ComfyUI version for core nodes), as in ComfyUI's own templates; ComfyUI-Manager
  reads them to offer the right pack for a missing node.

:func:`with_metadata` is a pure function of a UI-format workflow; ``tools.make_workflows`` applies
it to every workflow it builds, and ``python -m tools.workflow_meta`` re-applies it in place to every
workflow in example_workflows/ (``--check`` only reports the files it would change).
:func:`declared_inputs_only` keeps the API twins to the inputs the server declares.
"""
from __future__ import annotations

import argparse
import copy
import json
import tomllib
from dataclasses import dataclass
from pathlib import Path

from .comfy_env import PACK_ROOT


@dataclass(frozen=True)
class ModelFile:
    name: str       # the file name the loader's widget shows
    directory: str  # the ComfyUI models/ sub-folder it goes in
    url: str        # its public download
    what: str       # one line for people


HF = "https://huggingface.co"
RELEASE_REPO = f"{HF}/JudgementH/RefAny3D/resolve/main"  # the authors' release: three files at the top level

#: Every model file an example workflow names, in one place: the workflows' properties.models, the
#: README's weights table and pyproject's [tool.comfy] Models are checked against it (tests/test_workflow_meta.py).
MODELS: tuple[ModelFile, ...] = (
    ModelFile("flux1-dev.safetensors", "diffusion_models", f"{HF}/Comfy-Org/flux1-dev/resolve/main/flux1-dev.safetensors",
              "FLUX.1-dev, the base model (bf16)"),
    ModelFile("clip_l.safetensors", "text_encoders", f"{HF}/comfyanonymous/flux_text_encoders/resolve/main/clip_l.safetensors",
              "CLIP-L text encoder"),
    ModelFile("t5xxl_fp16.safetensors", "text_encoders",
              f"{HF}/comfyanonymous/flux_text_encoders/resolve/main/t5xxl_fp16.safetensors", "T5-XXL text encoder (fp16)"),
    ModelFile("t5xxl_fp8_e4m3fn_scaled.safetensors", "text_encoders",
              f"{HF}/comfyanonymous/flux_text_encoders/resolve/main/t5xxl_fp8_e4m3fn_scaled.safetensors",
              "T5-XXL text encoder (fp8, less memory)"),
    ModelFile("ae.safetensors", "vae", f"{HF}/Comfy-Org/Lumina_Image_2.0_Repackaged/resolve/main/split_files/vae/ae.safetensors",
              "the FLUX.1 VAE"),
    ModelFile("default.safetensors", "refany3d", f"{RELEASE_REPO}/default.safetensors", "the Reference-LoRA of RefAny3D"),
    ModelFile("coord.safetensors", "refany3d", f"{RELEASE_REPO}/coord.safetensors", "the Domain-LoRA of RefAny3D"),
    ModelFile("domain_embedder.pth", "refany3d", f"{RELEASE_REPO}/domain_embedder.pth", "RefAny3D domain embedder"),
)
MODELS_BY_NAME = {m.name: m for m in MODELS}

CORE_ID = "comfy-core"
#: Node types the frontend itself provides (no Python class, no pack): no cnr_id, as in core templates.
FRONTEND_ONLY = frozenset({"Note", "MarkdownNote", "PrimitiveNode", "Reroute"})
PACK_PREFIX = "RefAny3D"


@dataclass(frozen=True)
class Packs:
    pack_id: str        # the registry id: pyproject's [project] name
    pack_version: str   # pyproject's [project] version
    core_version: str   # the oldest ComfyUI the pack supports: pyproject's requires-comfyui floor


def read_packs(pyproject: Path = PACK_ROOT / "pyproject.toml") -> Packs:
    data = tomllib.loads(Path(pyproject).read_text(encoding="utf-8"))
    floor = data["tool"]["comfy"]["requires-comfyui"]
    if not floor.startswith(">="):
        raise ValueError(f"requires-comfyui should be a floor '>=X.Y.Z', not {floor!r}")
    return Packs(data["project"]["name"], data["project"]["version"], floor[2:].strip())


def files_by_folder(models=MODELS) -> dict[str, list[str]]:
    """{models sub-folder: [file names]} of the table."""
    out: dict[str, list[str]] = {}
    for m in models:
        out.setdefault(m.directory, []).append(m.name)
    return out


def node_models(node: dict) -> list[dict]:
    """The ``properties.models`` entries of a node: the table's files its widget values name, in order."""
    values = node.get("widgets_values") or []
    values = values.values() if isinstance(values, dict) else values
    names = list(dict.fromkeys(v for v in values if isinstance(v, str) and v in MODELS_BY_NAME))
    return [{"name": n, "url": MODELS_BY_NAME[n].url, "directory": MODELS_BY_NAME[n].directory} for n in names]


def node_properties(node: dict, packs: Packs) -> dict:
    """The node's properties with cnr_id/ver first and models last (the order of core templates)."""
    props = {k: v for k, v in (node.get("properties") or {}).items() if k not in ("cnr_id", "ver", "models")}
    if node["type"] in FRONTEND_ONLY:
        head = {}
    elif node["type"].startswith(PACK_PREFIX):
        head = {"cnr_id": packs.pack_id, "ver": packs.pack_version}
    else:
        head = {"cnr_id": CORE_ID, "ver": packs.core_version}
    models = node_models(node)
    return {**head, **props, **({"models": models} if models else {})}


def with_metadata(workflow: dict, packs: Packs | None = None) -> dict:
    """A copy of a UI-format workflow with cnr_id/ver and properties.models on its nodes (subgraphs too)."""
    packs = packs or read_packs()
    out = copy.deepcopy(workflow)
    graphs = [out, *((out.get("definitions") or {}).get("subgraphs") or [])]
    for graph in graphs:
        for node in graph.get("nodes") or []:
            node["properties"] = node_properties(node, packs)
    return out


def declared_inputs_only(api: dict, object_info: dict) -> dict:
    """A copy of an API-format workflow without the inputs the server's node does not declare.

    The frontend adds widgets of its own to some core nodes (e.g. a 3D preview ``image`` on Save GLB)
    and its API export sends their values too; ComfyUI ignores them, linters flag them. Node types
    the server does not know are kept as they are."""
    out = copy.deepcopy(api)
    for node in out.values():
        info = object_info.get(node["class_type"])
        if info is None:
            continue
        declared = {name for part in ("required", "optional") for name in (info.get("input") or {}).get(part, {})}
        node["inputs"] = {k: v for k, v in node["inputs"].items() if k in declared}
    return out


def dumps(workflow: dict) -> str:
    """A workflow as the pack's files hold it (2-space JSON, newline at the end)."""
    return json.dumps(workflow, indent=2) + "\n"


def ui_workflows(folder: Path) -> list[Path]:
    """The UI-format workflows of a folder (its top level: the API twins in api/ have no nodes list)."""
    return sorted(p for p in Path(folder).glob("*.json"))


def apply_to_folder(folder: Path, check: bool = False) -> list[Path]:
    """Re-applies :func:`with_metadata` to every workflow of ``folder``; returns the files that changed
    (with ``check``, those that would change, leaving them as they are)."""
    packs = read_packs()
    changed = []
    for path in ui_workflows(folder):
        text = path.read_text(encoding="utf-8")
        new = dumps(with_metadata(json.loads(text), packs))
        if new != text:
            changed.append(path)
            if not check:
                path.write_text(new, encoding="utf-8")
    return changed


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="Adds properties.models (download links) and cnr_id/ver to the nodes "
                                            "of every UI workflow in a folder, in place.")
    p.add_argument("--folder", type=Path, default=PACK_ROOT / "example_workflows", help="folder of UI workflows")
    p.add_argument("--check", action="store_true", help="change nothing; exit 1 if a file lacks the metadata")
    args = p.parse_args(argv)
    changed = apply_to_folder(args.folder, check=args.check)
    for path in changed:
        print(f"{'needs update' if args.check else 'updated'}: {path.name}")
    if not changed:
        print(f"all {len(ui_workflows(args.folder))} workflows carry the metadata")
    return 1 if (args.check and changed) else 0


if __name__ == "__main__":
    raise SystemExit(main())

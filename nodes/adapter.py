"""RefAny3DLoadAdapter: the released RefAny3D files from models/refany3d/ as a REFANY3D_ADAPTER."""
from __future__ import annotations

import os

import folder_paths
from comfy_api.latest import io

from ..model_patches import RELEASE_FILES, load_adapter
from . import folders
from .errors import NodeInputError
from .sockets import Adapter

PREFERRED = {
    "reference_lora": ("default.safetensors",),
    "domain_lora": ("coord.safetensors",),
    "domain_embedder": ("domain_embedder.pth", "domain_embedder.safetensors"),
}


TRAINING_STATE_DIR = "training_state"


def refany3d_files() -> list[str]:
    """The weight files in models/refany3d/, without the resumable training states that RefAny3D Train
    keeps in ``<run>/training_state/`` (they are not release files)."""
    folders.register()
    return [f for f in folder_paths.get_filename_list(folders.REFANY3D_FOLDER)
            if TRAINING_STATE_DIR not in f.replace("\\", "/").split("/")[:-1]]


def refany3d_dirs() -> list[str]:
    folders.register()
    return list(folder_paths.folder_names_and_paths[folders.REFANY3D_FOLDER][0])


def preferred(files: list[str], names: tuple[str, ...]) -> str | None:
    """The first of ``names`` present (at the top of the folder, else in a sub-folder), else the first file."""
    for name in names:
        if name in files:
            return name
    for name in names:
        for f in files:
            if os.path.basename(f) == name:
                return f
    return files[0] if files else None


def resolve(filename: str, role: str) -> str:
    """Full path of ``filename`` in models/refany3d/, or a NodeInputError naming file and folder."""
    path = folder_paths.get_full_path(folders.REFANY3D_FOLDER, filename) if filename else None
    if path is None:
        dirs = refany3d_dirs()
        present = refany3d_files()
        raise NodeInputError(
            f"RefAny3D {role} file '{filename}' not found in the refany3d model folder "
            f"({', '.join(dirs)}). Put the release files default.safetensors, coord.safetensors and "
            f"domain_embedder.pth there (or choose one of the files found), then refresh the node. "
            f"Files found: {', '.join(present) if present else 'none'}.")
    return path


class RefAny3DLoadAdapter(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        files = refany3d_files()
        where = "ComfyUI/models/refany3d/"
        return io.Schema(
            node_id="RefAny3DLoadAdapter",
            display_name="RefAny3D Load Adapter",
            category="RefAny3D/model",
            description=("Loads the released RefAny3D weights (Reference-LoRA, Domain-LoRA, domain embedder) "
                         f"from {where}. The LoRAs are kept as low-rank factors on FLUX.1-dev's layers and "
                         "applied per token group by RefAny3D Apply; nothing is merged into the model."),
            inputs=[
                io.Combo.Input("reference_lora", options=files, default=preferred(files, PREFERRED["reference_lora"]),
                               tooltip=f"Reference-LoRA ({RELEASE_FILES['reference']} in the release), in {where}. "
                                       "Applied to the reference views' tokens."),
                io.Combo.Input("domain_lora", options=files, default=preferred(files, PREFERRED["domain_lora"]),
                               tooltip=f"Domain-LoRA ({RELEASE_FILES['domain']} in the release), in {where}. "
                                       "Applied to the point-map tokens (target and reference views)."),
                io.Combo.Input("domain_embedder", options=files, default=preferred(files, PREFERRED["domain_embedder"]),
                               tooltip=f"Domain embedder ({RELEASE_FILES['domain_embedder']} in the release, or its "
                                       f".safetensors copy), in {where}. A .pth is read with weights_only=True: a "
                                       "pickle holding code is refused."),
            ],
            outputs=[Adapter.Output(display_name="adapter",
                                    tooltip="The RefAny3D adapter (two LoRAs and the domain embedder), for RefAny3D Apply.")],
        )

    @classmethod
    def validate_inputs(cls, reference_lora, domain_lora, domain_embedder) -> bool:
        # A file that is not (or no longer) in the folder is reported at execution with the folder
        # and the files present, rather than as a bare "Value not in list".
        return True

    @classmethod
    def fingerprint_inputs(cls, reference_lora, domain_lora, domain_embedder):
        stamp = []
        for name in (reference_lora, domain_lora, domain_embedder):
            path = folder_paths.get_full_path(folders.REFANY3D_FOLDER, name) if name else None
            try:
                st = os.stat(path) if path else None
            except OSError:
                st = None
            stamp.append((name, path, st.st_mtime_ns if st else None, st.st_size if st else None))
        return tuple(stamp)

    @classmethod
    def execute(cls, reference_lora, domain_lora, domain_embedder) -> io.NodeOutput:
        paths = (resolve(reference_lora, "Reference-LoRA"), resolve(domain_lora, "Domain-LoRA"),
                 resolve(domain_embedder, "domain embedder"))
        return io.NodeOutput(load_adapter(*paths))


NODES = [RefAny3DLoadAdapter]

"""Model folders of the pack, registered with ComfyUI's folder_paths."""
import os

import folder_paths

REFANY3D_FOLDER = "refany3d"
WEIGHT_EXTENSIONS = {".safetensors", ".pth", ".pt"}


def register() -> None:
    """models/refany3d/ holds default.safetensors, coord.safetensors, domain_embedder(.pth|.safetensors)."""
    if REFANY3D_FOLDER in folder_paths.folder_names_and_paths:
        return
    path = os.path.join(folder_paths.models_dir, REFANY3D_FOLDER)
    folder_paths.folder_names_and_paths[REFANY3D_FOLDER] = ([path], WEIGHT_EXTENSIONS)

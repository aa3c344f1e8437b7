"""Model folders of the pack, registered with ComfyUI's folder_paths."""
import os

import folder_paths

REFANY3D_FOLDER = "refany3d"
WEIGHT_EXTENSIONS = {".safetensors", ".pth", ".pt"}


def register() -> None:
    """models/refany3d/ holds default.safetensors, coord.safetensors, domain_embedder(.pth|.safetensors).

    Adds the default folder and our extensions even when a user's extra_model_paths.yaml already
    registered "refany3d" (its folders are kept, ours goes first)."""
    path = os.path.join(folder_paths.models_dir, REFANY3D_FOLDER)
    folder_paths.add_model_folder_path(REFANY3D_FOLDER, path, is_default=True)
    folder_paths.folder_names_and_paths[REFANY3D_FOLDER][1].update(WEIGHT_EXTENSIONS)

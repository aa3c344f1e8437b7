"""RefAny3D for ComfyUI: a 3D asset and a prompt in, a photo of that exact object and its point map out."""
from comfy_api.latest import ComfyExtension, io

from .nodes import collect_nodes, folders


class RefAny3DExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return collect_nodes()


async def comfy_entrypoint() -> RefAny3DExtension:
    folders.register()  # models/refany3d/
    return RefAny3DExtension()

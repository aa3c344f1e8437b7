"""RefAny3D for ComfyUI: a 3D asset and a prompt in, a photo of that exact object and its point map out.

ComfyUI imports this folder as a package and calls :func:`comfy_entrypoint`. The pack's own modules
are imported there, not at the top, so that importing this file on its own (as pytest does with a
checkout's root, whatever the folder is called) needs nothing but ComfyUI's API.
"""
from comfy_api.latest import ComfyExtension, io


class RefAny3DExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        from .nodes import collect_nodes
        return collect_nodes()


async def comfy_entrypoint() -> RefAny3DExtension:
    from .nodes import folders
    folders.register()  # models/refany3d/
    return RefAny3DExtension()

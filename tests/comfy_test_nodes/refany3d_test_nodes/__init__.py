"""Test-only ComfyUI nodes (loaded by the test server through --extra-model-paths-config).

Every module in this folder defines ``NODES``, a list of V3 io.ComfyNode classes.
"""
import importlib
import pkgutil

from comfy_api.latest import ComfyExtension, io


def _collect() -> list[type[io.ComfyNode]]:
    nodes = []
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda i: i.name):
        module = importlib.import_module(f".{info.name}", __name__)
        nodes.extend(getattr(module, "NODES", []))
    return nodes


class TestNodes(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return _collect()


async def comfy_entrypoint() -> TestNodes:
    return TestNodes()

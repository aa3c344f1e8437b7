"""ComfyUI skin of the pack: node modules and their registration.

Every module listed in NODE_MODULES defines ``NODES``, a list of V3 ``io.ComfyNode`` classes.
A node class may declare ``REQUIRES = {"import_name": "pip requirement"}`` for optional Python
packages it needs at run time; a node whose requirement does not import is left out with one
clear log line, and every other node still loads. A node module of the pack itself that fails to
import (a file missing from the install) is an error in the log, never a silent skip.
"""
from __future__ import annotations

import importlib
import logging

log = logging.getLogger("RefAny3D")

NODE_MODULES = ("assets", "render", "adapter", "model", "latents", "pose", "training")


def missing_requirements(node_cls) -> list[str]:
    """pip requirements of ``node_cls`` whose import fails here."""
    missing = []
    for import_name, pip_name in getattr(node_cls, "REQUIRES", {}).items():
        try:
            importlib.import_module(import_name)
        except ImportError:
            missing.append(pip_name)
    return missing


def collect_nodes() -> list[type]:
    nodes: list[type] = []
    for name in NODE_MODULES:
        try:
            module = importlib.import_module(f".{name}", __name__)
        except ModuleNotFoundError as e:
            if e.name and e.name.startswith(__name__):
                log.error("RefAny3D: nodes in %s disabled: the pack's module %s failed to import (%s); "
                          "the pack is incomplete, reinstall it", name, e.name, e)
                continue
            log.warning("RefAny3D: nodes in %s disabled: missing Python package '%s' (pip install %s)",
                        name, e.name, e.name)
            continue
        for node in getattr(module, "NODES", []):
            missing = missing_requirements(node)
            if missing:
                node_id = node.define_schema().node_id
                log.warning("RefAny3D: node %s disabled: missing Python package(s) %s (pip install %s)",
                            node_id, ", ".join(repr(m) for m in missing), " ".join(missing))
                continue
            nodes.append(node)
    return nodes

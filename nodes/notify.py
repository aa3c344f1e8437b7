"""Telling the user something from inside a node: the server log, a text shown on the node in the
frontend (core ComfyUI's progress text, as its API nodes use), and the node's UI output (in
/history and the 'executed' message, for API clients)."""
from __future__ import annotations

import logging

from comfy_api.latest import ui

log = logging.getLogger("RefAny3D")


def show_on_node(node_id, text: str) -> None:
    """Show ``text`` on the node in the frontend (replaces what an earlier run showed there)."""
    if node_id is None:
        return
    try:
        from server import PromptServer
        send = PromptServer.instance.send_progress_text
    except (ImportError, AttributeError):  # ComfyUI used without its server (or one without progress texts)
        return
    send(text, str(node_id))


def report(node_id, node_name: str, text: str, warning: bool) -> ui.PreviewText:
    """Log ``text`` (as a warning when ``warning``), show it on the node, and return it as UI output."""
    if warning:
        log.warning("RefAny3D %s (node %s): %s", node_name, node_id, text)
    else:
        log.info("RefAny3D %s (node %s): %s", node_name, node_id, text)
    show_on_node(node_id, text)
    return ui.PreviewText(text)

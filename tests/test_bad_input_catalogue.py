"""The bad-input catalogue: every way a careless or hostile user was seen to get a quiet wrong result,
each as a test through the real server (or the real client), each checking three things: the message
says what is wrong and what to do, the server keeps serving, and nothing is written half-way.

To add a case: put it in the section of its area, use ``private`` (a server of its own, so expected
tracebacks stay out of the shared server's log) and end with ``still_serving(server)``.
"""
from __future__ import annotations

import pytest
from tools.comfy_server import ComfyServer

from conftest import COMFY_DIR, TEST_NODES


@pytest.fixture(scope="module")
def private(tmp_path_factory):
    """A ComfyUI server of this module's own, with the pack and the test-only nodes."""
    with ComfyServer(tmp_path_factory.mktemp("comfy-bad-input"), COMFY_DIR, extra_custom_nodes=[TEST_NODES]) as server:
        yield server


def still_serving(server) -> None:
    """The server answers and runs a small render graph after the bad input."""
    from tools.demo_asset import write_demo_asset
    name = "still_serving_box.glb"
    path = server.input_dir / "3d" / name
    if not path.exists():
        write_demo_asset(path)
    graph = {"asset": {"class_type": "RefAny3DLoadAsset", "inputs": {"asset_file": f"3d/{name}"}},
             "render": {"class_type": "RefAny3DRenderViews",
                        "inputs": {"asset": ["asset", 0], "num_views": 1, "preset": "release", "resolution": 32,
                                   "pitch": 0.0, "y_rotation": 0.0, "radius": 4.0, "fov": 45.0}},
             "preview": {"class_type": "PreviewImage", "inputs": {"images": ["render", 0]}}}
    result = server.run(graph, timeout=300)
    assert result.status == "success", result.error_text()


# ============================================================================ client (cases 1, 2, 8)


# ============================================================================ weights and latents (cases 3, 9)


# ============================================================================ assets and views (cases 4, 5, 6, 7)


# ============================================================================ friction (case 10)

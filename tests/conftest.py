"""Shared test set-up.

* The repo root, tools/ and the ComfyUI folder go on sys.path, and ComfyUI is put in CPU mode
  before anything imports comfy.model_management, so tests can use the pack's plain libraries
  (``import rendering``, ``import model_patches``) and ComfyUI's own modules in-process.
* ``comfy``: one real headless ComfyUI server for the whole run (main.py, the pack linked into its
  custom_nodes, the test-only nodes of tests/comfy_test_nodes added through
  --extra-model-paths-config), with a temporary base directory. On a test failure the tail of
  the server log is attached to the report.
"""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TESTS = Path(__file__).resolve().parent
sys.path[:0] = [str(ROOT), str(ROOT / "tools")]

from comfy_server import ComfyServer, default_comfy_dir  # noqa: E402

COMFY_DIR = default_comfy_dir()
TEST_NODES = TESTS / "comfy_test_nodes"
if str(COMFY_DIR) not in sys.path:
    sys.path.append(str(COMFY_DIR))

import comfy.options  # noqa: E402

comfy.options.enable_args_parsing(False)
import comfy.cli_args  # noqa: E402

comfy.cli_args.args.cpu = True


@pytest.fixture(scope="session")
def comfy(tmp_path_factory):
    """A real ComfyUI server with the pack; see tools/comfy_server.py and tools/comfy_http.py."""
    base = tmp_path_factory.mktemp("comfy-base")
    server = ComfyServer(base, COMFY_DIR, extra_custom_nodes=[TEST_NODES])
    server.start()
    yield server
    server.stop()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    if report.failed and "comfy" in getattr(item, "funcargs", {}):
        server = item.funcargs["comfy"]
        report.sections.append(("ComfyUI server log (tail)", server.log_text()[-8000:]))
    return report

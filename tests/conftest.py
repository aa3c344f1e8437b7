"""Shared test set-up.

* The pack's folder is on sys.path through pytest's ``pythonpath`` setting (pyproject.toml), so tests
  import the plain libraries (``rendering``, ``model_patches``) and the tools (``tools.…``) as they are;
  ComfyUI's own modules are made importable in CPU mode by ``tools.comfy_env.use_comfy`` before any
  test imports them.
* ``comfy``: one real headless ComfyUI server for the whole run (main.py, the pack linked into its
  custom_nodes, the test-only nodes of tests/comfy_test_nodes added through
  --extra-model-paths-config), with a temporary base directory. On a test failure the tail of
  the server log is attached to the report.
"""
from __future__ import annotations

from pathlib import Path

import pytest

from tools.comfy_env import use_comfy
from tools.comfy_server import ComfyServer

ROOT = Path(__file__).resolve().parent.parent
TESTS = Path(__file__).resolve().parent
COMFY_DIR = use_comfy(cpu=True)
TEST_NODES = TESTS / "comfy_test_nodes"


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

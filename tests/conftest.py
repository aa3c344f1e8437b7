"""Shared test set-up.

* The pack's folder is on sys.path through pytest's ``pythonpath`` setting (pyproject.toml), so tests
  import the plain libraries (``rendering``, ``model_patches``) and the tools (``tools.…``) as they are;
  ComfyUI's own modules are made importable in CPU mode by ``tools.comfy_env.use_comfy`` before any
  test imports them.
* ``comfy``: one real headless ComfyUI server for the whole run (main.py, the pack linked into its
  custom_nodes, the test-only nodes of tests/comfy_test_nodes added through
  --extra-model-paths-config), with a temporary base directory. On a test failure the tail of
  the server log is attached to the report.
* Test tiers (markers registered in pyproject.toml, applied here to every collected test, so tests added
  later get them without a word): ``server`` for a test that talks to a ComfyUI server (the ``comfy``
  fixture, directly or through another fixture, or a module that boots its own ``ComfyServer``);
  ``frontend`` for the browser tests (a ``frontend`` fixture); ``fuzz`` for property-based tests
  (hypothesis); ``slow`` for a module in ``SLOW_MODULES`` (training subprocesses on a 3072-wide model,
  torchrun, the demo) or a test marked so by hand. ``make test-fast`` runs what none of them marks.
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


#: modules whose tests each start heavy subprocesses (a 3072-wide FLUX.1 file, torchrun, the demo, a fuzz child)
SLOW_MODULES = {"test_training_cli", "test_training_ddp", "test_demo", "test_gpu_check"}


def tiers_of(item) -> set[str]:
    """The tier markers a collected test gets from what it uses."""
    module = getattr(item, "module", None)
    names = set(getattr(item, "fixturenames", ()))
    module_vars = vars(module) if module is not None else {}
    name = module.__name__.rpartition(".")[2] if module is not None else ""
    tiers = set()
    if "comfy" in names or "ComfyServer" in module_vars:
        tiers.add("server")
    if "frontend" in names:
        tiers |= {"frontend", "server"}
    if "hypothesis" in module_vars or name.startswith("test_fuzz_"):
        tiers.add("fuzz")
    if name in SLOW_MODULES:
        tiers.add("slow")
    return tiers


def pytest_collection_modifyitems(config, items):
    for item in items:
        for tier in sorted(tiers_of(item) - {m.name for m in item.iter_markers()}):
            item.add_marker(getattr(pytest.mark, tier))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    if report.failed and "comfy" in getattr(item, "funcargs", {}):
        server = item.funcargs["comfy"]
        report.sections.append(("ComfyUI server log (tail)", server.log_text()[-8000:]))
    return report

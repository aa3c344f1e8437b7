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
  torchrun, the demo), a test in ``SLOW_TESTS``
  or a test marked so by hand. ``make test-fast`` runs what none of them marks.
"""
from __future__ import annotations

import subprocess
import sys
import textwrap
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



def load_without(module: str, path, then: str = "") -> subprocess.CompletedProcess:
    """``rendering.load_asset(path)`` in a fresh Python where ``module`` cannot be imported, as if its package
    were not installed: prints ``REFUSED <message>`` for an AssetError, then runs the lines ``then``."""
    script = textwrap.dedent(f"""
        import sys
        sys.modules[{module!r}] = None  # importing it raises ImportError
        import rendering
        try:
            rendering.load_asset({str(path)!r})
        except rendering.AssetError as e:
            print("REFUSED", e)
    """) + textwrap.dedent(then)
    return subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120)

#: modules whose tests each start heavy subprocesses (a 3072-wide FLUX.1 file, torchrun, the demo, a fuzz child)
SLOW_MODULES = {"test_training_cli", "test_training_ddp", "test_demo", "test_gpu_check"}
#: single tests (every parameter) that took 9 s or more in a whole-suite run on 2 busy cores, or 3 s or more
#: on quiet ones; out of
#: ``make test-fast`` so the inner loop stays under two minutes
SLOW_TESTS = {
    "test_pose": {"test_decoder_like_point_maps_give_the_rotation_and_focal",
                  "test_exact_point_maps_give_back_the_camera",
                  "test_noise_blur_and_outliers_leave_the_rotation_within_two_degrees",
                  "test_a_point_map_of_another_asset_scores_below_every_right_read"},  # the 40-map fixture
    "test_training": {"test_overfits_one_sample", "test_both_optimizers_learn", "test_resume_equals_straight_run"},
    "test_render_inputs": {"test_two_million_faces_render_within_memory_budget"},
    "test_registry": {"test_comfy_import_guard_counts_only_references_this_comfyui_has"},
    "test_weights": {"test_converter_cli", "test_flux_checkpoint_loads_through_comfyui"},
    "test_usd_assets": {"test_usd_missing_texture_and_missing_library_are_named"},
    "test_gltf_spec": {"test_morph_targets_at_default_weights"},
    "test_gltf_compressed": {"test_draco_without_its_decoder_names_the_package",
                             "test_meshopt_without_its_decoder_names_the_package_or_reads_the_fallback",
                             "test_ktx2_without_its_decoder_names_the_package_or_reads_the_fallback"},
    "test_fbx_assets": {"test_fbx_missing_texture_and_missing_library_are_named"},
    "test_transformer_patch": {"test_ksampler_equals_hand_written_euler_with_image_guidance"},
}


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
    if name in SLOW_MODULES or getattr(item, "originalname", item.name) in SLOW_TESTS.get(name, ()):
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

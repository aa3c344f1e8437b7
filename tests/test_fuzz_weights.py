"""Bounded fuzzing of the weight loaders (issue 10, case 3): real release-format files (tools/release_files.py)
corrupted at the byte level and in their structure, read by ``read_state_dict``, ``load_lora``,
``load_domain_embedder`` and ``load_adapter``. The only errors allowed out are the model layer's own
(RefAny3DError and its kinds: a user-facing message); nothing may hang or blow up memory.

Hypothesis runs with a fixed seed (``derandomize``) and a fixed example budget, so the run is the same every
time and takes well under a minute. The figures (inputs tried, distinct messages, time per input, peak
memory) are printed at the end and written to tests/artifacts/fuzz_weights.json.
"""
from __future__ import annotations

import json
import os
import re
import resource
import time
import tracemalloc
from pathlib import Path

import pytest
import safetensors.torch
import torch

from conftest import ROOT
from model_patches import RefAny3DError, load_adapter, load_domain_embedder, load_lora
from model_patches.release_format import read_state_dict
from tools.release_files import save_release_files

hypothesis = pytest.importorskip("hypothesis", reason="the fuzz tests need hypothesis: pip install -r requirements-test.txt")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

D = 64
#: the budget of each fuzz test, times REFANY3D_FUZZ_SCALE (e.g. 10 for a thorough run)
FUZZ_SCALE = float(os.environ.get("REFANY3D_FUZZ_SCALE", "1"))
EXAMPLES = {k: max(1, round(n * FUZZ_SCALE)) for k, n in {"bytes": 250, "structure": 250}.items()}
MAX_SECONDS_PER_INPUT = 10.0  # a hang or a runaway allocation shows up here long before pytest's timeout
SETTINGS = dict(derandomize=True, deadline=None, database=None, print_blob=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                                       HealthCheck.data_too_large])

FIGURES = {"inputs": 0, "loader_calls": 0, "accepted": 0, "refused": 0, "max_seconds": 0.0, "slowest": "",
           "messages": set()}


@pytest.fixture(scope="module")
def originals(tmp_path_factory):
    """Bytes of real release-format files: both LoRAs, the .pth embedder and its .safetensors copy."""
    from model_patches import convert_domain_embedder
    folder = tmp_path_factory.mktemp("fuzz-release")
    paths = save_release_files(folder, D, 1, 1, rank=4, seed=9)
    paths["embedder_st"] = convert_domain_embedder(paths["domain_embedder"], folder / "domain_embedder.safetensors")
    return {name: (Path(p), Path(p).read_bytes()) for name, p in paths.items()}


@pytest.fixture(scope="module")
def memory():
    """Python-heap allocations traced (tracemalloc) over both fuzz tests; the peak resident size is read too."""
    FIGURES["rss_before_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    tracemalloc.start()
    yield
    tracemalloc.stop()


def loaders(kind: str):
    """The loaders that take a file of this kind ("lora" or "embedder"), as (name, call)."""
    if kind == "lora":
        return [("read_state_dict", lambda p: read_state_dict(p, "LoRA")),
                ("load_lora", lambda p: load_lora(p, D, what="Reference-LoRA"))]
    return [("read_state_dict", lambda p: read_state_dict(p, "domain embedder")),
            ("load_domain_embedder", load_domain_embedder)]


def exercise(path: Path, kind: str, originals) -> None:
    """Every loader of ``kind`` on ``path``, and load_adapter with it in its place; records the figures.
    Anything but success or a RefAny3DError fails the test (hypothesis then shrinks the input)."""
    FIGURES["inputs"] += 1
    calls = loaders(kind)
    ref, dom, emb = (originals[n][0] for n in ("reference", "domain", "domain_embedder"))
    if kind == "lora":
        calls.append(("load_adapter", lambda p: load_adapter(ref, p, emb)))
    else:
        calls.append(("load_adapter", lambda p: load_adapter(ref, dom, p)))
    for name, call in calls:
        FIGURES["loader_calls"] += 1
        start = time.perf_counter()
        try:
            call(path)
            FIGURES["accepted"] += 1
        except RefAny3DError as e:
            FIGURES["refused"] += 1
            FIGURES["messages"].add(str(e))
        finally:
            took = time.perf_counter() - start
            if took > FIGURES["max_seconds"]:
                FIGURES["max_seconds"], FIGURES["slowest"] = took, f"{name} on {path.name}"
        assert took < MAX_SECONDS_PER_INPUT, f"{name} took {took:.1f} s on {path.name}"


# --------------------------------------------------------------------------------------------
# byte level: flips, overwrites, insertions, deletions, truncation; biased to the files' two ends,
# where the safetensors header and the zip's pickle / central directory live

def positions(n: int):
    return st.one_of(st.integers(0, min(n, 1024) - 1), st.integers(max(0, n - 1024), n - 1), st.integers(0, n - 1))


def byte_corruption(draw, originals):
    """(file name, corrupted bytes); ``draw`` is hypothesis' ``data.draw`` (the originals stay out of its reports)."""
    name = draw(st.sampled_from(sorted(originals)))
    data = bytearray(originals[name][1])
    for _ in range(draw(st.integers(1, 6))):
        n = len(data)
        if n == 0:
            break
        op = draw(st.sampled_from(["flip", "overwrite", "insert", "delete", "truncate"]))
        at = draw(positions(n))
        if op == "flip":
            data[at] ^= draw(st.integers(1, 255))
        elif op == "overwrite":
            chunk = draw(st.binary(min_size=1, max_size=16))
            data[at:at + len(chunk)] = chunk
        elif op == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=64))
        elif op == "delete":
            del data[at:at + draw(st.integers(1, 64))]
        else:
            del data[at:]
    return name, bytes(data)


# --------------------------------------------------------------------------------------------
# structure: the state dict edited (keys, dtypes, shapes, values, extra entries) and saved again in
# either format; and the safetensors JSON header edited in place

DTYPES = [torch.float8_e4m3fn, torch.complex64, torch.float16, torch.bfloat16, torch.float8_e5m2, torch.float64,
          torch.int8, torch.int64, torch.uint8, torch.bool]
VALUES = [float("nan"), float("inf"), float("-inf"), 1e30, -3e38, 1e4, 1e-45, -0.0]


def edit_tensor(draw, t: torch.Tensor) -> object:
    what = draw(st.sampled_from(["dtype", "transpose", "flatten", "unsqueeze", "empty", "scalar", "value", "slice",
                                 "not a tensor"]))
    if what == "dtype":
        return t.to(draw(st.sampled_from(DTYPES)))
    if what == "transpose" and t.ndim == 2:
        return t.t().contiguous()
    if what == "flatten":
        return t.flatten()
    if what == "unsqueeze":
        return t.unsqueeze(0)
    if what == "empty":
        return torch.zeros(0, *t.shape[1:], dtype=t.dtype)
    if what == "scalar":
        return torch.tensor(draw(st.floats(allow_nan=True, allow_infinity=True, width=32)))
    if what == "value" and t.numel() and t.is_floating_point():
        t = t.clone()
        t.view(-1)[draw(st.integers(0, t.numel() - 1))] = draw(st.sampled_from(VALUES))
        return t
    if what == "slice" and t.ndim and t.shape[0] > 1:
        return t[: draw(st.integers(1, t.shape[0] - 1))].contiguous()
    if what == "not a tensor":
        return draw(st.sampled_from([3, "x", None, [1.0, 2.0], {"nested": torch.zeros(2)}]))
    return t


def structural_corruption(draw, originals):
    """(file name, edited state dict, format to save it in)."""
    name = draw(st.sampled_from(["reference", "domain", "domain_embedder"]))
    sd = read_state_dict(originals[name][0])
    keys = sorted(sd)
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["dtype", "alpha", "edit", "drop", "rename", "edit", "add", "prefix", "duplicate"]))
        key = draw(st.sampled_from(keys))
        if op == "drop" and len(sd) > 1 and key in sd:
            sd.pop(key)
        elif op == "rename" and key in sd:
            new = draw(st.one_of(st.text(max_size=40), st.sampled_from([
                key.replace("transformer.", ""), key.replace("lora_A", "lora_B"), key.replace(".0.", ".99."),
                key.replace("proj_out", "attn.add_q_proj"), key + ".weight", "module." + key, key.upper()])))
            sd[new] = sd.pop(key)
        elif op == "edit" and isinstance(sd.get(key), torch.Tensor):
            sd[key] = edit_tensor(draw, sd[key])
        elif op == "dtype" and key in sd and isinstance(sd[key], torch.Tensor):
            sd[key] = sd[key].to(draw(st.sampled_from(DTYPES)))
        elif op == "add":
            sd[draw(st.text(max_size=30))] = torch.full((draw(st.integers(0, 3)), draw(st.integers(0, 3))), 0.5)
        elif op == "alpha":
            module = key.rsplit(".lora_", 1)[0]
            sd[module + ".alpha"] = draw(st.sampled_from([
                lambda: torch.tensor(1 + 1j), lambda: torch.tensor(10**15), lambda: torch.zeros(2),
                lambda: torch.tensor(draw(st.floats(allow_nan=True, allow_infinity=True))), lambda: torch.tensor(7),
                lambda: torch.tensor(True)]))()
        elif op == "duplicate" and isinstance(sd.get(key), torch.Tensor):  # the same weight under a second name
            sd[draw(st.sampled_from([key.replace("transformer.", "", 1), "transformer." + key, key + " "]))] = sd[key]
        elif op == "prefix":
            sd = {f"{draw(st.sampled_from(['module', 'domain_embedder', 'x']))}.{k}": v for k, v in sd.items()}
            keys = sorted(sd)
    return name, sd, draw(st.sampled_from(["safetensors", "pth"]))


def header_edit(draw, data: bytes) -> bytes:
    """The safetensors JSON header with one tensor's dtype, shape or offsets changed."""
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + n])
    key = draw(st.sampled_from(sorted(k for k in header if k != "__metadata__")))
    field = draw(st.sampled_from(["dtype", "shape", "data_offsets"]))
    if field == "dtype":
        header[key]["dtype"] = draw(st.sampled_from(["F16", "BF16", "F64", "I8", "U8", "BOOL", "C64", "F8_E4M3",
                                                      "F8_E5M2", "I64", "XX", ""]))
    elif field == "shape":
        header[key]["shape"] = draw(st.lists(st.one_of(st.integers(0, 8), st.sampled_from([2**31, 2**62, -1])),
                                             max_size=4))
    else:
        a, b = header[key]["data_offsets"]
        header[key]["data_offsets"] = [a + draw(st.integers(-64, 64)), b + draw(st.integers(-64, 64))]
    raw = json.dumps(header).encode()
    return len(raw).to_bytes(8, "little") + raw + data[8 + n:]


# --------------------------------------------------------------------------------------------

KIND = {"reference": "lora", "domain": "lora", "domain_embedder": "embedder", "embedder_st": "embedder"}


@pytest.mark.timeout(300)
def test_byte_level_corruptions_only_raise_refany3d_errors(originals, memory, tmp_path_factory):
    folder = tmp_path_factory.mktemp("fuzz-bytes")

    @settings(max_examples=EXAMPLES["bytes"], **SETTINGS)
    @given(data=st.data())
    def run(data):
        name, blob = byte_corruption(data.draw, originals)
        if data.draw(st.booleans()) and originals[name][0].suffix == ".safetensors" and len(blob) > 8:
            try:
                blob = header_edit(data.draw, blob)
            except (ValueError, UnicodeDecodeError, KeyError, TypeError, AttributeError):
                pass  # the byte edits already broke the header: keep them
        path = folder / originals[name][0].name
        path.write_bytes(blob)
        exercise(path, KIND[name], originals)
    run()


@pytest.mark.timeout(300)
def test_structural_corruptions_only_raise_refany3d_errors(originals, memory, tmp_path_factory):
    folder = tmp_path_factory.mktemp("fuzz-structure")

    @settings(max_examples=EXAMPLES["structure"], **SETTINGS)
    @given(data=st.data())
    def run(data):
        name, sd, fmt = structural_corruption(data.draw, originals)
        path = folder / (Path(originals[name][0].name).stem + "." + fmt)
        if fmt == "safetensors":
            try:
                safetensors.torch.save_file(sd, str(path))
            except Exception:  # not savable as safetensors (non-tensor values, shared memory, …): as a pickle
                path = path.with_suffix(".pth")
                torch.save(sd, str(path))
        else:
            torch.save(sd, str(path))
        exercise(path, KIND[name], originals)
    run()


def test_fuzz_figures(memory, capsys):
    """Prints and records the figures of the two fuzz runs above."""
    if not FIGURES["inputs"]:
        pytest.skip("the fuzz tests did not run")
    FIGURES["tracemalloc_peak_mib"] = round(tracemalloc.get_traced_memory()[1] / 2**20, 2)
    FIGURES["rss_peak_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    messages = FIGURES["messages"]
    templates = {re.sub(r"\d+(\.\d+)?(e[+-]?\d+)?", "#", re.sub(r"'[^']*'", "'…'", m)) for m in messages}
    figures = {k: v for k, v in FIGURES.items() if k != "messages"}
    figures.update(distinct_messages=len(messages), distinct_message_templates=len(templates),
                   max_seconds=round(FIGURES["max_seconds"], 3), budget=EXAMPLES)
    out = ROOT / "tests" / "artifacts"
    out.mkdir(parents=True, exist_ok=True)
    (out / "fuzz_weights.json").write_text(json.dumps(dict(figures, messages=sorted(messages)), indent=1))
    with capsys.disabled():
        print("\nfuzz of the weight loaders: " + ", ".join(f"{k} {v}" for k, v in figures.items()))
    assert FIGURES["refused"] and FIGURES["accepted"]  # both outcomes were reached
    assert FIGURES["max_seconds"] < MAX_SECONDS_PER_INPUT

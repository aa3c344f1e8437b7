"""Bounded fuzzing of what a user hands a training run besides the model (issue 17): resume states
(``state-<step>/state.json`` and ``tensors.safetensors``) and encoded datasets (``encoded.json``, the shards,
``uncond.safetensors``), made for real by the Trainer and ``encode_dataset`` and then corrupted in their
fields and bytes. The only errors allowed out are the pack's own (RefAny3DError: a user-facing message);
an accepted state must resume to a finite step with step ≥ 0, an accepted encoding must read back finite
samples of the shapes it declares, and ``is_encoded`` must agree (a damaged folder is encoded again).

Hypothesis runs with a fixed seed and a fixed example budget. The figures (inputs, distinct messages,
slowest case, memory growth) are printed and written to tests/artifacts/fuzz_training.json.
"""
from __future__ import annotations

import json
import math
import os
import re
import resource
import shutil
import time
import tracemalloc
from pathlib import Path

import pytest
import torch

from conftest import ROOT
from model_patches import RefAny3DError
from model_patches.trainable import TrainableAdapter, Unconditional
from tools import tiny_models as tiny
from training import EncodedDataset, TrainConfig, Trainer, encode_dataset, is_encoded

hypothesis = pytest.importorskip("hypothesis", reason="the fuzz tests need hypothesis: pip install -r requirements-test.txt")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

D, CTX, POOLED, RANK = 32, 24, 12, 2
#: the budget of each fuzz test, times REFANY3D_FUZZ_SCALE (e.g. 10 for a thorough run)
FUZZ_SCALE = float(os.environ.get("REFANY3D_FUZZ_SCALE", "1"))
EXAMPLES = {k: max(1, round(n * FUZZ_SCALE)) for k, n in {"state": 60, "encoded": 250}.items()}
MAX_SECONDS_PER_INPUT = 10.0
SETTINGS = dict(derandomize=True, deadline=None, database=None, print_blob=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                                       HealthCheck.data_too_large])
FIGURES = {area: {"inputs": 0, "accepted": 0, "refused": 0, "max_seconds": 0.0, "slowest": "", "messages": set()}
           for area in EXAMPLES}
ODD_VALUES = [-1000, -1, 0, 1, 7, 10**12, float("nan"), float("inf"), -1e300, "x", "../x", "/etc/passwd", None, [],
              {}, True, [1, 2], {"a": 1}]


def samples(n=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [dict(x0_rgb=torch.randn(16, 2, 2, generator=g), x0_point_map=torch.randn(16, 2, 2, generator=g),
                 refs_rgb=torch.randn(1, 16, 2, 2, generator=g), refs_point_map=torch.randn(1, 16, 2, 2, generator=g),
                 context=torch.randn(3, CTX, generator=g), pooled=torch.randn(POOLED, generator=g)) for _ in range(n)]


def uncond():
    return Unconditional(context=torch.zeros(3, CTX), pooled=torch.zeros(POOLED), black_reference=torch.zeros(16, 2, 2))


@pytest.fixture(scope="module")
def flux():
    return tiny.build_flux(hidden_size=D, num_heads=2, depth=1, depth_single_blocks=1, context_in_dim=CTX,
                           vec_in_dim=POOLED, seed=0).model.diffusion_model


@pytest.fixture(scope="module")
def state(flux, tmp_path_factory):
    """A real saved state (step 2 of an AdamW run) as {file name: bytes}."""
    out = tmp_path_factory.mktemp("fuzz-state-src")
    trainer = Trainer(flux, TrainableAdapter.for_flux(flux, rank=RANK, seed=0), samples(), uncond(),
                      TrainConfig(lr=1e-3, checkpointing=False, save_every=2), out_dir=out)
    trainer.train(2)
    folder = out / "state-00000002"
    return {p.name: p.read_bytes() for p in folder.iterdir()}


class ListDataset(list):
    def describe(self) -> str:
        return f"test dataset of {len(self)} samples"

    def fingerprint(self) -> str:
        return f"test-{len(self)}"


def raw_sample(i, size=16):
    g = torch.Generator().manual_seed(100 + i)
    return {"name": f"s{i}", "prompt": f"a photo of object {i}", "image": torch.rand(size, size, 3, generator=g),
            "point_map": torch.rand(size, size, 3, generator=g), "refs_rgb": torch.rand(1, size, size, 3, generator=g),
            "refs_point_map": torch.rand(1, size, size, 3, generator=g)}


def encode_image(images):
    return torch.nn.functional.avg_pool2d(images.permute(0, 3, 1, 2), 8).repeat(1, 6, 1, 1)[:, :16]


def encode_text(prompt):
    g = torch.Generator().manual_seed(len(prompt))
    return torch.randn(len(prompt.split()) + 1, CTX, generator=g), torch.randn(POOLED, generator=g)


@pytest.fixture(scope="module")
def encoded(tmp_path_factory):
    """A real encoded dataset (3 samples in 2 shards) as {file name: bytes}."""
    folder = tmp_path_factory.mktemp("fuzz-enc-src") / "enc"
    encode_dataset(ListDataset(raw_sample(i) for i in range(3)), encode_image, encode_text, folder, shard_size=2)
    return {p.name: p.read_bytes() for p in folder.iterdir()}


@pytest.fixture(scope="module")
def memory():
    FIGURES["rss_before_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    tracemalloc.start()
    yield
    tracemalloc.stop()


def timed(area: str, label: str, call) -> object:
    """``call()``; a RefAny3DError counts as refused, anything else fails the test (hypothesis shrinks it)."""
    fig = FIGURES[area]
    fig["inputs"] += 1
    start = time.perf_counter()
    try:
        out = call()
        fig["accepted"] += 1
        return out
    except RefAny3DError as e:
        fig["refused"] += 1
        fig["messages"].add(str(e))
        return None
    finally:
        took = time.perf_counter() - start
        if took > fig["max_seconds"]:
            fig["max_seconds"], fig["slowest"] = took, label
        assert took < MAX_SECONDS_PER_INPUT, f"{label} took {took:.1f} s"


# --------------------------------------------------------------------------------------------
# corruptions

def json_paths(value, prefix=()):
    """Every (path, value) below a JSON value (lists only up to their first 3 items)."""
    yield prefix, value
    if isinstance(value, dict):
        for k, v in value.items():
            yield from json_paths(v, prefix + (k,))
    elif isinstance(value, list):
        for i, v in enumerate(value[:3]):
            yield from json_paths(v, prefix + (i,))


def edit_json(draw, text: bytes) -> bytes:
    doc = json.loads(text)
    for _ in range(draw(st.integers(1, 3))):
        paths = [p for p, _ in json_paths(doc) if p]
        path = draw(st.sampled_from(paths))
        parent = doc
        for k in path[:-1]:
            parent = parent[k]
        op = draw(st.sampled_from(["value", "value", "drop", "grow"]))
        if op == "drop" and isinstance(parent, dict):
            parent.pop(path[-1])
        elif op == "grow" and isinstance(parent[path[-1]], list):
            parent[path[-1]] = parent[path[-1]] + parent[path[-1]][:1]
        else:
            parent[path[-1]] = draw(st.sampled_from(ODD_VALUES))
    return json.dumps(doc).encode()


def edit_bytes(draw, data: bytes) -> bytes:
    data = bytearray(data)
    op = draw(st.sampled_from(["truncate", "flip", "flip", "header", "nan"]))
    if op == "truncate":
        del data[draw(st.integers(0, len(data) - 1)):]
    elif op == "flip":
        data[draw(st.integers(0, len(data) - 1))] ^= draw(st.integers(1, 255))
    elif op == "header":  # the safetensors header: its length or one of its first bytes
        data[draw(st.integers(0, min(len(data), 200) - 1))] ^= draw(st.integers(1, 255))
    else:  # a float32 value in the data part set to NaN / inf (the header and the size stay right)
        n = int.from_bytes(data[:8], "little")
        start = 8 + n
        if len(data) - start >= 4:
            at = start + 4 * draw(st.integers(0, (len(data) - start) // 4 - 1))
            data[at:at + 4] = draw(st.sampled_from([b"\x00\x00\xc0\x7f", b"\x00\x00\x80\x7f", b"\xff\xff\x7f\x7f"]))
    return bytes(data)


def write_folder(folder: Path, files: dict[str, bytes]) -> None:
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    for name, data in files.items():
        (folder / name).write_bytes(data)


# --------------------------------------------------------------------------------------------

@pytest.mark.timeout(600)
def test_corrupted_resume_states_only_raise_refany3d_errors(flux, state, memory, tmp_path_factory):
    base = tmp_path_factory.mktemp("fuzz-state")

    @settings(max_examples=EXAMPLES["state"], **SETTINGS)
    @given(data=st.data())
    def run(data):
        files = dict(state)
        target = data.draw(st.sampled_from(["state.json", "state.json", "tensors.safetensors"]))
        files[target] = (edit_json if target == "state.json" else edit_bytes)(data.draw, files[target])
        write_folder(base / "run" / "state-00000002", files)

        def resume():
            trainer = Trainer(flux, TrainableAdapter.for_flux(flux, rank=RANK, seed=0), samples(), uncond(),
                              TrainConfig(lr=1e-3, checkpointing=False))
            trainer.load(base / "run")
            # accepted: a state a run can go on from
            assert trainer.step == 2 and len(trainer.losses) == 2 and all(math.isfinite(x) for x in trainer.losses)
            assert all(bool(torch.isfinite(p).all()) for p in trainer.adapter.parameters())
            trainer.train(3)
            assert math.isfinite(trainer.losses[-1])
        timed("state", f"resume from a corrupted {target}", resume)
    run()


@pytest.mark.timeout(600)
def test_corrupted_encoded_datasets_only_raise_refany3d_errors(encoded, memory, tmp_path_factory):
    base = tmp_path_factory.mktemp("fuzz-enc")

    @settings(max_examples=EXAMPLES["encoded"], **SETTINGS)
    @given(data=st.data())
    def run(data):
        files = dict(encoded)
        target = data.draw(st.sampled_from(["encoded.json", "encoded.json", *sorted(n for n in files if n != "encoded.json")]))
        files[target] = (edit_json if target.endswith(".json") else edit_bytes)(data.draw, files[target])
        folder = base / "enc"
        write_folder(folder, files)

        def read():
            ds = EncodedDataset(folder)
            n = ds.info["count"]
            assert len(ds) == n == len(ds.names)
            for i in range(n):
                s = ds[i]
                assert list(s["x0_rgb"].shape) == ds.info["shapes"]["x0"]
                assert all(bool(torch.isfinite(v).all()) for v in s.values())
            ds.uncond()
        accepted = timed("encoded", f"read a corrupted {target}", read)
        opened = True
        try:
            EncodedDataset(folder)
        except RefAny3DError:
            opened = False
        assert is_encoded(folder) == opened  # a folder that does not open is encoded again, never reused
        del accepted
    run()


def test_fuzz_figures(memory, capsys):
    """Prints and records the figures of the two fuzz runs above."""
    if not any(f["inputs"] for f in FIGURES.values() if isinstance(f, dict)):
        pytest.skip("the fuzz tests did not run")
    summary = {"tracemalloc_peak_mib": round(tracemalloc.get_traced_memory()[1] / 2**20, 2),
               "rss_before_mib": FIGURES["rss_before_mib"],
               "rss_peak_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1), "budget": EXAMPLES}
    record = dict(summary)
    for area in EXAMPLES:
        fig = FIGURES[area]
        messages = fig["messages"]
        templates = {re.sub(r"\d+(\.\d+)?(e[+-]?\d+)?", "#", re.sub(r"'[^']*'", "'…'", m)) for m in messages}
        summary[area] = {k: (round(v, 3) if isinstance(v, float) else v) for k, v in fig.items() if k != "messages"}
        summary[area].update(distinct_messages=len(messages), distinct_message_templates=len(templates))
        record[area] = dict(summary[area], messages=sorted(messages))
    out = ROOT / "tests" / "artifacts"
    out.mkdir(parents=True, exist_ok=True)
    (out / "fuzz_training.json").write_text(json.dumps(record, indent=1))
    with capsys.disabled():
        print(f"\nfuzz of resume states and encoded datasets: {json.dumps(summary)}")
    for area in EXAMPLES:
        assert FIGURES[area]["refused"] and FIGURES[area]["accepted"], area  # both outcomes were reached
        assert FIGURES[area]["max_seconds"] < MAX_SECONDS_PER_INPUT

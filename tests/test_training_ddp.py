"""Training in many processes (issue 11, must-show 4): torchrun + PyTorch DDP (gloo, CPU) on a tiny
random Flux gives the update of one process with the doubled batch; the trainer's rank slicing, the
resume checks and the step callback.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import safetensors.torch
import torch

from model_patches import RefAny3DError
from model_patches.trainable import TrainableAdapter
from tools import ddp_check
from tools import tiny_models as tiny
from training import TrainConfig, Trainer, load_state

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_equal_one_with_the_doubled_batch(tmp_path):
    steps, accumulation = 2, 2
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    env.pop("WORLD_SIZE", None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(free_port()), "-m", "tools.ddp_check", "--out", str(tmp_path / "ddp"),
           "--steps", str(steps), "--batch", "1", "--accumulation", str(accumulation),
           "--late", "2"]  # the other rank leaves the process group first: no abort at exit
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    result = json.loads((tmp_path / "ddp" / "result.json").read_text())
    assert result["world_size"] == 2 and result["backend"] == "gloo"
    assert result["closed_refuses"] is True  # after Trainer.close() a rank cannot train on unsynchronised
    ddp_tensors = safetensors.torch.load_file(str(tmp_path / "ddp" / "adapter.safetensors"))

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the workers (OMP_NUM_THREADS=1): the same kernels, so only the batching differs
    try:
        single = ddp_check.make_trainer(batch=2, accumulation=accumulation)
        start = {k: v.detach().clone() for k, v in single.adapter.state_dict().items()}
        single.train(steps)
    finally:
        torch.set_num_threads(threads)
    # the ranks trained on the two halves of the single process's batches
    one = [single.indices(s, m) for s in range(steps) for m in range(accumulation)]
    r0, r1 = result["indices"]
    assert [a + b for a, b in zip(r0, r1)] == one
    torch.testing.assert_close(torch.tensor(result["losses"]), torch.tensor(single.losses), atol=1e-6, rtol=1e-6)
    want = single.adapter.state_dict()
    assert set(ddp_tensors) == set(want)
    # AdamW at its default lr 1e-4. The largest difference is in the embedder's first layer, whose
    # gradient is tiny while its zero-initialised last layer is (AdamW divides by each element's own
    # gradient size, so rounding differences there grow to ~1e-3 of lr); observed ≤ 3e-8 on both legs
    # (at lr 1e-3: 6e-7 and 1.1e-6; every other tensor ≤ 1e-7).
    worst = max(float((v - want[k]).abs().max()) for k, v in ddp_tensors.items())
    assert worst <= 1e-6, worst
    # every trainable tensor was updated, except the structural zeros (docs/method.md §6): the
    # Reference-LoRA's B factors (zero at the start) of the last single block's to_q, proj_mlp, proj_out
    still = {k for k in want if torch.equal(want[k], start[k])}
    last = "lora_B.reference.single_transformer_blocks__0__"
    assert still == {last + "attn__to_q", last + "proj_mlp", last + "proj_out"}
    # only rank 0 wrote the run's files; the state is that of the whole job
    state = load_state(tmp_path / "ddp" / "run")
    assert state["step"] == steps and state["config"]["world_size"] == 2 and len(state["losses"]) == steps
    assert (tmp_path / "ddp" / "run" / f"release-{steps:08d}" / "default.safetensors").is_file()
    assert not [p for p in (tmp_path / "ddp" / "run").iterdir() if p.name.startswith(".")]


def flux_of(width):
    return tiny.build_flux_module(hidden_size=width, num_heads=2, depth=1, depth_single_blocks=1,
                                  context_in_dim=ddp_check.CTX, vec_in_dim=ddp_check.POOLED, seed=0)


@pytest.fixture(scope="module")
def flux():
    return flux_of(ddp_check.D)


def test_rank_slices_cover_the_global_batch(flux):
    def trainer(rank, world):
        t = Trainer.__new__(Trainer)  # indices only: no process group needed
        t.dataset, t.rank, t.world_size = ddp_check.samples(5), rank, world
        t.config = TrainConfig(batch_size=2, accumulation=3, seed=4)
        return t
    one = trainer(0, 1)
    for world in (2, 3):
        ranks = [trainer(r, world) for r in range(world)]
        for step in range(3):
            for micro in range(3):
                glob = ranks[0].global_indices(step, micro)
                assert sum((t.indices(step, micro) for t in ranks), []) == glob and len(glob) == 2 * world
    # with one process the order is the one the single-process trainer always had
    assert one.global_indices(0, 0) == one.indices(0, 0)
    seen = sum((one.indices(s, m) for s in range(5) for m in range(3)), [])
    assert sorted(seen[:5]) == list(range(5))  # an epoch visits every sample once


def test_world_size_without_a_process_group_is_refused(flux):
    ad = TrainableAdapter.for_flux(flux, rank=ddp_check.RANK)
    with pytest.raises(RefAny3DError, match="torchrun"):
        Trainer(flux, ad, ddp_check.samples(2), ddp_check.uncond(), TrainConfig(), rank=1, world_size=2)
    with pytest.raises(RefAny3DError, match="rank 2 of 2"):
        Trainer(flux, ad, ddp_check.samples(2), ddp_check.uncond(), TrainConfig(), rank=2, world_size=2)


def test_resume_from_another_width_or_rank_names_both(flux, tmp_path):
    cfg = TrainConfig(lr=1e-3, checkpointing=False)
    calls = []
    src = Trainer(flux_of(64), TrainableAdapter.for_flux(flux_of(64), rank=4), ddp_check.samples(2),
                  ddp_check.uncond(), cfg, out_dir=tmp_path, on_step=lambda s, loss: calls.append((s, loss)))
    src.train(1)
    assert calls == [(1, src.losses[0])]
    src.save()
    for rank, want in ((4, "this model and adapter are a 32-wide model with rank 4"),
                       (2, "this model and adapter are a 32-wide model with rank 2")):
        dst = Trainer(flux, TrainableAdapter.for_flux(flux, rank=rank), ddp_check.samples(2), ddp_check.uncond(), cfg)
        with pytest.raises(RefAny3DError) as e:
            dst.load(tmp_path)
        assert "the state is from a 64-wide model with rank 4 (1 double and 1 single blocks)" in str(e.value)
        assert want in str(e.value)
    other = Trainer(flux_of(64), TrainableAdapter.for_flux(flux_of(64), rank=4), ddp_check.samples(2),
                    ddp_check.uncond(), TrainConfig(optimizer="prodigy", checkpointing=False))
    with pytest.raises(RefAny3DError, match="adamw optimizer"):
        other.load(tmp_path)
    with pytest.raises(RefAny3DError, match="no training state"):
        other.load(tmp_path / "nothing-here")

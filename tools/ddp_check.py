"""The DDP check (issue 11, must-show 4): a few training steps on a tiny random Flux built in code.

Run by ``tests/test_training_ddp.py`` under ``python -m torch.distributed.run --nproc_per_node 2``
(gloo, CPU) and, in-process, as one process with the doubled batch; both must give the same
trainable tensors and loss sequence. Rank 0 writes ``adapter.safetensors`` (the trainable tensors)
and ``result.json`` (losses, world size, the sample indices each rank trained on) into ``--out``::

    python -m torch.distributed.run --nproc_per_node 2 -m tools.ddp_check --out /tmp/ddp --steps 2
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

D, HEADS, CTX, POOLED, RANK = 32, 2, 24, 12, 4


def samples(n: int = 5, h: int = 2, w: int = 2, views: int = 1, txt: int = 3, seed: int = 0) -> list[dict]:
    g = torch.Generator().manual_seed(seed)

    def r(*s):
        return torch.randn(*s, generator=g)
    return [dict(x0_rgb=r(16, h, w), x0_point_map=r(16, h, w), refs_rgb=r(views, 16, h, w),
                 refs_point_map=r(views, 16, h, w), context=r(txt, CTX), pooled=r(POOLED)) for _ in range(n)]


def uncond(txt: int = 3, h: int = 2, w: int = 2):
    from model_patches.trainable import Unconditional
    g = torch.Generator().manual_seed(99)
    return Unconditional(context=torch.randn(txt, CTX, generator=g), pooled=torch.randn(POOLED, generator=g),
                         black_reference=torch.randn(16, h, w, generator=g))


def make_trainer(batch: int, accumulation: int, rank: int = 0, world_size: int = 1, optimizer: str = "adamw",
                 lr: float | None = None):
    from model_patches.trainable import TrainableAdapter
    from tools import tiny_models as tiny
    from training import TrainConfig, Trainer
    flux = tiny.build_flux_module(hidden_size=D, num_heads=HEADS, depth=1, depth_single_blocks=1,
                                  context_in_dim=CTX, vec_in_dim=POOLED, seed=0)
    adapter = TrainableAdapter.for_flux(flux, rank=RANK, seed=1)
    cfg = TrainConfig(lr=lr, optimizer=optimizer, batch_size=batch, accumulation=accumulation, p_drop_prompt=0.3,
                      p_drop_references=0.3, checkpointing=True, seed=7)
    return Trainer(flux, adapter, samples(), uncond(), cfg, rank=rank, world_size=world_size)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--batch", type=int, default=1, help="samples per process and micro-batch")
    p.add_argument("--accumulation", type=int, default=2)
    p.add_argument("--optimizer", default="adamw")
    p.add_argument("--lr", type=float, default=None, help="default: the optimizer's (AdamW 1e-4)")
    p.add_argument("--late", type=float, default=0.0,
                   help="seconds rank 0 waits before leaving the process group, so the other ranks leave first "
                        "(the order in which a DDP still alive at teardown made gloo abort the process)")
    args = p.parse_args(argv)
    from tools.comfy_env import use_comfy
    use_comfy(cpu=True)
    import safetensors.torch

    from model_patches import RefAny3DError
    from training.distributed import init_distributed, teardown
    info = init_distributed(device="cpu")
    trainer = None
    try:
        trainer = make_trainer(args.batch, args.accumulation, info.rank, info.world_size, args.optimizer, args.lr)
        seen = [trainer.indices(s, m) for s in range(args.steps) for m in range(args.accumulation)]
        trainer.train(args.steps)
        trainer.save(args.out / "run")  # rank 0 writes, the other waits at the barrier
        if info.is_main:
            args.out.mkdir(parents=True, exist_ok=True)
            safetensors.torch.save_file({k: v.detach().contiguous() for k, v in trainer.adapter.state_dict().items()},
                                        str(args.out / "adapter.safetensors"))
        gathered = [None] * info.world_size
        if info.world_size > 1:
            torch.distributed.all_gather_object(gathered, seen)
        else:
            gathered = [seen]
        trainer.close()
        closed_refuses = None  # a closed multi-process trainer must refuse to train on (it would not sync)
        if info.world_size > 1:
            try:
                trainer.train_step()
                closed_refuses = False
            except RefAny3DError:
                closed_refuses = True
        if info.is_main:
            (args.out / "result.json").write_text(json.dumps({"losses": trainer.losses, "world_size": info.world_size,
                                                              "indices": gathered, "backend": info.backend,
                                                              "closed_refuses": closed_refuses}))
    finally:
        if info.is_main and args.late > 0:
            time.sleep(args.late)
        if trainer is not None:
            trainer.close()
        teardown()


if __name__ == "__main__":
    main()

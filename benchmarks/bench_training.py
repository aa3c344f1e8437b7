"""Benchmark of one RefAny3D training step (issue 11): step time and peak memory.

    .legs/v0.31.0/venv/bin/python -m benchmarks.bench_training [--repeats 3] [--no-gpu]

1. Small config on the CPU (a random Flux 256 wide, 2 + 4 blocks, 64 px targets, N = 8 references
   of 64 px, 64 text tokens, the release's rank 16): the time of one optimizer step and its peak
   memory, with and without gradient checkpointing, AdamW and Prodigy, side by side. Each
   configuration runs in its own process; peak memory is the rise of the process's peak resident
   size (``ru_maxrss``) from the built model to the end of the steps (optimizer state, gradients,
   activations). Ratios are printed.
2. When CUDA is present: FLUX.1's real width (3072, 24 heads) with random weights in bf16 and in
   fp8 (e4m3, cast per layer as ComfyUI does), ``--blocks`` blocks, 512 px targets, eight 512 px
   references, 512 text tokens: step time and ``torch.cuda.max_memory_allocated``, next to
   training/memory.py's estimate for the same blocks.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time


def step_worker(cfg: dict) -> dict:
    """One configuration, in this process: build, warm up, time ``repeats`` optimizer steps."""
    import resource

    import torch

    from tools.comfy_env import use_comfy
    use_comfy(cpu=cfg["device"] == "cpu")
    from model_patches.trainable import TrainableAdapter
    from tools import tiny_models as tiny
    from training import TrainConfig, Trainer
    torch.manual_seed(0)
    dev = torch.device(cfg["device"])
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp8": torch.bfloat16}[cfg["dtype"]]
    patcher = tiny.build_flux(hidden_size=cfg["width"], num_heads=cfg["heads"], depth=cfg["double"],
                              depth_single_blocks=cfg["single"], context_in_dim=cfg["ctx"], vec_in_dim=768,
                              axes_dim=cfg.get("axes"), seed=0, dtype=dtype)
    flux = patcher.model.diffusion_model
    if cfg["dtype"] == "fp8":  # weights stored in fp8, cast to bf16 per layer (ComfyUI's manual cast ops)
        for m in flux.modules():
            if isinstance(m, torch.nn.Linear) and hasattr(m, "comfy_cast_weights"):
                m.weight.data = m.weight.data.to(torch.float8_e4m3fn)
                m.comfy_cast_weights = True
    flux.to(dev)
    lat = cfg["size"] // 8
    g = torch.Generator().manual_seed(0)

    def r(*s):
        return torch.randn(*s, generator=g).to(dtype)
    sample = dict(x0_rgb=r(16, lat, lat), x0_point_map=r(16, lat, lat), refs_rgb=r(cfg["views"], 16, lat, lat),
                  refs_point_map=r(cfg["views"], 16, lat, lat), context=r(cfg["text"], cfg["ctx"]), pooled=r(768))
    ad = TrainableAdapter.for_flux(flux, rank=16, seed=0)
    tc = TrainConfig(optimizer=cfg["optimizer"], checkpointing=cfg["checkpointing"], p_drop_prompt=0.0,
                     p_drop_references=0.0)
    trainer = Trainer(flux, ad, [sample], None, tc)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    sync()
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # model and adapter in memory, nothing run yet
    trainer.train_step()  # warm-up (allocations, the optimizer's state)
    times = []
    for _ in range(cfg["repeats"]):
        t0 = time.perf_counter()
        trainer.train_step()
        sync()
        times.append(time.perf_counter() - t0)
    out = {"step_s": min(times)}
    if dev.type == "cuda":
        out["peak_gb"] = torch.cuda.max_memory_allocated() / 1024 ** 3
        out["step_extra_gb"] = (torch.cuda.max_memory_allocated() - base) / 1024 ** 3
    else:
        out["peak_rise_mb"] = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0) / 1024
        out["rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out


def run(cfg: dict) -> dict:
    """``step_worker`` in a fresh process (so peak memory is this configuration's alone)."""
    proc = subprocess.run([sys.executable, "-m", "benchmarks.bench_training", "--worker", json.dumps(cfg)],
                          capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"configuration {cfg} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--no-gpu", action="store_true")
    ap.add_argument("--blocks", type=int, nargs=2, default=(2, 4), metavar=("DOUBLE", "SINGLE"),
                    help="blocks of the real-width CUDA model (FLUX.1-dev: 19 38)")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(step_worker(json.loads(args.worker))))
        return
    import torch
    small = dict(device="cpu", dtype="fp32", width=256, heads=4, double=2, single=4, ctx=64, size=64, views=8,
                 text=64, repeats=args.repeats)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads. Small config: width 256, 2 + 4 blocks, "
          "64 px targets, 8 references, rank 16; best of", args.repeats)
    rows = {}
    for opt in ("adamw", "prodigy"):
        for ckpt in (False, True):
            rows[(opt, ckpt)] = res = run({**small, "optimizer": opt, "checkpointing": ckpt})
            print(f"  {opt:<8s} checkpointing {'on ' if ckpt else 'off'}: step {res['step_s']:.3f} s, peak memory "
                  f"rise over the steps {res['peak_rise_mb']:.0f} MB (process {res['rss_mb']:.0f} MB)")
    a, b = rows[("adamw", False)], rows[("adamw", True)]
    print(f"  checkpointing: step time x{b['step_s'] / a['step_s']:.2f}, step memory rise "
          f"x{b['peak_rise_mb'] / max(a['peak_rise_mb'], 1e-9):.2f}; Prodigy vs AdamW step time "
          f"x{rows[('prodigy', True)]['step_s'] / b['step_s']:.2f}")
    if args.no_gpu or not torch.cuda.is_available():
        print("CUDA: not available; the real-width figures need a GPU")
        return
    from training.memory import FLUX1_DOUBLE, FLUX1_SINGLE, estimate
    d, s = args.blocks
    real = dict(device="cuda", width=3072, heads=24, axes=[16, 56, 56], double=d, single=s, ctx=4096, size=512,
                views=8, text=512, repeats=args.repeats, optimizer="prodigy", checkpointing=True)
    print(f"CUDA {torch.cuda.get_device_name()}: width 3072, {d} + {s} blocks, 512 px, 8 views, 512 text tokens")
    for base, nbytes in (("bf16", 2.0), ("fp8", 1.0)):
        res = run({**real, "dtype": base})
        share = (d + s) / (FLUX1_DOUBLE + FLUX1_SINGLE)
        est = estimate(base_bytes=nbytes, blocks=d + s, base_params=int(11_901_408_320 * share),
                       trainable=int((2 * 57_951_232) * share + 10_230_272))
        print(f"  {base}: step {res['step_s']:.2f} s, peak {res['peak_gb']:.2f} GB (estimate {est.total - est.overhead:.2f}"
              f" GB without overhead); full FLUX.1-dev estimate {estimate(base_bytes=nbytes).describe()}")


if __name__ == "__main__":
    main()

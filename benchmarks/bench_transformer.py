"""Benchmark of refany3d_forward (issue 4, "Must show" 8).

    .legs/v0.31.0/venv/bin/python -m benchmarks.bench_transformer [--quick] [--no-gpu] [--blocks D S]

1. Small config, N = 8 reference views (CPU or GPU): time of one sampling step (one
   refany3d_forward call, reference pass only, and the batched reference + black-reference pass)
   for block-wise attention vs the naive version (one full L×L additive mask), and for the cached
   variant (first step, which computes the reference keys/values, and later steps, which reuse
   them) vs the uncached forward. Ratios are printed.
2. When CUDA is available: the same at FLUX.1's real width (3072, 24 heads, random bf16 weights,
   a few blocks; 512² targets and eight 512² references, 512 text tokens): time per step and peak
   GPU memory, with a per-block figure to extrapolate to FLUX.1-dev's 19 + 38 blocks.
"""
from __future__ import annotations

import argparse
import time

def setup_comfy(cpu: bool) -> None:
    from tools.comfy_env import use_comfy
    use_comfy(cpu=cpu)


CLOCK = time.perf_counter  # wall time on a GPU; CPU time of the process (one thread) on a CPU


def timed(fn, repeats: int, sync) -> float:
    """Best time of ``fn()`` over ``repeats`` calls, in seconds (after two warm-up calls): the
    minimum is the figure least disturbed by other processes on a shared machine."""
    for _ in range(2):
        fn()
    sync()
    times = []
    for _ in range(repeats):
        t0 = CLOCK()
        fn()
        sync()
        times.append(CLOCK() - t0)
    return min(times)


def make_inputs(torch, b, views, tgt, ref, txt, ctx_dim, pooled_dim, dtype, device, seed=0):
    g = torch.Generator(device="cpu").manual_seed(seed)

    def r(*s):
        return torch.randn(*s, generator=g).to(device=device, dtype=dtype)
    return dict(x_rgb=r(b, 16, tgt, tgt), x_point_map=r(b, 16, tgt, tgt), refs_rgb=r(b, views, 16, ref, ref),
                refs_point_map=r(b, views, 16, ref, ref), timestep=torch.full((b,), 0.7, device=device),
                context=r(b, txt, ctx_dim), pooled=r(b, pooled_dim), guidance=torch.full((b,), 3.5, device=device))


def guidance_batch(torch, inp):
    """The reference pass and the black-reference pass batched, as the sampling wrapper runs them."""
    out = {k: torch.cat([v, v]) for k, v in inp.items()}
    out["refs_rgb"] = torch.cat([inp["refs_rgb"], torch.zeros_like(inp["refs_rgb"])])
    out["refs_point_map"] = torch.cat([inp["refs_point_map"], torch.zeros_like(inp["refs_point_map"])])
    return out


def run_suite(torch, flux, adapter, inp, repeats, sync, dense=True, label=""):
    from model_patches import ReferenceCache, refany3d_forward
    from tools.dense_attention import dense_attention
    b = inp["x_rgb"].shape[0]
    pair = guidance_batch(torch, inp)
    mixed = [True] * b + [False] * b

    def call(x, **options):
        return lambda: refany3d_forward(flux, adapter, **x, **options)

    cache = ReferenceCache()

    def cached_first():
        cache.clear()
        refany3d_forward(flux, adapter, **pair, masked=mixed, cached_references=True, reference_cache=cache)

    def cached_later():
        refany3d_forward(flux, adapter, **pair, masked=mixed, cached_references=True, reference_cache=cache)

    rows = {}
    with torch.inference_mode():
        rows["blockwise, reference pass"] = timed(call(inp), repeats, sync)
        if dense:
            rows["dense L×L mask, reference pass"] = timed(call(inp, attention=dense_attention), repeats, sync)
        rows["blockwise, ref + black pass (one step)"] = timed(call(pair, masked=mixed), repeats, sync)
        if dense:
            rows["dense L×L mask, ref + black pass"] = timed(call(pair, masked=mixed, attention=dense_attention), repeats, sync)
        rows["uncached isolated refs, ref + black pass"] = timed(call(pair, masked=mixed, cached_references=True),
                                                                 repeats, sync)
        rows["cached, first step (fills the cache)"] = timed(cached_first, repeats, sync)
        cached_first()
        rows["cached, later step (reuses it)"] = timed(cached_later, repeats, sync)
    print(f"\n{label}")
    for name, t in rows.items():
        print(f"  {name:<44s} {t * 1000:9.1f} ms")
    ratios = {}
    if dense:
        ratios["dense / blockwise (reference pass)"] = rows["dense L×L mask, reference pass"] / rows["blockwise, reference pass"]
        ratios["dense / blockwise (one step, both passes)"] = (rows["dense L×L mask, ref + black pass"]
                                                               / rows["blockwise, ref + black pass (one step)"])
    ratios["uncached / cached later step"] = rows["blockwise, ref + black pass (one step)"] / rows["cached, later step (reuses it)"]
    ratios["uncached isolated / cached later step"] = (rows["uncached isolated refs, ref + black pass"]
                                                       / rows["cached, later step (reuses it)"])
    for name, r in ratios.items():
        print(f"  ratio {name:<42s} {r:7.2f}×")
    return rows, ratios


def small(torch, quick: bool, device) -> None:
    from model_patches import load_adapter
    from tools import tiny_models as tiny
    from tools.release_files import release_state_dicts
    d, heads, depth, single = (64, 2, 1, 1) if quick else (128, 2, 1, 2)
    flux = tiny.build_flux(hidden_size=d, num_heads=heads, depth=depth, depth_single_blocks=single, context_in_dim=64,
                           vec_in_dim=32, seed=0).model.diffusion_model.to(device)
    sds = release_state_dicts(d, depth, single, rank=16, seed=1)
    adapter = load_adapter(sds["reference"], sds["domain"], sds["domain_embedder"])
    tgt = ref = 8 if quick else 16  # latent size: 64 / 128 px → 16 / 64 tokens per image
    inp = make_inputs(torch, 1, 8, tgt, ref, 32, 64, 32, torch.float32, device)
    tokens = 32 + 2 * (tgt // 2) ** 2 + 16 * (ref // 2) ** 2
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    clock = "wall time"
    if device.type == "cpu":  # CPU time of one thread: stable on a machine shared with other processes
        global CLOCK
        CLOCK = time.process_time
        torch.set_num_threads(1)
        clock = "CPU time, 1 thread"
    run_suite(torch, flux, adapter, inp, 5 if quick else 9, sync,
              label=f"small config on {device.type}: D={d}, {heads} heads, {depth}+{single} blocks, N=8 views, "
                    f"{tgt * 8}px targets and references, {tokens} tokens per sample, float32, {clock}")


def real_width(torch, blocks) -> None:
    from model_patches import load_adapter
    from tools import tiny_models as tiny
    from tools.release_files import release_state_dicts
    depth, single = blocks
    device = torch.device("cuda")
    patcher = tiny.build_flux(hidden_size=3072, num_heads=24, depth=depth, depth_single_blocks=single,
                              context_in_dim=4096, vec_in_dim=768, axes_dim=[16, 56, 56], seed=0, dtype=torch.bfloat16)
    flux = patcher.model.diffusion_model.to(device)
    sds = release_state_dicts(3072, depth, single, rank=16, seed=1)
    adapter = load_adapter(sds["reference"], sds["domain"], sds["domain_embedder"])
    inp = make_inputs(torch, 1, 8, 64, 64, 512, 4096, 768, torch.bfloat16, device)
    tokens = 512 + 2 * 1024 + 16 * 1024
    weights = sum(p.numel() * p.element_size() for p in flux.parameters())
    print(f"\nFLUX.1 width on {torch.cuda.get_device_name()}: D=3072, 24 heads, {depth}+{single} blocks (random bf16 "
          f"weights, {weights / 2**30:.2f} GiB), N=8 views, 512² targets and references, 512 text tokens: "
          f"{tokens} tokens per sample")
    from model_patches import ReferenceCache, refany3d_forward
    from tools.dense_attention import dense_attention
    pair = guidance_batch(torch, inp)
    mixed = [True, False]
    cache = ReferenceCache()
    cases = {
        "blockwise, reference pass": lambda: refany3d_forward(flux, adapter, **inp),
        "dense L×L mask, reference pass": lambda: refany3d_forward(flux, adapter, **inp, attention=dense_attention),
        "blockwise, ref + black pass (one step)": lambda: refany3d_forward(flux, adapter, **pair, masked=mixed),
        "cached, first step (fills the cache)": lambda: (cache.clear(), refany3d_forward(
            flux, adapter, **pair, masked=mixed, cached_references=True, reference_cache=cache)),
        "cached, later step (reuses it)": lambda: refany3d_forward(
            flux, adapter, **pair, masked=mixed, cached_references=True, reference_cache=cache),
    }
    results = {}
    with torch.inference_mode():
        for name, fn in cases.items():
            if name.startswith("cached, later"):
                cache.clear()
                cases["cached, first step (fills the cache)"]()
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
            try:
                t = timed(fn, 3, torch.cuda.synchronize)
            except torch.OutOfMemoryError:
                print(f"  {name:<44s} out of memory")
                continue
            peak = torch.cuda.max_memory_allocated() - base
            results[name] = t
            per_block = t / (depth + single)
            print(f"  {name:<44s} {t * 1000:9.1f} ms  ({per_block * 1000:6.1f} ms/block → ≈{per_block * 57:5.1f} s "
                  f"for 19+38 blocks)  peak +{peak / 2**30:6.2f} GiB over weights")
    cache_bytes = sum(k.numel() * k.element_size() + v.numel() * v.element_size()
                      for e in cache.entries for k, v in e.kv)
    print(f"  reference cache: {cache_bytes / 2**30:.2f} GiB for {depth + single} blocks and 2 samples (ref + black) "
          f"→ ≈{cache_bytes / (depth + single) * 57 / 2**30:.1f} GiB for 57 blocks")
    if "dense L×L mask, reference pass" in results:
        print(f"  ratio dense / blockwise (reference pass)     "
              f"{results['dense L×L mask, reference pass'] / results['blockwise, reference pass']:7.2f}×")
    if "cached, later step (reuses it)" in results:
        print(f"  ratio uncached / cached later step           "
              f"{results['blockwise, ref + black pass (one step)'] / results['cached, later step (reuses it)']:7.2f}×")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="a smaller small config (a few seconds on a CPU)")
    ap.add_argument("--no-gpu", action="store_true", help="skip the real-width GPU part")
    ap.add_argument("--blocks", type=int, nargs=2, default=(2, 4), metavar=("DOUBLE", "SINGLE"),
                    help="blocks of the real-width model (default 2 4)")
    args = ap.parse_args()
    import torch
    cuda = torch.cuda.is_available() and not args.no_gpu
    setup_comfy(cpu=not torch.cuda.is_available())
    torch.manual_seed(0)
    small(torch, args.quick, torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    if cuda:
        real_width(torch, tuple(args.blocks))
    else:
        print("\n(no CUDA device: the real-width part is skipped)")


if __name__ == "__main__":
    main()

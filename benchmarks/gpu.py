"""The prepared GPU check (issue 22): FLUX.1-dev's real shape with random weights, one table.

    python -m benchmarks.gpu [--out gpu_check.md]      # on a CUDA GPU (under 8 minutes on one H200)
    python -m benchmarks.gpu --dry-run                  # the same table at tiny sizes on the CPU (a test)

scripts/gpu_check.sh runs it on a bare GPU machine (ComfyUI and the few wheels it lacks carried in).

Shape: 19 double + 38 single blocks, width 3072, 24 heads, a 512² target (both targets: 2 × 1024
tokens), N = 8 references at 512² (16 384 tokens), 512 text tokens, a random release-format adapter
(rank 16). Two bases: bf16 weights, and fp8 e4m3 weights cast to bf16 per layer by ComfyUI's own
operations (``comfy.ops.pick_operations``, as ComfyUI loads an fp8 checkpoint). The model is created
directly on the device and filled in place (no second copy, no CPU round trip).

Rows, each with its peak memory (``torch.cuda.max_memory_allocated``, weights included):

* one sampling step, the reference + black-reference batch as the sampling patch runs it (release
  guidance pass: unmasked): uncached; cached variant first step (records) and later steps (reuse),
  the cache placed by the pack's own decision from this card's free memory (model_patches.cache);
  for the fp8 base also as on a 24 GB card (the cache where it fits there);
* the projected time per image for 28 steps with image guidance (uncached: 28 steps; cached: the
  first + 27 later steps), with the FLOP model of docs/method.md §8 as achieved TFLOP/s and its
  share of the card's bf16 peak;
* one training step (gradient checkpointing on, batch 1, AdamW) on each base, its peak beside the
  memory plan's estimate (training/memory.py);
* the pack's renderer on CUDA: 8 views × 512² of a textured sphere with 100k and 500k faces.
"""
from __future__ import annotations

import argparse
import gc
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

#: dense bf16 peak of one H200 / H100 SXM (TFLOP/s), the yardstick of the share column
PEAK_TFLOPS = 790.0
CARD_24GB = 24 * 1024 ** 3
GIB = 1024 ** 3


@dataclass(frozen=True)
class Shape:
    width: int = 3072
    heads: int = 24
    double: int = 19
    single: int = 38
    ctx: int = 4096
    pooled: int = 768
    axes: tuple | None = (16, 56, 56)
    size: int = 512          # target, px
    views: int = 8
    ref_size: int = 512      # references, px
    text: int = 512
    rank: int = 16
    steps: int = 28
    faces: tuple = (100_000, 500_000)
    render_res: int = 512
    repeats: int = 2

    @property
    def tokens(self) -> dict:
        n, m = (self.size // 16) ** 2, (self.ref_size // 16) ** 2
        return dict(T=self.text, n=n, N=self.views, m=m)


FULL = Shape()
DRY = Shape(width=64, heads=2, double=2, single=2, ctx=32, pooled=16, axes=None, size=64, views=2, ref_size=64, text=8,
            faces=(1_280, 5_120), render_res=64, repeats=1)


# ---------------------------------------------------------------------------------------------
# the FLOP model (docs/method.md §8)

def attention_pairs(T: int, n: int, N: int, m: int, masked: bool, isolated: bool, refs_in_sequence: bool) -> int:
    """(query, key) pairs of one block's group attention for one sample (docs/method.md §4)."""
    P, R = T + 2 * n, 2 * N * m
    L = P + R
    refs_q = R if refs_in_sequence else 0
    if not masked and not isolated:
        return (P + refs_q) * L
    pairs = (T + n) * L + n * (L - T) if masked else P * L
    if refs_q:
        if isolated:
            pairs += R * (2 * m if masked else R)
        else:
            pairs += R * (P + 2 * m)
    return pairs


def forward_flops(shape: Shape, masked: bool, isolated: bool, refs_in_sequence: bool) -> float:
    """FLOPs of one sample's forward: every token through 12·D² multiply-adds of weights per block
    (double: qkv 3, proj 1, MLP 8; single: linear1 7, linear2 5), the rank-r LoRAs on the image tokens,
    and 4·D FLOPs per (query, key) pair per block."""
    t, D, blocks = shape.tokens, shape.width, shape.double + shape.single
    image = 2 * t["n"] + (2 * t["N"] * t["m"] if refs_in_sequence else 0)
    tokens = t["T"] + image
    dense = 2 * 12 * D * D * tokens * blocks
    lora = 2 * 2 * shape.rank * 13 * D * image * blocks  # two LoRAs, ≈ (in + out) of 13·D per block
    attn = 4 * D * attention_pairs(t["T"], t["n"], t["N"], t["m"], masked, isolated, refs_in_sequence) * blocks
    return float(dense + lora + attn)


def step_flops(shape: Shape, variant: str) -> float:
    """One sampling step = the reference pass (masked) + the black-reference pass (unmasked)."""
    if variant == "uncached":
        return forward_flops(shape, True, False, True) + forward_flops(shape, False, False, True)
    first = variant == "cached first"
    return forward_flops(shape, True, True, first) + forward_flops(shape, False, True, first)


# ---------------------------------------------------------------------------------------------
# the model, the adapter, the inputs

def build_flux(shape: Shape, base: str, device, seed: int = 0):
    """A FLUX.1 (ComfyUI's ``Flux``) of ``shape`` made on ``device`` and filled with random values in
    place: bf16 weights, or fp8 e4m3 weights with ComfyUI's cast operations for a bf16 compute dtype."""
    import comfy.ops
    import torch
    from comfy.ldm.flux.model import Flux

    from tools.tiny_models import _bfl_key, _param_kind, flux_unet_config
    cfg = flux_unet_config(shape.width, shape.heads, shape.double, shape.single, shape.ctx, shape.pooled,
                           list(shape.axes) if shape.axes else None)
    weight = {"bf16": torch.bfloat16, "fp8": torch.float8_e4m3fn}[base]
    ops = comfy.ops.pick_operations(weight, torch.bfloat16, load_device=device)
    flux = Flux(**cfg, dtype=weight, device=device, operations=ops)
    g = torch.Generator(device=device).manual_seed(seed)
    with torch.no_grad():
        for name, p in flux.named_parameters():
            kind, scale = _param_kind(_bfl_key(name), tuple(p.shape))
            values = torch.empty(p.shape, dtype=torch.bfloat16, device=device).normal_(0.0, scale, generator=g)
            if kind == "ones":
                values += 1.0
            p.copy_(values)
            del values
    flux.requires_grad_(False)
    return flux


def build_adapter(shape: Shape, device):
    import torch

    from model_patches import load_adapter
    from model_patches.adapter import AdapterWeights
    from tools.release_files import release_state_dicts
    sds = release_state_dicts(shape.width, shape.double, shape.single, rank=shape.rank, seed=1)
    return AdapterWeights(load_adapter(sds["reference"], sds["domain"], sds["domain_embedder"]),
                          torch.bfloat16).to(device)


def step_inputs(shape: Shape, device) -> dict:
    """One sample's inputs doubled as the sampling patch batches them: reference pass, black pass."""
    import torch
    g = torch.Generator().manual_seed(0)
    lat, ref = shape.size // 8, shape.ref_size // 8

    def r(*s):
        return torch.randn(*s, generator=g).to(device=device, dtype=torch.bfloat16)
    one = dict(x_rgb=r(1, 16, lat, lat), x_point_map=r(1, 16, lat, lat), refs_rgb=r(1, shape.views, 16, ref, ref),
               refs_point_map=r(1, shape.views, 16, ref, ref), timestep=torch.full((1,), 0.7, device=device),
               context=r(1, shape.text, shape.ctx), pooled=r(1, shape.pooled),
               guidance=torch.full((1,), 3.5, device=device))
    two = {k: torch.cat([v, v]) for k, v in one.items()}
    for k in ("refs_rgb", "refs_point_map"):
        two[k] = torch.cat([one[k], torch.zeros_like(one[k])])
    return two


# ---------------------------------------------------------------------------------------------
# measuring

@dataclass
class Row:
    section: str
    case: str
    seconds: float | None = None
    peak: float | None = None          # bytes
    per_image: float | None = None     # seconds
    flops: float | None = None         # of one timed call
    note: str = ""


@dataclass
class Meter:
    device: object
    repeats: int
    rows: list = field(default_factory=list)

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    def sync(self):
        if self.cuda:
            import torch
            torch.cuda.synchronize()

    def time(self, fn, warmup: int = 1) -> tuple[float, float | None]:
        """Best wall time of ``fn`` over ``repeats`` calls after ``warmup``, and the peak memory
        allocated on the device during them (None on a CPU)."""
        import torch
        for _ in range(warmup):
            fn()
        self.sync()
        if self.cuda:
            torch.cuda.reset_peak_memory_stats()
        best = math.inf
        for _ in range(self.repeats):
            t0 = time.perf_counter()
            fn()
            self.sync()
            best = min(best, time.perf_counter() - t0)
        return best, (torch.cuda.max_memory_allocated() if self.cuda else None)

    def add(self, row: Row) -> Row:
        self.rows.append(row)
        print(format_row(row), flush=True)
        return row

    def guarded(self, section: str, case: str, fn) -> Row | None:
        """Run one measurement; an out-of-memory error becomes a row that says so."""
        import torch
        try:
            return fn()
        except torch.OutOfMemoryError:
            gc.collect()
            if self.cuda:
                torch.cuda.empty_cache()
            return self.add(Row(section, case, note="out of memory"))


def sampling_rows(meter: Meter, shape: Shape, flux, adapter, base: str) -> None:
    """One sampling step of the ref + black batch: uncached, cached first and later steps."""
    import torch

    from model_patches import refany3d_forward
    from model_patches.cache import MemoryBudget
    inp = step_inputs(shape, meter.device)
    mixed = [True, False]  # reference pass masked, black pass unmasked (the release's guidance pass)
    section = f"sampling, {base} base"
    with torch.inference_mode():
        def uncached():
            t, peak = meter.time(lambda: refany3d_forward(flux, adapter, **inp, masked=mixed))
            return meter.add(Row(section, "step, uncached (ref + black pass)", t, peak, shape.steps * t,
                                 step_flops(shape, "uncached")))
        plain = meter.guarded(section, "step, uncached", uncached)
        weights = sum(p.numel() * p.element_size() for p in flux.parameters())
        step_memory = (plain.peak - weights) if plain and plain.peak else 0
        budgets = [("this card's free memory", MemoryBudget(step_memory=step_memory))]
        if base == "fp8":
            room = 0 if not meter.cuda else max(0, CARD_24GB - (plain.peak if plain and plain.peak else 0))
            budgets.append(("a 24 GB card", MemoryBudget(device=room, step_memory=step_memory)))
        for label, budget in budgets:
            meter.guarded(section, f"cached ({label})", lambda b=budget, lab=label: cached(
                meter, shape, flux, adapter, inp, mixed, b, lab, section))
    if meter.cuda:
        torch.cuda.empty_cache()


def cached(meter, shape, flux, adapter, inp, mixed, budget, label, section):
    from model_patches import refany3d_forward
    from model_patches.cache import ReferenceCache
    cache = ReferenceCache(budget=budget)

    def first():
        cache.clear()
        refany3d_forward(flux, adapter, **inp, masked=mixed, cached_references=True, reference_cache=cache)

    def later():
        refany3d_forward(flux, adapter, **inp, masked=mixed, cached_references=True, reference_cache=cache)
    t1, p1 = meter.time(first)
    decision = cache.decisions[-1]
    where = f"cache placed: {decision.placement}, {size(decision.size.bytes)}"
    meter.add(Row(section, f"step, cached first ({label})", t1, p1, None, step_flops(shape, "cached first"), where))
    first()
    t2, p2 = meter.time(later, warmup=0)
    meter.add(Row(section, f"step, cached later ({label})", t2, p2, t1 + (shape.steps - 1) * t2,
                  step_flops(shape, "cached later"), where))
    cache.clear()


def training_rows(meter: Meter, shape: Shape, flux, base: str) -> None:
    import torch

    from model_patches.trainable import TrainableAdapter
    from training import TrainConfig, Trainer
    from training.memory import estimate
    g = torch.Generator().manual_seed(0)
    lat, ref = shape.size // 8, shape.ref_size // 8

    def r(*s):
        return torch.randn(*s, generator=g).to(torch.bfloat16)
    sample = dict(x0_rgb=r(16, lat, lat), x0_point_map=r(16, lat, lat), refs_rgb=r(shape.views, 16, ref, ref),
                  refs_point_map=r(shape.views, 16, ref, ref), context=r(shape.text, shape.ctx), pooled=r(shape.pooled))
    section = f"training, {base} base"
    params = sum(p.numel() for p in flux.parameters())

    def step():
        adapter = TrainableAdapter.for_flux(flux, rank=shape.rank, seed=0)
        trainable = sum(p.numel() for p in adapter.parameters())
        trainer = Trainer(flux, adapter, [sample], None, TrainConfig(optimizer="adamw", checkpointing=True,
                                                                     p_drop_prompt=0.0, p_drop_references=0.0))
        t, peak = meter.time(trainer.train_step)
        est = estimate(size=shape.size, views=shape.views, base_bytes={"bf16": 2.0, "fp8": 1.0}[base],
                       optimizer="adamw", width=shape.width, blocks=shape.double + shape.single, base_params=params,
                       trainable=trainable, text=shape.text)
        row = Row(section, "step, checkpointing, batch 1, AdamW", t, peak, None,
                  4 * forward_flops(shape, True, False, True),  # forward, recomputed forward, backward (2×)
                  f"memory plan's estimate {est.total:.2f} GiB")
        del trainer, adapter
        return meter.add(row)
    meter.guarded(section, "step", step)
    gc.collect()
    if meter.cuda:
        torch.cuda.empty_cache()


def textured_sphere(n_faces: int):
    """bench_render's asset without PIL (the GPU machine may lack it): a UV sphere with about
    ``n_faces`` faces (poles on ±Y, wound outward) and a smooth 256² texture."""
    import torch

    from rendering.asset import Asset, Texture
    n = max(4, int(round(math.sqrt(n_faces / 2))))
    t = torch.linspace(0.0, math.pi, n + 1, dtype=torch.float64)[:, None].expand(n + 1, n + 1)
    p = torch.linspace(0.0, 2 * math.pi, n + 1, dtype=torch.float64)[None, :].expand(n + 1, n + 1)
    v = torch.stack([t.sin() * p.cos(), t.cos(), t.sin() * p.sin()], -1).reshape(-1, 3)
    uv = torch.stack([p / (2 * math.pi), 1 - t / math.pi], -1).reshape(-1, 2)
    i, j, w = torch.arange(n)[:, None], torch.arange(n)[None, :], n + 1
    a, b, c, d = i * w + j, i * w + j + 1, (i + 1) * w + j, (i + 1) * w + j + 1
    f = torch.cat([torch.stack([a, b, c], -1).reshape(-1, 3), torch.stack([b, d, c], -1).reshape(-1, 3)])
    y, x = torch.meshgrid(torch.arange(256) / 256, torch.arange(256) / 256, indexing="ij")
    rgb = torch.stack([0.5 + 0.5 * torch.sin(2 * math.pi * x), 0.5 + 0.5 * torch.cos(2 * math.pi * y),
                       0.5 + 0.5 * torch.sin(2 * math.pi * (x + y))], -1)
    vt = v.float()
    return Asset(vt, f, torch.full_like(vt, 0.5), uv=uv.float(), face_texture=torch.zeros(len(f), dtype=torch.int64),
                 textures=[Texture((rgb * 255).round().to(torch.uint8), torch.ones(3))], name=f"sphere{n_faces}")


def render_rows(meter: Meter, shape: Shape) -> None:
    """The pack's renderer as RefAny3D Render Views runs it (back faces skipped when the mesh is
    closed; that check needs scipy, and the note says whether it ran)."""
    import rendering
    device = str(meter.device)
    for faces in shape.faces:
        asset = textured_sphere(faces)
        culled = asset.closed_orientation() != 0
        t, peak = meter.time(lambda a=asset: rendering.render_views(a, 8, resolution=shape.render_res, device=device))
        meter.add(Row("rendering", f"8 views × {shape.render_res}², {asset.num_faces} faces", t, peak,
                      note="back faces skipped" if culled else "back faces not skipped (no scipy here)"))


# ---------------------------------------------------------------------------------------------
# the table

HEADER = "| section | case | time | per image (28 steps) | TFLOP/s (share of peak) | peak memory | note |"


def format_row(row: Row) -> str:
    def secs(s):
        return "—" if s is None else (f"{s * 1000:.1f} ms" if s < 1 else f"{s:.2f} s")
    rate = "—"
    if row.seconds and row.flops:
        tf = row.flops / row.seconds / 1e12
        rate = f"{tf:.3g} ({100 * tf / PEAK_TFLOPS:.2g} %)"
    return (f"| {row.section} | {row.case} | {secs(row.seconds)} | {secs(row.per_image)} | {rate} | {size(row.peak)} "
            f"| {row.note} |")


def size(nbytes) -> str:
    if nbytes is None:
        return "—"
    return f"{nbytes / GIB:.2f} GiB" if nbytes >= GIB / 10 else f"{nbytes / 2 ** 20:.2f} MiB"


GOALS = (  # (what, section, case prefix, limit, the row's figure)
    ("≤ 10 s per image, bf16 base, cached", "sampling, bf16 base", "step, cached later (this", 10.0, "per_image"),
    ("≤ 10 s per image, bf16 base, uncached", "sampling, bf16 base", "step, uncached", 10.0, "per_image"),
    ("peak ≤ 24 GB, fp8 base, cache placed for a 24 GB card", "sampling, fp8 base", "step, cached first (a 24",
     24e9, "peak"),
    ("training step ≤ 3 s, bf16 base", "training, bf16 base", "step", 3.0, "seconds"),
    ("training step fits 24 GB, fp8 base, batch 1", "training, fp8 base", "step", 24e9, "peak"),
)


def goals(meter: Meter, dry: bool = False) -> list[str]:
    """The issue's goals (for an H100-class GPU, 512², N = 8, 28 steps with image guidance), each with
    the figure that answers it (a CPU dry run shows the lines, not a verdict that means anything)."""
    out = ["", "Goals (issue 22):"]
    for text, section, prefix, limit, attr in GOALS:
        row = next((r for r in meter.rows if r.section == section and r.case.startswith(prefix)), None)
        value = getattr(row, attr) if row is not None else None
        shown = "—" if value is None else (size(value) if attr == "peak" else f"{value:.2f} s")
        verdict = "not measured" if value is None else "dry run, no verdict" if dry else \
            "met" if value <= limit else "NOT met"
        out.append(f"- {text}: {shown} ({verdict})")
    return out


def table(meter: Meter, title: list[str]) -> str:
    lines = title + ["", HEADER, "|" + " --- |" * 7] + [format_row(r) for r in meter.rows]
    return "\n".join(lines) + "\n"


def comfy_version(comfy_dir: Path) -> str:
    import re
    f = comfy_dir / "comfyui_version.py"
    m = re.search(r'__version__\s*=\s*"([^"]+)"', f.read_text()) if f.exists() else None
    return m.group(1) if m else "v0.3.x"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dry-run", action="store_true", help="tiny sizes on the CPU: the same table, in seconds")
    ap.add_argument("--out", default="gpu_check.md", help="where the table is written (Markdown)")
    ap.add_argument("--only", nargs="*", choices=["bf16", "fp8", "training", "render"],
                    help="run only these parts (default: all)")
    args = ap.parse_args(argv)
    import torch
    from tools.comfy_env import use_comfy
    cuda = torch.cuda.is_available() and not args.dry_run
    comfy_dir = use_comfy(cpu=not cuda)
    shape = DRY if args.dry_run else FULL
    if not cuda and not args.dry_run:
        print("no CUDA device: run with --dry-run for the tiny CPU version", file=sys.stderr)
        return 2
    device = torch.device("cuda" if cuda else "cpu")
    parts = set(args.only or ["bf16", "fp8", "training", "render"])
    meter = Meter(device, shape.repeats)
    start = time.perf_counter()
    name = torch.cuda.get_device_name() if cuda else "CPU (dry run, tiny sizes)"
    title = [f"# RefAny3D GPU check: {name}", "",
             f"torch {torch.__version__}, ComfyUI {comfy_version(comfy_dir)}, Python {sys.version.split()[0]}; FLUX.1 shape "
             f"{shape.double}+{shape.single} blocks, width {shape.width}, {shape.heads} heads; {shape.size}² target, "
             f"N = {shape.views} references at {shape.ref_size}², {shape.text} text tokens; best of {shape.repeats}; "
             f"share of {PEAK_TFLOPS:.0f} TFLOP/s (bf16 dense) by the FLOP model of docs/method.md §8."]
    print("\n".join(title) + "\n\n" + HEADER + "\n|" + " --- |" * 7, flush=True)
    adapter = build_adapter(shape, device) if parts & {"bf16", "fp8"} else None
    for base in ("bf16", "fp8"):
        if base not in parts and "training" not in parts:
            continue
        t0 = time.perf_counter()
        flux = build_flux(shape, base, device)
        if cuda:
            torch.cuda.synchronize()
        print(f"(built the {base} model in {time.perf_counter() - t0:.1f} s)", file=sys.stderr, flush=True)
        if base in parts:
            sampling_rows(meter, shape, flux, adapter, base)
        if "training" in parts:
            training_rows(meter, shape, flux, base)
        del flux
        gc.collect()
        if cuda:
            torch.cuda.empty_cache()
    if "render" in parts:
        render_rows(meter, shape)
    summary = goals(meter, dry=args.dry_run) + ["", f"Total time of the check: {time.perf_counter() - start:.0f} s."]
    print("\n".join(summary))
    text = table(meter, title) + "\n".join(summary) + "\n"
    Path(args.out).write_text(text, encoding="utf-8")
    print(f"table written to {args.out}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The prepared GPU check (benchmarks/gpu.py, issue 22) and its FLOP model.

* ``--dry-run`` runs the whole check at tiny sizes on the CPU and writes the same table it prints:
  every row of the GPU run is there (sampling steps on both bases with the cache's placement, the
  24 GB-card case in CPU memory, training beside the memory plan, rendering), so the check cannot
  rot before a GPU runs it.
* The FLOP model of docs/method.md §8: the attention pairs equal the allowed entries of the dense
  group mask (tools/dense_attention.py, the L×L oracle), and the weight FLOPs per token equal the
  block weights of ComfyUI's real FLUX.1-dev module (built on the meta device).
"""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from benchmarks.gpu import FULL, HEADER, attention_pairs, forward_flops
from conftest import ROOT
from model_patches.tokens import Layout
from tools.dense_attention import dense_group_mask


@pytest.mark.parametrize("masked", [True, False])
@pytest.mark.parametrize("isolated", [True, False])
def test_attention_pairs_equal_the_dense_mask(masked, isolated):
    T, n, N, m = 3, 4, 2, 6
    lay = Layout(txt=T, tgt=n, tgt_hw=(2, 2), views=N, ref=m, ref_hw=(2, 3))
    mask = dense_group_mask(lay, masked=masked, isolated_refs=isolated)
    assert attention_pairs(T, n, N, m, masked, isolated, True) == int(mask.sum())
    if isolated:  # cached later steps: only text and targets are queries; keys include the cached references
        assert attention_pairs(T, n, N, m, masked, isolated, False) == int(mask[:lay.prefix].sum())


def test_weight_flops_per_token_equal_flux1_dev_block_weights():
    from tools.tiny_models import FLUX_REAL, flux_parameter_shapes, flux_unet_config
    shapes = flux_parameter_shapes(flux_unet_config(**FLUX_REAL, depth=19, depth_single_blocks=38))
    double = sum(s[0] * s[1] for k, s in shapes.items()
                 if k.startswith("double_blocks.") and len(s) == 2 and "_mod." not in k)
    single = sum(s[0] * s[1] for k, s in shapes.items()
                 if k.startswith("single_blocks.") and len(s) == 2 and "modulation" not in k)
    per_token = double // 2 + single  # a token goes through the image or the text stream of a double block
    shape = FULL
    no_refs = forward_flops(shape, True, True, False)  # attention and LoRAs subtracted below
    t = shape.tokens
    tokens = t["T"] + 2 * t["n"]
    lora = 2 * 2 * shape.rank * 13 * shape.width * 2 * t["n"] * 57
    attn = 4 * shape.width * attention_pairs(t["T"], t["n"], t["N"], t["m"], True, True, False) * 57
    assert no_refs - lora - attn == 2 * per_token * tokens


def test_dry_run_prints_and_writes_the_whole_table(tmp_path):
    out = tmp_path / "gpu_check.md"
    proc = subprocess.run([sys.executable, "-m", "benchmarks.gpu", "--dry-run", "--out", str(out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=900, env=dict(os.environ))
    assert proc.returncode == 0, proc.stderr[-4000:]
    text = out.read_text(encoding="utf-8")
    rows = [line for line in text.splitlines() if line.startswith("| ") and line != HEADER and "| --- |" not in line]
    for row in rows:  # the file holds exactly the rows it printed
        assert row in proc.stdout.splitlines(), row
    cases = [tuple(c.strip() for c in row.split("|")[1:3]) for row in rows]
    for base in ("bf16", "fp8"):
        s = f"sampling, {base} base"
        assert (s, "step, uncached (ref + black pass)") in cases
        assert (s, "step, cached first (this card's free memory)") in cases
        assert (s, "step, cached later (this card's free memory)") in cases
        assert (f"training, {base} base", "step, checkpointing, batch 1, AdamW") in cases
    assert ("sampling, fp8 base", "step, cached later (a 24 GB card)") in cases
    assert [c for c in cases if c[0] == "rendering"] == [("rendering", "8 views × 64², 1250 faces"),
                                                          ("rendering", "8 views × 64², 5202 faces")]
    by_case = {tuple(c.strip() for c in row.split("|")[1:3]): row for row in rows}
    assert "cache placed: device" in by_case[("sampling, bf16 base", "step, cached later (this card's free memory)")]
    assert "cache placed: host" in by_case[("sampling, fp8 base", "step, cached later (a 24 GB card)")]
    assert "memory plan's estimate" in by_case[("training, fp8 base", "step, checkpointing, batch 1, AdamW")]
    for row in rows:
        assert " s |" in row or " ms |" in row, row  # every case was timed (no "out of memory")
    assert "Goals (issue 22):" in text and "dry run, no verdict" in text

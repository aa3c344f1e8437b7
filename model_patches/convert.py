"""Convert the released ``domain_embedder.pth`` (a pickle) to ``.safetensors``.

    python -m model_patches.convert domain_embedder.pth domain_embedder.safetensors

(run from the pack's folder). The .pth is read
with ``torch.load(weights_only=True)`` only, and its keys and shapes are checked.
"""
from __future__ import annotations

import argparse
import sys

from .weights import AdapterError, convert_domain_embedder


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m model_patches.convert", description=__doc__.strip().splitlines()[0])
    ap.add_argument("pth", help="domain_embedder.pth (pickled state dict, read with weights_only=True)")
    ap.add_argument("out", help="output .safetensors path")
    args = ap.parse_args(argv)
    if not args.out.lower().endswith(".safetensors"):
        ap.error("the output file must end with .safetensors")
    try:
        out = convert_domain_embedder(args.pth, args.out)
    except AdapterError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

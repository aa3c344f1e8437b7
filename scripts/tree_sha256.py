"""sha256 of a source tree's content: one line "<sha256 of the file>  <path>" per regular file, sorted by
path, hashed together. Paths are relative to the tree's folder; files named after it are left out.

    python scripts/tree_sha256.py DIR [SKIPPED_PATH ...]

scripts/setup.sh uses it to check a ComfyUI release fetched from its upstream repository against the
tree of the pinned source archive (a repository archive differs from that archive byte for byte)."""
import hashlib
import os
import sys


def tree_sha256(root: str, skipped=()) -> str:
    lines = []
    for folder, _dirs, files in os.walk(root):
        for name in files:
            path = os.path.join(folder, name)
            rel = os.path.relpath(path, root).replace(os.sep, "/")
            if rel in skipped or os.path.islink(path):
                continue
            with open(path, "rb") as f:
                lines.append(f"{hashlib.sha256(f.read()).hexdigest()}  {rel}\n")
    return hashlib.sha256("".join(sorted(lines, key=lambda s: s[66:])).encode()).hexdigest()


if __name__ == "__main__":
    print(tree_sha256(sys.argv[1], set(sys.argv[2:])))

"""The reference cache of the cached variant (docs/method.md §4).

With isolated references (they attend only to references) their hidden states depend only on the
reference latents, the pooled vector (their modulation) and the model, never on the step: their
keys/values in every block are computed once and reused at every later step and by the
image-guidance pass (black references get their own entry).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor


def _same(a: Tensor | None, b: Tensor | None) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return a.shape == b.shape and a.dtype == b.dtype and a.device == b.device and torch.equal(a, b)


@dataclass
class CacheEntry:
    """One sample's references: what they were computed from, and per block (k, v) [1, H, 2Nm, d]."""
    refs_rgb: Tensor
    refs_pm: Tensor
    pooled: Tensor | None
    key: tuple
    kv: list = field(default_factory=list)

    def same_sample(self, refs_rgb: Tensor, refs_pm: Tensor, pooled: Tensor | None, key: tuple) -> bool:
        return self.key == key and _same(self.refs_rgb, refs_rgb) and _same(self.refs_pm, refs_pm) and \
            _same(self.pooled, pooled)


class ReferenceCache:
    """Reference keys/values per sample. An entry is found again only when the reference latents and
    the pooled vector equal the stored ones (torch.equal) and model, adapter, dtype, device, mask mode
    and RoPE shift (``key``) are the same. At most ``max_entries`` samples are kept (least recently
    used dropped); :meth:`clear` frees them (the sampling wrapper does at every run)."""

    def __init__(self, max_entries: int = 4):
        self.max_entries = int(max_entries)
        self.entries: list[CacheEntry] = []
        self.hits = 0
        self.misses = 0

    def clear(self) -> None:
        self.entries.clear()

    def __len__(self) -> int:
        return len(self.entries)

    def find(self, refs_rgb: Tensor, refs_pm: Tensor, pooled: Tensor | None, key: tuple) -> CacheEntry | None:
        for i, e in enumerate(self.entries):
            if e.same_sample(refs_rgb, refs_pm, pooled, key):
                self.entries.append(self.entries.pop(i))
                return e
        return None

    def add(self, entry: CacheEntry) -> None:
        self.entries.append(entry)
        while len(self.entries) > self.max_entries:
            self.entries.pop(0)

    def plan(self, refs_rgb: Tensor, refs_pm: Tensor, pooled: Tensor | None, keys: list[tuple]) -> "CachePlan":
        """What one call does: reuse every sample's entry (all must hit), or compute the references
        and record one new entry per distinct sample that is not cached yet. ``refs_*`` [B, N, C, h, w],
        ``pooled`` [B, P] or None, ``keys[b]`` the model/mode key of sample b."""
        b = refs_rgb.shape[0]
        pooled_of = [None if pooled is None else pooled[i] for i in range(b)]
        found = [self.find(refs_rgb[i], refs_pm[i], pooled_of[i], keys[i]) for i in range(b)]
        if all(e is not None for e in found):
            self.hits += 1
            return CachePlan(self, reuse=found)
        self.misses += 1
        record: dict[int, CacheEntry] = {}
        for i in range(b):
            if found[i] is None and not any(e.same_sample(refs_rgb[i], refs_pm[i], pooled_of[i], keys[i])
                                            for e in record.values()):
                record[i] = CacheEntry(refs_rgb[i].clone(), refs_pm[i].clone(),
                                       None if pooled_of[i] is None else pooled_of[i].clone(), keys[i])
        return CachePlan(self, record=record)


class CachePlan:
    """The cache's part in one forward call. ``reuse``: per sample the entry whose keys/values stand in
    for the reference tokens (they are then not in the sequence); ``record``: sample index -> new
    entry, filled block by block and added to the cache by :meth:`commit`."""

    def __init__(self, cache: ReferenceCache | None = None, reuse: list[CacheEntry] | None = None,
                 record: dict[int, CacheEntry] | None = None):
        self.cache = cache
        self.reuse = reuse
        self.record = record or {}

    @property
    def refs_in_sequence(self) -> bool:
        return self.reuse is None

    def keys_values(self, block: int, k: Tensor, v: Tensor, prefix: int) -> tuple[Tensor, Tensor]:
        """Block ``block``'s keys/values [B, H, L, d] as attention needs them: the new references'
        recorded, or the cached ones appended after the ``prefix`` tokens computed in this call."""
        for s, entry in self.record.items():
            entry.kv.append((k[s:s + 1, :, prefix:].clone(), v[s:s + 1, :, prefix:].clone()))
        if self.reuse is None:
            return k, v
        return self._joined(k, block, 0), self._joined(v, block, 1)

    def _joined(self, t: Tensor, block: int, j: int) -> Tensor:
        if all(e is self.reuse[0] for e in self.reuse):  # one entry serves the whole batch: no copies
            cached = self.reuse[0].kv[block][j].expand(t.shape[0], -1, -1, -1)
        else:
            cached = torch.cat([e.kv[block][j] for e in self.reuse])
        return torch.cat([t, cached], dim=2)

    def commit(self) -> None:
        for entry in self.record.values():
            self.cache.add(entry)


#: No cache: every call computes the references.
NO_CACHE = CachePlan()

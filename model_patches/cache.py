"""The reference cache of the cached variant (docs/method.md §4) and where it is kept.

With isolated references (they attend only to references) their hidden states depend only on the
reference latents, the pooled vector (their modulation) and the model, never on the step: their
keys/values in every block are computed once and reused at every later step and by the
image-guidance pass (black references get their own entry).

At FLUX.1-dev's size these keys/values are large (57 blocks × K and V × 24 heads × 16 384
reference tokens × 128 in bf16 ≈ 11.5 GB per sample at N = 8 and 512² references; twice that with
the guidance pass). So before an entry is recorded its size is known (:class:`CacheSize`) and a
placement is chosen from the memory there is (:func:`choose_placement`):

* ``device``: on the compute device, beside the loaded model, when it fits there;
* ``host``: in CPU memory (pinned where the compute device is CUDA), each block's keys/values
  brought to the device when that block runs;
* ``none``: not cached; every step computes the references again (the same isolated-reference
  forward, so the same outputs, only slower).

The memory figures come from a :class:`MemoryBudget`: ComfyUI's model management (which is asked to
unload models this sampling does not use when the device is short), bounded by the user's own
limits where given (RefAny3D Apply's cache inputs, tests, benchmarks).
"""
from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

DEVICE, HOST, NONE = "device", "host", "none"
PLACEMENTS = (DEVICE, HOST, NONE)
GB = 1024 ** 3
#: CPU memory left free beside a host-placed cache (the rest of the process, ComfyUI's RAM cache).
HOST_MARGIN = 4 * GB


def _same(a: Tensor | None, b: Tensor | None) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return a.shape == b.shape and a.dtype == b.dtype and a.device == b.device and torch.equal(a, b)


@dataclass(frozen=True)
class CacheSize:
    """The size of ``samples`` cache entries: per block K and V of every reference token, per head."""
    samples: int
    blocks: int
    heads: int
    tokens: int
    head_dim: int
    dtype: torch.dtype

    @property
    def bytes(self) -> int:
        itemsize = torch.empty((), dtype=self.dtype).element_size()
        return self.samples * self.blocks * 2 * self.heads * self.tokens * self.head_dim * itemsize

    def describe(self) -> str:
        return (f"{self.bytes / GB:.2f} GB ({self.samples} sample{'s' if self.samples != 1 else ''} × "
                f"{self.blocks} blocks × K,V × {self.heads} heads × {self.tokens} reference tokens × "
                f"{self.head_dim}, {str(self.dtype).replace('torch.', '')})")


def choose_placement(need: int, device_room: int, host_room: int) -> str:
    """``device`` when ``need`` bytes fit in the device's room, else ``host`` when they fit in CPU
    memory, else ``none``."""
    if need <= device_room:
        return DEVICE
    if need <= host_room:
        return HOST
    return NONE


@dataclass
class MemoryBudget:
    """Room for new cache entries, ``room(cache, device, need)`` -> (bytes on the device, bytes in CPU
    memory). ``device`` / ``host``: limits for the whole cache there (bytes; None = no limit of its
    own), less what the cache already holds there. ``ask_comfy``: also bounded by the memory ComfyUI's
    model management reports free (:func:`comfy_room`), with ``step_memory`` (ComfyUI's estimate of one
    sampling step, set by the sampling patch) kept free for the step itself."""
    device: int | None = None
    host: int | None = None
    ask_comfy: bool = True
    step_memory: int = 0

    def room(self, cache: "ReferenceCache", device: torch.device, need: int) -> tuple[int, int]:
        unlimited = 1 << 62
        dev = unlimited if self.device is None else int(self.device) - cache.held(DEVICE)
        host = unlimited if self.host is None else int(self.host) - cache.held(HOST)
        if self.ask_comfy:
            free_dev, free_host = comfy_room(device, need if need <= dev else 0, self.step_memory)
            dev, host = min(dev, free_dev), min(host, free_host)
        return dev, host


def comfy_room(device: torch.device, need: int, step_memory: int) -> tuple[int, int]:
    """(device, CPU) memory ComfyUI reports free for the cache. On a GPU: free memory less the step's
    memory and ComfyUI's reserve; when that is short of ``need``, ComfyUI is first asked to unload the
    models this sampling does not use (``free_memory`` keeps those in use). CPU: free memory less
    :data:`HOST_MARGIN` (on a CPU compute device both figures are that same memory)."""
    import comfy.model_management as mm
    host = int(mm.get_free_memory(torch.device("cpu"))) - HOST_MARGIN
    if device.type == "cpu":
        return host, host
    reserve = max(int(mm.minimum_inference_memory()), int(step_memory) + int(mm.extra_reserved_memory()))
    free = int(mm.get_free_memory(device))
    if 0 < need and free - reserve < need:
        in_use = [m for m in getattr(mm, "current_loaded_models", []) if getattr(m, "currently_used", False)]
        if in_use:  # never without knowing what this sampling uses: that would unload the model itself
            mm.free_memory(need + reserve, device, keep_loaded=in_use)
            free = int(mm.get_free_memory(device))
    return free - reserve, host


@dataclass
class CacheEntry:
    """One sample's references: what they were computed from, and per block (k, v) [1, H, 2Nm, d]
    where ``placement`` says (on the compute device, or in CPU memory for ``host``)."""
    refs_rgb: Tensor
    refs_pm: Tensor
    pooled: Tensor | None
    key: tuple
    kv: list = field(default_factory=list)
    placement: str = DEVICE

    def same_sample(self, refs_rgb: Tensor, refs_pm: Tensor, pooled: Tensor | None, key: tuple) -> bool:
        return self.key == key and _same(self.refs_rgb, refs_rgb) and _same(self.refs_pm, refs_pm) and \
            _same(self.pooled, pooled)

    def keep(self, k: Tensor, v: Tensor) -> None:
        """Record one block's keys/values (copies, so the call's own tensors are not held)."""
        self.kv.append((_stored(k, self.placement), _stored(v, self.placement)))

    def block(self, block: int, j: int, device: torch.device) -> Tensor:
        """Block ``block``'s keys (j = 0) or values (j = 1) on ``device``."""
        t = self.kv[block][j]
        return t if t.device == device else t.to(device, non_blocking=True)

    @property
    def nbytes(self) -> int:
        return sum(k.numel() * k.element_size() + v.numel() * v.element_size() for k, v in self.kv)


def _stored(t: Tensor, placement: str) -> Tensor:
    if placement != HOST or t.device.type == "cpu":
        return t.clone()
    out = torch.empty(t.shape, dtype=t.dtype, pin_memory=t.device.type == "cuda")
    return out.copy_(t, non_blocking=True)  # pinned: ordered on the stream before any later copy back


@dataclass(frozen=True)
class Decision:
    """One placement decision, for the node and the log."""
    placement: str
    size: CacheSize
    device_room: int
    host_room: int

    def describe(self) -> str:
        where = {DEVICE: "on the compute device", HOST: "in CPU memory, brought in block by block",
                 NONE: "not kept, too big for the free memory (every step computes the references: same "
                       "result, slower)"}[self.placement]
        return (f"reference cache {where}; size {self.size.describe()}; room on the device "
                f"{max(self.device_room, 0) / GB:.1f} GB, in CPU memory {max(self.host_room, 0) / GB:.1f} GB")


class ReferenceCache:
    """Reference keys/values per sample. An entry is found again only when the reference latents and
    the pooled vector equal the stored ones (torch.equal) and model, adapter, dtype, device, mask mode
    and RoPE shift (``key``) are the same. At most ``max_entries`` samples are kept (least recently
    used dropped); :meth:`clear` frees them (the sampling wrapper does at every run). New entries are
    placed by :func:`choose_placement` with ``budget``'s room (None: unlimited, on the device);
    ``on_decision`` is called with every :class:`Decision`. Safe to use from several threads."""

    def __init__(self, max_entries: int = 4, budget: MemoryBudget | None = None,
                 on_decision: Callable[[Decision], None] | None = None):
        self.max_entries = int(max_entries)
        self.budget = budget
        self.on_decision = on_decision
        self.entries: list[CacheEntry] = []
        self.decisions: list[Decision] = []
        self.hits = 0
        self.misses = 0
        self.declined = False
        self._lock = threading.RLock()

    def clear(self) -> None:
        with self._lock:
            self.entries.clear()
            self.declined = False

    def __len__(self) -> int:
        return len(self.entries)

    def held(self, placement: str) -> int:
        """Bytes the cache holds at ``placement``."""
        with self._lock:
            return sum(e.nbytes for e in self.entries if e.placement == placement)

    def find(self, refs_rgb: Tensor, refs_pm: Tensor, pooled: Tensor | None, key: tuple) -> CacheEntry | None:
        with self._lock:
            for i, e in enumerate(self.entries):
                if e.same_sample(refs_rgb, refs_pm, pooled, key):
                    self.entries.append(self.entries.pop(i))
                    return e
        return None

    def add(self, entry: CacheEntry) -> None:
        with self._lock:
            self.entries.append(entry)
            while len(self.entries) > self.max_entries:
                self.entries.pop(0)

    def plan(self, refs_rgb: Tensor, refs_pm: Tensor, pooled: Tensor | None, keys: list[tuple],
             shape: dict | None = None) -> "CachePlan":
        """What one call does: reuse every sample's entry (all must hit), or compute the references
        and record one new entry per distinct sample that is not cached yet, placed where it fits
        (or nothing recorded when it fits nowhere). ``refs_*`` [B, N, C, h, w], ``pooled`` [B, P] or
        None, ``keys[b]`` the model/mode key of sample b; ``shape``: blocks, heads, tokens, head_dim,
        dtype and device of the keys/values (None: placed on the device without asking)."""
        with self._lock:
            if self.declined:
                return CachePlan(self, placement=NONE)
            b = refs_rgb.shape[0]
            pooled_of = [None if pooled is None else pooled[i] for i in range(b)]
            found = [self.find(refs_rgb[i], refs_pm[i], pooled_of[i], keys[i]) for i in range(b)]
            if all(e is not None for e in found):
                self.hits += 1
                return CachePlan(self, reuse=found)
            self.misses += 1
            new = []
            for i in range(b):
                if found[i] is None and not any(refs_rgb[j].equal(refs_rgb[i]) and refs_pm[j].equal(refs_pm[i])
                                                and _same(pooled_of[j], pooled_of[i]) and keys[j] == keys[i]
                                                for j in new):
                    new.append(i)
            placement = self._place(len(new), shape)
            if placement == NONE:
                self.declined = True
                return CachePlan(self, placement=NONE)
            record = {i: CacheEntry(refs_rgb[i].clone(), refs_pm[i].clone(),
                                    None if pooled_of[i] is None else pooled_of[i].clone(), keys[i],
                                    placement=placement) for i in new}
            return CachePlan(self, record=record, placement=placement)

    def _place(self, samples: int, shape: dict | None) -> str:
        if shape is None or self.budget is None:
            return DEVICE
        size = CacheSize(samples, shape["blocks"], shape["heads"], shape["tokens"], shape["head_dim"], shape["dtype"])
        device_room, host_room = self.budget.room(self, shape["device"], size.bytes)
        decision = Decision(choose_placement(size.bytes, device_room, host_room), size, device_room, host_room)
        self.decisions.append(decision)
        del self.decisions[:-16]  # the latest few, for the benchmark and tests
        if self.on_decision is not None:
            self.on_decision(decision)
        return decision.placement


class CachePlan:
    """The cache's part in one forward call. ``reuse``: per sample the entry whose keys/values stand in
    for the reference tokens (they are then not in the sequence); ``record``: sample index -> new
    entry, filled block by block and added to the cache by :meth:`commit`; ``placement``: where the
    new entries are kept (``none``: the cache declined, nothing is recorded or reused)."""

    def __init__(self, cache: ReferenceCache | None = None, reuse: list[CacheEntry] | None = None,
                 record: dict[int, CacheEntry] | None = None, placement: str = DEVICE):
        self.cache = cache
        self.reuse = reuse
        self.record = record or {}
        self.placement = placement

    @property
    def refs_in_sequence(self) -> bool:
        return self.reuse is None

    def keys_values(self, block: int, k: Tensor, v: Tensor, prefix: int) -> tuple[Tensor, Tensor]:
        """Block ``block``'s keys/values [B, H, L, d] as attention needs them: the new references'
        recorded, or the cached ones (brought to the device) appended after the ``prefix`` tokens
        computed in this call."""
        for s, entry in self.record.items():
            entry.keep(k[s:s + 1, :, prefix:], v[s:s + 1, :, prefix:])
        if self.reuse is None:
            return k, v
        return self._joined(k, block, 0), self._joined(v, block, 1)

    def _joined(self, t: Tensor, block: int, j: int) -> Tensor:
        if all(e is self.reuse[0] for e in self.reuse):  # one entry serves the whole batch: no copies
            cached = self.reuse[0].block(block, j, t.device).expand(t.shape[0], -1, -1, -1)
        else:
            cached = torch.cat([e.block(block, j, t.device) for e in self.reuse])
        return torch.cat([t, cached], dim=2)

    def commit(self) -> None:
        for entry in self.record.values():
            self.cache.add(entry)


#: No cache: every call computes the references.
NO_CACHE = CachePlan()

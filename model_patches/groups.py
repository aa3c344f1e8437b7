"""The token groups of the RefAny3D transformer, in one table (docs/method.md §2–§4).

Everything that makes a group what it is lives in :data:`TOKEN_GROUPS`, in sequence order; the layout,
the token and RoPE builders (``tokens.py``), the modulation vectors (``modulation.py``), the LoRA
routing (``routing.py``), the group attention (``attention.py``) and the velocities of
``forward.py`` read it. A new group (say a target pose) is one row here and its latent passed to
:func:`~.forward.refany3d_forward`.

====================  =========  ==============  ======  =======================  =====================
group                 role       latent          domain  LoRAs (§3)               sees (masked, §4)
====================  =========  ==============  ======  =======================  =====================
text                  text       (context)       none    none (text stream)       everything
target_rgb            target     x_rgb           E(0)    none                     everything
target_point_map      target     x_point_map     E(1)    Domain                   everything but text
reference_rgb i       reference  refs_rgb        E(0)    Reference                everything, view i only
reference_point_map i reference  refs_point_map  E(1)    Reference + Domain       everything, view i only
====================  =========  ==============  ======  =======================  =====================

A role says where the tokens sit and which timestep drives them: ``text`` (the T5 tokens, RoPE ids
zero), ``target`` (one latent being denoised, ids (0, r, c), the sampler's t and guidance; its
velocity is returned) or ``reference`` (one block of tokens per view, ids (0, r, c − 32), t = 0 and
guidance 1.0). A reference group sees the reference groups of its own view only.
"""
from __future__ import annotations

from dataclasses import dataclass

TEXT_ROLE, TARGET_ROLE, REFERENCE_ROLE = "text", "target", "reference"

#: References are evaluated at t = 0 with Flux guidance 1.0 (§2).
REF_TIMESTEP = 0.0
REF_GUIDANCE = 1.0
#: The release shifts reference columns by -32 tokens (the width of a 512 px reference), whatever
#: the target size (§2).
REF_COLUMN_SHIFT = 32


@dataclass(frozen=True)
class TokenGroup:
    """One row of :data:`TOKEN_GROUPS`. ``latent``: the argument of ``refany3d_forward`` its tokens come
    from; ``domain``: the index of its domain embedding (None: none); ``loras``: the adapter's LoRAs
    (keys of ``adapter.loras``) acting on it; ``sees``: the groups its queries attend to under the
    group mask."""
    name: str
    role: str
    latent: str | None
    domain: int | None
    loras: tuple[str, ...]
    sees: tuple[str, ...]

    @property
    def per_view(self) -> bool:
        """One block of tokens per reference view."""
        return self.role == REFERENCE_ROLE


TEXT, TARGET_RGB, TARGET_POINT_MAP, REFERENCE_RGB, REFERENCE_POINT_MAP = (
    "text", "target_rgb", "target_point_map", "reference_rgb", "reference_point_map")
_ALL = (TEXT, TARGET_RGB, TARGET_POINT_MAP, REFERENCE_RGB, REFERENCE_POINT_MAP)

#: The token groups in sequence order.
TOKEN_GROUPS = (
    TokenGroup(TEXT, TEXT_ROLE, None, None, (), _ALL),
    TokenGroup(TARGET_RGB, TARGET_ROLE, "x_rgb", 0, (), _ALL),
    TokenGroup(TARGET_POINT_MAP, TARGET_ROLE, "x_point_map", 1, ("domain",), _ALL[1:]),
    TokenGroup(REFERENCE_RGB, REFERENCE_ROLE, "refs_rgb", 0, ("reference",), _ALL),
    TokenGroup(REFERENCE_POINT_MAP, REFERENCE_ROLE, "refs_point_map", 1, ("reference", "domain"), _ALL),
)
GROUP = {g.name: g for g in TOKEN_GROUPS}
TARGETS = tuple(g for g in TOKEN_GROUPS if g.role == TARGET_ROLE)
REFERENCES = tuple(g for g in TOKEN_GROUPS if g.role == REFERENCE_ROLE)
#: The groups' names in sequence order, and those of the image stream.
GROUPS = tuple(g.name for g in TOKEN_GROUPS)
IMAGE_GROUPS = tuple(g.name for g in TOKEN_GROUPS if g.role != TEXT_ROLE)
#: Domain of each image group (0 = RGB, 1 = point map).
DOMAINS = {g: GROUP[g].domain for g in IMAGE_GROUPS}

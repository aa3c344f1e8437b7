"""The table of token groups (model_patches/groups.py) and what the layout reads from it; the
forward's behaviour with it is checked against the spec by tests/test_transformer_core.py."""
from __future__ import annotations

from model_patches.attention import key_ranges
from model_patches.groups import (GROUP, GROUPS, REFERENCE_ROLE, TARGET_ROLE, TEXT, TEXT_ROLE, TOKEN_GROUPS)
from model_patches.routing import ROUTES
from model_patches.tokens import Layout


def test_roles_come_in_sequence_order_text_targets_references():
    """The layout and the reference cache rely on it: text first, the references last."""
    order = [TEXT_ROLE, TARGET_ROLE, REFERENCE_ROLE]
    roles = [order.index(g.role) for g in TOKEN_GROUPS]
    assert roles == sorted(roles) and roles[0] == 0 and roles.count(0) == 1
    assert GROUPS == tuple(g.name for g in TOKEN_GROUPS) and GROUPS[0] == TEXT


def test_every_group_names_known_groups_and_the_routes_are_the_table():
    for g in TOKEN_GROUPS:
        assert set(g.sees) <= set(GROUPS), g.name
        assert ROUTES[g.name] == g.loras
        assert (g.latent is None) == (g.role == TEXT_ROLE) and (g.domain is None) == (g.role == TEXT_ROLE)


def test_segments_tile_the_sequence_and_key_ranges_join_neighbours():
    lay = Layout(txt=3, tgt=6, tgt_hw=(2, 3), views=2, ref=4, ref_hw=(2, 2))
    segs = lay.key_segments()
    assert [g for g, _, _ in segs] == list(GROUPS)
    assert segs[0][1] == 0 and all(a[2] == b[1] for a, b in zip(segs, segs[1:])) and segs[-1][2] == 3 + 12 + 16
    assert lay.prefix == 3 + 12
    assert key_ranges(GROUPS, segs) == [(0, 31)]
    assert key_ranges(GROUP["target_point_map"].sees, segs) == [(3, 31)]
    cached = Layout(txt=3, tgt=6, tgt_hw=(2, 3), views=2, ref=4, ref_hw=(2, 2), refs_in_sequence=False)
    assert [g for g, _, _ in cached.sequence_segments()] == list(GROUPS[:3]) and cached.key_segments() == segs

"""The geometry of a glTF 2.0 scene as the spec places it, when no animation plays.

* nodes: ``matrix`` or T·R·S, composed from the scene's roots; a transform with a negative
  determinant mirrors the mesh, so its triangles' winding is reversed to keep their front side;
* primitives: modes 4 (triangles), 5 (strip: triangle i is v_i, v_{i+1+i%2}, v_{i+2-i%2}) and
  6 (fan: v_{i+1}, v_{i+2}, v_0); points and lines (0-3) have no surface to render;
* morph targets at the node's ``weights``, else the mesh's, else zeros;
* skins: a skinned mesh is placed by its joints only (glTF 2.0 §3.7.3.3: the skinned mesh node's own
  transform is ignored): each vertex moves by Σ weight · world(joint) · inverseBindMatrix, with the
  joints in their node (rest) transforms;
* EXT_mesh_gpu_instancing: one copy per instance, node world · instance T·R·S.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import AssetError
from .gltf_document import GltfDocument

TRIANGLE_MODES = {4: "TRIANGLES", 5: "TRIANGLE_STRIP", 6: "TRIANGLE_FAN"}
LINE_MODES = {0: "POINTS", 1: "LINES", 2: "LINE_LOOP", 3: "LINE_STRIP"}
MAX_NODE_DEPTH = 1024


@dataclass
class PlacedPrimitive:
    """One primitive with its vertices in the scene frame."""

    mesh: int
    index: int  # primitive index in the mesh
    primitive: dict
    vertices: np.ndarray  # [v, 3] float64, scene frame
    faces: np.ndarray  # [f, 3] int64
    attributes: dict  # name -> [v, k] array (morphed TEXCOORD_n / COLOR_0 included)
    label: str


def quaternion_matrix(q) -> np.ndarray:
    """3x3 rotation of a unit quaternion (x, y, z, w); normalised first."""
    x, y, z, w = np.asarray(q, dtype=np.float64) / max(float(np.linalg.norm(q)), 1e-300)
    return np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
                     [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
                     [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]])


def trs_matrix(translation=None, rotation=None, scale=None) -> np.ndarray:
    m = np.eye(4)
    r = quaternion_matrix(rotation) if rotation is not None else np.eye(3)
    s = np.asarray(scale, dtype=np.float64) if scale is not None else np.ones(3)
    m[:3, :3] = r * s[None, :]
    if translation is not None:
        m[:3, 3] = translation
    return m


def node_matrix(doc: GltfDocument, node: dict, index: int) -> np.ndarray:
    """The local 4x4 transform of a node (matrix is column-major)."""
    try:
        if "matrix" in node:
            m = np.asarray(node["matrix"], dtype=np.float64).reshape(4, 4).T
        else:
            m = trs_matrix(node.get("translation"), node.get("rotation"), node.get("scale"))
    except (ValueError, TypeError) as e:
        raise AssetError(f"{doc.name} is damaged: node {index} has a malformed transform ({e})") from None
    if not np.isfinite(m).all():
        raise AssetError(f"{doc.name} is damaged: node {index} has a non-finite transform")
    return m


def world_matrices(doc: GltfDocument, roots: list[int]) -> dict[int, np.ndarray]:
    """node index -> world 4x4, for every node reachable from ``roots``."""
    world: dict[int, np.ndarray] = {}
    stack = [(r, np.eye(4), 0) for r in reversed(roots)]
    while stack:
        index, parent, depth = stack.pop()
        if index in world:
            raise AssetError(f"{doc.name} is damaged: node {index} appears twice in the scene's hierarchy")
        if depth > MAX_NODE_DEPTH:
            raise AssetError(f"{doc.name}: the node hierarchy is deeper than {MAX_NODE_DEPTH}")
        node = doc.item("nodes", index, "node")
        world[index] = parent @ node_matrix(doc, node, index)
        for child in reversed(node.get("children") or []):
            stack.append((child, world[index], depth + 1))
    return world


def scene_roots(doc: GltfDocument) -> list[int]:
    scenes = doc.items("scenes")
    if scenes:
        scene = doc.tree.get("scene", 0)
        return list(doc.item("scenes", scene, "scene").get("nodes") or [])
    # no scene: every node that is nobody's child
    children = {c for n in doc.items("nodes") if isinstance(n, dict) for c in n.get("children") or []}
    return [i for i in range(len(doc.items("nodes"))) if i not in children]


def triangles(indices: np.ndarray, mode: int) -> np.ndarray:
    """[f, 3] int64 triangles of an index list in a triangle mode (glTF 2.0 §3.7.2.1)."""
    n = len(indices)
    if mode == 4:
        return indices[:n - n % 3].reshape(-1, 3)
    if n < 3:
        return np.zeros((0, 3), dtype=np.int64)
    i = np.arange(n - 2)
    if mode == 5:
        odd = i % 2
        return np.stack([indices[i], indices[i + 1 + odd], indices[i + 2 - odd]], axis=1)
    return np.stack([indices[i + 1], indices[i + 2], np.full(n - 2, indices[0])], axis=1)


def instance_matrices(doc: GltfDocument, node: dict) -> list[np.ndarray] | None:
    ext = (node.get("extensions") or {}).get("EXT_mesh_gpu_instancing")
    if not isinstance(ext, dict):
        return None
    attrs = ext.get("attributes") or {}
    columns = {k: doc.accessor(attrs[k]) for k in ("TRANSLATION", "ROTATION", "SCALE") if k in attrs}
    if not columns:
        return None
    count = {len(v) for v in columns.values()}
    if len(count) != 1:
        raise AssetError(f"{doc.name} is damaged: EXT_mesh_gpu_instancing accessors differ in count")
    n = count.pop()
    return [trs_matrix(*(columns[k][i] if k in columns else None for k in ("TRANSLATION", "ROTATION", "SCALE")))
            for i in range(n)]


def morphed(doc: GltfDocument, prim: dict, name: str, base: np.ndarray, weights: list[float]) -> np.ndarray:
    """Attribute ``name`` with the morph targets' displacements at ``weights`` added."""
    out = base
    for target, w in zip(prim.get("targets") or [], weights):
        if w and isinstance(target, dict) and name in target:
            delta = doc.accessor(target[name])
            if delta.shape[0] != base.shape[0]:
                raise AssetError(f"{doc.name} is damaged: a morph target of {name} has {delta.shape[0]} values "
                                 f"for {base.shape[0]} vertices")
            out = out + float(w) * delta[:, :base.shape[1]]
    return out


def skin_matrices(doc: GltfDocument, skin_index: int, world: dict, all_world) -> np.ndarray:
    """[joints, 4, 4]: world(joint) · inverseBindMatrix per joint."""
    skin = doc.item("skins", skin_index, "skin")
    joints = skin.get("joints") or []
    if "inverseBindMatrices" in skin:
        ibm = doc.accessor(skin["inverseBindMatrices"]).astype(np.float64).reshape(-1, 4, 4).transpose(0, 2, 1)
        if len(ibm) < len(joints):
            raise AssetError(f"{doc.name} is damaged: skin {skin_index} has fewer inverse bind matrices than joints")
    else:
        ibm = np.broadcast_to(np.eye(4), (len(joints), 4, 4))
    out = np.empty((len(joints), 4, 4))
    for k, j in enumerate(joints):
        out[k] = all_world(j) @ ibm[k]
    return out


def skinned_positions(doc: GltfDocument, prim: dict, positions: np.ndarray, joint_mats: np.ndarray):
    """Linear blend skinning over every JOINTS_n / WEIGHTS_n set: [v, 3] positions and [v] det sign."""
    attrs = prim["attributes"]
    sets = []
    k = 0
    while f"JOINTS_{k}" in attrs and f"WEIGHTS_{k}" in attrs:
        sets.append((doc.accessor(attrs[f"JOINTS_{k}"], normalize=False).astype(np.int64),
                     doc.accessor(attrs[f"WEIGHTS_{k}"]).astype(np.float64)))
        k += 1
    blend = np.zeros((len(positions), 4, 4))
    for joints, weights in sets:
        if joints.size and (joints.min() < 0 or joints.max() >= len(joint_mats)):
            raise AssetError(f"{doc.name} is damaged: a vertex names a joint its skin does not have")
        for c in range(joints.shape[1]):
            blend += weights[:, c, None, None] * joint_mats[joints[:, c]]
    p = np.einsum("vij,vj->vi", blend[:, :3, :3], positions) + blend[:, :3, 3]
    return p, np.sign(np.linalg.det(blend[:, :3, :3]))


def placed_primitives(doc: GltfDocument, notes: list[str]):
    """Yield a PlacedPrimitive for every (node, primitive, instance) with triangles; primitives
    without a surface (points, lines) are named in ``notes``."""
    roots = scene_roots(doc)
    world = world_matrices(doc, roots)
    everything: dict[int, np.ndarray] = {}

    def any_world(j: int) -> np.ndarray:  # joints may sit outside the shown scene
        if j in world:
            return world[j]
        if not everything:
            everything.update(world_matrices(doc, [i for i in scene_roots_all(doc)]))
        if j not in everything:
            raise AssetError(f"{doc.name} is damaged: joint node {j} does not exist")
        return everything[j]

    for index, matrix in world.items():
        node = doc.item("nodes", index, "node")
        if "mesh" not in node:
            continue
        mesh_index = node["mesh"]
        mesh = doc.item("meshes", mesh_index, "mesh")
        weights = node.get("weights") or mesh.get("weights") or []
        skin = node.get("skin")
        joint_mats = skin_matrices(doc, skin, world, any_world) if isinstance(skin, int) else None
        instances = instance_matrices(doc, node) or [np.eye(4)]
        for p, prim in enumerate(mesh.get("primitives") or []):
            label = f"mesh {mesh_index}" + (f" ('{mesh['name']}')" if mesh.get("name") else "") + f" primitive {p}"
            mode = prim.get("mode", 4)
            if mode in LINE_MODES:
                notes.append(f"{label} is drawn as {LINE_MODES[mode]}, which has no surface: not rendered")
                continue
            if mode not in TRIANGLE_MODES:
                raise AssetError(f"{doc.name} is damaged: {label} has the unknown mode {mode!r}")
            yield from place(doc, prim, label, mesh_index, p, weights, matrix, joint_mats, instances)


def scene_roots_all(doc: GltfDocument) -> list[int]:
    children = {c for n in doc.items("nodes") if isinstance(n, dict) for c in n.get("children") or []}
    return [i for i in range(len(doc.items("nodes"))) if i not in children]


def place(doc, prim, label, mesh_index, p, weights, matrix, joint_mats, instances):
    attrs = prim.get("attributes") or {}
    if "POSITION" not in attrs:
        raise AssetError(f"{doc.name} is damaged: {label} has no POSITION attribute")
    positions = morphed(doc, prim, "POSITION", doc.accessor(attrs["POSITION"]).astype(np.float64), weights)
    n = len(positions)
    if "indices" in prim:
        indices = doc.accessor(prim["indices"], normalize=False)[:, 0].astype(np.int64)
        if indices.size and (indices.min() < 0 or indices.max() >= n):
            raise AssetError(f"{doc.name} is damaged: {label} has indices beyond its {n} vertices")
    else:
        indices = np.arange(n, dtype=np.int64)
    faces = triangles(indices, prim.get("mode", 4))
    if len(faces) == 0:
        return
    attributes = {}
    for name, acc in attrs.items():
        if name.startswith("TEXCOORD_") or name == "COLOR_0":
            values = doc.accessor(acc).astype(np.float64)
            if len(values) != n:
                raise AssetError(f"{doc.name} is damaged: {label} has {len(values)} {name} values for {n} vertices")
            attributes[name] = morphed(doc, prim, name, values, weights)
    if joint_mats is not None and "JOINTS_0" in attrs and "WEIGHTS_0" in attrs:
        skinned, sign = skinned_positions(doc, prim, positions, joint_mats)
        # a mirroring joint blend flips the faces it touches
        flip = (sign[faces] < 0).sum(axis=1) >= 2
        yield PlacedPrimitive(mesh_index, p, prim, skinned, flip_winding(faces, flip), attributes, label)
        return
    for m in instances:
        world = matrix @ m
        v = positions @ world[:3, :3].T + world[:3, 3]
        f = faces[:, [0, 2, 1]] if np.linalg.det(world[:3, :3]) < 0 else faces
        yield PlacedPrimitive(mesh_index, p, prim, v, f, attributes, label)


def flip_winding(faces: np.ndarray, flip: np.ndarray) -> np.ndarray:
    if not flip.any():
        return faces
    out = faces.copy()
    out[flip] = faces[flip][:, [0, 2, 1]]
    return out

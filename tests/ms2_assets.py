"""Tiny synthetic ManiSkill2 0.5.3 asset trees, for tests where the real downloads are absent.

The real assets (``python -m mani_skill2.utils.download_asset ycb`` and
``... partnet_mobility_faucet``) cannot be fetched everywhere the tests run, so these functions
write, under a directory that then serves as ``MS2_ASSET_DIR``, the files that ManiSkill2's own
loading code reads, in the layout it reads them from, with box meshes in place of the scans:

* ``PickSingleYCB-v0`` (``mani_skill2/envs/pick_and_place/pick_single.py``) reads
  ``{ASSET_DIR}/mani_skill2_ycb/info_pick_v0.json`` (per model id: ``bbox`` ``{min, max}``,
  ``scales`` (optional, default [1]), ``density`` (optional, default 1000)) and, per model,
  ``models/<id>/collision.obj`` (convex pieces) and ``models/<id>/textured.obj`` (visual);
* ``TurnFaucet-v0`` (``mani_skill2/envs/misc/turn_faucet.py``) reads its model list from the
  package's own ``{PACKAGE_ASSET_DIR}/partnet_mobility/meta/info_faucet_train.json`` (per id:
  ``bbox``, ``offset``, ``scale``, ``semantics`` ``[link, joint kind, label]``) and, per id,
  ``{ASSET_DIR}/partnet_mobility/dataset/<id>/mobility_cvx.urdf``, whose links named
  with label ``switch`` must be children of revolute joints.

Only the standard library is used (the main environment imports this module too).
"""
from __future__ import annotations

import json
from pathlib import Path

# Synthetic YCB-like models: id -> (half extents in m, extra info fields). The tall one
# (> 0.15 m) makes PickSingleYCB-v0 use its other robot initialisation (_initialize_agent_v1).
YCB_MODELS = {
    "900_synthetic_cube": ((0.02, 0.02, 0.02), {"scales": [1.0], "density": 1000}),
    "901_synthetic_tall_box": ((0.025, 0.025, 0.1), {}),
}


def box_obj(lo, hi, name: str = "box") -> str:
    """Wavefront OBJ text of the axis-aligned box [lo, hi]: 8 vertices, 12 outward triangles."""
    verts = [(x, y, z) for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])]
    # Vertex i (1-based) is (x, y, z) with bits (i - 1) = 4x + 2y + z; faces wound CCW from
    # outside.
    faces = [(1, 2, 4), (1, 4, 3),      # x = lo
             (5, 7, 8), (5, 8, 6),      # x = hi
             (1, 5, 6), (1, 6, 2),      # y = lo
             (3, 4, 8), (3, 8, 7),      # y = hi
             (1, 3, 7), (1, 7, 5),      # z = lo
             (2, 6, 8), (2, 8, 4)]      # z = hi
    lines = [f"o {name}"]
    lines += [f"v {x:.6f} {y:.6f} {z:.6f}" for x, y, z in verts]
    lines += [f"f {a} {b} {c}" for a, b, c in faces]
    return "\n".join(lines) + "\n"


def write_ycb(asset_dir) -> list[str]:
    """Write ``mani_skill2_ycb/`` under ``asset_dir``; returns the model ids."""
    root = Path(asset_dir) / "mani_skill2_ycb"
    info = {}
    for model_id, (half, extra) in YCB_MODELS.items():
        lo, hi = [-h for h in half], list(half)
        model_dir = root / "models" / model_id
        model_dir.mkdir(parents=True, exist_ok=True)
        mesh = box_obj(lo, hi, model_id)
        (model_dir / "collision.obj").write_text(mesh)
        (model_dir / "textured.obj").write_text(mesh)
        info[model_id] = {"bbox": {"min": lo, "max": hi}, **extra}
    (root / "info_pick_v0.json").write_text(json.dumps(info, indent=1))
    return sorted(info)


def _faucet_urdf(model_dir: Path, info: dict) -> str:
    """A PartNet-Mobility-like URDF inside the model's bbox (model units, before ``scale``):
    an empty root ``base``; the ``faucet_base`` link(s) a column fixed to it; every other
    semantic link a lever on top of the column, ``switch`` (and ``spout``) links on revolute
    joints about z (0 to pi/2), ``stem`` links on prismatic ones; box meshes written next to
    it."""
    lo, hi = info["bbox"]["min"], info["bbox"]["max"]
    size = [h - l for l, h in zip(lo, hi)]
    cx, cy = (lo[0] + hi[0]) / 2, (lo[1] + hi[1]) / 2
    top = lo[2] + 0.6 * size[2]
    movable = [s for s in info["semantics"] if s[2] != "faucet_base"]
    links = ['  <link name="base"/>']
    joints = []
    for i, (name, kind, label) in enumerate(info["semantics"]):
        if label == "faucet_base":
            origin = (0.0, 0.0, 0.0)
            mesh_lo = (cx - 0.15 * size[0], cy - 0.15 * size[1], lo[2])
            mesh_hi = (cx + 0.15 * size[0], cy + 0.15 * size[1], top)
            jtype, extra = "fixed", ""
        else:
            k = movable.index([name, kind, label])
            # Levers side by side along y on top of the column, pointing along +x.
            y = cy + (k - (len(movable) - 1) / 2) * 0.3 * size[1]
            origin = (cx, y, top)
            mesh_lo = (-0.05 * size[0], -0.05 * size[1], 0.0)
            mesh_hi = (0.4 * size[0], 0.05 * size[1], 0.1 * size[2])
            if kind == "slider":
                jtype = "prismatic"
                extra = ('    <axis xyz="0 0 1"/>\n'
                         f'    <limit lower="0" upper="{0.2 * size[2]:.6f}"/>\n')
            else:
                jtype = "revolute"
                extra = '    <axis xyz="0 0 1"/>\n    <limit lower="0" upper="1.5708"/>\n'
        mesh = f"box_{name}.obj"
        (model_dir / mesh).write_text(box_obj(mesh_lo, mesh_hi, name))
        geometry = f'<geometry><mesh filename="{mesh}"/></geometry>'
        links.append(f'  <link name="{name}">\n'
                     f'    <visual><origin xyz="0 0 0"/>{geometry}</visual>\n'
                     f'    <collision><origin xyz="0 0 0"/>{geometry}</collision>\n'
                     f'  </link>')
        joints.append(f'  <joint name="joint_{i}" type="{jtype}">\n'
                      f'    <origin xyz="{origin[0]:.6f} {origin[1]:.6f} {origin[2]:.6f}"/>\n'
                      f'    <parent link="base"/>\n    <child link="{name}"/>\n{extra}'
                      f'  </joint>')
    return ('<?xml version="1.0"?>\n<robot name="synthetic_faucet">\n'
            + "\n".join(links + joints) + "\n</robot>\n")


def write_faucets(asset_dir, meta_json) -> list[str]:
    """Write ``partnet_mobility/dataset/<id>/mobility_cvx.urdf`` (and its meshes) under
    ``asset_dir`` for every model id of ``meta_json`` (ManiSkill2's own
    ``info_faucet_train.json``, whose link names and bboxes they follow); returns the ids."""
    with open(meta_json) as f:
        meta = json.load(f)
    root = Path(asset_dir) / "partnet_mobility" / "dataset"
    for model_id, info in meta.items():
        model_dir = root / str(model_id)
        model_dir.mkdir(parents=True, exist_ok=True)
        (model_dir / "mobility_cvx.urdf").write_text(_faucet_urdf(model_dir, info))
    return sorted(meta)

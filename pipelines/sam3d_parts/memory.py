"""How much GPU memory SAM 3D Objects needs for each output, whole and in low-memory mode
(SAM3D_OFFLOAD, offload.py), and which outputs a GPU of a given size serves: what a job is
refused with before it starts (`Sam3DObjects.check`), what /health says, and what
workers/pool.py gives SAM 3D beside the other models. DEPLOY.md's tables are these figures
(tests/test_docs.py holds them together).
"""

from __future__ import annotations

# GiB of GPU memory each output needs. Upstream asks for "at least 32 Gb of VRAM"
# (doc/setup.md:6), and public reports agree: out of memory on a 20 GB card (upstream issue
# #6, in the mesh decoder), on a 23.64 GiB card even with decode_formats=["gaussian"] (#68,
# "I think the minimum is 32GiB"), on a 24 GB RTX 3090 with the demo (#129). The guide's
# 14/20/24 GB table is not upstream's. 32 GB cards report 31-32 GiB, hence 30. Set
# SAM3D_VRAM_GIB to override what the GPU reports.
MEMORY_NEEDED_GIB = {"ply": 30.0, "glb": 30.0, "glb_textured": 30.0}
# The same in low-memory mode (offload.py): one stage's sub-models at a time, so
# that PLY and vertex-colour GLB fit 16 GB cards (they report 15-16 GiB) and textured GLB,
# whose baking renders 100 views at 1024 px, 24 GB cards. An estimate from the sub-models'
# sizes (DEPLOY.md, "Smaller GPUs"); bench/sam3d_memory.py measures it on a real GPU.
MEMORY_NEEDED_GIB_OFFLOAD = {"ply": 14.0, "glb": 14.0, "glb_textured": 22.0}
OFFLOAD_MODES = ("auto", "on", "off")


def offload_wanted(mode: str, vram_gib: float | None) -> bool:
    """`SAM3D_OFFLOAD`: on, off, or auto (on when the GPU is smaller than the whole model
    needs, MEMORY_NEEDED_GIB)."""
    if mode not in OFFLOAD_MODES:
        raise ValueError(f"SAM3D_OFFLOAD must be one of {', '.join(OFFLOAD_MODES)}")
    if mode == "auto":
        return vram_gib is not None and vram_gib < max(MEMORY_NEEDED_GIB.values())
    return mode == "on"


def servable_outputs(vram_gib: float | None, offload: bool = False) -> dict[str, bool]:
    """Which outputs fit in this GPU's memory (none without a GPU)."""
    needed = MEMORY_NEEDED_GIB_OFFLOAD if offload else MEMORY_NEEDED_GIB
    return {kind: vram_gib is not None and vram_gib >= need for kind, need in needed.items()}

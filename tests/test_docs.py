"""DEPLOY.md says what the code does: the /health example, and what each card size serves."""

import json
import re

from conftest import ROOT
from pipelines.sam3d import MEMORY_NEEDED_GIB, MEMORY_NEEDED_GIB_OFFLOAD, offload_wanted, \
    servable_outputs
from schemas import Health
from workers.pool import ESTIMATED_GIB

DEPLOY = (ROOT / "DEPLOY.md").read_text()


def test_the_health_example_is_what_the_server_answers():
    example = re.search(r"### Health check\n.*?```json\n(.*?)```", DEPLOY, re.DOTALL)[1]
    body = json.loads(example)
    assert list(body) == list(Health.model_fields)
    Health.model_validate(body)


def test_each_card_size_serves_what_the_requirements_say():
    """Requirements' table, through the admission code (`auto` mode) at the GiB cards report."""
    def served(vram_gib):
        return servable_outputs(vram_gib, offload_wanted("auto", vram_gib))

    assert all(served(39.6).values()) and not offload_wanted("auto", 39.6)  # 40 GB A100
    assert all(served(22.5).values()) and offload_wanted("auto", 22.5)  # 24 GB L4, A10
    assert served(15.6) == {"ply": True, "glb": True, "glb_textured": False}  # 16 GB
    assert not any(served(13.5).values())
    # beside Lotus-D (fp16, counted at its estimate until measured: workers/pool.py)
    lotus = ESTIMATED_GIB[("lotus", True)]
    assert all(served(31.4 - lotus).values()) and offload_wanted("auto", 31.4 - lotus)  # 5090
    assert served(23.6 - lotus) == {"ply": True, "glb": True, "glb_textured": False}  # 4090
    assert not any(served(15.6 - lotus).values())  # 16 GB
    rows = {line.split("|")[1].strip(): line for line in DEPLOY.splitlines()
            if line.startswith("  | ") and "GiB reported" in line}
    assert "textured outputs get 507" in rows["24 GB (RTX 3090/4090, A10, L4: 22-24 GiB reported)"]
    assert "beside Lotus: none (every `/generate` gets 507). Alone: PLY, vertex-colour GLB" in \
        rows["16 GB (15-16 GiB reported)"]
    assert f"about {lotus:g} GiB *estimated*" in DEPLOY


def test_the_admission_figures_in_deploy_are_the_codes():
    smaller = DEPLOY[DEPLOY.index("### Smaller GPUs"):]
    assert f"| PLY, GLB with vertex colours | {MEMORY_NEEDED_GIB_OFFLOAD['glb']:g} GiB |" in smaller
    assert f"| GLB, OBJ, USDZ textured | {MEMORY_NEEDED_GIB_OFFLOAD['glb_textured']:g} GiB |" in smaller
    assert MEMORY_NEEDED_GIB_OFFLOAD["ply"] == MEMORY_NEEDED_GIB_OFFLOAD["glb"]
    whole = DEPLOY[DEPLOY.index("## GPU memory requirements"):DEPLOY.index("### Smaller GPUs")]
    for need in MEMORY_NEEDED_GIB.values():
        assert f"| {need:g} GiB |" in whole
    textured = MEMORY_NEEDED_GIB_OFFLOAD["glb_textured"]
    assert f"textured outputs get 507 (they need {textured:g} GiB)" in DEPLOY

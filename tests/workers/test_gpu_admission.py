"""SAM 3D admits a job against what its card leaves it beside the other models there.

No GPU runs here: the card is SAM3D_VRAM_GIB (the setting for shared and MIG GPUs) and each
worker's footprint is STAND_IN_GPU_FOOTPRINT_GIB's figure, which a worker on a CPU device
reports at load where one on a GPU reports torch's reserved memory (pipelines/device.py
`footprint`). Everything after that reading is the server's own path: the real gunicorn,
model worker processes, the pool's accounting, the twin's admission and /health.
"""

from __future__ import annotations

import requests

from conftest import image_b64, running_server
from settings import load_settings
from workers.devices import Device
from workers.model_process import ModelProcess
from workers.worker import WorkerState
from workers.pool import Memory, lotus_devices
from pipelines.base import Result

TEXTURED = {"output_format": "glb", "with_texture": True}


def test_a_24_gib_card_with_lotus_refuses_textured_glb_saying_why(tmp_path, checkpoints):
    with running_server(tmp_path, checkpoints, SAM3D_VRAM_GIB="24",
                        STAND_IN_GPU_FOOTPRINT_GIB="lotus=5.2") as started:
        base = started["url"]
        health = requests.get(f"{base}/health", timeout=10).json()
        by_pipeline = {w["pipeline"]: w for w in health["workers"]}
        assert by_pipeline["lotus"]["gpu_footprint_gib"] == 5.2
        assert by_pipeline["lotus"]["gpu_footprint_source"] == "stand-in"
        assert by_pipeline["sam3d"]["gpu_budget_gib"] == 18.8
        assert health["capabilities"]["sam3d"] == {"ply": True, "glb": True,
                                                   "glb_textured": False}
        assert "shares" in health["notices"]["sam3d"]
        assert "PIPELINES=sam3d" in health["notices"]["sam3d"]

        refused = requests.post(f"{base}/generate", json={"image": image_b64(), **TEXTURED},
                                timeout=30)
        assert refused.status_code == 507, refused.text
        message = refused.json()["error"]
        assert "22 GiB" in message and "18.8 GiB" in message, message
        assert "lotus@cpu:0 5.2 GiB" in message and "PIPELINES=sam3d" in message, message
        # what fits beside Lotus is still served
        accepted = requests.post(f"{base}/generate",
                                 json={"image": image_b64(), "output_format": "ply"},
                                 timeout=30)
        assert accepted.status_code == 202, accepted.text
        assert "Lotus-D shares cpu:0" in started["log"].read_text()


def test_the_same_card_without_lotus_serves_textured_glb(tmp_path, checkpoints):
    """The 507 above comes from Lotus's footprint, not from the card alone."""
    with running_server(tmp_path, checkpoints, SAM3D_VRAM_GIB="24", PIPELINES="sam3d",
                        STAND_IN_GPU_FOOTPRINT_GIB="lotus=5.2") as started:
        health = requests.get(f"{started['url']}/health", timeout=10).json()
        assert health["capabilities"]["sam3d"]["glb_textured"] is True
        assert "sam3d" not in health["notices"]
        accepted = requests.post(f"{started['url']}/generate",
                                 json={"image": image_b64(), **TEXTURED}, timeout=30)
        assert accepted.status_code == 202, accepted.text


def _memory(**settings) -> Memory:
    return Memory(load_settings(**settings))


def test_lotus_goes_where_it_leaves_sam3d_room():
    memory = _memory()
    big = [Device("cuda", 0, "H100", 79.2), Device("cuda", 1, "H100", 79.2)]
    assert lotus_devices(memory, big) == (big, None)
    two_4090s = [Device("cuda", 0, "RTX 4090", 23.6), Device("cuda", 1, "RTX 4090", 23.6)]
    assert lotus_devices(memory, two_4090s) == (two_4090s[1:], None)  # SAM 3D has cuda:0 whole
    one_4090 = [Device("cuda", 0, "RTX 4090", 23.6)]
    placed, notice = lotus_devices(memory, one_4090)
    assert placed == one_4090
    assert "Lotus-D shares cuda:0 (23.6 GiB)" in notice and "about 20.1 GiB" in notice
    # a 32 GB card (31.4 GiB) leaves SAM 3D room beside fp16 Lotus and fp32 Lotus
    v100 = [Device("cuda", 0, "RTX 5090", 31.4)]
    assert lotus_devices(memory, v100) == (v100, None)
    assert lotus_devices(_memory(lotus_half_precision=False), v100) == (v100, None)
    # a CPU-only server has no card to share
    assert lotus_devices(memory, [Device("cpu", 0)]) == ([Device("cpu", 0)], None)


def test_a_jobs_peak_counts_once_it_is_larger_than_the_load_footprint():
    """The caching allocator keeps a job's peak reserved: SAM 3D's budget shrinks with it."""
    settings = load_settings(sam3d_vram_gib=24)
    memory = Memory(settings)
    card = Device("cuda", 0, "RTX 4090", 23.6)
    lotus, sam3d = ModelProcess(settings, "lotus", card), ModelProcess(settings, "sam3d", card)
    memory.workers = [lotus, sam3d]
    assert memory.sam3d_budget(sam3d) == 24 - 3.5  # Lotus not loaded yet: its estimate
    lotus.details = {"gpu_footprint_gib": 2.3, "gpu_footprint_source": "measured"}
    lotus.state = WorkerState.READY
    assert memory.sam3d_budget(sam3d) == 21.7
    lotus._record_peak([Result(path=None, media_type="", download_name="",
                               info={"gpu_peak_bytes": 4 * 2**30})])
    assert lotus.describe()["gpu_peak_gib"] == 4.0
    assert memory.sam3d_budget(sam3d) == 24 - 4.5  # its peak plus the CUDA context
    lotus.state = WorkerState.FAILED
    assert memory.sam3d_budget(sam3d) == 24

"""What a model needs of the settings to be built: the model table's `factory` and
`checkpoint_present` (pipelines/spec.py) take a `PipelineConfig`, never the whole `Settings`.

It is also all a model worker's child process is given (workers/model_process.py): the
settings hold secrets (API_KEY, LOTUS_API_KEY, WEBHOOK_SECRET) that a process running a
model on untrusted images has no use for and should not hold (a crash dump, a core file, a
bug in a model's code that reads its globals), and pickling the whole Settings into every
child sent them there. A frozen dataclass of plain values, so it pickles as it is.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Mapping

if TYPE_CHECKING:
    from settings import Settings


@dataclass(frozen=True)
class PipelineConfig:
    checkpoints_dir: Path = Path("checkpoints")
    model_id: str | None = None  # Lotus-D from the Hugging Face cache (MODEL_ID)
    lotus_half_precision: bool = True
    sam3d_source_dir: Path = Path("/opt/sam-3d-objects")
    sam3d_vram_gib: float | None = None  # a SAM 3D worker's: what its card leaves it
    sam3d_compile: bool = False
    sam3d_offload: Literal["auto", "on", "off"] = "auto"
    # STAND_IN_GPU_FOOTPRINT_GIB (tests only): the footprint a worker reports at load
    stand_in_footprints: Mapping[str, float] = field(default_factory=dict)

    @classmethod
    def from_settings(cls, settings: "Settings") -> "PipelineConfig":
        return cls(checkpoints_dir=settings.checkpoints_dir, model_id=settings.model_id,
                   lotus_half_precision=settings.lotus_half_precision,
                   sam3d_source_dir=settings.sam3d_source_dir,
                   sam3d_vram_gib=settings.sam3d_vram_gib, sam3d_compile=settings.sam3d_compile,
                   sam3d_offload=settings.sam3d_offload,
                   stand_in_footprints=settings.stand_in_footprints)

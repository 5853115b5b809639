"""Low-memory mode for SAM 3D Objects: only the sub-models of the running stage on the GPU.

Upstream keeps every sub-model on the GPU for the pipeline's life (each loader ends in
`model.to(device)`, inference_pipeline.py:288), which is why it asks for 32 GB. Its stages
use disjoint sub-models, so the others can wait in CPU memory:

| stage (pipeline method)                         | sub-models it runs                   |
|-------------------------------------------------|--------------------------------------|
| `compute_pointmap` (pointmap.py:242-289)        | `depth_model.model` (MoGe)           |
| `sample_sparse_structure` (pipeline.py:642-719) | ss_generator, ss_decoder, ss_condition_embedder |
| `sample_slat` (pipeline.py:721-768)             | slat_generator, slat_condition_embedder |
| `decode_slat` (pipeline.py:589-615)             | the decoder of each decoded format   |
| `postprocess_slat_output` (mesh, baking)        | none                                 |

Moving weights costs PCIe time per job (seconds for the ~12 GB of checkpoints), not
accuracy: the same weights run the same kernels.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any, Iterator

log = logging.getLogger(__name__)

SUB_MODELS = {
    "compute_pointmap": ("depth_model",),
    "sample_sparse_structure": ("ss_generator", "ss_decoder", "ss_condition_embedder"),
    "sample_slat": ("slat_generator", "slat_condition_embedder"),
    "decode_slat": (),  # the decoders of the formats asked for, below
    "postprocess_slat_output": (),
}
# decode_slat's formats and the decoder each one runs (inference_pipeline.py:606-612)
DECODERS = {"mesh": "slat_decoder_mesh", "gaussian": "slat_decoder_gs",
            "gaussian_4": "slat_decoder_gs_4"}


def sub_models(pipeline: Any) -> dict[str, Any]:
    """Upstream's sub-models by name: `models` (a ModuleDict, pipeline.py:185-195), the two
    condition embedders (pipeline.py:163-166) and the depth model's network (depth_models/base.py:6-8)."""
    found = {name: module for name, module in pipeline.models.items() if module is not None}
    found.update({name: module for name, module in pipeline.condition_embedders.items()
                  if module is not None})
    found["depth_model"] = pipeline.depth_model.model
    return found


def size_bytes(module: Any) -> int:
    return sum(tensor.numel() * tensor.element_size()
               for tensor in (*module.parameters(), *module.buffers()))


class StageOffload:
    """Moves sub-models between CPU memory and the GPU as stages start."""

    def __init__(self, pipeline: Any, device: Any = None, home: str = "cpu"):
        self.modules = sub_models(pipeline)
        self.device = device if device is not None else pipeline.device
        self.home = home
        self.on_device: set[str] = set()
        sizes = ", ".join(f"{name} {size_bytes(module) / 2**30:.2f} GiB"
                          for name, module in self.modules.items())
        log.info("low-memory mode: sub-models wait in CPU memory (%s)", sizes)

    def park_all(self) -> None:
        self._place(set())

    def enter(self, method: str, args: tuple, kwargs: dict) -> None:
        """Before `method` runs (called with `args`, `kwargs`): its sub-models on the GPU,
        every other one in CPU memory."""
        names = set(SUB_MODELS.get(method, ()))
        if method == "decode_slat":
            formats = args[1] if len(args) > 1 else kwargs.get("formats", ["mesh", "gaussian"])
            names |= {DECODERS[fmt] for fmt in formats if fmt in DECODERS}
        self._place(names & set(self.modules))

    def _place(self, wanted: set[str]) -> None:
        for name in sorted(self.on_device - wanted):
            self.modules[name].to(self.home)
        _release_cache()
        for name in sorted(wanted - self.on_device):
            self.modules[name].to(self.device)
        self.on_device = wanted


@contextlib.contextmanager
def loading_to_cpu(pipeline_class: Any) -> Iterator[None]:
    """While the pipeline is built, each sub-model goes to CPU memory as soon as it is
    loaded, instead of all of them piling up on the GPU (inference_pipeline.py:261-290).
    The depth model is built by hydra before the pipeline (its own loader), so it is parked
    after."""
    load = pipeline_class.instantiate_and_load_from_pretrained

    def load_then_park(self, *args, **kwargs):
        model = load(self, *args, **kwargs).to("cpu")
        _release_cache()
        return model

    pipeline_class.instantiate_and_load_from_pretrained = load_then_park
    try:
        yield
    finally:
        pipeline_class.instantiate_and_load_from_pretrained = load


def _release_cache() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()

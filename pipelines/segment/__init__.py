"""The mask a 3D job would use, before the job is sent (`POST /segment`).

The same `Masker` as SAM 3D Objects' pipeline (pipelines/sam3d.py) on the image as a job
decodes it (`ImageSource.load`: EXIF orientation applied, the same limits), so the client can
look at the object, then send that very mask back as `/generate`'s `mask`. It is a pipeline
of its own so that it runs in a model worker on the CPU, in a lane of its own
(workers/pool.py): rembg and onnxruntime stay out of the HTTP process, and a mask never
waits behind a 3D job that takes a minute.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from PIL import Image

from ..base import Progress, Result
from ..images import ImageSource
from ..sam3d_parts.masks import Masker
from ..outputs import atomic_write
from ..spec import Endpoint, OutputFormat, PipelineSpec

# rembg on a CPU takes a few seconds a photo: it runs u2net at 320x320 whatever the size
# (rembg 2.0.69, sessions/u2net_custom.py:50). A mask job still running after this is
# stuck, and its worker is started again.
TIME_LIMIT_SECONDS = 60.0


class SegmentRequest(ImageSource):
    """`POST /segment`: the photo a 3D job would be sent, under the same rules."""

    TASK: ClassVar[str] = "mask"  # what a job makes, for the log (jobs.state.output_of)


class Segmenter:
    """Image -> the 0/255 mask `Masker` gives SAM 3D Objects, as an 8-bit greyscale PNG."""

    name: ClassVar[str] = "segment"
    options_model: ClassVar[type] = SegmentRequest
    oom_advice: ClassVar[str] = "Send a smaller image."

    def __init__(self, masker: Masker | None = None):
        self.masker = masker

    def load(self) -> None:
        if self.masker is None:
            self.masker = Masker.create()

    def check(self, options: SegmentRequest) -> None:
        """Any image a 3D job takes can be segmented."""

    @staticmethod
    def time_limit(options: SegmentRequest, image: Image.Image) -> float:
        return TIME_LIMIT_SECONDS

    def run(self, options: SegmentRequest, image: Image.Image, output_stem: Path,
            progress: Progress) -> Result:
        progress("segmenting", 0.1)
        mask, source = self.masker.mask(image)
        path = atomic_write(Path(f"{output_stem}.png"),
                            lambda tmp: Image.fromarray(mask, "L").save(tmp, format="PNG"))
        return Result(path, "image/png", "mask.png",
                      {"source": source, "width": image.width, "height": image.height})


SPEC = PipelineSpec(
    name="segment",
    endpoints=(Endpoint("segment", SegmentRequest, "",
                        "The mask a 3D job would use for this image, made on the CPU",
                        sync="only", answer="SegmentResult", answer_description="The mask",
                        inline_field="mask"),),
    factory=lambda config: Segmenter(),
    checkpoint_present=None,  # started beside SAM 3D Objects, never alone
    outputs=(OutputFormat("mask", ".png", "image/png", "mask.png"),),
    placement="cpu",  # rembg takes seconds on a CPU, and no GPU memory from the models
    needs="sam3d",
    memory="none of a GPU's",
)

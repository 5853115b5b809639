"""Depth Anything V2's forward pass: transformers' own model and image processor, driven the
way transformers' depth-estimation pipeline drives them, a batch at a time.

Imported only where the model runs (a model worker process, the serverless worker): it
imports torch. Line numbers are transformers 4.49.0's, as installed (`pip show transformers`):

- pipelines/depth_estimation.py:103-109 `preprocess`: `load_image` (image_utils.py:508-549:
  EXIF orientation applied, then `.convert("RGB")`), the image processor on that one image,
  the input cast to the model's dtype, and the image's own (height, width) kept;
- :111-115 `_forward`: the model on `pixel_values`;
- :117-123 `postprocess`: `post_process_depth_estimation(outputs, [target_size])`, which
  (models/dpt/image_processing_dpt.py:635-674) resizes each map to its image's size, bicubic,
  align_corners=False, then `.squeeze()`; the pipeline's `predicted_depth` is that map.

The processor, as the checkpoints' preprocessor_config.json sets it (DPTImageProcessor, and
the conversion script's DPTImageProcessor(...) in convert_dpt_checkpoint): resize keeping the
aspect ratio, "scaling as little as possible" onto 518 x 518, each side a multiple of 14
(image_processing_dpt.py:63-102), bicubic; rescale by 1/255; ImageNet mean and std; no pad.

What is ours: images whose processed sizes are equal share one forward pass (the pipeline
runs one image per pass); on a GPU the resize back runs there too, where the pipeline first
moves the model's output to the CPU (pipelines/base.py:1276), so CUDA maps may differ from
the pipeline's in the last float32 bits (a 12-megapixel bicubic resize on the CPU would cost
more than the model); the maps come back as numpy float32 (height, width), also for a
photo one pixel tall (the pipeline's `.squeeze()` makes that a row); the photo's layout is
stated as channels-last rather than guessed (a photo 1 or 3 pixels tall is misread by the
guess, below); a photo the processor would shrink to 0 pixels is refused by name. All of it
is held to the pipeline's own output by tests/pipelines/depth_anything/test_depth_anything.py.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Literal, Sequence

import numpy as np
import torch
from PIL import Image
from transformers import AutoImageProcessor, DepthAnythingForDepthEstimation
from transformers.image_utils import load_image
from transformers.models.dpt.image_processing_dpt import get_resize_output_image_size

from .catalog import missing_files


class DepthAnythingV2:
    """Photo(s) in, Depth Anything V2's maps out, each at its photo's size.

    `kind` says what a map is: "relative", affine-invariant disparity (larger = nearer);
    "metric", depth in metres (larger = farther, in [0, `max_depth`] before the bicubic
    resize back to the photo's size, which may overshoot that range slightly at sharp
    edges, as upstream's does). fp32 on every device, as the pipeline runs without a
    `torch_dtype`.
    """

    def __init__(self, model: DepthAnythingForDepthEstimation, processor):
        self.model, self.processor = model.eval(), processor
        self.device = next(model.parameters()).device
        config = model.config
        self.kind: Literal["relative", "metric"] = config.depth_estimation_type
        # DepthAnythingConfig keeps max_depth 1 for relative checkpoints (a no-op factor).
        self.max_depth = float(config.max_depth) if self.kind == "metric" else None

    @property
    def disparity(self) -> bool:
        """pipelines/outputs.py's and relief.py's `disparity` flag for these maps."""
        return self.kind == "relative"

    @classmethod
    def from_pretrained(cls, path: str | Path, device: str = "cpu") -> "DepthAnythingV2":
        """The checkpoint in the local folder `path` (never the hub), on `device`."""
        path = Path(path)
        missing = missing_files(path)
        if missing:
            raise FileNotFoundError(f"Depth Anything V2 checkpoint {path} is missing: "
                                    f"{', '.join(missing)}")
        model_type = json.loads((path / "config.json").read_text()).get("model_type")
        if model_type != "depth_anything":
            raise ValueError(f"{path} holds a {model_type} model, not Depth Anything")
        model = DepthAnythingForDepthEstimation.from_pretrained(
            path, torch_dtype=torch.float32, local_files_only=True)
        processor = AutoImageProcessor.from_pretrained(path, local_files_only=True)
        return cls(model.to(device), processor)

    def processing_size(self, width: int, height: int) -> tuple[int, int]:
        """(height, width) the model sees for a photo of this size: the processor's own
        computation (get_resize_output_image_size, on a zero-stride stand-in image)."""
        if not self.processor.do_resize:
            return height, width
        size = self.processor.size
        stand_in = np.broadcast_to(np.uint8(0), (height, width, 3))
        return get_resize_output_image_size(
            stand_in, (size["height"], size["width"]), self.processor.keep_aspect_ratio,
            self.processor.ensure_multiple_of, input_data_format="channels_last")

    def __call__(self, images: Sequence[Image.Image]) -> np.ndarray:
        """(N, H, W) float32, for N photos of one size (the queue batches by size);
        `predict` takes photos of any sizes."""
        photos = [load_image(image) for image in images]
        if len({photo.size for photo in photos}) > 1:
            raise ValueError("photos of different sizes give maps of different sizes: call "
                             "predict() for a list of them")
        return np.stack(self._predict(photos))

    def predict(self, images: Sequence[Image.Image]) -> list[np.ndarray]:
        """One float32 (height, width) map per photo, at its size, in order: one forward pass
        per processed size (photos of one size always share one)."""
        return self._predict([load_image(image) for image in images])

    @torch.inference_mode()
    def _predict(self, photos: list[Image.Image]) -> list[np.ndarray]:
        """`predict` on photos read as the pipeline reads them (`load_image`)."""
        for photo in photos:
            height, width = self.processing_size(*photo.size)
            if not (height and width):
                raise ValueError(
                    f"a {photo.width}x{photo.height} photo is too narrow for Depth Anything V2: "
                    f"its processor would resize it to {width}x{height} pixels")
        # channels_last said, not guessed: transformers guesses the layout from the shape
        # (image_utils.py infer_channel_dimension_format) and takes a photo 1 or 3 pixels
        # tall for channels-first, so the pipeline fails on it or reads it wrong; for every
        # other photo the guess is channels_last, the same computation
        pixels = [self.processor(images=photo, return_tensors="pt",
                                 input_data_format="channels_last")["pixel_values"]
                  for photo in photos]
        groups: dict[tuple[int, ...], list[int]] = defaultdict(list)
        for index, values in enumerate(pixels):
            groups[tuple(values.shape)].append(index)
        maps: list[np.ndarray | None] = [None] * len(photos)
        for indices in groups.values():
            batch = torch.cat([pixels[index] for index in indices]).to(
                self.device, self.model.dtype)
            outputs = self.model(pixel_values=batch)
            sizes = [photos[index].size[::-1] for index in indices]
            results = self.processor.post_process_depth_estimation(outputs, target_sizes=sizes)
            for index, size, result in zip(indices, sizes, results):
                # .squeeze() (image_processing_dpt.py:670) drops a side of 1 pixel: put it back
                maps[index] = (result["predicted_depth"].float().cpu().numpy()
                               .reshape(size).astype(np.float32, copy=False))
        return maps  # type: ignore[return-value]

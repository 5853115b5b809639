"""What a Lotus job costs: the size the model sees (`resized_size`, upstream's
resize_max_res, utils/image_utils.py) and the time after which a job is surely stuck
(`time_limit`, which caps JOB_TIMEOUT_SECONDS for it). Standard library only: the HTTP
process estimates without torch.
"""

from __future__ import annotations

# Seconds per processing megapixel of one job: CPU measured with bench/depth.py --arch sd2
# (38 s for 256x192 on 2 threads, fp32); CUDA assumed for a T4-class card under autocast
# (an H200 is about ten times faster). Above ATTENTION_MEGAPIXELS the UNet's self-attention,
# quadratic in the latent's pixels, outweighs the rest (SD2 at 96x72 latent tokens: about a
# quarter of the work).
SECONDS_PER_MEGAPIXEL = {"cpu": 800.0, "cuda": 4.0}
ATTENTION_MEGAPIXELS = 1.5
SLACK = 5  # a job this many times over its estimate is stuck, not slow
WARM_UP_SECONDS = 120  # first-call kernel selection, a cold page cache


def resized_size(height: int, width: int, max_edge: int) -> tuple[int, int]:
    """(height, width) scaled by min(max_edge/W, max_edge/H), truncated, at least 1 pixel."""
    factor = min(max_edge / width, max_edge / height)
    return max(1, int(height * factor)), max(1, int(width * factor))


def time_limit(width: int, height: int, processing_res: int, device_kind: str,
               passes: int = 1) -> float:
    """Seconds after which a job of `passes` forward passes (a video's frames, a relief's
    second model) on a `width` x `height` input is surely stuck: SECONDS_PER_MEGAPIXEL of
    the processing size, the UNet's self-attention growing with its square, times SLACK,
    plus warm-up (Lotus-G's one UNet call costs as Lotus-D's: only its first convolution is
    wider)."""
    if processing_res > 0:
        height, width = resized_size(height, width, processing_res)
    megapixels = width * height / 1e6
    rate = SECONDS_PER_MEGAPIXEL[device_kind]
    work = rate * megapixels * (1 + megapixels / ATTENTION_MEGAPIXELS)
    return WARM_UP_SECONDS + SLACK * work * passes

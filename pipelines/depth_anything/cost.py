"""What a Depth Anything V2 job costs, known before any model loads (the HTTP process has no
torch): the size the model sees, whether a photo can be served, and a time estimate.

The size is the image processor's: its published settings (every checkpoint's
preprocessor_config.json: size 518 x 518, keep_aspect_ratio, ensure_multiple_of 14) through
transformers' get_resize_output_image_size (models/dpt/image_processing_dpt.py:63-102 in
4.49.0): both sides scaled by whichever of 518/height and 518/width is nearer 1, each then
rounded to a multiple of 14. So almost every photo is seen at about 518 pixels on its shorter
side, whatever its own size, and a long thin one at 518 x 518 times its aspect ratio.
tests/pipelines/depth_anything/test_depth_anything.py holds `processing_size` to that function.
"""

from __future__ import annotations

PROCESSING_SIDE = 518
MULTIPLE = 14  # the ViT's patch size
# A photo whose processed size is over this is refused before work: a 1:15 strip is seen at
# 518 x 7770 (20,000 ViT tokens, self-attention quadratic in them); a 4:3 photo at 0.36.
MAX_PROCESSING_MEGAPIXELS = 4.0
# Seconds per processing megapixel of one photo, fp32. CPU: from bench/depth.py --arch sd2
# --tasks da2 (ViT-S, random weights, 2 CPU threads shared with other work, so noisy): 14.4 s
# for a photo seen at 518x392 (0.20 MP; 13 s by this model) and 14.8 s at 686x518 (0.36 MP;
# 29 s by this model: on the safe side for a limit). CUDA: an estimate, not measured (no GPU
# here): a T4-class card, as Lotus's figure assumes, from the FLOPs at a fifth of its fp32
# peak: about 170 GFLOP at 686x518 (torch's FlopCounterMode counts 107, leaving out the fused
# self-attention's 2 x 2 x tokens^2 x 384 x 12 layers = 60); an H100 is about ten times
# faster. Above ATTENTION_MEGAPIXELS the self-attention (quadratic in the processed pixels)
# outweighs the rest (43% of the backbone's work at 686x518).
SECONDS_PER_MEGAPIXEL = {"cpu": 45.0, "cuda": 0.25}
ATTENTION_MEGAPIXELS = 0.45
SLACK = 5  # a job this many times over its estimate is stuck, not slow
WARM_UP_SECONDS = 30  # first call: kernel selection, a cold page cache


def _multiple(value: float) -> int:
    return round(value / MULTIPLE) * MULTIPLE


def processing_size(width: int, height: int) -> tuple[int, int]:
    """(height, width) the model sees for a photo of width x height (0 on a side: the
    processor cannot serve it)."""
    scale_height, scale_width = PROCESSING_SIDE / height, PROCESSING_SIDE / width
    scale = scale_width if abs(1 - scale_width) < abs(1 - scale_height) else scale_height
    return _multiple(scale * height), _multiple(scale * width)


def refusal(width: int, height: int) -> str | None:
    """Why a photo cannot be served (a 400's message), or None."""
    processed_height, processed_width = processing_size(width, height)
    if not (processed_height and processed_width):
        return (f"a {width}x{height} photo is too narrow for Depth Anything V2: its processor "
                f"would resize it to {processed_width}x{processed_height} pixels")
    megapixels = processed_height * processed_width / 1e6
    if megapixels > MAX_PROCESSING_MEGAPIXELS:
        return (f"a {width}x{height} photo is too long and thin for Depth Anything V2: it would "
                f"be processed at {processed_width}x{processed_height} pixels ({megapixels:.1f} "
                f"megapixels; at most {MAX_PROCESSING_MEGAPIXELS:g}); crop it nearer 1:15")
    return None


def time_limit(width: int, height: int, device_kind: str, photos: int = 1) -> float:
    """Seconds after which a job of `photos` such photos is surely stuck (the queue caps
    JOB_TIMEOUT_SECONDS with it)."""
    processed_height, processed_width = processing_size(width, height)
    megapixels = processed_height * processed_width / 1e6
    work = SECONDS_PER_MEGAPIXEL[device_kind] * megapixels * (1 + megapixels /
                                                              ATTENTION_MEGAPIXELS)
    return WARM_UP_SECONDS + SLACK * work * photos

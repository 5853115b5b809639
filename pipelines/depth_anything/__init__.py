"""Depth Anything V2 (relative depth, and metric depth in metres), on transformers' own
`DepthAnythingForDepthEstimation` and image processor: no new dependency.

- `catalog` (standard library): the checkpoints served (`DA2_MODELS`: the Small relative one
  and the Small metric indoor / outdoor ones, all Apache-2.0), their folders under
  CHECKPOINTS_DIR, what each map holds, and test weights told from real ones.
- `cost` (standard library): the size the model sees, photos refused before work, and the
  time estimate.
- `model` (torch; imported only where a model runs): `DepthAnythingV2`, equal to transformers'
  `pipeline("depth-estimation")` output (`predicted_depth`, resized to the photo's size).

What the maps are, and the flags the existing outputs take (pipelines/outputs.py,
pipelines/relief.py), from `model.kind` (or the catalog row's `kind`; they agree):

- "relative" (depth-anything-v2-small): affine-invariant *disparity*, unitless, larger =
  nearer: Lotus's *-disparity models' meaning, so the same flag, `disparity=True`:
  `depth_png8(m)`, `depth_png16(m)`, `depth_npy(m)` as they are (bright = near),
  `depth_color(m, disparity=True)`, `relief_glb/ply(m, photo, disparity=True, fov_degrees)`.
- "metric" (…-metric-indoor-small, max 20 m; …-metric-outdoor-small, max 80 m): *depth in
  metres*, larger = farther: `disparity=False` (Lotus v1-0's meaning): png/png16 stretch it
  min..max (bright = far; the answer's min and max are metres), npy is metres as float32,
  `depth_color(m, disparity=False)` puts near in red. Its relief is true scale: the server
  writes it with `metric=True` (relief.relief_distance: the map itself in metres, clipped
  above 0; the answer's `geometry` is GEOMETRY_METRIC and `units` is "metres").

Serving it: `pipeline.DepthAnything` is its queue-facing pipeline, `spec.SPEC` its row of
the model table (pipelines/table.py), and pipelines/models.py holds its `model` names beside
Lotus's. The notes it was built from:

- Lane: its own model worker, not the Lotus lane's. Small is 24.8M parameters (99 MB fp32;
  activations at 686x518 estimated under 0.2 GB a photo, the largest being the head's
  32-channel full-size maps: not measured on a GPU here), so with its own CUDA context
  (~0.5 GB) it is about 1 GB at batch 4 beside Lotus's ~5 GB, and fits on the same GPU; a DA2 job (tens of ms on a GPU) then never
  waits behind a Lotus-G photo or a Lotus video, batches never mix the two (different
  models), and a crash or out-of-memory in one lane leaves the other serving. Placement: GPU
  when there is one, else CPU (fp32 both, as transformers' pipeline runs it).
- Batch key: `(options.model, cost.processing_size(*image.size))`: photos for one checkpoint
  whose processed sizes are equal share one forward pass (`DepthAnythingV2.predict` groups by
  it), whatever their own sizes; no other option changes the computation (output format and
  fov_degrees only change what is written). `(options.model, image.size)` is a narrower key
  that also works (then `model(images)` stacks them). Batch limit as Lotus-D's DEPTH_BATCH.
- Time: `cost.time_limit(width, height, device_kind, photos)`: per processing megapixel,
  CPU 45 s (measured: ViT-S, 2 shared threads), CUDA 0.25 s (an estimate for a T4-class card,
  not measured), plus the self-attention's quadratic share, times SLACK 5, plus warm-up.
  Nearly every photo is processed at 518 px on its shorter side, so the cost hardly depends
  on the photo's size: about 0.36 processing megapixels for any 4:3 photo.
- Before work: `cost.refusal(width, height)` -> a 400 message for a photo the processor
  would shrink to 0 pixels or blow past MAX_PROCESSING_MEGAPIXELS (a strip past ~1:15).
- Test weights: `catalog.is_test_checkpoint(folder)` (a backbone narrower than ViT-S), for
  /health and the log to say the maps are noise.
- The call, in the worker:

      from pipelines.depth_anything.catalog import DA2_MODELS
      from pipelines.depth_anything.model import DepthAnythingV2
      model = DepthAnythingV2.from_pretrained(checkpoints_dir / DA2_MODELS[name].folder,
                                              device="cuda" if torch.cuda.is_available()
                                              else "cpu")          # once, at load
      maps = model.predict(images)   # list of float32 (H, W), each at its photo's size

  `from_pretrained` raises FileNotFoundError naming what the folder lacks; `predict` raises
  ValueError for a photo the processor cannot size (cost.refusal catches it first).
"""

from .catalog import (DA2_MODELS, DEFAULT_MODEL, TEST_CHECKPOINT_MARKER, DepthAnythingModel,
                      is_test_checkpoint, missing_files, present_models)

__all__ = ["DA2_MODELS", "DEFAULT_MODEL", "TEST_CHECKPOINT_MARKER", "DepthAnythingModel",
           "is_test_checkpoint", "missing_files", "present_models"]

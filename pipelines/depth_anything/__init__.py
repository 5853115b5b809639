"""Depth Anything V2 (relative and metric depth), on transformers' own model and processor.

`catalog` is the table of checkpoints served (stdlib only); `model` (torch) holds
`DepthAnythingV2`, imported only where a model runs.
"""

from .catalog import (DA2_MODELS, DEFAULT_MODEL, TEST_CHECKPOINT_MARKER, DepthAnythingModel,
                      is_test_checkpoint, missing_files, present_models)

__all__ = ["DA2_MODELS", "DEFAULT_MODEL", "TEST_CHECKPOINT_MARKER", "DepthAnythingModel",
           "is_test_checkpoint", "missing_files", "present_models"]

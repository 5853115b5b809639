#!/usr/bin/env python3
"""Record the SAM 3D Objects interface our server touches, from a source tree, without importing it.

    python scripts/record_sam3d_interface.py SOURCE_DIR > tests/sam3d_upstream_interface.json

Reads each function below with `ast` (upstream's modules import CUDA-only packages at import
time, so `inspect` cannot be used here) and writes its parameters: name, kind and default as
source text. The tests compare the stand-in in tests/sam3d_stand_in with the recorded manifest,
and the manifest with a real source tree when SAM3D_SOURCE_DIR points to one.
"""

from __future__ import annotations

import ast
import json
import sys
from pathlib import Path

# (file in the source tree, qualified name): everything pipelines/sam3d.py and
# pipelines/sam3d_parts/ call, replace or rely on, and what those call on the way to a file.
INTERFACE = [
    ("notebook/inference.py", "Inference.__init__"),
    ("notebook/inference.py", "Inference.merge_mask_to_rgba"),
    ("notebook/inference.py", "Inference.__call__"),
    ("notebook/inference.py", "make_scene"),
    ("sam3d_objects/pipeline/inference_pipeline_pointmap.py",
     "InferencePipelinePointMap.__init__"),
    ("sam3d_objects/pipeline/inference_pipeline_pointmap.py",
     "InferencePipelinePointMap.compute_pointmap"),
    ("sam3d_objects/pipeline/inference_pipeline.py",
     "InferencePipeline.instantiate_and_load_from_pretrained"),
    ("sam3d_objects/pipeline/inference_pipeline_pointmap.py", "InferencePipelinePointMap.run"),
    ("sam3d_objects/pipeline/inference_pipeline.py", "InferencePipeline.merge_image_and_mask"),
    ("sam3d_objects/pipeline/inference_pipeline.py", "InferencePipeline.sample_sparse_structure"),
    ("sam3d_objects/pipeline/inference_pipeline.py", "InferencePipeline.sample_slat"),
    ("sam3d_objects/pipeline/inference_pipeline.py", "InferencePipeline.decode_slat"),
    ("sam3d_objects/pipeline/inference_pipeline.py", "InferencePipeline.postprocess_slat_output"),
    ("sam3d_objects/model/backbone/tdfy_dit/utils/postprocessing_utils.py", "to_glb"),
    ("sam3d_objects/model/backbone/tdfy_dit/utils/render_utils.py", "render_frames"),
    ("sam3d_objects/model/backbone/tdfy_dit/utils/render_utils.py", "render_multiview"),
    ("sam3d_objects/model/backbone/tdfy_dit/representations/gaussian/gaussian_model.py",
     "Gaussian.save_ply"),
]


def find_function(tree: ast.Module, qualname: str) -> ast.FunctionDef:
    scope: list[ast.stmt] = tree.body
    *classes, name = qualname.split(".")
    for class_name in classes:
        scope = next(node.body for node in scope
                     if isinstance(node, ast.ClassDef) and node.name == class_name)
    return next(node for node in scope
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name == name)


def parameters(function: ast.FunctionDef) -> list[str]:
    """The parameters as Python writes them: `name`, `name=default`, `*`, `*args`, `**kwargs`."""
    args = function.args
    positional = args.posonlyargs + args.args
    defaults = [None] * (len(positional) - len(args.defaults)) + list(args.defaults)
    rows = [(arg.arg, default) for arg, default in zip(positional, defaults)]
    if args.vararg:
        rows.append(("*" + args.vararg.arg, None))
    elif args.kwonlyargs:
        rows.append(("*", None))
    rows += list(zip((arg.arg for arg in args.kwonlyargs), args.kw_defaults))
    if args.kwarg:
        rows.append(("**" + args.kwarg.arg, None))
    return [name if default is None else f"{name}={ast.unparse(default)}"
            for name, default in rows]


def record(source_dir: Path) -> dict[str, list[str]]:
    """`{"file::qualname": parameters}` for every entry of INTERFACE."""
    trees: dict[str, ast.Module] = {}
    manifest = {}
    for file, qualname in INTERFACE:
        if file not in trees:
            trees[file] = ast.parse((Path(source_dir) / file).read_text(), filename=file)
        manifest[f"{file}::{qualname}"] = parameters(find_function(trees[file], qualname))
    return manifest


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    signatures = record(Path(sys.argv[1]))
    print("{\n" + ",\n".join(f"  {json.dumps(key)}: {json.dumps(value)}"
                              for key, value in signatures.items()) + "\n}")

"""pipelines/sam3d.py against the real SAM 3D Objects code, on CPU with ../shared/sam3d-cpu.

    SAM3D_CPU_WORK=... python tests/sam3d_kit_check.py    (tests/pipelines/sam3d/test_sam3d_upstream.py runs it)

Re-executes itself with the kit's Python. Beyond the kit's own run_wrapper.py it checks what
CPU cannot run to the end: the textured GLB's `to_glb` call binds to the real signature (a spy
stops it before nvdiffrast), and texture baking reaches upstream's Gaussian renderer with the
gsplat backend; a scene of two masked objects is placed as upstream places them (PLY: its own
`make_scene`; GLB: every vertex where upstream's `SceneVisualizer.object_pointcloud` puts the
decoded mesh's, in glTF's frame); the low-memory mode finds every sub-model it moves under the
names the real pipeline gives them. One line per check; exit status 1 if any failed. `SAM3D_SOURCE_DIR`, when set,
replaces the kit's exported source tree.
"""
import inspect
import os
import sys

sys.dont_write_bytecode = True
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KIT = os.environ.get("SAM3D_CPU_KIT", os.path.join(ROOT, "..", "shared", "sam3d-cpu"))
sys.path.insert(0, KIT)
import _kit  # noqa: E402

cfg = _kit.ensure_venv()
if os.environ.get("SAM3D_SOURCE_DIR"):
    cfg["sam3d_src"] = os.environ["SAM3D_SOURCE_DIR"]
_kit.install_upstream(cfg)

import cpu_compat  # noqa: E402  (the kit's; on sys.path after install_upstream)
from sam3d_objects.model.backbone.tdfy_dit.renderers import gaussian_render  # noqa: E402
from sam3d_objects.model.backbone.tdfy_dit.utils import postprocessing_utils  # noqa: E402


class StopBeforeCuda(Exception):
    """Raised by the spies once the call reached them: what follows needs CUDA."""


real_to_glb = postprocessing_utils.to_glb
baked = []


def to_glb_spy(*args, **kwargs):
    bound = inspect.signature(real_to_glb).bind(*args, **kwargs)  # TypeError if it does not fit
    if not kwargs.get("with_texture_baking"):
        return real_to_glb(*args, **kwargs)
    baked.append({name: value for name, value in bound.arguments.items()
                  if name not in ("app_rep", "mesh")})
    raise StopBeforeCuda


postprocessing_utils.to_glb = to_glb_spy  # before load(): the wrapper looks it up there
sam3d, pipeline, seconds = _kit.load_wrapper(ROOT, cfg)
print(f"[load] Sam3DObjects.load() {seconds:.1f}s on {cfg['sam3d_src']}", flush=True)
out_dir = os.path.join(cfg["work"], "out", "server-check")
failures = 0
for case in ("ply", "glb_vertex_colour"):
    result = _kit.run_case(sam3d, pipeline, case, out_dir)
    print(_kit.case_line(result), flush=True)
    failures += not result["ok"]

result = _kit.run_case(sam3d, pipeline, "glb_textured", out_dir)
if isinstance(result.get("exc"), StopBeforeCuda) and baked:
    print(f"[glb_textured] to_glb bound to the real signature: {baked[-1]}", flush=True)
else:
    failures += 1
    print(_kit.case_line(result), flush=True)

backends = []


def render_spy(*args, backend="inria", **kwargs):
    backends.append(backend)
    raise StopBeforeCuda


gaussian_render.render = render_spy  # GaussianRenderer.render calls it by its module name
rgba = _kit.test_rgba()
output = pipeline.inference._pipeline.run(
    rgba, None, 42, stage1_only=False, with_mesh_postprocess=False, with_texture_baking=False,
    with_layout_postprocess=False, use_vertex_color=False, stage1_inference_steps=2,
    stage2_inference_steps=2, decode_formats=["gaussian"])
try:
    with cpu_compat.CudaToCpu():  # render_multiview makes its cameras with .cuda()
        postprocessing_utils.render_multiview(output["gaussian"][0], resolution=8, nviews=1)
except StopBeforeCuda:
    pass
ok = backends == ["gsplat"]
failures += not ok
print(f"[bake renderer] {'OK' if ok else 'FAILED'}: upstream's GaussianRenderer got "
      f"backend={backends}", flush=True)


def check(name, ok, detail):
    global failures
    failures += not ok
    print(f"[{name}] {'OK' if ok else 'FAILED'}: {detail}", flush=True)


def mask_png(rows, cols):
    import base64
    import io

    import numpy as np
    from PIL import Image

    mask = np.zeros((64, 64), dtype=np.uint8)
    mask[rows, cols] = 255
    mask &= rgba[..., 3]  # inside the kit's disk, where its picture has an object
    buffer = io.BytesIO()
    Image.fromarray(mask).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402
from sam3d_objects.utils.visualization.scene_visualizer import SceneVisualizer  # noqa: E402

from pipelines import sam3d as wrapper  # noqa: E402  (the project's, on sys.path via the kit)
from pipelines.sam3d_parts.scene import CAMERA_TO_GLTF  # noqa: E402

masks = [mask_png(slice(0, 64), slice(0, 32)), mask_png(slice(0, 64), slice(32, 64))]
captured, placed = [], []
real_write, real_place = pipeline._write, wrapper.place_mesh
pipeline._write = lambda options, outputs, stem: (captured.extend(outputs),
                                               real_write(options, outputs, stem))[1]
wrapper.place_mesh = lambda mesh, pose: (placed.append(real_place(mesh, pose)), placed[-1])[1]
picture = Image.fromarray(rgba[..., :3])
scene_ply = _kit.run_case(sam3d, pipeline, "scene_ply", out_dir, image=picture, options=dict(
    output_format="ply", masks=masks, stage1_steps=2, stage2_steps=2))
print(_kit.case_line(scene_ply), flush=True)
if scene_ply["ok"]:
    expected = sum(len(output["gaussian"][0].get_xyz) for output in captured)
    written = _kit.ply_facts(scene_ply["path"])["vertices"]
    check("scene_ply placed", written == expected,
          f"{written} Gaussians = the two objects' {expected}, merged by upstream's make_scene")
else:
    failures += 1
captured.clear()
scene_glb = _kit.run_case(sam3d, pipeline, "scene_glb", out_dir, image=picture, options=dict(
    output_format="glb", with_texture=False, masks=masks, stage1_steps=2, stage2_steps=2))
print(_kit.case_line(scene_glb), flush=True)
if scene_glb["ok"] and len(placed) == len(captured) == 2:
    errors = []
    for output, mesh in zip(captured, placed):
        cloud = SceneVisualizer.object_pointcloud(
            points_local=output["mesh"][0].vertices.float().unsqueeze(0),
            quat_l2c=output["rotation"], trans_l2c=output["translation"],
            scale_l2c=output["scale"])
        expected = cloud.points_list()[0].double().numpy() @ CAMERA_TO_GLTF.T
        errors.append(float(np.abs(np.asarray(mesh.vertices) - expected).max()))
    check("scene_glb placed", max(errors) < 1e-4,
          f"max vertex distance from upstream's object_pointcloud: {max(errors):.2e}")
else:
    failures += 1
pipeline._write, wrapper.place_mesh = real_write, real_place

low = wrapper.Sam3DObjects(cfg["checkpoints"], cfg["sam3d_src"], masker=wrapper.Masker(None),
                           vram_gib=16.0, offload="auto")
low.load()
moved = sorted(low.offload.modules)
result = _kit.run_case(wrapper, low, "ply_low_memory", out_dir, options=dict(
    output_format="ply", stage1_steps=2, stage2_steps=2))
print(_kit.case_line(result), flush=True)
on_cpu = all(parameter.device == torch.device("cpu")
             for module in low.offload.modules.values() for parameter in module.parameters())
check("low-memory mode", result["ok"] and on_cpu and "depth_model" in moved,
      f"sub-models moved stage by stage: {', '.join(moved)}")
print(f"summary: {failures} failed", flush=True)
sys.exit(1 if failures else 0)

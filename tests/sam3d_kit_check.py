"""pipelines/sam3d.py against the real SAM 3D Objects code, on CPU with ../shared/sam3d-cpu.

    SAM3D_CPU_WORK=... python tests/sam3d_kit_check.py    (tests/test_sam3d_upstream.py runs it)

Re-executes itself with the kit's Python. Beyond the kit's own run_wrapper.py it checks what
CPU cannot run to the end: the textured GLB's `to_glb` call binds to the real signature (a spy
stops it before nvdiffrast), and texture baking reaches upstream's Gaussian renderer with the
gsplat backend. One line per check; exit status 1 if any failed. `SAM3D_SOURCE_DIR`, when set,
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
print(f"summary: {failures} failed", flush=True)
sys.exit(1 if failures else 0)

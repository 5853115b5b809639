"""One mesh result, several file formats: GLB, OBJ (zipped with its material and texture),
STL and USDZ, written with the libraries that own those formats (trimesh; usd-core for USD).

Every writer takes a `trimesh.Scene` (one object, or a placed scene of several) and the
path to write; `pipelines.outputs.atomic_write` makes the file appear whole.
"""

from __future__ import annotations

import tempfile
import zipfile
from pathlib import Path
from typing import Callable

import numpy as np
import trimesh

MeshWriter = Callable[[trimesh.Scene, Path], None]


def write_glb(scene: trimesh.Scene, path: Path) -> None:
    path.write_bytes(scene.export(file_type="glb"))


def write_obj_zip(scene: trimesh.Scene, path: Path) -> None:
    """model.obj, model.mtl and the textures it names, in one zip (an OBJ alone cannot carry
    its material). Vertex colours go into the OBJ's `v` lines, as trimesh writes them."""
    text, files = trimesh.exchange.obj.export_obj(
        scene, include_texture=True, return_texture=True, mtl_name="model.mtl")
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("model.obj", text)
        for name, data in files.items():
            archive.writestr(name, data)


def write_stl(scene: trimesh.Scene, path: Path) -> None:
    """Binary STL: geometry only (the format has no colour)."""
    path.write_bytes(trimesh.util.concatenate(scene.dump()).export(file_type="stl"))


def write_usdz(scene: trimesh.Scene, path: Path) -> None:
    """A USDZ package for AR Quick Look: y-up, metres, one UsdGeom.Mesh per object with a
    UsdPreviewSurface material (its texture, or its vertex colours as `displayColor`)."""
    from pxr import Sdf, Usd, UsdGeom, UsdUtils

    with tempfile.TemporaryDirectory(dir=path.parent) as folder:
        layer = Path(folder) / "model.usdc"
        stage = Usd.Stage.CreateNew(str(layer))
        UsdGeom.SetStageUpAxis(stage, UsdGeom.Tokens.y)
        UsdGeom.SetStageMetersPerUnit(stage, 1.0)
        root = UsdGeom.Xform.Define(stage, "/Model")
        stage.SetDefaultPrim(root.GetPrim())
        for index, mesh in enumerate(scene.dump()):
            _add_usd_mesh(stage, f"/Model/object_{index}", mesh, Path(folder))
        stage.GetRootLayer().Save()
        if not UsdUtils.CreateNewARKitUsdzPackage(Sdf.AssetPath(str(layer)), str(path)):
            raise RuntimeError("usd-core could not write the USDZ package")


def _add_usd_mesh(stage, prim_path: str, mesh: trimesh.Trimesh, folder: Path) -> None:
    from pxr import Gf, Sdf, UsdGeom, UsdShade, Vt

    geometry = UsdGeom.Mesh.Define(stage, prim_path)
    points = np.asarray(mesh.vertices, dtype=np.float32)
    geometry.CreatePointsAttr(Vt.Vec3fArray.FromNumpy(points))
    geometry.CreateFaceVertexCountsAttr(Vt.IntArray.FromNumpy(
        np.full(len(mesh.faces), 3, dtype=np.int32)))
    geometry.CreateFaceVertexIndicesAttr(Vt.IntArray.FromNumpy(
        np.asarray(mesh.faces, dtype=np.int32).reshape(-1)))
    geometry.CreateSubdivisionSchemeAttr(UsdGeom.Tokens.none)
    geometry.CreateExtentAttr(Vt.Vec3fArray([Gf.Vec3f(*map(float, points.min(0))),
                                             Gf.Vec3f(*map(float, points.max(0)))]))
    primvars = UsdGeom.PrimvarsAPI(geometry)
    material = UsdShade.Material.Define(stage, f"{prim_path}_material")
    shader = UsdShade.Shader.Define(stage, f"{prim_path}_material/surface")
    shader.CreateIdAttr("UsdPreviewSurface")
    shader.CreateInput("roughness", Sdf.ValueTypeNames.Float).Set(1.0)
    shader.CreateInput("metallic", Sdf.ValueTypeNames.Float).Set(0.0)
    diffuse = shader.CreateInput("diffuseColor", Sdf.ValueTypeNames.Color3f)
    texture = _texture_image(mesh)
    if texture is not None:
        name = f"{Path(prim_path).name}.png"
        texture.save(folder / name)
        primvars.CreatePrimvar("st", Sdf.ValueTypeNames.TexCoord2fArray,
                               UsdGeom.Tokens.vertex).Set(
            Vt.Vec2fArray.FromNumpy(np.asarray(mesh.visual.uv, dtype=np.float32)))
        reader = UsdShade.Shader.Define(stage, f"{prim_path}_material/st")
        reader.CreateIdAttr("UsdPrimvarReader_float2")
        reader.CreateInput("varname", Sdf.ValueTypeNames.Token).Set("st")
        sampler = UsdShade.Shader.Define(stage, f"{prim_path}_material/texture")
        sampler.CreateIdAttr("UsdUVTexture")
        sampler.CreateInput("file", Sdf.ValueTypeNames.Asset).Set(name)
        sampler.CreateInput("st", Sdf.ValueTypeNames.Float2).ConnectToSource(
            reader.ConnectableAPI(), "result")
        diffuse.ConnectToSource(sampler.ConnectableAPI(), "rgb")
    elif mesh.visual.kind == "vertex":
        colours = np.asarray(mesh.visual.vertex_colors[:, :3], dtype=np.float32) / 255.0
        primvars.CreatePrimvar("displayColor", Sdf.ValueTypeNames.Color3fArray,
                               UsdGeom.Tokens.vertex).Set(Vt.Vec3fArray.FromNumpy(colours))
        reader = UsdShade.Shader.Define(stage, f"{prim_path}_material/colour")
        reader.CreateIdAttr("UsdPrimvarReader_float3")
        reader.CreateInput("varname", Sdf.ValueTypeNames.Token).Set("displayColor")
        diffuse.ConnectToSource(reader.ConnectableAPI(), "result")
    else:
        diffuse.Set(Gf.Vec3f(0.8, 0.8, 0.8))
    material.CreateSurfaceOutput().ConnectToSource(shader.ConnectableAPI(), "surface")
    UsdShade.MaterialBindingAPI.Apply(geometry.GetPrim()).Bind(material)


def _texture_image(mesh: trimesh.Trimesh):
    """The base-colour texture of a textured mesh (to_glb's PBR material), else None."""
    material = getattr(mesh.visual, "material", None)
    if mesh.visual.kind != "texture" or material is None:
        return None
    image = getattr(material, "baseColorTexture", None) or getattr(material, "image", None)
    return image.convert("RGB") if image is not None else None


# output_format -> (suffix, media type, download name, writer)
MESH_FORMATS: dict[str, tuple[str, str, str, MeshWriter]] = {
    "glb": (".glb", "model/gltf-binary", "model.glb", write_glb),
    "obj": (".zip", "application/zip", "model_obj.zip", write_obj_zip),
    "stl": (".stl", "model/stl", "model.stl", write_stl),
    "usdz": (".usdz", "model/vnd.usdz+zip", "model.usdz", write_usdz),
}

// The result's preview, one viewer per kind of file: model-viewer for GLB, the splat viewer
// for a 3D job's PLY, three.js for OBJ (a zip: model.obj, model.mtl, its textures), STL and
// a depth map's point cloud (a PLY of coloured points, not splats), a <video> for a video
// job's maps. Each show*() resolves once the file is on screen (or throws: the page says it
// could not show it).
//
// Every module here comes from /vendor/ (web/node_modules, `npm ci`): app.js imports this
// file lazily, so a server without them still runs jobs and shows images. One three.js: the
// import map's "three" (index.html), which model-viewer's module build and gaussian-splats-3d
// import too (model-viewer.min.js bundles a second copy of its own: not used).

import * as THREE from "three";
import "/vendor/model-viewer-module.min.js";  // defines <model-viewer>

let splatView = null;  // { viewer, renderer, observer }
let meshView = null;  // { renderer, urls, observer }
let videoView = null;  // { player, url }

export async function showGlb(viewer, url) {
  viewer.hidden = false;
  const loaded = new Promise((resolve, reject) => {
    viewer.addEventListener("load", resolve, { once: true });
    viewer.addEventListener("error", () => reject(new Error("the GLB could not be shown")),
                            { once: true });
  });
  viewer.src = url;
  await loaded;
}

// The splat viewer draws with a renderer the page makes and owns, passed as `renderer`: the
// library then leaves the page's elements alone. With a renderer of its own it would append
// its canvas to rootElement and, on dispose(), remove rootElement from document.body
// (gaussian-splats-3d 0.4.7, src/Viewer.js via build/gaussian-splats-3d.module.js:12513-12522
// init, 12560-12580 setupRenderer, 13729-13738 dispose): #splat is not a child of body, so
// that dispose() threw and the next job never started.
export async function showSplat(root, url) {
  const GaussianSplats3D = await import("/vendor/gaussian-splats-3d.module.js");
  await disposeSplat();
  root.hidden = false;
  root.replaceChildren();
  const renderer = new THREE.WebGLRenderer({ antialias: false, precision: "highp" });
  renderer.setPixelRatio(window.devicePixelRatio);
  renderer.setClearColor(new THREE.Color(0x000000), 0.0);
  renderer.setSize(root.clientWidth || 1, root.clientHeight || 1);
  root.appendChild(renderer.domElement);
  // No SharedArrayBuffer (it needs cross-origin isolation) and CPU sorting: runs anywhere.
  const viewer = new GaussianSplats3D.Viewer({
    rootElement: root, renderer, sharedMemoryForWorkers: false, gpuAcceleratedSort: false,
    cameraUp: [0, 1, 0], initialCameraPosition: [0, 0.5, 2.5], initialCameraLookAt: [0, 0, 0],
  });
  // the library follows the renderer's size (camera aspect each frame, 13900-13906)
  const observer = new ResizeObserver(() => {
    renderer.setSize(root.clientWidth || 1, root.clientHeight || 1);
    viewer.forceRenderNextFrame();
  });
  observer.observe(root);
  splatView = { viewer, renderer, observer };
  await viewer.addSplatScene(url, { format: GaussianSplats3D.SceneFormat.Ply,
                                    showLoadingUI: false, progressiveLoad: false });
  viewer.start();
}

// The viewer first (it stops its loop and its sort worker), then what the page made.
async function disposeSplat() {
  if (!splatView) return;
  const { viewer, renderer, observer } = splatView;
  splatView = null;
  observer.disconnect();
  try {
    await viewer.dispose();
  } finally {
    renderer.setAnimationLoop(null);
    renderer.dispose();
    renderer.domElement.remove();
  }
}

// A video job's zip (pipelines/lotus/video.py write_video_result: <task>.mp4, <task>.npz, stored
// uncompressed): its mp4 alone taken out with fflate and played; resolves on its first frame.
export async function showVideo(player, blob, name) {
  const { unzipSync } = await import("/vendor/fflate.module.js");
  const files = unzipSync(new Uint8Array(await blob.arrayBuffer()),
                          { filter: (file) => file.name === name });
  if (!files[name]) throw new Error(`the zip has no ${name}`);
  disposeVideo();
  videoView = { player, url: URL.createObjectURL(new Blob([files[name]], { type: "video/mp4" })) };
  const loaded = new Promise((resolve, reject) => {
    player.addEventListener("loadeddata", resolve, { once: true });
    player.addEventListener("error", () => reject(new Error(`${name} could not be played`)),
                            { once: true });
  });
  player.src = videoView.url;
  await loaded;
}

function disposeVideo() {
  if (!videoView) return;
  const { player, url } = videoView;
  videoView = null;
  URL.revokeObjectURL(url);
  player.removeAttribute("src");
  player.load();  // stops it and lets its file go
}

// Every viewer let go, each whatever another one did: a viewer that throws here never keeps
// the next job from starting. The first failure is thrown after all are done, for the page
// to report.
export async function hideViewers() {
  const failures = [];
  for (const dispose of [disposeSplat, disposeMesh, disposeVideo]) {
    try {
      await dispose();
    } catch (error) {
      failures.push(error);
    }
  }
  if (failures.length) throw failures[0];
}

async function stlObject(blob) {
  const { STLLoader } = await import("/vendor/STLLoader.js");
  const geometry = new STLLoader().parse(await blob.arrayBuffer());
  geometry.computeVertexNormals();
  return { object: new THREE.Mesh(geometry, new THREE.MeshStandardMaterial(
    { color: 0x8d9db6, roughness: 0.55, metalness: 0.05, side: THREE.DoubleSide })), urls: [] };
}

async function cloudObject(blob) {
  const { PLYLoader } = await import("/vendor/PLYLoader.js");
  const geometry = new PLYLoader().parse(await blob.arrayBuffer());
  geometry.computeBoundingSphere();
  // a point a few hundredths of the cloud across: the relief grid is at most 512 points wide
  const size = (geometry.boundingSphere?.radius || 1) / 200;
  return { object: new THREE.Points(geometry, new THREE.PointsMaterial(
    { size, vertexColors: Boolean(geometry.attributes.color) })), urls: [] };
}

async function objObject(blob) {
  const [{ OBJLoader }, { MTLLoader }, { unzipSync, strFromU8 }] = await Promise.all([
    import("/vendor/OBJLoader.js"), import("/vendor/MTLLoader.js"),
    import("/vendor/fflate.module.js")]);
  const files = unzipSync(new Uint8Array(await blob.arrayBuffer()));
  if (!files["model.obj"]) throw new Error("the zip has no model.obj");
  const urls = Object.fromEntries(Object.entries(files).map(
    ([name, bytes]) => [name, URL.createObjectURL(new Blob([bytes]))]));
  // The MTL names its textures by file name: each resolves to its blob from the zip.
  const manager = new THREE.LoadingManager();
  manager.setURLModifier((url) => urls[url.split("/").pop()] ?? url);
  const loader = new OBJLoader(manager);
  if (files["model.mtl"]) {
    const materials = new MTLLoader(manager).parse(strFromU8(files["model.mtl"]), "");
    materials.preload();
    loader.setMaterials(materials);
  }
  const object = loader.parse(strFromU8(files["model.obj"]));
  object.traverse((child) => {
    if (!child.isMesh) return;
    for (const material of [child.material].flat()) {
      material.side = THREE.DoubleSide;  // an open surface is seen from both sides
      // trimesh writes vertex colours into the `v` lines
      if (child.geometry.attributes.color) material.vertexColors = true;
    }
  });
  return { object, urls: Object.values(urls) };
}

function disposeMesh() {
  if (!meshView) return;
  const { renderer, observer, urls } = meshView;
  meshView = null;
  observer.disconnect();
  urls.forEach((url) => URL.revokeObjectURL(url));
  renderer.setAnimationLoop(null);
  renderer.dispose();
}

const OBJECT_OF = { stl: stlObject, obj: objObject, cloud: cloudObject };
const NAME_OF = { stl: "STL mesh", obj: "OBJ mesh", cloud: "point cloud" };

// OBJ, STL or a point cloud in a three.js scene: framed, lit, turning, with orbit controls
// (mouse, touch, and the arrow keys once the canvas has the focus).
export async function showMesh(root, kind, blob) {
  const [{ OrbitControls }, { object, urls }] = await Promise.all([
    import("/vendor/OrbitControls.js"), OBJECT_OF[kind](blob)]);
  disposeMesh();
  root.hidden = false;
  root.replaceChildren();
  const scene = new THREE.Scene();
  scene.background = new THREE.Color(0xe5e5ea);
  scene.add(new THREE.HemisphereLight(0xffffff, 0x555566, 2.2));
  const sun = new THREE.DirectionalLight(0xffffff, 2.0);
  sun.position.set(1, 2, 3);
  scene.add(sun);
  const box = new THREE.Box3().setFromObject(object);
  const size = box.getSize(new THREE.Vector3()).length() || 1;
  object.position.sub(box.getCenter(new THREE.Vector3()));
  scene.add(object);
  const camera = new THREE.PerspectiveCamera(40, 1, size / 100, size * 100);
  camera.position.set(0, size * 0.35, size * 1.4);
  // preserveDrawingBuffer: the picture can be read back (a screenshot, the page's test).
  const renderer = new THREE.WebGLRenderer({ antialias: true, preserveDrawingBuffer: true });
  renderer.setPixelRatio(window.devicePixelRatio);
  renderer.domElement.tabIndex = 0;
  renderer.domElement.setAttribute("aria-label", `The ${NAME_OF[kind]}: drag or use the arrow keys to turn it`);
  root.appendChild(renderer.domElement);
  const controls = new OrbitControls(camera, renderer.domElement);
  controls.autoRotate = true;
  controls.enableDamping = true;
  controls.listenToKeyEvents(renderer.domElement);
  const resize = () => {
    const width = root.clientWidth || 1, height = root.clientHeight || 1;
    renderer.setSize(width, height, false);
    camera.aspect = width / height;
    camera.updateProjectionMatrix();
  };
  const observer = new ResizeObserver(resize);
  observer.observe(root);
  resize();
  meshView = { renderer, urls, observer };
  renderer.setAnimationLoop(() => {
    controls.update();
    renderer.render(scene, camera);
  });
}

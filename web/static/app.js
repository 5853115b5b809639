// The page: what the server serves (from /health), a photo or a video and its options in, a
// job followed on its event stream (queue position, wait estimate, stages, cancel), its result
// shown and offered, and this browser's jobs, each reopened by /?job=<id>.
// The API key (when the server has one) lives in sessionStorage: this tab only.

import * as history from "./history.js";
import { MaskEditor } from "./mask-editor.js";
import { maskFiles, snippets } from "./snippets.js";

// The result's viewers (viewers.js, and three.js, model-viewer and the loaders it imports from
// /vendor/, which web/node_modules holds after `npm ci`): imported lazily, in a try, so a
// server without them still reads its state, runs jobs and shows images.
let viewersImport = null;
function viewers() {
  viewersImport ??= import("./viewers.js");
  return viewersImport;
}
const NO_VIEWERS = "The 3D viewers are missing on this server (its web/node_modules): run " +
  "`cd web && npm ci` there and reload. Jobs run and images show without them; a 3D " +
  "result is offered for download.";

const $ = (id) => document.getElementById(id);
const form = $("job-form");
const keyStore = window.sessionStorage;
const PIPELINE_OF_TASK = { generate: "sam3d", depth: "lotus", normal: "lotus" };
const MAP_TASKS = ["depth", "normal"];  // Lotus: one model per request, from /health `models`
const FINISHED = ["completed", "failed", "cancelled"];
const TASK_NAMES = { generate: "3D object", depth: "Depth map", normal: "Surface normals" };
const MAP_NAMES = { depth: "depth", normal: "normal" };
// /health is read at start, on each change of a followed job, and every HEALTH_SECONDS
// while the tab is visible: the queue and the models change slowly, jobs tell the rest.
const HEALTH_SECONDS = 30;
const HEALTH_MIN_GAP_MS = 2000;
const POLL_MS = 1000;  // only where the event stream is missing or broke off

let health = null;
let healthTimer = null;
let healthReadAt = 0;
let resultUrl = null;
let photo = null;        // the File (chosen, dropped or an example) the next job sends: a
                         // photo or a video
let previewUrl = null;   // its blob: URL, shown above the form
let current = null;      // the followed job: { id, task, status, since, processingAt }
let pendingOpen = null;  // a /?job=<id> waiting for the API key
let needsKey = false;    // the server answers 401 without a key
let servedModels = {};   // task -> [[name, {mode, ...}]] of the Lotus models served here
let maskFor = null;      // the photo whose mask the editor shows (or is fetching)
let sceneLimit = null;   // the objects one 3D job takes (the OpenAPI's masks maxItems)
const running = () => Boolean(current && !current.done);
// The videos /depth and /normal take (pipelines/video.py: the container from its first
// bytes); a file whose type the browser does not know is told by its name.
const VIDEO_TYPES = ["video/mp4", "video/quicktime", "video/webm"];
const VIDEO_NAME = /\.(mp4|mov|webm)$/i;
const videoChosen = () => Boolean(photo) &&
  (VIDEO_TYPES.includes(photo.type) || VIDEO_NAME.test(photo.name));

// -- the server -----------------------------------------------------------------------

function headers(json = false) {
  const result = json ? { "Content-Type": "application/json" } : {};
  const key = keyStore.getItem("apiKey");
  if (key) result.Authorization = `Bearer ${key}`;
  return result;
}

class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

async function answerError(response) {
  const body = await response.json().catch(() => ({}));
  return new ApiError(response.status, body.error || `${response.status} ${response.statusText}`);
}

async function api(path, options = {}) {
  for (;;) {
    const json = typeof options.body === "string";  // a FormData sets its own type
    const response = await fetch(path, { ...options, headers: headers(json) });
    if (response.status === 503 && response.headers.get("Retry-After")) {
      const seconds = Number(response.headers.get("Retry-After")) || 10;
      showState(`Server busy: retrying in ${seconds} s`, 0);
      await new Promise((resolve) => setTimeout(resolve, seconds * 1000));
      continue;
    }
    if (response.status === 401) $("key-box").hidden = false;
    if (!response.ok) throw await answerError(response);
    return response;
  }
}

async function readHealth() {
  clearTimeout(healthTimer);
  healthReadAt = Date.now();
  try {
    health = await (await fetch("/health")).json();  // 503 (unhealthy) has a body too
    showHealth(health);
  } catch (error) {
    $("server-facts").textContent = `The server cannot be reached (${error.message}).`;
  }
  if (document.visibilityState === "visible") {
    healthTimer = setTimeout(readHealth, HEALTH_SECONDS * 1000);
  }
}

// A followed job changed: the queue did too. Read /health again, at most every 2 s.
function healthChanged() {
  const wait = Math.max(0, healthReadAt + HEALTH_MIN_GAP_MS - Date.now());
  clearTimeout(healthTimer);
  healthTimer = setTimeout(readHealth, wait);
}

document.addEventListener("visibilitychange", () => {
  if (document.visibilityState === "visible") readHealth();
  else clearTimeout(healthTimer);
});

function gpuText(body) {
  if (!body.gpus?.length) return "No GPU: models run on the CPU";
  const names = body.gpus.map((gpu) => `${gpu.name} (${gpu.vram_gb.toFixed(1)} GB)`);
  return `GPU: ${names.join(", ")}`;
}

// A lane's jobs: the sam3d lane makes 3D objects, the lotus one the maps served here.
function laneName(pipeline) {
  if (pipeline === "sam3d") return "3D objects";
  const maps = MAP_TASKS.filter((name) => servedModels[name]?.length).map((name) => MAP_NAMES[name]);
  return `${(maps.length ? maps : ["depth"]).join(" and ")} maps`;
}

function queueText(body) {
  const lanes = body.queue?.lanes || {};
  const parts = [...new Set(Object.values(PIPELINE_OF_TASK))].filter((name) => lanes[name])
    .map((name) => `${laneName(name)} ${lanes[name].queued} waiting, ` +
                   `${lanes[name].processing} running`);
  return parts.length ? `Queue: ${parts.join("; ")}` : `Queue: ${body.queue?.queued ?? 0} waiting`;
}

function showHealth(body) {
  servedModels = Object.fromEntries(MAP_TASKS.map((name) => [name, Object.entries(body.models || {})
    .filter(([, model]) => model.task === name && model.served)]));
  const state = { ready: "ready", busy: "busy", starting: "starting up (models loading)",
                  setup_failed: "a model failed to load", unhealthy: "unhealthy" }[body.state];
  $("server-facts").textContent = `Server ${state || body.status} · ${gpuText(body)} · ${queueText(body)}`;
  const notices = Object.values(body.notices || {});
  $("notices").textContent = notices.join(" ");
  $("notices").hidden = notices.length === 0;
  offerServedTasks(body);
  offerOutputs(body.capabilities?.sam3d);
  if (running() && current.status) showEta();
}

// -- what is offered --------------------------------------------------------------------

// Only what the server serves: a task whose pipeline is not loaded here, or (depth, normals)
// that has no model of its own among those served, is disabled and says why, and the first
// served one is chosen. A video is for depth and normals only: SAM 3D takes a photo.
function offerServedTasks(body) {
  const pipelines = body.pipelines || {};
  const listed = (name) => Object.values(body.models || {}).some((model) => model.task === name);
  let chosen = null;
  for (const radio of form.elements.task) {
    const state = pipelines[PIPELINE_OF_TASK[radio.value]];
    const noModel = MAP_TASKS.includes(radio.value) && listed(radio.value) &&
      !servedModels[radio.value]?.length;
    const unserved = (state !== "ready" && state !== "loading") || noModel;
    const photoOnly = !MAP_TASKS.includes(radio.value) && videoChosen();
    radio.disabled = unserved || photoOnly;
    const why = radio.parentElement.querySelector(".unserved") ||
      radio.parentElement.appendChild(Object.assign(document.createElement("span"),
                                                    { className: "unserved" }));
    why.textContent = state === "failed" ? " (failed to load on this server)"
      : unserved ? (noModel && state ? ` (no ${MAP_NAMES[radio.value]} model on this server)`
                    : " (not served here)")
      : photoOnly ? " (SAM 3D takes photos, not videos)"
      : state === "loading" ? " (loading: jobs wait until it is ready)" : "";
    // why, and what to do: the server's words (/health pipeline_reasons), as its API says
    const reason = (unserved || state === "loading") && !noModel &&
      body.pipeline_reasons?.[PIPELINE_OF_TASK[radio.value]];
    radio.parentElement.title = reason ? `${TASK_NAMES[radio.value]}: ${reason}` : "";
    if (!radio.disabled && chosen === null) chosen = radio;
  }
  if (chosen && form.querySelector("input[name=task]:checked").disabled) chosen.checked = true;
  showTaskOptions();
  $("run").disabled = chosen === null || running();
}

// The GPU memory each output needs (capabilities: ply, glb, glb_textured), and the options
// that only apply to some formats.
function offerOutputs(capabilities = { ply: true, glb: true, glb_textured: true }) {
  const select = form.elements.output_format;
  const classOf = (format) => (format === "ply" ? "ply" : "glb");
  for (const option of select.options) {
    option.disabled = capabilities[classOf(option.value)] === false;
  }
  if (select.selectedOptions[0]?.disabled) {
    const servable = [...select.options].find((option) => !option.disabled);
    if (servable) select.value = servable.value;
  }
  const format = select.value;
  const texture = form.elements.with_texture;
  const carriesTexture = !["ply", "stl"].includes(format);
  const textureFits = capabilities.glb_textured !== false;
  texture.disabled = !carriesTexture || !textureFits;
  const notes = [];
  if (!textureFits && carriesTexture) notes.push("A baked texture needs more GPU memory than this server has: vertex colours instead.");
  if ([...select.options].some((option) => option.disabled)) notes.push("Greyed-out formats need more GPU memory than this server has.");
  $("format-note").textContent = notes.join(" ");
  $("format-note").hidden = notes.length === 0;
  const textured = carriesTexture && textureFits && texture.checked;
  for (const field of form.querySelectorAll(".textured-only input, .textured-only select")) {
    field.disabled = !textured;
  }
  updateSnippets();
}

function task() {
  return new FormData(form).get("task") || "generate";
}

function showTaskOptions() {
  const chosen = task();
  const video = videoChosen();
  $("generate-options").hidden = chosen !== "generate";
  $("map-options").hidden = !MAP_TASKS.includes(chosen);
  $("map-legend").textContent = chosen === "normal" ? "Normal options" : "Depth options";
  for (const element of form.querySelectorAll(".generate-only")) element.hidden = chosen !== "generate";
  // A video's result is one zip whatever the output (a relief is a photo's): none is offered.
  for (const element of form.querySelectorAll(".depth-only")) {
    element.hidden = chosen !== "depth" || video;
  }
  for (const element of form.querySelectorAll(".normal-only")) {
    element.hidden = chosen !== "normal" || video;
  }
  for (const select of [form.elements.output, form.elements.normal_output]) select.disabled = video;
  $("video-note").hidden = !video;
  $("video-note").textContent = `A video makes one zip: ${chosen}.mp4, the coloured maps to play, ` +
    `and ${chosen}.npz, each frame's raw float32 map.`;
  offerModels(chosen);
  offerLighting(chosen);
  offerMask();
  updateSnippets();
}

// A relief (depth as glb or ply) may be lit by a served normal model's normals: offered
// only for those outputs and only when a normal model is served.
function offerLighting(chosen = task()) {
  const select = form.elements.normal_model;
  const models = servedModels.normal || [];
  const names = ["", ...models.map(([name]) => name)];
  if (names.join() !== [...select.options].map((option) => option.value).join()) {
    const keep = select.value;
    select.replaceChildren(new Option("From the relief's shape", ""),
                           ...models.map(([name]) => new Option(`Lotus normals (${name})`, name)));
    if (names.includes(keep)) select.value = keep;
  }
  const offered = chosen === "depth" && !videoChosen() &&
    ["glb", "ply"].includes(form.elements.output.value) && models.length > 0;
  $("relief-lighting").hidden = !offered;
  select.disabled = !offered;  // FormData leaves it out
}

// What a row of the model table (/health `models`) is: a Lotus mode or Depth Anything's kind.
function modelKind(model) {
  if (model.kind) return `Depth Anything V2, ${model.kind === "metric" ? "metres" : "relative"}`;
  return model.mode === "generation" ? "Lotus-G, generative" : "Lotus-D, regression";
}

// The served models of a depth or normal task (the one chosen is kept); a choice only where
// there are several. The job always names its model: the one served may not be the default.
function offerModels(chosen) {
  const select = form.elements.model;
  const models = servedModels[chosen] || [];
  const names = models.map(([name]) => name);
  if (names.join() !== [...select.options].map((option) => option.value).join()) {
    const keep = select.value;
    select.replaceChildren(...models.map(([name, model]) => new Option(`${name} (${modelKind(model)})`, name)));
    if (names.includes(keep)) select.value = keep;
  }
  $("model-choice").hidden = names.length < 2;
}

// What the job sends besides the image: only the options its endpoint takes, and the
// advanced ones only where they apply.
function jobOptions(chosen = task()) {
  const data = new FormData(form);  // disabled fields are left out
  const number = (name) => (data.get(name) === null || data.get(name) === "" ? null : Number(data.get(name)));
  const seed = number("seed") ?? 42;
  if (MAP_TASKS.includes(chosen)) {
    const model = data.get("model");
    const normalModel = chosen === "depth" && data.get("normal_model");
    const output = data.get(chosen === "depth" ? "output" : "normal_output");  // none for a video
    return { ...(model ? { model } : {}), ...(output ? { output } : {}),
             processing_res: number("processing_res") ?? 768, seed,
             ...(normalModel ? { normal_model: normalModel } : {}) };
  }
  const options = { output_format: data.get("output_format"),
                    with_texture: !form.elements.with_texture.disabled && data.get("with_texture") === "on",
                    seed };
  for (const name of ["stage1_steps", "stage2_steps"]) {
    if (number(name) !== null) options[name] = number(name);
  }
  if (number("texture_size") !== null) options.texture_size = number("texture_size");
  if (number("simplify") !== null) options.simplify = number("simplify");
  return options;
}

// -- the object's mask (3D jobs) ------------------------------------------------------

let emptyRefused = false;  // the error shown is Run refused for an object with no pixel
const editor = new MaskEditor($("mask-slot"), () => {
  if (emptyRefused && !editor.emptyObjects().length) $("error").hidden = true;
  updateSnippets();
});
const MASK_SOURCES = {
  alpha: "the photo's transparency",
  rembg: "background removal",
  center: "a centre box: no background-removal model on this server",
};
const maskShown = () => !$("mask-slot").hidden && editor.active;

// The objects a scene may hold: the masks field's maxItems in /openapi.json (behind the key,
// as /segment is); 1 (no scene) where it cannot be read.
async function readSceneLimit() {
  const response = await fetch("/openapi.json", { headers: headers() });
  if (!response.ok) return 1;
  const masks = (await response.json()).components?.schemas?.GenerateRequest?.properties?.masks;
  sceneLimit = (masks?.anyOf || [masks]).map((schema) => schema?.maxItems)
    .find(Number.isInteger) || 1;
  return sceneLimit;
}

function decodedImage(url) {
  const image = new Image();
  image.src = url;
  return image.decode().then(() => image);
}

// A 3D job on a chosen photo, where the server offers /segment: the mask the job would use,
// fetched once per photo (switching tasks keeps the edits), shown for keeping or editing.
async function offerMask() {
  const offered = task() === "generate" && photo !== null &&
    Boolean(health?.capabilities?.segment?.offered);
  $("mask-slot").hidden = !offered;
  if (!offered || maskFor === photo) return;
  if (needsKey && !keyStore.getItem("apiKey") && !$("api-key").value.trim()) {
    // asked once the key is typed (the key field's change): not sent to be refused
    $("mask-source").textContent = "Enter the API key below to see the object's mask.";
    return;
  }
  const asked = maskFor = photo;
  editor.hide();
  $("mask-source").textContent = "Finding the object in the photo…";
  try {
    const response = await fetch("/segment", {
      method: "POST", headers: headers(true),
      body: JSON.stringify({ image: await readAsDataUrl(asked) }) });
    if (!response.ok) throw await answerError(response);
    const answer = await response.json();
    const [mask, picture, limit] = await Promise.all([
      decodedImage(`data:image/png;base64,${answer.mask}`), createImageBitmap(asked, { imageOrientation: "from-image" }),
      sceneLimit ?? readSceneLimit()]);
    if (maskFor !== asked) return;  // another photo was chosen meanwhile
    editor.show(picture, mask, limit);
    $("mask-source").textContent = `The server's mask, from ${MASK_SOURCES[answer.source] || answer.source}.` +
      " Keep it, or change it with the tools below.";
  } catch (error) {
    if (maskFor !== asked) return;
    if (error.status === 401) {
      maskFor = null;  // asked again once the key is typed
      $("key-box").hidden = false;
      $("mask-source").textContent = "Enter the API key below to see the object's mask.";
    } else if (error.status === 503) {
      maskFor = null;  // asked again on the next read of /health
      $("mask-source").textContent = `No mask yet (${error.message}): the page asks again shortly.`;
    } else if (error.status === 400) {  // the photo itself: a 3D job would be refused too
      $("mask-source").textContent = `No mask for this photo: ${error.message}`;
    } else {
      $("mask-source").textContent = `No mask to show (${error.message}): the job finds the object itself.`;
    }
  }
  updateSnippets();
}

// What the editor shows, as the job sends it: one object's `mask`, a scene's `masks`.
function maskFields(chosen) {
  if (chosen !== "generate" || !maskShown()) return {};
  const masks = editor.pngs();
  return masks.length === 1 ? { mask: masks[0] } : { masks };
}

// The mask files the code panel's snippets name, saved from what the editor shows.
$("mask-download").addEventListener("click", () => {
  const names = maskFiles(editor.objects.length);
  editor.pngs().forEach((url, index) => {
    Object.assign(document.createElement("a"), { href: url, download: names[index] }).click();
  });
});

function updateSnippets() {
  const masks = task() === "generate" && maskShown() ? editor.objects.length : 0;
  $("mask-files").hidden = masks === 0;
  $("mask-files-names").textContent = maskFiles(masks).join(", ");
  const code = snippets(task(), jobOptions(), needsKey, masks, videoChosen());
  $("code-file").textContent = videoChosen() ? "video.mp4" : "photo.jpg";
  $("code-file-kind").textContent = videoChosen() ? "video" : "photo";
  $("code-curl").textContent = code.curl;
  $("code-python").textContent = code.python;
  $("code-cli").textContent = code.cli;
}

form.addEventListener("change", (event) => {
  if (event.target.name === "task") showTaskOptions();
  if (event.target.name === "output") offerLighting();
  updateSnippets();
});
for (const field of [form.elements.output_format, form.elements.with_texture]) {
  field.addEventListener("change", () => offerOutputs(health?.capabilities?.sam3d));
}
form.addEventListener("input", updateSnippets);

$("dice").addEventListener("click", () => {
  $("seed").value = crypto.getRandomValues(new Uint32Array(1))[0];
  updateSnippets();
});

// -- the photo --------------------------------------------------------------------------

// A photo (image/*) or a video: anything else is refused here, said in words, with no
// broken picture; an error shown before (a refused file, "Choose a photo first") goes.
function choosePhoto(file, example = null) {
  if (!running()) $("error").hidden = true;
  const known = file.type.startsWith("image/") || VIDEO_TYPES.includes(file.type) ||
    VIDEO_NAME.test(file.name);
  if (file.type && !known) return refuseFile(file, "is not a photo or a video");
  photo = file;
  if ($("photo").files[0] !== file) {  // an example or a drop: the file field names it too
    const transfer = new DataTransfer();
    transfer.items.add(file);
    $("photo").files = transfer.files;
  }
  if (previewUrl) URL.revokeObjectURL(previewUrl);
  previewUrl = URL.createObjectURL(file);
  const video = videoChosen();
  $("preview").hidden = video;
  $("preview-video").hidden = !video;
  if (video) {
    $("preview").removeAttribute("src");
    $("preview-video").src = previewUrl;
  } else {
    $("preview-video").removeAttribute("src");
    $("preview-video").load();  // stops the video shown before
    $("preview").src = previewUrl;
  }
  $("drop-text").textContent = file.name;
  for (const button of document.querySelectorAll(".example")) {
    button.setAttribute("aria-pressed", String(button === example));
  }
  offerServedTasks(health || {});  // a video: depth and normals only, and their options
}

function refuseFile(file, why) {
  photo = null;
  $("preview").hidden = true;
  $("preview").removeAttribute("src");
  $("preview-video").hidden = true;
  $("drop-text").textContent = `${file.name} ${why}: choose a photo (JPEG, PNG, WebP…) or a ` +
    "short video (mp4, mov, webm)";
  showError(`${file.name} ${why}. Choose a photo (JPEG, PNG, WebP…) or a short video (mp4, mov, webm).`);
  offerServedTasks(health || {});
}

// A file that claimed to be a photo but does not decode: said, not shown as a broken picture.
$("preview").addEventListener("error", () => {
  if (!photo || !$("preview").getAttribute("src")) return;
  refuseFile(photo, "could not be read as a photo");
});

// A video this browser cannot play (a mov's codec, a damaged file) shows no empty box: the
// server says whether it takes it.
$("preview-video").addEventListener("error", () => { $("preview-video").hidden = true; });

$("photo").addEventListener("change", () => $("photo").files[0] && choosePhoto($("photo").files[0]));
$("drop").addEventListener("dragover", (event) => { event.preventDefault(); $("drop").classList.add("over"); });
$("drop").addEventListener("dragleave", () => $("drop").classList.remove("over"));
$("drop").addEventListener("drop", (event) => {
  event.preventDefault();
  $("drop").classList.remove("over");
  if (event.dataTransfer.files.length) choosePhoto(event.dataTransfer.files[0]);
});
for (const button of document.querySelectorAll(".example")) {
  button.setAttribute("aria-pressed", "false");
  button.addEventListener("click", async () => {
    const blob = await (await fetch(button.dataset.src)).blob();
    choosePhoto(new File([blob], button.dataset.src.split("/").pop(), { type: blob.type }), button);
  });
}

function readAsDataUrl(file) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(reader.result);
    reader.onerror = () => reject(reader.error);
    reader.readAsDataURL(file);
  });
}

// -- a job's life ---------------------------------------------------------------------

function showState(text, fraction) {
  $("result-empty").hidden = true;
  $("progress-box").hidden = false;
  $("state").textContent = text;
  $("progress").value = fraction;
}

function showError(message) {
  $("error").textContent = message;
  $("error").hidden = false;
  document.body.dataset.state = "error";
}

function duration(seconds) {
  if (seconds < 60) return `${Math.max(1, Math.round(seconds))} s`;
  const minutes = Math.round(seconds / 60);
  return minutes < 60 ? `${minutes} min` : `${Math.floor(minutes / 60)} h ${minutes % 60} min`;
}

function describe(status) {
  if (status.status === "queued") {
    return status.position === 0 ? "Queued: next" : `Queued: position ${status.position} (${status.position} ahead)`;
  }
  if (status.status === "processing") return status.message?.startsWith("Cancelling") ? status.message : `Processing: ${status.stage}`;
  return { completed: "Completed", failed: "Failed", cancelled: "Cancelled" }[status.status];
}

// The wait, from the lane's mean time of its recent jobs (/health): the jobs ahead share
// the lane's workers; a running job has run for processing_time already.
function showEta() {
  const { status, task: jobTask, processingAt } = current;
  const lane = health?.queue?.lanes?.[PIPELINE_OF_TASK[jobTask]];
  const mean = lane?.mean_seconds;
  const frames = /^frame (\d+) of (\d+)$/.exec(status.stage || "");
  let text = "";
  if (!FINISHED.includes(status.status) && !mean && !frames && !current.video) {
    text = "No job has finished on this server yet to estimate the time from.";
  } else if (status.status === "queued" && current.video) {
    const parallel = Math.max(1, (lane?.ready_workers || 1) * (health?.queue?.max_concurrent || 1));
    const ahead = Math.floor(status.position / parallel);
    text = ahead && mean ? `About ${duration(mean * ahead)} until its turn; an estimate of its ` +
      "own follows its first frames." : "An estimate follows its first frames.";
  } else if (status.status === "queued") {
    const parallel = Math.max(1, (lane.ready_workers || 1) * (health.queue.max_concurrent || 1));
    const seconds = mean * (Math.floor(status.position / parallel) + 1);
    text = `About ${duration(seconds)} until done (recent jobs took ${duration(mean)} each).`;
  } else if (status.status === "processing" && current.video && !frames) {
    text = status.stage === "decoding" ? "Reading the video's frames: an estimate follows its first ones."
      : "Writing the maps.";
  } else if (status.status === "processing" && frames) {
    // A video: its own seconds per frame so far times the frames left (a photo's time, the
    // lane's mean, until its first frame is done). One job's mean was ten times off.
    const [done, total] = [Number(frames[1]), Number(frames[2])];
    const ran = (status.processing_time || 0) + (Date.now() - processingAt) / 1000;
    const perFrame = done > 0 ? ran / done : mean;
    text = perFrame ? `About ${duration(perFrame * (total - done))} left: ${total - done} of ` +
      `${total} frames to go at about ${duration(perFrame)} a frame.`
      : "No frame is done yet to estimate the time from.";
  } else if (status.status === "processing") {
    const ran = (status.processing_time || 0) + (Date.now() - processingAt) / 1000;
    text = ran < mean ? `About ${duration(mean - ran)} left (recent jobs took ${duration(mean)}).`
      : `Taking longer than recent jobs (${duration(mean)}).`;
  }
  $("eta").textContent = text;
  $("eta").hidden = !text;
}

let etaTicker = null;

function follows(status) {
  const changed = !current.status || current.status.status !== status.status ||
    current.status.position !== status.position;
  current.status = status;
  current.processingAt = Date.now();
  showState(describe(status), status.progress || 0);
  showEta();
  $("cancel").hidden = FINISHED.includes(status.status);
  if (changed) healthChanged();
}

// The job's event stream (fetch, so the key can go in a header), polling only where the
// stream is missing or broke off. The finished status.
async function follow(jobId) {
  clearInterval(etaTicker);
  etaTicker = setInterval(() => running() && current.status && showEta(), 1000);
  try {
    try {
      const response = await api(`/job/${jobId}/events`);
      const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += value;
        const lines = buffer.split("\n");
        buffer = lines.pop();
        for (const line of lines) {
          if (!line.startsWith("data:")) continue;
          const status = JSON.parse(line.slice(5));
          follows(status);
          if (FINISHED.includes(status.status)) return (await api(`/job/${jobId}`)).json();
        }
      }
    } catch (error) {
      if (error.status === 404 || error.status === 410 || error.status === 401) throw error;
      console.info("event stream:", error.message);
    }
    for (;;) {
      const status = await (await api(`/job/${jobId}`)).json();
      follows(status);
      if (FINISHED.includes(status.status)) return status;
      await new Promise((resolve) => setTimeout(resolve, POLL_MS));
    }
  } finally {
    clearInterval(etaTicker);
  }
}

function showJobLink(id) {
  $("job-anchor").href = `/?job=${encodeURIComponent(id)}`;
  $("job-anchor").textContent = id;
  $("job-link").hidden = false;
  window.history.replaceState(null, "", `/?job=${encodeURIComponent(id)}`);
}

function renderHistory() {
  history.render($("history-list"), $("history-empty"), $("history-clear"), current?.id);
}

// Never throws: a viewer that fails to let go is reported, and the next job runs anyway.
async function clearResult() {
  $("error").hidden = true;
  $("result").hidden = true;
  $("eta").hidden = true;
  $("viewer-problem").hidden = true;
  if (!viewersImport) return;
  let module;
  try {
    module = await viewers();
  } catch {
    return;  // none is missing: the page said so at start, and none was shown
  }
  try {
    await module.hideViewers();
  } catch (error) {
    console.warn("closing the last preview:", error);
    $("viewer-problem").textContent = `The last preview did not close cleanly (${error.message}); ` +
      "this job runs all the same.";
    $("viewer-problem").hidden = false;
  }
}

// Follow a job to its end and show what it ended with.
async function runToEnd(id, jobTask, video = false) {
  current = { id, task: jobTask, video, status: null, processingAt: Date.now(), done: false };
  $("run").disabled = true;
  $("cancel").disabled = false;
  $("cancel").textContent = "Cancel job";
  document.body.dataset.state = "running";
  showJobLink(id);
  renderHistory();
  try {
    const status = await follow(id);
    history.update(id, { status: status.status });
    renderHistory();
    if (status.status === "cancelled") {
      showState("Cancelled", 0);
      $("eta").hidden = true;
      document.body.dataset.state = "cancelled";
      return;
    }
    if (status.status !== "completed") throw new Error(status.error || `Job ${status.status}`);
    showState("Completed", 1);
    $("eta").hidden = true;
    await showResult(status, await api(`/job/${id}/download`), jobTask);
  } catch (error) {
    if (error.status === 404 || error.status === 410) {
      history.update(id, { status: error.status === 410 ? "expired" : "not found" });
      renderHistory();
      $("progress-box").hidden = true;
    }
    showError(error.status === 410 ? `Job ${id}: its result has expired on the server.`
      : error.status === 404 ? `Job ${id} is not known to this server.` : error.message);
  } finally {
    current.done = true;
    $("cancel").hidden = true;
    offerServedTasks(health || {});
  }
}

form.addEventListener("submit", async (event) => {
  event.preventDefault();
  useTypedKey();
  if (!photo) return showError("Choose a photo or a video first, or an example.");
  const chosen = task();
  const empty = chosen === "generate" && maskShown() ? editor.emptyObjects() : [];
  emptyRefused = empty.length > 0;
  if (emptyRefused) {
    return showError(`${empty.join(" and ")}: no pixel is marked. Paint or draw a box, or remove it.`);
  }
  const masks = maskFields(chosen);  // as shown when Run was pressed
  document.body.dataset.state = "submitting";
  $("run").disabled = true;
  try {
    await clearResult();
    const options = jobOptions(chosen);
    const video = videoChosen();
    const body = video ? videoUpload(photo, options)
      : JSON.stringify({ image: await readAsDataUrl(photo), ...options, ...masks });
    const job = await (await api(`/${chosen}`, { method: "POST", body })).json();
    history.remember({ id: job.job_id, task: chosen, photo: photo.name, status: "queued",
                       at: new Date().toISOString(),
                       label: `${TASK_NAMES[chosen]} ` +
                         `(${video ? "video" : options.output_format || options.output})` });
    await runToEnd(job.job_id, chosen, video);
  } catch (error) {
    showError(error.message);
    $("run").disabled = false;
  }
});

// A video goes as a form upload (app.py _form), the file as `video` and each option a field,
// to the async endpoint: /depth/sync and /normal/sync refuse one.
function videoUpload(file, options) {
  const body = new FormData();
  body.append("video", file);
  for (const [name, value] of Object.entries(options)) body.append(name, value);
  return body;
}

$("cancel").addEventListener("click", async () => {
  if (!current) return;
  $("cancel").disabled = true;
  $("cancel").textContent = "Cancelling…";
  try {
    await api(`/job/${current.id}`, { method: "DELETE" });  // the stream says when it is
  } catch (error) {
    showError(error.message);  // 409: it finished first
  }
});

// -- the result -----------------------------------------------------------------------

const VIEW_OF_SUFFIX = { glb: "glb", ply: "ply", zip: "obj", stl: "stl", usdz: "usdz", png: "depth", npy: "npy" };

// What a depth map's values are, from its status (a photo's or a video's).
function rangeText(status) {
  return `min ${status.min.toFixed(4)} · max ${status.max.toFixed(4)}` +
    (status.disparity === false ? " (depth: larger is farther)" : " (disparity: larger is nearer)");
}

// A normal map's convention, from its status: one line each for its frame and its values.
function conventionLines(status) {
  return [["Frame", status.frame], ["Values", status.range]].map(([label, text]) => {
    const line = document.createElement("span");
    line.append(Object.assign(document.createElement("strong"), { textContent: `${label}: ` }), text);
    return line;
  });
}

// A video job's facts: its status says how many maps, how large and at what rate.
function videoFacts(status) {
  const fps = Number(status.fps.toFixed(3));
  return `${status.frames} frames of ${status.width} × ${status.height} at ${fps} fps`;
}

async function showResult(status, response, jobTask) {
  const blob = await response.blob();
  if (resultUrl) URL.revokeObjectURL(resultUrl);
  resultUrl = URL.createObjectURL(blob);
  const match = /filename=("?)([^";]+)\1/.exec(response.headers.get("Content-Disposition") || "");
  const name = match ? match[2] : "result";
  $("download").href = resultUrl;
  $("download").download = name;
  $("download").textContent = `Download ${name}`;
  for (const id of ["model", "splat", "mesh-view", "depth", "normal", "video", "usdz-help",
                    "no-preview"]) $(id).hidden = true;
  $("result").hidden = false;
  const facts = ["vertices", "faces", "gaussians"].filter((key) => key in status)
    .map((key) => `${status[key].toLocaleString()} ${key}`);
  if ("frames" in status) facts.push(videoFacts(status));
  if (status.model) facts.push(`model ${status.model}`);
  if (status.normal_model) facts.push(`lit by ${status.normal_model}'s normals`);
  $("facts").textContent = [...facts, `${status.processing_time} s on ${status.worker || "the server"}`].join(" · ");
  const suffix = name.split(".").pop();
  // a video job's status counts its frames; a normal map's says its convention (frame,
  // range); a depth job's PLY is a plain coloured point cloud, which the splat viewer cannot
  // read: three.js draws its points
  const view = "frames" in status ? "video" : "frame" in status ? "normal"
    : suffix === "ply" && status.geometry ? "cloud" : VIEW_OF_SUFFIX[suffix] || "none";
  try {
    const { showGlb, showMesh, showSplat, showVideo } =
      ["depth", "normal", "npy", "usdz", "none"].includes(view) ? {} : await viewers().catch(() => {
        throw new Error(NO_VIEWERS);
      });
    if (view === "video") {
      $("video-caption").replaceChildren(
        ...("frame" in status ? conventionLines(status) : [rangeText(status)]));
      $("video").hidden = false;
      $("video-player").setAttribute("aria-label", `The ${MAP_NAMES[jobTask]} map of each frame`);
      await showVideo($("video-player"), blob, `${jobTask}.mp4`);
    } else if (view === "normal") {
      $("normal-convention").replaceChildren(...conventionLines(status));
      $("normal").hidden = false;
      $("normal-image").hidden = suffix !== "png";
      if (suffix === "png") {
        $("normal-image").src = resultUrl;
        await $("normal-image").decode();
      }
    } else if (view === "depth" || view === "npy") {
      $("depth-range").textContent = rangeText(status);
      $("depth").hidden = false;
      if (view === "depth") {
        $("depth-image").hidden = false;
        $("depth-image").src = resultUrl;
        await $("depth-image").decode();
      } else {
        $("depth-image").hidden = true;
      }
    } else if (view === "glb") {
      await showGlb($("model"), resultUrl);
    } else if (view === "ply") {
      await showSplat($("splat"), resultUrl);
    } else if (view === "obj" || view === "stl" || view === "cloud") {
      await showMesh($("mesh-view"), view, blob);
    } else if (view === "usdz") {
      $("usdz-help").hidden = false;
    }
  } catch (error) {
    $("no-preview").textContent = error.message === NO_VIEWERS ? NO_VIEWERS
      : `The preview failed (${error.message}): the file is fine to download.`;
    $("no-preview").hidden = false;
  }
  document.body.dataset.view = view;
  document.body.dataset.state = "done";
}

// -- the API key and start ------------------------------------------------------------

function useTypedKey() {
  const key = $("api-key").value.trim();
  if (key) keyStore.setItem("apiKey", key);
  updateSnippets();
}

$("api-key").addEventListener("change", () => {
  useTypedKey();
  if (pendingOpen) openJob(pendingOpen);
  offerMask();
});

$("history-clear").addEventListener("click", () => {
  history.forget();
  renderHistory();
});

// /?job=<id>: the job's status and, while it lasts, its result.
async function openJob(id) {
  pendingOpen = null;
  await clearResult();
  let status;
  try {
    status = await (await api(`/job/${encodeURIComponent(id)}`)).json();
  } catch (error) {
    if (error.status === 401) {
      pendingOpen = id;
      showState(`Enter the API key above to open job ${id}.`, 0);
      return;
    }
    history.update(id, { status: error.status === 410 ? "expired" : "not found" });
    renderHistory();
    return showError(error.status === 410 ? `Job ${id}: its result has expired on the server.`
      : error.status === 404 ? `Job ${id} is not known to this server.` : error.message);
  }
  const known = history.find(id);
  const jobTask = known?.task || ("frame" in status ? "normal"
    : "min" in status || status.worker?.startsWith("lotus") ? "depth" : "generate");
  if (!known) {  // a link from elsewhere: this browser's list keeps it from now on
    history.remember({ id, task: jobTask, photo: "", status: status.status,
                       at: new Date().toISOString(), label: TASK_NAMES[jobTask] });
  }
  await runToEnd(id, jobTask);
}

async function start() {
  if (keyStore.getItem("apiKey")) $("api-key").value = keyStore.getItem("apiKey");
  viewers().catch((error) => {
    console.warn("viewers.js:", error.message);
    $("viewers-missing").textContent = NO_VIEWERS;
    $("viewers-missing").hidden = false;
  });
  await readHealth();
  offerOutputs(health?.capabilities?.sam3d);
  // A key in this tab was typed because the server asked for one; without one, ask.
  const probe = await fetch("/queue", { headers: headers() });
  needsKey = Boolean(keyStore.getItem("apiKey")) || probe.status === 401;
  if (probe.status === 401) $("key-box").hidden = false;
  updateSnippets();
  renderHistory();
  const id = new URLSearchParams(window.location.search).get("job");
  document.body.dataset.state = "ready";
  if (id) await openJob(id);
}

start();

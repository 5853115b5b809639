// The page's whole behaviour: submit a photo, follow the job, show and offer the result.
// The API key (when the server has one) lives in sessionStorage: this tab only.

const $ = (id) => document.getElementById(id);
const form = $("job-form");
const keyStore = window.sessionStorage;
let resultUrl = null;
let splatViewer = null;

function headers(json = false) {
  const result = json ? { "Content-Type": "application/json" } : {};
  const key = keyStore.getItem("apiKey");
  if (key) result.Authorization = `Bearer ${key}`;
  return result;
}

async function api(path, options = {}) {
  for (;;) {
    const response = await fetch(path, { ...options, headers: headers(Boolean(options.body)) });
    if (response.status === 503 && response.headers.get("Retry-After")) {
      const seconds = Number(response.headers.get("Retry-After")) || 10;
      showState(`Server busy: retrying in ${seconds} s`, 0);
      await new Promise((resolve) => setTimeout(resolve, seconds * 1000));
      continue;
    }
    if (response.status === 401) $("key-box").hidden = false;
    if (!response.ok) {
      const body = await response.json().catch(() => ({}));
      throw new Error(body.error || `${response.status} ${response.statusText}`);
    }
    return response;
  }
}

function showState(text, fraction) {
  $("progress-box").hidden = false;
  $("state").textContent = text;
  $("progress").value = fraction;
}

function showError(message) {
  $("error").textContent = message;
  $("error").hidden = false;
  document.body.dataset.state = "error";
}

function describe(status) {
  if (status.status === "queued") return `Queued: position ${status.position}`;
  if (status.status === "processing") return `Processing: ${status.stage}`;
  return status.status;
}

async function follow(jobId) {
  // The server's event stream where it has one (fetch, so the key can go in a header).
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
        showState(describe(status), status.progress || 0);
        if (["completed", "failed", "cancelled"].includes(status.status)) {
          return (await api(`/job/${jobId}`)).json();
        }
      }
    }
  } catch (error) {
    if (!String(error.message).startsWith("404")) console.info("event stream:", error.message);
  }
  for (;;) {
    const status = await (await api(`/job/${jobId}`)).json();
    showState(describe(status), status.progress || 0);
    if (["completed", "failed", "cancelled"].includes(status.status)) return status;
    await new Promise((resolve) => setTimeout(resolve, 500));
  }
}

function readAsDataUrl(file) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(reader.result);
    reader.onerror = () => reject(reader.error);
    reader.readAsDataURL(file);
  });
}

function requestBody(task, image) {
  const data = new FormData(form);
  if (task === "generate") {
    return { image, output_format: data.get("output_format"),
             with_texture: data.get("with_texture") === "on", seed: Number(data.get("seed")) };
  }
  return { image, output: data.get("output"), processing_res: Number(data.get("processing_res")) };
}

async function showResult(task, body, status, response) {
  const blob = await response.blob();
  if (resultUrl) URL.revokeObjectURL(resultUrl);
  resultUrl = URL.createObjectURL(blob);
  const name = /filename=("?)([^";]+)\1/.exec(response.headers.get("Content-Disposition") || "");
  $("download").href = resultUrl;
  $("download").download = name ? name[2] : "result";
  $("download").textContent = `Download ${$("download").download}`;
  for (const id of ["model", "splat", "depth", "no-preview"]) $(id).hidden = true;
  $("result").hidden = false;
  const facts = ["vertices", "faces", "gaussians"].filter((key) => key in status)
    .map((key) => `${status[key].toLocaleString()} ${key}`);
  $("facts").textContent = [...facts, `${status.processing_time} s`].join(" · ");
  let view = "none";
  if (task === "depth") {
    $("depth-range").textContent = `min ${status.min.toFixed(4)} · max ${status.max.toFixed(4)}` +
      " (disparity: larger is nearer)";
    if (body.output !== "npy") {
      $("depth-image").src = resultUrl;
      await $("depth-image").decode();
      view = "depth";
    }
    $("depth").hidden = false;
  } else if (body.output_format === "glb") {
    const viewer = $("model");
    viewer.hidden = false;
    const loaded = new Promise((resolve, reject) => {
      viewer.addEventListener("load", resolve, { once: true });
      viewer.addEventListener("error", () => reject(new Error("the GLB could not be shown")),
                              { once: true });
    });
    viewer.src = resultUrl;
    await loaded;
    view = "glb";
  } else if (body.output_format === "ply") {
    await showSplat(resultUrl);
    view = "ply";
  }
  $("no-preview").hidden = view !== "none" || task === "depth";
  document.body.dataset.view = view;
  document.body.dataset.state = "done";
}

async function showSplat(url) {
  const GaussianSplats3D = await import("/vendor/gaussian-splats-3d.module.js");
  const root = $("splat");
  root.hidden = false;
  if (splatViewer) await splatViewer.dispose();
  root.replaceChildren();
  // No SharedArrayBuffer (it needs cross-origin isolation) and CPU sorting: runs anywhere.
  splatViewer = new GaussianSplats3D.Viewer({
    rootElement: root, sharedMemoryForWorkers: false, gpuAcceleratedSort: false,
    cameraUp: [0, 1, 0], initialCameraPosition: [0, 0.5, 2.5], initialCameraLookAt: [0, 0, 0],
  });
  await splatViewer.addSplatScene(url, { format: GaussianSplats3D.SceneFormat.Ply,
                                         showLoadingUI: false, progressiveLoad: false });
  splatViewer.start();
}

form.addEventListener("submit", async (event) => {
  event.preventDefault();
  const key = $("api-key").value.trim();
  if (key) keyStore.setItem("apiKey", key);
  const file = $("photo").files[0];
  if (!file) return showError("Choose a photo first.");
  const task = new FormData(form).get("task");
  $("error").hidden = true;
  $("result").hidden = true;
  $("run").disabled = true;
  document.body.dataset.state = "running";
  try {
    const body = requestBody(task, await readAsDataUrl(file));
    const job = await (await api(`/${task}`, { method: "POST", body: JSON.stringify(body) })).json();
    showState(`Queued: position ${job.position}`, 0);
    const status = await follow(job.job_id);
    if (status.status !== "completed") throw new Error(status.error || `Job ${status.status}`);
    showState("Completed", 1);
    await showResult(task, body, status, await api(`/job/${job.job_id}/download`));
  } catch (error) {
    showError(error.message);
  } finally {
    $("run").disabled = false;
  }
});

for (const radio of form.elements.task) {
  radio.addEventListener("change", () => {
    const task = new FormData(form).get("task");
    $("generate-options").hidden = task !== "generate";
    $("depth-options").hidden = task !== "depth";
  });
}

function preview(file) {
  $("preview").src = URL.createObjectURL(file);
  $("preview").hidden = false;
  $("drop-text").textContent = file.name;
}

$("photo").addEventListener("change", () => $("photo").files[0] && preview($("photo").files[0]));
$("drop").addEventListener("dragover", (event) => { event.preventDefault(); $("drop").classList.add("over"); });
$("drop").addEventListener("dragleave", () => $("drop").classList.remove("over"));
$("drop").addEventListener("drop", (event) => {
  event.preventDefault();
  $("drop").classList.remove("over");
  if (event.dataTransfer.files.length) {
    $("photo").files = event.dataTransfer.files;
    preview(event.dataTransfer.files[0]);
  }
});

const PIPELINE_OF_TASK = { generate: "sam3d", depth: "lotus" };

// Offer only what the server serves: a task whose model is not loaded here is disabled and
// says why, and the first served one is chosen.
function offerServedTasks(pipelines) {
  let chosen = null;
  for (const radio of form.elements.task) {
    const state = pipelines[PIPELINE_OF_TASK[radio.value]];
    radio.disabled = state !== "ready" && state !== "loading";
    const why = radio.parentElement.querySelector(".unserved") ||
      radio.parentElement.appendChild(Object.assign(document.createElement("span"),
                                                    { className: "unserved" }));
    why.textContent = radio.disabled ? (state === "failed" ? " (failed to load on this server)"
                                        : " (not served here)") : "";
    if (!radio.disabled && chosen === null) chosen = radio;
  }
  if (chosen && form.querySelector("input[name=task]:checked").disabled) chosen.checked = true;
  form.querySelector("input[name=task]:checked").dispatchEvent(new Event("change"));
  $("run").disabled = chosen === null;
}

// A baked texture only exists for formats that carry one.
function offerTexture() {
  const format = form.elements.output_format.value;
  form.elements.with_texture.disabled = format === "ply" || format === "stl";
}
form.elements.output_format.addEventListener("change", offerTexture);

async function start() {
  const health = await (await fetch("/health")).json();
  offerServedTasks(health.pipelines || {});
  offerTexture();
  const notices = Object.values(health.notices || {});
  if (notices.length) {
    $("notices").textContent = notices.join(" ");
    $("notices").hidden = false;
  }
  if (keyStore.getItem("apiKey")) $("api-key").value = keyStore.getItem("apiKey");
  const probe = await fetch("/queue", { headers: headers() });
  if (probe.status === 401) $("key-box").hidden = false;
  document.body.dataset.state = "ready";
}

start();

// "Use from code": the job the form would send, as curl, Python (sam3d_client.Client, its
// generate/depth/normal and the Job handle: client/README.md) and
// sam3d-client lines. The photo is photo.jpg (a video video.mp4), the masks the editor shows
// (a 3D job) mask.png or mask1.png, mask2.png, ... (the panel saves them); the key, when the
// server needs one, comes from SAM3D_API_KEY (never the key typed here).

const PYTHON_LITERALS = { true: "True", false: "False", null: "None" };

function pythonLiteral(value) {
  return JSON.stringify(value).replace(/\b(true|false|null)\b/g, (word) => PYTHON_LITERALS[word]);
}

// The file each task's job makes; a depth or normal map answers /<task>/sync as JSON.
const MAP_STEMS = { depth: "depth", normal: "normals" };
const SYNC_FIELDS = { depth: "min, max", normal: "frame, range (the convention)" };

// One object's mask is `mask`, a scene's are `masks` (pipelines/sam3d.py GenerateRequest).
export function maskFiles(count) {
  return count === 1 ? ["mask.png"] : Array.from({ length: count }, (_, index) => `mask${index + 1}.png`);
}

// A map's file is named as sam3d-client names it: relief.glb, relief.ply for depth in 3D.
const RELIEFS = ["glb", "ply"];

// A video job's is the zip the server names <task>_video.zip (pipelines/lotus/pipeline.py run_video).
export function outputFile(task, options, video = false) {
  if (video) return `${task}_video.zip`;
  if (task in MAP_STEMS && RELIEFS.includes(options.output)) return `relief.${options.output}`;
  if (task in MAP_STEMS) return `${MAP_STEMS[task]}.${options.output === "npy" ? "npy" : "png"}`;
  return `model.${options.output_format === "obj" ? "zip" : options.output_format}`;
}

const formFields = (options) => Object.entries(options).map(([key, value]) => `-F ${key}=${value}`);
const authHeader = (keyed) => (keyed ? ' -H "Authorization: Bearer $SAM3D_API_KEY"' : "");

function curl(task, options, base, keyed, masks) {
  // A form upload (app.py's _form): the photo and masks as files, each option as a field.
  const field = masks.length === 1 ? "mask" : "masks";
  const fields = [...masks.map((name) => `-F ${field}=@${name}`), ...formFields(options)];
  const auth = authHeader(keyed);
  const out = task in MAP_STEMS ? `${MAP_STEMS[task]}.json` : outputFile(task, options);
  return [
    `curl -s ${base}/${task}/sync${auth} -F image=@photo.jpg \\`,
    `  ${fields.length ? `${fields.join(" ")} ` : ""}-o ${out}`,
    ...(task in MAP_STEMS ? [`# ${out}: image_base64 (the file), ${SYNC_FIELDS[task]}; or POST /${task} and GET /job/<id>/download`] : []),
  ].join("\n");
}

// A video only as a job (the /sync forms refuse one): its id from the answer, its statuses
// ("frame N of M") from the event stream, which ends when the job does, then its zip.
function curlVideo(task, options, base, keyed) {
  const auth = authHeader(keyed);
  return [
    `job=$(curl -s ${base}/${task}${auth} -F video=@video.mp4 ${formFields(options).join(" ")} \\`,
    `  | sed -E 's/.*"job_id": *"([^"]+)".*/\\1/')`,
    `curl -sN ${base}/job/$job/events${auth}  # each status ("frame N of M") until it ends; or poll GET /job/$job`,
    `curl -s ${base}/job/$job/download${auth} -o ${outputFile(task, options, true)}`,
  ].join("\n");
}

function python(task, options, base, keyed, masks, video) {
  const keywords = [...(masks.length === 1 ? [`mask="${masks[0]}"`]
    : masks.length ? [`masks=[${masks.map((name) => `"${name}"`).join(", ")}]`] : []),
  ...Object.entries(options).map(([key, value]) => `${key}=${pythonLiteral(value)}`)];
  return [
    ...(keyed ? ["import os", ""] : []),
    "from sam3d_client import Client",
    "",
    `client = Client(${JSON.stringify(base)}${keyed ? ', api_key=os.environ["SAM3D_API_KEY"]' : ""})`,
    `job = client.${task}(${video ? 'video="video.mp4"' : '"photo.jpg"'}, ${keywords.join(", ")})`,
    "print(job.id)  # Client(...).job(id) comes back to it later",
    "final = job.wait(on_update=print)  # each status until it finishes",
    `job.download(${JSON.stringify(outputFile(task, options, video))})`,
  ].join("\n");
}

// sam3d-client's flags (client/sam3d_client/cli.py); what it has no flag for is said. A
// positional .mp4, .mov or .webm goes as a video.
function cli(task, options, base, keyed, masks, video) {
  const flags = masks.map((name) => `--mask ${name}`);
  const missing = [];
  if (task === "generate") {
    if (!options.with_texture) flags.push("--no-texture");
    flags.push(`--seed ${options.seed}`);
    missing.push(...["stage1_steps", "stage2_steps", "texture_size", "simplify"]
      .filter((name) => name in options));
  } else {
    if (options.model) flags.push(`--model ${options.model}`);
    if (options.output) flags.push(`--output ${options.output}`);
    flags.push(`--processing-res ${options.processing_res}`);
    if (options.seed !== 42) flags.push(`--seed ${options.seed}`);
    if (options.normal_model) flags.push(`--normal-model ${options.normal_model}`);
  }
  return [
    `export SAM3D_URL=${base}${keyed ? " SAM3D_API_KEY=..." : ""}`,
    `sam3d-client ${task} ${video ? "video.mp4" : "photo.jpg"} -o ${outputFile(task, options, video)} ` +
      flags.join(" "),
    ...(missing.length ? [`# no flag for ${missing.join(", ")}: use curl or Python for those`] : []),
  ].join("\n");
}

export function snippets(task, options, keyed, maskCount = 0, video = false) {
  const base = window.location.origin;
  const masks = maskFiles(maskCount);
  return { curl: video ? curlVideo(task, options, base, keyed)
             : curl(task, options, base, keyed, masks),
           python: python(task, options, base, keyed, masks, video),
           cli: cli(task, options, base, keyed, masks, video) };
}

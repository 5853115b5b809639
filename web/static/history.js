// This browser's jobs (localStorage): each links to /?job=<id>, which reopens it while the
// server keeps its result. Only ids and what the user chose are kept, never a photo or key.

const KEY = "sam3dJobs";
const KEEP = 25;

export function jobs() {
  try {
    const list = JSON.parse(window.localStorage.getItem(KEY) || "[]");
    return Array.isArray(list) ? list : [];
  } catch {
    return [];
  }
}

function save(list) {
  window.localStorage.setItem(KEY, JSON.stringify(list.slice(0, KEEP)));
}

export function remember(job) {
  save([job, ...jobs().filter((entry) => entry.id !== job.id)]);
}

export function update(id, fields) {
  const list = jobs();
  const entry = list.find((item) => item.id === id);
  if (!entry) return;
  Object.assign(entry, fields);
  save(list);
}

export function find(id) {
  return jobs().find((entry) => entry.id === id) || null;
}

export function forget() {
  window.localStorage.removeItem(KEY);
}

export function render(list, emptyNote, clearButton, currentId) {
  const items = jobs().map((job) => {
    const item = document.createElement("li");
    const link = Object.assign(document.createElement("a"),
                               { href: `/?job=${encodeURIComponent(job.id)}`,
                                 textContent: `${job.label}${job.photo ? ` · ${job.photo}` : ""}` });
    if (job.id === currentId) link.setAttribute("aria-current", "page");
    const when = new Date(job.at).toLocaleString([], { dateStyle: "short", timeStyle: "short" });
    const state = Object.assign(document.createElement("span"),
                                { className: "job-state", textContent: ` ${job.status} · ${when}` });
    item.append(link, state);
    return item;
  });
  list.replaceChildren(...items);
  emptyNote.hidden = items.length > 0;
  clearButton.hidden = items.length === 0;
}

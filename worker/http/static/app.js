// sonomask web page: open a video, draw the object, submit, watch the job, hear the result.
// Plain JavaScript, no build step and nothing loaded from elsewhere. Talks only to this
// server's HTTP API (see worker/web.py and worker/api.py for the endpoints).
"use strict";

const $ = (sel) => document.querySelector(sel);
const clamp = (v, lo, hi) => Math.min(hi, Math.max(lo, v));
const $$ = (sel) => Array.from(document.querySelectorAll(sel));
const TOKEN_KEY = "sonomask.token";
const LOOK_KEY = "sonomask.overlay"; // the overlay's colours and opacity, kept in the browser
const TRACK_COLOUR = "#4fd2ff"; // the tracked mask (cyan), apart from the drawn one
const FRAME_MAX_SIDE = 1600;
const JOBS_SHOWN = 8; // rows of recent jobs before "Show more"

// Several objects (one stem each): the same limits and label rule as the service's JobSpec
// (worker/spec.py: MAX_OBJECTS, LABEL_RULE, RESERVED_LABELS).
const MAX_OBJECTS = 16;
const MAX_LABEL = 40;
const LABEL_RE = /^[A-Za-z0-9](?:[A-Za-z0-9_.-]{0,38}[A-Za-z0-9_-])?$/;
const RESERVED_LABELS = ["residual"];
// The colours the service's preview.mp4 draws object j in (vision/objects.py PALETTE), so
// the results list each stem in the colour it has in the preview.
const PREVIEW_PALETTE = ["#ff30a0", "#28c8ff", "#ffc800", "#50e650", "#aa5aff", "#ff6e28", "#00e6c8", "#e6e6e6"];

// Colours an object's mask can be drawn in; object i starts with PALETTE[i] (or the first
// colour no other object has). The overlay is per object: looks[i] is object i's.
const PALETTE = [
  { name: "pink", hex: "#ff4fb0" },
  { name: "yellow", hex: "#ffd23f" },
  { name: "green", hex: "#3ddc84" },
  { name: "blue", hex: "#4f7bff" },
  { name: "orange", hex: "#ff8a3d" },
  { name: "white", hex: "#ffffff" },
];

const S = {
  token: localStorage.getItem(TOKEN_KEY) || "",
  options: null,
  upload: null, // the opened video: {id, name, width, height, fps, frames, duration, ...}
  frame: 0,
  tool: "brush",
  brush: 24,
  // The objects drawn (one stem each): {id, label, masks, filled, versions, undo, boxes,
  // spans, text}. One object is today's single-object job; S.current is the one being drawn.
  objects: [],
  current: 0,
  nextId: 1,
  // The selected object's own collections (see selectObject), so drawing code is one-object:
  masks: new Map(), // frame -> canvas at the video's size (alpha = object)
  filled: new Set(), // frames whose mask is not empty
  versions: new Map(), // frame -> edit count when its mask last changed
  edits: 0,
  undo: new Map(), // frame -> [canvas snapshots]
  stroke: null,
  poly: [],
  boxStart: null,
  boxEnd: null,
  cursor: null,
  spans: [], // {sign, start, end} (the selected object's)
  spanSign: "+",
  spanDrag: null,
  peaks: null,
  job: null,
  jobDoc: null,
  pollTimer: null,
  results: null, // {id, peaks: {target, residual}}
  ab: "target",
  edit: null, // canvas at the video's size: the shown frame's mask being edited (alpha = object)
  typedBox: null, // a valid box typed as numbers, previewed until it is added
  looks: loadLooks(), // per object: {colour, opacity} of its overlay
};

/** The saved overlay looks (or the defaults): a colour from PALETTE and an opacity each. */
function loadLooks() {
  let saved = [];
  try {
    const v = JSON.parse(localStorage.getItem(LOOK_KEY) || "{}");
    if (Array.isArray(v.looks)) saved = v.looks;
  } catch (_) {
    /* unreadable: the defaults */
  }
  const known = new Set(PALETTE.map((c) => c.hex));
  const looks = [];
  for (let i = 0; i < Math.max(1, saved.length); i++) {
    const l = saved[i] || {};
    looks.push({
      colour: known.has(l.colour) ? l.colour : PALETTE[i % PALETTE.length].hex,
      opacity: Number.isFinite(l.opacity) ? clamp(l.opacity, 0.1, 0.9) : 0.45,
    });
  }
  return looks;
}

const lookOf = (i) => S.looks[i] || { colour: PALETTE[i % PALETTE.length].hex, opacity: 0.45 };

// The tracking preview (POST/GET /v1/uploads/{id}/track): the server's last state, what the
// page sent for it, and the masks fetched for the overlay.
const T = {
  state: null, // the server's document: state, run, progress, tracked, retracked, ...
  sent: null, // {obj, tracker, versions: Map frame -> edit count} of the last finished preview
  pending: null, // the same for the run in progress
  poll: null,
  cache: new Map(), // "run:frame" -> PNG blob
};

// --------------------------------------------------------------------------- API

class ApiError extends Error {
  constructor(message, status) {
    super(message);
    this.status = status;
  }
}

/** The service's own words for a failed response: `detail` (or a job's `error`). */
async function problem(res) {
  try {
    const body = await res.json();
    if (typeof body.detail === "string") return body.detail;
    if (body.detail !== undefined) return JSON.stringify(body.detail);
    if (typeof body.error === "string") return body.error;
  } catch (_) {
    /* not JSON */
  }
  return `${res.status} ${res.statusText || "error"}`;
}

function authHeaders(headers = {}) {
  const h = new Headers(headers);
  if (S.token) h.set("Authorization", `Bearer ${S.token}`);
  return h;
}

/** fetch() with the bearer token; asks for the token again on 401; throws ApiError. */
async function api(path, opts = {}) {
  for (let attempt = 0; ; attempt++) {
    const res = await fetch(path, { ...opts, headers: authHeaders(opts.headers) });
    if (res.ok) return res;
    const msg = await problem(res);
    if (res.status === 401 && attempt < 3 && (await askToken(msg))) continue;
    throw new ApiError(msg, res.status);
  }
}

const getJSON = async (path, opts) => (await api(path, opts)).json();

// --------------------------------------------------------------------------- token

let tokenPrompt = null;

/** Ask for the access token (once for everyone waiting); resolves true when one was given. */
function askToken(message) {
  if (tokenPrompt) return tokenPrompt;
  const dialog = $("#token-dialog");
  const err = $("#token-error");
  err.hidden = !message;
  err.textContent = message || "";
  $("#token-input").value = S.token;
  tokenPrompt = new Promise((resolve) => {
    dialog.addEventListener(
      "close",
      () => {
        tokenPrompt = null;
        const value = $("#token-input").value.trim();
        if (dialog.returnValue === "save" && value) {
          S.token = value;
          localStorage.setItem(TOKEN_KEY, value);
          resolve(true);
        } else {
          resolve(false);
        }
      },
      { once: true },
    );
  });
  dialog.returnValue = "";
  dialog.showModal();
  $("#token-input").focus();
  return tokenPrompt;
}

// --------------------------------------------------------------------------- small helpers

function showError(sel, message) {
  const el = $(sel);
  el.textContent = message || "";
  el.hidden = !message;
}

const fmtTime = (t) => `${t.toFixed(2)} s`;
const fmtBytes = (n) =>
  n >= 1e9 ? `${(n / 1e9).toFixed(2)} GB` : n >= 1e6 ? `${(n / 1e6).toFixed(1)} MB` : `${Math.ceil(n / 1e3)} kB`;
const timeOf = (n) => n / S.upload.fps;
const frameAt = (t) => clamp(Math.round(t * S.upload.fps), 0, S.upload.frames - 1);
const spanText = (s) => `${s.sign}${+s.start.toFixed(2)}-${+s.end.toFixed(2)}`;

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else if (v !== undefined && v !== null && v !== false) node.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children) node.append(c);
  return node;
}

/** Scroll a section's heading to the top (smoothly unless the person asked for less motion). */
function reveal(node) {
  const calm = window.matchMedia("(prefers-reduced-motion: reduce)").matches;
  node.scrollIntoView({ behavior: calm ? "auto" : "smooth", block: "start" });
}

function newCanvas(w, h) {
  const c = document.createElement("canvas");
  c.width = w;
  c.height = h;
  return c;
}

/** Size a canvas's backing store to its CSS box (sharp on HiDPI); returns its 2D context. */
function fitCanvas(canvas) {
  const r = canvas.getBoundingClientRect();
  const dpr = window.devicePixelRatio || 1;
  const w = Math.max(1, Math.round(r.width * dpr));
  const h = Math.max(1, Math.round(r.height * dpr));
  if (canvas.width !== w || canvas.height !== h) {
    canvas.width = w;
    canvas.height = h;
  }
  const ctx = canvas.getContext("2d");
  ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  return { ctx, w: r.width, h: r.height };
}

// --------------------------------------------------------------------------- options, media, jobs

async function loadOptions() {
  const res = await fetch("/v1/options");
  S.options = await res.json();
  const o = S.options;
  const sep = $("#separator");
  sep.replaceChildren(
    ...o.separators.map((name) =>
      el("option", { value: name }, name === "auto" ? `auto (runs ${o.auto_runs})` : name),
    ),
  );
  sep.value = o.default_separator;
  const tr = $("#tracker");
  tr.replaceChildren(...o.trackers.map((name) => el("option", { value: name }, name)));
  tr.value = o.default_tracker;
  $("#server-note").textContent = o.model
    ? "SAM Audio model configured"
    : "No SAM Audio model: the weight-free classical separator runs";
  // SAM Audio's reranking and span prediction: offered only with a model, and not for a
  // job the classical separator runs.
  $("#sam-options").hidden = !o.model;
  const rankerNames = {
    activity: "sound activity against the spans",
    judge: "SAM Audio Judge (overall score)",
    clap: "CLAP (audio against the text)",
  };
  $("#ranker").replaceChildren(
    el("option", { value: "" }, "the model's own"),
    ...(o.rankers || ["activity"]).map((name) =>
      el("option", { value: name }, rankerNames[name] || name),
    ),
  );
  const samOn = () => {
    $("#sam-options").disabled = $("#separator").value === "classical";
  };
  sep.addEventListener("change", samOn);
  samOn();
  $("#token-button").hidden = !o.auth;
}

async function loadMedia() {
  if (!S.options.media_root) return;
  try {
    const body = await getJSON("/v1/media");
    const select = $("#media-select");
    select.replaceChildren(
      ...body.files.map((f) => el("option", { value: f.path }, `${f.path} (${fmtBytes(f.size)})`)),
    );
    $("#media-pick").hidden = body.files.length === 0;
  } catch (err) {
    showError("#open-error", err.message);
  }
}

// The recent jobs: fetched every few seconds, shown newest first; consecutive jobs alike
// (same video, mode, objects and state) collapse into one row, and only the first
// JOBS.shown rows are listed until "Show more".
const JOBS = { list: [], key: "", shown: JOBS_SHOWN, open: new Set() };
let lastJobsRefresh = 0;

const fmtDuration = (sec) => {
  sec = Math.max(0, Math.round(sec));
  if (sec < 60) return `${sec} s`;
  if (sec < 3600) return `${Math.floor(sec / 60)} min ${String(sec % 60).padStart(2, "0")} s`;
  return `${Math.floor(sec / 3600)} h ${String(Math.floor((sec % 3600) / 60)).padStart(2, "0")} min`;
};

/** "1 object" for a single-object job (``objects`` null), else the objects' labels. */
function objectsText(objects) {
  if (!Array.isArray(objects) || !objects.length) return "1 object";
  const labels = objects.map((o, i) => (o && o.label) || `object ${i + 1}`);
  return `${labels.length} objects: ${labels.join(", ")}`;
}

const MODE_TEXT = { isolate: "isolate", remove: "remove", both: "isolate + remove" };

/** Where a job stands, in a few words: its queue position, stage or how long it took. */
function jobProgressText(j) {
  if (j.state === "queued") {
    return j.queue_position ? `#${j.queue_position} in the queue` : "waiting for a worker";
  }
  if (j.state === "running") return `${j.stage || "starting"} · ${Math.round(j.progress * 100)}%`;
  const took = j.created && j.finished ? (Date.parse(j.finished) - Date.parse(j.created)) / 1000 : NaN;
  if (!Number.isFinite(took)) return "";
  return j.state === "succeeded" ? `took ${fmtDuration(took)}` : `${j.state} after ${fmtDuration(took)}`;
}

const jobAlike = (j) => JSON.stringify([j.name, j.mode, objectsText(j.objects), j.state]);

function groupJobs(list) {
  const groups = [];
  for (const j of list) {
    const last = groups[groups.length - 1];
    if (last && last.key === jobAlike(j)) last.jobs.push(j);
    else groups.push({ key: jobAlike(j), jobs: [j] });
  }
  return groups;
}

function jobButton(j) {
  const when = j.created ? new Date(j.created).toLocaleString([], { dateStyle: "short", timeStyle: "short" }) : "";
  const name = j.name || j.id;
  const mode = MODE_TEXT[j.mode] || j.mode || "";
  const where = jobProgressText(j);
  return el(
    "button",
    {
      type: "button",
      class: "job-row",
      "data-job": j.id,
      "data-state": j.state,
      "aria-current": j.id === S.job ? "true" : "false",
      "aria-label": `Open job ${name}, ${mode}, ${objectsText(j.objects)}, ${j.state}${where ? `, ${where}` : ""}`,
      title: `job ${j.id}`,
      onclick: () => openJob(j.id),
    },
    el("span", { class: "job-name" }, name),
    el("span", { class: `badge ${j.state}` }, j.state),
    el("span", { class: "job-meta" }, [mode, objectsText(j.objects)].filter(Boolean).join(" · ")),
    el("span", { class: "job-when" }, [where, when].filter(Boolean).join(" · ")),
  );
}

function renderJobs() {
  const ul = $("#jobs-list");
  const focused = document.activeElement && document.activeElement.dataset.job;
  const list = JOBS.list;
  if (!list.length) {
    ul.replaceChildren(el("li", { class: "empty" }, "No jobs yet."));
    $("#more-jobs").hidden = true;
    return;
  }
  const groups = groupJobs(list);
  const rows = [];
  for (const g of groups.slice(0, JOBS.shown)) {
    const [head, ...rest] = g.jobs;
    const open = JOBS.open.has(g.key) || rest.some((j) => j.id === S.job);
    const li = el("li", { class: "job-group" }, jobButton(head));
    if (rest.length) {
      li.append(
        el(
          "button",
          {
            type: "button",
            class: "ghost small more-alike",
            "aria-expanded": String(open),
            onclick: () => {
              if (open) JOBS.open.delete(g.key);
              else JOBS.open.add(g.key);
              renderJobs();
            },
          },
          open ? `Hide ${rest.length} alike` : `+ ${rest.length} more alike`,
        ),
      );
      if (open) li.append(el("ul", { class: "jobs-sub" }, ...rest.map((j) => el("li", {}, jobButton(j)))));
    }
    rows.push(li);
  }
  ul.replaceChildren(...rows);
  const hidden = groups.length - JOBS.shown;
  const more = $("#more-jobs");
  more.hidden = hidden <= 0;
  more.textContent = `Show more (${Math.max(0, hidden)})`;
  if (focused) {
    const again = ul.querySelector(`button[data-job="${focused}"]`);
    if (again) again.focus();
  }
}

async function refreshJobs() {
  lastJobsRefresh = Date.now();
  try {
    const list = await getJSON("/v1/jobs?limit=50");
    showError("#jobs-error", "");
    const key = JSON.stringify([S.job, list]);
    if (key === JOBS.key) return; // unchanged: keep the list (and keyboard focus) as it is
    JOBS.key = key;
    JOBS.list = list;
    renderJobs();
  } catch (err) {
    showError("#jobs-error", err.message);
  }
}

// --------------------------------------------------------------------------- opening a video

function uploadFile(file, retried = false) {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open("POST", `/v1/uploads?name=${encodeURIComponent(file.name)}`);
    if (S.token) xhr.setRequestHeader("Authorization", `Bearer ${S.token}`);
    xhr.setRequestHeader("Content-Type", file.type || "application/octet-stream");
    xhr.upload.onprogress = (e) => {
      if (!e.lengthComputable) return;
      $("#upload-bar").value = e.loaded / e.total;
      $("#upload-text").textContent = `Uploading ${file.name}: ${fmtBytes(e.loaded)} of ${fmtBytes(e.total)}`;
    };
    xhr.upload.onload = () => {
      $("#upload-text").textContent = `Checking ${file.name}…`;
    };
    xhr.onerror = () => reject(new ApiError("the upload failed: the server could not be reached", 0));
    xhr.onload = async () => {
      let body = null;
      try {
        body = JSON.parse(xhr.responseText);
      } catch (_) {
        /* not JSON */
      }
      if (xhr.status >= 200 && xhr.status < 300) return resolve(body);
      const msg = body && typeof body.detail === "string" ? body.detail : `${xhr.status} ${xhr.statusText}`;
      if (xhr.status === 401 && !retried && (await askToken(msg))) {
        uploadFile(file, true).then(resolve, reject);
        return;
      }
      reject(new ApiError(msg, xhr.status));
    };
    xhr.send(file);
  });
}

async function openWith(work, label) {
  showError("#open-error", "");
  $("#upload-progress").hidden = false;
  $("#upload-bar").removeAttribute("value");
  $("#upload-text").textContent = label;
  try {
    setVideo(await work());
  } catch (err) {
    showError("#open-error", err.message);
    if (S.upload) foldOpen(false); // the choices back beside the message, to pick another
  } finally {
    $("#upload-progress").hidden = true;
  }
}

function openFile(file) {
  const limit = S.options && S.options.max_upload_bytes;
  if (limit && file.size > limit) {
    // The server would refuse it after the whole upload; say so now, in its words.
    showError("#open-error", `upload larger than the limit of ${limit} bytes`);
    return;
  }
  openWith(() => uploadFile(file), `Uploading ${file.name}…`);
}

const openMedia = (path) =>
  openWith(
    () =>
      getJSON("/v1/uploads", {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ path }),
      }),
    `Opening ${path}…`,
  );

const openJobVideo = (id) =>
  openWith(
    () =>
      getJSON("/v1/uploads", {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ job: id }),
      }),
    `Opening the video of job ${id}…`,
  );

function setVideo(info) {
  S.upload = info;
  // One object to start with (today's single-object job); the text typed so far is its own.
  S.objects = [];
  S.objects.push(newObject(freeLabel(), $("#text-prompt").value));
  S.current = 0;
  bindCurrent();
  resetTracking();
  S.poly = [];
  S.peaks = null;
  $("#timeline").dataset.loaded = "false";
  const { width: w, height: h } = info;
  for (const c of [$("#mask-canvas"), $("#draft-canvas"), $("#track-canvas")]) {
    c.width = w;
    c.height = h;
  }
  S.edit = newCanvas(w, h);
  S.typedBox = null;
  const stage = $("#stage");
  stage.style.aspectRatio = `${w} / ${h}`;
  stage.style.maxWidth = `min(100%, calc(62vh * ${w / h}))`;
  const size = $("#brush-size");
  size.max = String(Math.max(40, Math.round(Math.max(w, h) / 4)));
  setBrush(Math.max(4, Math.round(Math.min(w, h) * 0.06)));
  $("#frame-slider").max = String(info.frames - 1);
  $("#frame-number").max = String(info.frames - 1);
  const info1 = el("strong", {}, info.name);
  $("#video-info").replaceChildren(
    info1,
    ` · ${w}×${h} · ${+info.fps.toFixed(3)} fps · ${info.frames} frames · ${fmtTime(info.duration)}`,
  );
  const streams = $("#audio-stream");
  streams.replaceChildren(
    ...Array.from({ length: info.audio_streams }, (_, i) => el("option", { value: String(i) }, `Stream ${i + 1}`)),
  );
  $("#stream-field").hidden = info.audio_streams < 2;
  $("#editor").hidden = false;
  $("#prompt-panel").hidden = false;
  foldOpen(true);
  history.replaceState(null, "", `#upload=${info.id}`);
  $("#frame-img").removeAttribute("data-frame");
  showError("#object-error", "");
  renderObjects();
  showLook();
  showFrame(0);
  renderSpans();
  renderKeyframes();
  loadPeaks();
  updateSummary();
  loadTracking();
  reveal($("#draw-h"));
}

async function loadPeaks() {
  const id = S.upload.id;
  const stream = $("#audio-stream").value || "0";
  drawTimeline();
  try {
    const peaks = await getJSON(`/v1/uploads/${id}/peaks?stream=${stream}`);
    if (S.upload && S.upload.id === id) {
      S.peaks = peaks;
      $("#timeline").dataset.loaded = "true";
      drawTimeline();
    }
  } catch (err) {
    showError("#open-error", err.message);
  }
}

// --------------------------------------------------------------------------- objects

const cur = () => S.objects[S.current];
const several = () => S.objects.length > 1;

function newObject(label, text = "") {
  return {
    id: S.nextId++, // stays with the object when others are removed (the tracking preview's)
    label,
    masks: new Map(),
    filled: new Set(),
    versions: new Map(),
    undo: new Map(),
    boxes: new Map(), // frame -> {x0, y0, x1, y1}: where its label goes on the overlay
    spans: [],
    text,
  };
}

/** Point the one-object fields (S.masks, S.filled, ...) at the selected object's own. */
function bindCurrent() {
  const o = cur();
  S.masks = o.masks;
  S.filled = o.filled;
  S.versions = o.versions;
  S.undo = o.undo;
  S.spans = o.spans;
}

function freeLabel() {
  const taken = new Set(S.objects.map((o) => o.label.toLowerCase()));
  for (let n = 1; ; n++) if (!taken.has(`object-${n}`)) return `object-${n}`;
}

const shownLabel = (label) => (label.length > 24 ? `${label.slice(0, 24)}…` : label);

/** What is wrong with object i's label, in one line (the service's rule, worker/spec.py
 * LABEL_RULE, and distinct labels), or "" when it is fine. */
function labelProblem(i) {
  const label = S.objects[i].label;
  const q = `"${shownLabel(label)}"`;
  if (!label) return `Name object ${i + 1}: a label is 1–${MAX_LABEL} characters, letters, digits, "_", "-" or ".".`;
  if (label.length > MAX_LABEL) return `The label ${q} is too long: at most ${MAX_LABEL} characters.`;
  const bad = [...label].find((ch) => !/[A-Za-z0-9_.-]/.test(ch));
  if (bad !== undefined) {
    const what = bad === " " ? "a space" : `"${bad}"`;
    return `The label ${q} has ${what}: use only ASCII letters, digits, "_", "-" and ".".`;
  }
  if (!/^[A-Za-z0-9]/.test(label)) return `The label ${q} must start with a letter or a digit.`;
  if (label.endsWith(".")) return `The label ${q} must not end with ".".`;
  if (!LABEL_RE.test(label)) return `The label ${q} is not allowed: 1–${MAX_LABEL} letters, digits, "_", "-" or ".".`;
  if (RESERVED_LABELS.includes(label.toLowerCase())) {
    return `The label ${q} is reserved for everything else (the residual's stem); choose another.`;
  }
  const same = S.objects.findIndex((o, j) => j !== i && o.label.toLowerCase() === label.toLowerCase());
  if (same >= 0) {
    const [a, b] = [Math.min(i, same) + 1, Math.max(i, same) + 1];
    return `Objects ${a} and ${b} are both labelled ${q}; labels must differ (ignoring case).`;
  }
  return "";
}

/** The list of objects: pick one to draw it, remove one, the selected one's name. */
function renderObjects() {
  if (!S.upload) return;
  const many = several();
  const problems = S.objects.map((_, i) => (many ? labelProblem(i) : ""));
  const focused = document.activeElement && document.activeElement.closest && document.activeElement.closest(".chip.obj");
  $("#object-list").replaceChildren(
    ...S.objects.map((o, i) => {
      const k = o.filled.size;
      const selected = i === S.current;
      const name = o.label || `object ${i + 1}`;
      const li = el(
        "li",
        {
          class: `chip obj${selected ? " current" : ""}${problems[i] ? " bad" : ""}`,
          "data-index": String(i),
          "data-label": o.label,
          "data-keyframes": String(k),
        },
        el(
          "button",
          {
            type: "button",
            class: "obj-pick",
            "aria-pressed": String(selected),
            "aria-label": `${selected ? "Drawing" : "Draw"} ${name} (${k} keyframe${k === 1 ? "" : "s"})`,
            title: selected ? `${name}: being drawn` : `Draw ${name}`,
            onclick: () => selectObject(i),
          },
          swatchChip(lookOf(i).colour),
          el("span", { class: "obj-label" }, name),
          el("span", { class: "obj-count", "aria-hidden": "true" }, k ? String(k) : "–"),
        ),
      );
      if (many) {
        li.append(
          el(
            "button",
            {
              type: "button",
              class: "x",
              "aria-label": `Remove object ${name}`,
              title: "Remove this object",
              onclick: () => removeObject(i),
            },
            "×",
          ),
        );
      }
      return li;
    }),
  );
  if (focused) {
    // Keep the keyboard where it was: on the object picked (or the one now in its place).
    const at = Math.min(+focused.dataset.index, S.objects.length - 1);
    const again = $("#object-list").querySelector(`.chip.obj[data-index="${at}"] .obj-pick`);
    if (again) again.focus();
  }
  const add = $("#add-object");
  add.disabled = S.objects.length >= MAX_OBJECTS;
  add.title = add.disabled
    ? `At most ${MAX_OBJECTS} objects in one job`
    : "Another on-screen source: each object gets its own stem";
  $("#object-name").hidden = !many;
  const input = $("#object-label");
  if (document.activeElement !== input) input.value = cur().label;
  input.setAttribute("aria-invalid", String(!!problems[S.current]));
  // The selected object's problem first, else the first other one's: one line.
  showError("#object-error", problems[S.current] || problems.find(Boolean) || "");
  renderObjectText();
}

/** The words that name the selected object when there are several. */
function renderObjectText() {
  const many = several();
  const label = cur() ? cur().label || `object ${S.current + 1}` : "";
  $("#timeline-whose").textContent = many ? `the sound of ${label}` : "the sound";
  $("#text-whose").textContent = many ? ` for ${label}` : "";
  $("#keyframes-label").textContent = many ? `Keyframes of ${label}` : "Keyframes";
  $("#mask-colour-legend").textContent = many ? `Colour of ${label}` : "Mask colour";
}

/** Draw object ``i`` from now on: its masks, keyframes, spans, text and colour. */
function selectObject(i) {
  if (!S.upload || i < 0 || i >= S.objects.length) return;
  if (S.poly.length) cancelPolygon();
  if (S.stroke) endStroke();
  S.boxStart = S.boxEnd = null;
  S.current = i;
  bindCurrent();
  $("#text-prompt").value = cur().text;
  showLook();
  renderObjects();
  renderMask();
  renderKeyframes();
  renderSpans();
  drawTimeline();
  updateHint();
  updateSummary();
}

function addObject() {
  if (!S.upload || S.objects.length >= MAX_OBJECTS) return;
  const i = S.objects.length;
  S.objects.push(newObject(freeLabel()));
  // Its own colour: the one kept for this place, unless an object before it has it.
  const used = new Set(S.objects.slice(0, i).map((_, j) => lookOf(j).colour));
  const look = { ...lookOf(i) };
  if (used.has(look.colour)) {
    const free = PALETTE.find((c) => !used.has(c.hex));
    if (free) look.colour = free.hex;
  }
  storeLook(i, look);
  selectObject(i);
  const input = $("#object-label");
  input.focus();
  input.select();
}

function removeObject(i) {
  if (S.objects.length < 2) return;
  const o = S.objects[i];
  const k = o.filled.size;
  const name = o.label || `object ${i + 1}`;
  if (k && !window.confirm(`Remove ${name} and its ${k} keyframe${k === 1 ? "" : "s"}?`)) return;
  S.objects.splice(i, 1);
  if (S.looks.length > i) S.looks.splice(i, 1);
  saveLooks();
  selectObject(S.current > i ? S.current - 1 : Math.min(S.current, S.objects.length - 1));
}

function bindObjects() {
  $("#add-object").addEventListener("click", addObject);
  $("#object-label").addEventListener("input", (e) => {
    if (!S.upload) return;
    cur().label = e.target.value.trim();
    showError("#submit-error", ""); // a refusal about a label is answered by typing it again
    renderObjects();
    renderOverlay();
    updateSummary();
  });
  $("#object-label").addEventListener("change", (e) => {
    e.target.value = cur().label; // as used: without the spaces around it
  });
  $("#text-prompt").addEventListener("input", (e) => {
    if (S.upload) cur().text = e.target.value;
  });
}

// --------------------------------------------------------------------------- frames

const FV = { wanted: 0, loading: false, url: null };

function showFrame(n) {
  if (!S.upload) return;
  n = clamp(Math.round(n), 0, S.upload.frames - 1);
  if (S.poly.length) cancelPolygon();
  S.frame = n;
  $("#frame-slider").value = String(n);
  $("#frame-number").value = String(n);
  $("#frame-time").textContent = fmtTime(timeOf(n));
  renderMask();
  renderKeyframes();
  drawTimeline();
  updateHint();
  FV.wanted = n;
  pumpFrames();
  pumpTracked();
}

/** Fetch the wanted frame; while one loads, later requests collapse into the newest. */
async function pumpFrames() {
  if (FV.loading) return;
  FV.loading = true;
  const busy = setTimeout(() => ($("#frame-busy").hidden = false), 200);
  try {
    for (;;) {
      const n = FV.wanted;
      const id = S.upload.id;
      try {
        const res = await api(`/v1/uploads/${id}/frames/${n}.jpg?max=${FRAME_MAX_SIDE}`);
        const url = URL.createObjectURL(await res.blob());
        const img = $("#frame-img");
        img.src = url;
        await img.decode().catch(() => {});
        if (FV.url) URL.revokeObjectURL(FV.url);
        FV.url = url;
        img.alt = `Frame ${n} of ${S.upload.name}`;
        img.dataset.frame = String(n);
      } catch (err) {
        showError("#open-error", err.message);
      }
      if (FV.wanted === n && S.upload.id === id) break;
    }
  } finally {
    clearTimeout(busy);
    $("#frame-busy").hidden = true;
    FV.loading = false;
  }
}

// --------------------------------------------------------------------------- drawing

const maskCtx = () => S.edit.getContext("2d", { willReadFrequently: true });

function renderMask() {
  const ctx = maskCtx();
  ctx.globalCompositeOperation = "source-over";
  ctx.clearRect(0, 0, S.upload.width, S.upload.height);
  const stored = S.masks.get(S.frame);
  if (stored) ctx.drawImage(stored, 0, 0);
  renderOverlay();
  renderDraft();
}

// --------------------------------------------------------------------------- overlay

const scratch = new Map(); // name -> canvas, reused between renders

function scratchCanvas(name, w, h) {
  let c = scratch.get(name);
  if (!c || c.width !== w || c.height !== h) {
    c = newCanvas(w, h);
    scratch.set(name, c);
  }
  const ctx = c.getContext("2d");
  ctx.globalCompositeOperation = "source-over";
  ctx.globalAlpha = 1;
  ctx.clearRect(0, 0, w, h);
  return c;
}

/** ``src`` grown by ``r`` pixels (shifted copies, doubling the step: few draws for any r). */
function dilate(src, r, name) {
  const { width: w, height: h } = src;
  let cur = src;
  let left = Math.round(r);
  let step = 1;
  let flip = 0;
  while (left > 0) {
    const d = Math.min(step, left);
    const next = scratchCanvas(`${name}${flip}`, w, h);
    const ctx = next.getContext("2d");
    for (const [dx, dy] of [[0, 0], [d, 0], [-d, 0], [0, d], [0, -d], [d, d], [d, -d], [-d, d], [-d, -d]]) {
      ctx.drawImage(cur, dx, dy);
    }
    cur = next;
    left -= d;
    step *= 2;
    flip ^= 1;
  }
  return cur;
}

/** ``mask``'s silhouette in one colour (alpha kept), in scratch canvas ``name``. */
function tint(mask, colour, name) {
  const c = scratchCanvas(name, mask.width, mask.height);
  const ctx = c.getContext("2d");
  ctx.drawImage(mask, 0, 0);
  ctx.globalCompositeOperation = "source-in";
  ctx.fillStyle = colour;
  ctx.fillRect(0, 0, c.width, c.height);
  ctx.globalCompositeOperation = "source-over";
  return c;
}

/** Draw one object's mask over the picture: filled in its colour at its opacity, and
 * outlined (its colour, then a dark edge outside) at full strength, so the edge shows over
 * an object of the same colour too. Each object is drawn with its own look; ``keep`` draws
 * over what the canvas holds (the objects drawn before it). */
function paintOverlay(canvas, mask, look, keep = false) {
  const ctx = canvas.getContext("2d");
  ctx.globalCompositeOperation = "source-over";
  ctx.globalAlpha = 1;
  if (!keep) ctx.clearRect(0, 0, canvas.width, canvas.height);
  if (!mask) return;
  const unit = clamp(Math.round(1.25 * stageScale()), 1, 8); // ~1.25 CSS px on screen
  const ring = scratchCanvas("ring", mask.width, mask.height);
  const rctx = ring.getContext("2d");
  rctx.globalAlpha = 0.85;
  rctx.drawImage(tint(dilate(mask, 2 * unit, "grow"), "#000000", "tint"), 0, 0);
  rctx.globalAlpha = 1;
  rctx.drawImage(tint(dilate(mask, unit, "grow"), look.colour, "tint"), 0, 0);
  rctx.globalCompositeOperation = "destination-out";
  rctx.drawImage(mask, 0, 0);
  rctx.globalCompositeOperation = "source-over";
  ctx.drawImage(ring, 0, 0);
  ctx.globalAlpha = look.opacity;
  ctx.drawImage(tint(mask, look.colour, "tint"), 0, 0);
  ctx.globalAlpha = 1;
}

/** The objects' labels over the picture (HTML, so they stay sharp on a small video), just
 * above each mask (inside its top when there is no room): the selected object's on its
 * colour, the others' in their colour on dark. */
function renderTags(tags) {
  const layer = $("#stage-tags");
  const { width: W, height: H } = S.upload;
  const cssH = layer.getBoundingClientRect().height || H;
  layer.replaceChildren(
    ...tags.map(([text, box, colour, selected]) => {
      const below = (box.y0 * cssH) / H < 20;
      const tag = el("span", { class: `obj-tag${selected ? " selected" : ""}${below ? " below" : ""}` }, text);
      tag.style.setProperty("--c", colour);
      tag.style.left = `${(100 * box.x0) / W}%`;
      tag.style.top = `${(100 * box.y0) / H}%`;
      return tag;
    }),
  );
}

const DIM = 0.5; // the other objects' fill, as a share of their opacity (the selected one's is full)

let overlayQueued = false;

/** The drawn masks of the frame shown (at once, or at the next animation frame while a
 * stroke moves): every object in its own colour, outlined; the selected one (being
 * edited, S.edit) on top at its opacity, the others at half of theirs. With several
 * objects each is labelled. */
function renderOverlay(soon = false) {
  if (!S.upload || !S.edit) return;
  if (soon) {
    if (!overlayQueued) {
      overlayQueued = true;
      requestAnimationFrame(() => {
        overlayQueued = false;
        renderOverlay();
      });
    }
    return;
  }
  const c = $("#mask-canvas");
  const look = lookOf(S.current);
  const many = several();
  c.getContext("2d").clearRect(0, 0, c.width, c.height);
  const tags = [];
  S.objects.forEach((o, i) => {
    if (i === S.current) return;
    const mask = o.masks.get(S.frame);
    if (!mask) return;
    const l = lookOf(i);
    paintOverlay(c, mask, { colour: l.colour, opacity: l.opacity * DIM }, true);
    if (o.boxes.get(S.frame)) tags.push([o.label || `object ${i + 1}`, o.boxes.get(S.frame), l.colour, false]);
  });
  paintOverlay(c, S.edit, look, true);
  const own = cur() && cur().boxes.get(S.frame);
  if (own) tags.push([cur().label || `object ${S.current + 1}`, own, look.colour, true]);
  renderTags(many ? tags : []);
  c.dataset.colour = look.colour;
  c.dataset.opacity = String(look.opacity);
  c.dataset.object = cur() ? cur().label : "";
}

function saveLooks() {
  try {
    localStorage.setItem(LOOK_KEY, JSON.stringify({ looks: S.looks }));
  } catch (_) {
    /* private mode: the look lasts for this visit */
  }
}

/** Object ``i``'s look changed: keep it in the browser. */
function storeLook(i, change) {
  while (S.looks.length <= i) S.looks.push({ ...lookOf(S.looks.length) });
  Object.assign(S.looks[i], change);
  saveLooks();
}

/** Apply a new look to object ``i``: keep it in the browser, redraw, update the controls. */
function setLook(i, change) {
  storeLook(i, change);
  showLook();
  renderOverlay();
  repaintTracked();
  drawTimeline();
  renderObjects();
}

/** The selected object's look in the controls. */
function showLook() {
  const look = lookOf(S.current);
  for (const r of $$('input[name="mask-colour"]')) r.checked = r.value === look.colour;
  const pct = Math.round(look.opacity * 100);
  $("#mask-opacity").value = String(pct);
  $("#mask-opacity-out").textContent = `${pct}%`;
  document.documentElement.style.setProperty("--object", look.colour);
}

/** A coloured dot (set through the CSSOM: the page's CSP allows no inline style attribute). */
function swatchChip(hex) {
  const chip = el("span", { class: "chip-colour", "aria-hidden": "true" });
  chip.style.setProperty("--c", hex);
  return chip;
}

function bindLook() {
  const box = $("#mask-colours");
  for (const c of PALETTE) {
    box.append(
      el(
        "label",
        { class: "swatch", title: c.name },
        el("input", {
          type: "radio",
          name: "mask-colour",
          value: c.hex,
          "aria-label": c.name,
          onchange: () => setLook(S.current, { colour: c.hex }),
        }),
        swatchChip(c.hex),
      ),
    );
  }
  $("#mask-opacity").addEventListener("input", (e) => setLook(S.current, { opacity: +e.target.value / 100 }));
  showLook();
}

function setTool(tool) {
  if (S.poly.length) cancelPolygon();
  S.tool = tool;
  for (const b of $$(".tool")) b.setAttribute("aria-pressed", String(b.dataset.tool === tool));
  updateHint();
  renderDraft();
}

function setBrush(px) {
  const input = $("#brush-size");
  S.brush = clamp(Math.round(px), +input.min, +input.max);
  input.value = String(S.brush);
  $("#brush-size-out").textContent = `${S.brush} px`;
  renderDraft();
}

function updateHint() {
  if (!S.upload) return;
  const here = S.filled.has(S.frame)
    ? `Frame ${S.frame} has a mask.`
    : S.filled.size
      ? `Frame ${S.frame} has no mask; drawing here adds a correction keyframe.`
      : `Draw ${several() ? cur().label || "the object" : "the object"} on this frame (or scrub to a frame where it is clear).`;
  const how = {
    brush: "Brush: drag to paint.",
    eraser: "Eraser: drag to rub out.",
    polygon: "Polygon: click the corners; click the first one, double-click or press Enter to close (Alt: cut out). Esc cancels.",
    box: "Box: drag a rectangle (hold Alt to cut out).",
  }[S.tool];
  $("#tool-hint").textContent = `${here} ${how}`;
}

function toVideo(e) {
  const c = $("#draft-canvas");
  const r = c.getBoundingClientRect();
  return {
    x: ((e.clientX - r.left) * c.width) / r.width,
    y: ((e.clientY - r.top) * c.height) / r.height,
  };
}

/** Video pixels per CSS pixel on the stage (for hit distances and line widths). */
function stageScale() {
  const c = $("#draft-canvas");
  return c.width / Math.max(1, c.getBoundingClientRect().width);
}

function snapshot() {
  const copy = newCanvas(S.upload.width, S.upload.height);
  copy.getContext("2d").drawImage(S.edit, 0, 0);
  const stack = S.undo.get(S.frame) || [];
  stack.push(copy);
  if (stack.length > 20) stack.shift();
  S.undo.set(S.frame, stack);
}

/** Keep the edited picture as this frame's mask and update what depends on it. */
function commit() {
  const { width: w, height: h } = S.upload;
  const ctx = maskCtx();
  ctx.globalCompositeOperation = "source-over";
  const data = ctx.getImageData(0, 0, w, h).data;
  // Where the mask is (its bounding box: the object's label goes above it).
  let x0 = w;
  let y0 = h;
  let x1 = -1;
  let y1 = -1;
  for (let y = 0, i = 3; y < h; y++) {
    for (let x = 0; x < w; x++, i += 4) {
      if (data[i] >= 128) {
        if (x < x0) x0 = x;
        if (x > x1) x1 = x;
        if (y < y0) y0 = y;
        y1 = y;
      }
    }
  }
  const filled = x1 >= 0;
  if (filled) cur().boxes.set(S.frame, { x0, y0, x1: x1 + 1, y1: y1 + 1 });
  else cur().boxes.delete(S.frame);
  S.versions.set(S.frame, ++S.edits);
  if (filled) {
    let stored = S.masks.get(S.frame);
    if (!stored) {
      stored = newCanvas(w, h);
      S.masks.set(S.frame, stored);
    }
    const sctx = stored.getContext("2d");
    sctx.clearRect(0, 0, w, h);
    sctx.drawImage(S.edit, 0, 0);
    S.filled.add(S.frame);
  } else {
    S.masks.delete(S.frame);
    S.filled.delete(S.frame);
  }
  renderOverlay();
  renderKeyframes();
  renderObjects();
  drawTimeline();
  updateHint();
  updateSummary();
}

function paintMode(ctx, erase) {
  ctx.globalCompositeOperation = erase ? "destination-out" : "source-over";
  ctx.fillStyle = "#ffffff"; // the edit canvas keeps only coverage (alpha); colour is the overlay's
  ctx.strokeStyle = "#ffffff";
}

function startStroke(p) {
  snapshot();
  const ctx = maskCtx();
  paintMode(ctx, S.tool === "eraser");
  ctx.lineWidth = S.brush;
  ctx.lineCap = "round";
  ctx.lineJoin = "round";
  ctx.beginPath();
  ctx.arc(p.x, p.y, S.brush / 2, 0, Math.PI * 2);
  ctx.fill();
  S.stroke = p;
  renderOverlay(true);
}

function continueStroke(p) {
  const ctx = maskCtx();
  ctx.beginPath();
  ctx.moveTo(S.stroke.x, S.stroke.y);
  ctx.lineTo(p.x, p.y);
  ctx.stroke();
  S.stroke = p;
  renderOverlay(true);
}

function endStroke() {
  S.stroke = null;
  commit();
}

function fillShape(points, erase) {
  snapshot();
  const ctx = maskCtx();
  paintMode(ctx, erase);
  ctx.beginPath();
  points.forEach((p, i) => (i ? ctx.lineTo(p.x, p.y) : ctx.moveTo(p.x, p.y)));
  ctx.closePath();
  ctx.fill();
  commit();
}

function addPolygonPoint(p, e) {
  const near = 10 * stageScale();
  if (S.poly.length >= 3 && Math.hypot(p.x - S.poly[0].x, p.y - S.poly[0].y) <= near) {
    closePolygon(e.altKey);
    return;
  }
  const last = S.poly[S.poly.length - 1];
  if (last && Math.hypot(p.x - last.x, p.y - last.y) < 3 * stageScale()) return; // double-click
  S.poly.push(p);
  renderDraft();
}

function closePolygon(erase) {
  if (S.poly.length >= 3) fillShape(S.poly, erase);
  S.poly = [];
  renderDraft();
}

function cancelPolygon() {
  S.poly = [];
  renderDraft();
}

function finishBox(erase) {
  const a = S.boxStart;
  const b = S.boxEnd;
  S.boxStart = S.boxEnd = null;
  if (a && b && Math.abs(a.x - b.x) >= 2 && Math.abs(a.y - b.y) >= 2) {
    fillShape(
      [
        { x: a.x, y: a.y },
        { x: b.x, y: a.y },
        { x: b.x, y: b.y },
        { x: a.x, y: b.y },
      ],
      erase,
    );
  }
  renderDraft();
}

// --------------------------------------------------------------------------- a box as numbers

const BOX_FIELDS = ["x0", "y0", "x1", "y1"];

/** The typed box in video pixels, or the first thing wrong with it (the service's rules:
 * 0 <= x0 < x1 <= width, 0 <= y0 < y1 <= height). */
function typedBox() {
  const { width: w, height: h } = S.upload;
  const v = {};
  for (const k of BOX_FIELDS) {
    const input = $(`#box-${k}`);
    const text = input.value.trim();
    const n = Number(text);
    if (text === "" || !Number.isFinite(n)) {
      return { error: `${k} is ${text === "" ? "empty" : "not a number"}: give all four corners in video pixels.`, field: k };
    }
    v[k] = n;
  }
  for (const [k, hi] of [["x0", w], ["x1", w], ["y0", h], ["y1", h]]) {
    if (v[k] < 0 || v[k] > hi) {
      return {
        error: `${k} = ${v[k]} is outside the ${w}×${h} picture: x goes from 0 to ${w}, y from 0 to ${h}.`,
        field: k,
      };
    }
  }
  if (v.x1 <= v.x0) return { error: `x1 (${v.x1}) must be greater than x0 (${v.x0}): x0 is the left edge, x1 the right.`, field: "x1" };
  if (v.y1 <= v.y0) return { error: `y1 (${v.y1}) must be greater than y0 (${v.y0}): y0 is the top edge, y1 the bottom.`, field: "y1" };
  // Every pixel the box overlaps, as the pipeline rasterises a box (vision/masks.py).
  const x = Math.floor(v.x0);
  const y = Math.floor(v.y0);
  return { box: { x, y, w: Math.max(Math.ceil(v.x1), x + 1) - x, h: Math.max(Math.ceil(v.y1), y + 1) - y } };
}

function markBoxFields(bad) {
  for (const k of BOX_FIELDS) $(`#box-${k}`).setAttribute("aria-invalid", String(k === bad));
}

/** While typing: preview a valid box on the picture; say nothing until Add box. */
function previewTypedBox() {
  if (!S.upload) return;
  const t = typedBox();
  S.typedBox = t.box || null;
  if (t.box) {
    markBoxFields(null);
    showError("#box-error", "");
  }
  renderDraft();
}

function addTypedBox(e) {
  e.preventDefault();
  if (!S.upload) return;
  const t = typedBox();
  markBoxFields(t.field || null);
  if (t.error) {
    showError("#box-error", t.error);
    $(`#box-${t.field}`).focus();
    return;
  }
  showError("#box-error", "");
  const { x, y, w, h } = t.box;
  snapshot();
  const ctx = maskCtx();
  paintMode(ctx, $("#box-cut").checked);
  ctx.fillRect(x, y, w, h);
  ctx.globalCompositeOperation = "source-over";
  S.typedBox = null;
  commit();
  renderDraft();
  $("#tool-hint").textContent = `Box ${x},${y}–${x + w},${y + h} ${$("#box-cut").checked ? "cut out of" : "added to"} frame ${S.frame}.`;
}

function undo() {
  const stack = S.undo.get(S.frame);
  if (!stack || !stack.length) return;
  const prev = stack.pop();
  const ctx = maskCtx();
  ctx.globalCompositeOperation = "source-over";
  ctx.clearRect(0, 0, S.upload.width, S.upload.height);
  ctx.drawImage(prev, 0, 0);
  commit();
}

function clearFrame() {
  if (!S.filled.has(S.frame)) return;
  snapshot();
  maskCtx().clearRect(0, 0, S.upload.width, S.upload.height);
  commit();
}

/** The overlay of what is being drawn: polygon so far, box, brush outline. */
function renderDraft() {
  const c = $("#draft-canvas");
  const ctx = c.getContext("2d");
  ctx.clearRect(0, 0, c.width, c.height);
  if (!S.upload) return;
  const px = stageScale();
  ctx.lineWidth = 1.5 * px;
  ctx.strokeStyle = "#ffffff";
  ctx.fillStyle = "rgba(255, 79, 176, 0.25)";
  if (S.poly.length) {
    ctx.beginPath();
    S.poly.forEach((p, i) => (i ? ctx.lineTo(p.x, p.y) : ctx.moveTo(p.x, p.y)));
    if (S.cursor) ctx.lineTo(S.cursor.x, S.cursor.y);
    ctx.stroke();
    ctx.fillStyle = "#ffffff";
    for (const p of S.poly) ctx.fillRect(p.x - 2.5 * px, p.y - 2.5 * px, 5 * px, 5 * px);
  }
  if (S.boxStart && S.boxEnd) {
    const x = Math.min(S.boxStart.x, S.boxEnd.x);
    const y = Math.min(S.boxStart.y, S.boxEnd.y);
    const w = Math.abs(S.boxEnd.x - S.boxStart.x);
    const h = Math.abs(S.boxEnd.y - S.boxStart.y);
    ctx.fillRect(x, y, w, h);
    ctx.setLineDash([6 * px, 4 * px]);
    ctx.strokeRect(x, y, w, h);
    ctx.setLineDash([]);
  }
  if (S.typedBox) {
    const b = S.typedBox;
    ctx.setLineDash([4 * px, 3 * px]);
    ctx.strokeStyle = "#ffffff";
    ctx.strokeRect(b.x, b.y, b.w, b.h);
    ctx.setLineDash([]);
  }
  if (S.cursor && (S.tool === "brush" || S.tool === "eraser")) {
    ctx.beginPath();
    ctx.arc(S.cursor.x, S.cursor.y, S.brush / 2, 0, Math.PI * 2);
    ctx.strokeStyle = S.tool === "eraser" ? "#4fd2ff" : "#ffffff";
    ctx.stroke();
  }
}

function bindDrawing() {
  const c = $("#draft-canvas");
  c.addEventListener("pointerdown", (e) => {
    if (e.button !== 0 || !S.upload) return;
    e.preventDefault();
    c.focus({ preventScroll: true });
    const p = toVideo(e);
    S.cursor = p;
    if (S.tool === "brush" || S.tool === "eraser") {
      c.setPointerCapture(e.pointerId);
      startStroke(p);
    } else if (S.tool === "polygon") {
      addPolygonPoint(p, e);
    } else if (S.tool === "box") {
      c.setPointerCapture(e.pointerId);
      S.boxStart = S.boxEnd = p;
    }
    renderDraft();
  });
  c.addEventListener("pointermove", (e) => {
    if (!S.upload) return;
    const p = toVideo(e);
    S.cursor = p;
    if (S.stroke) continueStroke(p);
    if (S.boxStart) S.boxEnd = p;
    renderDraft();
  });
  const up = (e) => {
    if (S.stroke) endStroke();
    if (S.boxStart) finishBox(e.altKey);
  };
  c.addEventListener("pointerup", up);
  c.addEventListener("pointercancel", up);
  c.addEventListener("pointerleave", () => {
    S.cursor = null;
    renderDraft();
  });
  c.addEventListener("dblclick", (e) => {
    if (S.tool === "polygon") closePolygon(e.altKey);
  });
}

async function maskPng(n, object = cur()) {
  const { width: w, height: h } = S.upload;
  const src = object.masks.get(n).getContext("2d").getImageData(0, 0, w, h).data;
  const out = newCanvas(w, h);
  const ctx = out.getContext("2d");
  const img = ctx.createImageData(w, h);
  const d = img.data;
  for (let i = 0; i < src.length; i += 4) {
    const v = src[i + 3] >= 128 ? 255 : 0;
    d[i] = d[i + 1] = d[i + 2] = v;
    d[i + 3] = 255;
  }
  ctx.putImageData(img, 0, 0);
  return new Promise((resolve) => out.toBlob(resolve, "image/png"));
}

function renderKeyframes() {
  const ul = $("#keyframe-list");
  if (!S.upload) return;
  const frames = [...S.filled].sort((a, b) => a - b);
  if (!frames.length) {
    ul.replaceChildren(el("li", { class: "empty" }, "none yet: draw on a frame"));
    return;
  }
  ul.replaceChildren(
    ...frames.map((n) =>
      el(
        "li",
        { class: `chip${n === S.frame ? " current" : ""}` },
        el(
          "button",
          {
            type: "button",
            "aria-label": `Go to keyframe ${n}`,
            "aria-current": n === S.frame ? "true" : "false",
            onclick: () => showFrame(n),
          },
          `Frame ${n}`,
        ),
        el(
          "button",
          {
            type: "button",
            class: "x",
            "aria-label": `Remove the mask on frame ${n}`,
            title: "Remove this keyframe",
            onclick: () => removeKeyframe(n),
          },
          "×",
        ),
      ),
    ),
  );
}

function removeKeyframe(n) {
  S.masks.delete(n);
  S.filled.delete(n);
  cur().boxes.delete(n);
  S.versions.set(n, ++S.edits);
  S.undo.delete(n);
  if (n === S.frame) renderMask();
  renderKeyframes();
  renderObjects();
  drawTimeline();
  updateHint();
  updateSummary();
}

// --------------------------------------------------------------------------- timeline

function drawWaveform(ctx, peaks, x0, w, h, duration, colour) {
  if (!peaks || !peaks.max.length) return;
  let top = 0;
  for (let i = 0; i < peaks.max.length; i++) top = Math.max(top, peaks.max[i], -peaks.min[i]);
  const gain = top > 0 ? 0.92 / top : 1;
  const mid = h / 2;
  ctx.fillStyle = colour;
  for (let x = 0; x < w; x++) {
    const t0 = (x / w) * duration;
    const t1 = ((x + 1) / w) * duration;
    const i0 = Math.floor(t0 * peaks.rate);
    const i1 = Math.max(i0 + 1, Math.ceil(t1 * peaks.rate));
    let lo = 0;
    let hi = 0;
    for (let i = i0; i < i1 && i < peaks.max.length; i++) {
      hi = Math.max(hi, peaks.max[i]);
      lo = Math.min(lo, peaks.min[i]);
    }
    const y0 = mid - hi * gain * mid;
    const y1 = mid - lo * gain * mid;
    ctx.fillRect(x0 + x, y0, 1, Math.max(1, y1 - y0));
  }
}

function niceStep(duration, width) {
  const target = duration / Math.max(1, width / 90);
  for (const s of [0.1, 0.2, 0.5, 1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 1800, 3600]) {
    if (s >= target) return s;
  }
  return 7200;
}

function drawTimeline() {
  const canvas = $("#timeline");
  if (!S.upload || canvas.offsetParent === null) return;
  const { ctx, w, h } = fitCanvas(canvas);
  const D = S.upload.duration || 1;
  const xOf = (t) => (t / D) * w;
  ctx.clearRect(0, 0, w, h);
  for (const s of S.spans) {
    ctx.fillStyle = s.sign === "+" ? "rgba(79, 208, 138, 0.22)" : "rgba(255, 138, 79, 0.22)";
    ctx.fillRect(xOf(s.start), 0, xOf(s.end) - xOf(s.start), h);
    ctx.fillStyle = s.sign === "+" ? "#4fd08a" : "#ff8a4f";
    ctx.fillRect(xOf(s.start), 0, xOf(s.end) - xOf(s.start), 3);
  }
  if (S.spanDrag && S.spanDrag.moved) {
    const a = Math.min(S.spanDrag.t0, S.spanDrag.t1);
    const b = Math.max(S.spanDrag.t0, S.spanDrag.t1);
    ctx.fillStyle = S.spanSign === "+" ? "rgba(79, 208, 138, 0.35)" : "rgba(255, 138, 79, 0.35)";
    ctx.fillRect(xOf(a), 0, xOf(b) - xOf(a), h);
  }
  if (S.peaks) drawWaveform(ctx, S.peaks, 0, w, h, D, "#8e97ab");
  else {
    ctx.fillStyle = "#9aa1b2";
    ctx.font = "12px system-ui, sans-serif";
    ctx.fillText("Reading the sound…", 10, h / 2 + 4);
  }
  ctx.fillStyle = "#6b7386";
  ctx.font = "11px system-ui, sans-serif";
  const step = niceStep(D, w);
  for (let t = 0; t <= D + 1e-9; t += step) {
    ctx.fillRect(xOf(t), h - 6, 1, 6);
    ctx.fillText(`${+t.toFixed(1)}s`, xOf(t) + 3, h - 4);
  }
  const st = T.state;
  if (st && st.tracked.length) {
    // The frames with a tracked mask (dim), and those the last run tracked (bright).
    const fw = w / Math.max(1, S.upload.frames);
    ctx.fillStyle = "rgba(79, 210, 255, 0.35)";
    for (const [a, b] of st.tracked) ctx.fillRect(xOf(timeOf(a)), 10, (b - a + 1) * fw, 3);
    ctx.fillStyle = "#4fd2ff";
    for (const [a, b] of st.retracked) ctx.fillRect(xOf(timeOf(a)), 10, (b - a + 1) * fw, 3);
  }
  // Keyframes: the other objects' small, in their colours; the selected object's on top.
  const marker = (n, r) => {
    const x = xOf(timeOf(n));
    ctx.beginPath();
    ctx.moveTo(x - r, 0);
    ctx.lineTo(x + r, 0);
    ctx.lineTo(x, 1.6 * r);
    ctx.fill();
  };
  S.objects.forEach((o, i) => {
    if (i === S.current) return;
    ctx.fillStyle = lookOf(i).colour;
    for (const n of o.filled) marker(n, 3.5);
  });
  ctx.fillStyle = lookOf(S.current).colour;
  for (const n of S.filled) marker(n, 5);
  const x = xOf(timeOf(S.frame));
  ctx.fillStyle = "#4fd2ff";
  ctx.fillRect(x - 1, 0, 2, h);
}

function timelineTime(e) {
  const r = $("#timeline").getBoundingClientRect();
  return clamp(((e.clientX - r.left) / r.width) * S.upload.duration, 0, S.upload.duration);
}

function addSpan(sign, a, b) {
  const start = +Math.max(0, Math.min(a, b)).toFixed(2);
  const end = +Math.min(S.upload.duration, Math.max(a, b)).toFixed(2);
  if (end - start < 0.04) return false;
  S.spans.push({ sign, start, end });
  S.spans.sort((x, y) => x.start - y.start);
  renderSpans();
  drawTimeline();
  updateSummary();
  return true;
}

function renderSpans() {
  const ul = $("#span-list");
  if (!S.spans.length) {
    ul.replaceChildren(el("li", { class: "empty" }, "No spans: the whole clip is considered."));
    return;
  }
  ul.replaceChildren(
    ...S.spans.map((s, i) => {
      const label = `${s.sign === "+" ? "+ sounding" : "− silent"} ${s.start.toFixed(2)}–${s.end.toFixed(2)} s`;
      return el(
        "li",
        { class: `chip ${s.sign === "+" ? "plus" : "minus"}` },
        el("button", { type: "button", onclick: () => showFrame(frameAt(s.start)) }, label),
        el(
          "button",
          {
            type: "button",
            class: "x",
            "aria-label": `Remove span ${label}`,
            onclick: () => {
              S.spans.splice(i, 1);
              renderSpans();
              drawTimeline();
              updateSummary();
            },
          },
          "×",
        ),
      );
    }),
  );
}

function setSpanSign(sign) {
  S.spanSign = sign;
  for (const b of $$(".span-sign")) b.setAttribute("aria-pressed", String(b.dataset.sign === sign));
}

function bindTimeline() {
  const c = $("#timeline");
  c.addEventListener("pointerdown", (e) => {
    if (e.button !== 0 || !S.upload) return;
    c.setPointerCapture(e.pointerId);
    c.focus({ preventScroll: true });
    const t = timelineTime(e);
    S.spanDrag = { t0: t, t1: t, x0: e.clientX, moved: false };
  });
  c.addEventListener("pointermove", (e) => {
    if (!S.spanDrag) return;
    S.spanDrag.t1 = timelineTime(e);
    if (Math.abs(e.clientX - S.spanDrag.x0) > 4) S.spanDrag.moved = true;
    drawTimeline();
  });
  const up = () => {
    const d = S.spanDrag;
    S.spanDrag = null;
    if (!d) return;
    if (d.moved) addSpan(S.spanSign, d.t0, d.t1);
    else showFrame(frameAt(d.t0));
    drawTimeline();
  };
  c.addEventListener("pointerup", up);
  c.addEventListener("pointercancel", () => {
    S.spanDrag = null;
    drawTimeline();
  });
  c.addEventListener("keydown", (e) => {
    if (!S.upload) return;
    const fps = S.upload.fps;
    const moves = { ArrowLeft: -1, ArrowRight: 1, PageUp: -Math.round(fps), PageDown: Math.round(fps) };
    if (e.key in moves) showFrame(S.frame + moves[e.key] * (e.shiftKey ? 10 : 1));
    else if (e.key === "Home") showFrame(0);
    else if (e.key === "End") showFrame(S.upload.frames - 1);
    else return;
    e.preventDefault();
  });
}

// --------------------------------------------------------------------------- tracking preview

const RUNNING = ["queued", "running"];
const fmtRuns = (runs) => runs.map(([a, b]) => (a === b ? `${a}` : `${a}–${b}`)).join(", ");

function resetTracking() {
  if (T.poll) clearTimeout(T.poll);
  Object.assign(T, { state: null, sent: null, pending: null, poll: null, cache: new Map() });
  const c = $("#track-canvas");
  c.getContext("2d").clearRect(0, 0, c.width, c.height);
  TV.silhouette = null;
  delete c.dataset.frame;
  showError("#track-error", "");
}

/** Whether the keyframes or the tracker changed since the last finished preview (or it
 * tracked another object than the one selected). */
function trackingStale() {
  if (!T.sent || !cur() || T.sent.obj !== cur().id) return true;
  if (T.sent.tracker !== $("#tracker").value || T.sent.versions.size !== S.filled.size) return true;
  for (const n of S.filled) if (T.sent.versions.get(n) !== S.versions.get(n)) return true;
  return false;
}

/** A preview of this upload from an earlier visit (or still running): show where it is. */
async function loadTracking() {
  const id = S.upload.id;
  try {
    const st = await getJSON(`/v1/uploads/${id}/track`);
    if (S.upload.id !== id || st.state === "none") return;
    T.state = st;
    if (RUNNING.includes(st.state)) pollTracking(id);
    renderTracking();
    pumpTracked();
    drawTimeline();
  } catch (err) {
    showError("#track-error", err.message);
  }
}

async function previewTracking() {
  showError("#track-error", "");
  if (!S.upload) return;
  const frames = [...S.filled].sort((a, b) => a - b);
  if (!frames.length) {
    const what = several() ? cur().label || "the object" : "the object";
    showError("#track-error", `Draw ${what} first: paint over it on at least one frame.`);
    return;
  }
  const id = S.upload.id;
  const tracker = $("#tracker").value;
  const pending = { obj: cur().id, tracker, versions: new Map(frames.map((n) => [n, S.versions.get(n)])) };
  const button = $("#track-button");
  button.disabled = true;
  try {
    const form = new FormData();
    for (const n of frames) form.append("mask", await maskPng(n), `mask-frame-${n}.png`);
    form.append("spec", JSON.stringify({ mask_frames: frames, tracker }));
    const st = await getJSON(`/v1/uploads/${id}/track`, { method: "POST", body: form });
    if (S.upload.id !== id) return;
    T.pending = pending;
    T.state = st;
    renderTracking();
    pollTracking(id);
  } catch (err) {
    showError("#track-error", err.message);
    button.disabled = false;
  }
}

async function pollTracking(id) {
  if (T.poll) clearTimeout(T.poll);
  let st;
  try {
    st = await getJSON(`/v1/uploads/${id}/track`);
  } catch (err) {
    if (!S.upload || S.upload.id !== id) return;
    showError("#track-error", err.message);
    T.poll = setTimeout(() => pollTracking(id), 2000);
    return;
  }
  if (!S.upload || S.upload.id !== id) return;
  T.state = st;
  if (RUNNING.includes(st.state)) {
    T.poll = setTimeout(() => pollTracking(id), 300);
  } else {
    T.poll = null;
    if (st.state === "done" && T.pending) T.sent = T.pending;
    T.pending = null;
    showError("#track-error", st.error || "");
    pumpTracked();
  }
  renderTracking();
  drawTimeline();
}

function renderTracking() {
  if (!S.upload) return;
  const st = T.state;
  const busy = !!st && RUNNING.includes(st.state);
  const stale = trackingStale();
  const button = $("#track-button");
  const many = several();
  const same = !!T.sent && T.sent.obj === cur().id; // the preview shown is the selected object's
  button.disabled = busy || !S.filled.size || !stale;
  button.textContent = busy ? "Tracking…" : same ? "Re-track changes" : "Preview tracking";
  const bar = $("#track-progress");
  bar.hidden = !busy;
  if (busy) bar.value = st.progress;
  let text = "Preview tracking shows the mask the job will track, on every frame, before it runs.";
  if (busy) {
    text = st.state === "queued" ? "Waiting for the tracker…" : `Tracking: ${Math.round(st.progress * 100)}%, ${st.message}.`;
  } else if (st && st.state === "done" && !T.sent) {
    text = `Showing an earlier preview (keyframes ${st.keyframes.join(", ")}); press Preview tracking to track the keyframes drawn now.`;
  } else if (st && st.state === "done") {
    const took = st.seconds !== null ? ` in ${st.seconds.toFixed(1)} s` : "";
    if (!st.frames_retracked) text = "Nothing changed since the last preview.";
    else if (st.frames_retracked >= st.frames) text = `Tracked frames ${fmtRuns(st.retracked)} with ${st.tracker}${took}.`;
    else text = `Re-tracked frames ${fmtRuns(st.retracked)}${took}; the other frames kept their masks.`;
    text += stale
      ? " The keyframes changed since: press Re-track changes."
      : " Scrub to check the cyan mask; where it goes wrong, draw a correction on that frame and re-track.";
  } else if (st && st.state === "failed") {
    text = st.tracked.length ? "Tracking stopped; the frames tracked before keep their masks." : "";
  }
  const run = T.pending || T.sent;
  const tracked = run && S.objects.find((o) => o.id === run.obj);
  if (many && !busy && T.sent && !same && st && st.state === "done") {
    const whose = tracked ? tracked.label || "another object" : "an object removed since";
    text = `Showing the tracking of ${whose}; press Preview tracking to track ${cur().label || "this object"}.`;
  } else if (many && tracked && text) {
    text = `${tracked.label || "object"}: ${text}`;
  }
  const scope = $("#track-scope");
  scope.hidden = !many;
  scope.textContent = many
    ? `Preview tracking follows one object, the selected one (${cur().label || "unnamed"}); ` +
      `the job tracks all ${S.objects.length} objects together, a pixel belonging to at most one.`
    : "";
  const status = $("#track-status");
  status.textContent = text;
  status.dataset.state = st ? st.state : "none";
  status.dataset.run = st ? String(st.run) : "0";
  $("#track-warnings").replaceChildren(...((st && st.warnings) || []).map((w) => el("li", {}, w)));
}

const TV = { loading: false, silhouette: null, canvas: null };

/** Draw the tracked mask of the frame shown over the picture (cyan), fetching it when needed;
 * while one loads, later frames collapse into the newest, as for the pictures. */
async function pumpTracked() {
  if (TV.loading || !S.upload) return;
  TV.loading = true;
  try {
    for (;;) {
      const n = S.frame;
      const id = S.upload.id;
      const st = T.state;
      const run = st ? st.run : 0;
      let bmp = null;
      if (st && st.tracked.some(([a, b]) => a <= n && n <= b)) {
        const key = `${run}:${n}`;
        let blob = T.cache.get(key);
        try {
          if (!blob) {
            blob = await (await api(`/v1/uploads/${id}/track/masks/${n}.png`)).blob();
            T.cache.set(key, blob);
            if (T.cache.size > 300) T.cache.delete(T.cache.keys().next().value);
          }
          bmp = await createImageBitmap(blob);
        } catch (err) {
          if (err.status !== 404) showError("#track-error", err.message);
        }
      }
      if (S.upload && S.upload.id === id && S.frame === n && (T.state ? T.state.run : 0) === run) {
        paintTracked(bmp, n, run);
        break;
      }
    }
  } finally {
    TV.loading = false;
  }
}

function paintTracked(bmp, n, run) {
  const c = $("#track-canvas");
  const { width: w, height: h } = S.upload;
  let area = 0;
  TV.silhouette = null;
  if (bmp) {
    // The PNG (white = object) as coverage in alpha, like the drawn masks.
    const sil = TV.canvas && TV.canvas.width === w && TV.canvas.height === h ? TV.canvas : newCanvas(w, h);
    TV.canvas = sil;
    const ctx = sil.getContext("2d", { willReadFrequently: true });
    ctx.clearRect(0, 0, w, h);
    ctx.drawImage(bmp, 0, 0, w, h);
    const img = ctx.getImageData(0, 0, w, h);
    const d = img.data;
    for (let i = 0; i < d.length; i += 4) {
      const on = d[i] >= 128;
      area += on;
      d[i] = d[i + 1] = d[i + 2] = 255;
      d[i + 3] = on ? 255 : 0;
    }
    ctx.putImageData(img, 0, 0);
    TV.silhouette = sil;
  }
  repaintTracked();
  c.dataset.frame = bmp ? String(n) : "";
  c.dataset.run = String(run);
  c.dataset.area = String(area);
}

/** The tracked mask in cyan, outlined, at the selected object's opacity (the same look as
 * the drawn one but its own colour, so what was drawn and what was tracked stay apart). */
function repaintTracked() {
  if (!S.upload) return;
  paintOverlay($("#track-canvas"), TV.silhouette, { colour: TRACK_COLOUR, opacity: lookOf(S.current).opacity });
}

// --------------------------------------------------------------------------- submit

function currentMode() {
  return $$('input[name="mode"]').find((r) => r.checked).value;
}

const plural = (n, word) => `${n} ${word}${n === 1 ? "" : "s"}`;

function updateSummary() {
  if (!S.upload) return;
  const what = (o) => plural(o.filled.size, "keyframe") + (o.spans.length ? `, ${plural(o.spans.length, "span")}` : "");
  $("#submit-summary").textContent = several()
    ? `${S.objects.length} objects, one stem each: ` +
      S.objects.map((o, i) => `${o.label || `object ${i + 1}`} (${what(o)})`).join(", ") +
      ` on ${S.upload.name}.`
    : `${what(cur())} on ${S.upload.name}.`;
  renderTracking();
}

/** The first object that cannot be submitted, selected, with what to fix; else true. */
function objectsReady() {
  for (let i = 0; i < S.objects.length; i++) {
    const problem = several() ? labelProblem(i) : "";
    const o = S.objects[i];
    const name = o.label || `object ${i + 1}`;
    const draw = `Draw ${several() ? name : "the object"} first: paint over it on at least one frame.`;
    const message = problem || (o.filled.size ? "" : draw);
    if (!message) continue;
    if (i !== S.current) selectObject(i);
    showError("#submit-error", message);
    (problem ? $("#object-label") : $("#draft-canvas")).focus();
    return false;
  }
  return true;
}

/** The SAM Audio fields of the spec (candidates, ranker, predict_spans) the form asks for;
 * none when SAM Audio is not offered or the classical separator is chosen. */
function samAudioFields() {
  const box = $("#sam-options");
  if (box.hidden || box.disabled) return {};
  const out = {};
  const k = Number($("#candidates").value || 1);
  if (k !== 1) out.candidates = k; // the server says what is wrong with a bad number
  if (k > 1 && $("#ranker").value) out.ranker = $("#ranker").value;
  if ($("#predict-spans").checked) out.predict_spans = true;
  return out;
}

async function submitJob(e) {
  e.preventDefault();
  showError("#submit-error", "");
  if (!S.upload || !objectsReady()) return;
  const button = $("#submit");
  button.disabled = true;
  button.textContent = "Submitting…";
  try {
    const form = new FormData();
    form.append("upload", S.upload.id);
    const spec = {
      mode: currentMode(),
      separator: $("#separator").value,
      tracker: $("#tracker").value,
      audio_stream: +($("#audio-stream").value || 0),
    };
    Object.assign(spec, samAudioFields());
    const framesOf = (o) => [...o.filled].sort((a, b) => a - b);
    if (several()) {
      // One job, one stem per object: spec.objects, each object's masks as mask:<label>
      // parts in its keyframe order (worker/http/uploads.py).
      spec.objects = S.objects.map((o) => ({
        label: o.label,
        mask_frames: framesOf(o),
        text: o.text.trim() || null,
        spans: o.spans.map(spanText),
      }));
      for (const o of S.objects) {
        for (const n of framesOf(o)) {
          form.append(`mask:${o.label}`, await maskPng(n, o), `mask-${o.label}-frame-${n}.png`);
        }
      }
    } else {
      const frames = framesOf(cur());
      for (const n of frames) form.append("mask", await maskPng(n), `mask-frame-${n}.png`);
      Object.assign(spec, {
        mask_frames: frames,
        text: $("#text-prompt").value.trim() || null,
        spans: S.spans.map(spanText),
      });
    }
    form.append("spec", JSON.stringify(spec));
    const body = await getJSON("/v1/jobs", { method: "POST", body: form });
    openJob(body.id);
  } catch (err) {
    showError("#submit-error", err.message);
  } finally {
    button.disabled = false;
    button.textContent = "Separate";
  }
}

// --------------------------------------------------------------------------- jobs

const FINISHED = ["succeeded", "failed", "cancelled"];

function openJob(id) {
  if (S.pollTimer) clearTimeout(S.pollTimer);
  S.job = id;
  S.jobDoc = null;
  hideResults();
  $("#job-panel").hidden = false;
  $("#job-id").textContent = id;
  showError("#job-error", "");
  $("#job-warnings").replaceChildren();
  $("#job-state").textContent = "…";
  $("#job-state").className = "badge";
  $("#job-stage").textContent = "";
  $("#job-what").textContent = "";
  history.replaceState(null, "", `#job=${id}`);
  for (const b of $$("#jobs-list button[data-job]")) b.setAttribute("aria-current", String(b.dataset.job === id));
  pollJob(id);
}

async function pollJob(id) {
  let doc;
  try {
    doc = await getJSON(`/v1/jobs/${id}`);
  } catch (err) {
    if (S.job !== id) return;
    showError("#job-error", err.message);
    if (err.status !== 404) S.pollTimer = setTimeout(() => pollJob(id), 3000);
    return;
  }
  if (S.job !== id) return;
  const before = S.jobDoc ? S.jobDoc.state : null;
  S.jobDoc = doc;
  renderJob(doc);
  if (doc.state !== before || Date.now() - lastJobsRefresh > 3000) refreshJobs();
  if (FINISHED.includes(doc.state)) {
    if (doc.state === "succeeded") showResults(id);
  } else {
    S.pollTimer = setTimeout(() => pollJob(id), 700);
  }
}

function renderJob(doc) {
  const badge = $("#job-state");
  badge.textContent = doc.state;
  badge.className = `badge ${doc.state}`;
  let stage = "";
  if (doc.state === "queued") {
    // Waiting for a worker: before its first stage, or between two (progress already made).
    const where = doc.queue_position ? `#${doc.queue_position} in the queue` : "in the queue";
    stage = `${where}, waiting for a worker${doc.progress > 0 ? " for its next stage" : ""}`;
  } else if (doc.state === "running") stage = doc.stage ? `stage: ${doc.stage}` : "starting";
  else if (doc.backend) stage = `separator: ${doc.backend}`;
  $("#job-stage").textContent = stage;
  $("#job-stage").dataset.position = doc.queue_position ? String(doc.queue_position) : "";
  $("#job-what").textContent = [doc.name, MODE_TEXT[doc.mode] || doc.mode, objectsText(doc.objects)]
    .filter(Boolean)
    .join(" · ");
  $("#job-progress").value = doc.progress;
  $("#job-percent").textContent = `${Math.round(doc.progress * 100)}%`;
  showError("#job-error", doc.error || "");
  $("#job-warnings").replaceChildren(...(doc.warnings || []).map((w) => el("li", {}, w)));
  $("#cancel-job").hidden = FINISHED.includes(doc.state);
  $("#reopen-video").hidden = false;
}

async function cancelJob() {
  const id = S.job;
  if (!id) return;
  $("#cancel-job").disabled = true;
  try {
    const doc = await getJSON(`/v1/jobs/${id}`, { method: "DELETE" });
    if (S.job === id) {
      if (S.pollTimer) clearTimeout(S.pollTimer);
      S.jobDoc = doc;
      renderJob(doc);
      refreshJobs();
    }
  } catch (err) {
    showError("#job-error", err.message);
  } finally {
    $("#cancel-job").disabled = false;
  }
}

// --------------------------------------------------------------------------- results

const OUTPUT_NOTES = {
  "target.wav": "the object's sound (WAV)",
  "residual.wav": "everything else (WAV)",
  "masks.npz": "the tracked mask per frame",
  "preview.mp4": "picture with the tracked mask",
  "job.json": "parameters, timings, versions",
};

function outputNote(name) {
  if (OUTPUT_NOTES[name]) return OUTPUT_NOTES[name];
  const own = name.match(/^objects\/([^/]+)\/(.+)$/); // a several-object job's own outputs
  if (own) {
    const [, label, file] = own;
    if (file === "target.wav") return `${label}'s sound (WAV)`;
    if (file === "masks.npz") return `${label}'s tracked mask per frame`;
    if (file.startsWith("isolated.")) return `the video with only ${label}'s sound`;
    if (file.startsWith("removed.")) return `the video without ${label}'s sound`;
    return `${label}'s own`;
  }
  if (/^stems\.(mkv|mov)$/.test(name)) return "the picture, one audio track per object and the residual";
  if (name.startsWith("isolated.")) return "the video with only the object's sound";
  if (name.startsWith("removed.")) return "the video without the object's sound";
  return "";
}

/** The stems to listen to with the picture: A (the object's sound) and B (everything else)
 * for one object; for several, each object's stem in the colour the preview draws it in,
 * then everything else. Keys 1, 2, 3 ... pick them in this order. */
function resultStems(doc, links) {
  const objects = (doc && Array.isArray(doc.objects) ? doc.objects : []).filter(
    (o) => o && o.label && links[`objects/${o.label}/target.wav`],
  );
  if (!objects.length) {
    return [
      { key: "target", id: "target", name: "target.wav", title: "A · the object's sound", short: "A · target", colour: "#ff4fb0" },
      { key: "residual", id: "residual", name: "residual.wav", title: "B · everything else", short: "B · residual", colour: "#4fd2ff" },
    ];
  }
  return [
    ...objects.map((o, j) => ({
      key: `object:${o.label}`,
      id: `object-${j}`,
      name: `objects/${o.label}/target.wav`,
      title: o.label,
      short: o.label,
      label: o.label,
      colour: PREVIEW_PALETTE[j % PREVIEW_PALETTE.length],
    })),
    { key: "residual", id: "residual", name: "residual.wav", title: "everything else", short: "residual", colour: "#c7ccd6" },
  ];
}

const stemAudios = () => $$("#stem-audios audio");

function hideResults() {
  $("#results").hidden = true;
  S.results = null;
  const v = $("#preview-video");
  v.pause();
  for (const a of stemAudios()) a.pause();
}

/** One row per stem: a radio to listen to it (with its key) and its waveform. */
function renderStems(stems) {
  const list = $("#stem-list");
  const legend = list.querySelector("legend");
  list.replaceChildren(
    legend,
    ...stems.map((st, k) =>
      el(
        "div",
        { class: "stem-row", "data-stem": st.key },
        el(
          "label",
          { class: "stem-pick" },
          el("input", {
            type: "radio",
            name: "ab",
            value: st.key,
            onchange: () => {
              S.ab = st.key;
              applyAB();
            },
          }),
          swatchChip(st.colour),
          el("span", { class: "stem-title" }, st.title),
          k < 9 ? el("kbd", {}, String(k + 1)) : "",
        ),
        el("canvas", {
          id: `wave-${st.id}`,
          class: "wave",
          role: "img",
          "aria-label": `Waveform of ${st.short}`,
          onclick: (e) => {
            const r = e.currentTarget.getBoundingClientRect();
            $("#preview-video").currentTime = ((e.clientX - r.left) / r.width) * resultDuration();
            S.ab = st.key;
            applyAB();
          },
        }),
      ),
    ),
  );
  const keys = stems.slice(0, 9).map((_, k) => el("kbd", {}, String(k + 1)));
  const hint = $("#listen-hint");
  if (stems.length === 2 && stems[0].key === "target") {
    hint.replaceChildren(
      "Press play on the picture (or ",
      el("kbd", {}, "Space"),
      "); switch A/B while it plays with keys ",
      keys[0],
      " and ",
      keys[1],
      ", from anywhere on the page.",
    );
  } else {
    hint.replaceChildren(
      "Press play on the picture (or ",
      el("kbd", {}, "Space"),
      "): every stem plays along and you hear the one chosen; switch while it plays with keys ",
      keys[0],
      "–",
      keys[keys.length - 1],
      ", from anywhere on the page.",
    );
  }
}

async function showResults(id) {
  let links;
  try {
    links = (await getJSON(`/v1/jobs/${id}/links`)).outputs;
  } catch (err) {
    showError("#job-error", err.message);
    return;
  }
  if (S.job !== id) return;
  const stems = resultStems(S.jobDoc, links);
  S.results = { id, peaks: {}, stems };
  if (!stems.some((st) => st.key === S.ab)) S.ab = stems[0].key;
  const video = $("#preview-video");
  video.src = links["preview.mp4"] || "";
  const many = stems[0].key !== "target";
  $("#preview-caption").textContent = many
    ? "Each object's tracked mask over the picture, in its colour with its label. Check each follows its object."
    : "The tracked mask over the picture. Check it follows the object.";
  for (const a of stemAudios()) a.pause();
  $("#stem-audios").replaceChildren(
    ...stems.map((st) => {
      const a = el("audio", { id: `audio-${st.id}`, preload: "auto", "data-stem": st.key, "data-output": st.name });
      a.src = links[st.name] || "";
      return a;
    }),
  );
  renderStems(stems);
  applyAB();
  $("#downloads").replaceChildren(
    ...Object.entries(links).map(([name, url]) =>
      el(
        "li",
        {},
        el(
          "a",
          { href: url, download: name.replaceAll("/", "-"), "data-output": name },
          el("strong", {}, name),
          el("span", { class: "what" }, outputNote(name)),
        ),
      ),
    ),
  );
  $("#results").hidden = false;
  reveal($("#results-h"));
  drawWaves();
  for (const st of stems) {
    getJSON(`/v1/jobs/${id}/peaks/${st.name}`)
      .then((p) => {
        if (S.results && S.results.id === id) {
          S.results.peaks[st.key] = p;
          drawWaves();
        }
      })
      .catch((err) => showError("#job-error", err.message));
  }
}

function resultDuration() {
  const v = $("#preview-video");
  if (isFinite(v.duration) && v.duration > 0) return v.duration;
  const p = S.results && S.results.stems.map((st) => S.results.peaks[st.key]).find(Boolean);
  return p ? p.duration : 1;
}

function drawWaves() {
  if (!S.results) return;
  const t = $("#preview-video").currentTime || 0;
  for (const st of S.results.stems) {
    const canvas = $(`#wave-${st.id}`);
    if (!canvas || canvas.offsetParent === null) continue;
    const { ctx, w, h } = fitCanvas(canvas);
    ctx.clearRect(0, 0, w, h);
    const D = resultDuration();
    drawWaveform(ctx, S.results.peaks[st.key], 0, w, h, D, S.ab === st.key ? st.colour : "#5c6374");
    ctx.fillStyle = "#ffffff";
    ctx.fillRect((t / D) * w - 1, 0, 2, h);
  }
}

/** Listen to the stem chosen (S.ab); the others play along, muted. */
function applyAB() {
  for (const a of stemAudios()) a.muted = a.dataset.stem !== S.ab;
  for (const r of $$('input[name="ab"]')) r.checked = r.value === S.ab;
  drawWaves();
}

/** Key 1, 2, 3 ...: the k-th stem listed (before any results: 1 is A, 2 is B). */
function listenTo(k) {
  const keys = S.results ? S.results.stems.map((st) => st.key) : ["target", "residual"];
  if (k >= keys.length) return false;
  S.ab = keys[k];
  applyAB();
  return true;
}

function bindPlayers() {
  const v = $("#preview-video");
  const sync = (force) => {
    for (const a of stemAudios()) {
      if (!a.src) continue;
      if (force || Math.abs(a.currentTime - v.currentTime) > 0.08) a.currentTime = v.currentTime;
    }
  };
  v.addEventListener("play", () => {
    sync(true);
    for (const a of stemAudios()) if (a.src) a.play().catch(() => {});
    requestAnimationFrame(function tick() {
      drawWaves();
      if (!v.paused) requestAnimationFrame(tick);
    });
  });
  v.addEventListener("pause", () => stemAudios().forEach((a) => a.pause()));
  v.addEventListener("seeking", () => sync(true));
  v.addEventListener("seeked", () => {
    sync(true);
    drawWaves();
  });
  v.addEventListener("timeupdate", () => sync(false));
  v.addEventListener("ratechange", () => stemAudios().forEach((a) => (a.playbackRate = v.playbackRate)));
  v.addEventListener("loadedmetadata", drawWaves);
}

// --------------------------------------------------------------------------- wiring

/** Fold the open panel to one line once a video is open (or unfold it again). */
function foldOpen(folded) {
  const panel = $("#open-panel");
  panel.classList.add("opened");
  panel.classList.toggle("again", !folded);
  const b = $("#open-another");
  b.hidden = false;
  b.setAttribute("aria-expanded", String(!folded));
  b.textContent = folded ? "Open another video" : "Keep this video";
}

function bindOpen() {
  $("#open-another").addEventListener("click", () => {
    const folded = $("#open-panel").classList.contains("again");
    foldOpen(folded);
    if (!folded) $("#file-input").focus();
  });
  $("#file-input").addEventListener("change", (e) => {
    const f = e.target.files[0];
    if (f) openFile(f);
    e.target.value = "";
  });
  const drop = $("#drop");
  drop.addEventListener("dragover", (e) => {
    e.preventDefault();
    drop.classList.add("over");
  });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    const f = e.dataTransfer.files[0];
    if (f) openFile(f);
  });
  $("#media-open").addEventListener("click", () => {
    const path = $("#media-select").value;
    if (path) openMedia(path);
  });
}

function bindEditor() {
  for (const b of $$(".tool")) b.addEventListener("click", () => setTool(b.dataset.tool));
  $("#brush-size").addEventListener("input", (e) => setBrush(+e.target.value));
  $("#undo").addEventListener("click", undo);
  $("#clear-frame").addEventListener("click", clearFrame);
  $("#show-mask").addEventListener("change", (e) => $("#stage").classList.toggle("hide-mask", !e.target.checked));
  $("#show-track").addEventListener("change", (e) => $("#stage").classList.toggle("hide-track", !e.target.checked));
  $("#track-button").addEventListener("click", previewTracking);
  $("#tracker").addEventListener("change", renderTracking);
  $("#frame-slider").addEventListener("input", (e) => showFrame(+e.target.value));
  $("#frame-number").addEventListener("change", (e) => showFrame(+e.target.value));
  $("#prev-frame").addEventListener("click", () => showFrame(S.frame - 1));
  $("#next-frame").addEventListener("click", () => showFrame(S.frame + 1));
  for (const b of $$(".span-sign")) b.addEventListener("click", () => setSpanSign(b.dataset.sign));
  $("#span-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const a = parseFloat($("#span-start").value);
    const b = parseFloat($("#span-end").value);
    if (!isFinite(a) || !isFinite(b) || !addSpan(S.spanSign, a, b)) {
      showError("#submit-error", "A span needs a start and an end at least 0.04 s apart, inside the clip.");
      return;
    }
    $("#span-start").value = $("#span-end").value = "";
  });
  $("#audio-stream").addEventListener("change", loadPeaks);
  $("#box-form").addEventListener("submit", addTypedBox);
  $("#box-form").addEventListener("input", previewTypedBox);
  $("#box-numbers").addEventListener("toggle", () => {
    S.typedBox = $("#box-numbers").open && S.upload ? typedBox().box || null : null;
    renderDraft();
  });
  bindLook();
  $("#draft-canvas").addEventListener("keydown", (e) => {
    const moves = { ArrowLeft: -1, ArrowRight: 1 };
    if (e.key in moves) {
      showFrame(S.frame + moves[e.key] * (e.shiftKey ? 10 : 1));
      e.preventDefault();
    }
  });
  bindDrawing();
  bindTimeline();
  bindObjects();
}

/** Whether keys typed at ``t`` are text (a field, a select's type-ahead), not shortcuts. */
function typing(t) {
  if (!t || !t.matches) return false;
  if (t.isContentEditable || t.matches("textarea, select")) return true;
  const plain = ["checkbox", "radio", "range", "button", "submit", "reset", "color", "file"];
  return t.matches("input") && !plain.includes(t.type);
}

/** One keyboard scheme for the whole page (listed in the "Keys" dialog and docs/web.md):
 * each key means one thing wherever the focus is, except while typing in a field. */
function bindShortcuts() {
  document.addEventListener("keydown", (e) => {
    if (e.defaultPrevented || e.isComposing) return;
    if (document.querySelector("dialog[open]")) return; // a dialog has the keyboard (Esc closes)
    const t = e.target;
    if (typing(t)) return;
    const key = e.key;
    const lower = key.length === 1 ? key.toLowerCase() : key;
    if ((e.ctrlKey || e.metaKey) && !e.altKey && lower === "z") {
      if (!S.upload) return;
      undo();
      e.preventDefault();
      return;
    }
    if (e.ctrlKey || e.metaKey || e.altKey) return;
    const onControl = t.matches && t.matches("button, a[href], summary, input, video, audio");
    if (key === "?") return void (showKeys(), e.preventDefault());
    if (/^[1-9]$/.test(key) && listenTo(+key - 1)) return void e.preventDefault();
    if (key === " " && !onControl && S.results && !$("#results").hidden) {
      const v = $("#preview-video");
      if (v.paused) v.play().catch(() => {});
      else v.pause();
      return void e.preventDefault();
    }
    if (!S.upload) return;
    if (S.poly.length && !onControl && key === "Enter") closePolygon(false);
    else if (S.poly.length && key === "Escape") cancelPolygon();
    else if (S.poly.length && key === "Backspace") {
      S.poly.pop();
      renderDraft();
    } else {
      const tool = { b: "brush", e: "eraser", p: "polygon", x: "box" }[lower];
      const step = e.shiftKey || key === "<" || key === ">" ? 10 : 1; // Shift+, Shift+. type < >
      if (tool) setTool(tool);
      else if (key === "[") setBrush(S.brush * 0.8);
      else if (key === "]") setBrush(S.brush * 1.25 + 1);
      else if (key === "," || key === "<") showFrame(S.frame - step);
      else if (key === "." || key === ">") showFrame(S.frame + step);
      else if (lower === "m") {
        const box = $("#show-mask");
        box.checked = !box.checked;
        box.dispatchEvent(new Event("change"));
      } else return;
    }
    e.preventDefault();
  });
}

function showKeys() {
  const d = $("#keys-dialog");
  if (!d.open) d.showModal();
  $("#keys-close").focus();
}

function bindToken() {
  $("#token-button").addEventListener("click", async () => {
    if (await askToken("")) {
      refreshJobs();
      loadMedia();
    }
  });
  $("#token-forget").addEventListener("click", () => {
    S.token = "";
    localStorage.removeItem(TOKEN_KEY);
    $("#token-input").value = "";
    $("#token-dialog").close("");
  });
}

async function restoreFromHash() {
  const m = location.hash.match(/^#(job|upload)=([\w-]+)$/);
  if (!m) return;
  if (m[1] === "job") openJob(m[2]);
  else openWith(() => getJSON(`/v1/uploads/${m[2]}`), "Reopening the video…");
}

async function init() {
  bindOpen();
  bindEditor();
  bindShortcuts();
  bindPlayers();
  bindToken();
  $("#job-form").addEventListener("submit", submitJob);
  $("#cancel-job").addEventListener("click", cancelJob);
  $("#reopen-video").addEventListener("click", () => S.job && openJobVideo(S.job));
  $("#refresh-jobs").addEventListener("click", refreshJobs);
  $("#more-jobs").addEventListener("click", () => {
    JOBS.shown += JOBS_SHOWN;
    renderJobs();
  });
  $("#keys-button").addEventListener("click", showKeys);
  window.addEventListener("resize", () => {
    drawTimeline();
    drawWaves();
    renderOverlay(true);
    repaintTracked();
  });
  try {
    await loadOptions();
  } catch (err) {
    showError("#open-error", `The server did not answer: ${err.message}`);
    return;
  }
  if (S.options.auth && !S.token) await askToken("");
  await refreshJobs();
  loadMedia();
  restoreFromHash();
  setInterval(() => {
    if (!document.hidden) refreshJobs();
  }, 10000);
  document.body.dataset.ready = "true";
}

document.addEventListener("DOMContentLoaded", init);

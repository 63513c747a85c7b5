// The job page: the video beside its protocol steps, a span timeline, the similarity
// heatmap with the alignment path, and downloads. Everything is fetched from this origin.
import {
  ApiError,
  PENDING,
  api,
  captureTokenFromFragment,
  formatDate,
  formatTime,
  getToken,
  h,
  sameOriginPath,
  statusBadge,
  stepColor,
  wireSignIn,
} from "./app.js";
import { mountCorrections } from "./corrections.js";
import { mountDeviations } from "./deviations.js";

const POLL_MS = 2000;
const LINK_REFRESH_MARGIN_MS = 60_000; // renew the signed media links this long before they expire
const LINK_RETRY_MS = 10_000;
const $ = (sel) => document.querySelector(sel);

const state = {
  jobId: "",
  job: null,
  data: null, // normalised alignment, see normalise()
  currentStep: -2, // -2 = never rendered, -1 = between steps
  pendingSeek: null,
  pollTimer: null,
  linkTimer: null,
  videoLinkExpires: 0, // expires_at (unix s) of the signed link the <video> plays from
};

// ---------------------------------------------------------------- data

function jobIdFromLocation() {
  const match = window.location.pathname.match(/\/jobs\/([^/]+)\/?$/);
  if (match) return decodeURIComponent(match[1]);
  return new URLSearchParams(window.location.search).get("job") || "";
}

const num = (v) => (v === null || v === undefined || v === "" || !Number.isFinite(Number(v)) ? null : Number(v));
const normText = (s) => String(s ?? "").toLowerCase().replace(/[^a-z0-9µ]+/g, " ").trim();

/** Temporal IoU of two [start, end] spans; a missing span scores 0. */
export function iou(a, b) {
  if (!a || !b) return 0;
  const inter = Math.max(0, Math.min(a[1], b[1]) - Math.max(a[0], b[0]));
  const union = Math.max(a[1], b[1]) - Math.min(a[0], b[0]);
  return union > 0 ? inter / union : 0;
}

function stepSpan(step) {
  if (Array.isArray(step.span)) return [num(step.span[0]), num(step.span[1])];
  return [num(step.start ?? step.start_s), num(step.end ?? step.end_s)];
}

/** Match annotation rows to protocol step indices (by index, then text, then position). */
function matchAnnotations(rawAnnotations, steps) {
  const rows = Array.isArray(rawAnnotations) ? rawAnnotations : [];
  const byText = new Map(steps.map((s) => [normText(s.text), s.index]));
  const out = [];
  rows.forEach((row, position) => {
    const start = num(row.start ?? row.start_s);
    const end = num(row.end ?? row.end_s);
    if (start === null || end === null) return;
    let index = null;
    if (num(row.index) !== null) index = num(row.index);
    else if (num(row.step_index) !== null) index = num(row.step_index);
    else if (typeof row.step === "number") index = row.step;
    else if (byText.has(normText(row.step))) index = byText.get(normText(row.step));
    else if (rows.length === steps.length) index = position;
    if (index !== null && index >= 0 && index < steps.length) out.push({ index, start, end, text: row.step });
  });
  return out;
}

/** Bring the alignment JSON into one shape, tolerant of field-name variants. */
export function normalise(raw, job) {
  const rawSteps = Array.isArray(raw.steps) ? raw.steps : [];
  const spans = Array.isArray(raw.spans) ? raw.spans : null;
  const steps = rawSteps.map((s, i) => {
    const step = typeof s === "string" ? { text: s } : s;
    let [start, end] = stepSpan(step);
    if (spans && (start === null || end === null) && spans[i]) [start, end] = [num(spans[i][0]), num(spans[i][1])];
    const found = start !== null && end !== null && end >= start && step.found !== false;
    return {
      index: i,
      text: String(step.text ?? step.step ?? `Step ${i + 1}`),
      start: found ? start : null,
      end: found ? end : null,
      score: num(step.score),
      iou: num(step.iou),
      notes: Array.isArray(step.notes) ? step.notes.map(String).filter((n) => n.trim()) : [],
    };
  });
  const similarity = Array.isArray(raw.similarity) ? raw.similarity : null;
  const segmentSeconds = num(raw.segment_seconds) || 5;
  let duration = num(raw.duration_s ?? raw.duration) || 0;
  if (!duration) duration = Math.max(0, ...steps.map((s) => s.end || 0));
  const numSegments = similarity && similarity[0] ? similarity[0].length : Array.isArray(raw.labels) ? raw.labels.length : Math.ceil(duration / segmentSeconds);
  let labels = Array.isArray(raw.labels) ? raw.labels.map((v) => Number(v)) : null;
  if (!labels) {
    labels = Array.from({ length: numSegments }, (_, n) => {
      const t = (n + 0.5) * segmentSeconds;
      const step = steps.find((s) => s.start !== null && t >= s.start && t < s.end);
      return step ? step.index : -1;
    });
  }
  const perStepGt = raw.annotation_spans ?? raw.gt_spans ?? raw.ground_truth_spans;
  const annotations = Array.isArray(perStepGt)
    ? perStepGt.flatMap((span, index) => (Array.isArray(span) && index < steps.length ? [{ index, start: Number(span[0]), end: Number(span[1]) }] : []))
    : matchAnnotations(raw.annotations ?? raw.ground_truth ?? raw.gt, steps);
  const gtByStep = new Map(annotations.map((a) => [a.index, a]));
  if (annotations.length) {
    for (const step of steps) {
      const gt = gtByStep.get(step.index);
      if (step.iou === null && gt) step.iou = iou(step.start === null ? null : [step.start, step.end], [gt.start, gt.end]);
      if (step.iou === null && !gt) step.iou = null;
    }
  }
  const scored = steps.filter((s) => gtByStep.has(s.index));
  const miou = num(raw.miou ?? raw.metrics?.miou) ?? (scored.length ? scored.reduce((acc, s) => acc + (s.iou || 0), 0) / scored.length : null);
  const result = (job && job.result) || {};
  return {
    title: raw.title || result.title || job?.title || "",
    steps,
    similarity,
    labels,
    numSegments,
    segmentSeconds,
    duration,
    annotations,
    gtByStep,
    miou,
    weights: raw.weights || result.weights || "",
    modelId: raw.model_id || result.model_id || "",
    method: raw.method || result.method || "",
    score: num(raw.score ?? result.score),
    alignerVersion: raw.aligner_version || result.aligner_version || "",
  };
}

// ---------------------------------------------------------------- page state

function setStatus(kind, ...content) {
  const box = $("#job-status");
  box.className = `message ${kind}`;
  box.replaceChildren(...content);
}

function showSignIn(message) {
  const form = $("#signin");
  form.hidden = false;
  setStatus("error", message);
  form.querySelector("input").focus();
}

async function loadJob() {
  window.clearTimeout(state.pollTimer);
  if (!state.jobId) {
    $("#job-title").textContent = "No job id in the address";
    setStatus("error", "Open a job from the job list.");
    return;
  }
  if (!getToken()) {
    $("#job-title").textContent = "Sign in to see this job";
    showSignIn("This page needs your lab token.");
    return;
  }
  let job;
  try {
    job = await api(`/v1/jobs/${encodeURIComponent(state.jobId)}`);
  } catch (err) {
    if (err instanceof ApiError && (err.status === 401 || err.status === 403)) {
      $("#job-title").textContent = "Sign in to see this job";
      showSignIn(`The token was not accepted (HTTP ${err.status}).`);
    } else if (err instanceof ApiError && err.status === 404) {
      $("#job-title").textContent = "Job not found";
      setStatus("error", "No such job for your lab.");
    } else {
      setStatus("error", `Could not load the job: ${err.message}. Retrying…`);
      state.pollTimer = window.setTimeout(loadJob, POLL_MS * 2);
    }
    return;
  }
  $("#signin").hidden = true;
  state.job = job;
  renderJobHead(job);
  if ((job.result && job.result.weights === "random-demo") || /random demo/i.test(job.warning || "")) $("#demo-banner").hidden = false;
  if (PENDING.has(job.status)) {
    setStatus("info", statusBadge(job.status), ` Waiting for the alignment (attempt ${job.attempts ?? 1}); this page refreshes by itself.`);
    state.pollTimer = window.setTimeout(loadJob, POLL_MS);
    return;
  }
  if (job.status !== "succeeded") {
    setStatus("error", statusBadge(job.status), ` ${job.error || "The job did not succeed."}`, job.attempts ? ` (after ${job.attempts} attempt${job.attempts === 1 ? "" : "s"})` : "");
    return;
  }
  setStatus("success", statusBadge(job.status));
  try {
    const raw = await api(`/v1/jobs/${encodeURIComponent(state.jobId)}/alignment.json?similarity=1`);
    state.data = { ...normalise(raw, job), raw };
  } catch (err) {
    setStatus("error", `The job succeeded but its alignment could not be loaded: ${err.message}`);
    return;
  }
  renderViewer();
  mountCorrections({ jobId: state.jobId, raw: state.data.raw, data: state.data, video: $("#video"), seekTo });
  mountDeviations({ section: $("#deviations"), raw: state.data.raw, data: state.data, seekTo });
}

function formatProgress(p) {
  if (typeof p === "number") return `${Math.round(p <= 1 ? p * 100 : p)}%`;
  if (p && typeof p === "object" && p.total) return `${p.done ?? 0}/${p.total}`;
  return String(p);
}

function renderJobHead(job) {
  const title = job.title || (job.result && job.result.title) || `Job ${state.jobId}`;
  $("#job-title").textContent = title;
  document.title = `${title}: BioVL aligner`;
  const parts = [`Job ${state.jobId.length > 12 ? `${state.jobId.slice(0, 12)}…` : state.jobId}`];
  if (job.created_at) parts.push(`submitted ${formatDate(job.created_at)}`);
  if (PENDING.has(job.status) && job.stage) parts.push(`stage ${job.stage}${job.progress !== null && job.progress !== undefined ? ` ${formatProgress(job.progress)}` : ""}`);
  $("#job-meta").textContent = parts.join(" · ");
}

// ---------------------------------------------------------------- viewer

function renderViewer() {
  const d = state.data;
  if (d.title) {
    $("#job-title").textContent = d.title;
    document.title = `${d.title}: BioVL aligner`;
  }
  if (d.weights === "random-demo") $("#demo-banner").hidden = false;
  $("#viewer").hidden = false;

  setupVideo();
  renderSteps();
  renderTimeline();
  renderSummary();
  setDownloadLinks();
  scheduleLinkRefresh();
  drawHeatmap();
  new ResizeObserver(() => drawHeatmap()).observe($(".heatmap-box"));
  updateCurrent();
}

// ---------------------------------------------------------------- signed media links

/** One of the job's signed links (GET /v1/jobs/{id} -> links): video, json, csv or vtt. */
function mediaUrl(key) {
  return sameOriginPath(state.job.links[key]);
}

function setDownloadLinks() {
  $("#dl-json").href = mediaUrl("json");
  $("#dl-csv").href = mediaUrl("csv");
  $("#dl-vtt").href = mediaUrl("vtt");
}

async function refreshLinks() {
  const job = await api(`/v1/jobs/${encodeURIComponent(state.jobId)}`);
  state.job.links = job.links;
  setDownloadLinks();
  scheduleLinkRefresh();
}

/** Renew the links shortly before they expire, so downloads keep working on a page left open. */
function scheduleLinkRefresh() {
  window.clearTimeout(state.linkTimer);
  const expires = Number(state.job.links.expires_at) * 1000;
  const wait = Math.max(LINK_RETRY_MS, expires - Date.now() - LINK_REFRESH_MARGIN_MS);
  state.linkTimer = window.setTimeout(() => refreshLinks().catch(() => scheduleLinkRefresh()), wait);
}

/** Point the <video> at the current signed link, keeping its position (and playing state). */
function loadVideoSource(video) {
  const resume = video.readyState > 0 ? { at: video.currentTime, play: !video.paused } : null;
  state.videoLinkExpires = Number(state.job.links.expires_at);
  video.src = mediaUrl("video");
  if (resume) {
    state.pendingSeek = resume.at;
    if (resume.play) video.play().catch(() => {});
  }
}

function setupVideo() {
  const video = $("#video");
  video.replaceChildren(
    h("track", { kind: "chapters", label: "Protocol steps", srclang: "en", src: mediaUrl("vtt"), default: true }),
    h("track", { kind: "captions", label: "Protocol steps (captions)", srclang: "en", src: mediaUrl("vtt") }),
  );
  // Chapters are not rendered; "hidden" makes the browser load the cues anyway.
  if (video.textTracks[0]) video.textTracks[0].mode = "hidden";
  loadVideoSource(video);
  video.addEventListener("timeupdate", updateCurrent);
  video.addEventListener("seeked", updateCurrent);
  video.addEventListener("loadedmetadata", () => {
    if (!state.data.duration && Number.isFinite(video.duration)) {
      state.data.duration = video.duration;
      renderTimeline();
    }
    if (state.pendingSeek !== null) {
      video.currentTime = state.pendingSeek;
      state.pendingSeek = null;
    }
  });
  video.addEventListener("error", () => {
    if (Date.now() / 1000 >= state.videoLinkExpires) {
      // The signed link ran out while the video was streaming: renew it once and carry on.
      refreshLinks().then(
        () => loadVideoSource(video),
        (err) => setStatus("error", `Video: its link expired and could not be renewed (${err.message}); reload the page.`),
      );
      return;
    }
    const code = video.error ? video.error.code : 0;
    const why = code === 4 ? "this browser cannot play this video's format" : "the video could not be loaded";
    setStatus("error", `Video: ${why}. The alignment is still shown; download the video or the WebVTT to view it elsewhere.`);
  });
}

function seekTo(seconds) {
  const video = $("#video");
  const t = Math.max(0, seconds);
  if (video.readyState === 0) state.pendingSeek = t;
  else video.currentTime = t;
  updateCurrent(t);
}

function spanText(step) {
  if (step.start === null) return "not found";
  return `${formatTime(step.start)} – ${formatTime(step.end)} (${Math.round(step.end - step.start)} s)`;
}

function renderSteps() {
  const d = state.data;
  const items = d.steps.map((step) => {
    const found = step.start !== null;
    const gt = d.gtByStep.get(step.index);
    const button = h(
      "button",
      {
        type: "button",
        class: "step-button",
        disabled: found ? null : true,
        "aria-disabled": found ? null : "true",
        dataset: { index: step.index, start: found ? step.start : "" },
        onclick: () => found && seekTo(step.start),
      },
      h("span", { class: "step-num", "aria-hidden": "true" }, step.index + 1),
      h(
        "span",
        { class: "step-body" },
        h("span", { class: "step-text" }, step.text),
        h(
          "span",
          { class: "step-meta" },
          found ? h("span", { class: "span-time" }, spanText(step)) : h("span", { class: "badge badge-missing" }, "not found"),
          step.score !== null ? h("span", { class: "score", title: "mean similarity over the step's segments" }, `sim ${step.score.toFixed(3)}`) : null,
          gt ? h("span", { class: `badge badge-iou ${iouClass(step.iou)}`, title: `annotated ${formatTime(gt.start)} – ${formatTime(gt.end)}` }, `IoU ${Math.round((step.iou || 0) * 100)}%`) : null,
        ),
      ),
    );
    button.style.setProperty("--step-color", stepColor(step.index));
    const notes = step.notes.length
      ? h("ul", { class: "step-notes", "aria-label": `Notes on step ${step.index + 1}` }, ...step.notes.map((n) => h("li", { class: "step-note" }, n)))
      : null;
    return h("li", { class: found ? "step" : "step step-missing" }, button, notes);
  });
  $("#steps").replaceChildren(...items);
}

function iouClass(value) {
  if (value === null || value === undefined) return "";
  return value >= 0.5 ? "iou-good" : value > 0 ? "iou-mid" : "iou-zero";
}

function timelineRow(label, spans, kind) {
  const d = state.data;
  const dur = d.duration || 1;
  const track = h("div", { class: `tl-track tl-${kind}` });
  for (const s of spans) {
    const left = (100 * s.start) / dur;
    const width = Math.max(0.3, (100 * (s.end - s.start)) / dur);
    const step = d.steps[s.index];
    let title = `Step ${s.index + 1}: ${step.text} (${formatTime(s.start)} – ${formatTime(s.end)})`;
    if (kind === "gt" && step.iou !== null) title += `, IoU ${Math.round(step.iou * 100)}%`;
    const block = h("div", { class: "tl-block", title, dataset: { index: s.index } }, String(s.index + 1));
    block.style.left = `${left}%`;
    block.style.width = `${width}%`;
    block.style.background = stepColor(s.index, kind === "gt" ? 62 : 45);
    track.append(block);
  }
  return h("div", { class: "tl-row" }, h("span", { class: "tl-label" }, label), track);
}

function renderTimeline() {
  const d = state.data;
  const predicted = d.steps.filter((s) => s.start !== null).map((s) => ({ index: s.index, start: s.start, end: s.end }));
  const rows = [timelineRow("predicted", predicted, "pred")];
  if (d.annotations.length) {
    const label = d.miou !== null ? `annotated · mIoU ${Math.round(d.miou * 100)}%` : "annotated";
    rows.push(timelineRow(label, d.annotations, "gt"));
  }
  const playhead = h("div", { class: "tl-playhead", "aria-hidden": "true" });
  const axis = h("div", { class: "tl-axis", "aria-hidden": "true" }, h("span", {}, formatTime(0, 0)), h("span", {}, formatTime(d.duration, 0)));
  const tracks = h("div", { class: "tl-tracks" }, ...rows, playhead);
  tracks.addEventListener("click", (event) => {
    const track = event.target.closest(".tl-track") || tracks.querySelector(".tl-track");
    const rect = track.getBoundingClientRect();
    const frac = Math.min(1, Math.max(0, (event.clientX - rect.left) / rect.width));
    seekTo(frac * d.duration);
  });
  $("#timeline").replaceChildren(tracks, axis);
}

function renderSummary() {
  const d = state.data;
  const job = state.job || {};
  const found = d.steps.filter((s) => s.start !== null).length;
  const entries = [
    ["Steps found", `${found} of ${d.steps.length}`],
    ["Duration", formatTime(d.duration)],
    ["Segments", `${d.numSegments} × ${d.segmentSeconds} s`],
    ["Aligner", d.method || "–"],
    ["Model", d.modelId || "–"],
    ["Weights", d.weights || "–"],
  ];
  if (d.score !== null) entries.push(["Objective", d.score.toFixed(3)]);
  if (d.miou !== null) entries.push(["mIoU vs annotations", `${(d.miou * 100).toFixed(1)}%`]);
  if (d.alignerVersion) entries.push(["Aligner version", d.alignerVersion]);
  if (job.attempts) entries.push(["Attempts", String(job.attempts)]);
  $("#summary").replaceChildren(...entries.flatMap(([k, v]) => [h("dt", {}, k), h("dd", {}, v)]));
}

/** The step whose predicted span contains t, or -1. */
function stepAt(t) {
  const step = state.data.steps.find((s) => s.start !== null && t >= s.start && t < s.end);
  return step ? step.index : -1;
}

function updateCurrent(override) {
  const d = state.data;
  if (!d) return;
  const video = $("#video");
  const t = typeof override === "number" ? override : video.currentTime || 0;
  const dur = d.duration || 1;
  const tracks = $(".tl-tracks");
  if (tracks) tracks.style.setProperty("--pct", String(Math.min(1, Math.max(0, t / dur))));
  const hp = $("#heatmap-playhead");
  if (hp && state.heatmapGeom) {
    const g = state.heatmapGeom;
    hp.style.left = `${g.left + (Math.min(t, dur) / (d.numSegments * d.segmentSeconds)) * g.width}px`;
  }
  const current = stepAt(t);
  if (current === state.currentStep) return;
  state.currentStep = current;
  for (const button of document.querySelectorAll("#steps .step-button")) {
    if (Number(button.dataset.index) === current) button.setAttribute("aria-current", "step");
    else button.removeAttribute("aria-current");
  }
  $("#now-playing").textContent = current >= 0 ? `Now: step ${current + 1} of ${d.steps.length}, ${d.steps[current].text}` : `Now: between steps (${formatTime(t)})`;
  if (current >= 0 && !video.paused) keepVisible(document.querySelector(`#steps .step-button[data-index="${current}"]`));
}

/** Scroll the step list (not the page) so that `el` is visible. */
function keepVisible(el) {
  const list = $(".steps-panel");
  if (!el || list.scrollHeight <= list.clientHeight) return;
  const top = el.offsetTop - list.offsetTop;
  if (top < list.scrollTop || top + el.offsetHeight > list.scrollTop + list.clientHeight) {
    list.scrollTop = Math.max(0, top - list.clientHeight / 3);
  }
}

// ---------------------------------------------------------------- heatmap

const VIRIDIS = [
  [68, 1, 84], [72, 40, 120], [62, 74, 137], [49, 104, 142], [38, 130, 142],
  [31, 158, 137], [53, 183, 121], [109, 205, 89], [180, 222, 44], [253, 231, 37],
];

function viridis(x) {
  const v = Math.min(1, Math.max(0, x)) * (VIRIDIS.length - 1);
  const i = Math.min(VIRIDIS.length - 2, Math.floor(v));
  const f = v - i;
  const a = VIRIDIS[i];
  const b = VIRIDIS[i + 1];
  return [0, 1, 2].map((c) => Math.round(a[c] + (b[c] - a[c]) * f));
}

function drawHeatmap() {
  const d = state.data;
  const canvas = $("#heatmap");
  const box = $(".heatmap-box");
  if (!d || !canvas || box.clientWidth === 0) return;
  const K = d.steps.length;
  const N = d.numSegments;
  const sim = d.similarity;
  const margin = { left: 34, right: 6, top: 6, bottom: 22 };
  const cssWidth = box.clientWidth;
  const rowH = Math.max(6, Math.min(22, Math.floor(320 / Math.max(1, K))));
  const cssHeight = margin.top + margin.bottom + rowH * K;
  const dpr = window.devicePixelRatio || 1;
  canvas.width = Math.round(cssWidth * dpr);
  canvas.height = Math.round(cssHeight * dpr);
  canvas.style.width = `${cssWidth}px`;
  canvas.style.height = `${cssHeight}px`;
  const ctx = canvas.getContext("2d");
  ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  ctx.clearRect(0, 0, cssWidth, cssHeight);
  const plotW = cssWidth - margin.left - margin.right;
  const cellW = plotW / Math.max(1, N);
  state.heatmapGeom = { left: margin.left, width: plotW, top: margin.top, cellW, rowH, margin };

  let lo = Infinity;
  let hi = -Infinity;
  if (sim) {
    for (const row of sim) for (const v of row) if (Number.isFinite(v)) { lo = Math.min(lo, v); hi = Math.max(hi, v); }
  }
  const range = hi > lo ? hi - lo : 1;
  for (let k = 0; k < K; k++) {
    for (let n = 0; n < N; n++) {
      const v = sim && sim[k] ? sim[k][n] : null;
      const [r, g, b] = Number.isFinite(v) ? viridis((v - lo) / range) : [200, 200, 200];
      ctx.fillStyle = `rgb(${r},${g},${b})`;
      ctx.fillRect(margin.left + n * cellW, margin.top + k * rowH, Math.ceil(cellW + 0.5), rowH);
    }
  }

  // Annotated spans: dashed boxes in each step's row.
  ctx.setLineDash([4, 3]);
  ctx.lineWidth = 1.5;
  ctx.strokeStyle = "#ffffff";
  for (const a of d.annotations) {
    const x0 = margin.left + (a.start / d.segmentSeconds) * cellW;
    const x1 = margin.left + (a.end / d.segmentSeconds) * cellW;
    ctx.strokeRect(x0, margin.top + a.index * rowH + 0.75, Math.max(1, x1 - x0), rowH - 1.5);
  }
  ctx.setLineDash([]);

  // The alignment path: one point per labelled segment, broken at background.
  const runs = [];
  let run = [];
  d.labels.forEach((k, n) => {
    if (k >= 0 && k < K) run.push([margin.left + (n + 0.5) * cellW, margin.top + (k + 0.5) * rowH]);
    else if (run.length) { runs.push(run); run = []; }
  });
  if (run.length) runs.push(run);
  for (const [width, color] of [[4, "rgba(255,255,255,0.95)"], [2, "#d7263d"]]) {
    ctx.lineWidth = width;
    ctx.strokeStyle = color;
    ctx.lineJoin = "round";
    ctx.lineCap = "round";
    for (const pts of runs) {
      ctx.beginPath();
      pts.forEach(([x, y], i) => (i ? ctx.lineTo(x, y) : ctx.moveTo(x, y)));
      if (pts.length === 1) ctx.lineTo(pts[0][0] + 0.01, pts[0][1]);
      ctx.stroke();
    }
  }

  // Axes: step numbers on y, time on x.
  ctx.fillStyle = getComputedStyle(document.body).color;
  ctx.font = "11px system-ui, sans-serif";
  ctx.textAlign = "right";
  ctx.textBaseline = "middle";
  const every = Math.ceil(12 / rowH);
  for (let k = 0; k < K; k += every) ctx.fillText(String(k + 1), margin.left - 4, margin.top + (k + 0.5) * rowH);
  ctx.textBaseline = "top";
  const total = N * d.segmentSeconds;
  const maxTicks = Math.max(2, Math.min(10, Math.floor(plotW / 70)));
  const step = [1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200].find((s) => total / s <= maxTicks) || 7200;
  const xOf = (t) => margin.left + (t / total) * plotW;
  ctx.textAlign = "center";
  for (let t = 0; t <= total + 1e-6; t += step) {
    const x = xOf(t);
    ctx.textAlign = x - margin.left < 14 ? "left" : cssWidth - x < 20 ? "right" : "center";
    ctx.fillText(formatTime(t, 0), x, margin.top + K * rowH + 5);
  }

  let playhead = $("#heatmap-playhead");
  if (!playhead) {
    playhead = h("div", { id: "heatmap-playhead", class: "heatmap-playhead", "aria-hidden": "true" });
    box.append(playhead);
  }
  playhead.style.top = `${margin.top}px`;
  playhead.style.height = `${rowH * K}px`;

  const pathDesc = d.steps.filter((s) => s.start !== null).length;
  canvas.setAttribute(
    "aria-label",
    `Heatmap of similarity between ${K} steps (rows) and ${N} segments of ${d.segmentSeconds} s (columns), ` +
      `from ${Number.isFinite(lo) ? lo.toFixed(3) : "?"} (dark) to ${Number.isFinite(hi) ? hi.toFixed(3) : "?"} (bright); ` +
      `the red line is the alignment path through ${pathDesc} steps.`,
  );
  canvas.dataset.drawn = "true";
  $("#heatmap-legend").textContent = sim
    ? `Dark = low, bright = high similarity (${lo.toFixed(3)} … ${hi.toFixed(3)}). Red line: the alignment path (each segment's step).${d.annotations.length ? " Dashed boxes: annotated spans." : ""} Click a cell to jump to that segment.`
    : "The similarity matrix is not available for this job; only the alignment path is drawn.";
  updateCurrent();
}

function heatmapCell(event) {
  const g = state.heatmapGeom;
  const d = state.data;
  if (!g || !d) return null;
  const rect = event.currentTarget.getBoundingClientRect();
  const n = Math.floor((event.clientX - rect.left - g.left) / g.cellW);
  const k = Math.floor((event.clientY - rect.top - g.top) / g.rowH);
  if (n < 0 || n >= d.numSegments || k < 0 || k >= d.steps.length) return null;
  return { n, k };
}

function wireHeatmap() {
  const canvas = $("#heatmap");
  canvas.addEventListener("click", (event) => {
    const cell = heatmapCell(event);
    if (cell) seekTo(cell.n * state.data.segmentSeconds);
  });
  canvas.addEventListener("mousemove", (event) => {
    const cell = heatmapCell(event);
    const d = state.data;
    if (!cell) {
      canvas.removeAttribute("title");
      return;
    }
    const v = d.similarity && d.similarity[cell.k] ? d.similarity[cell.k][cell.n] : null;
    const t0 = cell.n * d.segmentSeconds;
    canvas.title = `Step ${cell.k + 1}, segment ${cell.n + 1} (${formatTime(t0, 0)}–${formatTime(Math.min(t0 + d.segmentSeconds, d.duration || Infinity), 0)})` + (Number.isFinite(v) ? `: similarity ${v.toFixed(3)}` : "");
  });
}

// ---------------------------------------------------------------- keyboard

function wireKeys() {
  document.addEventListener("keydown", (event) => {
    if (!state.data || event.altKey || event.ctrlKey || event.metaKey) return;
    if (event.target.closest("input, textarea, select, video")) return;
    const found = state.data.steps.filter((s) => s.start !== null);
    if (!found.length) return;
    const t = $("#video").currentTime;
    let target = null;
    if (event.key === "n") target = found.find((s) => s.start > t + 0.25);
    else if (event.key === "p") target = [...found].reverse().find((s) => s.start < t - 1) || found[0];
    if (target) {
      event.preventDefault();
      seekTo(target.start);
    }
  });
}

function init() {
  captureTokenFromFragment();
  state.jobId = jobIdFromLocation();
  wireSignIn($("#signin"), loadJob);
  wireHeatmap();
  wireKeys();
  loadJob();
}

init();

// Corrections in the viewer: drag a step's edges on the edit timeline, set its start or end at
// the playhead, mark it "not performed"; undo; save as a new annotation version
// (PUT /v1/jobs/{id}/annotations) that the recording's group learns from. Also shows each
// step's confidence and the steps the aligner judged not performed.
import { api, formatTime, h, stepColor } from "./app.js";

const MIN_SPAN_S = 0.5;
const SNAP_S = 0.1;
const $ = (sel, root = document) => root.querySelector(sel);

let undoCurrent = null; // the mounted editor's undo, for Ctrl+Z (one listener per page)
document.addEventListener("keydown", (event) => {
  if ((event.ctrlKey || event.metaKey) && event.key === "z" && undoCurrent && !event.target.closest("input, textarea")) {
    event.preventDefault();
    undoCurrent();
  }
});

const snap = (t) => Math.round(t / SNAP_S) * SNAP_S;
const copy = (spans) => spans.map((s) => (s ? [s[0], s[1]] : null));
const same = (a, b) => JSON.stringify(a) === JSON.stringify(b);

/** The corrections editor for one job; `raw` is its alignment JSON, `data` the viewer's view of it. */
export function mountCorrections({ jobId, raw, data, video, seekTo }) {
  const root = $("#corrections");
  if (!root || !data) return;
  const url = `/v1/jobs/${encodeURIComponent(jobId)}/annotations`;
  const duration = data.duration || 1;
  const confidence = (raw.steps || []).map((s) => (Number.isFinite(s.confidence) ? s.confidence : null));
  const ed = {
    spans: data.steps.map((s) => (s.start !== null ? [s.start, s.end] : null)),
    saved: null, // spans as last saved (or loaded)
    remembered: [], // the span a step had before "not performed", to toggle back
    history: [],
    selected: 0,
    drag: null,
  };
  decorateSteps(raw, confidence);

  const status = h("p", { class: "hint corr-status", id: "corr-status", "aria-live": "polite" });
  const undo = h("button", { type: "button", class: "secondary", id: "corr-undo", disabled: true, onclick: undoLast }, "Undo");
  const save = h("button", { type: "button", id: "corr-save", onclick: saveAll }, "Save correction");
  const track = h("div", { class: "corr-track", id: "corr-track" });
  const list = h("ol", { class: "corr-steps", id: "corr-steps" });
  root.replaceChildren(
    h("h2", { class: "small-heading", id: "corrections-heading" }, "Correct the alignment"),
    h("p", { class: "hint" }, "Drag a block's edges, or select a step and use the playhead. Saving teaches the next recordings of this protocol."),
    track,
    list,
    h("div", { class: "row corr-tools" }, undo, save, status),
  );
  root.hidden = false;
  track.addEventListener("pointermove", onDrag);
  track.addEventListener("pointerup", endDrag);
  track.addEventListener("pointercancel", endDrag);
  undoCurrent = undoLast;

  api(url)
    .then((body) => {
      if (body.source === "correction" && Array.isArray(body.spans)) {
        ed.spans = copy(body.spans);
        ed.saved = copy(body.spans);
        setStatus(`Correction v${body.version} saved by ${body.lab} on ${new Date(body.saved_at * 1000).toLocaleString()}.`);
      } else {
        ed.saved = copy(ed.spans);
      }
      root.dataset.loaded = "true";
      render();
    })
    .catch((err) => setStatus(`Could not load the saved corrections: ${err.message}`));
  render();

  function setStatus(text) {
    status.textContent = text;
  }

  function edit(change) {
    const before = copy(ed.spans);
    change();
    if (same(before, ed.spans)) return;
    ed.history.push(before);
    render();
  }

  function undoLast() {
    if (!ed.history.length) return;
    ed.spans = ed.history.pop();
    render();
  }

  function setEdge(k, edge, t) {
    t = Math.min(duration, Math.max(0, snap(t)));
    edit(() => {
      let span = ed.spans[k] ? [...ed.spans[k]] : null;
      if (edge === "start") span = span ? [t, Math.max(span[1], t + MIN_SPAN_S)] : [t, t + MIN_SPAN_S * 4];
      else span = span ? [Math.min(span[0], t - MIN_SPAN_S), t] : [t - MIN_SPAN_S * 4, t];
      ed.spans[k] = [Math.max(0, span[0]), Math.min(duration, span[1])];
    });
  }

  function toggleNotPerformed(k) {
    edit(() => {
      if (ed.spans[k]) {
        ed.remembered[k] = ed.spans[k];
        ed.spans[k] = null;
      } else {
        const t = video.currentTime || 0;
        ed.spans[k] = ed.remembered[k] || [Math.max(0, t), Math.min(duration, t + MIN_SPAN_S * 4)];
      }
    });
  }

  function startDrag(event, k, edge) {
    event.preventDefault();
    event.stopPropagation();
    ed.selected = k;
    ed.drag = { k, edge, before: copy(ed.spans) };
    track.setPointerCapture(event.pointerId);
  }

  function onDrag(event) {
    if (!ed.drag) return;
    const rect = track.getBoundingClientRect();
    const t = snap(Math.min(1, Math.max(0, (event.clientX - rect.left) / rect.width)) * duration);
    const span = ed.spans[ed.drag.k];
    if (ed.drag.edge === "start") span[0] = Math.min(t, span[1] - MIN_SPAN_S);
    else span[1] = Math.max(t, span[0] + MIN_SPAN_S);
    span[0] = Math.max(0, span[0]);
    span[1] = Math.min(duration, span[1]);
    renderTrack();
  }

  function endDrag() {
    if (!ed.drag) return;
    if (!same(ed.drag.before, ed.spans)) ed.history.push(ed.drag.before);
    ed.drag = null;
    render();
  }

  async function saveAll() {
    save.disabled = true;
    setStatus("Saving…");
    try {
      const body = await api(url, {
        method: "PUT",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify(ed.spans.map((s) => (s ? [Number(s[0].toFixed(3)), Number(s[1].toFixed(3))] : null))),
      });
      ed.saved = copy(body.spans);
      ed.spans = copy(body.spans);
      root.dataset.savedVersion = String(body.version);
      setStatus(`Saved as correction v${body.version}; the next recordings of this protocol learn from it.`);
    } catch (err) {
      setStatus(`Not saved: ${err.message}`);
    }
    render();
  }

  function render() {
    renderTrack();
    renderList();
    undo.disabled = !ed.history.length;
    save.disabled = same(ed.spans, ed.saved);
    root.dataset.dirty = String(!same(ed.spans, ed.saved));
  }

  function renderTrack() {
    const blocks = ed.spans.flatMap((span, k) => {
      if (!span) return [];
      const block = h(
        "div",
        { class: `corr-block${k === ed.selected ? " corr-selected" : ""}`, dataset: { index: k }, title: `Step ${k + 1}: ${formatTime(span[0])} – ${formatTime(span[1])}` },
        h("span", { class: "corr-handle corr-start", dataset: { index: k, edge: "start" }, title: "drag the start" }),
        h("span", { class: "corr-label" }, String(k + 1)),
        h("span", { class: "corr-handle corr-end", dataset: { index: k, edge: "end" }, title: "drag the end" }),
      );
      block.style.left = `${(100 * span[0]) / duration}%`;
      block.style.width = `${Math.max(0.5, (100 * (span[1] - span[0])) / duration)}%`;
      block.style.background = stepColor(k, 55);
      for (const handle of block.querySelectorAll(".corr-handle")) {
        handle.addEventListener("pointerdown", (event) => startDrag(event, k, handle.dataset.edge));
      }
      block.addEventListener("click", () => {
        ed.selected = k;
        seekTo(span[0]);
        render();
      });
      return [block];
    });
    track.replaceChildren(...blocks);
  }

  function renderList() {
    const items = data.steps.map((step, k) => {
      const span = ed.spans[k];
      const conf = confidence[k];
      return h(
        "li",
        { class: `corr-step${k === ed.selected ? " corr-selected" : ""}${span ? "" : " corr-not-performed"}`, dataset: { index: k } },
        h(
          "button",
          { type: "button", class: "corr-pick", "aria-pressed": String(k === ed.selected), onclick: () => { ed.selected = k; render(); } },
          `${k + 1}. ${step.text}`,
        ),
        h("span", { class: "corr-span" }, span ? `${formatTime(span[0])} – ${formatTime(span[1])}` : "not performed"),
        conf !== null ? h("span", { class: "badge corr-conf", title: "the aligner's confidence in this step" }, `${Math.round(conf * 100)}%`) : null,
        h("button", { type: "button", class: "secondary corr-start-here", onclick: () => setEdge(k, "start", video.currentTime || 0) }, "Start here"),
        h("button", { type: "button", class: "secondary corr-end-here", onclick: () => setEdge(k, "end", video.currentTime || 0) }, "End here"),
        h("button", { type: "button", class: "secondary corr-skip", "aria-pressed": String(!span), onclick: () => toggleNotPerformed(k) }, "Not performed"),
      );
    });
    list.replaceChildren(...items);
  }
}

/** Add confidence and "not performed" to the viewer's step list (group alignments). */
function decorateSteps(raw, confidence) {
  const grouped = raw.method === "group";
  for (const button of document.querySelectorAll("#steps .step-button")) {
    const k = Number(button.dataset.index);
    const meta = $(".step-meta", button);
    if (!meta) continue;
    const missing = $(".badge-missing", meta);
    if (missing && grouped) {
      missing.textContent = "not performed";
      missing.classList.add("badge-not-performed");
    }
    if (confidence[k] !== null && confidence[k] !== undefined) {
      meta.append(h("span", { class: "badge badge-confidence", title: "the aligner's confidence in this step" }, `confidence ${Math.round(confidence[k] * 100)}%`));
    }
  }
  if (raw.group) {
    const g = raw.group;
    const note = $("#group-note");
    if (note) {
      note.textContent = g.recordings
        ? `Aligned with ${g.recordings} other recording${g.recordings === 1 ? "" : "s"} of this protocol (${g.annotated} annotated, ${g.corrections} corrected).`
        : "The first recording of this protocol in your lab: aligned from the step texts alone.";
      note.hidden = false;
    }
  }
}

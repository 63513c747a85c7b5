// The step editor of the upload form: the steps the preview found (POST /v1/protocol/preview),
// which the lab can edit, merge, split, delete, reorder and add before submitting. What the job
// aligns is this list: value() is sent as the `steps` field of POST /v1/jobs (JSON
// {"title", "steps": [{"text", "notes", "details"}]}) whenever it differs from the preview;
// the uploaded protocol text is archived beside it.
import { h } from "./app.js";

const SENTENCE_END = /[.!?。！？]\s*/g;

/** Where to split `text` when the caret gives no place: after its first sentence, else null. */
function sentenceSplit(text) {
  SENTENCE_END.lastIndex = 0;
  let m;
  while ((m = SENTENCE_END.exec(text)) !== null) {
    const at = m.index + m[0].length;
    if (at > 0 && at < text.trim().length) return at;
  }
  return null;
}

function copyStep(step) {
  return { text: String(step.text || ""), line: step.line ?? null, notes: [...(step.notes || [])], details: [...(step.details || [])] };
}

export class StepsEditor {
  /** `root`: the element the editor draws into; `onChange(editor)` after every edit. */
  constructor(root, { onChange } = {}) {
    this.root = root;
    this.onChange = onChange || (() => {});
    this.title = "";
    this.problem = "";
    this.original = [];
    this.steps = [];
  }

  /** Show the preview's steps ({title, steps: [{text, line, notes, details}]}); `problem`: why
   * there are none (a protocol the parser cannot read), so the lab writes them here instead. */
  load(preview, problem = "") {
    this.title = preview.title || "";
    this.problem = problem;
    this.original = (preview.steps || []).map(copyStep);
    this.steps = this.original.map(copyStep);
    if (!this.steps.length) this.steps.push({ text: "", line: null, notes: [], details: [] });
    this.render(problem ? 0 : null);
  }

  /** Forget the steps (no protocol chosen). */
  clear() {
    this.title = "";
    this.original = [];
    this.steps = [];
    this.root.replaceChildren();
    delete this.root.dataset.loaded;
  }

  get loaded() {
    return this.root.dataset.loaded === "true";
  }

  /** True when the list differs from what the preview found. */
  edited() {
    const key = (list) => JSON.stringify(list.map((s) => [s.text.trim(), s.notes, s.details]));
    return key(this.steps) !== key(this.original);
  }

  /** Problems that stop a submission: empty steps, or no step at all. */
  problems() {
    if (!this.steps.length) return ["The step list is empty: add a step or choose the protocol again."];
    return this.steps
      .map((s, i) => (s.text.trim() ? null : `Step ${i + 1} is empty: write it or delete it.`))
      .filter(Boolean);
  }

  /** The list as the API takes it. */
  value() {
    return {
      title: this.title,
      steps: this.steps.map((s) => ({ text: s.text.trim(), notes: [...s.notes], details: [...s.details] })),
    };
  }

  edit(index, text) {
    this.steps[index].text = text;
    this.changed(false);
  }

  /** Step `index` and the one after it become one step (texts, notes and details joined). */
  merge(index) {
    const [a, b] = [this.steps[index], this.steps[index + 1]];
    if (!b) return;
    const glue = /[\u3000-\u9fff]$/.test(a.text.trim()) ? "" : " ";
    a.text = `${a.text.trim()}${glue}${b.text.trim()}`;
    a.notes.push(...b.notes);
    a.details.push(...b.details);
    this.steps.splice(index + 1, 1);
    this.changed(true, index);
  }

  /** Split step `index` at `at` (a character offset); notes and details stay with the second part. */
  split(index, at) {
    const step = this.steps[index];
    const text = step.text;
    let cut = at;
    if (!(cut > 0 && cut < text.trimEnd().length)) cut = sentenceSplit(text);
    if (cut === null) return false;
    const first = text.slice(0, cut).trim();
    const second = text.slice(cut).trim();
    if (!first || !second) return false;
    this.steps.splice(index, 1, { text: first, line: step.line, notes: [], details: [] }, { ...copyStep(step), text: second });
    this.changed(true, index + 1);
    return true;
  }

  remove(index) {
    this.steps.splice(index, 1);
    this.changed(true, Math.min(index, this.steps.length - 1));
  }

  move(index, by) {
    const to = index + by;
    if (to < 0 || to >= this.steps.length) return;
    const [step] = this.steps.splice(index, 1);
    this.steps.splice(to, 0, step);
    this.changed(true, to);
  }

  add() {
    this.steps.push({ text: "", line: null, notes: [], details: [] });
    this.changed(true, this.steps.length - 1);
  }

  reset() {
    this.steps = this.original.map(copyStep);
    this.changed(true);
  }

  changed(redraw, focusIndex = null) {
    if (redraw) this.render(focusIndex);
    else this.renderSummary();
    this.onChange(this);
  }

  renderSummary() {
    const summary = this.root.querySelector(".steps-summary");
    if (!summary) return;
    const n = this.steps.length;
    summary.textContent = `${this.title ? `${this.title}: ` : ""}${n} step${n === 1 ? "" : "s"}${this.edited() ? " (edited)" : ""}. Check them before uploading: edit, merge, split, delete or reorder steps; the job aligns this list.`;
    this.root.dataset.edited = String(this.edited());
    const reset = this.root.querySelector(".step-reset");
    if (reset) reset.disabled = !this.edited();
  }

  render(focusIndex = null) {
    const n = this.steps.length;
    const rows = this.steps.map((step, i) => this.row(step, i, n));
    this.root.replaceChildren(
      this.problem ? h("p", { class: "message error" }, this.problem) : null,
      h("p", { class: "preview-summary steps-summary", "aria-live": "polite" }),
      h("ol", { class: "preview-steps steps-list" }, rows),
      h(
        "div",
        { class: "row steps-actions" },
        h("button", { type: "button", class: "secondary step-add", onclick: () => this.add() }, "Add a step"),
        h("button", { type: "button", class: "secondary step-reset", onclick: () => this.reset() }, "Undo all edits"),
      ),
    );
    this.root.dataset.loaded = "true";
    this.renderSummary();
    if (focusIndex !== null && focusIndex >= 0) {
      const area = this.root.querySelector(`.step-row[data-index="${focusIndex}"] .step-text`);
      if (area) area.focus();
    }
  }

  row(step, i, n) {
    const label = `Step ${i + 1}`;
    const area = h("textarea", {
      class: "step-text preview-text",
      rows: String(Math.min(6, Math.max(1, Math.ceil(step.text.length / 70)))),
      "aria-label": `${label} text`,
      spellcheck: "true",
    });
    area.textContent = step.text; // the preview's text; .value follows the edits
    area.value = step.text;
    area.addEventListener("input", () => this.edit(i, area.value));
    const button = (cls, text, title, onclick, disabled = false) =>
      h("button", { type: "button", class: `secondary step-btn ${cls}`, title, "aria-label": `${title} (${label})`, onclick, disabled }, text);
    return h(
      "li",
      { class: "preview-step step-row", dataset: { index: String(i) } },
      h(
        "div",
        { class: "step-line" },
        area,
        h(
          "div",
          { class: "step-tools", role: "group", "aria-label": `${label} tools` },
          button("step-up", "↑", "Move up", () => this.move(i, -1), i === 0),
          button("step-down", "↓", "Move down", () => this.move(i, 1), i === n - 1),
          button("step-merge", "Merge ↓", "Merge with the next step", () => this.merge(i), i === n - 1),
          button("step-split", "Split", "Split at the cursor", () => {
            if (this.split(i, area.selectionStart)) return;
            area.setCustomValidity("Put the cursor where the step should be split.");
            area.reportValidity();
            area.setCustomValidity("");
          }),
          button("step-delete", "Delete", "Delete this step", () => this.remove(i)),
        ),
      ),
      step.line ? h("span", { class: "hint preview-line" }, `line ${step.line}`) : null,
      step.details.length ? h("ul", { class: "step-details" }, step.details.map((d) => h("li", { class: "step-detail" }, d))) : null,
      step.notes.length ? h("ul", { class: "step-notes" }, step.notes.map((t) => h("li", { class: "step-note" }, t))) : null,
    );
  }
}

// The deviation report on the job page: what this recording did differently from the lab's
// other recordings of the protocol (steps not performed, out of order, much longer or shorter
// than usual, stretches matching no step), each with a confidence, and per step the lab's
// usual duration range beside this recording's (the alignment JSON's "deviations" and each
// step's "lab"; see biovl_core/align/deviations.py).
import { formatTime, h } from "./app.js";

const KIND_LABEL = {
  not_performed: "not performed",
  out_of_order: "out of order",
  longer: "longer than usual",
  shorter: "shorter than usual",
  unmatched: "matches no step",
};

function stepName(steps, k) {
  return `Step ${k + 1}: ${steps[k] ? steps[k].text : ""}`;
}

/** One finding as a sentence (without the step name). */
export function describe(e, steps) {
  switch (e.kind) {
    case "not_performed":
      return e.lab_skip_rate !== undefined ? `the lab skips it in ${Math.round(e.lab_skip_rate * 100)}% of recordings` : "no run of frames showed it";
    case "out_of_order":
      return `done on the other side of ${(e.swapped_with || []).map((k) => `step ${k + 1}`).join(", ")} (the lab's order in ${Math.round((e.lab_usual_share ?? 1) * 100)}% of recordings)`;
    case "longer":
    case "shorter": {
      const range = e.lab_range_s ? `${formatTime(e.lab_range_s[0])} – ${formatTime(e.lab_range_s[1])}` : "–";
      return `${formatTime(e.seconds)} here, ${e.ratio.toFixed(1)}× the lab's usual ${formatTime(e.lab_median_s)} (range ${range})`;
    }
    case "unmatched":
      return `${formatTime(e.start)} – ${formatTime(e.end)}: frames like none of the protocol's steps`;
    default:
      return "";
  }
}

function findingItem(e, steps, seekTo) {
  const at = e.kind === "unmatched" ? e.start : steps[e.step] && steps[e.step].start;
  const title = e.kind === "unmatched" ? "Off-protocol stretch" : stepName(steps, e.step);
  return h(
    "li",
    { class: `dev dev-${e.kind}`, dataset: { kind: e.kind, step: e.step ?? "" } },
    h("span", { class: `badge dev-kind dev-kind-${e.kind}` }, KIND_LABEL[e.kind] || e.kind),
    h(
      "button",
      { type: "button", class: "dev-step", disabled: at === null || at === undefined ? true : null, onclick: () => at !== null && at !== undefined && seekTo(at) },
      title,
    ),
    h("span", { class: "dev-detail" }, describe(e, steps)),
    h("span", { class: "badge dev-conf", title: "how sure the aligner is of this finding" }, `${Math.round(e.confidence * 100)}%`),
  );
}

/** A bar: the lab's 10th-90th percentile range, its median, and this recording's duration. */
function rangeBar(lab, seconds, scale) {
  const bar = h("span", { class: "dev-bar", "aria-hidden": "true" });
  if (lab.range_s) {
    const band = h("span", { class: "dev-band" });
    band.style.left = `${(100 * lab.range_s[0]) / scale}%`;
    band.style.width = `${Math.max(1, (100 * (lab.range_s[1] - lab.range_s[0])) / scale)}%`;
    bar.append(band);
  }
  if (lab.median_s !== null) {
    const tick = h("span", { class: "dev-median" });
    tick.style.left = `${(100 * lab.median_s) / scale}%`;
    bar.append(tick);
  }
  if (seconds !== null) {
    const dot = h("span", { class: "dev-here" });
    dot.style.left = `${Math.min(100, (100 * seconds) / scale)}%`;
    bar.append(dot);
  }
  return bar;
}

function rangeTable(raw, steps, flagged) {
  const rows = (raw.steps || []).map((s, k) => ({ lab: s.lab || null, seconds: steps[k] && steps[k].start !== null ? steps[k].end - steps[k].start : null }));
  const scale = Math.max(1, ...rows.flatMap((r) => [r.seconds || 0, r.lab && r.lab.range_s ? r.lab.range_s[1] : 0])) * 1.05;
  const body = rows.map((r, k) => {
    const lab = r.lab || {};
    const range = lab.range_s ? `${formatTime(lab.range_s[0])} – ${formatTime(lab.range_s[1])}` : "–";
    return h(
      "tr",
      { class: flagged.has(k) ? "dev-flagged" : "", dataset: { index: k } },
      h("th", { scope: "row", class: "dev-name" }, `${k + 1}. ${steps[k] ? steps[k].text : ""}`),
      h("td", { class: "dev-this" }, r.seconds === null ? "not performed" : formatTime(r.seconds)),
      h("td", { class: "dev-usual" }, lab.median_s !== null && lab.median_s !== undefined ? formatTime(lab.median_s) : "–"),
      h("td", { class: "dev-range" }, range),
      h("td", { class: "dev-skip" }, lab.skip_rate !== undefined ? `${Math.round(lab.skip_rate * 100)}%` : "–"),
      h("td", { class: "dev-bar-cell" }, rangeBar(lab, r.seconds, scale)),
    );
  });
  return h(
    "table",
    { class: "dev-table" },
    h("caption", { class: "hint" }, "Each step's duration here beside the lab's usual: median and range (10th–90th percentile) over its other recordings; the bar shows the range, the median (tick) and this recording (dot)."),
    h("thead", {}, h("tr", {}, ...["Step", "Here", "Lab median", "Lab range", "Lab skips", ""].map((t) => h("th", { scope: "col" }, t)))),
    h("tbody", {}, ...body),
  );
}

/** Fill ``section`` from the alignment JSON ``raw``; stays hidden for a recording aligned alone. */
export function mountDeviations({ section, raw, data, seekTo }) {
  const findings = Array.isArray(raw.deviations) ? raw.deviations : null;
  const hasLab = (raw.steps || []).some((s) => s.lab);
  if (!section || (findings === null && !hasLab)) return;
  const flagged = new Set((findings || []).filter((e) => e.step !== undefined).map((e) => e.step));
  const list = findings && findings.length
    ? h("ol", { id: "dev-list", class: "dev-list" }, ...findings.map((e) => findingItem(e, data.steps, seekTo)))
    : h("p", { id: "dev-none", class: "hint" }, "Nothing out of the ordinary: every step was done, in the lab's order, within its usual time.");
  const parts = [h("h2", { id: "deviations-heading", class: "small-heading" }, "Compared with the lab's other recordings"), list];
  if (hasLab) parts.push(rangeTable(raw, data.steps, flagged));
  section.replaceChildren(...parts);
  section.hidden = false;
  section.dataset.loaded = "true";
}

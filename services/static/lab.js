// The lab page's protocol panel: per protocol of the signed-in lab, which steps vary most
// across its recordings (skipped, out of order, or more than 2x / under 1/2 their usual time),
// most varying first, with each step's usual duration and range: the reproducibility signal
// across a lab's repeats (GET /v1/protocols; services/lab_report.py).
import { api, formatTime, getToken, h, loadFailureText } from "./app.js";

const pct = (x) => `${Math.round((x || 0) * 100)}%`;

/** A stacked bar of the three shares (skipped, out of order, duration off). */
function shareBar(step) {
  const bar = h("span", { class: "var-bar", "aria-hidden": "true" });
  for (const [key, cls] of [["skipped_share", "var-skip"], ["out_of_order_share", "var-order"], ["duration_off_share", "var-duration"]]) {
    const part = h("span", { class: `var-part ${cls}` });
    part.style.width = `${Math.min(100, 100 * (step[key] || 0))}%`;
    bar.append(part);
  }
  return bar;
}

function stepRow(step) {
  const range = step.range_s ? `${formatTime(step.range_s[0])} – ${formatTime(step.range_s[1])}` : "–";
  return h(
    "tr",
    { dataset: { step: step.step, share: step.deviation_share } },
    h("th", { scope: "row", class: "var-name" }, `${step.step + 1}. ${step.text || ""}`),
    h("td", { class: "var-total" }, pct(step.deviation_share)),
    h("td", { class: "var-skipped" }, pct(step.skipped_share)),
    h("td", { class: "var-order-share" }, pct(step.out_of_order_share)),
    h("td", { class: "var-duration-share" }, pct(step.duration_off_share)),
    h("td", { class: "var-usual" }, step.median_s !== null && step.median_s !== undefined ? formatTime(step.median_s) : "–"),
    h("td", { class: "var-range" }, range),
    h("td", { class: "var-bar-cell" }, shareBar(step)),
  );
}

function protocolBlock(p) {
  const name = p.title || `Protocol ${String(p.protocol_key).slice(0, 12)}`;
  const counts = `${p.recordings} recording${p.recordings === 1 ? "" : "s"}, ${p.aligned} aligned, ${p.annotated} annotated or corrected`;
  const few = p.aligned < 2 ? h("p", { class: "hint" }, "One recording so far: the shares say more once the lab has recorded this protocol again.") : null;
  return h(
    "article",
    { class: "var-protocol", dataset: { protocolKey: p.protocol_key } },
    h("h3", { class: "small-heading" }, name),
    h("p", { class: "hint" }, counts),
    few,
    h(
      "div",
      { class: "table-wrap" },
      h(
        "table",
        { class: "var-table" },
        h("caption", { class: "hint" }, "Share of the lab's recordings in which each step was skipped, done out of the usual order, or took more than twice (or under half) its usual time; most varying first; the bar stacks the three (brown skipped, purple out of order, blue time off). Usual: the median and the 10th–90th percentile over the recordings."),
        h("thead", {}, h("tr", {}, ...["Step", "Varies", "Skipped", "Out of order", "Time off", "Usual", "Range", ""].map((t) => h("th", { scope: "col" }, t)))),
        h("tbody", {}, ...(p.steps || []).map(stepRow)),
      ),
    ),
  );
}

/** Fill ``section`` with the lab's protocols (or say why it cannot). */
export async function loadProtocols(section) {
  const body = section.querySelector("[data-protocols]");
  const status = section.querySelector("[data-protocols-status]");
  section.dataset.loaded = "false";
  if (!getToken()) {
    body.replaceChildren();
    status.textContent = "Sign in to see how your lab's recordings of each protocol vary.";
    return;
  }
  try {
    const data = await api("/v1/protocols");
    const protocols = data.protocols || [];
    body.replaceChildren(...protocols.map(protocolBlock));
    status.textContent = protocols.length
      ? `${protocols.length} protocol${protocols.length === 1 ? "" : "s"}, the most recorded first.`
      : "No protocol aligned yet.";
    section.dataset.loaded = "true";
  } catch (err) {
    status.textContent = loadFailureText(err, "the lab's protocols");
  }
}

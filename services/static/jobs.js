// The job list page: sign in with the lab token, upload a recording, watch the lab's jobs.
import {
  ApiError,
  PENDING,
  api,
  captureTokenFromFragment,
  errorText,
  formatDate,
  getToken,
  h,
  loadFailureText,
  sameOriginUrl,
  statusBadge,
  wireSignIn,
} from "./app.js";
import { loadProtocols } from "./lab.js";
import { StepsEditor } from "./steps_editor.js";
import { uploadVideo } from "./upload.js";

const REFRESH_MS = 3000;
let refreshTimer = null;
let stepsEditor = null;

const $ = (sel) => document.querySelector(sel);

function jobHref(jobId) {
  return `/jobs/${encodeURIComponent(jobId)}`;
}

function jobRow(job) {
  const id = job.job_id || job.id || "";
  const title = job.title || job.video_filename || `Job ${id.slice(0, 8)}`;
  return h(
    "tr",
    { dataset: { jobId: id, status: job.status || "" } },
    h("td", {}, h("a", { href: jobHref(id) }, title)),
    h("td", {}, statusBadge(job.status), job.error ? h("span", { class: "hint error-text" }, ` ${job.error}`) : null),
    h("td", {}, formatDate(job.created_at ?? job.submitted_at)),
    h("td", { class: "col-id" }, h("code", { class: "job-id", title: id }, id.length > 12 ? `${id.slice(0, 12)}…` : id)),
  );
}

async function loadJobs() {
  window.clearTimeout(refreshTimer);
  const tbody = $("#jobs tbody");
  const status = $("#jobs-status");
  if (!getToken()) {
    tbody.replaceChildren();
    status.textContent = "Sign in with your lab token to see your jobs.";
    return;
  }
  try {
    const data = await api("/v1/jobs");
    const jobs = Array.isArray(data) ? data : data.jobs || [];
    const when = (j) => {
      const v = j.created_at;
      return typeof v === "number" ? v * (v < 1e12 ? 1000 : 1) : Date.parse(v) || 0;
    };
    jobs.sort((a, b) => when(b) - when(a));
    tbody.replaceChildren(...jobs.map(jobRow));
    const pending = jobs.filter((j) => PENDING.has(j.status)).length;
    status.textContent = jobs.length
      ? `${jobs.length} job${jobs.length === 1 ? "" : "s"}${pending ? `, ${pending} pending (refreshing every ${REFRESH_MS / 1000} s)` : ""}.`
      : "No jobs yet: upload a recording above.";
    if (pending) refreshTimer = window.setTimeout(loadJobs, REFRESH_MS);
  } catch (err) {
    status.textContent = loadFailureText(err, "jobs");
  }
}

function showUploadMessage(kind, ...content) {
  const box = $("#upload-status");
  box.className = `message ${kind}`;
  box.replaceChildren(...content);
}

/** POST the form with XMLHttpRequest (for upload progress) and the bearer token. */
function postJob(formData, onProgress) {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open("POST", sameOriginUrl("/v1/jobs"));
    xhr.setRequestHeader("Authorization", `Bearer ${getToken()}`);
    xhr.setRequestHeader("Accept", "application/json");
    xhr.upload.addEventListener("progress", (e) => {
      if (e.lengthComputable) onProgress(Math.round((100 * e.loaded) / e.total));
    });
    xhr.addEventListener("load", () => {
      if (xhr.status >= 200 && xhr.status < 300) {
        try {
          resolve(JSON.parse(xhr.responseText));
        } catch {
          reject(new Error(`unexpected response: ${xhr.responseText.slice(0, 200)}`));
        }
      } else {
        reject(new ApiError(xhr.status, errorText(xhr.status, xhr.responseText)));
      }
    });
    xhr.addEventListener("error", () => reject(new Error("network error while uploading")));
    xhr.send(formData);
  });
}

/** The steps the service will align, shown under the protocol field as soon as a file is chosen,
 * in the step editor (steps_editor.js): the lab fixes them there before submitting. */
async function previewProtocol() {
  const box = $("#protocol-preview");
  const file = $("#protocol").files[0];
  stepsEditor.clear();
  if (!file) return;
  if (!getToken()) {
    box.replaceChildren(h("p", { class: "hint" }, "Sign in with your lab token to preview the steps."));
    return;
  }
  box.replaceChildren(h("p", { class: "hint" }, "Reading the protocol…"));
  const body = new FormData();
  body.append("protocol", file);
  try {
    stepsEditor.load(await api("/v1/protocol/preview", { method: "POST", body }));
  } catch (err) {
    const title = file.name.replace(/\.[^.]+$/, "");
    stepsEditor.load({ title, steps: [] }, `The protocol cannot be read: ${err.message} Write the steps below instead.`);
  }
}

function validateUpload(form) {
  const problems = [];
  if (!getToken()) problems.push(["token-input", "Sign in with your lab token first."]);
  if (!form.video.files.length) problems.push(["video", "Choose a video file."]);
  if (!form.protocol.files.length) problems.push(["protocol", "Choose a protocol file."]);
  else if (stepsEditor.loaded) for (const p of stepsEditor.problems()) problems.push(["protocol", p]);
  const options = form.options.value.trim();
  if (options) {
    try {
      const parsed = JSON.parse(options);
      if (typeof parsed !== "object" || parsed === null || Array.isArray(parsed)) throw new Error("not an object");
    } catch {
      problems.push(["options", "Options must be a JSON object, e.g. {\"method\": \"nw\"}."]);
    }
  }
  for (const id of ["video", "protocol", "options"]) document.getElementById(id).removeAttribute("aria-invalid");
  for (const [id] of problems) document.getElementById(id).setAttribute("aria-invalid", "true");
  return problems;
}

async function onUpload(event) {
  event.preventDefault();
  const form = event.currentTarget;
  const problems = validateUpload(form);
  if (problems.length) {
    showUploadMessage("error", h("ul", {}, problems.map(([, msg]) => h("li", {}, msg))));
    document.getElementById(problems[0][0]).focus();
    return;
  }
  const data = new FormData();
  data.append("protocol", form.protocol.files[0]);
  if (form.annotations.files.length) data.append("annotations", form.annotations.files[0]);
  if (form.options.value.trim()) data.append("options", form.options.value.trim());
  if (stepsEditor.loaded && stepsEditor.edited()) data.append("steps", JSON.stringify(stepsEditor.value()));

  const submit = $("#upload-submit");
  const progress = $("#upload-progress");
  submit.disabled = true;
  progress.hidden = false;
  progress.value = 0;
  showUploadMessage("info", "Uploading…");
  try {
    const video = form.video.files[0];
    const uploadUrl = await uploadVideo(video, {
      onProgress: (sent, total) => {
        progress.value = total ? Math.round((100 * sent) / total) : 0;
        showUploadMessage("info", `Uploading… ${Math.round(sent / 1048576)} of ${Math.round(total / 1048576)} MiB`);
      },
      onRetry: (attempt) => {
        showUploadMessage("info", `The connection dropped: resuming the upload (attempt ${attempt})…`);
      },
    });
    data.append("video_upload", uploadUrl);
    showUploadMessage("info", "Checking the recording…");
    const job = await postJob(data, () => {});
    const id = job.job_id || job.id;
    showUploadMessage(
      "success",
      "Submitted: job ",
      h("code", {}, id),
      ` is ${job.status || "queued"}. `,
      h("a", { id: "new-job-link", href: jobHref(id) }, "Open the job page"),
      ".",
    );
    form.reset();
    stepsEditor.clear();
    loadJobs();
  } catch (err) {
    showUploadMessage("error", `Upload failed: ${err.message}`);
  } finally {
    submit.disabled = false;
    progress.hidden = true;
  }
}

/** The lab's jobs and its protocols' variability, both for the signed-in token. */
function loadLab() {
  loadJobs();
  loadProtocols($("#protocols"));
}

function init() {
  captureTokenFromFragment();
  stepsEditor = new StepsEditor($("#protocol-preview"));
  wireSignIn($("#signin"), loadLab);
  $("#upload").addEventListener("submit", onUpload);
  $("#protocol").addEventListener("change", previewProtocol);
  $("#refresh").addEventListener("click", loadLab);
  loadLab();
}

init();

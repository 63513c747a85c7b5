// Resumable video uploads for the upload form: tus 1.0 with tus-js-client (vendored in
// ./vendor/tus.min.js, loaded as a classic script that defines window.tus). The video goes to
// /v1/uploads in 32 MiB PATCHes with the lab token in the Authorization header; a dropped
// connection is retried from the offset the server holds, and a page reloaded mid-upload
// resumes the same upload (tus-js-client keeps its URL in localStorage until it finishes).
import { ApiError, errorText, getToken, sameOriginUrl } from "./app.js";

// At most the server's tus_max_patch_bytes (64 MiB) and the edge's body limit for /v1/uploads.
export const CHUNK_BYTES = 32 * 1024 * 1024;
const RETRY_DELAYS_MS = [0, 1000, 3000, 5000, 10000, 20000, 30000, 60000, 60000, 60000];

/** The HTTP status of a failed tus request (0 when the connection itself failed). */
function statusOf(err) {
  const response = err && err.originalResponse;
  return response ? response.getStatus() : 0;
}

/** tus-js-client's rule: retry on no answer, 5xx, 409 (offset moved) and 423 (locked). */
function retryable(status) {
  return status === 0 || status >= 500 || status === 409 || status === 423;
}

/**
 * Upload `file` resumably; resolves to the upload's URL (name it as `video_upload` in
 * POST /v1/jobs). `onProgress(sent, total)` follows the bytes; `onRetry(attempt, status)` says
 * the connection dropped and the upload goes on from where the server stands.
 */
export function uploadVideo(file, { onProgress = () => {}, onRetry = () => {} } = {}) {
  const tus = window.tus;
  if (!tus || !tus.isSupported) {
    return Promise.reject(new Error("this browser cannot send resumable uploads (tus)"));
  }
  return new Promise((resolve, reject) => {
    const upload = new tus.Upload(file, {
      endpoint: sameOriginUrl("/v1/uploads").href,
      chunkSize: CHUNK_BYTES,
      retryDelays: RETRY_DELAYS_MS,
      headers: { Authorization: `Bearer ${getToken()}` },
      metadata: { filename: file.name, filetype: file.type || "application/octet-stream" },
      removeFingerprintOnSuccess: true,
      onProgress,
      onShouldRetry(err, attempt) {
        const status = statusOf(err);
        const again = retryable(status);
        if (again) onRetry(attempt + 1, status);
        return again;
      },
      onError(err) {
        const status = statusOf(err);
        const body = err.originalResponse ? err.originalResponse.getBody() : "";
        reject(status ? new ApiError(status, errorText(status, body)) : err);
      },
      onSuccess() {
        resolve(upload.url);
      },
    });
    upload
      .findPreviousUploads()
      .then((previous) => {
        if (previous.length) upload.resumeFromPreviousUpload(previous[0]);
        upload.start();
      })
      .catch(reject);
  });
}

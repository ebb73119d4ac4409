// avindex search page: uploads (or a recording) go to POST /v1/search; hits play from
// /v1/media/<id>. Plain browser JavaScript, no build step. When the server wants an API key,
// the page asks for it once and keeps it for this tab only (sessionStorage); it goes with every
// API call as "Authorization: Bearer KEY", and media are then fetched with it into blob: URLs
// (a <video src> cannot carry the header).
"use strict";

const $ = (id) => document.getElementById(id);
const KEY = "avindex-api-key";

function apiKey() {
  return sessionStorage.getItem(KEY);
}

function askForKey(message) {
  $("key-form").hidden = false;
  $("key-message").textContent = message;
  $("key").focus();
}

$("key-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const value = $("key").value.trim();
  if (!value) return;
  sessionStorage.setItem(KEY, value);
  $("key").value = "";
  $("key-form").hidden = true;
  refreshInfo();
});

// fetch() with the key; a 401 asks for (another) key.
async function api(path, options = {}) {
  const headers = new Headers(options.headers || {});
  const key = apiKey();
  if (key) headers.set("Authorization", `Bearer ${key}`);
  const response = await fetch(path, { ...options, headers });
  if (response.status === 401) {
    sessionStorage.removeItem(KEY);
    askForKey(key ? "That API key was refused; enter another." :
      "This server needs an API key.");
  }
  return response;
}

async function playMedia(player, id, playAs) {
  const path = `/v1/media/${encodeURIComponent(id)}`;
  const suffix = playAs === "video" ? "#t=0.1" : "";
  if (!apiKey()) {
    // "#t=0.1": the browser fetches enough to show a frame instead of a black box.
    player.src = path + suffix;
    return;
  }
  const response = await api(path);
  if (response.ok) player.src = URL.createObjectURL(await response.blob()) + suffix;
}

function describe(payload) {
  const meta = payload.metadata || {};
  const keys = ["label", "word", "language", "speaker"].filter((k) => k in meta);
  const shown = (keys.length ? keys : Object.keys(meta).slice(0, 3))
    .map((k) => `${k}: ${meta[k]}`);
  return shown.join(" · ");
}

function hitElement(hit, playAs) {
  const li = document.createElement("li");
  li.className = "hit";
  li.dataset.mediaId = hit.media_id || "";
  li.dataset.score = String(hit.score);
  const payload = hit.payload || {};
  if (payload.uri && String(payload.uri).startsWith("file:")) {
    const player = document.createElement(playAs);
    player.controls = true;
    player.preload = "metadata";
    playMedia(player, hit.id, playAs);
    li.appendChild(player);
  } else {
    const missing = document.createElement("div");
    missing.className = "missing";
    missing.textContent = "no playable file (sent as bytes)";
    li.appendChild(missing);
  }
  const head = document.createElement("div");
  const rank = document.createElement("span");
  rank.className = "rank";
  rank.textContent = `#${hit.rank}`;
  const score = document.createElement("span");
  score.className = "score";
  score.textContent = hit.score.toFixed(3);
  head.append(rank, score);
  const meta = document.createElement("div");
  meta.className = "meta";
  meta.textContent = [hit.media_id, describe(payload)].filter(Boolean).join(" — ");
  li.append(head, meta);
  return li;
}

function showQuery(target, blob, playAs) {
  const box = $(target);
  box.replaceChildren();
  const player = document.createElement(playAs);
  player.controls = true;
  player.src = URL.createObjectURL(blob);
  box.appendChild(player);
}

async function search(panel, blob, filename, kind, by, playAs) {
  const status = $(`${panel}-status`);
  const list = $(`${panel}-results`);
  status.className = "status";
  status.textContent = "searching…";
  list.replaceChildren();
  const form = new FormData();
  form.append("file", blob, filename);
  form.append("kind", kind);
  if (by) form.append("by", by);
  form.append("top_k", $("top-k").value || "8");
  for (const f of $("filter").value.split(/[;,]\s*/)) {
    if (f.trim()) form.append("filter", f.trim());
  }
  try {
    const response = await api("/v1/search", { method: "POST", body: form });
    const answer = await response.json();
    if (!response.ok) {
      status.className = "status error";
      status.textContent = `${response.status} ${answer.error}: ${answer.message}`;
      return;
    }
    for (const hit of answer.results) list.appendChild(hitElement(hit, playAs));
    status.textContent = `${answer.results.length} results by ${answer.query.by} ` +
      `against ${answer.query.vector} vectors in ${answer.took_ms} ms`;
    document.body.dataset[`${panel}Done`] = String(answer.results.length);
  } catch (err) {
    status.className = "status error";
    status.textContent = `search failed: ${err}`;
  }
}

$("sound-file").addEventListener("change", (event) => {
  const file = event.target.files[0];
  if (!file) return;
  const isVideo = file.type.startsWith("video/");
  showQuery("sound-query", file, isVideo ? "video" : "audio");
  search("sound", file, file.name, isVideo ? "video" : "audio", isVideo ? "audio" : null,
    "video");
});

$("video-file").addEventListener("change", (event) => {
  const file = event.target.files[0];
  if (!file) return;
  const isImage = file.type.startsWith("image/");
  const box = $("video-query");
  if (isImage) {
    box.replaceChildren();
  } else {
    showQuery("video-query", file, "video");
  }
  search("video", file, file.name, isImage ? "image" : "video", null, "audio");
});

let recorder = null;
$("record").addEventListener("click", async () => {
  const button = $("record");
  if (recorder && recorder.state === "recording") {
    recorder.stop();
    return;
  }
  let stream;
  try {
    stream = await navigator.mediaDevices.getUserMedia({ audio: true });
  } catch (err) {
    $("sound-status").className = "status error";
    $("sound-status").textContent = `no microphone: ${err.message || err}`;
    return;
  }
  const chunks = [];
  recorder = new MediaRecorder(stream);
  recorder.ondataavailable = (e) => { if (e.data.size) chunks.push(e.data); };
  recorder.onstop = () => {
    stream.getTracks().forEach((t) => t.stop());
    button.classList.remove("recording");
    button.textContent = "● Record";
    const blob = new Blob(chunks, { type: recorder.mimeType || "audio/webm" });
    showQuery("sound-query", blob, "audio");
    search("sound", blob, "recording.webm", "audio", null, "video");
  };
  recorder.start();
  button.classList.add("recording");
  button.textContent = "■ Stop";
  $("sound-status").className = "status";
  $("sound-status").textContent = "recording… click Stop when done";
});

async function refreshInfo() {
  try {
    const response = await api("/v1/info");
    if (response.status === 401) {
      $("info").textContent = "API key needed";
      return;
    }
    const info = await response.json();
    $("info").textContent = info.ready
      ? `model ${info.model_id} (${info.model_version}) · collection ${info.collection} · ` +
        `${info.points} items indexed`
      : "the daemon is starting…";
  } catch (err) {
    $("info").textContent = "daemon not reachable";
  }
}
refreshInfo();
setInterval(refreshInfo, 5000);

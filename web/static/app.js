// The demo page's behaviour: examples, image preview, and the classify call with its answer.
// Plain browser JavaScript, no library, nothing loaded from elsewhere.
"use strict";

const $ = (id) => document.getElementById(id);
let image = null; // the File or Blob that will be sent, from the picker or an example

function show(id, visible) { $(id).hidden = !visible; }

function setImage(file, caption) {
  image = file;
  const preview = $("preview-image");
  if (preview.src) URL.revokeObjectURL(preview.src);
  if (file) {
    preview.hidden = false;
    preview.src = URL.createObjectURL(file);
    $("preview-caption").textContent = caption || `${file.name || "image"} · ${(file.size / 1024).toFixed(1)} KiB`;
  } else {
    preview.removeAttribute("src");
    $("image").value = "";
  }
  show("preview", Boolean(file));
  show("clear-image", Boolean(file));
}

async function loadExamples() {
  const box = $("examples");
  try {
    const response = await fetch("/v1/examples");
    if (!response.ok) throw new Error(`HTTP ${response.status}`);
    for (const example of (await response.json()).examples) {
      const button = document.createElement("button");
      button.type = "button";
      button.textContent = example.label;
      button.dataset.example = example.id;
      button.addEventListener("click", () => loadExample(example));
      box.appendChild(button);
    }
  } catch (error) {
    box.appendChild(document.createTextNode(` could not be loaded (${error.message})`));
  }
}

async function loadExample(example) {
  $("designation").value = example.designation;
  $("description").value = example.description;
  $("image").value = "";
  if (!example.image_url) {
    setImage(null);
    return;
  }
  const response = await fetch(example.image_url);
  const blob = await response.blob();
  const file = new File([blob], `${example.id}.jpg`, { type: blob.type });
  setImage(file, `example picture, drawn by the server · ${(file.size / 1024).toFixed(1)} KiB`);
}

function showError(error) {
  $("error-title").textContent = error.title || "The request failed";
  $("error-message").textContent = error.message || "";
  $("error-code").textContent = error.code ? `${error.code} (HTTP ${error.status})` : "";
  show("error", true);
}

function renderAnswer(answer) {
  const list = $("categories");
  list.replaceChildren();
  for (const category of answer.categories.slice(0, 3)) {
    const item = document.createElement("li");
    const head = document.createElement("div");
    head.className = "category-head";
    const label = document.createElement("span");
    const code = document.createElement("span");
    code.className = "category-code";
    code.textContent = category.code;
    const name = document.createElement("span");
    name.className = "category-name";
    name.textContent = category.name;
    label.append(code, name);
    const score = document.createElement("span");
    score.className = "category-score";
    score.textContent = `${(category.score * 100).toFixed(1)} %`;
    head.append(label, score);
    const bar = document.createElement("div");
    bar.className = "bar";
    const fill = document.createElement("span");
    fill.style.width = `${Math.max(0, Math.min(1, category.score)) * 100}%`;
    bar.appendChild(fill);
    item.append(head, bar);
    list.appendChild(item);
  }
  $("modalities").textContent = answer.modalities.join(" + ") || "—";
  $("language").textContent = answer.language || "— (no text)";
  $("models").textContent = Object.entries(answer.models).map(([n, v]) => `${n} v${v}`).join(", ") || "—";
  $("degraded-reason").textContent = answer.degraded_reason;
  show("degraded", answer.degraded);
  show("needs-review", answer.needs_review);
  const rows = $("timings").tBodies[0];
  rows.replaceChildren();
  const stages = Object.entries(answer.timings);
  stages.push(["round trip (web → gateway)", answer.round_trip_seconds]);
  for (const [stage, seconds] of stages) {
    const row = rows.insertRow();
    row.insertCell().textContent = stage;
    row.insertCell().textContent = (seconds * 1000).toFixed(1);
  }
  show("result", true);
}

async function classify(event) {
  event.preventDefault();
  const form = new FormData();
  form.append("designation", $("designation").value);
  form.append("description", $("description").value);
  form.append("top_k", "3");
  if (image) form.append("image", image, image.name || "image");
  ["idle", "error", "result"].forEach((id) => show(id, false));
  show("busy", true);
  $("classify").disabled = true;
  try {
    const response = await fetch("/v1/classify", { method: "POST", body: form });
    let body;
    try {
      body = await response.json();
    } catch {
      body = { error: { status: response.status, title: `HTTP ${response.status}`, message: response.statusText } };
    }
    if (response.ok) renderAnswer(body);
    else showError(body.error || { status: response.status, title: `HTTP ${response.status}` });
  } catch (error) {
    showError({ title: "The demo server is unreachable", message: error.message });
  } finally {
    show("busy", false);
    $("classify").disabled = false;
  }
}

document.addEventListener("DOMContentLoaded", () => {
  $("product-form").addEventListener("submit", classify);
  $("image").addEventListener("change", (event) => setImage(event.target.files[0] || null));
  $("clear-image").addEventListener("click", () => setImage(null));
  $("preview-image").addEventListener("error", () => {
    if (!$("preview-image").getAttribute("src")) return;
    show("preview-image", false);
    $("preview-caption").textContent = "no preview: the browser cannot read this file as an image";
  });
  loadExamples();
});

// The demo page: one file at a time to POST predict/explain, its answer shown as it came.
// Server strings (file names, reasons, notes) go in as textContent, never as HTML.
"use strict";

const $ = (id) => document.getElementById(id);
const GATE = {
  passed: "passed: the DICOM header describes a frontal chest radiograph",
  "no header": "no header: PNG and JPEG carry none, so nothing checked that this is a chest film",
  off: "off: research use, the answer is not for patients",
};
let lastFile = null;
let oodThreshold = null; // /health's ood_threshold

function percent(x) {
  return x === null || x === undefined ? "?" : `${(100 * x).toFixed(1)} %`;
}

function describeSource(prov) {
  if (!prov) return "data not recorded (a model file from before provenance)";
  const t = prov.train;
  const counts = t ? ` (${t.n} training images, ${percent(t.prevalence)} positive)` : "";
  return `${prov.data_source} data${counts}`;
}

function showWarning(el, text) {
  el.textContent = text ? `Warning: ${text}` : "";
  el.hidden = !text;
}

async function loadHealth() {
  try {
    const r = await fetch("health");
    const h = await r.json();
    const m = h.model;
    $("m-id").textContent = m.id;
    const runtime = m.runtime ? `, ${m.runtime}` : "";
    $("m-details").textContent = `(${m.arch}, ${m.image_size} px, ${m.resize_mode}${runtime})`;
    $("m-source").textContent = describeSource(h.provenance);
    $("m-threshold").textContent = `${h.threshold} (${h.threshold_source})`;
    showWarning($("model-warning"), h.warning);
    oodThreshold = h.ood_threshold;
  } catch (e) {
    $("m-id").textContent = `unknown (GET health failed: ${e.message})`;
  }
}

function detailText(detail) {
  if (typeof detail === "string") return detail;
  if (Array.isArray(detail)) return detail.map((d) => d.msg).join("; ");
  return "no reason given";
}

function showError(status, body, fileName) {
  $("result").hidden = true;
  const refused = body && body.refused;
  let title = `The service could not predict ${fileName} (HTTP ${status})`;
  if (refused) title = `Refused by the intended-use gate: ${fileName}`;
  else if (status === null) title = `No answer for ${fileName}`;
  $("error-title").textContent = title;
  $("error-detail").textContent = body ? detailText(body.detail) : "the answer was not JSON";
  $("error-hint").textContent = refused
    ? "The model reads frontal chest radiographs only. The research checkbox above predicts it anyway."
    : "";
  $("error").hidden = false;
  $("status").textContent = "";
  document.body.dataset.state = "error";
}

function decisionRow(key, positive, rec) {
  const tr = document.createElement("tr");
  tr.dataset.key = key;
  tr.dataset.positive = String(positive);
  const th = document.createElement("th");
  th.scope = "row";
  th.textContent =
    key === "operating_point"
      ? `operating point ${rec.threshold} (${rec.threshold_source})`
      : key;
  const td = document.createElement("td");
  td.textContent = positive ? "positive" : "negative";
  td.className = positive ? "positive" : "negative";
  tr.append(th, td);
  return tr;
}

function showOod(rec) {
  const score = $("r-ood-score");
  score.dataset.ood = String(rec.out_of_distribution);
  score.textContent =
    rec.ood_score === null
      ? "not available (no statistics with this model: the torch runtime, or an older export)"
      : `${rec.ood_score.toFixed(1)} (out of distribution above ${
          oodThreshold === null ? "?" : oodThreshold.toFixed(1)
        })`;
  showWarning(
    $("r-ood"),
    rec.out_of_distribution
      ? "Out of distribution: this image does not look like the films the model was trained on, " +
          "so the decision below is unreliable."
      : null,
  );
}

function showResult(rec) {
  $("error").hidden = true;
  $("r-file").textContent = rec.file;
  showWarning($("r-warning"), rec.warning);
  const prob = $("r-prob");
  prob.textContent = rec.prob.toFixed(3);
  prob.dataset.prob = String(rec.prob); // the exact value, for whoever needs more digits
  $("r-decisions")
    .querySelector("tbody")
    .replaceChildren(...Object.entries(rec.decisions).map(([k, v]) => decisionRow(k, v, rec)));
  $("r-gate").textContent = GATE[rec.gate] || rec.gate;
  $("r-gate").dataset.gate = rec.gate;
  showOod(rec);
  const notes = rec.notes.length ? rec.notes : ["none"];
  $("r-notes").replaceChildren(
    ...notes.map((n) => Object.assign(document.createElement("li"), { textContent: n })),
  );
  const img = $("r-heatmap");
  img.alt = `${rec.file}: the X-ray and its heat map, probability ${rec.prob.toFixed(3)}`;
  img.src = rec.heatmap;
  $("result").hidden = false;
  $("status").textContent = `Predicted ${rec.file}.`;
  document.body.dataset.state = "done";
}

async function predict(file) {
  lastFile = file;
  const gate = $("no-gate").checked ? "false" : "true";
  const form = new FormData();
  form.append("file", file, file.name);
  document.body.dataset.state = "busy";
  $("status").textContent = `Predicting ${file.name}…`;
  let r;
  try {
    r = await fetch(`predict/explain?gate=${gate}`, { method: "POST", body: form });
  } catch (e) {
    showError(null, { detail: `the service did not answer (${e.message})` }, file.name);
    return;
  }
  const body = await r.json().catch(() => null);
  if (r.ok && body) showResult(body);
  else showError(r.status, body, file.name);
}

function setUp() {
  const drop = $("drop");
  const input = $("file");
  input.addEventListener("change", () => input.files.length && predict(input.files[0]));
  $("no-gate").addEventListener("change", () => lastFile && predict(lastFile));
  // a file dropped anywhere else would make the browser open it in place of the page
  for (const type of ["dragover", "drop"]) {
    window.addEventListener(type, (e) => e.preventDefault());
  }
  drop.addEventListener("dragover", () => drop.classList.add("over"));
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    drop.classList.remove("over");
    const files = e.dataTransfer && e.dataTransfer.files;
    if (files && files.length) predict(files[0]);
  });
  loadHealth();
}

setUp();

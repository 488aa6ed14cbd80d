// The lab page: every control maps to a public endpoint of the service.
//   GET  /v1/ops                          the choices (activations, inits, their params)
//   POST /v1/lab/activation_stats         the per-layer numbers (the table)
//   GET  /v1/lab/plots/activation_stats   the histograms and curves (the figure)
//   GET  /v1/lab/plots/activation, margin the side figures
// Errors from the API are shown as the API words them; nothing is fetched from
// outside the service. On a server with API keys (docs/security.md) every call above
// needs `Authorization: Bearer <key>`: the page asks for the key when the server
// answers 401, keeps it in sessionStorage (this tab only, gone when it closes) and
// sends it on each fetch; the figures are fetched as blobs for the same reason (an
// <img src> request cannot carry the header).
"use strict";

// The lecture's five cases (depth 10, width 500 each).
const PRESETS = {
  tanh_small: { activation: "tanh", init: "normal", std: "0.01" },
  tanh_big: { activation: "tanh", init: "normal", std: "1.0" },
  tanh_xavier: { activation: "tanh", init: "xavier_normal", mode: "fan_in" },
  relu_xavier: { activation: "relu", init: "xavier_normal", mode: "fan_in" },
  relu_kaiming: { activation: "relu", init: "kaiming_normal", mode: "fan_in" },
};
const COLUMNS = ["mean", "std", "saturated", "dead", "grad_std"];

const $ = (id) => document.getElementById(id);
// init op name -> {param: default} (from the catalog): which params to show (std or
// mode), and, for an init chosen by hand, the API's defaults to start from (as a
// request that leaves them out would).
const initDefaults = new Map();
let runs = 0;
let plotUrl = null;
let shownActivation = null;
let catalogLoaded = false;
const KEY_STORAGE = "gradserve.apiKey";

function storedKey() {
  try {
    return sessionStorage.getItem(KEY_STORAGE) || "";
  } catch (_) {
    return ""; // storage disabled: the key field still works for this page's life
  }
}

let apiKey = storedKey();

// fetch() of a path of this service, with the API key when one was given.
function api(path, options = {}) {
  const headers = new Headers(options.headers || {});
  if (apiKey) headers.set("Authorization", `Bearer ${apiKey}`);
  return fetch(path, { ...options, headers });
}

function forgetKey() {
  apiKey = "";
  try {
    sessionStorage.removeItem(KEY_STORAGE);
  } catch (_) {
    // nothing kept
  }
  $("forget-key").hidden = true;
}

// Show the key form (after a 401, or with a key kept from earlier in this tab).
function showKeyForm(asked) {
  $("auth").hidden = false;
  $("forget-key").hidden = !apiKey;
  if (asked) $("api-key").focus();
}

// An image fetched with the key, shown through an object URL (revoking the old one).
async function showImage(img, path) {
  img.dataset.want = path;
  const response = await api(path);
  if (!response.ok) throw new Error(await apiError(response));
  const blob = await response.blob();
  // A slower, older fetch for the same image must not replace a newer one.
  if (img.dataset.want !== path) return;
  const previous = img.src.startsWith("blob:") ? img.src : null;
  img.src = URL.createObjectURL(blob);
  if (previous) URL.revokeObjectURL(previous);
}

function setStatus(text) {
  $("status").textContent = text;
}

function showError(messages) {
  const box = $("error");
  const unique = [...new Set(messages)];
  box.textContent = unique.join("\n");
  box.hidden = unique.length === 0;
}

// An API error body -> its message ({"error": {"code", "message"}} under /v1).
async function apiError(response) {
  if (response.status === 401 && apiKey) {
    // The key was sent and refused: say so, and do not keep it for the next visit.
    forgetKey();
    showKeyForm(true);
    return "401: the server refused this API key; check it and enter it again";
  }
  if (response.status === 401) showKeyForm(true);
  let message = `${response.status} ${response.statusText}`;
  try {
    const body = await response.json();
    if (body && body.error) {
      message = typeof body.error === "string" ? body.error : body.error.message;
    }
  } catch (_) {
    // not JSON: keep the status line
  }
  return `${response.status}: ${message}`;
}

function fillSelect(select, choices, chosen) {
  select.replaceChildren(
    ...choices.map((name) => {
      const option = document.createElement("option");
      option.value = name;
      option.textContent = name;
      option.selected = name === chosen;
      return option;
    }),
  );
}

// Show only the init params (std, mode) that the chosen init takes.
function syncInitParams() {
  const takes = new Set(Object.keys(initDefaults.get($("init").value) || {}));
  for (const label of document.querySelectorAll("[data-init-param]")) {
    label.hidden = !takes.has(label.dataset.initParam);
  }
}

// A control's value as the API expects it: numbers as numbers; anything else as typed,
// so that the API (not this page) says what is wrong with it. An empty number field,
// or one the browser could not read ("1e": its value is then ""), is an error here:
// leaving the param out would run the API's default under the user's eyes.
function value(input, name, problems) {
  const text = input.value.trim();
  if (input.type !== "number") return text === "" ? undefined : text;
  if (text === "" || (input.validity && input.validity.badInput)) {
    problems.push(`${name}: enter a number`);
    return undefined;
  }
  const number = Number(text);
  return Number.isFinite(number) ? number : text;
}

// The params of the form, and the fields that hold no number.
function readParams() {
  const params = {};
  const problems = [];
  for (const name of ["activation", "init", "depth", "width"]) {
    const v = value($(name), name, problems);
    if (v !== undefined) params[name] = v;
  }
  for (const label of document.querySelectorAll("[data-init-param]")) {
    if (label.hidden) continue;
    const name = label.dataset.initParam;
    const v = value(label.querySelector("input, select"), name, problems);
    if (v !== undefined) params[name] = v;
  }
  return { params, problems };
}

async function fetchPlot(query) {
  const response = await api(`/v1/lab/plots/activation_stats?${query}`);
  if (!response.ok) throw new Error(await apiError(response));
  return response.blob();
}

async function fetchStats(params) {
  const response = await api("/v1/lab/activation_stats", {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify(params),
  });
  if (!response.ok) throw new Error(await apiError(response));
  return response.json();
}

function fillTable(stats, query) {
  const depth = stats.std.data.length;
  const rows = [];
  for (let layer = 0; layer < depth; layer++) {
    const row = document.createElement("tr");
    const head = document.createElement("td");
    head.textContent = String(layer + 1);
    row.append(head);
    for (const name of COLUMNS) {
      const raw = stats[name].data[layer];
      const number = Number(raw); // "NaN" and "Infinity" arrive as strings
      const cell = document.createElement("td");
      cell.dataset.column = name;
      cell.dataset.value = String(raw);
      cell.textContent = Number.isFinite(number) ? number.toPrecision(4) : String(raw);
      row.append(cell);
    }
    rows.push(row);
  }
  $("stats").tBodies[0].replaceChildren(...rows);
  $("stats").dataset.stale = "false";
  $("stats").dataset.query = query;
}

function showPlot(blob, query) {
  const img = $("plot");
  const previous = plotUrl;
  plotUrl = URL.createObjectURL(blob);
  img.onload = () => {
    img.dataset.query = query;
    img.dataset.stale = "false";
    if (previous) URL.revokeObjectURL(previous);
  };
  img.src = plotUrl;
}

async function run() {
  const seq = ++runs;
  const { params, problems } = readParams();
  $("plot").dataset.stale = "true";
  $("stats").dataset.stale = "true";
  if (problems.length) {
    showError(problems);
    setStatus("error");
    return;
  }
  const query = new URLSearchParams(Object.entries(params).map(([k, v]) => [k, String(v)])).toString();
  // Run stays enabled: a run started while one is in flight wins (the seq check
  // below drops the older answers), so Enter in a changed field is never lost.
  setStatus("running…");
  const started = performance.now();
  const [plot, stats] = await Promise.allSettled([fetchPlot(query), fetchStats(params)]);
  if (seq !== runs) return; // a newer run has started; its answers win
  const errors = [plot, stats].filter((r) => r.status === "rejected").map((r) => r.reason.message);
  showError(errors);
  if (plot.status === "fulfilled") showPlot(plot.value, query);
  if (stats.status === "fulfilled") fillTable(stats.value, query);
  const seconds = ((performance.now() - started) / 1000).toFixed(1);
  setStatus(errors.length ? "error" : `done in ${seconds} s`);
  if (params.activation && params.activation !== shownActivation && !errors.length) {
    shownActivation = params.activation;
    const path = `/v1/lab/plots/activation?op=${encodeURIComponent(shownActivation)}&img_width=640&img_height=400`;
    showImage($("activation-plot"), path).catch((error) => showError([error.message]));
  }
}

function applyPreset(name) {
  const preset = PRESETS[name];
  $("activation").value = preset.activation;
  $("init").value = preset.init;
  syncInitParams();
  if (preset.std !== undefined) $("std").value = preset.std;
  if (preset.mode !== undefined) $("mode").value = preset.mode;
  $("depth").value = "10";
  $("width").value = "500";
  for (const button of document.querySelectorAll("[data-preset]")) {
    button.setAttribute("aria-pressed", String(button.dataset.preset === name));
  }
}

// Once, at load: the controls' listeners.
function wire() {
  $("init").addEventListener("change", () => {
    syncInitParams();
    const defaults = initDefaults.get($("init").value) || {};
    for (const [name, value] of Object.entries(defaults)) {
      const control = document.querySelector(`[data-init-param="${name}"] input, [data-init-param="${name}"] select`);
      if (control) control.value = String(value);
    }
  });
  $("experiment").addEventListener("submit", (event) => {
    event.preventDefault();
    for (const button of document.querySelectorAll("[data-preset]")) button.setAttribute("aria-pressed", "false");
    run();
  });
  for (const button of document.querySelectorAll("[data-preset]")) {
    button.addEventListener("click", () => {
      applyPreset(button.dataset.preset);
      run();
    });
  }
  $("auth").addEventListener("submit", (event) => {
    event.preventDefault();
    apiKey = $("api-key").value.trim();
    $("api-key").value = "";
    try {
      if (apiKey) sessionStorage.setItem(KEY_STORAGE, apiKey);
      else sessionStorage.removeItem(KEY_STORAGE);
    } catch (_) {
      // storage disabled: the key lives as long as the page
    }
    $("forget-key").hidden = !apiKey;
    showError([]);
    (catalogLoaded ? run() : start()).catch((error) => showError([String(error)]));
  });
  $("forget-key").addEventListener("click", forgetKey);
  if (apiKey) showKeyForm(false);
}

// The catalog (the choices), then the first preset. Again after a key is given, if
// the server refused the first try.
async function start() {
  // A fresh status first: a key given after a refusal must not leave the last
  // attempt's "error" showing while this one is in flight.
  setStatus("loading…");
  const response = await api("/v1/ops");
  if (!response.ok) {
    showError([await apiError(response)]);
    setStatus("error");
    return;
  }
  catalogLoaded = true;
  const ops = (await response.json()).ops;
  const lab = ops.find((op) => op.name === "activation_stats");
  const param = (name) => lab.params.find((p) => p.name === name);
  fillSelect($("activation"), param("activation").choices, param("activation").default);
  fillSelect($("init"), param("init").choices, param("init").default);
  for (const op of ops.filter((o) => o.family === "init")) {
    initDefaults.set(op.name, Object.fromEntries(op.params.map((p) => [p.name, p.default])));
  }
  showImage($("margin-plot"), "/v1/lab/plots/margin?img_width=640&img_height=400").catch((error) =>
    showError([error.message]),
  );
  applyPreset("tanh_small");
  await run();
}

document.addEventListener("DOMContentLoaded", () => {
  wire();
  start().catch((error) => showError([String(error)]));
});

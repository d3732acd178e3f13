// sait-serve's page: try the density dial on an image, run it at every level, watch the controller.
// Plain browser JavaScript, no framework, nothing fetched from elsewhere. It reads GET /v1/model
// once, GET /v1/live once a second, and classifies through POST /v1/classify like any client.
"use strict";

const WINDOW_S = 180; // seconds the live charts show (the server keeps a few more)
const POLL_MS = 1000;
const KEY = "sait-api-key"; // sessionStorage: the API key, for this tab only

const $ = (id) => document.getElementById(id);
const state = {
  model: null, // GET /v1/model
  file: null, // the chosen image (a File)
  seq: 0, // the latest classify request: older answers are dropped
  live: new Map(), // t_s -> sample
  lastT: null,
  keyPrompt: null, // one pending "give me a key" for every fetch that got 401
  colour: {}, // level -> chart colour
};

function el(tag, props = {}, ...children) {
  const node = Object.assign(document.createElement(tag), props);
  node.append(...children);
  return node;
}

const pct = (v) => (v === null || v === undefined ? null : v <= 1 ? v * 100 : v); // card figures: % or fraction
const fmtPct = (v) => (pct(v) === null ? "–" : `${pct(v).toFixed(1)} %`);
const fmtMs = (v) => (v < 10 ? v.toFixed(2) : v.toFixed(1));

// -- fetch, with the API key once the server has asked for one ------------------------------------
async function api(path, options = {}) {
  for (;;) {
    const headers = new Headers(options.headers);
    const key = sessionStorage.getItem(KEY);
    if (key) headers.set("Authorization", `Bearer ${key}`);
    const response = await fetch(path, { ...options, headers });
    if (response.status !== 401) return response;
    const why = await errorOf(response);
    await askForKey(key ? `The key was refused (${why}). Try another.` : `This server asks for an API key (${why}).`);
  }
}

function askForKey(why) {
  if (!state.keyPrompt) {
    state.keyPrompt = new Promise((resolve) => {
      $("key-why").textContent = why;
      $("key-form").addEventListener(
        "submit",
        () => {
          sessionStorage.setItem(KEY, $("key").value.trim());
          state.keyPrompt = null;
          resolve();
        },
        { once: true },
      );
      $("key-dialog").showModal();
    });
  }
  return state.keyPrompt;
}

async function errorOf(response) {
  try {
    const body = await response.json();
    if (body && body.error) return body.error;
  } catch (_) {
    // not JSON: the status says enough
  }
  return `HTTP ${response.status}`;
}

// -- the model and the dial ------------------------------------------------------------------------
async function loadModel() {
  const response = await api("/v1/model");
  if (!response.ok) throw new Error(await errorOf(response));
  const m = (state.model = await response.json());
  const n = m.levels.length;
  m.levels.forEach((lv, i) => {
    // one blue, darker the denser (green, red and orange are the deadline chart's)
    const f = n > 1 ? i / (n - 1) : 0;
    state.colour[lv.name] = `hsl(${220 - 25 * f} 70% ${25 + 50 * f}%)`;
  });
  const ladder = m.ladder.length ? ` · ladder ${m.ladder.join(" > ")}` : "";
  $("model-line").textContent =
    `${m.model} on ${m.device} · ${n} levels, one set of weights · policy ${m.policy}${ladder}`;
  const slider = $("density");
  slider.max = String(n - 1);
  slider.value = String(n - 1); // the right end is dense
  $("budget").value = String(Math.round(m.default_budget_ms));
  showDensity();
  buildLevelsTable();
  drawCurve();
  $("legend").replaceChildren(
    ...m.levels.map((lv) =>
      el("span", {}, swatch(state.colour[lv.name]), `${lv.name} (${lv.gflops_ratio.toFixed(2)}x)`),
    ),
  );
}

function swatch(colour) {
  const s = el("span", { className: "swatch" });
  s.style.background = colour;
  return s;
}

// The slider runs from the sparsest level (left) to dense (right); levels come densest first.
function pinnedLevel() {
  const levels = state.model.levels;
  return levels[levels.length - 1 - Number($("density").value)];
}

function showDensity() {
  const lv = pinnedLevel();
  const card = lv.top1 !== null ? ` · card top-1 ${fmtPct(lv.top1)}` : "";
  const auto = $("auto").checked ? " (not pinned: the controller chooses)" : "";
  $("density-out").textContent = `${lv.name} · ${lv.gflops_ratio.toFixed(2)}x GFLOPs${card}${auto}`;
}

function budgetMs() {
  const v = Number($("budget").value);
  return v > 0 ? v : state.model.default_budget_ms;
}

function postImage(params) {
  const type = state.file.type && state.file.type.startsWith("image/") ? state.file.type : "application/octet-stream";
  return api(`/v1/classify?${new URLSearchParams(params)}`, {
    method: "POST",
    body: state.file,
    headers: { "Content-Type": type },
  });
}

// -- Try it ----------------------------------------------------------------------------------------
function setFile(file) {
  if (!file) return;
  state.file = file;
  const img = $("preview");
  if (img.src) URL.revokeObjectURL(img.src);
  img.src = URL.createObjectURL(file);
  img.hidden = false;
  $("drop-text").textContent = file.name;
  $("run-all").disabled = false;
  classify().then(runAll);
}

async function classify() {
  if (!state.file) return;
  const params = { latency_budget_ms: String(budgetMs()), top_k: "5" };
  if (!$("auto").checked) params.density = pinnedLevel().name;
  const seq = ++state.seq;
  const answer = $("answer");
  answer.dataset.state = "busy";
  let node;
  try {
    const response = await postImage(params);
    if (seq !== state.seq) return; // a newer request was sent meanwhile
    node = response.ok ? renderAnswer(await response.json()) : [refusal(response, await errorOf(response))];
  } catch (err) {
    if (seq !== state.seq) return;
    node = [el("p", { className: "error", textContent: `Request failed: ${err.message}` })];
  }
  answer.replaceChildren(...node);
  answer.dataset.state = "done";
}

function refusal(response, message) {
  const what = { 429: "Shed (429)", 503: "Not ready (503)", 504: "Expired in the queue (504)" };
  const retry = response.headers.get("Retry-After");
  const after = retry ? ` Retry after ${retry} s.` : "";
  const status = what[response.status] || `Error ${response.status}`;
  return el("p", { className: "error", textContent: `${status}: ${message}.${after}` });
}

const WHY = {
  density: (a) =>
    `You pinned the density, so ${a.level} ran (the budget only decides whether it could be served in time).`,
  budget: (a) =>
    `The controller chose ${a.level}: the densest level it predicted to finish within the ${a.timing.budget_ms} ms ` +
    `budget (predicted ${fmtMs(a.timing.predicted_ms)} ms), given the queues and the arrival rate at that moment.`,
  accuracy: (a) => `The fastest level whose card accuracy meets the requested floor: ${a.level}.`,
  policy: (a) => `The server's policy (${state.model.policy}) fixes the level for requests that pin none: ${a.level}.`,
};

function renderAnswer(a) {
  const info = a.level_info;
  const head = el(
    "div",
    {},
    el("div", { className: "level", id: "answer-level", textContent: a.level }),
    el("div", {
      textContent:
        `${info.gflops_ratio.toFixed(2)}x GFLOPs (${info.gflops.toFixed(3)} GFLOPs) · ` +
        `card top-1 ${fmtPct(info.top1)} · agreement with dense ${fmtPct(info.agreement)}`,
    }),
  );
  const met = el("span", {
    className: `chip ${a.deadline_met ? "ok" : "bad"}`,
    id: "answer-deadline",
    textContent: a.deadline_met ? "deadline met" : "deadline missed",
  });
  const t = a.timing;
  const timing = el(
    "table",
    { className: "timing" },
    ...[
      ["queue", t.queue_ms],
      ["compute", t.compute_ms],
      ["total", t.total_ms],
      ["budget", t.budget_ms],
    ].map(([name, v]) => el("tr", {}, el("td", { textContent: name }), el("td", { textContent: `${fmtMs(v)} ms` }))),
    el("tr", {}, el("td", { textContent: "batch" }), el("td", { textContent: `${a.batch_size} image(s)` })),
  );
  const top = el(
    "ol",
    { className: "top5", id: "answer-top5" },
    ...a.predictions.map((p) => {
      const bar = el("div", { className: "bar" });
      bar.style.width = `${(p.probability * 100).toFixed(1)}%`;
      return el(
        "li",
        {},
        el("span", { textContent: p.label }),
        el("div", {}, bar),
        el("span", { className: "p", textContent: `${(p.probability * 100).toFixed(1)} %` }),
      );
    }),
  );
  const why = el("p", { className: "why", id: "answer-why", textContent: (WHY[a.reason] || (() => a.reason))(a) });
  return [why, el("div", {}, head, el("p", {}, met), timing), top];
}

// -- All levels at once ----------------------------------------------------------------------------
function buildLevelsTable() {
  const body = $("levels-table").tBodies[0];
  body.replaceChildren(
    ...state.model.levels.map((lv) => {
      const cells = [
        lv.name,
        `${lv.gflops.toFixed(3)} (${lv.gflops_ratio.toFixed(2)}x)`,
        fmtPct(lv.top1),
        fmtPct(lv.agreement),
        "",
        "",
        "",
        "",
      ];
      return el("tr", { id: `row-${lv.name}` }, ...cells.map((c) => el("td", { textContent: c })));
    }),
  );
}

async function runAll() {
  if (!state.file) return;
  const button = $("run-all");
  button.disabled = true;
  const table = $("levels-table");
  table.dataset.state = "busy";
  let denseClass = null;
  for (const lv of state.model.levels) {
    const row = $(`row-${lv.name}`);
    row.className = "";
    const cells = row.cells;
    for (let i = 4; i < 8; i++) cells[i].textContent = "…";
    try {
      const response = await postImage({ density: lv.name, top_k: "1", latency_budget_ms: String(budgetMs()) });
      if (!response.ok) {
        row.className = "failed";
        cells[4].textContent = `${response.status}: ${await errorOf(response)}`;
        for (let i = 5; i < 8; i++) cells[i].textContent = "";
        continue;
      }
      const a = await response.json();
      const best = a.predictions[0];
      if (denseClass === null) denseClass = best.index; // the densest served level comes first
      if (best.index !== denseClass) row.className = "differs";
      cells[4].textContent = best.label;
      cells[5].textContent = `${(best.probability * 100).toFixed(1)} %`;
      cells[6].textContent = fmtMs(a.timing.compute_ms);
      cells[7].textContent = fmtMs(a.timing.total_ms);
    } catch (err) {
      row.className = "failed";
      cells[4].textContent = err.message;
    }
  }
  table.dataset.state = "done";
  button.disabled = false;
}

// -- charts: one small canvas helper for the card curve and the live charts ------------------------
function canvas2d(canvas) {
  const ratio = window.devicePixelRatio || 1;
  if (!canvas.dataset.w) {
    canvas.dataset.w = canvas.width;
    canvas.dataset.h = canvas.height;
    canvas.style.width = `${canvas.width}px`;
    canvas.width = canvas.width * ratio;
    canvas.height = canvas.height * ratio;
  }
  const ctx = canvas.getContext("2d");
  ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
  const w = Number(canvas.dataset.w);
  const h = Number(canvas.dataset.h);
  ctx.clearRect(0, 0, w, h);
  ctx.font = "11px system-ui, sans-serif";
  return { ctx, w, h };
}

function niceMax(v) {
  if (v <= 1) return 1;
  const step = 10 ** Math.floor(Math.log10(v));
  for (const m of [1, 2, 2.5, 5, 10]) if (v <= m * step) return m * step;
  return 10 * step;
}

// y axis with three grid lines; returns the plot box
function axes(ctx, w, h, lo, hi, unit = "") {
  const box = { x: 40, y: 6, w: w - 46, h: h - 24 };
  ctx.strokeStyle = "#e3e7ee";
  ctx.fillStyle = "#5d6776";
  ctx.textAlign = "right";
  ctx.textBaseline = "middle";
  for (let i = 0; i <= 2; i++) {
    const v = lo + ((hi - lo) * i) / 2;
    const y = box.y + box.h - (box.h * i) / 2;
    ctx.beginPath();
    ctx.moveTo(box.x, y);
    ctx.lineTo(box.x + box.w, y);
    ctx.stroke();
    ctx.fillText(`${Number.isInteger(v) ? v : v.toFixed(1)}${unit}`, box.x - 4, y);
  }
  return box;
}

// Live chart: per-second values over the window, as stacked bars or as lines.
function drawSeries(canvas, series, { stacked }) {
  const { ctx, w, h } = canvas2d(canvas);
  const n = series[0].values.length;
  const totals = Array.from({ length: n }, (_, i) =>
    stacked ? series.reduce((s, x) => s + x.values[i], 0) : Math.max(...series.map((x) => x.values[i])),
  );
  const top = niceMax(Math.max(1, ...totals));
  const box = axes(ctx, w, h, 0, top);
  const dx = box.w / n;
  const yOf = (v) => box.y + box.h - (box.h * v) / top;
  if (stacked) {
    for (let i = 0; i < n; i++) {
      let base = 0;
      for (const s of series) {
        const v = s.values[i];
        if (!v) continue;
        ctx.fillStyle = s.colour;
        ctx.fillRect(box.x + i * dx, yOf(base + v), Math.max(dx - 0.5, 0.5), yOf(base) - yOf(base + v));
        base += v;
      }
    }
  } else {
    for (const s of series) {
      ctx.strokeStyle = s.colour;
      ctx.lineWidth = 1.5;
      ctx.beginPath();
      s.values.forEach((v, i) => (i ? ctx.lineTo : ctx.moveTo).call(ctx, box.x + (i + 0.5) * dx, yOf(v)));
      ctx.stroke();
    }
    ctx.lineWidth = 1;
  }
  ctx.fillStyle = "#5d6776";
  ctx.textBaseline = "top";
  for (const [frac, label] of [[0, `-${WINDOW_S / 60} min`], [0.5, `-${WINDOW_S / 120} min`], [1, "now"]]) {
    ctx.textAlign = frac === 0 ? "left" : frac === 1 ? "right" : "center";
    ctx.fillText(label, box.x + box.w * frac, box.y + box.h + 4);
  }
  canvas.dataset.total = String(series.reduce((s, x) => s + x.values.reduce((a, b) => a + b, 0), 0));
}

// The level card's curve: top-1 and agreement with dense against GFLOPs, one point per served level.
function drawCurve() {
  const m = state.model;
  const canvas = $("curve");
  const points = m.levels.filter((lv) => lv.top1 !== null || lv.agreement !== null);
  if (!points.length) {
    canvas.hidden = true;
    $("curve-note").textContent =
      `No level card for ${m.model}, so no measured accuracy per level (SAIT_LEVEL_CARD sets one). ` +
      `GFLOPs per level: ${m.levels.map((lv) => `${lv.name} ${lv.gflops.toFixed(3)}`).join(", ")}.`;
    return;
  }
  const { ctx, w, h } = canvas2d(canvas);
  const values = points.flatMap((lv) => [pct(lv.top1), pct(lv.agreement)]).filter((v) => v !== null);
  const lo = Math.floor(Math.min(...values) / 5) * 5;
  const box = axes(ctx, w, h - 22, lo, 100, " %");
  const gf = points.map((lv) => lv.gflops);
  const g0 = Math.min(...gf) * 0.95;
  const g1 = Math.max(...gf) * 1.03;
  const xOf = (g) => box.x + (box.w * (g - g0)) / (g1 - g0);
  const yOf = (v) => box.y + box.h - (box.h * (v - lo)) / (100 - lo);
  const lines = [
    ["top-1", "#2456a6", (lv) => pct(lv.top1)],
    ["agreement with dense", "#2e8540", (lv) => pct(lv.agreement)],
  ];
  for (const [, colour, get] of lines) {
    const pts = points.filter((lv) => get(lv) !== null).sort((a, b) => a.gflops - b.gflops);
    ctx.strokeStyle = ctx.fillStyle = colour;
    ctx.beginPath();
    pts.forEach((lv, i) => (i ? ctx.lineTo : ctx.moveTo).call(ctx, xOf(lv.gflops), yOf(get(lv))));
    ctx.stroke();
    for (const lv of pts) {
      ctx.beginPath();
      ctx.arc(xOf(lv.gflops), yOf(get(lv)), 3, 0, 2 * Math.PI);
      ctx.fill();
    }
  }
  ctx.fillStyle = "#1d2430";
  ctx.textAlign = "center";
  ctx.textBaseline = "top";
  for (const lv of points) ctx.fillText(lv.name, xOf(lv.gflops), box.y + box.h + 3);
  ctx.fillStyle = "#5d6776";
  for (const lv of points) ctx.fillText(lv.gflops.toFixed(2), xOf(lv.gflops), box.y + box.h + 16);
  ctx.textAlign = "right";
  ctx.fillText("GFLOPs per image", box.x + box.w, h - 12);
  ctx.textAlign = "left";
  lines.forEach(([label, colour], i) => {
    ctx.fillStyle = colour;
    ctx.fillText(`● ${label}`, box.x + 8, box.y + 4 + 14 * i);
  });
  $("curve-note").textContent =
    "Measured per level on the evaluation images; the levels share one set of weights. " +
    "Card top-1 is against the labels, agreement is with the dense level's answer.";
}

// -- Live -------------------------------------------------------------------------------------------
async function poll() {
  try {
    const since = state.lastT === null ? "" : `?since_s=${state.lastT}`;
    const response = await api(`/v1/live${since}`);
    if (!response.ok) throw new Error(await errorOf(response));
    const body = await response.json();
    for (const s of body.samples) state.live.set(s.t_s, s);
    if (body.samples.length) state.lastT = body.samples[body.samples.length - 1].t_s;
    for (const t of state.live.keys()) if (t <= state.lastT - WINDOW_S) state.live.delete(t);
    drawLive();
    $("live-state").textContent = "";
  } catch (err) {
    $("live-state").textContent = `(not updating: ${err.message})`;
  }
  setTimeout(poll, POLL_MS);
}

function drawLive() {
  if (state.lastT === null || !state.model) return;
  const seconds = Array.from({ length: WINDOW_S }, (_, i) => state.live.get(state.lastT - WINDOW_S + 1 + i) || null);
  const get = (f) => seconds.map((s) => (s ? f(s) : 0));
  const served = (s) => Object.values(s.served).reduce((a, b) => a + b, 0);
  const arrivals = [
    { colour: "#2456a6", values: get((s) => s.arrived) },
    { colour: "#2e8540", values: get(served) },
  ];
  const mix = state.model.levels.map((lv) => ({
    colour: state.colour[lv.name],
    values: get((s) => s.served[lv.name] || 0),
  }));
  const queue = [{ colour: "#7a4fb0", values: get((s) => s.queue_max) }];
  const deadlines = [
    { colour: "#2e8540", values: get((s) => s.met) },
    { colour: "#c0392b", values: get((s) => s.missed) },
    { colour: "#d98a00", values: get((s) => s.shed) },
  ];
  drawSeries($("chart-arrivals"), arrivals, { stacked: false });
  drawSeries($("chart-mix"), mix, { stacked: true });
  drawSeries($("chart-queue"), queue, { stacked: false });
  drawSeries($("chart-deadlines"), deadlines, { stacked: true });
  // Captions: the last complete second (the newest one is still counting) and the window's peak.
  const last = (values) => values[values.length - 2];
  const peak = (values) => Math.max(...values);
  $("cap-arrivals").replaceChildren(
    swatch(arrivals[0].colour),
    `${last(arrivals[0].values)} arrived (peak ${peak(arrivals[0].values)}) `,
    swatch(arrivals[1].colour),
    `${last(arrivals[1].values)} answered`,
  );
  const lastSample = seconds[seconds.length - 2];
  const mixNow = lastSample ? Object.entries(lastSample.served).map(([k, v]) => `${k} ${v}`).join(", ") : "";
  $("cap-mix").textContent = mixNow || "none";
  $("cap-queue").textContent = `${last(queue[0].values)} (peak ${peak(queue[0].values)})`;
  $("cap-deadlines").replaceChildren(
    ...deadlines.flatMap((d, i) => [swatch(d.colour), `${last(d.values)} ${["met", "missed", "shed"][i]} `]),
  );
}

// -- wiring -----------------------------------------------------------------------------------------
function wire() {
  $("file").addEventListener("change", (e) => setFile(e.target.files[0]));
  const drop = $("drop");
  drop.addEventListener("dragover", (e) => {
    e.preventDefault();
    drop.classList.add("over");
  });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    setFile(e.dataTransfer.files[0]);
  });
  $("density").addEventListener("input", () => {
    $("auto").checked = false; // moving the slider pins the level
    showDensity();
  });
  $("density").addEventListener("change", classify);
  $("auto").addEventListener("change", () => {
    showDensity();
    classify();
  });
  $("budget").addEventListener("change", classify);
  $("dial").addEventListener("submit", (e) => e.preventDefault());
  $("run-all").addEventListener("click", runAll);
  $("key-dialog").addEventListener("cancel", (e) => e.preventDefault()); // nothing works without a key
}

async function main() {
  wire();
  try {
    await loadModel();
  } catch (err) {
    $("model-line").textContent = `Cannot read the model from this server: ${err.message}`;
    return;
  }
  document.body.dataset.ready = "true";
  poll();
}

main();

// The playground: search features, edit them, generate unsteered and steered side by side,
// inspect and contrast texts. Speaks only the server's JSON API (what curl can send); holds
// its state (prompt, edits, sampling) in the URL's hash so a link restores it.

const $ = (id) => document.getElementById(id);

const state = {
  model: null,          // /v1/steering/model's answer
  edits: [],            // {sae, feature, mode, value, active, tm, label}
  watch: "",            // "SAE:FEATURE" the steered column is coloured by ("" = first edit's)
  running: null,        // AbortController of the generation in flight
};

// ---- the API ---------------------------------------------------------------------------

class ApiError extends Error {
  constructor(message, param) {
    super(message);
    this.param = param;
  }
}

function headers() {
  const h = { "content-type": "application/json" };
  const token = $("api-token").value.trim();
  if (token) h.authorization = `Bearer ${token}`;
  return h;
}

function errorOf(body, status) {
  const e = body && body.error;
  if (!e) return new ApiError(`the server answered ${status}`, null);
  return new ApiError(e.message || `the server answered ${status}`, e.param || null);
}

async function api(path, body, signal) {
  const init = { method: body === undefined ? "GET" : "POST", headers: headers(), signal };
  if (body !== undefined) init.body = JSON.stringify(body);
  const response = await fetch(path, init);
  const data = await response.json().catch(() => null);
  if (!response.ok) throw errorOf(data, response.status);
  return data;
}

// Server-sent events of a streamed completion: calls onChunk(chunk) per `data:` event.
async function stream(path, body, onChunk, signal) {
  const response = await fetch(path, {
    method: "POST", headers: headers(), body: JSON.stringify(body), signal,
  });
  if (!response.ok) throw errorOf(await response.json().catch(() => null), response.status);
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const event = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      for (const line of event.split("\n")) {
        if (!line.startsWith("data: ")) continue;
        const data = line.slice(6);
        if (data === "[DONE]") return;
        const chunk = JSON.parse(data);
        if (chunk.error) throw errorOf(chunk, 200);
        onChunk(chunk);
      }
    }
  }
}

// ---- errors ----------------------------------------------------------------------------

function showError(err) {
  if (err && err.name === "AbortError") return;
  const box = $("error-box");
  let text = err instanceof ApiError ? err.message : `cannot reach the server (${err})`;
  if (err instanceof ApiError && err.param && !text.startsWith(err.param)) {
    text = `${err.param}: ${text}`;
  }
  box.textContent = text;
  box.hidden = false;
}

function clearError() {
  $("error-box").hidden = true;
  $("error-box").textContent = "";
}

// ---- edits and their strength slider ---------------------------------------------------

const SLIDER_STEPS = 1000;
const BASE = 100; // log-like: each tenth of the slider multiplies the reach by ~1.6

// The range a mode's slider spans: in multiples of the typical maximum where it is known.
function span(edit) {
  if (edit.mode === "scale") return { low: 0, high: 10 };
  const high = edit.tm > 0 ? 10 : 1000;
  return { low: edit.mode === "add" ? -high : 0, high };
}

// Slider position (-1000..1000) <-> amount (a multiple where known, else raw).
function amountAt(position, high) {
  const mag = ((BASE ** (Math.abs(position) / SLIDER_STEPS) - 1) / (BASE - 1)) * high;
  return Math.sign(position) * mag;
}

function positionOf(amount, high) {
  const mag = Math.log(1 + (Math.abs(amount) / high) * (BASE - 1)) / Math.log(BASE);
  return Math.round(Math.sign(amount) * Math.min(1, mag) * SLIDER_STEPS);
}

const usesMultiple = (edit) => edit.tm > 0 && (edit.mode === "set" || edit.mode === "add");
const round = (x) => (x === 0 ? 0 : Number(x.toPrecision(4)));
const ref = (e) => `${e.sae}:${e.feature}`;

function editText(edit) {
  const value = edit.mode === "ablate" ? "" : `:${edit.value}`;
  return `${ref(edit)}=${edit.mode}${value}${edit.active ? "@active" : ""}`;
}

// A new edit sets the feature to its typical maximum where known (on the demo that already
// turns text toward the concept; several times more wrecks it), else to a raw 8.
function addEdit(feature) {
  const tm = Number(feature.typical_max) || 0;
  const edit = {
    sae: feature.sae, feature: Number(feature.feature), mode: "set",
    value: tm > 0 ? tm : 8, active: false, tm, label: feature.label || "",
  };
  const same = state.edits.findIndex((e) => ref(e) === ref(edit));
  if (same >= 0) state.edits.splice(same, 1);
  state.edits.push(edit);
  renderEdits();
  saveState();
}

function strengthText(edit) {
  if (edit.mode === "ablate") return "set to 0";
  if (edit.mode === "scale") return `× ${edit.value}`;
  if (usesMultiple(edit)) {
    return `${round(edit.value / edit.tm)}× typical max (${edit.tm}) = ${edit.value}`;
  }
  return `${edit.value} (raw activation; typical max unknown)`;
}

function editRow(edit, index) {
  const li = document.createElement("li");
  li.className = "edit";
  li.setAttribute("data-testid", "edit-row");
  const title = document.createElement("div");
  title.className = "row spread";
  const name = document.createElement("span");
  name.className = "feature";
  const label = document.createElement("span");
  label.className = "label";
  label.textContent = edit.label;
  name.append(featureId(edit), " ", label);
  const remove = document.createElement("button");
  remove.type = "button";
  remove.className = "icon";
  remove.textContent = "✕";
  remove.title = remove.ariaLabel = `remove ${ref(edit)}`;
  remove.setAttribute("data-testid", "edit-remove");
  remove.addEventListener("click", () => {
    state.edits.splice(index, 1);
    renderEdits();
    saveState();
  });
  title.append(name, remove);

  const controls = document.createElement("div");
  controls.className = "row";
  const mode = document.createElement("select");
  mode.setAttribute("aria-label", `mode of ${ref(edit)}`);
  mode.setAttribute("data-testid", "edit-mode");
  for (const m of ["set", "add", "scale", "ablate"]) mode.add(new Option(m, m, false, m === edit.mode));
  const active = document.createElement("label");
  active.className = "check small";
  active.innerHTML = `<input type="checkbox" data-testid="edit-active"> only when active`;
  const activeBox = active.querySelector("input");
  activeBox.checked = edit.active;
  const sweepButton = document.createElement("button");
  sweepButton.type = "button";
  sweepButton.className = "add sweep-button";
  sweepButton.textContent = "Sweep";
  sweepButton.title = `how strong? generate at several strengths of ${ref(edit)} and chart concept and fluency`;
  sweepButton.setAttribute("data-testid", "sweep-button");
  sweepButton.addEventListener("click", () => runSweep(edit, sweepButton));
  controls.append(mode, active, sweepButton);

  const slider = document.createElement("input");
  slider.type = "range";
  slider.setAttribute("data-testid", "edit-strength");
  slider.setAttribute("aria-label", `strength of ${ref(edit)}`);
  const readout = document.createElement("div");
  readout.className = "readout small";
  readout.setAttribute("data-testid", "edit-readout");

  const sync = () => {
    const { low, high } = span(edit);
    slider.min = low < 0 ? -SLIDER_STEPS : 0;
    slider.max = SLIDER_STEPS;
    slider.disabled = edit.mode === "ablate";
    sweepButton.disabled = edit.mode === "ablate" || sweeping;
    const amount = usesMultiple(edit) ? edit.value / edit.tm : edit.value;
    slider.value = positionOf(amount, high);
    slider.setAttribute("data-value", String(edit.mode === "ablate" ? 0 : edit.value));
    readout.textContent = strengthText(edit);
  };
  slider.addEventListener("input", () => {
    const { high } = span(edit);
    const amount = amountAt(Number(slider.value), high);
    edit.value = round(usesMultiple(edit) ? round(amount) * edit.tm : amount);
    slider.setAttribute("data-value", String(edit.value));
    readout.textContent = strengthText(edit);
    saveState();
  });
  mode.addEventListener("change", () => {
    edit.mode = mode.value;
    if (edit.mode === "scale") edit.value = 2;
    else if (edit.mode === "add" || edit.mode === "set") edit.value = edit.tm > 0 ? edit.tm : 8;
    sync();
    saveState();
  });
  activeBox.addEventListener("change", () => {
    edit.active = activeBox.checked;
    saveState();
  });
  sync();
  li.append(title, controls, slider, readout);
  return li;
}

function renderEdits() {
  const list = $("edits");
  list.replaceChildren(...state.edits.map(editRow));
  $("edits-empty").hidden = state.edits.length > 0;
  renderFeatureChoices();
}

// The features one may colour by: the edits' features (and the watched one from the URL).
function renderFeatureChoices() {
  const refs = [...new Set(state.edits.map(ref))];
  if (state.watch && !refs.includes(state.watch)) refs.push(state.watch);
  const labels = Object.fromEntries(state.edits.map((e) => [ref(e), e.label]));
  const watch = $("watch-select");
  const chosen = refs.includes(state.watch) ? state.watch : refs[0] || "";
  watch.replaceChildren(...refs.map((r) => new Option(`${r} ${labels[r] || ""}`.trim(), r)));
  watch.value = chosen;
  const inspect = $("inspect-feature");
  const before = inspect.value;
  inspect.replaceChildren(
    new Option("each token's strongest feature", ""),
    ...refs.map((r) => new Option(`${r} ${labels[r] || ""}`.trim(), r)),
  );
  if ([...inspect.options].some((o) => o.value === before)) inspect.value = before;
}

// ---- the URL holds the state -----------------------------------------------------------

// A hash readable by people: `#prompt=...&edit=demo:632=set:974~487~sea` (edit, typical
// maximum, label); URLSearchParams reads it back.
const part = (s) => encodeURIComponent(s).replace(/%(3A|40|7E|3D|2C)/g, (_, c) => String.fromCharCode(parseInt(c, 16)));

function saveState() {
  const p = [];
  const put = (key, value) => p.push(`${key}=${part(value)}`);
  const prompt = $("prompt-input").value;
  if (prompt) put("prompt", prompt);
  if ($("chat-mode").checked) put("chat", "1");
  put("max", $("max-tokens").value);
  put("temp", $("temperature").value);
  put("seed", $("seed").value);
  for (const e of state.edits) put("edit", [editText(e), e.tm || "", e.label].join("~"));
  if (state.watch) put("watch", state.watch);
  history.replaceState(null, "", `#${p.join("&")}`);
}

function parseEdit(text) {
  const [spec, tm, ...label] = text.split("~");
  const m = /^(.+):(\d+)=(set|add|scale|ablate)(?::([^@]+))?(@active)?$/.exec(spec);
  if (!m) return null;
  return {
    sae: m[1], feature: Number(m[2]), mode: m[3], value: m[4] === undefined ? 0 : Number(m[4]),
    active: Boolean(m[5]), tm: Number(tm) || 0, label: label.join("~"),
  };
}

function loadState() {
  const p = new URLSearchParams(location.hash.slice(1));
  if (p.has("prompt")) $("prompt-input").value = p.get("prompt");
  $("chat-mode").checked = p.get("chat") === "1";
  if (p.has("max")) $("max-tokens").value = p.get("max");
  if (p.has("temp")) $("temperature").value = p.get("temp");
  if (p.has("seed")) $("seed").value = p.get("seed");
  state.edits = p.getAll("edit").map(parseEdit).filter(Boolean);
  state.watch = p.get("watch") || "";
  renderEdits();
}

// ---- requests the page sends (and copies) ----------------------------------------------

function refObject(text) {
  const at = text.lastIndexOf(":");
  return { sae: text.slice(0, at), feature: Number(text.slice(at + 1)) };
}

function watched() {
  return $("watch-select").value || "";
}

// The steered request's body (steered=false: the same without edits, still watching).
function generationBody(steered) {
  const body = { model: state.model ? state.model.model.name : "" };
  const prompt = $("prompt-input").value;
  if ($("chat-mode").checked) body.messages = [{ role: "user", content: prompt }];
  else body.prompt = prompt;
  const num = (id) => ($(id).value === "" ? undefined : Number($(id).value));
  body.max_tokens = num("max-tokens");
  body.temperature = num("temperature");
  body.seed = num("seed");
  const steering = {};
  if (steered && state.edits.length) steering.edits = state.edits.map(editText);
  if (watched()) steering.watch = [watched()];
  if (Object.keys(steering).length) body.steering = steering;
  return body;
}

const route = () => ($("chat-mode").checked ? "/v1/chat/completions" : "/v1/completions");

// ---- generation: both columns, streaming -----------------------------------------------

function heat(span, value, scale) {
  const share = scale > 0 ? Math.min(1, Math.max(0, value) / scale) : 0;
  span.style.setProperty("--heat", share.toFixed(3));
}

// A column's tokens: spans carrying the watched feature's activation.
class Column {
  constructor(element, scale) {
    this.element = element;
    this.scale = scale;
    this.spans = [];
    element.replaceChildren();
    element.classList.add("busy");
  }

  add(chunk) {
    const choice = chunk.choices && chunk.choices[0];
    if (!choice) return;
    const text = choice.text ?? (choice.delta && choice.delta.content) ?? "";
    const seen = (chunk.steering && chunk.steering.watched) || [];
    if (!text) return;
    const pieces = seen.map((w) => w.token);
    if (seen.length && pieces.join("") === text) {
      seen.forEach((w) => this.token(w.token, w.activations[0]));
    } else if (seen.length) {
      this.token(text, Math.max(...seen.map((w) => w.activations[0])));
    } else {
      this.token(text, null);
    }
  }

  token(text, activation) {
    const span = document.createElement("span");
    span.textContent = text;
    if (activation !== null && activation !== undefined) {
      span.className = "token";
      span.setAttribute("data-testid", "token");
      span.setAttribute("data-activation", String(activation));
      span.title = `${watched()} = ${round(activation)}`;
      this.spans.push(span);
    }
    this.element.append(span);
    this.recolour();
  }

  recolour() {
    const top = Math.max(this.scale, ...this.spans.map((s) => Number(s.dataset.activation)));
    for (const s of this.spans) heat(s, Number(s.dataset.activation), top);
  }

  done() {
    this.element.classList.remove("busy");
  }
}

function watchedScale() {
  const edit = state.edits.find((e) => ref(e) === watched());
  return edit && edit.tm > 0 ? edit.tm : 0;
}

async function generate() {
  clearError();
  saveState();
  if (state.running) state.running.abort();
  const running = new AbortController();
  state.running = running;
  const scale = watchedScale();
  const plain = new Column($("output-unsteered"), scale);
  const steered = new Column($("output-steered"), scale);
  $("receipts").replaceChildren();
  for (const id of ["presence-unsteered", "presence-steered"]) $(id).hidden = true;
  const button = $("generate-button");
  button.disabled = true;
  const receipts = (chunk) => {
    for (const r of (chunk.steering && chunk.steering.receipts) || []) {
      const li = document.createElement("li");
      li.setAttribute("data-testid", "receipt");
      li.innerHTML = "<code></code> ";
      li.querySelector("code").textContent = r.edit;
      li.append(`applied at ${r.applied_positions} positions, the feature active at ${r.active_positions}`);
      $("receipts").append(li);
    }
  };
  // Both at once (the server batches them); the steered call's error is the one shown.
  const [one, two] = await Promise.allSettled([
    stream(route(), { ...generationBody(true), stream: true }, (c) => {
      steered.add(c);
      receipts(c);
    }, running.signal),
    stream(route(), { ...generationBody(false), stream: true }, (c) => plain.add(c), running.signal),
  ]);
  const failed = [one, two].find((r) => r.status === "rejected");
  if (failed) showError(failed.reason);
  plain.done();
  steered.done();
  if (!failed) {
    try {
      await conceptPresence(running.signal);
    } catch (err) {
      showError(err);
    }
  }
  if (state.running === running) state.running = null;
  button.disabled = false;
}

// ---- concept presence, the Score way ---------------------------------------------------

// Each column's text read by the unsteered model (POST /v1/steering/score): the watched
// feature's mean activation over it (unlike the watched values above, not read under the edit)
// and the text's mean log-probability per token (its fluency).
async function conceptPresence(signal) {
  const feature = watched();
  if (!feature) return;
  const prompt = $("prompt-input").value;
  const columns = [["output-unsteered", "presence-unsteered"], ["output-steered", "presence-steered"]];
  const boxes = columns.map(([, box]) => $(box));
  for (const box of boxes) {
    box.hidden = false;
    box.textContent = "concept presence: measuring…";
  }
  const answers = await Promise.all(columns.map(([output]) => {
    const continuation = $(output).textContent;
    if (!continuation) return null;
    return api("/v1/steering/score", { prompt, continuation, features: [feature] }, signal);
  }));
  answers.forEach((answer, i) => {
    const box = boxes[i];
    box.replaceChildren();
    if (!answer) {
      box.textContent = "concept presence: no text to read";
      return;
    }
    const activation = answer.mean_activations[0];
    box.setAttribute("data-activation", String(activation));
    box.setAttribute("data-logprob", String(answer.mean_logprob));
    const b = (x) => {
      const el = document.createElement("b");
      el.textContent = String(round(x));
      return el;
    };
    box.append(`concept presence (unsteered reading) of ${feature}: mean activation `, b(activation),
      ", mean logprob ", b(answer.mean_logprob));
    box.title = `${answer.tokens.length} tokens read after the prompt`
      + ($("chat-mode").checked ? " (the prompt read as plain text, without the chat template)" : "");
  });
}

// ---- feature cards ---------------------------------------------------------------------

// A feature's id as a button that opens its card.
function featureId(feature) {
  const button = document.createElement("button");
  button.type = "button";
  button.className = "fid";
  button.setAttribute("data-testid", "feature-id");
  button.title = `${ref(feature)}: open its card`;
  const code = document.createElement("code");
  code.textContent = ref(feature);
  button.append(code);
  button.addEventListener("click", () => openCard(feature, button));
  return button;
}

// A token as text people can read: spaces and line breaks made visible.
const shown = (text) => (text === "" ? "∅" : text.replaceAll(" ", "·").replaceAll("\n", "⏎"));

// A top context, "…the [[sea]] was…": the marked tokens highlighted, everything as text.
function contextLine(context) {
  const li = document.createElement("li");
  li.setAttribute("data-testid", "card-context");
  const parts = context.split(/\[\[(.*?)\]\]/s);
  parts.forEach((part, i) => {
    if (i % 2 === 0) {
      if (part) li.append(part);
    } else {
      const mark = document.createElement("mark");
      mark.textContent = part;
      li.append(mark);
    }
  });
  return li;
}

function tokenChips(tokens, testid) {
  const list = document.createElement("ul");
  list.className = "chips";
  for (const t of tokens) {
    const li = document.createElement("li");
    li.className = "chip";
    li.setAttribute("data-testid", testid);
    li.setAttribute("data-token-id", String(t.token_id));
    li.setAttribute("data-text", t.text);
    li.setAttribute("data-weight", String(t.weight));
    li.textContent = shown(t.text);
    li.title = `token ${t.token_id} ${JSON.stringify(t.text)}: ${round(t.weight)}`;
    list.append(li);
  }
  return list;
}

let cardOpener = null; // the id button that opened the card (focus goes back there)

async function openCard(feature, opener) {
  cardOpener = opener || null;
  const panel = $("feature-card");
  const body = $("card-body");
  $("card-title").textContent = ref(feature);
  body.replaceChildren(Object.assign(document.createElement("p"), { className: "hint", textContent: "loading…" }));
  panel.hidden = false;
  panel.setAttribute("data-feature", ref(feature));
  try {
    const path = `/v1/steering/features/${encodeURIComponent(feature.sae)}/${Number(feature.feature)}?top_tokens=10`;
    const card = await api(path);
    if (panel.getAttribute("data-feature") !== ref(feature)) return; // another card was opened
    renderCard(card);
    $("card-close").focus();
  } catch (err) {
    body.replaceChildren();
    showError(err);
  }
}

function renderCard(card) {
  const body = $("card-body");
  const label = document.createElement("p");
  label.className = "card-label";
  label.setAttribute("data-testid", "card-label");
  label.textContent = card.label || "(no label)";
  const facts = document.createElement("p");
  facts.className = "small muted";
  facts.textContent = [
    card.typical_max > 0 ? `typical max ${round(card.typical_max)}` : "typical max unknown",
    card.frequency > 0 ? `fires at ${Number((card.frequency * 100).toPrecision(2))}% of tokens` : "frequency unknown",
  ].join(" · ");
  const add = document.createElement("button");
  add.type = "button";
  add.className = "add";
  add.textContent = "add as an edit";
  add.addEventListener("click", () => addEdit(card));
  const parts = [label, facts, add];
  const heading = (text) => Object.assign(document.createElement("h3"), { textContent: text });
  if (card.top_contexts.length) {
    const list = document.createElement("ul");
    list.className = "contexts";
    list.append(...card.top_contexts.map(contextLine));
    parts.push(heading("top contexts"), list);
  }
  parts.push(
    heading("promotes (decoder · unembedding, highest)"), tokenChips(card.promoted, "card-promoted"),
    heading("suppresses (lowest)"), tokenChips(card.suppressed, "card-suppressed"),
  );
  body.replaceChildren(...parts);
}

function closeCard() {
  $("feature-card").hidden = true;
  $("feature-card").removeAttribute("data-feature");
  if (cardOpener && cardOpener.isConnected) cardOpener.focus();
  cardOpener = null;
}

// ---- sweep: a dose-response chart --------------------------------------------------------

let sweeping = false;

function sweepStrengths() {
  const text = $("sweep-strengths").value.trim();
  if (!text) return [];
  return text.split(/[\s,]+/).filter(Boolean).map((x) => Number(x.replace(/x$/, "")));
}

function sweepPrompts() {
  const prompts = [$("prompt-input").value.trim(), ...lines("sweep-prompts")].filter(Boolean);
  return [...new Set(prompts)];
}

async function runSweep(edit, button) {
  clearError();
  const body = {
    feature: ref(edit), mode: edit.mode, prompts: sweepPrompts(), strengths: sweepStrengths(),
    only_when_active: edit.active,
  };
  const max = Number($("max-tokens").value);
  if (max > 0) body.max_new_tokens = max;
  sweeping = true;
  for (const b of document.querySelectorAll('[data-testid="sweep-button"]')) b.disabled = true;
  const pairs = body.prompts.length * (body.strengths.length || 7);
  $("sweep-status").textContent = `sweeping ${ref(edit)}: about ${pairs} generations in one batch…`;
  try {
    const answer = await api("/v1/steering/sweep", body);
    renderSweep(answer, body, edit);
    $("sweep-status").textContent = "";
    $("h-sweep").scrollIntoView({ block: "nearest" });
  } catch (err) {
    $("sweep-status").textContent = "";
    showError(err);
  } finally {
    sweeping = false;
    renderEdits();
    button.blur();
  }
}

// SVG's namespace as the HTML parser assigns it (the page spells out no address).
const SVG = Object.assign(document.createElement("template"), { innerHTML: "<svg></svg>" })
  .content.firstChild.namespaceURI;

function svg(tag, attrs, text) {
  const el = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, String(v));
  if (text !== undefined) el.textContent = text;
  return el;
}

// A nice range [low, high] around values, with a few round ticks.
function axis(values) {
  let low = Math.min(...values);
  let high = Math.max(...values);
  if (high - low < 1e-9) {
    low -= 1;
    high += 1;
  }
  const pad = (high - low) * 0.08;
  low -= pad;
  high += pad;
  const raw = (high - low) / 4;
  const step = 10 ** Math.floor(Math.log10(raw));
  const nice = [1, 2, 2.5, 5, 10].map((m) => m * step).find((s) => s >= raw);
  const ticks = [];
  for (let t = Math.ceil(low / nice) * nice; t <= high + 1e-9; t += nice) ticks.push(round(t));
  return { low, high, ticks };
}

// The chart: strengths evenly along x (0, 0.25, … are a doubling series), concept on the
// left axis, mean log-probability on the right, the recommended strength marked, and the
// floor the recommendation keeps log-probability above (strength 0's minus 1 nat) dashed.
function sweepChart(answer, relative, onPick) {
  const W = 640, H = 250, L = 52, R = 56, T = 18, B = 40;
  const points = answer.points;
  const n = points.length;
  const x = (i) => L + (n === 1 ? (W - L - R) / 2 : (i * (W - L - R)) / (n - 1));
  const base = points.find((p) => p.strength === 0);
  const floor = base ? base.logprob - 1 : null;
  const cy = axis(points.map((p) => p.concept).concat(0));
  const ly = axis(points.map((p) => p.logprob).concat(floor === null ? [] : [floor]));
  const yOf = (a) => (v) => T + ((a.high - v) / (a.high - a.low)) * (H - T - B);
  const yc = yOf(cy), yl = yOf(ly);
  const chart = svg("svg", {
    viewBox: `0 0 ${W} ${H}`, class: "sweep-chart", role: "img", "data-testid": "sweep-chart",
    "aria-label": "concept and log-probability against strength",
  });
  chart.append(svg("title", {}, "concept (left) and mean log-probability (right) against strength"));
  for (const t of cy.ticks) {
    chart.append(svg("line", { x1: L, x2: W - R, y1: yc(t), y2: yc(t), class: "grid" }));
    chart.append(svg("text", { x: L - 6, y: yc(t) + 4, class: "tick concept", "text-anchor": "end" }, String(t)));
  }
  for (const t of ly.ticks) {
    chart.append(svg("text", { x: W - R + 6, y: yl(t) + 4, class: "tick logprob" }, String(t)));
  }
  chart.append(svg("text", { x: 4, y: 12, class: "axis-name concept" }, "concept ●"));
  chart.append(svg("text", { x: W - 4, y: 12, class: "axis-name logprob", "text-anchor": "end" }, "logprob ◆"));
  chart.append(svg("text", { x: (L + W - R) / 2, y: H - 4, class: "axis-name", "text-anchor": "middle" },
    relative ? "strength (× typical max)" : "strength"));
  if (floor !== null) {
    chart.append(svg("line", { x1: L, x2: W - R, y1: yl(floor), y2: yl(floor), class: "floor" }));
    chart.append(svg("text", { x: W - R - 4, y: yl(floor) - 4, class: "tick logprob", "text-anchor": "end" },
      "unsteered − 1 nat"));
  }
  const rec = answer.recommendation;
  // Each strength's column (what hover and click act on) under the curves and their dots.
  const marks = svg("g", { class: "marks" });
  points.forEach((p, i) => {
    const recommended = rec.found && p.strength === rec.strength;
    const g = svg("g", {
      class: `point${recommended ? " recommended" : ""}`, tabindex: 0, role: "button",
      "data-testid": "sweep-point", "data-strength": p.strength, "data-value": p.value,
      "data-concept": p.concept, "data-logprob": p.logprob, "data-repetition": p.repetition,
      "aria-label": `strength ${p.strength}: concept ${round(p.concept)}, logprob ${round(p.logprob)}`,
    });
    const left = i === 0 ? L : (x(i - 1) + x(i)) / 2;
    const right = i === n - 1 ? W - R : (x(i) + x(i + 1)) / 2;
    g.append(svg("rect", { x: left, y: T, width: right - left, height: H - T - B, class: "band" }));
    if (recommended) {
      g.append(svg("line", { x1: x(i), x2: x(i), y1: T, y2: H - B, class: "rec-line" }));
      g.append(svg("text", { x: x(i), y: T - 5, class: "rec-label", "text-anchor": "middle" }, "recommended"));
    }
    marks.append(svg("circle", { cx: x(i), cy: yc(p.concept), r: 4.5, class: "dot concept" }));
    const d = 5;
    marks.append(svg("path", { d: `M${x(i)},${yl(p.logprob) - d}l${d},${d}l${-d},${d}l${-d},${-d}z`, class: "dot logprob" }));
    g.append(svg("text", { x: x(i), y: H - B + 16, class: "tick", "text-anchor": "middle" }, `${p.strength}${relative ? "×" : ""}`));
    g.append(svg("title", {}, `strength ${p.strength} (value ${round(p.value)})\nconcept ${round(p.concept)}`
      + `\nlogprob ${round(p.logprob)}\nrepeated 3-grams ${Math.round(p.repetition * 100)}%\nclick for the texts`));
    g.addEventListener("click", () => onPick(i));
    g.addEventListener("keydown", (e) => {
      if (e.key === "Enter" || e.key === " ") {
        e.preventDefault();
        onPick(i);
      }
    });
    chart.append(g);
  });
  const path = (y, key) => points.map((p, i) => `${i ? "L" : "M"}${x(i).toFixed(1)},${y(p[key]).toFixed(1)}`).join(" ");
  marks.prepend(svg("path", { d: path(yc, "concept"), class: "line concept" }),
    svg("path", { d: path(yl, "logprob"), class: "line logprob" }));
  chart.append(marks);
  return chart;
}

function renderSweep(answer, body, edit) {
  const box = $("sweep-result");
  const points = answer.points;
  const relative = points.some((p) => p.strength !== 0 && p.value !== p.strength);
  const rec = answer.recommendation;
  const head = document.createElement("p");
  head.className = "small";
  head.append(`${body.feature} `, Object.assign(document.createElement("span"), { className: "muted", textContent: edit.label }),
    ` · ${body.mode} · ${body.prompts.length} prompt${body.prompts.length === 1 ? "" : "s"}`);
  const texts = document.createElement("div");
  texts.className = "sweep-texts";
  texts.setAttribute("data-testid", "sweep-texts");
  const pick = (i) => {
    const p = points[i];
    for (const g of box.querySelectorAll('[data-testid="sweep-point"]')) g.classList.toggle("picked", g.getAttribute("data-strength") === String(p.strength));
    const title = document.createElement("h3");
    title.textContent = `texts at strength ${p.strength}${relative ? "×" : ""} (value ${round(p.value)}; `
      + `repeated 3-grams ${Math.round(p.repetition * 100)}%)`;
    const list = document.createElement("ol");
    p.texts.forEach((t, j) => {
      const li = document.createElement("li");
      const prompt = document.createElement("span");
      prompt.className = "muted";
      prompt.textContent = body.prompts[j];
      li.append(prompt, t);
      list.append(li);
    });
    texts.replaceChildren(title, list);
  };
  const recBox = document.createElement("div");
  recBox.className = "row spread sweep-rec";
  const recText = document.createElement("p");
  recText.setAttribute("data-testid", "sweep-recommendation");
  recText.setAttribute("data-found", String(rec.found));
  if (rec.found) {
    recText.setAttribute("data-strength", String(rec.strength));
    recText.setAttribute("data-value", String(rec.value));
    const b = document.createElement("b");
    b.textContent = relative ? `${rec.strength}× typical max (${round(rec.value)})` : String(round(rec.value));
    recText.append("recommended: ", b, ` — ${rec.reason}`);
  } else {
    recText.append(`no recommendation: ${rec.reason}`);
  }
  recBox.append(recText);
  if (rec.found) {
    const use = document.createElement("button");
    use.type = "button";
    use.className = "primary";
    use.textContent = "use this strength";
    use.setAttribute("data-testid", "sweep-use");
    use.addEventListener("click", () => {
      const target = state.edits.find((e) => ref(e) === body.feature);
      if (!target) {
        showError(new ApiError(`${body.feature} is no longer among the edits`, null));
        return;
      }
      target.mode = body.mode;
      target.value = rec.value;
      renderEdits();
      saveState();
    });
    recBox.append(use);
  }
  box.replaceChildren(head, sweepChart(answer, relative, pick), recBox, texts);
  box.hidden = false;
  const first = points.findIndex((p) => rec.found && p.strength === rec.strength);
  pick(first >= 0 ? first : points.length - 1);
}

// ---- search, presets, model ------------------------------------------------------------

// A match's numbers: an activation hit's score is its mean activation over the query in units
// of its typical maximum (raw where unknown).
function matchDetail(m) {
  const parts = [];
  if (m.found_by === "activation") {
    const two = Number(m.score.toPrecision(2));
    parts.push(m.typical_max > 0 ? `${two}× its max here` : `${two} here`);
  }
  if (m.typical_max > 0) parts.push(`typical max ${round(m.typical_max)}`);
  return parts.join(" · ");
}

const PLACEHOLDERS = {
  labels: "search labels, e.g. sea",
  activation: "describe it, e.g. ocean",
  both: "labels and meaning, e.g. ocean",
};

function featureItem(feature, detail) {
  const li = document.createElement("li");
  li.className = "hit";
  const add = document.createElement("button");
  add.type = "button";
  add.className = "add";
  add.textContent = "add";
  add.setAttribute("data-testid", "add-feature");
  add.title = `add ${ref(feature)} to the edits`;
  add.addEventListener("click", () => addEdit(feature));
  const text = document.createElement("span");
  const label = document.createElement("span");
  label.className = "label";
  label.textContent = feature.label || "(no label)";
  const more = document.createElement("span");
  more.className = "muted small";
  more.textContent = detail;
  text.append(featureId(feature), " ", label, " ", more);
  li.append(add, text);
  return li;
}

async function search(event) {
  if (event) event.preventDefault();
  const query = $("search-input").value.trim();
  if (!query) return;
  clearError();
  const by = $("search-by").value;
  try {
    const answer = await api("/v1/steering/search", { query, limit: 12, by });
    const items = answer.matches.map((m) => {
      const li = featureItem(m, matchDetail(m));
      li.setAttribute("data-testid", "search-result");
      li.setAttribute("data-found-by", m.found_by);
      if (by === "labels") return li;
      const how = document.createElement("span");
      how.className = `found found-${m.found_by}`;
      how.setAttribute("data-testid", "found-by");
      how.textContent = m.found_by === "activation" ? "meaning" : "label";
      how.title = m.found_by === "activation"
        ? "found by meaning: the model read your query and this feature lit up"
        : "found by the words of its label";
      li.append(how);
      return li;
    });
    if (!items.length) {
      const none = document.createElement("li");
      none.className = "hint";
      none.textContent = by === "labels"
        ? `no label matches “${query}”: try searching by meaning`
        : `nothing matches “${query}”`;
      items.push(none);
    }
    $("search-results").replaceChildren(...items);
  } catch (err) {
    showError(err);
  }
}

function renderModel(answer) {
  state.model = answer;
  const m = answer.model;
  const info = $("model-info");
  info.replaceChildren();
  const name = document.createElement("b");
  name.textContent = m.name;
  info.append(name, ` · ${m.num_layers} layers · d_model ${m.d_model}`);
  for (const sae of answer.saes) {
    const chip = document.createElement("span");
    chip.className = "chip";
    chip.setAttribute("data-testid", "sae-info");
    chip.textContent = `SAE ${sae.name}: layer ${sae.layer}, width ${sae.d_sae}, ${sae.labels} labels`;
    info.append(" ", chip);
  }
  if (!m.chat) {
    $("chat-mode").checked = false;
    $("chat-mode").disabled = true;
    $("chat-mode").parentElement.title = "this model has no chat template";
  }
  const presets = $("presets");
  presets.replaceChildren();
  if (answer.presets.length) presets.append("presets: ");
  for (const p of answer.presets) {
    const button = document.createElement("button");
    button.type = "button";
    button.className = "chip";
    button.setAttribute("data-testid", "preset");
    button.textContent = p.name;
    button.title = `${p.description}\nadds ${p.edits.map((e) => `${e.sae}:${e.feature}=${e.mode}`).join(", ")}`;
    button.addEventListener("click", () => {
      for (const e of p.edits) {
        addEdit({ sae: e.sae, feature: e.feature, label: `preset ${p.name}` });
        Object.assign(state.edits[state.edits.length - 1], {
          mode: e.mode, value: e.value, active: e.only_when_active,
        });
      }
      renderEdits();
      saveState();
    });
    presets.append(button, " ");
  }
}

// ---- inspect ---------------------------------------------------------------------------

function showTokenFeatures(token) {
  const box = $("inspect-detail");
  box.replaceChildren();
  const head = document.createElement("p");
  head.className = "small";
  head.append("top features at ");
  const code = document.createElement("code");
  code.textContent = JSON.stringify(token.text);
  head.append(code);
  const list = document.createElement("ul");
  list.className = "hits";
  list.append(...token.top.map((a) => {
    const li = featureItem(a, `activation ${round(a.activation)}`);
    li.setAttribute("data-testid", "token-feature");
    return li;
  }));
  if (!token.top.length) head.append(" — none fire here");
  box.append(head, list);
}

async function inspect() {
  clearError();
  const chosen = $("inspect-feature").value;
  const body = { prompt: $("inspect-input").value, top_k: 8 };
  if (chosen) body.features = [chosen];
  try {
    const answer = await api("/v1/steering/inspect", body);
    const value = (t) => (chosen ? (t.features[0] ? t.features[0].activation : 0)
      : (t.top[0] ? t.top[0].activation : 0));
    const top = Math.max(watchedScale(), ...answer.tokens.map(value));
    const spans = answer.tokens.filter((t) => !t.special).map((t) => {
      const span = document.createElement("button");
      span.type = "button";
      span.className = "token";
      span.setAttribute("data-testid", "token");
      span.textContent = t.text;
      span.setAttribute("data-activation", String(value(t)));
      const what = chosen || (t.top[0] ? `${ref(t.top[0])} ${t.top[0].label}` : "no feature");
      span.title = `${what} = ${round(value(t))} (click for this token's top features)`;
      heat(span, value(t), top);
      span.addEventListener("click", () => showTokenFeatures(t));
      return span;
    });
    $("inspect-output").replaceChildren(...spans);
    $("inspect-detail").replaceChildren();
  } catch (err) {
    showError(err);
  }
}

// ---- contrast --------------------------------------------------------------------------

const lines = (id) => $(id).value.split("\n").map((l) => l.trim()).filter(Boolean);

async function contrast() {
  clearError();
  try {
    const answer = await api("/v1/steering/contrast", { a: lines("contrast-a"), b: lines("contrast-b"), top_k: 8 });
    const items = (list) => list.map((c) => {
      const li = featureItem(c, `mean A ${round(c.mean_a)} · B ${round(c.mean_b)}`);
      li.setAttribute("data-testid", "contrast-result");
      return li;
    });
    $("contrast-toward-a").replaceChildren(...items(answer.toward_a));
    $("contrast-toward-b").replaceChildren(...items(answer.toward_b));
  } catch (err) {
    showError(err);
  }
}

// ---- copy the request ------------------------------------------------------------------

const shell = (s) => `'${s.replaceAll("'", "'\\''")}'`;

function asCurl() {
  const body = JSON.stringify(generationBody(true), null, 2);
  return `curl -s ${location.origin}${route()} -H 'content-type: application/json' \\\n  -d ${shell(body)}`;
}

// A JSON value written as a Python literal.
function py(value) {
  if (value === null || value === undefined) return "None";
  if (value === true) return "True";
  if (value === false) return "False";
  if (Array.isArray(value)) return `[${value.map(py).join(", ")}]`;
  if (typeof value === "object") {
    return `{${Object.entries(value).map(([k, v]) => `${JSON.stringify(k)}: ${py(v)}`).join(", ")}}`;
  }
  return JSON.stringify(value);
}

function asPython() {
  const body = generationBody(true);
  const steering = body.steering ? `\n    extra_body={"steering": ${py(body.steering)}},` : "";
  const chat = "messages" in body;
  const input = chat ? `messages=${py(body.messages)},` : `prompt=${py(body.prompt)},`;
  const sampling = ["max_tokens", "temperature", "seed"]
    .filter((k) => body[k] !== undefined).map((k) => `\n    ${k}=${body[k]},`).join("");
  const out = chat ? "r.choices[0].message.content" : "r.choices[0].text";
  return [
    "from openai import OpenAI",
    "",
    `client = OpenAI(base_url="${location.origin}/v1", api_key="unused")`,
    `r = client.${chat ? "chat.completions" : "completions"}.create(`,
    `    model=${py(body.model)},`,
    `    ${input}${sampling}${steering}`,
    ")",
    `print(${out}, r.model_extra.get("steering"))`,
  ].join("\n");
}

function asCli() {
  const body = generationBody(true);
  const parts = [`steering-client --target ${location.hostname}:50051 generate`];
  parts.push(shell(body.messages ? body.messages[0].content : body.prompt));
  if (body.messages) parts.push("--chat-role user");
  for (const e of state.edits) parts.push(`--edit ${shell(editText(e))}`);
  if (watched()) parts.push(`--watch ${watched()}`);
  if (body.max_tokens !== undefined) parts.push(`--max-new-tokens ${body.max_tokens}`);
  if (body.temperature !== undefined) parts.push(`--temperature ${body.temperature}`);
  if (body.seed !== undefined) parts.push(`--seed ${body.seed}`);
  return `# the client speaks gRPC: the server's --port (50051 by default)\n${parts.join(" ")}`;
}

async function copy(make, what) {
  const text = make();
  const pre = $("copy-text");
  pre.textContent = text;
  pre.hidden = false;
  try {
    await navigator.clipboard.writeText(text);
    $("copy-note").textContent = `${what} copied to the clipboard.`;
  } catch {
    const range = document.createRange();
    range.selectNodeContents(pre);
    getSelection().removeAllRanges();
    getSelection().addRange(range);
    $("copy-note").textContent = `${what} selected: press Ctrl+C to copy.`;
  }
}

// ---- start -----------------------------------------------------------------------------

function wire() {
  $("search-form").addEventListener("submit", search);
  $("generate-button").addEventListener("click", generate);
  $("prompt-input").addEventListener("keydown", (e) => {
    if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) generate();
  });
  for (const id of ["prompt-input", "max-tokens", "temperature", "seed", "chat-mode"]) {
    $(id).addEventListener("change", saveState);
  }
  $("prompt-input").addEventListener("input", saveState);
  $("watch-select").addEventListener("change", () => {
    state.watch = watched();
    saveState();
  });
  $("inspect-button").addEventListener("click", inspect);
  $("contrast-button").addEventListener("click", contrast);
  $("card-close").addEventListener("click", closeCard);
  document.addEventListener("keydown", (e) => {
    if (e.key === "Escape" && !$("feature-card").hidden) closeCard();
  });
  $("search-by").addEventListener("change", () => {
    $("search-input").placeholder = PLACEHOLDERS[$("search-by").value];
  });
  $("copy-curl").addEventListener("click", () => copy(asCurl, "curl command"));
  $("copy-python").addEventListener("click", () => copy(asPython, "Python"));
  $("copy-cli").addEventListener("click", () => copy(asCli, "steering-client command"));
  $("api-token").value = sessionStorage.getItem("steering-token") || "";
  $("api-token").addEventListener("change", () => {
    sessionStorage.setItem("steering-token", $("api-token").value);
    boot();
  });
}

async function boot() {
  try {
    renderModel(await api("/v1/steering/model"));
    clearError();
  } catch (err) {
    $("model-info").textContent = "not connected";
    showError(err);
  }
}

wire();
loadState();
boot();

// chargen's page: choose a model; text streams in from /v1/completions, tunes come from
// /v1/tunes and are engraved and played with abcjs (loaded from /assets/abcjs.js; without it
// the tunes are shown as ABC text). Plain JavaScript, no build step.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { models: [], abcjs: null, running: null, synth: null };

function headers() {
  const key = $("api-key").value.trim() || localStorage.getItem("chargen-key") || "";
  const result = { "Content-Type": "application/json" };
  if (key) result.Authorization = `Bearer ${key}`;
  return result;
}

function say(message, error = false) {
  $("status").textContent = message;
  $("status").classList.toggle("error", error);
}

async function api(path, body, signal) {
  const response = await fetch(path, {
    method: body === undefined ? "GET" : "POST",
    headers: headers(),
    body: body === undefined ? undefined : JSON.stringify(body),
    signal,
  });
  if (!response.ok) {
    let message = `${response.status} ${response.statusText}`;
    try {
      message = (await response.json()).error.message;
    } catch (_) { /* not JSON: keep the status line */ }
    throw new Error(message);
  }
  return response;
}

function number(id) {
  const value = $(id).value.trim();
  return value === "" ? null : Number(value);
}

// ------------------------------------------------------------------ models

async function loadModels() {
  const health = await (await fetch("/health")).json();
  $("key-field").hidden = !health.auth;
  $("api-key").value = localStorage.getItem("chargen-key") || "";
  const models = (await (await api("/v1/models")).json()).data;
  state.models = models;
  $("model").replaceChildren(...models.map((m) => new Option(m.id, m.id)));
  if (!models.length) say("This server has no models: train one with chargen train.", true);
  showModel();
}

function showModel() {
  const model = state.models.find((m) => m.id === $("model").value);
  const tunes = Boolean(model && model.writes_tunes);
  $("text-view").hidden = !model || tunes;
  $("tune-view").hidden = !model || !tunes;
  $("model-kind").textContent = model ? (tunes ? "ABC tunes" : `${model.level} level text`) : "";
}

// ------------------------------------------------------------------ text

async function generateText(event) {
  event.preventDefault();
  const controller = new AbortController();
  state.running = controller;
  $("generate").disabled = true;
  $("stop").disabled = false;
  const prime = $("prime").value;
  $("output").textContent = prime;
  say("Writing...");
  const body = {
    model: $("model").value, prompt: prime, max_tokens: number("length") || 500,
    temperature: number("temperature") ?? 0.8, stream: true,
  };
  if (number("top-k") !== null) body.top_k = number("top-k");
  if (number("top-p") !== null) body.top_p = number("top-p");
  if (number("seed") !== null) body.seed = number("seed");
  try {
    const response = await api("/v1/completions", body, controller.signal);
    await readEvents(response, (chunk) => {
      for (const choice of chunk.choices || []) $("output").textContent += choice.text;
    });
    say("Done.");
  } catch (error) {
    say(error.name === "AbortError" ? "Stopped." : error.message, error.name !== "AbortError");
  } finally {
    $("generate").disabled = false;
    $("stop").disabled = true;
    state.running = null;
  }
}

async function readEvents(response, onChunk) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += decoder.decode(value, { stream: true });
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const line = buffer.slice(0, end).trim();
      buffer = buffer.slice(end + 2);
      if (!line.startsWith("data: ")) continue;
      const data = line.slice(6);
      if (data === "[DONE]") return;
      const chunk = JSON.parse(data);
      if (chunk.error) throw new Error(chunk.error.message);
      onChunk(chunk);
    }
  }
}

// ------------------------------------------------------------------ tunes

async function writeTunes(event) {
  event.preventDefault();
  $("write-tunes").disabled = true;
  stopPlaying();
  say("Writing tunes...");
  const body = {
    model: $("model").value, num: number("num") || 1,
    temperature: number("tune-temperature") ?? 1.0, valid_only: $("valid-only").checked,
    free: $("free").checked,
  };
  for (const field of ["meter", "key", "rhythm", "style"]) {
    if ($(field).value.trim()) body[field] = $(field).value.trim();
  }
  for (const field of ["bars", "parts"]) {
    if (number(field) !== null) body[field] = number(field);
  }
  if (number("tune-seed") !== null) body.seed = number("tune-seed");
  try {
    const { tunes } = await (await api("/v1/tunes", body)).json();
    $("tunes").replaceChildren(...tunes.map(tuneCard));
    const valid = tunes.filter((t) => t.valid).length;
    say(`${tunes.length} tune${tunes.length === 1 ? "" : "s"}, ${valid} valid.`);
  } catch (error) {
    say(error.message, true);
  } finally {
    $("write-tunes").disabled = false;
  }
}

function tuneCard(tune) {
  const card = document.createElement("article");
  card.className = "tune";
  const title = (tune.abc.match(/^T:(.*)$/m) || [, "Untitled"])[1];
  const heading = document.createElement("h2");
  heading.textContent = title;
  const badge = document.createElement("span");
  badge.className = `badge ${tune.valid ? "valid" : "invalid"}`;
  badge.textContent = tune.valid ? "valid" : "invalid";
  heading.append(badge);
  const field = (letter) => (tune.abc.match(new RegExp(`^${letter}:(.*)$`, "m")) || [])[1];
  const caption = document.createElement("p");
  caption.className = "caption";  // rhythm, tradition, meter, key: what the tune is
  caption.textContent = ["R", "O", "M", "K"].map(field).filter(Boolean).join(" · ");
  card.append(heading, caption);
  if (!tune.valid && tune.problems.length) {
    const problems = document.createElement("p");
    problems.className = "problems";
    problems.textContent = tune.problems.slice(0, 3).join("; ");
    card.append(problems);
  }
  const sheet = document.createElement("div");
  sheet.className = "sheet";
  card.append(sheet, tuneActions(tune, sheet));
  const text = document.createElement("pre");
  text.textContent = tune.abc;
  card.append(text);
  if (state.abcjs) {
    const [visual] = state.abcjs.renderAbc(sheet, tune.abc, { responsive: "resize", add_classes: true });
    sheet.visual = visual;
  }
  return card;
}

function tuneActions(tune, sheet) {
  const actions = document.createElement("div");
  actions.className = "actions";
  if (state.abcjs && state.abcjs.synth && state.abcjs.synth.supportsAudio()) {
    const play = document.createElement("button");
    play.type = "button";
    play.className = "play";
    play.textContent = "Play";
    play.addEventListener("click", () => togglePlay(play, sheet));
    actions.append(play);
  }
  const midi = document.createElement("a");
  midi.href = tune.midi_url;
  midi.textContent = "MIDI";
  midi.setAttribute("download", `tune-${tune.index + 1}.mid`);
  actions.append(midi);
  return actions;
}

async function togglePlay(button, sheet) {
  const playing = state.synth && state.synth.button === button;
  stopPlaying();
  if (playing) return;
  try {
    const synth = new state.abcjs.synth.CreateSynth();
    state.synth = { synth, button };
    button.textContent = "Stop";
    // The server synthesises the notes (/assets/soundfont/): no soundfont from the internet.
    await synth.init({ visualObj: sheet.visual, options: { soundFontUrl: "/assets/soundfont/" } });
    await synth.prime();
    if (state.synth && state.synth.synth === synth) synth.start();
  } catch (error) {
    stopPlaying();
    say(`Cannot play: ${error.message || error}`, true);
  }
}

function stopPlaying() {
  if (!state.synth) return;
  state.synth.synth.stop();
  state.synth.button.textContent = "Play";
  state.synth = null;
}

// ------------------------------------------------------------------ start

function loadAbcjs() {
  const script = document.createElement("script");
  script.src = "/assets/abcjs.js";
  script.onload = () => { state.abcjs = window.ABCJS || null; $("abcjs-note").hidden = !!state.abcjs; };
  script.onerror = () => { state.abcjs = null; $("abcjs-note").hidden = false; };
  document.head.append(script);
}

$("model").addEventListener("change", showModel);
$("text-form").addEventListener("submit", generateText);
$("stop").addEventListener("click", () => state.running && state.running.abort());
$("tune-form").addEventListener("submit", writeTunes);
$("api-key").addEventListener("change", () => {
  localStorage.setItem("chargen-key", $("api-key").value.trim());
  loadModels().catch((error) => say(error.message, true));
});
loadAbcjs();
loadModels().catch((error) => say(error.message, true));

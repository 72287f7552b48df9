"""The page ``GET /`` serves: one self-contained HTML document (inline CSS and script, no external assets).

It draws each JPEG frame from ``/ws`` on a canvas, sends prompts and policy changes, and shows the live
figures in the words of ``cascade_sched.metrics``: the delivered FPS and frame interval (measured in the
browser over the last 3 s), the first frame (from connecting to the first frame drawn), blocks in flight,
underruns, dropped frames and generation time per block (from the server's ``stats``), and the last
switch's latency. The token, if the server has one, is taken from the page's own ``?token=``.

The video is never an empty box: before the first frame it says "connecting" (drawn on the canvas, so a
screenshot taken before any frame arrives, as a browser with virtual time takes it, shows that); once
frames come, the last one stays on the canvas while the stream pauses, ends or reconnects, with a line
over it saying which. The prompt box sits above the video, so it is in view on a 1200 x 700 window.
``window.cascade`` holds the figures for scripts (the browser test reads it).
"""

from __future__ import annotations

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>cascade serve</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
 body{font:14px/1.4 system-ui,sans-serif;margin:0;background:#111;color:#ddd}
 main{display:flex;gap:20px;padding:12px 16px;flex-wrap:wrap}
 .view{width:482px} h1{font-size:16px;margin:0 0 4px} #info{color:#999;font-size:12px;margin-bottom:6px}
 .screen{position:relative;width:min(480px,calc(100vh - 150px));height:min(480px,calc(100vh - 150px))}
 canvas{width:100%;height:100%;background:#000;image-rendering:pixelated;border:1px solid #333;display:block}
 #state{position:absolute;left:1px;right:1px;bottom:1px;padding:4px 8px;background:rgba(0,0,0,.65);color:#ddd;
        font-size:12px} #state[hidden]{display:none}
 form{display:flex;gap:6px;margin-bottom:8px} input{flex:1;padding:6px;background:#222;color:#eee;border:1px solid #444}
 button,select{padding:6px 10px;background:#333;color:#eee;border:1px solid #555}
 table{border-collapse:collapse;min-width:300px} td{padding:3px 8px;border-bottom:1px solid #2a2a2a}
 td.v{text-align:right;font-variant-numeric:tabular-nums;color:#fff} .warn{color:#f90} .bad{color:#f55}
 #log{font:12px monospace;color:#aaa;max-height:220px;overflow:auto;white-space:pre-wrap;margin-top:10px;width:420px}
</style></head><body><main>
<section class="view"><h1>cascade serve</h1><div id="info">connecting&hellip;</div>
<form id="form"><input id="prompt" maxlength="500" placeholder="type a prompt, press Enter" autocomplete="off">
<select id="policy" title="switch policy"><option value="none">none (cascade)</option>
<option value="recache">recache (baseline)</option></select><button id="send">Send</button></form>
<div class="screen"><canvas id="view" width="512" height="512"></canvas><div id="state">connecting&hellip;</div></div>
<div><button id="reconnect" hidden>Start a new stream</button></div></section>
<section><table>
<tr><td>delivered FPS (last 3 s)</td><td class="v" id="fps">-</td></tr>
<tr><td>frame interval p95 (last 3 s)</td><td class="v" id="interval">-</td></tr>
<tr><td>first frame (from connecting)</td><td class="v" id="first">-</td></tr>
<tr><td>block shown</td><td class="v" id="block">-</td></tr>
<tr><td>blocks in flight</td><td class="v" id="inflight">-</td></tr>
<tr><td>generation per block / real time</td><td class="v" id="gen">-</td></tr>
<tr><td>underruns (waited)</td><td class="v" id="underruns">-</td></tr>
<tr><td>frames dropped (slow client)</td><td class="v" id="dropped">-</td></tr>
<tr><td>switch latency</td><td class="v" id="switch">-</td></tr>
<tr><td>prompt now</td><td class="v" id="now">-</td></tr>
</table><div id="log"></div></section></main>
<script>
"use strict";
const $ = (id) => document.getElementById(id);
const state = window.cascade = {framesDrawn: 0, frameTimes: [], lastSwitch: null, stats: null, hello: null,
                                events: [], connected: false, ended: null, firstFrameS: null, showing: "connecting"};
const canvas = $("view"), ctx = canvas.getContext("2d");
let ws = null, fps = 16, framesPerBlock = 0, connectedAt = 0, framesHere = 0;
function log(text, cls) {
  const line = document.createElement("div"); line.textContent = new Date().toLocaleTimeString() + "  " + text;
  if (cls) line.className = cls; $("log").prepend(line); state.events.push(text);
}
function pct(xs, q) { if (!xs.length) return null; const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor(q * s.length))]; }
// What the video shows besides its frames: a line over the last frame, or, before any frame, the words
// themselves drawn on the canvas (a screenshot then shows them, never an empty box).
function show(text) {
  state.showing = text; $("state").textContent = text; $("state").hidden = !text || !state.framesDrawn;
  if (state.framesDrawn || !text) return;
  ctx.fillStyle = "#000"; ctx.fillRect(0, 0, canvas.width, canvas.height);
  ctx.fillStyle = "#aaa"; ctx.font = "28px system-ui, sans-serif"; ctx.textAlign = "center";
  ctx.fillText(text, canvas.width / 2, canvas.height / 2);
}
function connect() {
  const token = new URLSearchParams(location.search).get("token");
  const url = (location.protocol === "https:" ? "wss://" : "ws://") + location.host + "/ws" +
              (token ? "?token=" + encodeURIComponent(token) : "");
  ws = new WebSocket(url); ws.binaryType = "blob"; $("reconnect").hidden = true; state.ended = null;
  connectedAt = performance.now(); framesHere = 0;
  show(state.framesDrawn ? "connecting\u2026 (the last frame of the previous stream)" : "connecting\u2026");
  ws.onopen = () => { state.connected = true; if (!framesHere) show("waiting for the first frame\u2026"); };
  ws.onclose = (e) => { state.connected = false; $("reconnect").hidden = false;
    if (!state.ended) { log("connection closed (" + e.code + ")", "bad");
      show(state.framesDrawn ? "disconnected: the last frame" : "disconnected"); } };
  ws.onmessage = async (e) => {
    if (typeof e.data !== "string") { await draw(e.data); return; }
    const m = JSON.parse(e.data); handle(m);
  };
}
async function draw(blob) {
  const bitmap = await createImageBitmap(blob);
  if (canvas.width !== bitmap.width) { canvas.width = bitmap.width; canvas.height = bitmap.height; }
  ctx.imageSmoothingEnabled = false; ctx.drawImage(bitmap, 0, 0); bitmap.close();
  const now = performance.now(); state.framesDrawn += 1; state.frameTimes.push(now);
  if (!framesHere++) { state.firstFrameS = (now - connectedAt) / 1000;
    $("first").textContent = state.firstFrameS.toFixed(2) + " s"; }
  if (state.showing) show("");
  while (state.frameTimes.length && state.frameTimes[0] < now - 3000) state.frameTimes.shift();
}
function ended() { const m = state.ended;
  return m.type === "busy" ? "busy: " + m.message : `stream ended after ${m.blocks} blocks` +
    (state.framesDrawn ? ": the last frame" : ""); }
setInterval(() => {  // a stream that pauses or ends keeps its last frame, and says so once frames stop
  const t = state.frameTimes, now = performance.now();
  if (!framesHere || !t.length || now - t[t.length - 1] < 1500) return;
  const text = state.ended ? ended() : state.connected ? "paused: waiting for frames (the last frame shown)" :
    state.showing;
  if (text !== state.showing) show(text);
}, 500);
function handle(m) {
  if (m.type === "hello") {
    state.hello = m; fps = m.fps; $("policy").value = m.policy;
    $("info").textContent = `stream ${m.stream}: model ${m.model}, ${m.executor} executor on ${m.devices} ` +
      `device(s), lag ${m.lag ?? "S"}, ${m.attention} attention, window ${m.window ?? "unbounded"}, ` +
      `${m.fps} fps, policy ${m.policy}, ${m.max_blocks ? `up to ${m.max_blocks} blocks` : "endless"}, sharing ${m.sharing}`;
    $("now").textContent = m.prompt; log(`stream ${m.stream} (${m.policy}): "${m.prompt}"`);
  } else if (m.type === "block") {
    framesPerBlock = m.frames; $("block").textContent = m.block; $("now").textContent = m.prompt;
  } else if (m.type === "stats") {
    state.stats = m; const since = performance.now() - 3000, t = state.frameTimes.filter((x) => x > since);
    const n = t.length;
    const rate = n > 2 ? (n - 1) * 1000 / (t[n - 1] - t[0]) : 0;  // frames drawn over wall time
    const gaps = t.slice(1).map((x, i) => x - t[i]);
    $("fps").textContent = rate.toFixed(1) + " / " + fps; const p95 = pct(gaps, 0.95);
    $("interval").textContent = p95 === null ? "-" : p95.toFixed(0) + " ms";
    $("inflight").textContent = m.blocks_in_flight;
    const real = framesPerBlock / fps;
    $("gen").textContent = (m.generation_s_per_block === null ? "-" : (m.generation_s_per_block * 1000).toFixed(0)) +
      " / " + (real * 1000).toFixed(0) + " ms";
    $("gen").className = "v" + (m.generation_s_per_block > real ? " warn" : "");
    $("underruns").textContent = m.underruns + " (" + m.underrun_s.toFixed(1) + " s)";
    $("underruns").className = "v" + (m.underruns ? " warn" : "");
    $("dropped").textContent = m.dropped;
  } else if (m.type === "switch") {
    log(m.applied ? `prompt "${m.prompt}" switches at block ${m.at_block} (shown: ${m.shown_block})`
                  : `prompt "${m.prompt}" not applied: ${m.reason}`, m.applied ? "" : "warn");
  } else if (m.type === "switched") {
    state.lastSwitch = m;
    $("switch").textContent = `${m.latency_blocks} blocks, ${(m.latency_s * 1000).toFixed(0)} ms`;
    log(`now showing "${m.prompt}" from block ${m.at_block}`);
  } else if (m.type === "error") {
    log(`error ${m.code}: ${m.message}`, "bad");
  } else if (m.type === "busy") {
    state.ended = m; log("busy: " + m.message, "warn"); if (!framesHere) show(ended());
  } else if (m.type === "end") {  // frames already sent still play; the interval above says it once they stop
    state.ended = m; log(`stream ended after ${m.blocks} blocks: ${m.reason}`, "warn"); if (!framesHere) show(ended());
  }
}
$("form").onsubmit = (e) => { e.preventDefault(); const text = $("prompt").value.trim();
  if (!text || !ws || ws.readyState !== 1) return;
  ws.send(JSON.stringify({prompt: text, policy: $("policy").value})); };
$("policy").onchange = () => { if (ws && ws.readyState === 1) ws.send(JSON.stringify({policy: $("policy").value})); };
$("reconnect").onclick = connect;
connect();
</script></body></html>
"""

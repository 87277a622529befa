// The letta_ray inspector: one page, no build step, no libraries. It reads Letta's /v1
// routes and the inspector's /ui/api routes with the token kept for this browser session.
"use strict";

const TOKEN_KEY = "letta_ray_token";
const PAGE_SIZE = 50;
let current = { abort: null }; // what the open view must stop when the page moves on

// ------------------------------------------------------------------ HTTP and the token

class HttpError extends Error {
  constructor(status, detail) {
    super(typeof detail === "string" ? detail : JSON.stringify(detail));
    this.status = status;
  }
}

function authHeaders() {
  const token = sessionStorage.getItem(TOKEN_KEY);
  return token ? { Authorization: `Bearer ${token}` } : {};
}

async function api(path, { method = "GET", body, signal } = {}) {
  for (;;) {
    const headers = { ...authHeaders() };
    if (body !== undefined) headers["Content-Type"] = "application/json";
    const response = await fetch(path, { method, headers, signal,
                                         body: body === undefined ? undefined : JSON.stringify(body) });
    if (response.status === 401) { await askToken(); continue; }
    const text = await response.text();
    const data = text ? JSON.parse(text) : null;
    if (!response.ok) throw new HttpError(response.status, data && data.detail !== undefined ? data.detail : text);
    return data;
  }
}

let asking = null;
function askToken(message) {
  if (asking) return asking;
  const dialog = document.getElementById("token-dialog");
  const error = document.getElementById("token-error");
  error.hidden = !message; error.textContent = message || "";
  asking = new Promise((resolve) => {
    document.getElementById("token-form").onsubmit = async (event) => {
      event.preventDefault();
      const token = document.getElementById("token-input").value.trim();
      const probe = await fetch("/ui/api/agents?limit=1", { headers: { Authorization: `Bearer ${token}` } });
      if (probe.status === 401) { error.hidden = false; error.textContent = "That token is not the server's."; return; }
      sessionStorage.setItem(TOKEN_KEY, token);
      document.getElementById("forget-token").hidden = false;
      dialog.close(); asking = null; resolve();
    };
  });
  if (!dialog.open) dialog.showModal();
  return asking;
}

// ------------------------------------------------------------------ building the page

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else if (key === "class") node.className = value;
    else if (key === "dataset") Object.assign(node.dataset, value);
    else node.setAttribute(key, value === true ? "" : value);
  }
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

const svgNS = "http://www.w3.org/2000/svg";
function svg(tag, attrs = {}, ...children) {
  const node = document.createElementNS(svgNS, tag);
  for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, value);
  for (const child of children.flat(Infinity)) if (child) node.append(child instanceof Node ? child : String(child));
  return node;
}

function show(...nodes) {
  const view = document.getElementById("view");
  view.replaceChildren(...nodes.flat(Infinity).filter((node) => node !== null && node !== undefined && node !== false));
}

function card(title, ...children) { return el("section", { class: "card" }, title ? el("h2", {}, title) : null, ...children); }
function when(iso) { return iso ? new Date(iso).toLocaleString() : "—"; }
function ago(iso) {
  if (!iso) return "never";
  const s = (Date.now() - new Date(iso).getTime()) / 1000;
  if (s < 60) return `${Math.max(0, Math.round(s))} s ago`;
  if (s < 3600) return `${Math.round(s / 60)} min ago`;
  if (s < 86400) return `${Math.round(s / 3600)} h ago`;
  return new Date(iso).toLocaleDateString();
}
function ms(ns) { return ns === null || ns === undefined ? "—" : (ns / 1e6).toFixed(1); }
function num(x) { return x === null || x === undefined ? "—" : Number(x).toLocaleString(); }
function errorBox(error) { return el("p", { class: "error" }, `Could not load: ${error.message}`); }
function table(headers, rows) {
  return el("table", {}, el("thead", {}, el("tr", {}, headers.map((h) =>
    el("th", { class: h.startsWith("#") ? "num" : "" }, h.replace(/^#/, ""))))), el("tbody", {}, rows));
}
function kv(pairs) {
  return el("table", { class: "kv" }, el("tbody", {}, pairs.map(([k, v]) => el("tr", {}, el("td", {}, k), el("td", {}, v)))));
}

// ------------------------------------------------------------------ routing

const routes = [
  [/^#\/agents$/, viewAgents],
  [/^#\/agents\/([^/]+)$/, viewAgent],
  [/^#\/groups$/, viewGroups],
  [/^#\/sims$/, viewSims],
  [/^#\/sims\/([^/]+)$/, viewSim],
  [/^#\/cluster$/, viewCluster],
];

function hashParts() {
  const [path, query] = (location.hash || "#/agents").split("?");
  return [path, new URLSearchParams(query || "")];
}

async function route() {
  if (current.abort) current.abort.abort();
  current = { abort: new AbortController() };
  const [path, params] = hashParts();
  document.querySelectorAll("[data-nav]").forEach((a) =>
    a.classList.toggle("active", path.startsWith(`#/${a.dataset.nav}`)));
  for (const [pattern, view] of routes) {
    const match = path.match(pattern);
    if (match) {
      try { await view(...match.slice(1).map(decodeURIComponent), params, current.abort.signal); }
      catch (error) { if (error.name !== "AbortError") show(errorBox(error)); }
      return;
    }
  }
  location.hash = "#/agents";
}

// ------------------------------------------------------------------ agents

async function viewAgents(params, signal) {
  const q = params.get("q") || "";
  const offset = Number(params.get("offset") || 0);
  const data = await api(`/ui/api/agents?limit=${PAGE_SIZE}&offset=${offset}&q=${encodeURIComponent(q)}`, { signal });
  const search = el("input", { type: "search", placeholder: "Search name, id or tag", value: q, id: "agent-search",
                               "aria-label": "search agents" });
  let timer = null;
  search.addEventListener("input", () => {
    clearTimeout(timer);
    timer = setTimeout(() => { location.hash = `#/agents?q=${encodeURIComponent(search.value)}`; }, 250);
  });
  const rows = data.agents.map((a) => el("tr", { class: "clickable", dataset: { agentId: a.id },
                                                 onclick: () => { location.hash = `#/agents/${a.id}`; } },
    el("td", {}, el("a", { href: `#/agents/${a.id}` }, a.name), el("div", { class: "muted mono" }, a.id)),
    el("td", {}, a.tags.map((t) => el("span", { class: "tag" }, t))),
    el("td", { class: "mono" }, a.model || "—"),
    el("td", { class: "mono" }, a.host || el("span", { class: "muted" }, "not loaded")),
    el("td", { title: when(a.last_active) }, ago(a.last_active)),
    el("td", { class: "num" }, num(a.message_count))));
  const last = Math.min(offset + data.agents.length, data.total);
  const go = (to) => { location.hash = `#/agents?q=${encodeURIComponent(q)}&offset=${to}`; };
  show(el("h1", {}, "Agents"),
    el("div", { class: "toolbar" }, search,
      el("span", { class: "muted", id: "agent-count" },
         data.total ? `${num(offset + 1)}–${num(last)} of ${num(data.total)}` : "no agents"),
      el("button", { class: "secondary", disabled: offset === 0, onclick: () => go(Math.max(0, offset - PAGE_SIZE)) }, "← Newer"),
      el("button", { class: "secondary", disabled: last >= data.total, onclick: () => go(offset + PAGE_SIZE) }, "Older →")),
    card(null, table(["Name", "Tags", "Model", "Host", "Last active", "#Messages"], rows)));
  if (q) { search.focus(); search.setSelectionRange(q.length, q.length); }
}

async function viewAgent(agentId, params, signal) {
  const base = `/v1/agents/${encodeURIComponent(agentId)}`;
  const [agent, blocks, history, tools, passages, runs, steps] = await Promise.all([
    api(base, { signal }), api(`${base}/core-memory/blocks`, { signal }),
    api(`${base}/messages?limit=60&order=desc`, { signal }), api(`${base}/tools`, { signal }),
    api(`${base}/archival-memory?limit=20&ascending=false`, { signal }).catch(() => []),
    api(`/v1/runs?agent_id=${encodeURIComponent(agentId)}&limit=20`, { signal }),
    api(`/v1/steps?agent_id=${encodeURIComponent(agentId)}&limit=50`, { signal }),
  ]);
  const conversation = el("div", { class: "conversation", id: "conversation" });
  const seen = new Set();
  const addEvents = (events) => {
    const atBottom = conversation.scrollHeight - conversation.scrollTop - conversation.clientHeight < 40;
    let memoryTouched = false;
    for (const event of events) {
      const key = `${event.id}:${event.message_type}:${(event.tool_call && event.tool_call.tool_call_id) || event.tool_call_id || ""}`;
      if (seen.has(key) || (event.message_type === "user_message" && event.otid && seen.has(`otid:${event.otid}`))) continue;
      seen.add(key);
      conversation.append(renderEvent(event));
      if (event.message_type === "tool_return_message") memoryTouched = true;
    }
    if (atBottom) conversation.scrollTop = conversation.scrollHeight;
    return memoryTouched;
  };
  addEvents(history.slice().reverse());
  const liveLabel = el("span", { class: "live off", id: "live-status" }, "connecting");
  const blocksBox = el("div", { id: "blocks" });
  const renderBlocks = (list) => blocksBox.replaceChildren(...list.map((b) => renderBlock(base, b)));
  renderBlocks(blocks);

  const input = el("textarea", { id: "send-text", placeholder: `Message ${agent.name}…`, rows: 2 });
  const sendButton = el("button", { id: "send-button" }, "Send");
  const sendStatus = el("span", { class: "muted" });
  const send = async () => {
    const text = input.value.trim();
    if (!text) return;
    sendButton.disabled = true; sendStatus.textContent = "thinking…"; sendStatus.className = "muted";
    // shown at once; the stored copy that comes back live has the same otid and is not shown again
    const otid = newOtid();
    seen.add(`otid:${otid}`);
    conversation.append(renderEvent({ message_type: "user_message", content: text, otid, date: new Date().toISOString() }));
    conversation.scrollTop = conversation.scrollHeight;
    input.value = "";
    try {
      const response = await api(`${base}/messages`, { method: "POST",
                                                       body: { messages: [{ role: "user", content: text, otid }] } });
      addEvents(response.messages || []);
      sendStatus.textContent = `${response.stop_reason ? response.stop_reason.stop_reason : ""}`;
    } catch (error) {
      sendStatus.textContent = error.message;
      sendStatus.className = "error";
    } finally { sendButton.disabled = false; }
  };
  sendButton.addEventListener("click", send);
  input.addEventListener("keydown", (e) => { if (e.key === "Enter" && !e.shiftKey) { e.preventDefault(); send(); } });

  const archivalResults = el("div", { id: "archival-results" }, renderPassages(passages, "No passages yet."));
  const archivalQuery = el("input", { type: "search", placeholder: "Search archival memory", id: "archival-search" });
  archivalQuery.addEventListener("keydown", async (e) => {
    if (e.key !== "Enter") return;
    const query = archivalQuery.value.trim();
    if (!query) { archivalResults.replaceChildren(renderPassages(passages, "No passages yet.")); return; }
    const found = await api(`${base}/archival-memory/search?query=${encodeURIComponent(query)}&top_k=10`);
    archivalResults.replaceChildren(renderPassages(found.results.map((r) => ({ text: r.content, tags: r.tags,
                                                                               created_at: r.timestamp })), "Nothing found."));
  });

  show(
    el("h1", {}, agent.name, " ", el("span", { class: "muted mono" }, agent.id)),
    el("p", {}, el("span", { class: "mono" }, agent.llm_config ? agent.llm_config.model : ""), " · ",
       agent.agent_type, " · ", agent.tags.map((t) => el("a", { class: "tag", href: `#/agents?q=${encodeURIComponent(t)}` }, t))),
    el("div", { class: "grid" },
      el("div", {},
        card(el("span", {}, "Messages ", liveLabel), conversation,
             el("div", { class: "send" }, input, sendButton), sendStatus),
        card("Runs", renderRuns(runs)),
        card("Steps", renderSteps(steps))),
      el("div", {},
        card("Memory blocks", blocksBox),
        card("Archival memory", el("div", { class: "toolbar" }, archivalQuery), archivalResults),
        card("Tools", table(["Name", "Type", "Description"], tools.map((t) => el("tr", {},
          el("td", { class: "mono" }, t.name), el("td", {}, t.tool_type || ""),
          el("td", {}, (t.description || "").split("\n")[0]))))))));
  conversation.scrollTop = conversation.scrollHeight;

  const newest = history.length ? history[0].id : null;
  follow(`/ui/api/agents/${encodeURIComponent(agentId)}/live${newest ? `?after=${encodeURIComponent(newest)}` : ""}`,
    signal, liveLabel, async (events) => {
      if (addEvents(events) && !blocksBox.querySelector("textarea.dirty")) {
        renderBlocks(await api(`${base}/core-memory/blocks`));
      }
    });
}

function renderEvent(e) {
  const meta = el("div", { class: "meta" }, `${e.message_type.replace("_message", "")} · ${when(e.date)}`);
  const type = e.message_type;
  if (type === "user_message" || type === "assistant_message" || type === "system_message") {
    const content = typeof e.content === "string" ? e.content
      : (e.content || []).map((part) => part.text || "").join("");
    return el("div", { class: `msg ${type}`, dataset: { messageId: e.id } }, meta, el("pre", {}, content));
  }
  let summary = type; let body = "";
  if (type === "reasoning_message" || type === "hidden_reasoning_message") {
    summary = "reasoning"; body = e.reasoning || e.hidden_reasoning || "";
  } else if (type === "tool_call_message" || type === "approval_request_message") {
    const call = e.tool_call || {};
    summary = `${type === "approval_request_message" ? "approval asked: " : "tool call: "}${call.name}`;
    body = prettyJson(call.arguments);
  } else if (type === "tool_return_message") {
    summary = `tool return${e.name ? `: ${e.name}` : ""} · ${e.status}`;
    body = prettyJson(e.tool_return);
  } else { body = JSON.stringify(e, null, 2); }
  const failed = type === "tool_return_message" && e.status === "error" ? " failed" : "";
  return el("details", { class: `msg ${type}${failed}`, dataset: { messageId: e.id } },
    el("summary", {}, summary), meta, el("pre", {}, body));
}

// crypto.randomUUID needs a secure context (https or localhost); getRandomValues does not
function newOtid() {
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  return `otid-${Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("")}`;
}

function prettyJson(text) {
  if (typeof text !== "string") return JSON.stringify(text, null, 2);
  try { return JSON.stringify(JSON.parse(text), null, 2); } catch { return text; }
}

function renderBlock(base, block) {
  const area = el("textarea", { rows: Math.min(12, Math.max(3, Math.ceil(block.value.length / 70))),
                                dataset: { label: block.label }, readonly: block.read_only });
  area.value = block.value;
  const count = el("span", { class: "count muted" });
  const status = el("span", { class: "muted" });
  const save = el("button", { class: "secondary", disabled: true, dataset: { save: block.label } }, "Save");
  const recount = () => {
    count.textContent = `${area.value.length.toLocaleString()} / ${block.limit.toLocaleString()} characters`;
    count.classList.toggle("over", area.value.length > block.limit);
    const dirty = area.value !== block.value;
    area.classList.toggle("dirty", dirty);
    save.disabled = !dirty || area.value.length > block.limit;
  };
  area.addEventListener("input", recount);
  save.addEventListener("click", async () => {
    save.disabled = true; status.textContent = "saving…"; status.className = "muted";
    try {
      const saved = await api(`${base}/core-memory/blocks/${encodeURIComponent(block.label)}`,
                              { method: "PATCH", body: { value: area.value } });
      block.value = saved.value; area.value = saved.value;
      status.textContent = "saved"; status.className = "ok";
    } catch (error) { status.textContent = error.message; status.className = "error"; }
    recount();
  });
  recount();
  return el("div", { class: "block", dataset: { block: block.label } },
    el("div", { class: "block-head" }, el("strong", {}, block.label), count),
    block.description ? el("div", { class: "muted" }, block.description) : null,
    area, el("div", { class: "toolbar" }, block.read_only ? el("span", { class: "muted" }, "read-only") : save, status));
}

function renderPassages(passages, empty) {
  if (!passages.length) return el("p", { class: "muted" }, empty);
  return el("div", {}, passages.map((p) => el("div", { class: "block" },
    el("div", { class: "meta muted" }, when(p.created_at), " ", (p.tags || []).map((t) => el("span", { class: "tag" }, t))),
    el("pre", {}, p.text))));
}

function renderRuns(runs) {
  if (!runs.length) return el("p", { class: "muted" }, "No runs yet.");
  return table(["Run", "Status", "Stop reason", "Started", "#ms", "#Tokens"], runs.map((r) => el("tr", {},
    el("td", { class: "mono" }, r.id.slice(0, 16)), el("td", {}, r.status), el("td", {}, r.stop_reason || "—"),
    el("td", {}, when(r.created_at)), el("td", { class: "num" }, ms(r.total_duration_ns)),
    el("td", { class: "num" }, num(r.usage ? r.usage.total_tokens : null)))));
}

function renderSteps(steps) {
  if (!steps.length) return el("p", { class: "muted" }, "No steps yet.");
  return table(["Step", "Model", "Stop", "#Prompt", "#Completion", "#LLM ms", "#Tools ms", "#Step ms"],
    steps.map((s) => el("tr", {},
      el("td", { class: "mono", title: `run ${s.run_id || ""}` }, s.id.slice(0, 14)), el("td", { class: "mono" }, s.model || ""),
      el("td", {}, s.stop_reason || s.status), el("td", { class: "num" }, num(s.prompt_tokens)),
      el("td", { class: "num" }, num(s.completion_tokens)), el("td", { class: "num" }, ms(s.llm_request_ns)),
      el("td", { class: "num" }, ms(s.tool_execution_ns)), el("td", { class: "num" }, ms(s.step_ns)))));
}

// Server-sent events read with fetch (EventSource cannot send the token); reconnects after a drop.
async function follow(url, signal, label, onEvents) {
  let after = null;
  while (!signal.aborted) {
    try {
      const target = after ? `${url.split("?")[0]}?after=${encodeURIComponent(after)}` : url;
      const response = await fetch(target, { headers: authHeaders(), signal });
      if (!response.ok) throw new HttpError(response.status, await response.text());
      label.className = "live on"; label.textContent = "live";
      const reader = response.body.getReader();
      const decoder = new TextDecoder();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += decoder.decode(value, { stream: true });
        const frames = buffer.split("\n\n");
        buffer = frames.pop();
        const events = frames.flatMap((frame) => frame.split("\n").filter((line) => line.startsWith("data: "))
          .map((line) => JSON.parse(line.slice(6))));
        if (events.length) { after = events[events.length - 1].id; await onEvents(events); }
      }
    } catch (error) {
      if (signal.aborted) return;
    }
    label.className = "live off"; label.textContent = "reconnecting";
    await new Promise((resolve) => setTimeout(resolve, 2000));
  }
}

// ------------------------------------------------------------------ groups

async function viewGroups(params, signal) {
  const groups = await api("/v1/groups/?limit=200", { signal });
  const names = new Map();
  const ids = [...new Set(groups.flatMap((g) => [...g.agent_ids, g.manager_agent_id].filter(Boolean)))].slice(0, 200);
  await Promise.all(ids.map((id) => api(`/v1/agents/${id}`, { signal }).then((a) => names.set(id, a.name), () => {})));
  const link = (id) => el("a", { href: `#/agents/${id}` }, names.get(id) || id);
  const cards = await Promise.all(groups.map(async (g) => {
    const members = [g.manager_agent_id, ...g.agent_ids].filter(Boolean).slice(0, 4);
    const recent = (await Promise.all(members.map((id) =>
      api(`/v1/agents/${id}/messages?limit=6&order=desc`, { signal }).then(
        (events) => events.map((e) => ({ ...e, agent: id })), () => []))))
      .flat().filter((e) => ["user_message", "assistant_message"].includes(e.message_type))
      .sort((a, b) => (a.date < b.date ? 1 : -1)).slice(0, 8);
    const kind = g.manager_type === "sleeptime" ? "sleep-time pair" : g.manager_type.replace("_", " ");
    return card(el("span", {}, `${kind} `, el("span", { class: "muted mono" }, g.id)),
      g.description ? el("p", { class: "muted" }, g.description) : null,
      kv([
        ...(g.manager_agent_id ? [[g.manager_type === "sleeptime" ? "main agent" : "manager", link(g.manager_agent_id)]] : []),
        [g.manager_type === "sleeptime" ? "sleep-time agents" : "members", el("span", {}, g.agent_ids.map((id, i) => [i ? ", " : "", link(id)]))],
        ...(g.sleeptime_agent_frequency ? [["wakes every", `${g.sleeptime_agent_frequency} turns`]] : []),
        ...(g.max_turns ? [["max turns", g.max_turns]] : []),
      ]),
      el("h2", {}, "Last turns"),
      recent.length ? table(["Agent", "Kind", "Text", "When"], recent.map((e) => el("tr", {},
        el("td", {}, link(e.agent)), el("td", {}, e.message_type.replace("_message", "")),
        el("td", {}, String(typeof e.content === "string" ? e.content : "").slice(0, 240)), el("td", {}, ago(e.date)))))
        : el("p", { class: "muted" }, "No turns yet."));
  }));
  show(el("h1", {}, "Groups and sleep-time pairs"),
       cards.length ? cards : card(null, el("p", { class: "muted" }, "No groups yet (POST /v1/groups, or an agent with enable_sleeptime).")));
}

// ------------------------------------------------------------------ simulations

async function viewSims(params, signal) {
  const runs = await api("/ui/api/sims", { signal });
  show(el("h1", {}, "Simulations"),
    card(null, runs.length ? table(["Run", "Model", "#Agents", "Progress", "Started"], runs.map((r) =>
      el("tr", { class: "clickable", onclick: () => { location.hash = `#/sims/${encodeURIComponent(r.name)}`; } },
        el("td", {}, el("a", { href: `#/sims/${encodeURIComponent(r.name)}` }, r.name), el("div", { class: "muted mono" }, r.sim_id)),
        el("td", { class: "mono" }, r.model || ""), el("td", { class: "num" }, num(r.agents)),
        el("td", {}, progress(r.completed_rounds, r.rounds)),
        el("td", {}, r.created_at ? when(new Date(r.created_at * 1000).toISOString()) : "—"))))
      : el("p", { class: "muted" }, "No simulation runs yet: start one with letta-ray sim <config.yaml>.")));
}

function progress(done, total) {
  const share = total ? Math.min(1, done / total) : 0;
  return el("div", {}, el("div", { class: "progress" }, el("div", { style: `width:${(share * 100).toFixed(1)}%` })),
            el("span", { class: "muted" }, `${done} of ${total ?? "?"} rounds`));
}

async function viewSim(name, params, signal) {
  const run = await api(`/ui/api/sims/${encodeURIComponent(name)}`, { signal });
  const rounds = run.rounds_written;
  const chosen = Number(params.get("round") || (rounds.length ? rounds[rounds.length - 1].round : 1));
  const picker = el("select", { id: "round-picker", onchange: (e) => {
    location.hash = `#/sims/${encodeURIComponent(name)}?round=${e.target.value}`; } },
    rounds.map((r) => el("option", { value: r.round, selected: r.round === chosen }, `round ${r.round}`)));
  const network = rounds.length ? await api(`/ui/api/sims/${encodeURIComponent(name)}/network?round=${chosen}`, { signal }) : null;
  show(el("h1", {}, name, " ", el("span", { class: "muted mono" }, run.sim_id)),
    card(null, progress(run.completed_rounds, run.rounds),
      el("p", {}, `${num(run.agents)} agents · `, el("span", { class: "mono" }, run.model || ""), " · ",
        el("a", { href: `#/agents?q=${encodeURIComponent(`sim:${run.sim_id}`)}` }, "its agents"))),
    rounds.length ? el("div", { class: "grid3", id: "sim-plots" },
      card("Turns per second", linePlot(rounds, [["turns_per_s", "turns/s", "#3257d6"]])),
      card("Turn latency (ms)", linePlot(rounds, [["latency_p50_ms", "p50", "#1f8a4c"], ["latency_p90_ms", "p90", "#b7791f"],
                                                  ["latency_p99_ms", "p99", "#c2372b"]])),
      card("Tokens per round", linePlot(rounds, [["prompt_tokens", "prompt", "#3257d6"], ["completion_tokens", "completion", "#b7791f"]])))
      : card(null, el("p", { class: "muted" }, "No round finished yet.")),
    rounds.length ? card(el("span", {}, "Who talks to whom in ", picker), renderNetwork(network)) : null,
    rounds.length ? card("Rounds", table(["Round", "#Agents", "#Turns/s", "#p50 ms", "#p99 ms", "#LLM calls", "#Tokens",
                                          "#Memory edits", "#Errors"],
      rounds.map((r) => el("tr", {}, el("td", {}, r.round), el("td", { class: "num" }, num(r.active_agents)),
        el("td", { class: "num" }, r.turns_per_s.toFixed(1)), el("td", { class: "num" }, r.latency_p50_ms.toFixed(0)),
        el("td", { class: "num" }, r.latency_p99_ms.toFixed(0)), el("td", { class: "num" }, num(r.llm_calls)),
        el("td", { class: "num" }, num(r.total_tokens)), el("td", { class: "num" }, num(r.memory_edits)),
        el("td", { class: "num" }, num(r.errors)))))) : null);
}

// A line per series over the rounds, with the axis' range written at its ends.
function linePlot(rows, series) {
  const W = 420, H = 180, L = 44, R = 8, T = 10, B = 22;
  const xs = rows.map((r) => r.round);
  const values = series.flatMap(([key]) => rows.map((r) => Number(r[key]) || 0));
  const top = Math.max(1e-9, ...values);
  const x = (v) => (xs.length > 1 ? L + ((v - xs[0]) / (xs[xs.length - 1] - xs[0])) * (W - L - R) : (L + W - R) / 2);
  const y = (v) => H - B - (v / top) * (H - T - B);
  const plot = svg("svg", { class: "plot", viewBox: `0 0 ${W} ${H}`, "data-series": series.map(([k]) => k).join(",") },
    svg("line", { x1: L, y1: H - B, x2: W - R, y2: H - B, stroke: "#bbb" }),
    svg("line", { x1: L, y1: T, x2: L, y2: H - B, stroke: "#bbb" }),
    svg("text", { x: L - 4, y: T + 8, "text-anchor": "end" }, fmt(top)),
    svg("text", { x: L - 4, y: H - B, "text-anchor": "end" }, "0"),
    svg("text", { x: L, y: H - 6 }, `round ${xs[0]}`),
    svg("text", { x: W - R, y: H - 6, "text-anchor": "end" }, `round ${xs[xs.length - 1]}`),
    series.map(([key, , color]) => {
      const points = rows.map((r) => `${x(r.round).toFixed(1)},${y(Number(r[key]) || 0).toFixed(1)}`);
      return [svg("polyline", { points: points.join(" "), fill: "none", stroke: color, "stroke-width": 2, "data-key": key }),
              rows.map((r) => svg("circle", { cx: x(r.round), cy: y(Number(r[key]) || 0), r: 2.5, fill: color },
                                  svg("title", {}, `round ${r.round}: ${fmt(Number(r[key]) || 0)}`)))];
    }));
  return el("div", {}, plot, el("div", { class: "legend" }, series.map(([, label, color]) =>
    el("span", {}, el("i", { style: `background:${color}` }), label))));
}
function fmt(v) { return v >= 1000 ? Math.round(v).toLocaleString() : v >= 10 ? v.toFixed(0) : v.toFixed(2); }

function renderNetwork(net) {
  const W = 700, H = 520, cx = W / 2, cy = H / 2, radius = Math.min(W, H) / 2 - 40;
  const n = net.nodes.length;
  const at = (i) => [cx + radius * Math.cos((2 * Math.PI * i) / Math.max(1, n)), cy + radius * Math.sin((2 * Math.PI * i) / Math.max(1, n))];
  const shown = net.edges.slice(0, 5000);
  const graph = svg("svg", { class: "network", viewBox: `0 0 ${W} ${H}`, "data-edges": net.edges.length, "data-nodes": n },
    shown.map(([a, b]) => { const [x1, y1] = at(a); const [x2, y2] = at(b);
      return svg("line", { x1, y1, x2, y2, stroke: "#3257d6", "stroke-opacity": 0.25 }); }),
    net.nodes.map((node, i) => { const [x, y] = at(i);
      return svg("a", { href: `#/agents/${node.agent_id}` },
        svg("circle", { cx: x, cy: y, r: n > 200 ? 3 : 6, fill: node.spoke ? "#3257d6" : "#c9d0dc" },
          svg("title", {}, `${node.name}${node.said ? `: ${node.said.slice(0, 200)}` : " (silent)"}`)),
        n <= 60 ? svg("text", { x: x + (x >= cx ? 8 : -8), y: y + 3, "text-anchor": x >= cx ? "start" : "end",
                                "font-size": 10, fill: "#555" }, node.name) : null); }));
  const spoke = net.nodes.filter((node) => node.spoke).length;
  return el("div", {}, el("p", { class: "muted" },
    `Round ${net.round}: ${spoke} of ${n} agents spoke; ${num(net.edges.length)} messages delivered to neighbours`
    + (shown.length < net.edges.length ? ` (first ${num(shown.length)} drawn)` : "") + ". Click an agent to open it."), graph);
}

// ------------------------------------------------------------------ cluster

async function viewCluster(params, signal) {
  const data = await api("/ui/api/cluster", { signal });
  const metrics = data.metrics;
  show(el("h1", {}, "Cluster"),
    el("p", {}, data.dashboard_url ? el("a", { href: data.dashboard_url, target: "_blank", id: "dashboard-link" }, "Ray dashboard ↗")
      : el("span", { class: "muted", id: "dashboard-link" },
           "Ray's dashboard is not running (set LETTA_RAY_DASHBOARD=1 for an embedded Ray; a cluster's head runs it by default).")),
    el("div", { class: "grid" },
      card("Agent hosts", table(["Host", "Node", "#Agents", "#Busy", "#Queued", "Alive"], data.hosts.map((h) => {
        // the metrics name a host by its actor's name, <runtime prefix>-<host id>
        const sampled = metrics && metrics.hosts ? Object.entries(metrics.hosts).find(([name]) => name.endsWith(`-${h.host_id}`)) : undefined;
        const queue = sampled ? sampled[1].queue_depth : undefined;
        return el("tr", {}, el("td", { class: "mono" }, h.host_id), el("td", { class: "mono" }, (h.node_id || "").slice(0, 12)),
          el("td", { class: "num" }, num(h.agents)), el("td", { class: "num" }, num(h.busy)),
          el("td", { class: "num" }, queue === undefined ? "—" : num(queue)),
          el("td", {}, h.alive ? el("span", { class: "ok" }, "yes") : el("span", { class: "error", title: h.error }, "no")));
      }))),
      card("Nodes", table(["Node", "Address", "Head", "#CPU", "Alive"], data.nodes.map((n) => el("tr", {},
        el("td", { class: "mono" }, n.node_id.slice(0, 12)), el("td", { class: "mono" }, n.address), el("td", {}, n.head ? "head" : ""),
        el("td", { class: "num" }, num(n.resources.CPU)), el("td", {}, n.alive ? "yes" : "no")))))),
    el("div", { class: "grid" },
      card("Placement", kv(Object.entries(data.placement).filter(([k]) => k !== "host_nodes").map(([k, v]) => [k, String(v)]))),
      card("Metadata store", kv(Object.entries(data.store || {}).map(([k, v]) =>
        [k, typeof v === "object" && v !== null ? JSON.stringify(v) : String(v)])))),
    card("Metrics", metrics ? renderMetrics(metrics)
      : el("p", { class: "muted" }, "No metrics yet (Ray exports them every few seconds).")));
}

function renderMetrics(summary) {
  const rows = [];
  const walk = (prefix, value) => {
    if (value && typeof value === "object" && !Array.isArray(value)) {
      for (const [k, v] of Object.entries(value)) walk(prefix ? `${prefix} · ${k}` : k, v);
    } else rows.push([prefix, typeof value === "number" ? fmt(value) : JSON.stringify(value)]);
  };
  walk("", summary);
  return el("div", { id: "metrics" }, rows.length ? kv(rows) : el("p", { class: "muted" }, "None recorded yet."));
}

// ------------------------------------------------------------------ start

document.getElementById("forget-token").addEventListener("click", () => {
  sessionStorage.removeItem(TOKEN_KEY); location.reload();
});
document.getElementById("forget-token").hidden = !sessionStorage.getItem(TOKEN_KEY);
window.addEventListener("hashchange", route);
route();

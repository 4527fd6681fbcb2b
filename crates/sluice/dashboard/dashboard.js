// Sluice's dashboard: public HTTP APIs only (/v1/streams, /v1/views,
// /v1/streams/{name}/live, /metrics), so it doubles as their example.
'use strict';

const inbound = document.querySelector('meta[name=sluice-inbound]').content;
const $ = (selector) => document.querySelector(selector);
const text = (value) => document.createTextNode(String(value));

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) node.setAttribute(name, value);
  for (const child of children) node.append(child instanceof Node ? child : text(child));
  return node;
}

// A token, when this Sluice needs one: kept in this tab, sent as a header.
function headers() {
  const token = sessionStorage.getItem('sluice-token');
  return token ? { Authorization: 'Bearer ' + token } : {};
}

async function api(path) {
  const sent = sessionStorage.getItem('sluice-token');
  const response = await fetch(path, { headers: headers() });
  if (response.status === 401) {
    // A refusal of what was sent before a token was given asks for nothing.
    if (sessionStorage.getItem('sluice-token') === sent) $('#token-form').hidden = false;
    throw new Error('a bearer token is needed');
  }
  if (!response.ok) throw new Error((await response.json()).error || response.statusText);
  return response.json();
}

function status(message, failed) {
  const node = $('#status');
  node.textContent = message;
  node.className = failed ? 'status error' : 'status';
}

// Streams, with their rate from the change of their record counts.
const lastCounts = new Map();
async function streams() {
  const list = await api('/v1/streams');
  const now = performance.now();
  const body = $('#streams tbody');
  body.replaceChildren();
  for (const stream of list) {
    const before = lastCounts.get(stream.name);
    const count = stream.record_count;
    let rate = '…';
    if (before && count != null) rate = ((count - before.count) / ((now - before.at) / 1000)).toFixed(1);
    if (count != null) lastCounts.set(stream.name, { count, at: now });
    body.append(el('tr', {}, el('td', {}, stream.name), el('td', { class: 'n' }, stream.open_shards),
      el('td', { class: 'n' }, count ?? '?'), el('td', { class: 'n' }, rate)));
  }
  const select = $('#live-form select');
  if (!select.options.length) {
    for (const stream of list) select.append(el('option', { value: stream.name }, stream.name));
    select.value = list.some((s) => s.name === inbound) ? inbound : (list[0] || {}).name;
    follow();
  }
}

// The Prometheus text of /metrics: series by name, with their labels.
function parseMetrics(body) {
  const series = [];
  for (const line of body.split('\n')) {
    const match = /^([a-z_]+)(?:\{(.*)\})? ([-0-9.eE+]+)$/.exec(line);
    if (!match) continue;
    const labels = {};
    for (const pair of (match[2] || '').matchAll(/([a-z_]+)="((?:[^"\\]|\\.)*)"/g)) labels[pair[1]] = pair[2];
    series.push({ name: match[1], labels, value: Number(match[3]) });
  }
  return series;
}

function rows(table, entries, columns) {
  const body = $(table + ' tbody');
  body.replaceChildren();
  if (!entries.length) body.append(el('tr', {}, el('td', { class: 'muted' }, 'none yet')));
  for (const entry of entries) body.append(el('tr', {}, ...columns(entry)));
}

async function metrics() {
  const response = await fetch('/metrics');
  const series = parseMetrics(await response.text());
  const named = (name) => series.filter((s) => s.name === name);
  rows('#routes', named('sluice_router_routed_total'), (s) => [el('td', {}, s.labels.route), el('td', { class: 'n' }, s.value)]);
  rows('#dead-letters', named('sluice_router_dead_letters_total'), (s) => [el('td', {}, s.labels.reason), el('td', { class: 'n' }, s.value)]);
  // Every consumer application, the router's and the views' included.
  rows('#lag', named('sluice_consumer_millis_behind_latest'),
    (s) => [el('td', {}, s.labels.application), el('td', {}, s.labels.shard), el('td', { class: 'n' }, s.value)]);
  rows('#leases', named('sluice_consumer_leases_held'),
    (s) => [el('td', {}, s.labels.application), el('td', {}, s.labels.worker), el('td', { class: 'n' }, s.value)]);
}

// Each view: its latest window as bars, and the windows before it.
async function views() {
  const list = await api('/v1/views');
  const box = $('#views');
  if (!list.length) {
    box.replaceChildren(el('p', { class: 'muted' }, 'No views configured ([[views]] in sluice.toml).'));
    return;
  }
  const parts = [];
  for (const view of list) {
    const answer = await api('/v1/views/' + encodeURIComponent(view.name));
    const part = el('div', { class: 'view', 'data-view': view.name },
      el('h3', {}, `${view.name} `, el('span', { class: 'muted' }, `${view.kind} of ${view.from}`)));
    if (view.kind === 'latest') {
      const keys = Object.keys(answer.keys || {});
      part.append(el('p', {}, `${keys.length} keys`, keys.length ? `, e.g. ${keys[0]}` : ''));
    } else {
      const windows = answer.windows || [];
      const last = windows[windows.length - 1];
      if (!last) {
        part.append(el('p', { class: 'muted' }, 'no data yet'));
      } else {
        const entries = last.groups
          ? Object.entries(last.groups)
          : (Array.isArray(last.top) ? last.top.map((t) => [t.value, t.count]) : Object.entries(last.top).map(([g, top]) => [g, top.reduce((n, t) => n + t.count, 0)]));
        const max = Math.max(1, ...entries.map(([, v]) => v));
        const table = el('table', {});
        table.append(el('caption', { class: 'muted' }, `window from ${last.start}`));
        for (const [name, value] of entries) {
          table.append(el('tr', {}, el('td', {}, name),
            el('td', { class: 'n cell', 'data-group': name }, Number.isInteger(value) ? value : value.toFixed(2)),
            el('td', { style: 'width:50%' }, el('div', { class: 'bar', style: `width:${(100 * value / max).toFixed(1)}%` }))));
        }
        part.append(table);
      }
    }
    parts.push(part);
  }
  box.replaceChildren(...parts);
}

// The live panel: the stream's live feed, read with fetch so a token goes
// in a header; resumed from the last id when it ends.
let following = null;
let lastId = null;
async function follow(event) {
  if (event) event.preventDefault();
  if (following) following.abort();
  const controller = new AbortController();
  following = controller;
  lastId = null;
  $('#live-rows').replaceChildren();
  const stream = $('#live-form select').value;
  const pattern = $('#live-form input[name=match]').value.trim();
  while (following === controller) {
    let url = `/v1/streams/${encodeURIComponent(stream)}/live`;
    if (pattern) url += '?match=' + encodeURIComponent(pattern);
    const extra = lastId ? { 'Last-Event-ID': lastId } : {};
    try {
      const response = await fetch(url, { headers: { ...headers(), ...extra }, signal: controller.signal });
      if (!response.ok) {
        const reason = (await response.json()).error || response.statusText;
        $('#live-status').textContent = reason;
        if (response.status < 500) return;
      } else {
        $('#live-status').textContent = `following ${stream}`;
        await read(response.body, controller);
      }
    } catch (error) {
      if (controller.signal.aborted) return;
      $('#live-status').textContent = 'reconnecting…';
    }
    await new Promise((resolve) => setTimeout(resolve, 1000));
  }
}

async function read(body, controller) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = '';
  while (following === controller) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value;
    let end;
    while ((end = buffer.indexOf('\n\n')) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      let data = null;
      let kind = 'message';
      for (const line of block.split('\n')) {
        if (line.startsWith('id: ')) lastId = line.slice(4);
        else if (line.startsWith('event: ')) kind = line.slice(7);
        else if (line.startsWith('data: ')) data = line.slice(6);
      }
      if (kind === 'message' && data) show(data);
      else if (kind !== 'message') $('#live-status').textContent = `${kind}: ${data}`;
    }
  }
}

function show(data) {
  let envelope;
  try { envelope = JSON.parse(data); } catch { envelope = { headers: {}, payload: data }; }
  const h = envelope.headers || {};
  const rest = Object.entries(h).filter(([k]) => !['type', 'ts', 'source', 'traceparent'].includes(k))
    .map(([k, v]) => `${k}=${v}`).join(' ');
  const payload = envelope.payload === undefined ? '' : JSON.stringify(envelope.payload).slice(0, 160);
  const row = el('tr', { 'data-event-id': h.event_id || '' }, el('td', {}, h.ts || ''), el('td', {}, h.type || ''),
    el('td', { title: rest }, rest), el('td', { title: payload }, payload));
  const body = $('#live-rows');
  body.prepend(row);
  while (body.children.length > 200) body.lastChild.remove();
}

$('#live-form').addEventListener('submit', follow);
$('#token-form').addEventListener('submit', (event) => {
  event.preventDefault();
  sessionStorage.setItem('sluice-token', new FormData(event.target).get('token'));
  $('#token-form').hidden = true;
  refresh();
  if ($('#live-form select').options.length) follow();
});

async function refresh() {
  try {
    await Promise.all([streams(), metrics(), views()]);
    status('updated ' + new Date().toLocaleTimeString());
  } catch (error) {
    status(error.message, true);
  }
}
refresh();
setInterval(refresh, 5000);

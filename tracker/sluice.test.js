// Unit tests of the tracker's logic (`node --test tracker/`): batching,
// bodies under the keepalive budget, the bounded queue, retries and
// backoff, what a reload finds. The browser is stood in for by `fakeEnv`;
// scripts/test also runs the tracker in Chromium. The size budget is
// checked on the script as the collector serves it (collector/tracker.rs).
"use strict";
const test = require("node:test");
const assert = require("node:assert/strict");
const crypto = require("node:crypto");

require("./sluice.js");
const { create } = globalThis.Sluice;

const START = Date.parse("2026-11-28T14:00:00Z");

// A browser stood in for: a clock whose timers run when the test moves it,
// localStorage, and a collector that answers with `answer(request)`.
function fakeEnv(answer = () => ({ status: 202 })) {
  const env = {
    clock: START,
    timers: [],
    requests: [],
    beacons: [],
    warnings: [],
    data: new Map(),
    answer,
  };
  env.store = {
    getItem: (k) => (env.data.has(k) ? env.data.get(k) : null),
    setItem: (k, v) => env.data.set(k, String(v)),
    removeItem: (k) => env.data.delete(k),
  };
  env.now = () => env.clock;
  env.timer = (f, ms) => {
    env.timers.push({ at: env.clock + Math.max(0, ms), f });
    return env.timers.length;
  };
  env.rnd = (n) => new Uint8Array(crypto.randomBytes(n));
  env.warn = (message) => {
    env.warnings.push(message);
  };
  env.fetch = async (url, init) => {
    const events = init.body.trim().split("\n").map((line) => JSON.parse(line));
    env.requests.push({ url, init, events });
    const a = await env.answer({ url, init, events });
    if (a.error) throw new TypeError("network error");
    return {
      status: a.status,
      headers: { get: (name) => (a.headers || {})[name.toLowerCase()] ?? null },
      text: async () => a.text || "",
    };
  };
  env.beacon = (url, body) => {
    env.beacons.push({ url, body });
    return true;
  };
  return env;
}

// Lets promises settle, then runs the timers due up to `ms` from now, in order.
async function advance(env, ms) {
  const until = env.clock + ms;
  for (;;) {
    await new Promise((resolve) => setImmediate(resolve));
    env.timers.sort((a, b) => a.at - b.at);
    const next = env.timers[0];
    if (!next || next.at > until) break;
    env.timers.shift();
    env.clock = Math.max(env.clock, next.at);
    next.f();
  }
  env.clock = until;
  await new Promise((resolve) => setImmediate(resolve));
}

const stored = (env, key = "wk_test_key") =>
  (env.data.get(`sluice:q:${key}`) || "").split("\n").filter((l) => l).map((l) => JSON.parse(l));

test("twenty events go in one text/plain request at once; fewer wait for the timer", async () => {
  const env = fakeEnv();
  const t = create({ key: "wk_test_key", endpoint: "https://c.example.com/" }, env);
  for (let i = 0; i < 20; i++) t.track("click", { n: i });
  await advance(env, 0);
  assert.equal(env.requests.length, 1);
  const [request] = env.requests;
  assert.equal(request.url, "https://c.example.com/v1/events?key=wk_test_key");
  assert.equal(request.init.headers["content-type"], "text/plain");
  assert.equal(request.init.keepalive, true);
  assert.deepEqual(request.events.map((e) => e.headers.n), [...Array(20).keys()]);
  assert.deepEqual(stored(env), [], "acknowledged events leave the store");

  for (let i = 0; i < 5; i++) t.track("click");
  await advance(env, 999);
  assert.equal(env.requests.length, 1, "a part batch waits for the flush interval");
  await advance(env, 1);
  assert.equal(env.requests.length, 2);
  assert.equal(env.requests[1].events.length, 5);
  assert.deepEqual(t.stats(), { sent: 25, dropped: 0, refused: 0, queued: 0 });
});

test("each event carries a UUIDv7 event_id, its time, and the visitor or identified user as partition key", async () => {
  const env = fakeEnv();
  const t = create({ key: "wk_test_key" }, env);
  const first = t.track("page_view", {}, { url: "https://shop.example.com/" });
  t.identify("u-42");
  t.track("purchase", { amount: 42.5 });
  await t.flush();
  const [a, b] = env.requests[0].events;
  assert.match(first, /^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/);
  assert.equal(a.event_id, first);
  assert.notEqual(a.event_id, b.event_id);
  assert.equal(parseInt(first.replace(/-/g, "").slice(0, 12), 16), START, "the id starts with the time");
  assert.equal(a.ts, "2026-11-28T14:00:00.000Z");
  assert.match(a.partition_key, /^v-/);
  assert.equal(b.partition_key, "u-42");
  assert.deepEqual(b.headers, { amount: 42.5 });
  assert.equal(b.payload, undefined);
  // The visitor id is kept: a second tracker (the next page) uses it.
  t.identify(null);
  const next = create({ key: "wk_test_key" }, env);
  next.track("page_view");
  await next.flush();
  assert.equal(env.requests[1].events[0].partition_key, a.partition_key);
});

test("bodies stay under the keepalive budget", async () => {
  const env = fakeEnv();
  const t = create({ key: "wk_test_key", batchSize: 20 }, env);
  const big = "x".repeat(20_000);
  for (let i = 0; i < 7; i++) t.track("note", {}, { big, i });
  await advance(env, 0);
  await advance(env, 1000);
  const sizes = env.requests.map((r) => Buffer.byteLength(r.init.body));
  assert.ok(sizes.length >= 3, `${sizes}`);
  assert.ok(sizes.every((n) => n <= 60_000), `${sizes}`);
  assert.equal(env.requests.flatMap((r) => r.events).length, 7);
  // A page going away sends what waits by beacon, in pieces under the budget.
  const down = fakeEnv(() => ({ error: true }));
  const u = create({ key: "wk_test_key" }, down);
  for (let i = 0; i < 7; i++) u.track("note", {}, { big: big + "é", i });
  u.hide();
  assert.ok(down.beacons.length >= 3);
  assert.ok(down.beacons.every((b) => Buffer.byteLength(b.body) <= 60_000));
  assert.equal(down.beacons.flatMap((b) => b.body.trim().split("\n")).length, 7);
  assert.equal(stored(down).length, 7, "beaconed events stay stored until confirmed");
  u.hide();
  assert.equal(down.beacons.flatMap((b) => b.body.trim().split("\n")).length, 7, "not beaconed twice");
});

test("the queue is bounded: past 1,000 events the oldest go and are counted", async () => {
  const env = fakeEnv(() => ({ error: true }));
  const t = create({ key: "wk_test_key", flushMs: 60_000 }, env);
  const ids = [];
  for (let i = 0; i < 1005; i++) ids.push(t.track("click", { i }));
  await advance(env, 0);
  t.hide();
  const kept = stored(env);
  assert.equal(kept.length, 1000);
  assert.deepEqual(kept.map((e) => e.event_id), ids.slice(5));
  assert.equal(t.stats().dropped, 5);
  assert.equal(t.stats().queued, 1000);
});

test("5xx and network errors are retried with growing backoff; Retry-After is honoured", async () => {
  let answers = [{ status: 503 }, { error: true }, { status: 500 }, { status: 429, headers: { "retry-after": "30" } }];
  const env = fakeEnv(() => answers.shift() || { status: 202 });
  const t = create({ key: "wk_test_key" }, env);
  const times = [];
  const at = () => times.push(env.clock - START);
  env.answer = ((inner) => (r) => (at(), inner(r)))(env.answer);
  t.track("click");
  assert.equal(await t.flush(), false, "flush says a retry is pending");
  await advance(env, 120_000);
  assert.equal(env.requests.length, 5);
  const gaps = times.slice(1).map((t, i) => t - times[i]);
  // Backoff 1 s, 2 s, 4 s (each with jitter down to half), then the 30 s asked for.
  assert.ok(gaps[0] >= 500 && gaps[0] <= 1000, `${gaps}`);
  assert.ok(gaps[1] >= 1000 && gaps[1] <= 2000, `${gaps}`);
  assert.ok(gaps[2] >= 2000 && gaps[2] <= 4000, `${gaps}`);
  assert.ok(gaps[3] >= 30_000 && gaps[3] <= 31_000, `${gaps}`);
  assert.deepEqual(new Set(env.requests.map((r) => r.events[0].event_id)).size, 1, "the same event each time");
  assert.deepEqual(stored(env), []);
  assert.equal(await t.flush(), true);
});

test("other 4xx answers drop the events with a warning", async () => {
  const env = fakeEnv(() => ({ status: 403, text: '{"error":"origin not allowed"}' }));
  const t = create({ key: "wk_test_key" }, env);
  t.track("click");
  assert.equal(await t.flush(), true);
  await advance(env, 60_000);
  assert.equal(env.requests.length, 1, "not retried");
  assert.match(env.warnings[0], /1 events refused \(403\).*origin not allowed/);
  assert.equal(t.stats().refused, 1);
  assert.deepEqual(stored(env), []);
});

test("events stored while the collector is down are sent by the next page, once", async () => {
  const down = fakeEnv(() => ({ error: true }));
  const t = create({ key: "wk_test_key" }, down);
  const ids = [t.track("click"), t.track("purchase", { amount: 5 })];
  await advance(down, 0);
  await advance(down, 1000);
  t.hide(); // the page is reloaded
  const env = fakeEnv();
  env.data = down.data;
  env.clock = down.clock;
  const next = create({ key: "wk_test_key" }, env);
  await advance(env, 0);
  assert.equal(env.requests.length, 1);
  assert.deepEqual(env.requests[0].events.map((e) => e.event_id), ids);
  assert.deepEqual(stored(env), []);
  await advance(env, 10_000);
  assert.equal(env.requests.length, 1);
  assert.equal(next.stats().queued, 0);
});

test("opting out stops tracking and forgets what waits; opting in resumes", async () => {
  const env = fakeEnv(() => ({ error: true }));
  const t = create({ key: "wk_test_key" }, env);
  t.track("click");
  t.optOut();
  assert.equal(t.track("click"), undefined);
  assert.deepEqual(stored(env), []);
  const next = create({ key: "wk_test_key" }, env);
  assert.equal(next.track("click"), undefined, "remembered across pages");
  next.optIn();
  assert.ok(next.track("click"));
  const blocked = create({ key: "wk_other_key", blocked: true }, fakeEnv());
  assert.equal(blocked.track("click"), undefined);
});

test("an event whose headers the collector would refuse is not queued, so it cannot sink its batch", async () => {
  const env = fakeEnv();
  const t = create({ key: "wk_test_key" }, env);
  assert.equal(t.track("click", { nested: { a: 1 } }), undefined);
  assert.equal(t.track("click", { none: null }), undefined);
  assert.match(env.warnings[0], /click: header values are strings, numbers or booleans/);
  assert.ok(t.track("click", { ok: "yes", n: 1, b: true }));
  await t.flush();
  assert.equal(env.requests.flatMap((r) => r.events).length, 1);
});

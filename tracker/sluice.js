/*! Sluice tracker: events batched to a Sluice collector, kept until acknowledged */
((root) => {
  if (root.Sluice) return;
  const doc = root.document;
  const LIMIT = 60000; // keepalive budget: 64 KiB a page
  const bytes = (s) => new TextEncoder().encode(s).length;

  const uuid7 = (ms, b) => {
    for (let i = 5; i >= 0; i--) { b[i] = ms % 256; ms = Math.floor(ms / 256); }
    b[6] = (b[6] & 15) | 112;
    b[8] = (b[8] & 63) | 128;
    return [...b].map((x) => (x + 256).toString(16).slice(1)).join("").replace(/(.{8})(.{4})(.{4})(.{4})/, "$1-$2-$3-$4-");
  };

  // env: the browser (fetch, beacon, store, now, timer, rnd, warn); tests stand in
  const create = (o, env) => {
    const key = o.key, url = `${(o.endpoint || "").replace(/\/$/, "")}/v1/events?key=${encodeURIComponent(key)}`;
    const size = o.batchSize || 20, wait = o.flushMs ?? 1000, max = o.maxQueue || 1000;
    const store = env.store, qk = `sluice:q:${key}`;
    const busy = {}, acked = {}, beaconed = {};
    let queue = [], timer = 0, retryAt = 0, fails = 0, sending = 0, waiters = [], sent = 0, dropped = 0, refused = 0;

    const get = (k) => { try { return store.getItem(k); } catch {} };
    const put = (k, v) => { try { v == null ? store.removeItem(k) : store.setItem(k, v); } catch {} }; // full or denied
    const load = () => { try { return JSON.parse(get(qk)) || []; } catch { return []; } };
    const off = () => o.blocked || get("sluice:off") == "1";
    const idle = (e) => !busy[e.event_id];

    const bound = (list) => {
      if (list.length <= max) return list;
      dropped += list.length - max;
      list.slice(0, -max).forEach((e) => (acked[e.event_id] = 1));
      return list.slice(-max);
    };

    // stored events of other pages and tabs, ours, less the acknowledged
    const save = () => {
      const seen = {};
      const all = bound(load().concat(queue).filter((e) => !acked[e.event_id] && !seen[e.event_id] && (seen[e.event_id] = 1)));
      put(qk, all.length ? JSON.stringify(all) : null);
    };

    const visitor = () => {
      let id = get("sluice:uid") || get("sluice:vid");
      if (!id) put("sluice:vid", (id = `v-${uuid7(env.now(), env.rnd(16))}`));
      return id;
    };

    const schedule = (ms) => {
      timer ||= env.timer(() => { timer = 0; flush(); }, ms);
    };

    const track = (type, headers, payload) => {
      if (off() || !type) return;
      const now = env.now();
      const e = { type: String(type), headers: headers || {}, partition_key: visitor(),
        event_id: uuid7(now, env.rnd(16)), ts: new Date(now).toISOString(), payload };
      queue.push(e);
      queue = bound(queue);
      queue.length >= size && !retryAt && !sending ? flush() : schedule(wait);
      return e.event_id;
    };

    const pack = (events) => {
      const out = [];
      let body = "", len = 0, n = [];
      for (const e of events) {
        const line = JSON.stringify(e) + "\n", l = bytes(line);
        if (n.length && (n.length >= size || len + l > LIMIT)) { out.push([body, n]); body = ""; len = 0; n = []; }
        body += line; len += l; n.push(e);
      }
      if (n.length) out.push([body, n]);
      return out;
    };

    const settle = () => {
      if (sending || (queue.length && !retryAt)) return;
      const w = waiters;
      waiters = [];
      w.forEach((f) => f(!queue.length));
    };

    const done = (events, gone) => {
      sending -= events.length;
      for (const e of events) { delete busy[e.event_id]; if (gone) acked[e.event_id] = 1; }
      if (gone) { queue = queue.filter((e) => !acked[e.event_id]); save(); }
    };

    const retry = (after, events) => {
      done(events, false);
      const backoff = Math.min(60000, 1000 * 2 ** fails++) * (0.5 + env.rnd(1)[0] / 512);
      retryAt = env.now() + Math.max(backoff, (after || 0) * 1000);
    };

    const send = ([body, events]) => {
      for (const e of events) { busy[e.event_id] = 1; delete beaconed[e.event_id]; }
      sending += events.length;
      env.fetch(url, { method: "POST", body, keepalive: bytes(body) <= LIMIT, headers: { "content-type": "text/plain" } })
        .then((r) => {
          if (r.status < 300) { fails = 0; sent += events.length; return done(events, true); }
          if (r.status == 429 || r.status >= 500) return retry(+r.headers.get("retry-after"), events);
          // refused for good (key, origin, event)
          return r.text().then((t) => {
            env.warn(`sluice: ${events.length} events refused (${r.status}): ${t}`);
            refused += events.length;
            done(events, true);
          });
        }, () => retry(0, events))
        .then(() => {
          if (queue.length) schedule(retryAt - env.now());
          settle();
        });
    };

    // one batch at a time; the next follows its answer
    const flush = () => {
      const promise = new Promise((f) => waiters.push(f));
      save();
      if (retryAt > env.now()) schedule(retryAt - env.now());
      else if (!sending) {
        retryAt = 0;
        const first = pack(queue.filter(idle))[0];
        if (first) send(first);
      }
      settle();
      return promise;
    };

    // page going away: beacons, stored until a later answer (the collector drops resends)
    const hide = () => {
      save();
      if (off()) return;
      for (const [body, events] of pack(queue.filter((e) => idle(e) && !beaconed[e.event_id]))) {
        if (env.beacon(url, body)) events.forEach((e) => (beaconed[e.event_id] = 1));
      }
    };

    queue = bound(load());
    if (queue.length) schedule(0);
    return {
      track, flush, hide,
      identify: (id) => put("sluice:uid", id),
      optOut: () => { put("sluice:off", "1"); queue = []; put(qk, null); },
      optIn: () => put("sluice:off", null),
      stats: () => ({ sent, dropped, refused, queued: queue.length })
    };
  };

  // data-sluice-product-id="x" → header product_id
  const attrs = (el) => {
    const h = {};
    for (const k in el.dataset) {
      if (k.startsWith("sluice") && k != "sluiceEvent") h[k.slice(6).replace(/[A-Z]/g, (c, i) => (i ? "_" : "") + c.toLowerCase())] = el.dataset[k];
    }
    return h;
  };

  const start = (o) => {
    const nav = root.navigator, loc = root.location;
    o.blocked ||= o.respectDnt && (nav.globalPrivacyControl || nav.doNotTrack == "1");
    const t = create(o, {
      fetch: (u, i) => root.fetch(u, i),
      beacon: (u, b) => nav.sendBeacon(u, b),
      store: root.localStorage,
      now: Date.now,
      timer: (f, ms) => root.setTimeout(f, ms),
      rnd: (n) => root.crypto.getRandomValues(new Uint8Array(n)),
      warn: console.warn
    });
    let last = "";
    const view = () => {
      if (loc.href == last) return;
      t.track("page_view", {}, { url: loc.href, referrer: last || doc.referrer, title: doc.title });
      last = loc.href;
    };
    for (const m of ["pushState", "replaceState"]) {
      const orig = root.history[m];
      root.history[m] = function (...a) { const r = orig.apply(this, a); view(); return r; };
    }
    root.addEventListener("popstate", view);
    root.addEventListener("pagehide", t.hide);
    doc.addEventListener("visibilitychange", () => doc.visibilityState == "hidden" && t.hide());
    doc.addEventListener("click", (e) => {
      const el = e.target.closest?.("[data-sluice-event]");
      if (el) t.track(el.dataset.sluiceEvent, attrs(el), { url: loc.href });
    }, true);
    if (o.pageViews !== false) view();
    return t;
  };

  root.Sluice = { create, start };
  const s = doc?.currentScript;
  if (s?.dataset.key) {
    root.sluice = start({ key: s.dataset.key, endpoint: s.dataset.endpoint || new URL(s.src).origin, respectDnt: s.hasAttribute("data-respect-dnt") });
  }
})(globalThis);

/*! Sluice tracker */
((root) => {
  if (root.Sluice) return;
  const doc = root.document;
  const LIMIT = 60000; // of 64 KiB for keepalive
  const bytes = (s) => s.length + 2 * (s.match(/[^\0-\x7f]/g) || "").length;

  const hex = [...Array(256)].map((_, i) => (i + 256).toString(16).slice(1));
  const uuid7 = (ms, b) => {
    b.set([ms / 2 ** 40, ms / 2 ** 32, ms / 2 ** 24, ms / 2 ** 16, ms / 256, ms]);
    b[6] = (b[6] & 15) | 112;
    b[8] = (b[8] & 63) | 128;
    let s = "";
    for (let i = 0; i < 16; i++) s += hex[b[i]] + (i % 2 && i > 2 && i < 10 ? "-" : "");
    return s;
  };

  const create = (o, env) => {
    const key = o.key, url = `${(o.endpoint || "").replace(/\/$/, "")}/v1/events?key=${key}`;
    const size = o.batchSize || 20, wait = o.flushMs ?? 1000, max = o.maxQueue || 1000;
    const store = env.store, qk = `sluice:q:${key}`;
    const busy = {}, beaconed = {};
    let queue = [], acked = {}, last = null, timer = 0, retryAt = 0, fails = 0, sending = 0, waiters = [], sent = 0, dropped = 0, refused = 0;

    const get = (k) => { try { return store.getItem(k); } catch {} };
    const put = (k, v) => { try { v == null ? store.removeItem(k) : store.setItem(k, v); } catch {} };
    // queue: { i: event_id, l: NDJSON line, b: bytes }; stored on failure and hide
    const item = (l) => ({ i: JSON.parse(l).event_id, l, b: bytes(l) });
    const load = () => { try { return (get(qk) || "").split(/(?<=\n)/).filter((l) => l.trim()).map(item); } catch { return []; } };
    let isOff = o.blocked || get("sluice:off") == "1", vid = get("sluice:uid") || get("sluice:vid");
    const idle = (e) => !busy[e.i];

    const bound = (list) => {
      if (list.length <= max) return list;
      dropped += list.length - max;
      list.slice(0, -max).forEach((e) => (acked[e.i] = 1));
      return list.slice(-max);
    };

    const save = () => {
      const seen = {};
      const all = get(qk) == last ? queue : bound(load().concat(queue).filter((e) => !acked[e.i] && !seen[e.i] && (seen[e.i] = 1)));
      put(qk, (last = all.map((e) => e.l).join("") || null));
      acked = {};
    };

    const schedule = (ms) => {
      timer ||= env.timer(() => { timer = 0; flush(); }, ms);
    };

    const track = (type, headers, payload) => {
      if (isOff || !type) return;
      if (Object.values(headers || {}).some((v) => typeof v == "object")) return env.warn(`sluice: ${type}: header values are strings, numbers or booleans`);
      if (!vid) put("sluice:vid", (vid = `v-${uuid7(env.now(), env.rnd(16))}`));
      const now = env.now();
      const i = uuid7(now, env.rnd(16)), l = JSON.stringify({ type: String(type), headers: headers || {},
        partition_key: vid, event_id: i, ts: new Date(now).toISOString(), payload }) + "\n";
      queue.push({ i, l, b: bytes(l) });
      queue = bound(queue);
      queue.length >= size && !retryAt && !sending ? flush() : schedule(wait);
      return i;
    };

    const pack = (events) => {
      const out = [];
      let body = "", len = 0, n = [];
      for (const e of events) {
        if (n.length && (n.length >= size || len + e.b > LIMIT)) { out.push([body, n]); body = ""; len = 0; n = []; }
        body += e.l; len += e.b; n.push(e);
      }
      if (n.length) out.push([body, n]);
      return out;
    };

    const settle = () => {
      if (!sending && (!queue.length || retryAt)) waiters.splice(0).forEach((f) => f(!queue.length));
    };

    const done = (events, gone) => {
      sending -= events.length;
      for (const e of events) { delete busy[e.i]; if (gone) acked[e.i] = 1; }
      if (gone) { queue = queue.filter((e) => !acked[e.i]); if (last) save(); }
    };

    const retry = (after, events) => {
      done(events, false);
      const backoff = Math.min(60000, 1000 * 2 ** fails++) * (0.5 + env.rnd(1)[0] / 512);
      retryAt = env.now() + Math.max(backoff, (after || 0) * 1000);
      save();
    };

    const send = ([body, events]) => {
      for (const e of events) { busy[e.i] = 1; delete beaconed[e.i]; }
      sending += events.length;
      env.fetch(url, { method: "POST", body, keepalive: bytes(body) <= LIMIT, headers: { "content-type": "text/plain" } })
        .then((r) => {
          if (r.status < 300) { fails = 0; sent += events.length; return done(events, true); }
          if (r.status == 429 || r.status >= 500) return retry(+r.headers.get("retry-after"), events);
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

    const flush = () => {
      const promise = new Promise((f) => waiters.push(f));
      if (retryAt > env.now()) schedule(retryAt - env.now());
      else if (!sending) {
        retryAt = 0;
        const first = pack(queue.filter(idle))[0];
        if (first) send(first);
      }
      settle();
      return promise;
    };

    // page hidden: beacons, kept until answered (the collector drops resends)
    const hide = () => {
      save();
      if (isOff) return;
      for (const [body, events] of pack(queue.filter((e) => idle(e) && !beaconed[e.i]))) {
        if (env.beacon(url, body)) events.forEach((e) => (beaconed[e.i] = 1));
      }
    };

    queue = bound(load());
    last = get(qk);
    if (queue.length) schedule(0);
    return {
      track, flush, hide,
      identify: (id) => { put("sluice:uid", id); vid = get("sluice:uid") || get("sluice:vid"); },
      optOut: () => { put("sluice:off", "1"); isOff = true; queue = []; put(qk, (last = null)); },
      optIn: () => { put("sluice:off", null); isOff = o.blocked; },
      stats: () => ({ sent, dropped, refused, queued: queue.length })
    };
  };

  const attrs = (el) => {
    const h = {};
    for (const k in el.dataset) {
      if (k.startsWith("sluice") && k != "sluiceEvent") h[k.slice(6).replace(/[A-Z]/g, (c, i) => (i ? "_" : "") + c.toLowerCase())] = el.dataset[k];
    }
    return h;
  };

  const start = (o) => {
    const nav = root.navigator, loc = root.location;
    let pool, at = 4096;
    o.blocked ||= o.respectDnt && (nav.globalPrivacyControl || nav.doNotTrack == "1");
    const t = create(o, {
      fetch: root.fetch.bind(root),
      beacon: nav.sendBeacon.bind(nav),
      store: root.localStorage,
      now: Date.now,
      timer: root.setTimeout.bind(root),
      rnd: (n) => ((at += n) > 4096 && ((pool = root.crypto.getRandomValues(new Uint8Array(4096))), (at = n)), pool.subarray(at - n, at)),
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

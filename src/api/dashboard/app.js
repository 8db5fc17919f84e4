// batchlens dashboard: plain JS over the public API, no framework, no build step.
// Everything that comes from the API reaches the page as text nodes or attribute values,
// never as markup. The only thing stored is the API key, in this tab's sessionStorage.
"use strict";
(() => {
  const KEY = "batchlens.key";
  const TERMINAL = new Set(["completed", "failed", "cancelled"]);
  const LIST_EVERY_MS = 5000; // the job list, while the tab is visible
  const MAX_STREAMS = 3; // /events streams at once: a browser has ~6 connections per host
  const JOBS_PAGE = 25;
  const POSTS_PAGE = 20;
  const CHART_DAYS = 30;
  const CHART_MIN_GAP_MS = 60000; // a finished job redraws the chart at most once a minute

  const $ = (id) => document.getElementById(id);
  const SVG = "http://www.w3.org/2000/svg";

  // ---- DOM helpers: strings become text, never HTML --------------------------------
  function el(tag, attrs, ...children) {
    const e = document.createElement(tag);
    setAttrs(e, attrs);
    for (const c of children.flat(Infinity)) {
      if (c !== null && c !== undefined && c !== false) e.append(c);
    }
    return e;
  }
  function svg(tag, attrs, ...children) {
    const e = document.createElementNS(SVG, tag);
    setAttrs(e, attrs);
    for (const c of children) e.append(c);
    return e;
  }
  function setAttrs(e, attrs) {
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k === "class") e.setAttribute("class", v);
      else if (k === "dataset") Object.assign(e.dataset, v);
      else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
      else e.setAttribute(k, v === true ? "" : String(v));
    }
  }
  const sleep = (ms, signal) =>
    new Promise((resolve) => {
      const t = setTimeout(resolve, ms);
      if (signal) signal.addEventListener("abort", () => { clearTimeout(t); resolve(); }, { once: true });
    });

  // ---- formatting -------------------------------------------------------------------
  function usd(v) {
    const n = Number(v) || 0;
    if (n === 0) return "$0";
    if (Math.abs(n) >= 1) return "$" + n.toFixed(2);
    return "$" + Number(n.toPrecision(3)).toString();
  }
  const pad = (n) => String(n).padStart(2, "0");
  function when(t) {
    if (!t) return "";
    const d = new Date(t);
    if (isNaN(d)) return String(t);
    return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${pad(d.getHours())}:${pad(d.getMinutes())}`;
  }
  const iso = (d) => d.toISOString().replace(/\.\d{3}Z$/, "Z");
  function fieldText(v) {
    if (v === null || v === undefined) return "—";
    if (typeof v === "string") return v;
    if (Array.isArray(v) && v.every((x) => typeof x !== "object" || x === null)) return v.join(", ");
    return JSON.stringify(v);
  }
  const percentOf = (p) => Math.min(100, Math.max(0, Number(p && p.percent) || 0));

  // ---- the API ----------------------------------------------------------------------
  class Unauthorized extends Error {}
  function authHeaders(extra) {
    const h = Object.assign({}, extra);
    const key = sessionStorage.getItem(KEY);
    if (key) h.Authorization = "Bearer " + key;
    return h;
  }
  async function api(path, opts = {}) {
    const r = await fetch(path, Object.assign({}, opts, { headers: authHeaders(opts.headers) }));
    if (r.status === 401) {
      askKey(sessionStorage.getItem(KEY) ? "That key was refused." : null);
      throw new Unauthorized("401");
    }
    return r;
  }
  async function getJson(path, signal) {
    const r = await api(path, { headers: { Accept: "application/json" }, signal });
    if (!r.ok) throw new Error(`${path}: HTTP ${r.status}`);
    return r.json();
  }
  const jobPath = (id, rest = "") => `/v1/jobs/${encodeURIComponent(id)}${rest}`;

  // ---- key --------------------------------------------------------------------------
  let epoch = 0; // bumped on every (re)start, so old loops stop
  function askKey(message) {
    stopAll();
    $("main").hidden = true;
    $("key-form").hidden = false;
    $("key-error").hidden = !message;
    $("key-error").textContent = message || "";
    $("key-input").focus();
  }
  $("key-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const key = $("key-input").value.trim();
    if (!key) return;
    sessionStorage.setItem(KEY, key);
    $("key-input").value = "";
    start();
  });
  $("forget-key").addEventListener("click", () => {
    sessionStorage.removeItem(KEY);
    location.reload();
  });

  // ---- jobs -------------------------------------------------------------------------
  const jobs = new Map(); // id → {job, tr, cells…}
  let nextCursor = null;
  let morePages = false; // once "more" was used, the list refresh leaves next_cursor alone

  function jobRow(job) {
    const fill = el("div", { class: "fill" });
    const label = el("span", { class: "label" });
    const bar = el("div", { class: "bar", role: "progressbar", "aria-valuemin": 0, "aria-valuemax": 100 }, fill, label);
    const e = {
      job,
      name: el("td", { class: "name" }),
      status: el("span", { class: "status" }),
      mode: el("td"),
      model: el("td"),
      created: el("td", { class: "muted" }),
      bar, fill, label,
    };
    e.tr = el("tr", {
      class: "job", tabindex: 0, dataset: { jobId: job.id },
      onclick: () => select(job.id),
      onkeydown: (ev) => { if (ev.key === "Enter") select(job.id); },
    }, e.name, el("td", {}, e.status), e.mode, e.model, e.created, el("td", {}, bar));
    return e;
  }
  function paintJob(e) {
    const j = e.job;
    e.name.textContent = j.name || "(unnamed)";
    e.name.title = j.id;
    e.status.textContent = j.status;
    e.status.className = "status " + j.status;
    e.mode.textContent = j.mode || "";
    e.model.textContent = j.model || "";
    e.created.textContent = when(j.created_at);
    paintBar(e, j.progress || {}, j.status);
    e.tr.classList.toggle("selected", selected === j.id);
  }
  function paintBar(e, p, status) {
    const pct = percentOf(p);
    // Never backwards (a list read can be older than the stream's last figure), except
    // after the stream said a retry re-opened items, or at the end.
    if (e.reopen) e.reopen = false;
    else if (e.shown !== undefined && pct < e.shown && !TERMINAL.has(status)) return;
    e.shown = pct;
    const work = (p.total || 0) - (p.rejected || 0);
    const done = (p.succeeded || 0) + (p.failed || 0) + (p.cancelled || 0) + (p.processing || 0);
    e.bar.dataset.percent = pct.toFixed(1);
    e.bar.dataset.status = status;
    e.bar.setAttribute("aria-valuenow", pct.toFixed(1));
    e.fill.style.width = pct + "%";
    e.label.textContent = `${pct.toFixed(pct > 0 && pct < 100 ? 1 : 0)}%  ·  ${Math.min(done, work)}/${work}`;
    e.bar.title = `${p.succeeded || 0} succeeded, ${p.failed || 0} failed, ${p.rejected || 0} rejected, ` +
      `${p.pending || 0} pending, ${p.submitted || 0} submitted` +
      (e.bar.dataset.reopened ? `; ${e.bar.dataset.reopened} re-opened by retries` : "");
  }
  function upsert(job) {
    let e = jobs.get(job.id);
    if (e) e.job = job;
    else {
      e = jobRow(job);
      jobs.set(job.id, e);
    }
    paintJob(e);
  }
  function order() {
    const rows = [...jobs.values()].sort((a, b) =>
      a.job.created_at < b.job.created_at ? 1 : a.job.created_at > b.job.created_at ? -1 : a.job.id < b.job.id ? 1 : -1);
    const tbody = $("jobs");
    rows.forEach((e) => tbody.append(e.tr)); // moves existing rows, keeps their state
    $("jobs-empty").hidden = rows.length > 0;
    $("jobs-more").hidden = !nextCursor;
  }
  async function refreshJobs() {
    const page = await getJson(`/v1/jobs?limit=${JOBS_PAGE}`);
    (page.data || []).forEach(upsert);
    if (!morePages) nextCursor = page.next_cursor || null;
    order();
    $("jobs-updated").textContent = "updated " + new Date().toLocaleTimeString();
    followLive();
  }
  $("jobs-more").addEventListener("click", async () => {
    if (!nextCursor) return;
    const page = await getJson(`/v1/jobs?limit=${JOBS_PAGE}&cursor=${encodeURIComponent(nextCursor)}`);
    (page.data || []).forEach(upsert);
    nextCursor = page.next_cursor || null;
    morePages = true;
    order();
    followLive();
  });
  async function listLoop(mine) {
    while (mine === epoch) {
      if (!document.hidden) {
        try {
          await refreshJobs();
          setConn("");
        } catch (err) {
          if (err instanceof Unauthorized) return;
          setConn("cannot reach the server; retrying", true);
        }
      }
      await sleep(LIST_EVERY_MS);
    }
  }
  document.addEventListener("visibilitychange", () => {
    if (!document.hidden && epoch) refreshJobs().catch(() => {});
  });
  function setConn(text, bad) {
    const live = streams.size;
    $("conn").textContent = text || (live ? `${live} live stream${live > 1 ? "s" : ""}` : "");
    $("conn").dataset.state = bad ? "error" : "ok";
  }

  // ---- live progress: /events read with fetch (EventSource cannot send a header) ----
  const streams = new Map(); // job id → AbortController
  function followLive() {
    for (const [id, e] of jobs) {
      if (streams.size >= MAX_STREAMS) break;
      if (!TERMINAL.has(e.job.status) && !streams.has(id)) follow(id, epoch);
    }
    setConn("");
  }
  async function follow(id, mine) {
    const ctl = new AbortController();
    streams.set(id, ctl);
    let delay = 1000;
    try {
      while (!ctl.signal.aborted && mine === epoch) {
        const e = jobs.get(id);
        if (!e || TERMINAL.has(e.job.status)) break;
        let ended = false;
        try {
          const r = await api(jobPath(id, "/events"), {
            headers: { Accept: "text/event-stream" }, signal: ctl.signal, cache: "no-store",
          });
          if (r.status === 404) break;
          if (!r.ok || !r.body) throw new Error("HTTP " + r.status);
          ended = await readEvents(r.body, ctl.signal, (type, data) => {
            delay = 1000;
            return onEvent(id, type, data);
          });
        } catch (err) {
          if (err instanceof Unauthorized || ctl.signal.aborted) break;
        }
        if (ended) break;
        await sleep(delay, ctl.signal); // dropped: reconnect, backing off up to 30 s
        delay = Math.min(delay * 2, 30000);
      }
    } finally {
      if (streams.get(id) === ctl) streams.delete(id);
      if (mine === epoch) followLive();
    }
  }
  // Parses a text/event-stream body; calls onEvent(type, data) per event. Resolves true
  // once onEvent reports the terminal status, false when the stream ends before that.
  async function readEvents(body, signal, onEvent) {
    const reader = body.getReader();
    const decoder = new TextDecoder();
    let buf = "";
    let type = "";
    let data = [];
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) return false;
        buf += decoder.decode(value, { stream: true });
        let nl;
        while ((nl = buf.indexOf("\n")) >= 0) {
          let line = buf.slice(0, nl);
          buf = buf.slice(nl + 1);
          if (line.endsWith("\r")) line = line.slice(0, -1);
          if (line === "") {
            if (data.length && onEvent(type || "message", data.join("\n"))) return true;
            type = "";
            data = [];
          } else if (line[0] !== ":") { // ":" lines are heartbeats
            const colon = line.indexOf(":");
            const field = colon < 0 ? line : line.slice(0, colon);
            let v = colon < 0 ? "" : line.slice(colon + 1);
            if (v[0] === " ") v = v.slice(1);
            if (field === "event") type = v;
            else if (field === "data") data.push(v);
          }
        }
      }
    } finally {
      if (!signal.aborted) reader.cancel().catch(() => {});
    }
  }
  function onEvent(id, type, text) {
    let d;
    try { d = JSON.parse(text); } catch { return false; }
    const e = jobs.get(id);
    if (!e) return false;
    if (type === "progress") {
      e.job.progress = d;
      e.bar.dataset.live = String((Number(e.bar.dataset.live) || 0) + 1); // figures the stream brought
      paintBar(e, d, e.job.status);
      if (selected === id) paintDetailMeta(e.job);
    } else if (type === "reopened") {
      // A retry sent items back: the next figure may be lower, and that is right.
      e.reopen = true;
      e.bar.dataset.reopened = String((Number(e.bar.dataset.reopened) || 0) + (Number(d.items) || 0));
    } else if (type === "status" && d.status) {
      e.job.status = d.status;
      paintJob(e);
      if (TERMINAL.has(d.status)) {
        // The final figures (and cost) come from the job itself.
        getJson(jobPath(id)).then((j) => { upsert(j); if (selected === id) openDetail(id); }).catch(() => {});
        chartSoon();
        return true;
      }
    }
    return false;
  }

  // ---- one job: results by post, thumbnails, cost ------------------------------------
  let selected = null;
  let detailCtl = null;
  let objectUrls = [];
  let postsCursor = null;
  const thumbs = new IntersectionObserver((entries) => {
    for (const en of entries) {
      if (en.isIntersecting) {
        thumbs.unobserve(en.target);
        loadThumb(en.target);
      }
    }
  }, { rootMargin: "200px" });

  function select(id) {
    location.hash = "job=" + id;
  }
  function fromHash() {
    const m = /^#job=([0-9a-fA-F-]{36})$/.exec(location.hash);
    if (m) openDetail(m[1].toLowerCase());
    else closeDetail();
  }
  window.addEventListener("hashchange", fromHash);
  $("detail-close").addEventListener("click", () => {
    history.replaceState(null, "", location.pathname + location.search);
    closeDetail();
  });

  function closeDetail() {
    if (detailCtl) detailCtl.abort();
    detailCtl = null;
    objectUrls.forEach((u) => URL.revokeObjectURL(u));
    objectUrls = [];
    thumbs.disconnect();
    selected = null;
    $("detail").hidden = true;
    $("posts").replaceChildren();
    $("detail-cost").replaceChildren();
    for (const e of jobs.values()) e.tr.classList.remove("selected");
  }
  async function openDetail(id) {
    closeDetail();
    selected = id;
    const ctl = (detailCtl = new AbortController());
    for (const e of jobs.values()) e.tr.classList.toggle("selected", e.job.id === id);
    $("detail").hidden = false;
    $("detail").dataset.jobId = id;
    $("detail-title").textContent = jobs.get(id) ? jobs.get(id).job.name || "(unnamed)" : id;
    $("detail-meta").textContent = "loading…";
    try {
      const job = await getJson(jobPath(id), ctl.signal);
      if (ctl.signal.aborted) return;
      $("detail-title").textContent = job.name || "(unnamed)";
      paintDetailMeta(job);
      const [cost] = await Promise.all([
        getJson(jobPath(id, "/cost"), ctl.signal),
        loadPosts(id, null, ctl),
      ]);
      if (!ctl.signal.aborted) paintCost(cost);
    } catch (err) {
      if (!ctl.signal.aborted && !(err instanceof Unauthorized)) {
        $("detail-meta").textContent = "Could not load this job: " + err.message;
      }
    }
  }
  function paintDetailMeta(job) {
    const p = job.progress || {};
    const parts = [job.status, job.mode, job.model, "created " + when(job.created_at)];
    if (job.completed_at) parts.push("finished " + when(job.completed_at));
    parts.push(`${p.total || 0} images: ${p.succeeded || 0} succeeded, ${p.failed || 0} failed, ${p.rejected || 0} rejected`);
    $("detail-meta").textContent = parts.filter(Boolean).join("  ·  ");
    if (job.mode_reason) $("detail-meta").title = job.mode_reason;
  }
  function paintCost(c) {
    const fig = (label, value, cls) => el("div", { class: "fig " + (cls || "") }, el("span", {}, label), el("b", {}, value));
    const pct = Number(c.savings_percent) || 0;
    $("detail-cost").replaceChildren(
      fig("cost", usd(c.actual_usd), "actual"),
      fig("as individual calls", usd(c.individual_usd), "individual"),
      fig("saved", `${usd(c.savings_usd)} (${pct.toFixed(0)}%)`, "save"),
      fig("estimate", usd(c.estimate_usd)),
      fig("per image", usd(c.per_image_usd)),
      c.tokens ? fig("tokens in / out", `${c.tokens.input || 0} / ${c.tokens.output || 0}`) : null,
    );
    $("detail-cost").dataset.actual = String(c.actual_usd);
    $("detail-cost").dataset.individual = String(c.individual_usd);
  }
  async function loadPosts(id, cursor, ctl) {
    const q = `?limit=${POSTS_PAGE}` + (cursor ? `&cursor=${encodeURIComponent(cursor)}` : "");
    const page = await getJson(jobPath(id, "/posts" + q), ctl.signal);
    if (ctl.signal.aborted) return;
    for (const post of page.data || []) $("posts").append(postBlock(id, post));
    if (!(page.data || []).length && !cursor) $("posts").append(el("p", { class: "muted" }, "No results yet."));
    postsCursor = page.next_cursor || null;
    $("posts-more").hidden = !postsCursor;
  }
  $("posts-more").addEventListener("click", () => {
    if (selected && postsCursor && detailCtl) loadPosts(selected, postsCursor, detailCtl).catch(() => {});
  });
  function postBlock(jobId, post) {
    const items = post.items || [];
    return el("div", { class: "post", dataset: { postId: post.post_id === null ? "" : String(post.post_id) } },
      el("h3", {}, post.post_id === null ? "(no post)" : "post " + post.post_id,
        el("span", { class: "muted" }, `  ·  ${items.length} image${items.length === 1 ? "" : "s"}`)),
      el("div", { class: "items" }, items.map((r) => resultCard(jobId, r))));
  }
  function resultCard(jobId, r) {
    const thumb = el("div", { class: "thumb", dataset: { src: jobPath(jobId, `/results/${encodeURIComponent(r.custom_id)}/image`) } },
      el("span", { class: "ph" }, "image"));
    thumbs.observe(thumb);
    const out = r.output && typeof r.output === "object" && !Array.isArray(r.output)
      ? el("dl", {}, Object.entries(r.output).map(([k, v]) => [el("dt", {}, k), el("dd", {}, fieldText(v))]))
      : r.output !== null && r.output !== undefined ? el("dl", {}, el("dt", {}, "output"), el("dd", {}, fieldText(r.output))) : null;
    const err = r.error ? el("div", { class: "err" }, [r.error.code, r.error.message].filter(Boolean).join(": ")) : null;
    const reused = r.reused_from ? el("div", { class: "muted" }, "reused from " + r.reused_from.custom_id) : null;
    return el("div", { class: "item", dataset: { customId: String(r.custom_id), status: String(r.status) } },
      thumb,
      el("div", {},
        el("div", { class: "id", title: String(r.custom_id) }, r.custom_id,
          el("span", { class: "status " + r.status }, r.status),
          r.cost_usd ? el("span", { class: "usd" }, usd(r.cost_usd)) : null),
        out, err, reused));
  }
  // <img> cannot send the Bearer header: fetch the bytes with it and show an object URL.
  async function loadThumb(box) {
    const ctl = detailCtl;
    if (!ctl) return;
    const placeholder = (text) => box.replaceChildren(el("span", { class: "ph" }, text));
    try {
      const r = await api(box.dataset.src, { signal: ctl.signal });
      const type = r.headers.get("content-type") || "";
      if (!r.ok || !type.startsWith("image/")) {
        placeholder(r.status === 404 ? "no stored image" : "image unavailable");
        return;
      }
      const url = URL.createObjectURL(await r.blob());
      if (ctl.signal.aborted) { URL.revokeObjectURL(url); return; }
      objectUrls.push(url);
      const img = el("img", { loading: "lazy", alt: "", src: url });
      img.addEventListener("error", () => placeholder("not displayable"));
      box.replaceChildren(img);
    } catch (err) {
      if (!ctl.signal.aborted) placeholder("image unavailable");
    }
  }

  // ---- spend and savings chart: one /v1/costs request per day, four at a time --------
  let chartAt = 0;
  let chartTimer = null;
  function chartSoon() {
    if (chartTimer) return;
    const wait = Math.max(0, chartAt + CHART_MIN_GAP_MS - Date.now());
    chartTimer = setTimeout(() => { chartTimer = null; loadChart().catch(() => {}); }, wait);
  }
  async function loadChart() {
    chartAt = Date.now();
    const now = new Date();
    const today = Date.UTC(now.getUTCFullYear(), now.getUTCMonth(), now.getUTCDate());
    const days = [];
    for (let i = CHART_DAYS - 1; i >= 0; i--) days.push(new Date(today - i * 86400000));
    const rows = new Array(days.length);
    let next = 0;
    const worker = async () => {
      while (next < days.length) {
        const i = next++;
        const to = new Date(days[i].getTime() + 86400000);
        rows[i] = await getJson(`/v1/costs?from=${iso(days[i])}&to=${iso(to)}`);
      }
    };
    try {
      await Promise.all([worker(), worker(), worker(), worker()]);
    } catch (err) {
      if (!(err instanceof Unauthorized)) {
        $("chart").replaceChildren(el("p", { class: "muted" }, "Could not load spend: " + err.message));
      }
      return;
    }
    drawChart(days, rows);
  }
  function drawChart(days, rows) {
    const W = 1000, H = 200, L = 64, R = 8, T = 10, B = 22;
    const spend = rows.map((r) => Number(r.actual_usd) || 0);
    const saved = rows.map((r) => Math.max(0, Number(r.savings_usd) || 0));
    const max = Math.max(...spend, ...saved, 0);
    const top = max > 0 ? max * 1.1 : 1;
    const y = (v) => T + (H - T - B) * (1 - v / top);
    const slot = (W - L - R) / days.length;
    const bw = Math.max(2, slot * 0.36);
    const g = svg("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": "spend and savings per day" });
    for (const v of max > 0 ? [0, top / 2, top] : [0]) {
      g.append(svg("line", { class: "axis", x1: L, x2: W - R, y1: y(v), y2: y(v) }));
      g.append(svg("text", { x: L - 6, y: y(v) + 3, "text-anchor": "end" }, document.createTextNode(usd(v))));
    }
    days.forEach((d, i) => {
      const x = L + i * slot + (slot - 2 * bw) / 2;
      const label = `${iso(d).slice(0, 10)}: spent ${usd(spend[i])}, saved ${usd(saved[i])} ` +
        `(${rows[i].jobs || 0} jobs, ${rows[i].images || 0} images)`;
      const day = svg("g", { class: "day", dataset: { day: iso(d).slice(0, 10), spend: spend[i], saved: saved[i] } },
        svg("title", {}, document.createTextNode(label)),
        svg("rect", { class: "spend", x, y: y(spend[i]), width: bw, height: Math.max(0, y(0) - y(spend[i])) }),
        svg("rect", { class: "save", x: x + bw, y: y(saved[i]), width: bw, height: Math.max(0, y(0) - y(saved[i])) }));
      g.append(day);
      if (i % 5 === 4 || i === days.length - 1) {
        g.append(svg("text", { x: L + i * slot + slot / 2, y: H - 6, "text-anchor": "middle" },
          document.createTextNode(iso(d).slice(5, 10))));
      }
    });
    if (max === 0) {
      g.append(svg("text", { x: (W + L) / 2, y: H / 2, "text-anchor": "middle" }, document.createTextNode("no spend in the last 30 days")));
    }
    $("chart").replaceChildren(g);
    $("chart").dataset.state = "ready";
    const sum = (k) => rows.reduce((a, r) => a + (Number(r[k]) || 0), 0);
    const ind = sum("individual_usd");
    const pct = ind > 0 ? (sum("savings_usd") / ind) * 100 : 0;
    $("chart-totals").replaceChildren(
      `${CHART_DAYS} days: `, el("b", {}, String(sum("jobs"))), " jobs, ", el("b", {}, String(sum("images"))), " images, spent ",
      el("b", {}, usd(sum("actual_usd"))), " instead of ", el("b", {}, usd(ind)), " as individual calls: saved ",
      el("b", {}, `${usd(sum("savings_usd"))} (${pct.toFixed(0)}%)`));
  }

  // ---- start ------------------------------------------------------------------------
  function stopAll() {
    epoch++;
    for (const ctl of streams.values()) ctl.abort();
    streams.clear();
    closeDetail();
  }
  function start() {
    stopAll();
    const mine = epoch;
    $("key-form").hidden = true;
    $("main").hidden = false;
    $("forget-key").hidden = !sessionStorage.getItem(KEY);
    listLoop(mine);
    loadChart().catch(() => {});
    fromHash();
  }
  start();
})();

// laion-hf explorer: search, browse, filter and export a subset served by `laion-hf serve`.
// Talks to clip back's API (/knn-service, /metadata, /indices-list, /config.json) and to the
// page's own routes (/image, /export, /overview). Captions and URLs are untrusted web text:
// they only ever reach the DOM through textContent / properties, never as HTML.
"use strict";

(function () {
  const PAGE = 40;            // rows that get metadata per request (num_images / one /metadata call)
  const SERVICE_PUNSAFE = 0.5; // the service's own safety threshold (clip back's)
  const SCORE_COLUMNS = ["punsafe", "pwatermark", "aesthetic", "clip_similarity"];
  const SKIP_COLUMNS = new Set(["image", "id", "similarity"]);
  const $ = (id) => document.getElementById(id);
  const el = {
    form: $("search-form"), q: $("q"), file: $("file"), index: $("index"), modality: $("modality"),
    safe: $("safe"), punsafe: $("punsafe"), dedup: $("dedup"), aesthetic: $("aesthetic"),
    aestheticScore: $("aesthetic-score"), aestheticWeight: $("aesthetic-weight"), minSim: $("min-sim"),
    lang: $("lang"), num: $("num"), languages: $("languages"), grid: $("grid"), status: $("status"),
    info: $("query-info"), notices: $("notices"), sentinel: $("sentinel"), drop: $("drop-overlay"),
    tabResults: $("tab-results"), tabOverview: $("tab-overview"), resultsView: $("results-view"),
    overviewView: $("overview-view"), exportLabel: $("export-label"),
  };

  // ---- state -------------------------------------------------------------------------------
  // query: {kind: "text"|"image_url"|"similar"|"image", value, label}
  const state = {
    query: null, results: [], next: 0, loading: false, generation: 0, t0: 0, painted: false, serverNotice: "",
  };

  const settingsFields = [
    // [url parameter, element, kind, server-side?]
    ["index", el.index, "value", true], ["modality", el.modality, "value", true],
    ["safe", el.safe, "check", true], ["punsafe", el.punsafe, "value", true],
    ["dedup", el.dedup, "check", true], ["aes", el.aesthetic, "check", true],
    ["aes_score", el.aestheticScore, "value", true], ["aes_weight", el.aestheticWeight, "value", true],
    ["min_sim", el.minSim, "value", false], ["lang", el.lang, "value", false], ["num", el.num, "value", true],
  ];

  function num(input, fallback) {
    const v = parseFloat(input.value);
    return Number.isFinite(v) ? v : fallback;
  }

  // ---- shareable URLs ----------------------------------------------------------------------
  function writeUrl(push) {
    const p = new URLSearchParams();
    const q = state.query;
    if (q && q.kind !== "image") p.set(q.kind === "text" ? "q" : q.kind, q.value);
    for (const [name, input, kind] of settingsFields) {
      const v = kind === "check" ? (input.checked ? "1" : "0") : input.value;
      if (v !== "" && v !== input.dataset.default) p.set(name, v);
    }
    if (!el.overviewView.hidden) p.set("view", "overview");
    const url = "?" + p.toString();
    if (url !== location.search) history[push ? "pushState" : "replaceState"](null, "", url || "/");
  }

  function readUrl() {
    const p = new URLSearchParams(location.search);
    for (const [name, input, kind] of settingsFields) {
      const v = p.get(name);
      const value = v === null ? input.dataset.default : v;
      if (kind === "check") input.checked = value === "1";
      else if (input.tagName !== "SELECT" || [...input.options].some((o) => o.value === value)) input.value = value;
    }
    showView(p.get("view") === "overview" ? "overview" : "results", false);
    for (const kind of ["q", "image_url", "similar"]) {
      if (p.get(kind)) return { kind: kind === "q" ? "text" : kind, value: p.get(kind) };
    }
    return null;
  }

  // ---- server calls -------------------------------------------------------------------------
  async function postJson(path, body) {
    const resp = await fetch(path, {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
    });
    if (!resp.ok) throw new Error(`${path}: ${resp.status} ${(await resp.text()).slice(0, 300)}`);
    return resp;
  }

  function knnBody(query) {
    const body = {
      modality: el.modality.value, indice_name: el.index.value || null,
      num_images: PAGE, num_result_ids: Math.max(PAGE, Math.round(num(el.num, 200))),
      // the service drops punsafe > 0.5 (and names the filter when it cannot apply it); a looser
      // threshold is applied here only
      deduplicate: el.dedup.checked, use_violence_detector: false,
      use_safety_model: el.safe.checked && num(el.punsafe, SERVICE_PUNSAFE) <= SERVICE_PUNSAFE,
      use_mclip: false,
    };
    if (el.aesthetic.checked) {
      body.aesthetic_score = String(Math.round(num(el.aestheticScore, 9)));
      body.aesthetic_weight = num(el.aestheticWeight, 0.5);
    }
    if (query.kind === "text") body.text = query.value;
    else if (query.kind === "image_url") body.image_url = query.value;
    else body.image = query.value;   // "image" and "similar" send base64 bytes
    return body;
  }

  function imageSrc(row) {
    if (typeof row.image === "string" && row.image) return "data:" + sniff(row.image) + ";base64," + row.image;
    return `/image/${encodeURIComponent(el.index.value)}/${encodeURIComponent(row.id)}`;
  }

  function sniff(b64) {
    if (b64.startsWith("iVBOR")) return "image/png";
    if (b64.startsWith("UklGR")) return "image/webp";
    if (b64.startsWith("R0lGOD")) return "image/gif";
    return "image/jpeg";
  }

  async function imageBase64(id) {
    const row = state.results.find((r) => String(r.id) === String(id));
    if (row && typeof row.image === "string" && row.image) return row.image;
    const resp = await fetch(`/image/${encodeURIComponent(el.index.value)}/${encodeURIComponent(id)}`);
    if (!resp.ok) throw new Error(`the image of row ${id} is not in this subset (${resp.status})`);
    return blobToBase64(await resp.blob());
  }

  function blobToBase64(blob) {
    return new Promise((resolve, reject) => {
      const reader = new FileReader();
      reader.onload = () => resolve(String(reader.result).split(",", 2)[1] || "");
      reader.onerror = () => reject(reader.error);
      reader.readAsDataURL(blob);
    });
  }

  // ---- search ------------------------------------------------------------------------------
  async function search(query, push) {
    const gen = ++state.generation;
    state.query = query;
    state.results = [];
    state.next = 0;
    state.painted = false;
    state.t0 = performance.now();
    el.grid.replaceChildren();
    el.grid.removeAttribute("data-paint-ms");
    el.notices.textContent = "";
    if (query) showView("results", false);
    writeUrl(push);
    if (!query) { setStatus(""); el.info.textContent = ""; return; }
    el.info.textContent = describe(query);
    setStatus("Searching…");
    document.body.classList.add("busy");
    try {
      let body;
      if (query.kind === "similar") body = knnBody({ kind: "image", value: await imageBase64(query.value) });
      else body = knnBody(query);
      const resp = await postJson("/knn-service", body);
      const rows = await resp.json();
      if (gen !== state.generation) return;
      showNotices(resp.headers);
      state.results = Array.isArray(rows) ? rows : [];
      state.next = Math.min(PAGE, state.results.length);
      render();
      setStatus(state.results.length ? "" : "No results.");
      el.grid.setAttribute("data-query-kind", body.text !== undefined ? "text" : "image");
      fillViewport();
    } catch (err) {
      if (gen === state.generation) setStatus("Search failed: " + err.message, true);
    } finally {
      if (gen === state.generation) document.body.classList.remove("busy");
    }
  }

  function describe(query) {
    if (query.kind === "text") return `Text: “${query.value}”`;
    if (query.kind === "image_url") return `Image at ${query.value} (fetched by the server)`;
    if (query.kind === "similar") return `Images similar to row ${query.value}`;
    return `Uploaded image${query.label ? " " + query.label : ""} (not kept in the link)`;
  }

  function showNotices(headers) {
    // the service names each filter that was asked for but is unavailable (never ignored silently)
    const unavailable = headers.get("X-Unavailable-Filters");
    state.serverNotice = unavailable ? "Not applied: " + unavailable : "";
    el.notices.textContent = state.serverNotice;
  }

  function setStatus(text, error) {
    el.status.textContent = text;
    el.status.classList.toggle("error", Boolean(error));
  }

  // ---- infinite scroll through /metadata -----------------------------------------------------
  async function loadMore() {
    if (state.loading || state.next >= state.results.length) return;
    state.loading = true;
    const gen = state.generation;
    const batch = state.results.slice(state.next, state.next + PAGE);
    setStatus("Loading more…");
    try {
      const resp = await postJson("/metadata", { ids: batch.map((r) => r.id), indice_name: el.index.value || null });
      const answer = await resp.json();
      if (gen !== state.generation) return;
      const byId = new Map(answer.map((a) => [String(a.id), a.metadata || {}]));
      for (const row of batch) Object.assign(row, byId.get(String(row.id)) || {}, { id: row.id, similarity: row.similarity });
      state.next += batch.length;
      render(true);
      setStatus("");
    } catch (err) {
      if (gen === state.generation) setStatus("Loading more failed: " + err.message, true);
    } finally {
      state.loading = false;
    }
    if (gen === state.generation) fillViewport();
  }

  function fillViewport() {
    const rect = el.sentinel.getBoundingClientRect();
    if (rect.top < window.innerHeight + 400) loadMore();
  }

  // ---- filtering and rendering -------------------------------------------------------------
  function hiddenReason(row) {
    if (el.safe.checked && typeof row.punsafe === "number" && row.punsafe > num(el.punsafe, 0.5)) return "safe";
    if (typeof row.similarity === "number" && row.similarity < num(el.minSim, -1)) return "similarity";
    const lang = el.lang.value.trim().toLowerCase();
    if (lang && String(row.language || "").toLowerCase() !== lang) return "language";
    return null;
  }

  function shownRows() {
    return state.results.slice(0, state.next).filter((r) => !hiddenReason(r));
  }

  function render(append) {
    const loaded = state.results.slice(0, state.next);
    const hidden = { safe: 0, similarity: 0, language: 0 };
    const frag = document.createDocumentFragment();
    const existing = append ? new Set([...el.grid.children].map((li) => li.dataset.id)) : null;
    if (!append) el.grid.replaceChildren();
    const langs = new Set();
    loaded.forEach((row, rank) => {
      if (row.language) langs.add(String(row.language));
      const why = hiddenReason(row);
      if (why) { hidden[why] += 1; return; }
      if (existing && existing.has(String(row.id))) return;
      frag.appendChild(card(row, rank));
    });
    el.grid.appendChild(frag);
    updateLanguages(langs);
    const shown = el.grid.children.length;
    const parts = [`${shown} shown of ${loaded.length} loaded (${state.results.length} found)`];
    if (hidden.safe) parts.push(`${hidden.safe} hidden by safe mode`);
    if (hidden.similarity) parts.push(`${hidden.similarity} below the minimum similarity`);
    if (hidden.language) parts.push(`${hidden.language} in other languages`);
    el.grid.dataset.summary = parts.join(", ");
    el.grid.dataset.loaded = String(loaded.length);
    el.grid.dataset.found = String(state.results.length);
    el.exportLabel.textContent = `Export ${shown} shown rows:`;
    const unscored = el.safe.checked && loaded.length && !loaded.some((r) => typeof r.punsafe === "number");
    el.notices.textContent = [state.serverNotice, unscored ? "Safe mode: these rows have no punsafe score" : ""]
      .filter(Boolean).join(" · ");
    const base = state.query ? describe(state.query) : "";
    el.info.textContent = base + (base ? " — " : "") + parts.join(", ");
    if (!state.painted && state.results.length) {
      state.painted = true;
      const t0 = state.t0;
      requestAnimationFrame(() => requestAnimationFrame(() => {
        el.grid.setAttribute("data-paint-ms", String(Math.round(performance.now() - t0)));
      }));
    }
  }

  function updateLanguages(langs) {
    const have = new Set([...el.languages.options].map((o) => o.value));
    for (const lang of langs) {
      if (have.has(lang)) continue;
      const opt = document.createElement("option");
      opt.value = lang;
      el.languages.appendChild(opt);
    }
  }

  function text(tag, className, value) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    node.textContent = value == null ? "" : String(value);
    return node;
  }

  function fmt(v) {
    return typeof v === "number" ? (Math.abs(v) >= 10 ? v.toFixed(1) : v.toFixed(3)) : String(v);
  }

  function card(row, rank) {
    const li = document.createElement("li");
    li.className = "card";
    li.tabIndex = 0;
    li.dataset.id = String(row.id);
    li.dataset.rank = String(rank);
    li.dataset.similarity = String(row.similarity);
    if (typeof row.punsafe === "number") li.dataset.punsafe = String(row.punsafe);
    const caption = row.caption == null ? "" : String(row.caption);
    li.setAttribute("aria-label", `Result ${rank + 1}: ${caption.slice(0, 120)}`);

    const thumb = document.createElement("div");
    thumb.className = "thumb";
    const img = document.createElement("img");
    img.alt = caption;
    img.loading = "lazy";
    img.decoding = "async";
    img.addEventListener("error", () => {
      li.classList.add("broken");
      img.remove();
      thumb.appendChild(text("span", "broken-label", "image unavailable"));
    });
    img.src = imageSrc(row);
    thumb.appendChild(img);
    li.appendChild(thumb);

    const cap = text("p", "caption", caption);
    cap.title = caption;
    cap.addEventListener("click", () => li.classList.toggle("open"));
    li.appendChild(cap);

    const dl = document.createElement("dl");
    dl.className = "scores";
    const add = (name, value) => {
      dl.appendChild(text("dt", "", name));
      dl.appendChild(text("dd", "score-" + name, fmt(value)));
    };
    add("similarity", row.similarity);
    for (const name of SCORE_COLUMNS) if (row[name] != null) add(name, row[name]);
    li.appendChild(dl);

    li.appendChild(urlNode(row.url));
    const key = row.key != null ? row.key : row.__key__;
    li.appendChild(text("p", "key", key != null ? "key " + key : "row " + row.id));
    li.appendChild(details(row));

    const similar = text("button", "similar", "Similar");
    similar.type = "button";
    similar.title = "Search for images similar to this one (s)";
    similar.addEventListener("click", () => search({ kind: "similar", value: String(row.id) }, true));
    li.appendChild(similar);
    return li;
  }

  function urlNode(url) {
    const value = url == null ? "" : String(url);
    let safe = false;
    try { safe = ["http:", "https:"].includes(new URL(value).protocol); } catch (e) { safe = false; }
    const node = text(safe ? "a" : "p", "url", value);
    if (safe) {
      node.href = value;
      node.rel = "noopener noreferrer nofollow";
      node.target = "_blank";
      node.tabIndex = -1;
    }
    node.title = value;
    return node;
  }

  function details(row) {
    const dl = document.createElement("dl");
    dl.className = "details";
    for (const [name, value] of Object.entries(row)) {
      if (SKIP_COLUMNS.has(name) || value == null || typeof value === "object") continue;
      dl.appendChild(text("dt", "", name));
      dl.appendChild(text("dd", "", typeof value === "number" ? fmt(value) : value));
    }
    return dl;
  }

  // ---- export --------------------------------------------------------------------------------
  async function exportRows(format) {
    const rows = shownRows();
    if (!rows.length) { setStatus("Nothing to export: run a search first.", true); return; }
    try {
      const resp = await postJson("/export", {
        indice_name: el.index.value || null, format,
        ids: rows.map((r) => r.id), similarities: rows.map((r) => r.similarity),
      });
      const blob = await resp.blob();
      const disposition = resp.headers.get("Content-Disposition") || "";
      const match = /filename="?([^";]+)"?/.exec(disposition);
      const a = document.createElement("a");
      a.href = URL.createObjectURL(blob);
      a.download = match ? match[1] : "laion-hf-export";
      document.body.appendChild(a);
      a.click();
      a.remove();
      setTimeout(() => URL.revokeObjectURL(a.href), 10000);
      setStatus(`Exported ${rows.length} rows as ${format}.`);
    } catch (err) {
      setStatus("Export failed: " + err.message, true);
    }
  }

  // ---- overview ------------------------------------------------------------------------------
  async function loadOverview() {
    const counts = $("overview-counts");
    const charts = $("overview-charts");
    counts.replaceChildren();
    charts.replaceChildren(text("p", "status", "Loading…"));
    try {
      const resp = await fetch("/overview?indice_name=" + encodeURIComponent(el.index.value || ""));
      if (!resp.ok) throw new Error(`${resp.status} ${(await resp.text()).slice(0, 300)}`);
      const data = await resp.json();
      $("overview-title").textContent = "Overview of " + (data.name || "the subset");
      for (const [label, value] of data.counts || []) {
        counts.appendChild(text("dt", "", label));
        counts.appendChild(text("dd", "", typeof value === "number" ? value.toLocaleString("en") : value));
      }
      charts.replaceChildren();
      for (const [name, h] of Object.entries(data.histograms || {})) charts.appendChild(histogram(name, h));
      if (data.languages && Object.keys(data.languages).length) charts.appendChild(languageList(data.languages));
    } catch (err) {
      charts.replaceChildren(text("p", "status error", "Overview failed: " + err.message));
    }
  }

  function histogram(name, h) {
    const NS = "http://www.w3.org/2000/svg";
    const W = 300, H = 120;
    const fig = document.createElement("figure");
    fig.className = "chart";
    const total = h.counts.reduce((a, b) => a + b, 0);
    const svg = document.createElementNS(NS, "svg");
    svg.setAttribute("viewBox", `0 0 ${W} ${H + 16}`);
    svg.setAttribute("role", "img");
    svg.setAttribute("aria-label", `histogram of ${name}: ${total} rows`);
    const max = Math.max(1, ...h.counts);
    const bw = W / h.counts.length;
    h.counts.forEach((c, i) => {
      const r = document.createElementNS(NS, "rect");
      const bh = (c / max) * H;
      r.setAttribute("x", String(i * bw + 0.5));
      r.setAttribute("y", String(H - bh));
      r.setAttribute("width", String(Math.max(0.5, bw - 1)));
      r.setAttribute("height", String(bh));
      const t = document.createElementNS(NS, "title");
      t.textContent = `${fmt(h.edges[i])}–${fmt(h.edges[i + 1])}: ${c}`;
      r.appendChild(t);
      svg.appendChild(r);
    });
    for (const [x, v, anchor] of [[0, h.edges[0], "start"], [W, h.edges[h.edges.length - 1], "end"]]) {
      const t = document.createElementNS(NS, "text");
      t.setAttribute("x", String(x));
      t.setAttribute("y", String(H + 13));
      t.setAttribute("text-anchor", anchor);
      t.textContent = fmt(v);
      svg.appendChild(t);
    }
    fig.appendChild(svg);
    const mids = h.counts.map((_, i) => (h.edges[i] + h.edges[i + 1]) / 2);
    const mean = total ? h.counts.reduce((a, c, i) => a + c * mids[i], 0) / total : null;
    const extra = (mean === null ? "" : `, mean ≈ ${fmt(mean)}`) + (h.nulls ? `, ${h.nulls} null` : "");
    fig.appendChild(text("figcaption", "", `${name} (n=${total.toLocaleString("en")}${extra})`));
    return fig;
  }

  function languageList(languages) {
    const fig = document.createElement("figure");
    fig.className = "chart";
    const ol = document.createElement("ol");
    ol.className = "languages";
    for (const [lang, n] of Object.entries(languages).slice(0, 12)) ol.appendChild(text("li", "", `${lang}: ${n}`));
    fig.appendChild(ol);
    fig.appendChild(text("figcaption", "", "languages"));
    return fig;
  }

  function showView(view, write) {
    const overview = view === "overview";
    el.overviewView.hidden = !overview;
    el.resultsView.hidden = overview;
    el.tabOverview.setAttribute("aria-pressed", String(overview));
    el.tabResults.setAttribute("aria-pressed", String(!overview));
    if (overview) loadOverview();
    if (write) writeUrl(true);
  }

  // ---- input: text, URL, files, drag and drop, paste -------------------------------------------
  function submitQuery() {
    const value = el.q.value.trim();
    if (!value) return;
    const kind = /^https?:\/\/\S+$/i.test(value) ? "image_url" : "text";
    search({ kind, value }, true);
  }

  async function searchFile(file) {
    if (!file || !/^image\//.test(file.type)) { setStatus("That is not an image file.", true); return; }
    search({ kind: "image", value: await blobToBase64(file), label: file.name }, true);
  }

  function wireInputs() {
    el.form.addEventListener("submit", (e) => { e.preventDefault(); submitQuery(); });
    el.file.addEventListener("change", () => searchFile(el.file.files[0]));
    $("upload-label").addEventListener("keydown", (e) => {
      if (e.key === "Enter" || e.key === " ") { e.preventDefault(); el.file.click(); }
    });
    $("upload-label").tabIndex = 0;
    let depth = 0;
    document.addEventListener("dragenter", (e) => { e.preventDefault(); depth += 1; el.drop.hidden = false; });
    document.addEventListener("dragleave", () => { depth -= 1; if (depth <= 0) { depth = 0; el.drop.hidden = true; } });
    document.addEventListener("dragover", (e) => e.preventDefault());
    document.addEventListener("drop", (e) => {
      e.preventDefault();
      depth = 0;
      el.drop.hidden = true;
      const file = e.dataTransfer.files[0];
      if (file) { searchFile(file); return; }
      const url = (e.dataTransfer.getData("text/uri-list") || e.dataTransfer.getData("text/plain")).trim();
      if (/^https?:\/\//i.test(url)) search({ kind: "image_url", value: url }, true);
    });
    document.addEventListener("paste", (e) => {
      const file = [...(e.clipboardData ? e.clipboardData.files : [])].find((f) => /^image\//.test(f.type));
      if (file) { e.preventDefault(); searchFile(file); }
    });
    const rerun = () => { if (state.query) search(state.query, false); else writeUrl(false); };
    const refilter = () => { render(); writeUrl(false); fillViewport(); };
    for (const [, input, , server] of settingsFields) input.addEventListener("change", server ? rerun : refilter);
    el.index.addEventListener("change", () => { if (!el.overviewView.hidden) loadOverview(); });
    for (const b of document.querySelectorAll(".export-button")) {
      b.addEventListener("click", () => exportRows(b.dataset.format));
    }
    el.tabResults.addEventListener("click", () => showView("results", true));
    el.tabOverview.addEventListener("click", () => showView("overview", true));
    window.addEventListener("popstate", () => search(readUrl(), false).then(() => fillFromQuery()));
    window.addEventListener("scroll", fillViewport, { passive: true });
    if ("IntersectionObserver" in window) {
      new IntersectionObserver((entries) => { if (entries.some((e) => e.isIntersecting)) loadMore(); },
        { rootMargin: "400px" }).observe(el.sentinel);
    }
  }

  function fillFromQuery() {
    const q = state.query;
    el.q.value = q && (q.kind === "text" || q.kind === "image_url") ? q.value : "";
  }

  // ---- keyboard ------------------------------------------------------------------------------
  function gridMove(from, key) {
    const cards = [...el.grid.children];
    const i = cards.indexOf(from);
    if (i < 0) return;
    const top = cards[0].offsetTop;
    const perRow = Math.max(1, cards.findIndex((c) => c.offsetTop !== top) === -1 ? cards.length
      : cards.findIndex((c) => c.offsetTop !== top));
    const step = { ArrowLeft: -1, ArrowRight: 1, ArrowUp: -perRow, ArrowDown: perRow, Home: -i, End: cards.length }[key];
    const target = cards[Math.min(cards.length - 1, Math.max(0, i + step))];
    target.focus();
    target.scrollIntoView({ block: "nearest" });
  }

  function wireKeys() {
    document.addEventListener("keydown", (e) => {
      const inField = /^(INPUT|SELECT|TEXTAREA)$/.test(e.target.tagName);
      if (e.key === "/" && !inField) { e.preventDefault(); el.q.focus(); el.q.select(); return; }
      if (e.key === "Escape") { el.q.focus(); return; }
      if (inField && e.key === "ArrowDown" && e.target === el.q && el.grid.firstElementChild) {
        e.preventDefault();
        el.grid.firstElementChild.focus();
        return;
      }
      const cardEl = e.target.closest && e.target.closest(".card");
      if (!cardEl || e.target.tagName === "BUTTON" || e.target.tagName === "A") return;
      if (["ArrowLeft", "ArrowRight", "ArrowUp", "ArrowDown", "Home", "End"].includes(e.key)) {
        e.preventDefault();
        gridMove(cardEl, e.key);
      } else if (e.key === "Enter" || e.key === " ") {
        e.preventDefault();
        cardEl.classList.toggle("open");
      } else if (e.key === "s") {
        search({ kind: "similar", value: cardEl.dataset.id }, true);
      }
    });
  }

  // ---- start ---------------------------------------------------------------------------------
  async function loadIndices() {
    let config = {};
    try { config = await (await fetch("/config.json")).json(); } catch (e) { config = {}; }
    let names = [];
    try { names = await (await fetch("/indices-list")).json(); } catch (e) { names = []; }
    if (!Array.isArray(names)) names = [];
    for (const name of names) {
      const opt = document.createElement("option");
      opt.value = opt.textContent = String(name);
      el.index.appendChild(opt);
    }
    if (config.defaultIndex && names.includes(config.defaultIndex)) el.index.value = config.defaultIndex;
    el.index.disabled = names.length < 2;
  }

  async function start() {
    if (window.matchMedia("(max-width: 600px)").matches) $("settings").open = false;
    await loadIndices();
    for (const [, input, kind] of settingsFields) {
      input.dataset.default = kind === "check" ? (input.checked ? "1" : "0") : input.value;
    }
    wireInputs();
    wireKeys();
    const query = readUrl();
    await search(query, false);
    fillFromQuery();
    document.body.dataset.ready = "1";
  }

  start();
})();

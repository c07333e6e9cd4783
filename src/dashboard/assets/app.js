// quic-peer node dashboard: renders the node's live state (sent by the node
// over server-sent events) and lets the user fetch and store files.
// Plain browser JavaScript, no dependencies, works offline.
'use strict';

/* ---------- Formatting helpers ---------- */

const $ = (id) => document.getElementById(id);

// Ids are 52 characters: show the first 8 and an ellipsis.
const shortId = (id) => (!id ? '?' : id.length > 8 ? id.slice(0, 8) + '…' : id);

// Up to three significant digits, trailing zeros dropped: 1.5, 12.3, 512.
function fmtNum(v) {
  const d = v >= 100 ? 0 : v >= 10 ? 1 : 2;
  return String(Number(v.toFixed(d)));
}

const UNITS = ['B', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB'];
function unitFor(bytes) {
  let i = 0;
  while (bytes >= 1024 && i < UNITS.length - 1) { bytes /= 1024; i++; }
  return i;
}

function humanBytes(n) {
  if (n == null || !isFinite(n)) return '–';
  const i = unitFor(n);
  return fmtNum(n / Math.pow(1024, i)) + ' ' + UNITS[i];
}

const humanRate = (n) => humanBytes(n) + '/s';

function fmtDuration(s) {
  if (s > 0 && s < 10 && s % 1) return s.toFixed(1) + 's';
  s = Math.max(0, Math.floor(s || 0));
  const d = Math.floor(s / 86400), h = Math.floor(s / 3600) % 24;
  const m = Math.floor(s / 60) % 60, sec = s % 60;
  return d ? d + 'd ' + h + 'h' : h ? h + 'h ' + m + 'm' : m ? m + 'm ' + sec + 's' : sec + 's';
}

// Sets an element's text only when it changed (keeps the DOM quiet).
function setText(node, text) {
  text = String(text);
  if (node.textContent !== text) node.textContent = text;
}

function make(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text != null) e.textContent = text;
  return e;
}

// Fills a usage bar (a .bar with one <span>) and returns the fraction.
function setBar(bar, used, quota) {
  const f = quota > 0 ? Math.min(1, used / quota) : 0;
  bar.firstElementChild.style.width = (f * 100).toFixed(1) + '%';
  bar.dataset.level = f > 0.9 ? 'high' : f > 0.7 ? 'mid' : 'low';
  bar.setAttribute('aria-valuenow', Math.round(f * 100));
  return f;
}

/* ---------- Token: from ?token=… once, then from sessionStorage ---------- */

const TOKEN_KEY = 'quic-peer-token';

function readToken() {
  const params = new URLSearchParams(location.search);
  let token = params.get('token');
  if (token) {
    try { sessionStorage.setItem(TOKEN_KEY, token); } catch (e) { /* storage off */ }
    params.delete('token');
    const q = params.toString();
    history.replaceState(null, '', location.pathname + (q ? '?' + q : '') + location.hash);
  } else {
    try { token = sessionStorage.getItem(TOKEN_KEY); } catch (e) { token = null; }
  }
  return token || '';
}

const token = readToken();

const withToken = (url) =>
  (token ? url + (url.includes('?') ? '&' : '?') + 'token=' + encodeURIComponent(token) : url);
const authHeaders = (extra) => Object.assign({}, extra, token ? { Authorization: 'Bearer ' + token } : {});

/* ---------- Keyed list syncing: update rows in place by data-id ---------- */

// Makes `parent`'s children match `items` in order, reusing the element whose
// dataset[keyName] equals key(item). create(item) builds a new element,
// update(el, item) refreshes it. Repeated keys are matched in order.
function syncChildren(parent, items, keyName, key, create, update) {
  const old = new Map();  // key -> elements with that key, in order
  for (const el of Array.from(parent.children)) {
    const k = el.dataset[keyName];
    if (!old.has(k)) old.set(k, []);
    old.get(k).push(el);
  }
  let cursor = parent.firstElementChild;
  for (const item of items) {
    const k = String(key(item));
    let el = old.has(k) ? old.get(k).shift() : undefined;
    if (!el) { el = create(item); el.dataset[keyName] = k; }
    update(el, item);
    if (el !== cursor) parent.insertBefore(el, cursor);
    else cursor = cursor.nextElementSibling;
  }
  for (const els of old.values()) els.forEach((el) => el.remove());
}

// A row for `table` with one empty cell per column. Each cell takes its
// header's class and title (data-label, shown on narrow screens).
function makeRow(table) {
  const tr = document.createElement('tr');
  for (const th of table.tHead.rows[0].cells) {
    const td = make('td', th.className);
    td.dataset.label = th.textContent;
    tr.appendChild(td);
  }
  return tr;
}

const showEmpty = (id, isEmpty) => { $(id).hidden = !isEmpty; };

/* ---------- Header: node facts, store bar, read-only banner ---------- */

function renderHeader(s) {
  const n = s.node || {};
  const idEl = $('node-id');
  setText(idEl, shortId(n.id));
  idEl.title = n.id || '';
  setText($('node-addr'), n.addr || 'no address');
  setText($('node-role'), (n.role || '?') + (n.private ? ' (private network)' : ''));
  setText($('node-uptime'), fmtDuration(n.uptime_s));
  setText($('node-version'), 'quic-peer ' + (n.version || ''));
  document.title = 'quic-peer ' + shortId(n.id);
  const st = s.store;
  $('head-store-bar').hidden = !st;
  const f = st ? setBar($('head-store-bar'), st.used, st.quota) : 0;
  setText($('head-store-text'), !st ? 'stores nothing (client)'
    : humanBytes(st.used) + ' of ' + humanBytes(st.quota) + ' (' + Math.round(f * 100) + '%)');
}

/* ---------- Peer table ---------- */

const STATE_TEXT = {
  outbound: 'connected (we dialed)', inbound: 'connected (they dialed)', known: 'known, not connected',
};
const peerOrder = (p) => (p.state === 'known' ? 1 : 0);  // connected peers first

function renderPeers(s) {
  const peers = (s.peers || []).slice().sort((a, b) => peerOrder(a) - peerOrder(b) || a.id.localeCompare(b.id));
  syncChildren($('peers').tBodies[0], peers, 'id', (p) => p.id, () => makeRow($('peers')), updatePeerRow);
  showEmpty('peers-empty', peers.length === 0);
}

function updatePeerRow(tr, p) {
  const c = tr.cells;
  setText(c[0], shortId(p.id));
  c[0].title = p.id;
  setText(c[1], p.addr || '–');
  setText(c[2], (STATE_TEXT[p.state] || p.state) + (p.role === 'client' ? ', client' : ''));
  tr.dataset.state = p.state;
  setText(c[3], p.rtt_ms == null ? '–' : p.rtt_ms.toFixed(p.rtt_ms < 10 ? 2 : 1));
  setText(c[4], humanBytes(p.bytes_in));
  setText(c[5], humanBytes(p.bytes_out));
  if (!c[6].firstChild) c[6].appendChild(make('span', 'badge'));
  const badge = c[6].firstChild;
  setText(badge, p.score);
  badge.dataset.score = p.score;
  tr.title = p.last_seen_s == null ? '' : 'last seen ' + fmtDuration(p.last_seen_s) + ' ago';
}

/* ---------- Transfers ---------- */

const KIND_TEXT = { get: 'fetch', put: 'store' };

function renderTransfers(s) {
  const list = (s.transfers || []).slice().sort((a, b) => b.id - a.id);  // newest first
  syncChildren($('transfers'), list, 'transfer', (t) => t.id, createTransfer, updateTransfer);
  showEmpty('transfers-empty', list.length === 0);
}

function createTransfer() {
  const div = make('div', 'transfer');
  div.innerHTML = '<div class="transfer-head"><span class="kind"></span><span class="name"></span>' +
    '<span class="state"></span></div><progress></progress><div class="transfer-meta">' +
    '<span class="pct"></span><span class="amount"></span><span class="speed"></span></div>' +
    '<div class="transfer-end"></div>';
  return div;
}

function updateTransfer(div, t) {
  div.dataset.state = t.state;
  const q = (sel) => div.querySelector(sel);
  setText(q('.kind'), KIND_TEXT[t.kind] || t.kind);
  setText(q('.name'), t.name || '(unnamed)');
  q('.name').title = t.name || '';
  setText(q('.state'), t.state);
  const bar = q('progress');
  const total = t.total > 0 ? t.total : 0;
  if (total) { bar.max = total; bar.value = Math.min(t.done, total); }
  else if (t.state === 'running') bar.removeAttribute('value');  // size not known yet
  else { bar.max = 1; bar.value = t.state === 'done' ? 1 : 0; }
  const pct = total ? Math.floor((100 * t.done) / total) : t.state === 'done' ? 100 : 0;
  setText(q('.pct'), pct + '%');
  setText(q('.amount'), humanBytes(t.done) + (total ? ' of ' + humanBytes(total) : ''));
  const speed = t.state === 'running' ? humanRate(t.bytes_per_s || 0)
    : 'avg ' + humanRate(t.elapsed_s > 0 ? t.done / t.elapsed_s : 0) + ' in ' + fmtDuration(t.elapsed_s);
  setText(q('.speed'), speed);
  updateTransferEnd(q('.transfer-end'), t);
}

// The last line of a transfer: download link when done, error when failed.
function updateTransferEnd(end, t) {
  const link = t.state === 'done' && t.download, failed = t.state === 'failed';
  const want = link ? 'link:' + t.download : failed ? 'error:' + (t.error || 'failed') : '';
  if (end.dataset.shown === want) return;
  end.dataset.shown = want;
  end.textContent = '';
  // download="" saves the file under the name the node gives it.
  if (link) end.appendChild(Object.assign(make('a', 'download', 'Download'), { href: withToken(t.download), download: '' }));
  else if (failed) end.appendChild(make('span', 'error-text', t.error || 'failed'));
}

/* ---------- Files held ---------- */

function renderStore(s) {
  const store = s.store;
  $('store-bar').hidden = $('files-wrap').hidden = !store;
  if (!store) {
    setText($('store-text'), 'This node stores nothing (client)');
    setText($('files-more'), '');
    showEmpty('files-empty', false);
    return;
  }
  const f = setBar($('store-bar'), store.used, store.quota);
  setText($('store-text'), humanBytes(store.used) + ' used of ' + humanBytes(store.quota) + ' quota (' + Math.round(f * 100) + '%)');
  const files = (store.files || []).slice().sort((a, b) => (a.name || '').localeCompare(b.name || ''));
  syncChildren($('files').tBodies[0], files, 'id', (f) => f.id, () => makeRow($('files')), updateFileRow);
  showEmpty('files-empty', files.length === 0);
  setText($('files-more'), store.more_files > 0 ? 'and ' + store.more_files + ' more files not listed here' : '');
}

function updateFileRow(tr, f) {
  const c = tr.cells;
  setText(c[0], f.name || shortId(f.id));
  c[0].title = 'id ' + f.id;
  setText(c[1], humanBytes(f.size));
  setText(c[2], f.is_dir ? 'folder' : 'file');
  setText(c[3], f.copies);
  const holders = f.holders || [];
  setText(c[4], holders.length ? holders.map(shortId).join(', ') : '–');
  c[4].title = holders.join('\n');
  setText(c[5], f.complete ? 'yes' : 'partial');
  c[5].dataset.ok = f.complete ? 'yes' : 'no';
}

/* ---------- DHT buckets ---------- */

const BUCKET_K = 20;  // contacts a full bucket holds (bar scale)

function renderDht(s) {
  const box = $('dht'), dht = s.dht || { size: 0, buckets: [] };
  const buckets = (dht.buckets || []).filter((b) => b.contacts && b.contacts.length)
    .sort((a, b) => b.index - a.index);
  const sig = JSON.stringify(dht);
  if (box.dataset.sig === sig) return;
  box.dataset.sig = sig;
  box.textContent = '';
  box.appendChild(make('p', 'dht-size', dht.size + ' contact' + (dht.size === 1 ? '' : 's') +
    ' in ' + buckets.length + ' bucket' + (buckets.length === 1 ? '' : 's') +
    '. Higher bucket numbers hold peers whose ids are further from ours.'));
  for (const b of buckets) box.appendChild(bucketRow(b));
}

function bucketRow(b) {
  const row = make('div', 'bucket'), bar = make('span', 'bucket-bar'), fill = make('span');
  row.dataset.index = b.index;
  fill.style.width = Math.min(100, (100 * b.contacts.length) / BUCKET_K) + '%';
  bar.appendChild(fill);
  const ids = make('span', 'bucket-ids', b.contacts.map((c) => shortId(c.id)).join(' '));
  ids.title = b.contacts.map((c) => c.id + (c.addr ? ' ' + c.addr : '')).join('\n');
  row.append(make('span', 'bucket-index', '#' + b.index), bar,
    make('span', 'bucket-count', String(b.contacts.length)), ids);
  return row;
}

/* ---------- Events ---------- */

const MAX_EVENTS = 200;
function renderEvents(s) {
  const list = (s.events || []).slice().sort((a, b) => b.t - a.t).slice(0, MAX_EVENTS);  // newest first
  syncChildren($('events'), list, 'key', (e) => e.t + '|' + e.kind + '|' + e.text, (e) => {
    const li = make('li');
    li.dataset.kind = e.kind;
    const time = make('time', null, new Date(e.t).toLocaleTimeString());
    time.dateTime = new Date(e.t).toISOString();
    li.append(time, make('span', 'ev-kind', e.kind), make('span', 'ev-text', e.text));
    return li;
  }, () => {});
  showEmpty('events-empty', list.length === 0);
}

/* ---------- Network graph: small force-directed layout in SVG ---------- */

const SVG_NS = 'http://www.w3.org/2000/svg';
const RADIUS = { self: 12, connected: 9, known: 6 };
const KIND_LABEL = { self: 'this node', connected: 'connected peer', known: 'known, not connected' };
const graph = {
  nodes: new Map(), links: new Map(),  // id -> {id, kind, x, y, vx, vy, el}; "a|b" -> {source, target, el}
  alpha: 1,                            // "temperature": forces fade as it cools
  w: 600, h: 320, running: false,
  addrs: new Map(), tipId: null,       // id -> address, for the tooltip
};

function svgEl(tag, attrs) {
  const e = document.createElementNS(SVG_NS, tag);
  for (const k in attrs) e.setAttribute(k, attrs[k]);
  return e;
}

// Applies a new {nodes, links} set; nodes already drawn keep their place.
function renderGraph(s) {
  collectAddresses(s);
  const g = s.graph || {};
  const layer = $('graph').querySelector('.nodes');
  let changed = false;
  const seen = new Set();
  for (const n of g.nodes || []) {
    seen.add(n.id);
    let gn = graph.nodes.get(n.id);
    if (!gn) { gn = addGraphNode(n, g.links || []); layer.appendChild(gn.el); changed = true; }
    if (gn.kind !== n.kind) { setNodeKind(gn, n.kind); changed = true; }
  }
  for (const [id, gn] of graph.nodes) {
    if (seen.has(id)) continue;
    gn.el.setAttribute('class', 'gone');  // no longer a .node: fades out, then goes
    gn.el.removeAttribute('data-id');
    setTimeout(() => gn.el.remove(), 400);
    graph.nodes.delete(id);
    changed = true;
  }
  if (syncLinks(g.links || []) || changed) reheat(0.8);
  if (graph.tipId) showTip(graph.tipId);
}

// Adds and removes <line>s; returns whether anything changed.
function syncLinks(links) {
  const layer = $('graph').querySelector('.links'), seen = new Set();
  let changed = false;
  for (const l of links) {
    const k = l.source + '|' + l.target;
    if (!graph.nodes.has(l.source) || !graph.nodes.has(l.target) || seen.has(k)) continue;
    seen.add(k);
    if (graph.links.has(k)) continue;
    const el = svgEl('line', { class: 'link', 'data-source': l.source, 'data-target': l.target });
    layer.appendChild(el);
    graph.links.set(k, { source: l.source, target: l.target, el });
    changed = true;
  }
  for (const [k, l] of graph.links) {
    if (!seen.has(k)) { l.el.remove(); graph.links.delete(k); changed = true; }
  }
  return changed;
}

function collectAddresses(s) {
  graph.addrs.clear();
  for (const b of (s.dht && s.dht.buckets) || []) {
    for (const c of b.contacts || []) if (c.addr) graph.addrs.set(c.id, c.addr);
  }
  for (const p of s.peers || []) if (p.addr) graph.addrs.set(p.id, p.addr);
  if (s.node && s.node.id) graph.addrs.set(s.node.id, s.node.addr);
}

// A new node starts next to a neighbour already placed, or near the centre.
function addGraphNode(n, links) {
  let x = graph.w / 2, y = graph.h / 2;
  for (const l of links) {
    const near = graph.nodes.get(l.source === n.id ? l.target : l.target === n.id ? l.source : '');
    if (near) { x = near.x; y = near.y; break; }
  }
  const a = Math.random() * 2 * Math.PI, r = n.kind === 'self' ? 0 : 30 + Math.random() * 30;
  const el = svgEl('g', { class: 'node', 'data-id': n.id });  // fades in (CSS)
  el.append(svgEl('circle', { r: 6 }), svgEl('text', { dy: -14 }), svgEl('title', {}));
  const gn = { id: n.id, kind: null, x: x + r * Math.cos(a), y: y + r * Math.sin(a), vx: 0, vy: 0, el };
  graph.nodes.set(n.id, gn);
  setNodeKind(gn, n.kind);
  return gn;
}

function setNodeKind(gn, kind) {
  gn.kind = gn.el.dataset.kind = kind;
  gn.el.querySelector('circle').setAttribute('r', RADIUS[kind] || 6);
  gn.el.querySelector('text').textContent = kind === 'self' ? 'this node' : shortId(gn.id);
  gn.el.querySelector('title').textContent = gn.id;
}

function reheat(a) {
  graph.alpha = Math.max(graph.alpha, a);
  if (!graph.running) { graph.running = true; requestAnimationFrame(stepGraph); }
}

// One simulation step: repulsion, springs, centering, then integrate.
function tickForces() {
  const ns = Array.from(graph.nodes.values());
  const a = graph.alpha, span = Math.min(graph.w, graph.h), pull = 0.03;
  // Repulsion is scaled by the node count so the cloud keeps about the
  // same radius (span / 2) however many nodes there are.
  const charge = (pull * Math.pow(span / 2, 2)) / Math.max(ns.length, 1);
  const springLen = span * 0.3;
  for (let i = 0; i < ns.length; i++) {
    for (let j = i + 1; j < ns.length; j++) {
      const p = ns[i], q = ns[j];
      let dx = p.x - q.x, dy = p.y - q.y;
      if (dx === 0 && dy === 0) { dx = Math.random() - 0.5; dy = Math.random() - 0.5; }
      const f = (charge * a) / Math.max(dx * dx + dy * dy, 100);
      p.vx += dx * f; p.vy += dy * f; q.vx -= dx * f; q.vy -= dy * f;
    }
  }
  for (const l of graph.links.values()) {
    const p = graph.nodes.get(l.source), q = graph.nodes.get(l.target);
    const dx = q.x - p.x, dy = q.y - p.y, d = Math.sqrt(dx * dx + dy * dy) || 1;
    const f = ((d - springLen) / d) * 0.05 * a;
    p.vx += dx * f; p.vy += dy * f; q.vx -= dx * f; q.vy -= dy * f;
  }
  for (const n of ns) {
    if (n.id === graph.tipId) { n.vx = n.vy = 0; continue; }  // hold still while inspected
    // Weaker pull along the longer side: the cloud fills a wide box.
    const k = (n.kind === 'self' ? 0.1 : pull) * a;
    n.vx = (n.vx + (graph.w / 2 - n.x) * k * Math.pow(span / graph.w, 2)) * 0.6;
    n.vy = (n.vy + (graph.h / 2 - n.y) * k * Math.pow(span / graph.h, 2)) * 0.6;
    n.x = Math.min(graph.w - 40, Math.max(40, n.x + n.vx));  // room for labels
    n.y = Math.min(graph.h - 10, Math.max(24, n.y + n.vy));
  }
}

function drawGraph() {
  const f = (v) => v.toFixed(1);
  for (const n of graph.nodes.values()) n.el.setAttribute('transform', 'translate(' + f(n.x) + ',' + f(n.y) + ')');
  for (const l of graph.links.values()) {
    const p = graph.nodes.get(l.source), q = graph.nodes.get(l.target);
    for (const [k, v] of [['x1', p.x], ['y1', p.y], ['x2', q.x], ['y2', q.y]]) l.el.setAttribute(k, f(v));
  }
  if (graph.tipId) placeTip();
}

function stepGraph() {
  tickForces();
  drawGraph();
  graph.alpha *= 0.985;
  if (graph.alpha > 0.01) requestAnimationFrame(stepGraph);
  else graph.running = false;
}

function resizeGraph() {
  const svg = $('graph');
  const w = svg.clientWidth || 600, h = svg.clientHeight || 320;
  if (w === graph.w && h === graph.h) return;
  // Scale positions so the picture keeps its shape in the new box.
  for (const n of graph.nodes.values()) { n.x *= w / graph.w; n.y *= h / graph.h; }
  graph.w = w; graph.h = h;
  svg.setAttribute('viewBox', '0 0 ' + w + ' ' + h);
  reheat(0.3);
}

// Tooltip with the full id and address: hover with a mouse, tap on phones.
function showTip(id) {
  const gn = graph.nodes.get(id), tip = $('graph-tip');
  if (!gn) { hideTip(); return; }
  graph.tipId = id;
  tip.textContent = '';
  tip.append(make('strong', null, KIND_LABEL[gn.kind] || gn.kind), make('code', null, id),
    make('span', null, 'address: ' + (graph.addrs.get(id) || 'unknown')));
  tip.hidden = false;
  placeTip();
}

// Keeps the tooltip beside its node, inside the picture.
function placeTip() {
  const gn = graph.nodes.get(graph.tipId), tip = $('graph-tip');
  if (!gn) return;
  const left = Math.min(gn.x - tip.offsetWidth / 2, graph.w - tip.offsetWidth - 4);
  tip.style.left = Math.max(4, left) + 'px';
  tip.style.top = (gn.y > graph.h / 2 ? gn.y - tip.offsetHeight - 16 : gn.y + 16) + 'px';
}

function hideTip() {
  graph.tipId = null;
  $('graph-tip').hidden = true;
}

function setupGraph() {
  const svg = $('graph');
  const nodeOf = (e) => e.target.closest && e.target.closest('.node');
  svg.addEventListener('pointerover', (e) => { const n = nodeOf(e); if (n) showTip(n.dataset.id); });
  svg.addEventListener('pointerout', (e) => { if (nodeOf(e) && e.pointerType === 'mouse') hideTip(); });
  svg.addEventListener('click', (e) => { const n = nodeOf(e); if (n) showTip(n.dataset.id); else hideTip(); });
  new ResizeObserver(resizeGraph).observe(svg);
  resizeGraph();
}

/* ---------- Throughput chart (canvas) ---------- */

let lastThroughput = null;

function renderThroughput(s) {
  lastThroughput = s.throughput || { interval_s: 1, in: [], out: [] };
  const last = (arr) => (arr && arr.length ? arr[arr.length - 1] : 0);
  setText($('rate-in'), humanRate(last(lastThroughput.in)));
  setText($('rate-out'), humanRate(last(lastThroughput.out)));
  drawChart();
}

// A round top for the y axis, in the unit of the largest value.
function niceScale(max) {
  const u = unitFor(Math.max(max, 1)), unit = Math.pow(1024, u);
  const top = [1, 2, 4, 8, 10, 20, 40, 80, 100, 200, 400, 800, 1024].find((v) => v >= max / unit) || 1024;
  return { top: top * unit, unit, name: UNITS[u] };
}

const cssVar = (name) => getComputedStyle(document.documentElement).getPropertyValue(name).trim();

// Sized to its box in CSS pixels, times devicePixelRatio for sharp lines.
function drawChart() {
  const canvas = $('throughput'), tp = lastThroughput;
  const dpr = window.devicePixelRatio || 1;
  const w = canvas.parentElement.clientWidth, h = canvas.parentElement.clientHeight;
  if (!tp || !w || !h) return;
  if (canvas.width !== Math.round(w * dpr)) canvas.width = Math.round(w * dpr);
  if (canvas.height !== Math.round(h * dpr)) canvas.height = Math.round(h * dpr);
  const ctx = canvas.getContext('2d');
  ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  ctx.clearRect(0, 0, w, h);
  const ins = tp.in || [], outs = tp.out || [];
  const n = Math.max(ins.length, outs.length);
  const scale = niceScale(Math.max(0, ...ins, ...outs));
  const box = { l: 64, r: w - 8, t: 8, b: h - 22 };
  drawAxes(ctx, box, scale, n, tp.interval_s || 1);
  drawSeries(ctx, box, ins, n, scale.top, cssVar('--in'));
  drawSeries(ctx, box, outs, n, scale.top, cssVar('--out'));
}

function drawAxes(ctx, box, scale, n, interval) {
  Object.assign(ctx, { font: '11px system-ui, sans-serif', fillStyle: cssVar('--muted'),
    strokeStyle: cssVar('--grid'), lineWidth: 1, textAlign: 'right', textBaseline: 'middle' });
  for (let i = 0; i <= 4; i++) {
    const y = Math.round(box.b - ((box.b - box.t) * i) / 4) + 0.5;
    ctx.beginPath(); ctx.moveTo(box.l, y); ctx.lineTo(box.r, y); ctx.stroke();
    const v = (scale.top / scale.unit) * (i / 4);
    ctx.fillText(v ? fmtNum(v) + ' ' + scale.name + '/s' : '0', box.l - 6, y);
  }
  const span = Math.max(0, (n - 1) * interval);  // seconds shown
  const label = (text, x, align) => { ctx.textAlign = align; ctx.fillText(text, x, box.b + 6); };
  ctx.textBaseline = 'top';
  if (span) label('-' + fmtDuration(span), box.l, 'left');
  if (span >= 4) label('-' + fmtDuration(span / 2), (box.l + box.r) / 2, 'center');
  label('now', box.r, 'right');
}

// Series are oldest first and end at "now" on the right edge.
function drawSeries(ctx, box, data, n, top, color) {
  if (!data.length) return;
  const dx = n > 1 ? (box.r - box.l) / (n - 1) : 0, off = n - data.length;
  ctx.beginPath();
  data.forEach((v, i) => {
    const y = box.b - ((box.b - box.t) * Math.min(v, top)) / top;
    ctx[i ? 'lineTo' : 'moveTo'](box.l + (i + off) * dx, y);
  });
  Object.assign(ctx, { strokeStyle: color, lineWidth: 2, lineJoin: 'round' });
  ctx.stroke();
}

function setupChart() {
  new ResizeObserver(drawChart).observe($('throughput').parentElement);
  window.addEventListener('resize', drawChart);  // zoom changes devicePixelRatio
}

/* ---------- Rendering a whole state ---------- */

// Each section renders on its own, so one bad field doesn't blank the page.
const SECTIONS = [renderHeader, renderGraph, renderPeers, renderTransfers,
  renderThroughput, renderStore, renderDht, renderEvents];

function render(s) {
  for (const section of SECTIONS) {
    try { section(s); } catch (e) { console.error('dashboard: ' + section.name, e); }
  }
}

/* ---------- Live connection: one GET, then server-sent events ---------- */

function setConn(state, text) {
  $('conn').dataset.state = state;
  setText($('conn'), text);
}

function connect() {
  fetch('/api/state', { headers: authHeaders(), cache: 'no-store' })
    .then((r) => (r.ok ? r.json() : null))
    .then((s) => { if (s) render(s); })
    .catch(() => {});
  openEvents();
}

function openEvents() {
  const es = new EventSource('/api/events' + (token ? '?token=' + encodeURIComponent(token) : ''));
  es.addEventListener('open', () => setConn('live', 'live'));
  es.addEventListener('state', (e) => {
    setConn('live', 'live');
    try { render(JSON.parse(e.data)); } catch (err) { console.error('bad state', err); }
  });
  es.addEventListener('error', () => {
    setConn('down', 'disconnected, retrying…');
    // EventSource retries by itself, except after an HTTP error status.
    if (es.readyState === EventSource.CLOSED) setTimeout(openEvents, 3000);
  });
}

/* ---------- Actions: fetch and store ---------- */

function showError(text) {
  $('action-error').textContent = text;
  $('action-error').hidden = !text;
}

// POSTs with the token; a non-2xx answer throws the server's {"error": …}.
async function post(url, headers, body) {
  let res;
  try {
    res = await fetch(url, { method: 'POST', headers: authHeaders(headers), body });
  } catch (e) {
    throw new Error('Could not reach the node: ' + e.message);
  }
  let data = {};
  try { data = await res.json(); } catch (e) { /* empty or not JSON */ }
  if (!res.ok) throw new Error(data.error || 'The node answered ' + res.status + ' ' + res.statusText);
  return data;
}

// Disables the button while `job` runs and shows what went wrong.
async function busy(button, label, job) {
  const old = button.textContent;
  button.disabled = true;
  button.textContent = label;
  showError('');
  try { await job(); } catch (e) { showError(e.message); }
  finally { button.disabled = false; button.textContent = old; }
}

function onGet(ev) {
  ev.preventDefault();
  const target = $('get-target').value.trim(), key = $('get-key').value.trim(), out = $('get-result');
  out.hidden = true;
  if (!target) { showError('Enter a file id or a ticket to fetch.'); return; }
  busy($('get-button'), 'Starting…', async () => {
    const r = await post('/api/get', { 'Content-Type': 'application/json' },
      JSON.stringify({ target, key: key || null }));
    out.textContent = 'Fetch started (transfer ' + r.transfer + '). Follow it under Transfers; ' +
      'a Download link appears when it is done.';
    out.hidden = false;
  });
}

function onPut(ev) {
  ev.preventDefault();
  const file = $('put-file').files[0], out = $('put-result');
  const replicas = Math.max(1, parseInt($('put-replicas').value, 10) || 1);
  if (!file) { showError('Choose a file to store.'); return; }
  out.hidden = true;
  busy($('put-button'), 'Storing…', async () => {
    const r = await post('/api/put?name=' + encodeURIComponent(file.name) + '&replicas=' + replicas +
      '&public=' + $('put-public').checked, {}, file);
    out.textContent = '';
    out.append(make('p', r.copies >= r.wanted ? 'ok' : 'warn',
      'Stored ' + file.name + ' with ' + r.copies + ' of ' + r.wanted + ' copies.'),
      copyLine('Ticket (share this to let others fetch it):', 'ticket', r.ticket),
      copyLine('File id:', 'id', r.id));
    out.hidden = false;
  });
}

function copyLine(label, cls, value) {
  const wrap = make('div', 'copy-line'), btn = make('button', 'copy', 'Copy');
  btn.type = 'button';
  btn.addEventListener('click', () => copyText(value || '', btn));
  wrap.append(make('span', 'copy-label', label), make('code', cls, value || ''), btn);
  return wrap;
}

// The clipboard API needs a secure context; else copy from a hidden textarea.
async function copyText(text, btn) {
  let ok = true;
  try { await navigator.clipboard.writeText(text); } catch (e) {
    const ta = make('textarea');
    ta.value = text;
    ta.style.cssText = 'position:fixed;opacity:0';
    document.body.appendChild(ta);
    ta.select();
    try { ok = document.execCommand('copy'); } catch (e2) { ok = false; }
    ta.remove();
  }
  btn.textContent = ok ? 'Copied' : 'Select and copy';
  setTimeout(() => { btn.textContent = 'Copy'; }, 1500);
}

/* ---------- Start ---------- */

function start() {
  $('readonly').hidden = Boolean(token);
  $('get-form').addEventListener('submit', onGet);
  $('put-form').addEventListener('submit', onPut);
  setupGraph();
  setupChart();
  connect();
}

start();

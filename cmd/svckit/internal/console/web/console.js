// svckit console: draws GET /api/state, kept up to date by the "state"
// events of GET /api/events (body[data-connection]: connecting, live,
// reconnecting, or token: the reading was refused for want of the
// operator's token). Plain JavaScript, nothing loaded from
// elsewhere. Every figure carries a stable id or data-* attribute, so
// that a test can read the page from the DOM:
//   #banner[data-stale|data-consul-down|data-nsqd-down]
//   #node-service-<name>, #node-topic-<topic>, #node-channel-<topic>-<channel>
//     (in #pipeline-svg; data-health, data-depth, data-in-flight, data-rate)
//   #stream-<stream>[data-stream, data-owner, data-owner-up, data-last-seq,
//     data-retained-first, data-retained-last, data-publish-rate]
//   #consumer-<consumer>-<stream>[data-consumer, data-stream, data-up,
//     data-position, data-lag-messages, data-lag-seconds, data-gaps, data-snapshots]
//   #lag-<consumer>-<stream>[data-lag-messages, data-lag-seconds, data-lag-estimated]
//   #spark-<consumer>-<stream>[data-points], #replay-<consumer>-<stream>
//   #dl-<topic>[data-deadletter-topic, data-count, data-nsqd, data-local]
//     letters: [data-letter-id, data-stored]; previews: code.preview
//   buttons [data-requeue-topic, data-requeue-id]; #requeue-status[data-result]
//   with --trace-url: #trace-<stream>[href, data-seq] (a reading's trace),
//     #trace-seq-<stream> (its sequence; empty: the stream's last)
'use strict';
(function () {
  const SVGNS = document.getElementById('pipeline-svg').namespaceURI;
  const TOKEN_KEY = 'svckit-console-operator-token';
  const STALE_MS = 3000;        // no event for this long: the connection is stale
  const NOT_NEW_MS = 5000;      // the same state for this long: the collection is stuck
  let lastEventAt = 0;
  let lastGenerated = '';
  let generatedChangedAt = 0;
  let current = null;
  const rendered = {}; // section → the JSON it was last drawn from
  let traceURL = '';   // --trace-url: {id} is a reading's <stream>/<seq>

  // --- small helpers ---------------------------------------------------
  function el(tag, attrs, ...children) {
    const e = document.createElement(tag);
    setAttrs(e, attrs);
    for (const c of children) {
      if (c === null || c === undefined || c === false) continue;
      e.append(c instanceof Node ? c : String(c));
    }
    return e;
  }
  function sv(tag, attrs, ...children) {
    const e = document.createElementNS(SVGNS, tag);
    setAttrs(e, attrs);
    for (const c of children) e.append(c instanceof Node ? c : String(c));
    return e;
  }
  function setAttrs(e, attrs) {
    for (const [k, v] of Object.entries(attrs || {})) {
      // A data attribute says false too (data-up="false" styles a down
      // consumer); other attributes are left out when false.
      if (v === null || v === undefined || (v === false && !k.startsWith('data'))) continue;
      if (k === 'class') e.setAttribute('class', v);
      else if (k.startsWith('data')) e.setAttribute(k.replace(/[A-Z]/g, m => '-' + m.toLowerCase()), String(v));
      else e.setAttribute(k, String(v));
    }
  }
  // One formatter: toLocaleString makes one per call, which at a few
  // numbers per row for a thousand rows a second was most of the page's
  // drawing time.
  const numberFormat = new Intl.NumberFormat('en-US');
  const int = n => (n === undefined || n === null) ? '–' : numberFormat.format(Number(n));
  const rate = r => (r || 0).toFixed(r >= 100 ? 0 : 1) + '/s';
  const secs = s => !s ? '0 s' : s < 10 ? s.toFixed(1) + ' s' : s < 120 ? Math.round(s) + ' s' : Math.round(s / 60) + ' min';
  function ago(iso) {
    if (!iso) return '';
    const d = (Date.now() - Date.parse(iso)) / 1000;
    return d < 1 ? 'just now' : secs(d) + ' ago';
  }
  // A topic no answering nsqd reported while one is down: its numbers
  // are unknown, not zero.
  const unknownTopic = t => t.stale && t.in_nsqd === 0;
  const ranges = rs => (rs || []).map(r => r[0] === r[1] ? String(r[0]) : r[0] + '–' + r[1]).join(', ');
  function changed(section, value) {
    const key = JSON.stringify(value);
    if (rendered[section] === key) return false;
    rendered[section] = key;
    return true;
  }

  // --- the operator's token: in sessionStorage, sent in the -------------
  // Authorization header by the state's reading (where the console needs
  // it: a datacenter's) and by requeue; never a cookie or a query string.
  const tokenInput = document.getElementById('operator-token');
  tokenInput.value = sessionStorage.getItem(TOKEN_KEY) || '';
  const token = () => tokenInput.value || sessionStorage.getItem(TOKEN_KEY) || '';
  tokenInput.addEventListener('change', () => {
    if (tokenInput.value) sessionStorage.setItem(TOKEN_KEY, tokenInput.value);
    else sessionStorage.removeItem(TOKEN_KEY);
    // A reading refused for want of the token tries again with it.
    if (document.body.dataset.connection === 'token') reconnect();
  });
  document.getElementById('operator-token-forget').addEventListener('click', () => {
    tokenInput.value = '';
    sessionStorage.removeItem(TOKEN_KEY);
    // A reading made with the token ends with it (one that needs none,
    // --open-read, goes on).
    if (document.body.dataset.connection === 'live') reconnect();
  });

  // --- the connection --------------------------------------------------
  function setConnection(s, text) {
    const c = document.getElementById('connection');
    c.dataset.connection = s;
    document.body.dataset.connection = s;
    c.textContent = text;
  }
  function onState(data) {
    let st;
    try { st = JSON.parse(data); } catch (e) { return; }
    lastEventAt = Date.now();
    if (st.generated_at !== lastGenerated) {
      lastGenerated = st.generated_at;
      generatedChangedAt = lastEventAt;
      recordLag(st);
    }
    current = st;
    setConnection('live', 'live');
    // A hidden tab only keeps the history; it draws when shown again.
    if (!document.hidden) safeRender(st);
  }
  // A drawing error must not end the reading of the events: it is
  // thrown on its own, where the browser reports it.
  function safeRender(st) {
    try { render(st); } catch (e) { setTimeout(() => { throw e; }); }
  }
  // "alive": the console has nothing newer than what it sent last (the
  // state is not sent twice).
  function onAlive() {
    lastEventAt = Date.now();
    setConnection('live', 'live');
  }
  document.addEventListener('visibilitychange', () => { if (!document.hidden && current) safeRender(current); });

  // --- lag history: kept by the page --------------------------------
  // The state carries each consumer's lag now; the page keeps the last
  // HISTORY_MS of it, one point per state, and starts from the console's
  // downsampled history (GET api/lag-history, one point per 10 s, the
  // highest lag of each 10 s) when it connects.
  const HISTORY_MS = 5 * 60 * 1000;
  const lagHistory = new Map(); // consumer key → [[unix ms, lag messages, lag seconds], …]
  // A stage's row is its service's; a tracker's its instance's. The maps'
  // key keeps the three apart whatever the names hold ('a-b' + 'c' is not
  // 'a' + 'b-c'); the elements' ids (#consumer-…, #lag-…, #spark-…) are
  // readable ones, for the DOM's readers.
  const consumerKey = (kind, consumer, stream) => JSON.stringify([kind || 'tracker', consumer, stream]);
  const domKey = (kind, consumer, stream) => (kind === 'stage' ? 'stage-' : '') + consumer + '-' + stream;
  function recordLag(st) {
    const t = Date.parse(st.generated_at), cut = t - HISTORY_MS;
    const seen = new Set();
    for (const s of st.streams) {
      for (const c of s.consumers) {
        const key = consumerKey(c.kind, c.consumer, s.stream);
        seen.add(key);
        let h = lagHistory.get(key);
        if (!h) lagHistory.set(key, h = []);
        h.push([t, c.lag_messages, c.lag_seconds]);
        let i = 0;
        while (i < h.length && h[i][0] < cut) i++;
        if (i) h.splice(0, i);
      }
    }
    for (const key of lagHistory.keys()) if (!seen.has(key)) lagHistory.delete(key);
  }
  async function loadLagHistory(headers) {
    try {
      const resp = await fetch('api/lag-history', { headers, cache: 'no-store' });
      if (!resp.ok) return;
      const doc = await resp.json();
      for (const c of doc.consumers || []) {
        const key = consumerKey(c.kind, c.consumer, c.stream);
        const h = lagHistory.get(key) || [];
        const first = h.length ? h[0][0] : Infinity;
        const older = (c.points || []).filter(p => p[0] < first);
        lagHistory.set(key, older.concat(h));
      }
      sparkDrawn.clear();
      if (current && !document.hidden) safeRender(current);
    } catch (e) { /* the live points still come */ }
  }
  // The events are read with fetch rather than EventSource, which cannot
  // send an Authorization header. One reading at a time: a new one (the
  // token changed) aborts the old.
  let reading = null;
  let retry = null;
  function reconnect() {
    if (reading) reading.abort();
    clearTimeout(retry);
    connect();
  }
  async function connect() {
    const ctl = new AbortController();
    reading = ctl;
    const headers = { 'Accept': 'text/event-stream' };
    if (token()) headers['Authorization'] = 'Bearer ' + token();
    try {
      const resp = await fetch('api/events', { headers, signal: ctl.signal, cache: 'no-store' });
      if (resp.status === 401 || resp.status === 403) {
        const why = (await resp.text()).trim();
        setConnection('token', (token() ? 'refused: ' + why : 'enter the operator token to read the console') +
          ' (the file its --operator-token-file names; in a datacenter operator.token among its secrets)');
        if (!token()) tokenInput.focus();
        return; // the token's change reconnects
      }
      if (!resp.ok || !resp.body) throw new Error('HTTP ' + resp.status);
      loadLagHistory(headers);
      const reader = resp.body.pipeThrough(new TextDecoderStream()).getReader();
      let buf = '', from = 0;
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buf += value;
        let end;
        // From where the last search stopped: a large state comes in
        // many chunks, and searching it whole each time would cost the
        // square of its size.
        while ((end = buf.indexOf('\n\n', from)) >= 0) {
          const block = buf.slice(0, end);
          buf = buf.slice(end + 2);
          from = 0;
          let event = 'message', data = [];
          for (const line of block.split('\n')) {
            if (line.startsWith('event: ')) event = line.slice(7);
            else if (line.startsWith('data: ')) data.push(line.slice(6));
          }
          if (event === 'state' && data.length) onState(data.join('\n'));
          else if (event === 'alive') onAlive();
        }
        from = Math.max(0, buf.length - 1);
      }
    } catch (e) {
      if (ctl.signal.aborted) return;
    }
    if (reading !== ctl) return;
    setConnection('reconnecting', 'reconnecting…');
    retry = setTimeout(connect, 2000);
  }

  // --- rendering -------------------------------------------------------
  function render(st) {
    const t0 = performance.now();
    const g = document.getElementById('generated');
    g.dataset.generatedAt = st.generated_at;
    g.textContent = 'state of ' + new Date(st.generated_at).toLocaleTimeString();
    renderSections(st);
    // How long drawing a state took: what keeps the page responsive or
    // not (BenchmarkConsoleCost/page reads it).
    g.dataset.renderMs = (performance.now() - t0).toFixed(1);
  }
  function renderSections(st) {
    renderBanner(st);
    renderPipeline(st);
    renderStreams(st);
    renderDeadLetters(st);
    renderTopics(st);
    renderServices(st);
    renderNSQDs(st);
    renderProblems(st);
  }

  function renderBanner(st) {
    const b = document.getElementById('banner');
    const lines = [];
    const now = Date.now();
    const stale = lastEventAt === 0 || now - lastEventAt > STALE_MS || now - generatedChangedAt > NOT_NEW_MS;
    if (lastEventAt === 0) lines.push('no data from the console yet');
    else if (now - lastEventAt > STALE_MS) lines.push('the console\u2019s data is stale: no update for ' + secs((now - lastEventAt) / 1000) + ' (reconnecting)');
    else if (now - generatedChangedAt > NOT_NEW_MS) lines.push('the console has collected nothing new for ' + secs((now - generatedChangedAt) / 1000));
    const consulDown = !!(st && !st.consul.ok);
    if (consulDown) lines.push('Consul cannot be read since ' + ago(st.consul.down_since) + ': ' + st.consul.error + ' (services as last read)');
    let nsqdDown = false;
    if (st) {
      nsqdDown = st.nsqd_down;
      if (st.nsqds.length === 0) lines.push('no nsqd is registered in Consul: topic numbers unknown');
      for (const n of st.nsqds) {
        if (!n.up) lines.push('nsqd ' + n.id + ' down since ' + ago(n.down_since) + ': ' + n.error + ' (topic numbers incomplete)');
      }
    }
    b.dataset.stale = String(stale);
    b.dataset.consulDown = String(consulDown);
    b.dataset.nsqdDown = String(nsqdDown);
    b.replaceChildren(...lines.map(l => el('div', {}, l)));
    b.hidden = lines.length === 0;
  }
  setInterval(() => renderBanner(current), 500);

  // The pipeline as layers: a service that publishes, its topics, their
  // channels, the services consuming them, and so on down the chain.
  function renderPipeline(st) {
    const infra = new Set(['nsqd', 'nsqlookupd', 'consul']);
    const svcs = new Map(st.services.filter(s => !infra.has(s.name)).map(s => [s.name, s]));
    const nodes = new Map(); // key → node
    const edges = [];
    const node = (key, kind, data) => {
      if (!nodes.has(key)) nodes.set(key, { key, kind, data, layer: kind === 'service' ? 0 : kind === 'topic' ? 1 : 2, preds: [] });
      return nodes.get(key);
    };
    const edge = (a, b, tagOnly) => { edges.push({ a, b, tagOnly }); b.preds.push(a); };
    for (const t of st.topics) {
      const tn = node('topic:' + t.name, 'topic', t);
      for (const p of t.publishers) if (svcs.has(p)) edge(node('service:' + p, 'service', svcs.get(p)), tn);
      const viaChannel = new Set();
      for (const c of t.channels) {
        const cn = node('channel:' + t.name + '/' + c.name, 'channel', { topic: t.name, ...c });
        edge(tn, cn);
        for (const s of c.consumers) {
          viaChannel.add(s);
          const sn = node('service:' + s, 'service', svcs.get(s) || { name: s, health: 'unknown', instances: [] });
          edge(cn, sn);
        }
      }
      for (const s of t.consumers) {
        if (!viaChannel.has(s) && svcs.has(s)) edge(tn, node('service:' + s, 'service', svcs.get(s)), true);
      }
    }
    for (const s of svcs.values()) {
      if (s.publishes.length || s.consumes.length) node('service:' + s.name, 'service', s);
    }
    // Longest path from the sources (bounded: a cycle stops growing).
    for (let i = 0; i < nodes.size; i++) {
      let moved = false;
      for (const e of edges) {
        if (e.b.layer < e.a.layer + 1 && e.b.layer < 64) { e.b.layer = e.a.layer + 1; moved = true; }
      }
      if (!moved) break;
    }
    const layers = [];
    for (const n of nodes.values()) (layers[n.layer] = layers[n.layer] || []).push(n);
    const W = 190, GAP = 12, H = { service: 46, topic: 60, channel: 60 };
    let height = 0;
    layers.forEach((ns, li) => {
      if (!ns) return;
      // Under their predecessors, to keep edges short.
      const at = n => n.preds.length ? n.preds.reduce((s, p) => s + (p.y || 0), 0) / n.preds.length : 0;
      ns.sort((a, b) => at(a) - at(b) || a.key.localeCompare(b.key));
      let y = 10;
      for (const n of ns) {
        n.x = 10 + li * W; n.y = y; n.h = H[n.kind]; n.w = W - 30;
        y += n.h + GAP;
      }
      height = Math.max(height, y);
    });
    const svg = document.getElementById('pipeline-svg');
    if (!changed('pipeline', [st.services.map(s => [s.name, s.health, s.instances.length]), st.topics, st.nsqd_down])) return;
    const width = 20 + layers.length * W;
    svg.setAttribute('width', width);
    svg.setAttribute('height', Math.max(height, 40));
    svg.setAttribute('viewBox', '0 0 ' + width + ' ' + Math.max(height, 40));
    const out = [];
    for (const e of edges) {
      const x1 = e.a.x + e.a.w, y1 = e.a.y + e.a.h / 2, x2 = e.b.x, y2 = e.b.y + e.b.h / 2, mx = (x1 + x2) / 2;
      out.push(sv('path', { class: 'edge' + (e.tagOnly ? ' tagonly' : ''), d: `M${x1} ${y1} C${mx} ${y1} ${mx} ${y2} ${x2} ${y2}`,
        'data-from': e.a.key, 'data-to': e.b.key }));
    }
    for (const n of nodes.values()) out.push(drawNode(n, st));
    svg.replaceChildren(...out);
  }

  function drawNode(n, st) {
    const d = n.data;
    const lines = [];
    let attrs;
    if (n.kind === 'service') {
      const inst = d.instances || [];
      const passing = inst.filter(i => i.health === 'passing').length;
      attrs = { id: 'node-service-' + d.name, class: 'node service', 'data-node': 'service', 'data-service': d.name,
        'data-health': d.health, 'data-instances': inst.length, 'data-passing': passing };
      lines.push([d.name, 'title'], [passing + '/' + inst.length + ' passing' + ((d.roles || []).length ? ' · ' + d.roles.join(', ') : ''), 'sub']);
    } else if (n.kind === 'topic') {
      const unknown = unknownTopic(d);
      attrs = { id: 'node-topic-' + d.name, class: 'node topic', 'data-node': 'topic', 'data-topic': d.name,
        'data-health': d.stale ? 'unknown' : 'passing', 'data-depth': unknown ? '' : d.depth, 'data-rate': unknown ? '' : d.rate.toFixed(2),
        'data-message-count': unknown ? '' : d.message_count, 'data-stale': d.stale };
      lines.push([d.name, 'title'], unknown ? ['depth ? · rate ?', ''] : ['depth ' + int(d.depth) + ' · ' + rate(d.rate) + (d.stale ? ' (partial)' : ''), ''],
        [unknown ? '' : int(d.message_count) + ' messages', 'sub']);
    } else {
      const health = d.clients === 0 && d.depth > 0 ? 'warning' : d.clients === 0 ? 'unknown' : 'passing';
      attrs = { id: 'node-channel-' + d.topic + '-' + d.name, class: 'node channel', 'data-node': 'channel', 'data-topic': d.topic,
        'data-channel': d.name, 'data-health': health, 'data-depth': d.depth, 'data-in-flight': d.in_flight,
        'data-rate': d.rate.toFixed(2), 'data-clients': d.clients };
      const name = d.name.length > 24 ? d.name.slice(0, 23) + '…' : d.name;
      lines.push([name, 'title'], ['depth ' + int(d.depth) + ' · in flight ' + int(d.in_flight), ''], [rate(d.rate) + ' · ' + d.clients + ' client(s)', 'sub']);
    }
    const g = sv('g', attrs);
    g.append(sv('title', {}, n.kind + ' ' + (d.name || '')));
    g.append(sv('rect', { x: n.x, y: n.y, width: n.w, height: n.h, rx: 6 }));
    lines.forEach(([t, cls], i) => g.append(sv('text', { x: n.x + 8, y: n.y + 17 + i * 15, class: cls }, t)));
    return g;
  }

  // The streams are drawn in place: a card is built again only when its
  // stream's own fields or its set of consumers change, a row only when
  // its consumer's figures change, and a sparkline only when its points
  // would draw differently. With many streams and consumers, building
  // every row every second is what would make the page unresponsive.
  const cards = new Map();      // stream → { sig, card, tbody, rows: Map(key → { sig, tr }) }
  const sparkDrawn = new Map(); // consumer key → what its sparkline was drawn from
  function renderStreams(st) {
    traceURL = st.trace_url || '';
    const list = document.getElementById('streams-list');
    list.dataset.count = st.streams.length;
    if (st.streams.length === 0) {
      cards.clear();
      list.replaceChildren(el('p', { class: 'empty' }, 'no stream owner in Consul yet'));
      return;
    }
    const order = [];
    const live = new Set();
    for (const s of st.streams) {
      live.add(s.stream);
      // The card's shape: what its figures (last seq, retained range,
      // rate), set in place every second, leave out.
      const head = Object.assign({}, s, { consumers: s.consumers.map(c => c.kind + ':' + c.consumer), publish_rate: 0,
        last_seq: 0, retained_first: 0, retained_last: 0, trace_url: traceURL });
      if (s.owner) head.owner = Object.assign({}, s.owner, { down_since: s.owner.up ? '' : ago(s.owner.down_since), last_seen: '' });
      const sig = JSON.stringify(head);
      let entry = cards.get(s.stream);
      if (!entry || entry.sig !== sig) {
        entry = Object.assign(streamCard(s), { sig, rows: entry ? entry.rows : new Map() });
        cards.set(s.stream, entry);
      } else updateStreamFigures(entry, s);
      if (entry.tbody) {
        const rows = [];
        const present = new Set();
        for (const c of s.consumers) {
          const key = consumerKey(c.kind, c.consumer, s.stream);
          present.add(key);
          // What changes every second (position, lag, a replay's
          // progress) is set in place; the rest rebuilds the row.
          const rsig = rowShape(c);
          let r = entry.rows.get(key);
          if (!r || r.sig !== rsig) {
            const tr = consumerRow(s, c);
            if (r && r.tr.parentNode) r.tr.replaceWith(tr);
            r = { sig: rsig, tr };
            entry.rows.set(key, r);
          } else updateFigures(r.tr, c);
          drawSparkline(key, c, r.tr);
          rows.push(r.tr);
        }
        for (const key of entry.rows.keys()) if (!present.has(key)) entry.rows.delete(key);
        const kids = entry.tbody.children;
        if (kids.length !== rows.length || rows.some((tr, i) => kids[i] !== tr)) entry.tbody.replaceChildren(...rows);
      }
      order.push(entry.card);
    }
    for (const id of cards.keys()) if (!live.has(id)) cards.delete(id);
    const kids = list.children;
    if (kids.length !== order.length || order.some((c, i) => kids[i] !== c)) list.replaceChildren(...order);
  }

  function streamCard(s) {
    const o = s.owner;
    const card = el('article', { class: 'card stream', id: 'stream-' + s.stream, 'data-stream': s.stream,
      'data-owner': o ? o.instance : '', 'data-owner-up': o ? o.up : false, 'data-last-seq': s.last_seq,
      'data-retained-first': s.retained_first, 'data-retained-last': s.retained_last,
      'data-publish-rate': s.publish_rate.toFixed(2), 'data-topic': s.topic || '' });
    card.append(el('h3', {}, 'stream ' + s.stream + ' ',
      o ? el('span', { class: 'badge ' + (o.up ? 'up' : 'down') }, o.up ? 'owner up' : 'owner down') : el('span', { class: 'badge' }, 'no owner')));
    const dl = el('dl', {});
    const item = (k, v, attrs) => { const dd = el('dd', attrs || {}, v); dl.append(el('dt', {}, k), dd); return dd; };
    item('owner', o ? o.instance + ' (' + o.service + ', ' + o.address + ')' : 'none in Consul');
    item('topic', s.topic || '–');
    const figures = {
      lastSeq: item('last seq', int(s.last_seq), { 'data-last-seq': s.last_seq }),
      retained: item('retained', int(s.retained_first) + ' – ' + int(s.retained_last)),
      rate: item('publish rate', rate(s.publish_rate), { 'data-publish-rate': s.publish_rate.toFixed(2) }),
    };
    if (traceURL) figures.trace = traceLink(s, card, item);
    if (o && !o.up) item('owner down', 'since ' + ago(o.down_since) + ': ' + o.error, { class: 'err' });
    if (s.damaged && s.damaged.length) item('damaged', ranges(s.damaged), { class: 'err' });
    if (s.not_accepting) item('not accepting', s.not_accepting, { class: 'err' });
    card.append(dl);
    if (s.consumers.length === 0) {
      card.append(el('p', { class: 'empty' }, 'no tracking consumer or stage reports this stream'));
      return { card, tbody: null, figures };
    }
    const tbody = el('tbody', {});
    card.append(el('table', { class: 'consumers' },
      el('thead', {}, el('tr', {}, ...['consumer', 'state', 'position', 'lag', 'last 5 min', 'gaps', 'replay', 'snapshots', 'error']
        .map(h => el('th', {}, h)))), tbody));
    return { card, tbody, figures };
  }

  // traceLink adds the link to a reading's trace (--trace-url): the
  // sequence typed in, else the stream's last; it returns what keeps the
  // link on the last one as the stream grows.
  function traceLink(s, card, item) {
    const seq = el('input', { type: 'number', min: '1', step: '1', id: 'trace-seq-' + s.stream, class: 'trace-seq',
      placeholder: String(s.last_seq), 'aria-label': 'sequence of the reading' });
    const link = el('a', { id: 'trace-' + s.stream, class: 'trace', target: '_blank', rel: 'noopener noreferrer' }, 'open its trace');
    const update = () => {
      const n = seq.value || card.dataset.lastSeq;
      seq.placeholder = card.dataset.lastSeq;
      link.dataset.seq = n;
      link.href = traceURL.split('{id}').join(encodeURIComponent(s.stream + '/' + n));
    };
    seq.addEventListener('input', update);
    update();
    item('trace of reading', el('span', {}, seq, ' ', link));
    return update;
  }

  function updateStreamFigures(entry, s) {
    const { card, figures: f } = entry;
    const text = (e, t) => { if (e.textContent !== t) e.textContent = t; };
    card.dataset.lastSeq = s.last_seq;
    card.dataset.retainedFirst = s.retained_first;
    card.dataset.retainedLast = s.retained_last;
    card.dataset.publishRate = s.publish_rate.toFixed(2);
    f.lastSeq.dataset.lastSeq = s.last_seq;
    text(f.lastSeq, int(s.last_seq));
    text(f.retained, int(s.retained_first) + ' – ' + int(s.retained_last));
    f.rate.dataset.publishRate = s.publish_rate.toFixed(2);
    text(f.rate, rate(s.publish_rate));
    if (f.trace) f.trace();
  }

  function consumerRow(s, c) {
    const key = domKey(c.kind, c.consumer, s.stream);
    // A stage keeps no applied set: it has no gaps, replays or
    // snapshots of its own (its position: every input up to it finished).
    const stage = c.kind === 'stage';
    const tr = el('tr', { id: 'consumer-' + key, class: 'consumer', 'data-consumer': c.consumer, 'data-stream': s.stream,
      'data-kind': c.kind || 'tracker',
      'data-up': c.up, 'data-position': c.last_contiguous, 'data-lag-messages': c.lag_messages,
      'data-lag-seconds': c.lag_seconds.toFixed(3), 'data-gaps': c.gaps.length, 'data-snapshots': c.snapshots });
    tr.append(el('td', {}, c.consumer, el('br', {}), el('small', {}, c.kind === 'stage' ? 'stage ' + c.service + (c.instances && c.instances.length ? ' (' + c.instances.join(', ') + ')' : '') : c.service)));
    tr.append(el('td', { 'data-up': c.up }, el('span', { class: 'badge ' + (c.up ? 'up' : 'down') }, c.up ? 'up' : 'down'),
      c.up ? null : el('small', {}, ' since ' + ago(c.down_since))));
    const pos = el('td', { class: 'num', 'data-position': c.last_contiguous,
      title: stage ? 'every input up to here finished; upstream at ' + int(c.owner_last) : 'the contiguous position' }, int(c.last_contiguous));
    const lag = el('td', { id: 'lag-' + key, class: 'num lag', 'data-consumer': c.consumer, 'data-stream': s.stream,
      'data-lag-messages': c.lag_messages, 'data-lag-seconds': c.lag_seconds.toFixed(3), 'data-lag-estimated': c.lag_estimated },
      int(c.lag_messages) + ' msgs', el('br', {}), el('small', {}, (c.lag_estimated ? '≤ ' : '') + secs(c.lag_seconds)));
    const W = 120, H = 24;
    const spark = sv('svg', { id: 'spark-' + key, class: 'spark', viewBox: `0 0 ${W} ${H}`, preserveAspectRatio: 'none',
      'data-points': 0, 'data-up': c.up, 'data-max': 0 }, sv('polyline', { points: '' }), sv('title', {}, ''));
    tr.append(pos, lag, el('td', {}, spark));
    sparkDrawn.delete(consumerKey(c.kind, c.consumer, s.stream));
    tr.append(el('td', { 'data-gaps': c.gaps.length }, stage ? '–' : c.gaps.length ? ranges(c.gaps) : 'none'));
    const rp = el('td', {});
    let progress = null;
    if (c.replay) {
      progress = el('progress', { id: 'replay-' + key, max: c.replay.requested, value: c.replay.received,
        'data-requested': c.replay.requested, 'data-received': c.replay.received });
      rp.append(progress, el('small', {}, ' ' + int(c.replay.received) + '/' + int(c.replay.requested)));
    } else rp.append('–');
    tr.figures = { pos, lag, spark, progress };
    tr.append(rp);
    tr.append(el('td', { class: 'num', 'data-snapshots': c.snapshots }, stage ? '–' : int(c.snapshots)));
    tr.append(el('td', { class: 'err' }, c.error || c.last_error || ''));
    return tr;
  }

  // rowShape is what rebuilds a row when it changes: everything but the
  // figures updateFigures sets in place (a plain string: comparing it
  // for every row every second must cost little).
  function rowShape(c) {
    return [c.kind, c.service, c.up, c.up ? '' : ago(c.down_since), c.error || '', c.last_error || '',
      c.gaps.length ? ranges(c.gaps) : '', c.snapshots, c.replay ? 1 : 0, c.lag_estimated, c.owner_last === 0,
      (c.instances || []).join(',')].join('\u0000');
  }

  // updateFigures sets a row's position, lag and replay progress, through
  // the references consumerRow kept (no lookup per row per second).
  function updateFigures(tr, c) {
    const f = tr.figures;
    const lagS = c.lag_seconds.toFixed(3);
    const text = (e, t) => { if (e.textContent !== t) e.textContent = t; };
    tr.dataset.position = c.last_contiguous;
    tr.dataset.lagMessages = c.lag_messages;
    tr.dataset.lagSeconds = lagS;
    f.pos.dataset.position = c.last_contiguous;
    text(f.pos, int(c.last_contiguous));
    if (c.kind === 'stage') f.pos.title = 'every input up to here finished; upstream at ' + int(c.owner_last);
    f.lag.dataset.lagMessages = c.lag_messages;
    f.lag.dataset.lagSeconds = lagS;
    text(f.lag.firstChild, int(c.lag_messages) + ' msgs');
    text(f.lag.lastChild, (c.lag_estimated ? '≤ ' : '') + secs(c.lag_seconds));
    const pr = f.progress;
    if (pr && c.replay) {
      pr.max = c.replay.requested;
      pr.value = c.replay.received;
      pr.dataset.requested = c.replay.requested;
      pr.dataset.received = c.replay.received;
      text(pr.nextSibling, ' ' + int(c.replay.received) + '/' + int(c.replay.requested));
    }
  }

  // drawSparkline draws the last 5 minutes of a consumer's lag into its
  // row's svg, at most SPARK_POINTS points (the highest lag of each
  // slice). A flat line at 0 stays as it was drawn; otherwise it is drawn
  // again at most every SPARK_EVERY_MS, or at once when the consumer goes
  // up or down: with many consumers, drawing every line every second is
  // most of what the page would do.
  const SPARK_POINTS = 60, SPARK_EVERY_MS = 5000;
  function drawSparkline(key, c, tr) {
    const svg = tr.figures && tr.figures.spark;
    const pts = lagHistory.get(key) || [];
    if (!svg || pts.length === 0) return;
    const W = 120, H = 24;
    const t1 = pts[pts.length - 1][0], t0 = t1 - HISTORY_MS;
    const last = sparkDrawn.get(key);
    const lastLag = pts[pts.length - 1][1];
    svg.dataset.points = pts.length;
    if (last && last.up === c.up && ((last.max === 0 && lastLag === 0) || t1 - last.t1 < SPARK_EVERY_MS)) return;
    const slice = HISTORY_MS / SPARK_POINTS;
    const ys = new Array(SPARK_POINTS).fill(-1);
    let maxLag = 0;
    for (const p of pts) {
      const i = Math.min(SPARK_POINTS - 1, Math.max(0, Math.floor((p[0] - t0) / slice)));
      if (p[1] > ys[i]) ys[i] = p[1];
      if (p[1] > maxLag) maxLag = p[1];
    }
    sparkDrawn.set(key, { max: maxLag, t1, up: c.up });
    const scale = Math.max(1, maxLag);
    let d = '';
    for (let i = 0; i < SPARK_POINTS; i++) {
      if (ys[i] < 0) continue;
      d += (((i + 1) / SPARK_POINTS) * W).toFixed(1) + ',' + (H - 1 - (ys[i] / scale) * (H - 2)).toFixed(1) + ' ';
    }
    svg.firstChild.setAttribute('points', d);
    svg.lastChild.textContent = 'lag over the last 5 minutes, at most ' + int(maxLag) + ' messages';
    svg.dataset.max = maxLag;
    svg.dataset.up = c.up;
  }

  function renderDeadLetters(st) {
    if (!changed('deadletters', [st.deadletters, st.requeue])) return;
    const list = document.getElementById('deadletters-list');
    list.dataset.count = st.deadletters.reduce((n, t) => n + t.count, 0);
    const canRequeue = st.requeue.enabled;
    const button = (topic, id, label) => el('button', { type: 'button', 'data-requeue-topic': topic, 'data-requeue-id': id,
      disabled: !canRequeue, title: canRequeue ? 'publish back to ' + topic : st.requeue.why }, label);
    list.replaceChildren(...st.deadletters.map(t => {
      const card = el('article', { class: 'card deadletters', id: 'dl-' + t.topic, 'data-deadletter-topic': t.topic,
        'data-count': t.count, 'data-nsqd': t.nsqd, 'data-local': t.local, 'data-nsqd-unknown': t.nsqd_unknown });
      const inNSQD = t.nsqd_unknown ? (t.nsqd ? 'at least ' + int(t.nsqd) : '?') + ' in nsqd (an nsqd is down)' : int(t.nsqd) + ' in nsqd';
      card.append(el('h3', {}, t.topic + ': ', el('span', { class: 'count', 'data-count': t.count },
        (t.nsqd_unknown ? '≥ ' : '') + int(t.count) + ' dead letter(s)'),
        el('small', {}, ' (' + inNSQD + ', ' + int(t.local) + ' kept locally) '),
        t.count > 0 || t.letters.length ? button(t.topic, 'all', 'requeue all') : null));
      if (t.reasons.length) {
        card.append(el('ul', { class: 'reasons' }, ...t.reasons.map(r => el('li', { 'data-reason': r.reason, 'data-count': r.count },
          r.count + ' × ' + r.reason))));
      }
      if (t.letters.length) {
        const tb = el('tbody', {});
        for (const l of t.letters) {
          tb.append(el('tr', { id: 'dl-' + t.topic + '-' + l.id, class: 'letter', 'data-letter-id': l.id, 'data-stored': l.stored,
            'data-instance': l.instance || '', 'data-topic': t.topic },
            el('td', {}, l.time && !l.time.startsWith('0001') ? new Date(l.time).toLocaleString() : '–'),
            el('td', {}, l.stored, l.instance ? el('br', {}) : null, l.instance ? el('small', {}, l.instance) : null),
            el('td', {}, l.channel || '–'),
            el('td', { class: 'num' }, l.attempts),
            el('td', { class: 'num' }, int(l.size) + ' B'),
            el('td', {}, l.reason),
            el('td', {}, el('code', { class: 'preview', 'data-letter-id': l.id }, l.preview)),
            el('td', {}, button(t.topic, l.id, 'requeue'))));
        }
        card.append(el('table', { class: 'letters' }, el('thead', {}, el('tr', {},
          ...['time', 'stored', 'channel', 'attempts', 'size', 'reason', 'preview', ''].map(h => el('th', {}, h)))), tb));
      }
      if (t.nsqd_listed_at) card.append(el('small', {}, 'nsqd\u2019s letters as read ' + ago(t.nsqd_listed_at)));
      for (const p of t.problems) card.append(el('p', { class: 'err' }, p));
      return card;
    }));
  }

  // Requeue: the token from the field (kept in sessionStorage), in the
  // Authorization header; no cookie is ever sent.
  document.getElementById('deadletters-list').addEventListener('click', async ev => {
    const b = ev.target.closest('button[data-requeue-topic]');
    if (!b) return;
    const status = document.getElementById('requeue-status');
    const token = tokenInput.value || sessionStorage.getItem(TOKEN_KEY) || '';
    if (!token) {
      status.dataset.result = 'error';
      status.textContent = 'enter the operator token to requeue: the file the console\u2019s --operator-token-file names (on the laptop: var/console/operator.token)';
      tokenInput.focus();
      return;
    }
    sessionStorage.setItem(TOKEN_KEY, token);
    const topic = b.dataset.requeueTopic, id = b.dataset.requeueId;
    status.dataset.result = 'running';
    status.textContent = 'requeueing ' + (id === 'all' ? 'every dead letter' : 'dead letter ' + id) + ' of ' + topic + '…';
    try {
      const resp = await fetch('api/deadletters/requeue', {
        method: 'POST', credentials: 'omit', cache: 'no-store',
        headers: { 'Authorization': 'Bearer ' + token, 'Content-Type': 'application/json' },
        body: JSON.stringify({ topic, id }),
      });
      if (!resp.ok) {
        status.dataset.result = 'error';
        status.textContent = 'HTTP ' + resp.status + ': ' + (await resp.text()).trim();
        return;
      }
      const r = await resp.json();
      status.dataset.result = r.problems.length ? 'error' : 'ok';
      status.textContent = 'requeued ' + r.requeued + ' dead letter(s) of ' + topic + ' (' + r.from_nsqd + ' from nsqd, ' +
        r.from_local + ' kept locally)' + (r.problems.length ? '; ' + r.problems.join('; ') : '');
    } catch (e) {
      status.dataset.result = 'error';
      status.textContent = 'requeue failed: ' + e;
    }
  });

  function renderTopics(st) {
    const tb = document.querySelector('#topics-table tbody');
    const rows = [];
    for (const t of st.topics) {
      const unknown = unknownTopic(t);
      rows.push(el('tr', { class: 'group', id: 'topic-' + t.name, 'data-topic': t.name, 'data-depth': unknown ? '' : t.depth,
        'data-rate': unknown ? '' : t.rate.toFixed(2), 'data-message-count': unknown ? '' : t.message_count, 'data-stale': t.stale },
        el('td', {}, t.name, t.stale ? el('small', { class: 'err' }, unknownTopic(t) ? ' (nsqd down: unknown)' : ' (an nsqd is down: incomplete)') : null,
          !t.stale && t.in_nsqd === 0 ? el('small', {}, ' (not in nsqd yet)') : null),
        el('td', { class: 'num' }, unknownTopic(t) ? '?' : int(t.depth)), el('td', {}, ''), el('td', {}, ''),
        el('td', { class: 'num' }, unknownTopic(t) ? '?' : rate(t.rate)), el('td', { class: 'num' }, unknownTopic(t) ? '?' : int(t.message_count)),
        el('td', {}, ''), el('td', {}, ''), el('td', {}, ''),
        el('td', {}, 'pub: ' + (t.publishers.join(', ') || '–') + ' · sub: ' + (t.consumers.join(', ') || '–'))));
      for (const c of t.channels) {
        rows.push(el('tr', { id: 'channel-' + t.name + '-' + c.name, 'data-topic': t.name, 'data-channel': c.name,
          'data-depth': c.depth, 'data-in-flight': c.in_flight, 'data-rate': c.rate.toFixed(2) },
          el('td', {}, '\u2003' + c.name), el('td', { class: 'num' }, int(c.depth)), el('td', { class: 'num' }, int(c.in_flight)),
          el('td', { class: 'num' }, int(c.deferred)), el('td', { class: 'num' }, rate(c.rate)), el('td', { class: 'num' }, int(c.message_count)),
          el('td', { class: 'num' }, int(c.requeued)), el('td', { class: 'num' }, int(c.timed_out)), el('td', { class: 'num' }, c.clients),
          el('td', {}, c.consumers.join(', '))));
      }
    }
    tb.replaceChildren(...rows);
  }

  function renderServices(st) {
    if (!changed('services', st.services)) return;
    const tb = document.querySelector('#services-table tbody');
    const rows = [];
    for (const s of st.services) {
      rows.push(el('tr', { class: 'group', id: 'service-' + s.name, 'data-service': s.name, 'data-health': s.health },
        el('td', {}, s.name), el('td', {}, el('span', { class: 'badge ' + s.health }, s.health)), el('td', {}, ''), el('td', {}, ''),
        el('td', {}, s.roles.join(', ')), el('td', {}, s.instances.length + ' instance(s)')));
      for (const i of s.instances) {
        rows.push(el('tr', { id: 'instance-' + i.id, 'data-instance': i.id, 'data-service': s.name, 'data-health': i.health },
          el('td', {}, '\u2003' + i.id), el('td', {}, el('span', { class: 'badge ' + i.health }, i.health)),
          el('td', {}, i.address + ':' + i.port), el('td', {}, i.node), el('td', {}, el('small', {}, i.tags.join(' '))),
          el('td', {}, ...i.checks.map(c => el('div', { class: c.status === 'passing' ? '' : 'err', title: c.output || '' }, c.name + ': ' + c.status)))));
      }
    }
    tb.replaceChildren(...rows);
  }

  function renderNSQDs(st) {
    const tb = document.querySelector('#nsqds-table tbody');
    tb.replaceChildren(...st.nsqds.map(n => el('tr', { id: 'nsqd-' + n.id, 'data-nsqd': n.id, 'data-up': n.up },
      el('td', {}, n.id), el('td', {}, el('span', { class: 'badge ' + (n.up ? 'up' : 'down') }, n.up ? 'answering' : 'down since ' + ago(n.down_since))),
      el('td', {}, el('span', { class: 'badge ' + n.health }, n.health || '?')), el('td', {}, n.address), el('td', {}, n.http_address || '–'),
      el('td', {}, n.version || ''), el('td', { class: 'err' }, n.error || (n.nsqd_health && n.nsqd_health !== 'OK' ? n.nsqd_health : '')))));
  }

  function renderProblems(st) {
    const ul = document.getElementById('problems-list');
    ul.dataset.count = st.problems.length;
    ul.replaceChildren(...(st.problems.length ? st.problems.map(p => el('li', {}, p)) : [el('li', { class: 'empty' }, 'nothing')]));
  }

  renderBanner(null);
  connect();
})();

/**
 * The dashboard: one dependency-free HTML page the controller serves at `/`.
 * The page itself needs no credentials; it asks for the API token once
 * (kept in the browser's localStorage) and sends it as a bearer with every
 * API call. It lists builds and workers, shows a build's log (following it
 * live while it runs, via the SSE stream of `GET /builds/{id}/logs`),
 * downloads artifacts, and cancels or retries builds.
 *
 * Everything shown comes from the API as text and is inserted with
 * `textContent`, never as HTML.
 */

const STYLE = `
:root { --fg:#1d2330; --muted:#667085; --line:#e4e7ec; --bg:#f8f9fb; --ok:#067647; --bad:#b42318; --run:#175cd3; --warn:#b54708; }
* { box-sizing: border-box; }
body { margin:0; font:14px/1.45 system-ui, -apple-system, Segoe UI, Roboto, sans-serif; color:var(--fg); background:var(--bg); }
header { display:flex; align-items:center; gap:16px; padding:10px 20px; background:#101828; color:#fff; }
header h1 { font-size:16px; margin:0; font-weight:600; }
header .sp { flex:1; }
header button { background:transparent; color:#d0d5dd; border:1px solid #475467; }
main { display:grid; grid-template-columns: minmax(520px, 1fr) minmax(420px, 1fr); gap:16px; padding:16px 20px; }
section { background:#fff; border:1px solid var(--line); border-radius:8px; padding:12px 14px; min-width:0; }
h2 { font-size:14px; margin:0 0 8px; display:flex; align-items:center; gap:8px; }
table { width:100%; border-collapse:collapse; }
th, td { text-align:left; padding:5px 6px; border-bottom:1px solid var(--line); white-space:nowrap; overflow:hidden; text-overflow:ellipsis; max-width:220px; }
th { color:var(--muted); font-weight:500; font-size:12px; }
tr.build { cursor:pointer; }
tr.build:hover, tr.sel { background:#eef4ff; }
.state { font-weight:600; }
.s-succeeded { color:var(--ok); } .s-failed, .s-timed_out { color:var(--bad); } .s-running, .s-assigned { color:var(--run); } .s-canceled { color:var(--muted); } .s-queued { color:var(--warn); }
.muted { color:var(--muted); }
button { font:inherit; padding:3px 10px; border-radius:6px; border:1px solid var(--line); background:#fff; cursor:pointer; }
button:disabled { opacity:.5; cursor:default; }
select, input { font:inherit; padding:3px 6px; border:1px solid var(--line); border-radius:6px; }
pre#log { background:#0c111d; color:#e4e7ec; padding:10px; border-radius:6px; height:420px; overflow:auto; font:12px/1.4 ui-monospace, SFMono-Regular, Menlo, monospace; white-space:pre-wrap; word-break:break-all; margin:8px 0 0; }
.kv { display:grid; grid-template-columns:110px 1fr; gap:2px 10px; font-size:13px; }
.kv div:nth-child(odd) { color:var(--muted); }
.kv div { white-space:pre-wrap; word-break:break-word; }
#error { color:var(--bad); padding:0 20px; }
.wide { grid-column: 1 / -1; }
dialog { border:1px solid var(--line); border-radius:8px; padding:18px; }
`;

const SCRIPT = String.raw`
(function () {
  'use strict';
  var TOKEN_KEY = 'buildfleet.apiToken';
  var API = '/api/v1';
  var state = { selected: null, follow: null, filter: '' };

  function $(id) { return document.getElementById(id); }
  function el(tag, attrs, children) {
    var e = document.createElement(tag);
    if (attrs) for (var k in attrs) {
      if (k === 'text') e.textContent = attrs[k];
      else if (k === 'class') e.className = attrs[k];
      else if (k.slice(0, 2) === 'on') e.addEventListener(k.slice(2), attrs[k]);
      else e.setAttribute(k, attrs[k]);
    }
    (children || []).forEach(function (c) { if (c != null) e.appendChild(typeof c === 'string' ? document.createTextNode(c) : c); });
    return e;
  }
  function token() { return localStorage.getItem(TOKEN_KEY) || ''; }
  function askToken(message) {
    $('tokenMsg').textContent = message || 'Paste an API token (bfa_...). It is kept in this browser only.';
    $('tokenInput').value = '';
    if (!$('tokenDialog').open) $('tokenDialog').showModal();
  }
  function showError(msg) { $('error').textContent = msg || ''; }
  function api(method, path, opts) {
    opts = opts || {};
    var headers = { authorization: 'Bearer ' + token() };
    if (opts.accept) headers.accept = opts.accept;
    return fetch(API + path, { method: method, headers: headers, signal: opts.signal }).then(function (res) {
      if (res.status === 401) { askToken('The API token was refused; paste a valid one.'); throw new Error('unauthorized'); }
      if (!res.ok && res.status !== 204) {
        return res.json().catch(function () { return {}; }).then(function (b) {
          var e = new Error((b.error && (b.error.code + ': ' + b.error.message)) || ('HTTP ' + res.status));
          throw e;
        });
      }
      return res;
    });
  }
  function json(method, path) { return api(method, path).then(function (r) { return r.json(); }); }
  function ago(iso) {
    if (!iso) return '';
    var s = Math.round((Date.now() - Date.parse(iso)) / 1000);
    if (s < 60) return s + 's ago';
    if (s < 3600) return Math.floor(s / 60) + 'm ago';
    if (s < 86400) return Math.floor(s / 3600) + 'h ago';
    return new Date(iso).toISOString().slice(0, 16).replace('T', ' ');
  }
  function duration(a, b) {
    if (!a) return '';
    var ms = (b ? Date.parse(b) : Date.now()) - Date.parse(a);
    var s = Math.round(ms / 1000);
    return s < 60 ? s + 's' : Math.floor(s / 60) + 'm' + (s % 60) + 's';
  }
  function stateCell(s) { return el('td', { class: 'state s-' + s, text: s }); }
  function terminal(s) { return s === 'succeeded' || s === 'failed' || s === 'canceled' || s === 'timed_out'; }

  function loadBuilds() {
    var q = '?limit=100' + (state.filter ? '&state=' + encodeURIComponent(state.filter) : '');
    return json('GET', '/builds' + q).then(function (body) {
      var rows = body.builds.map(function (b) {
        var tr = el('tr', { class: 'build' + (state.selected === b.id ? ' sel' : ''), 'data-id': b.id, onclick: function () { select(b.id); } }, [
          el('td', { text: b.id.slice(-12), title: b.id }),
          stateCell(b.state),
          el('td', { text: (b.spec.labels || []).join(', ') }),
          el('td', { text: b.attempt + '/' + b.spec.maxAttempts }),
          el('td', { text: ago(b.createdAt), title: b.createdAt }),
          el('td', { text: duration(b.startedAt, b.finishedAt) }),
          el('td', { class: 'muted', text: b.spec.script.split('\n')[0] }),
        ]);
        return tr;
      });
      var tbody = $('builds');
      tbody.replaceChildren.apply(tbody, rows.length ? rows : [el('tr', {}, [el('td', { colspan: '7', class: 'muted', text: 'No builds yet. Submit one with: buildfleet submit <dir>' })])]);
    });
  }

  function loadWorkers() {
    return json('GET', '/workers').then(function (body) {
      var rows = body.workers.map(function (w) {
        return el('tr', {}, [
          el('td', { text: w.name, title: w.id }),
          el('td', { class: w.connected ? 's-succeeded' : 's-canceled', text: w.connected ? 'connected' : 'away' }),
          el('td', { text: w.status }),
          el('td', { text: (w.labels || []).join(', ') }),
          el('td', { text: w.activeBuildCount + '/' + w.maxConcurrentBuilds }),
          el('td', { text: ago(w.lastSeenAt) }),
          el('td', {}, [w.status === 'active' ? el('button', { text: 'drain', onclick: function () {
            if (confirm('Drain worker ' + w.name + '? It finishes its running builds and takes no new ones.')) api('POST', '/workers/' + encodeURIComponent(w.id) + '/drain').then(refresh, fail);
          } }) : null]),
        ]);
      });
      var tbody = $('workers');
      tbody.replaceChildren.apply(tbody, rows.length ? rows : [el('tr', {}, [el('td', { colspan: '7', class: 'muted', text: 'No workers registered.' })])]);
    });
  }

  function fail(err) { if (err && err.message !== 'unauthorized' && err.name !== 'AbortError') showError(err.message); }
  function refresh() {
    if (!token()) return;
    showError('');
    Promise.all([loadBuilds(), loadWorkers(), state.selected ? loadDetail(state.selected, false) : null]).catch(fail);
  }

  function select(id) {
    state.selected = id;
    Array.prototype.forEach.call(document.querySelectorAll('tr.build'), function (tr) { tr.classList.toggle('sel', tr.getAttribute('data-id') === id); });
    loadDetail(id, true).catch(fail);
  }

  function loadDetail(id, restartLog) {
    return json('GET', '/builds/' + encodeURIComponent(id)).then(function (body) {
      var b = body.build;
      if (state.selected !== id) return;
      $('detail').hidden = false;
      $('detailTitle').textContent = 'Build ' + b.id;
      var kv = [
        ['state', b.state + (b.cancelRequested && !terminal(b.state) ? ' (cancel requested)' : '')],
        ['attempt', b.attempt + ' of ' + b.spec.maxAttempts],
        ['worker', b.workerId || ''],
        ['labels', b.spec.labels.join(', ')],
        ['exit code', b.exitCode == null ? '' : String(b.exitCode)],
        ['reason', (b.reason || '') + (b.message ? ' ' + b.message : '')],
        ['created', b.createdAt],
        ['started', b.startedAt || ''],
        ['finished', b.finishedAt || ''],
        ['script', b.spec.script],
      ];
      b.attempts.forEach(function (a) {
        kv.push(['attempt ' + a.attempt, a.state + (a.reason ? ' (' + a.reason + ')' : '') + (a.workerId ? ' on ' + a.workerId : '')]);
      });
      var box = $('kv');
      box.replaceChildren.apply(box, kv.reduce(function (acc, p) { acc.push(el('div', { text: p[0] }), el('div', { text: p[1] })); return acc; }, []));
      $('cancel').disabled = terminal(b.state);
      $('cancel').onclick = function () { api('POST', '/builds/' + encodeURIComponent(b.id) + '/cancel').then(refresh, fail); };
      $('retry').onclick = function () {
        api('POST', '/builds/' + encodeURIComponent(b.id) + '/retry').then(function (r) { return r.json(); }).then(function (r) { refresh(); select(r.build.id); }, fail);
      };
      loadArtifacts(b);
      if (restartLog) followLog(b.id);
    });
  }

  function loadArtifacts(b) {
    json('GET', '/builds/' + encodeURIComponent(b.id) + '/artifacts').then(function (body) {
      var list = $('artifacts');
      var items = body.artifacts.map(function (a) {
        return el('li', {}, [
          el('a', { href: '#', text: a.name, onclick: function (ev) { ev.preventDefault(); download(b.id, a.name); } }),
          el('span', { class: 'muted', text: ' ' + a.size + ' bytes, sha256 ' + a.sha256.slice(0, 12) + '...' }),
        ]);
      });
      list.replaceChildren.apply(list, items.length ? items : [el('li', { class: 'muted', text: 'none' })]);
    }, fail);
  }

  function download(id, name) {
    api('GET', '/builds/' + encodeURIComponent(id) + '/artifacts/' + encodeURIComponent(name)).then(function (r) { return r.blob(); }).then(function (blob) {
      var url = URL.createObjectURL(blob);
      var a = el('a', { href: url, download: name.split('/').pop() });
      document.body.appendChild(a); a.click(); a.remove();
      setTimeout(function () { URL.revokeObjectURL(url); }, 10000);
    }, fail);
  }

  // A live log: the SSE stream of GET /builds/{id}/logs read with fetch (EventSource cannot send a bearer token).
  function followLog(id) {
    if (state.follow) state.follow.abort();
    var ctrl = new AbortController();
    state.follow = ctrl;
    var pre = $('log');
    pre.textContent = '';
    $('logState').textContent = 'following...';
    api('GET', '/builds/' + encodeURIComponent(id) + '/logs?follow=1', { accept: 'text/event-stream', signal: ctrl.signal }).then(function (res) {
      var reader = res.body.getReader();
      var decoder = new TextDecoder();
      var buf = '';
      function pump() {
        return reader.read().then(function (r) {
          if (r.done) { if (state.follow === ctrl && $('logState').textContent.indexOf('ended') !== 0) $('logState').textContent = 'stream closed'; return; }
          buf += decoder.decode(r.value, { stream: true });
          var i;
          while ((i = buf.indexOf('\n\n')) >= 0) {
            var block = buf.slice(0, i); buf = buf.slice(i + 2);
            var ev = 'message', data = '';
            block.split('\n').forEach(function (line) {
              if (line.indexOf('event: ') === 0) ev = line.slice(7);
              else if (line.indexOf('data: ') === 0) data += line.slice(6);
            });
            var d = data ? JSON.parse(data) : {};
            var stick = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 20;
            if (ev === 'log') pre.appendChild(document.createTextNode(d.text));
            else if (ev === 'attempt') pre.appendChild(document.createTextNode('\n--- attempt ' + d.attempt + ' ---\n'));
            else if (ev === 'state') { $('logState').textContent = d.state; if (state.selected === id) loadDetail(id, false).catch(fail); }
            else if (ev === 'end') { $('logState').textContent = 'ended: ' + d.state + (d.exitCode != null ? ' (exit ' + d.exitCode + ')' : ''); refresh(); }
            else if (ev === 'error') $('logState').textContent = 'error: ' + d.code;
            if (stick) pre.scrollTop = pre.scrollHeight;
          }
          return pump();
        });
      }
      return pump();
    }).catch(fail);
  }

  document.addEventListener('DOMContentLoaded', function () {
    $('tokenForm').addEventListener('submit', function (ev) {
      ev.preventDefault();
      var t = $('tokenInput').value.trim();
      if (!t) return;
      localStorage.setItem(TOKEN_KEY, t);
      $('tokenDialog').close();
      refresh();
    });
    $('forget').addEventListener('click', function () { localStorage.removeItem(TOKEN_KEY); askToken(); });
    $('stateFilter').addEventListener('change', function (ev) { state.filter = ev.target.value; refresh(); });
    if (!token()) askToken(); else refresh();
    setInterval(refresh, 4000);
  });
})();
`;

const BODY = `
<header><h1>buildfleet</h1><span class="sp"></span><button id="forget" type="button">change API token</button></header>
<p id="error" role="alert"></p>
<main>
  <section>
    <h2>Builds
      <select id="stateFilter" aria-label="state filter">
        <option value="">all states</option><option>queued</option><option>assigned</option><option>running</option>
        <option>succeeded</option><option>failed</option><option>canceled</option><option>timed_out</option>
      </select>
    </h2>
    <table><thead><tr><th>id</th><th>state</th><th>labels</th><th>attempt</th><th>created</th><th>took</th><th>script</th></tr></thead>
    <tbody id="builds"></tbody></table>
  </section>
  <section id="detail" hidden>
    <h2><span id="detailTitle"></span><span class="sp"></span><button id="cancel" type="button">cancel</button><button id="retry" type="button">retry</button></h2>
    <div class="kv" id="kv"></div>
    <h2 style="margin-top:10px">Artifacts</h2><ul id="artifacts"></ul>
    <h2>Log <span class="muted" id="logState"></span></h2>
    <pre id="log"></pre>
  </section>
  <section class="wide">
    <h2>Workers</h2>
    <table><thead><tr><th>name</th><th>connection</th><th>status</th><th>labels</th><th>builds</th><th>last seen</th><th></th></tr></thead>
    <tbody id="workers"></tbody></table>
  </section>
</main>
<dialog id="tokenDialog"><form id="tokenForm" method="dialog">
  <p id="tokenMsg"></p>
  <input id="tokenInput" type="password" size="60" autocomplete="off" placeholder="bfa_..." aria-label="API token">
  <button type="submit">save</button>
</form></dialog>
`;

/** The whole page as one HTML string (no external resources). */
export function dashboardHtml(): string {
  return `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>buildfleet</title><style>${STYLE}</style></head>
<body>${BODY}<script>${SCRIPT}</script></body></html>`;
}

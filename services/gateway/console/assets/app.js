// Backlog console: a small single-page app over the REST API.
//
// Rules kept throughout:
//   - Pages are built with DOM calls (el()), never by parsing strings as
//     HTML, so nothing from the API can run as markup or script.
//   - The session token lives in an HttpOnly cookie the page cannot read;
//     this script holds only the CSRF token, in memory.
//   - A secret value typed into a form is sent once and the form is cleared;
//     a one-time credential is shown only from the response that created it,
//     and is gone when the page changes.
'use strict';

(function () {
  const PAGE_SIZE = 20;
  let me = null; // GET /console/session: workspaceId, name, role, csrfToken
  let renderSeq = 0; // drops the results of pages left before they loaded

  // ---------- DOM helpers ----------
  function el(tag, attrs, ...children) {
    const n = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === undefined || v === null || v === false) continue;
      if (k === 'class') n.className = v;
      else if (k === 'text') n.textContent = v;
      else if (k.startsWith('on')) n.addEventListener(k.slice(2), v);
      else if (v === true) n.setAttribute(k, '');
      else n.setAttribute(k, String(v));
    }
    for (const c of children.flat(Infinity)) {
      if (c === undefined || c === null || c === false) continue;
      n.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return n;
  }
  const $ = (id) => document.getElementById(id);
  let uid = 0;
  const newId = (p) => `${p}-${++uid}`;

  function field(label, input, hint) {
    const id = input.id || newId('f');
    input.id = id;
    const hintEl = hint ? el('span', { class: 'hint', id: id + '-hint' }, hint) : null;
    if (hintEl) input.setAttribute('aria-describedby', hintEl.id);
    if (input.type === 'checkbox') {
      return el('div', { class: 'field check' }, input, el('label', { for: id }, label), hintEl);
    }
    return el('div', { class: 'field' }, el('label', { for: id }, label), input, hintEl);
  }
  const textInput = (name, value, extra) => el('input', Object.assign({ type: 'text', name, value: value || '', autocomplete: 'off', spellcheck: 'false' }, extra || {}));

  function announce(msg) {
    const s = $('status');
    s.textContent = msg;
    clearTimeout(announce.t);
    announce.t = setTimeout(() => { s.textContent = ''; }, 6000);
  }

  function fmtTime(ts) {
    if (!ts) return '—';
    const d = new Date(ts);
    if (isNaN(d)) return ts;
    return d.toISOString().replace('T', ' ').replace(/\.\d+Z$/, ' UTC').replace(/Z$/, ' UTC');
  }
  const canWrite = () => me && (me.role === 'owner' || me.role === 'admin');
  const wsPath = () => `/v1/workspaces/${encodeURIComponent(me.workspaceId)}`;

  // ---------- API ----------
  class ApiError extends Error {
    constructor(status, message, body, retryAfter) {
      super(message);
      this.status = status;
      this.body = body;
      this.retryAfter = retryAfter;
    }
  }

  async function request(method, url, body, headers) {
    const h = Object.assign({ Accept: 'application/json' }, headers || {});
    if (body !== undefined) h['Content-Type'] = 'application/json';
    if (method !== 'GET' && me) h['X-CSRF-Token'] = me.csrfToken;
    let r;
    try {
      r = await fetch(url, { method, headers: h, body: body === undefined ? undefined : JSON.stringify(body), credentials: 'same-origin', cache: 'no-store', redirect: 'error' });
    } catch (e) {
      throw new ApiError(0, 'The console could not reach the server. Check that backlogd is running, then try again.');
    }
    const text = await r.text();
    let data = null;
    if (text) { try { data = JSON.parse(text); } catch (e) { data = null; } }
    if (!r.ok) {
      throw new ApiError(r.status, (data && data.message) || r.statusText || 'request failed', data, r.headers.get('Retry-After'));
    }
    return data;
  }

  async function api(method, path, body) {
    try {
      return await request(method, '/console/api' + path, body);
    } catch (e) {
      if (e.status === 401) {
        me = null;
        signInPage(e.message);
        throw new ApiError(401, e.message, null, null, true);
      }
      throw e;
    }
  }

  // explain turns an API error into words a person can act on.
  function explain(e) {
    const m = e.message || 'request failed';
    switch (e.status) {
      case 0: return m;
      case 400: return `Check the form: ${m}`;
      case 401: return `Sign in again: ${m}`;
      case 403: return `Not allowed: ${m}. Only owners and admins can change this; ask one of them.`;
      case 404: return `Not found: ${m}. It may have been deleted; go back to the list.`;
      case 409: return `Conflict: ${m}`;
      case 413: return `Too large: ${m}`;
      case 422: return `Refused: ${m}`;
      case 429: return `Too many requests: ${m}.${e.retryAfter ? ` Try again in ${e.retryAfter} seconds.` : ' Wait a moment and try again.'}`;
      case 501: return `Not available on this server yet: ${m}`;
      default: return `The server could not do this right now (${e.status}): ${m}. Try again shortly.`;
    }
  }
  function errorBox(e) {
    return el('div', { class: 'error', role: 'alert' }, explain(e));
  }
  function showError(where, e) {
    if (e && e.status === 401) return; // the sign-in page is showing
    where.replaceChildren(errorBox(e));
    where.hidden = false;
    where.focus && where.focus();
  }

  // ---------- confirmation dialog ----------
  function confirmDialog(title, body) {
    return new Promise((resolve) => {
      const d = $('confirm');
      $('confirm-title').textContent = title;
      $('confirm-body').replaceChildren(...[].concat(body));
      d.returnValue = '';
      const done = () => { d.removeEventListener('close', done); resolve(d.returnValue === 'ok'); };
      d.addEventListener('close', done);
      d.showModal();
      $('confirm-cancel').focus();
    });
  }

  // ---------- one-time credentials ----------
  function oneTime(what, pairs, ifLost) {
    const box = el('section', { class: 'once', 'aria-label': `New ${what}` },
      el('p', {}, el('strong', {}, `Save the ${what} now: it will not be shown again.`),
        ' Copy it into the place that needs it (a password manager or your CI secret store). ',
        ifLost || 'If you lose it, rotate it to get a new one; the old one then stops working.'));
    for (const [label, value] of pairs) {
      const input = el('input', { type: 'text', readonly: true, value, autocomplete: 'off', spellcheck: 'false', class: 'mono' });
      const id = newId('once');
      input.id = id;
      const btn = el('button', { type: 'button', class: 'secondary', 'aria-label': `Copy ${label}` }, 'Copy');
      btn.addEventListener('click', async () => {
        try {
          await navigator.clipboard.writeText(input.value);
          announce(`${label} copied to the clipboard.`);
        } catch (e) {
          input.select();
          announce('Copying was refused by the browser: the value is selected, press Ctrl+C (⌘C) to copy it.');
        }
      });
      box.append(el('label', { for: id }, label), el('div', { class: 'value' }, input, btn));
    }
    box.append(el('button', { type: 'button', onclick: () => box.remove() }, 'I have saved it'));
    return box;
  }

  // ---------- layout ----------
  const nav = [
    { href: '#/automations', label: 'Automations' },
    { href: '#/agents', label: 'Agents' },
    { href: '#/settings', label: 'Settings', children: [
      { group: 'Integrations', items: [
        { href: '#/secrets/integration', label: 'Secrets', match: '#/secret' },
        { href: '#/connections', label: 'Connections' },
        { href: '#/actions', label: 'Actions' },
      ] },
      { group: 'Workspace', items: [
        { href: '#/members', label: 'Members' },
        { href: '#/audit', label: 'Audit log' },
      ] },
    ] },
  ];

  function renderSidebar() {
    const sb = $('sidebar');
    const here = location.hash || '#/';
    const link = (item) => {
      const current = here === item.href || here.startsWith(item.href + '/') || (item.match && here.startsWith(item.match));
      return el('a', { href: item.href, 'aria-current': current ? 'page' : null }, item.label);
    };
    const list = el('ul', {});
    for (const item of nav) {
      const li = el('li', {}, link(item));
      if (item.children) {
        for (const g of item.children) {
          const gid = newId('grp');
          li.append(el('span', { class: 'group', id: gid }, g.group),
            el('ul', { 'aria-labelledby': gid }, g.items.map((i) => el('li', {}, link(i)))));
        }
      }
      list.append(li);
    }
    const out = el('button', { type: 'button', class: 'secondary signout' }, 'Sign out');
    out.addEventListener('click', signOut);
    sb.replaceChildren(
      el('div', { class: 'brand' }, 'Backlog'),
      el('div', { class: 'who' }, `${me.name || 'Signed in'} · ${me.role}`, el('br'), el('span', { class: 'mono' }, me.workspaceId)),
      list, out);
    sb.hidden = false;
  }

  function page(title, ...children) {
    const main = $('main');
    main.replaceChildren(el('h1', {}, title), ...children);
    document.title = `${title} · Backlog console`;
    return main;
  }

  function loading() { return el('p', { class: 'muted' }, 'Loading…'); }

  // pager renders "Previous page" / "Next page" over a stack of page tokens.
  function pager(state, reload) {
    const p = el('nav', { class: 'pager', 'aria-label': 'Pages' });
    const prev = el('button', { type: 'button', class: 'secondary', disabled: state.stack.length === 0 }, 'Previous page');
    prev.addEventListener('click', () => { state.token = state.stack.pop() || ''; reload(); });
    const next = el('button', { type: 'button', class: 'secondary', disabled: !state.next }, 'Next page');
    next.addEventListener('click', () => { state.stack.push(state.token); state.token = state.next; reload(); });
    p.append(prev, next, el('span', { class: 'muted' }, `Page ${state.stack.length + 1}`));
    return p;
  }
  const newPaging = () => ({ token: '', next: '', stack: [] });
  const q = (params) => {
    const u = new URLSearchParams();
    for (const [k, v] of Object.entries(params)) if (v !== undefined && v !== null && v !== '') u.set(k, v);
    const s = u.toString();
    return s ? '?' + s : '';
  };

  // ---------- sign-in ----------
  function signInPage(message) {
    $('sidebar').hidden = true;
    const err = el('div', { tabindex: '-1' });
    if (message) err.append(el('div', { class: 'error', role: 'alert' }, message));
    const tok = el('input', { type: 'password', name: 'token', autocomplete: 'off', spellcheck: 'false', required: true });
    const form = el('form', { class: 'panel', novalidate: true },
      field('Personal access token', tok, 'Starts with blg_pat_. It is kept in an HttpOnly cookie for this session only, never in the page.'),
      el('button', { type: 'submit' }, 'Sign in'));
    form.addEventListener('submit', async (ev) => {
      ev.preventDefault();
      const token = tok.value.trim();
      tok.value = '';
      if (!token) { showError(err, new ApiError(400, 'token: paste your personal access token')); return; }
      try {
        me = await request('POST', '/console/session', { token });
        afterSignIn();
      } catch (e) { showError(err, e); }
    });
    const main = $('main');
    main.replaceChildren(el('div', { class: 'signin' },
      el('h1', {}, 'Sign in to Backlog'),
      el('p', { class: 'muted' }, 'Paste a personal access token, or run ', el('code', {}, './backlog.sh console'), ' for a one-time sign-in link.'),
      err, form));
    document.title = 'Sign in · Backlog console';
    tok.focus();
  }

  function afterSignIn() {
    if (location.pathname !== '/console/' || !location.hash || location.hash.startsWith('#code=')) {
      history.replaceState(null, '', '/console/#/secrets/integration');
    }
    route();
  }

  async function signOut() {
    let msg = 'You are signed out.';
    try { await request('POST', '/console/session/sign-out'); } catch (e) { if (e.status !== 401) msg = explain(e); }
    me = null;
    history.replaceState(null, '', '/console/');
    signInPage(msg);
  }

  async function redeem(code) {
    // The code leaves the address bar at once: it works only once anyway.
    history.replaceState(null, '', '/console/sign-in');
    try {
      me = await request('POST', '/console/session/redeem', { code });
      afterSignIn();
    } catch (e) {
      signInPage(explain(e));
    }
  }

  // ---------- router ----------
  const routes = [
    [/^#\/?$/, () => { location.replace('#/secrets/integration'); }],
    [/^#\/settings$/, settingsPage],
    [/^#\/secrets$/, () => secretsPage('integration')],
    [/^#\/secrets\/(integration|webhook)$/, (m) => secretsPage(m[1])],
    [/^#\/secrets\/(integration|webhook)\/new$/, (m) => secretForm(m[1])],
    [/^#\/secret\/([^/]+)$/, (m) => secretDetail(decodeURIComponent(m[1]))],
    [/^#\/secret\/([^/]+)\/edit$/, (m) => secretEdit(decodeURIComponent(m[1]))],
    [/^#\/automations$/, automationsPage],
    [/^#\/automations\/new$/, automationCreate],
    [/^#\/automations\/([^/]+)$/, (m) => automationDetail(decodeURIComponent(m[1]))],
    [/^#\/agents$/, agentsPage],
    [/^#\/agents\/new$/, agentCreate],
    [/^#\/agents\/([^/]+)$/, (m) => agentDetail(decodeURIComponent(m[1]))],
    [/^#\/members$/, membersPage],
    [/^#\/audit$/, auditPage],
    [/^#\/connections$/, () => connectionsPage()],
    [/^#\/actions$/, () => actionsPage()],
  ];

  function route() {
    if (!me) return;
    renderSeq++;
    renderSidebar();
    const h = location.hash || '#/';
    for (const [re, fn] of routes) {
      const m = h.match(re);
      if (m) {
        fn(m);
        // A page that focused its first field keeps it; others start at main.
        if (!$('main').contains(document.activeElement) || document.activeElement === document.body) $('main').focus({ preventScroll: true });
        return;
      }
    }
    page('Page not found', el('p', {}, 'There is no such page. ', el('a', { href: '#/settings' }, 'Go to Settings')));
  }

  // guard returns a function that reports whether the page is still the
  // one that started loading.
  function guard() {
    const seq = renderSeq;
    return () => seq === renderSeq;
  }

  // ---------- Settings ----------
  function settingsPage() {
    page('Settings',
      el('h2', {}, 'Integrations'),
      el('ul', {},
        el('li', {}, el('a', { href: '#/secrets/integration' }, 'Secrets'), ' — API keys and webhook secrets that your integrations and actions use without showing them.'),
        el('li', {}, el('a', { href: '#/connections' }, 'Connections'), ' — tools connected with an integration secret.'),
        el('li', {}, el('a', { href: '#/actions' }, 'Actions'), ' — saved HTTP Request steps that use webhook secrets.')),
      el('h2', {}, 'Workspace'),
      el('ul', {},
        el('li', {}, el('a', { href: '#/members' }, 'Members'), ' — people in the workspace and their roles.'),
        el('li', {}, el('a', { href: '#/audit' }, 'Audit log'), ' — who did what, when.')));
  }

  // ---------- Secrets ----------
  const kindTitle = { integration: 'Integration Secrets', webhook: 'Webhook Secrets' };
  const secretPaging = { integration: newPaging(), webhook: newPaging() };

  function tabs(kind) {
    const list = el('div', { role: 'tablist', 'aria-label': 'Secret kinds' });
    const kinds = ['integration', 'webhook'];
    const buttons = kinds.map((k) => {
      const b = el('button', { type: 'button', role: 'tab', id: `tab-${k}`, 'aria-selected': String(k === kind), 'aria-controls': 'secrets-panel', tabindex: k === kind ? '0' : '-1' }, kindTitle[k]);
      b.addEventListener('click', () => { location.hash = `#/secrets/${k}`; });
      b.addEventListener('keydown', (ev) => {
        if (ev.key === 'ArrowRight' || ev.key === 'ArrowLeft') {
          const other = kinds[(kinds.indexOf(k) + 1) % 2];
          location.hash = `#/secrets/${other}`;
          setTimeout(() => { const t = $(`tab-${other}`); t && t.focus(); }, 0);
        }
      });
      return b;
    });
    list.append(...buttons);
    return list;
  }

  function stateBadge(state) { return el('span', { class: `state ${state || ''}` }, state || '—'); }

  async function secretsPage(kind) {
    const alive = guard();
    const panel = el('div', { role: 'tabpanel', id: 'secrets-panel', 'aria-labelledby': `tab-${kind}` });
    const err = el('div', { tabindex: '-1', hidden: true });
    const toolbar = el('div', { class: 'toolbar' }, el('span', { class: 'spacer' }));
    if (canWrite()) toolbar.append(el('a', { class: 'button', href: `#/secrets/${kind}/new`, role: 'button' }, 'Add Secret'));
    page('Secrets', tabs(kind), panel);
    panel.append(toolbar, err, loading());
    const st = secretPaging[kind];
    const load = async () => {
      try {
        const r = await api('GET', `${wsPath()}/secrets${q({ kind, pageSize: PAGE_SIZE, pageToken: st.token })}`);
        if (!alive()) return;
        st.next = r.nextPageToken || '';
        const rows = r.secrets || [];
        const body = [];
        if (rows.length === 0) {
          body.push(el('div', { class: 'empty' }, kind === 'integration'
            ? 'No integration secrets yet. An integration secret holds an API key for a tool (HubSpot, Slack…) so that connections can use it without anyone copying the key around.'
            : 'No webhook secrets yet. A webhook secret holds a signing key or token that actions send in HTTP requests, without the action ever showing it.',
          canWrite() ? ' Click Add Secret to create one.' : ' Ask an owner or admin to add one.'));
        } else {
          body.push(secretsTable(kind, rows, load));
        }
        if (rows.length > 0 || st.stack.length > 0) body.push(pager(st, load));
        panel.replaceChildren(toolbar, err, ...body);
      } catch (e) { if (alive()) { panel.replaceChildren(toolbar, err); showError(err, e); } }
    };
    load();
  }

  function secretsTable(kind, rows, reload) {
    const t = el('table', {}, el('caption', { class: 'sr-only' }, kindTitle[kind]),
      el('thead', {}, el('tr', {},
        el('th', { scope: 'col' }, 'Name'), el('th', { scope: 'col' }, 'Description'), el('th', { scope: 'col' }, 'State'),
        el('th', { scope: 'col' }, 'Expires'), el('th', { scope: 'col' }, 'Last used'),
        canWrite() ? el('th', { scope: 'col' }, 'Actions') : null)));
    const tb = el('tbody');
    for (const s of rows) {
      const tr = el('tr', {},
        el('td', {}, el('a', { href: `#/secret/${encodeURIComponent(s.name)}` }, s.name)),
        el('td', {}, s.description || ''),
        el('td', {}, stateBadge(s.state)),
        el('td', {}, fmtTime(s.expiresAt)),
        el('td', {}, fmtTime(s.lastUsedAt)));
      if (canWrite()) {
        const td = el('td', { class: 'actions' });
        if (s.state !== 'revoked') {
          td.append(el('button', { type: 'button', class: 'secondary', 'aria-label': `Revoke ${s.name}`, onclick: () => revokeSecret(s.name, reload) }, 'Revoke'));
        }
        td.append(el('button', { type: 'button', class: 'danger', 'aria-label': `Delete ${s.name}`, onclick: () => deleteSecret(s.name, kind, reload) }, 'Delete'));
        tr.append(td);
      }
      tb.append(tr);
    }
    t.append(tb);
    return t;
  }

  function dependents(sec) {
    const used = (sec && sec.usedBy) || [];
    if (used.length === 0) return { list: [el('p', {}, 'Nothing references this secret.')], any: false };
    return {
      any: true,
      list: [el('p', {}, 'These use it and will fail until they reference another secret:'),
        el('ul', {}, used.map((u) => el('li', {}, `${u.kind === 'connection' ? 'Connection' : 'Action'} “${u.name}”`)))],
    };
  }

  async function secretFor(name) {
    const r = await api('GET', `${wsPath()}/secrets/${encodeURIComponent(name)}`);
    return r.secret;
  }

  async function revokeSecret(name, after) {
    try {
      const sec = await secretFor(name);
      const dep = dependents(sec);
      const ok = await confirmDialog(`Revoke “${name}”?`, [el('p', {}, 'The secret stops working at once; its record is kept.'), ...dep.list]);
      if (!ok) return;
      await api('POST', `${wsPath()}/secrets/${encodeURIComponent(name)}/revoke${dep.any ? '?force=true' : ''}`);
      announce(`Secret “${name}” revoked.`);
      after();
    } catch (e) { reportAction(e); }
  }

  async function deleteSecret(name, kind, after) {
    try {
      const sec = await secretFor(name);
      const dep = dependents(sec);
      const ok = await confirmDialog(`Delete “${name}”?`, [el('p', {}, 'The secret is removed for good: every use of it fails from now on.'), ...dep.list]);
      if (!ok) return;
      await api('DELETE', `${wsPath()}/secrets/${encodeURIComponent(name)}${dep.any ? '?force=true' : ''}`);
      announce(`Secret “${name}” deleted.`);
      if (after) after(); else location.hash = `#/secrets/${kind}`;
    } catch (e) { reportAction(e); }
  }

  // reportAction shows an error of a row action above the page's content.
  function reportAction(e) {
    if (e && e.status === 401) return;
    const main = $('main');
    const old = main.querySelector(':scope > .error.action');
    if (old) old.remove();
    const box = errorBox(e);
    box.classList.add('action');
    box.setAttribute('tabindex', '-1');
    main.querySelector('h1').after(box);
    box.focus();
  }

  // hostsValue turns the Allowed hosts field into a list.
  const hostsList = (s) => s.split(/[\s,]+/).map((x) => x.trim()).filter(Boolean);
  // dateToRFC3339: the end of the chosen day, UTC.
  const dateToRFC3339 = (d) => (d ? `${d}T23:59:59Z` : undefined);
  const rfcToDate = (ts) => (ts ? new Date(ts).toISOString().slice(0, 10) : '');

  function secretForm(kind) {
    if (!canWrite()) { page('Add Secret', el('p', {}, 'Only owners and admins can add secrets.')); return; }
    const err = el('div', { tabindex: '-1', hidden: true });
    const name = textInput('name', '', { required: true, maxlength: '100' });
    const desc = el('textarea', { name: 'description', maxlength: '1000' });
    const value = el('input', { type: 'password', name: 'value', required: true, autocomplete: 'new-password', spellcheck: 'false' });
    const exp = el('input', { type: 'date', name: 'expiresAt' });
    const hosts = kind === 'webhook' ? el('textarea', { name: 'allowedHosts' }) : null;
    const submit = el('button', { type: 'submit' }, 'Create Secret');
    const form = el('form', { class: 'panel', novalidate: true },
      field('Secret name', name, 'Readable text, up to 100 characters, e.g. “HubSpot API key – production”.'),
      field('Description', desc),
      field('Secret value', value, 'Sent once, stored encrypted, never shown again.'),
      field('Expiration date', exp, 'Optional. The secret stops working at the end of this day (UTC).'),
      hosts ? field('Allowed hosts', hosts, 'Optional. Hosts (or host:port) this secret may be sent to, separated by commas or new lines.') : null,
      el('div', { class: 'toolbar' }, submit, el('a', { class: 'button secondary', href: `#/secrets/${kind}` }, 'Cancel')));
    form.addEventListener('submit', async (ev) => {
      ev.preventDefault();
      const body = { name: name.value.trim(), kind, description: desc.value, value: value.value, expiresAt: dateToRFC3339(exp.value) };
      if (hosts && hostsList(hosts.value).length) body.allowedHosts = hostsList(hosts.value);
      if (!body.name) { showError(err, new ApiError(400, 'name: give the secret a name')); name.focus(); return; }
      if (!body.value) { showError(err, new ApiError(400, 'value: paste the secret value')); value.focus(); return; }
      submit.disabled = true;
      try {
        await api('POST', `${wsPath()}/secrets`, body);
        value.value = '';
        announce(`Secret “${body.name}” created.`);
        location.hash = `#/secrets/${kind}`;
      } catch (e) { value.value = ''; showError(err, e); } finally { submit.disabled = false; }
    });
    page(`Add Secret · ${kindTitle[kind]}`, err, form);
    name.focus();
  }

  async function secretDetail(name) {
    const alive = guard();
    const err = el('div', { tabindex: '-1', hidden: true });
    const main = page(name, err, loading());
    try {
      const s = await secretFor(name);
      if (!alive()) return;
      const kind = s.kind || 'integration';
      const bar = el('div', { class: 'toolbar' }, el('a', { href: `#/secrets/${kind}` }, `← ${kindTitle[kind] || 'Secrets'}`), el('span', { class: 'spacer' }));
      if (canWrite()) {
        bar.append(el('a', { class: 'button', role: 'button', href: `#/secret/${encodeURIComponent(name)}/edit` }, 'Edit Secret'));
        if (s.state !== 'revoked') bar.append(el('button', { type: 'button', class: 'secondary', onclick: () => revokeSecret(name, () => route()) }, 'Revoke'));
        bar.append(el('button', { type: 'button', class: 'danger', onclick: () => deleteSecret(name, kind) }, 'Delete'));
      }
      const dl = el('dl', { class: 'details' });
      const row = (k, v) => dl.append(el('dt', {}, k), el('dd', {}, v));
      row('Kind', kindTitle[kind] || kind);
      row('State', stateBadge(s.state));
      row('Description', s.description || '—');
      row('Expires', fmtTime(s.expiresAt));
      row('Last used', fmtTime(s.lastUsedAt));
      row('Created', fmtTime(s.createdAt));
      row('Updated', fmtTime(s.updatedAt));
      if (s.revokedAt) row('Revoked', fmtTime(s.revokedAt));
      row('Current version', s.version ? String(s.version) : '—');
      if (kind === 'webhook') row('Allowed hosts', (s.allowedHosts || []).length ? el('span', { class: 'chips' }, s.allowedHosts.map((h) => el('span', {}, h))) : 'Any HTTPS host');
      const used = s.usedBy || [];
      row('Used by', used.length ? el('ul', {}, used.map((u) => el('li', {}, `${u.kind === 'connection' ? 'Connection' : 'Action'} “${u.name}”`))) : 'Nothing references this secret.');
      const parts = [bar, err, dl];
      const versions = s.versions || [];
      if (versions.length) {
        const rollback = async (v) => {
          const ok = await confirmDialog(`Roll “${name}” back to version ${v.version}?`, [el('p', {}, `Version ${v.version}'s value becomes current again, as a new version. Everything that uses the secret gets it on its next run.`)]);
          if (!ok) return;
          try {
            await api('POST', `${wsPath()}/secrets/${encodeURIComponent(name)}/rollback`, { version: Number(v.version) });
            announce(`“${name}” rolled back to version ${v.version}.`);
            secretDetail(name);
          } catch (e) { showError(err, e); }
        };
        parts.push(el('h2', {}, 'Versions'), el('table', {},
          el('thead', {}, el('tr', {}, el('th', { scope: 'col' }, 'Version'), el('th', { scope: 'col' }, 'Created'), el('th', { scope: 'col' }, 'Created by'), el('th', { scope: 'col' }, 'Current'),
            canWrite() ? el('th', { scope: 'col' }, 'Actions') : null)),
          el('tbody', {}, versions.map((v) => el('tr', {}, el('td', {}, String(v.version)), el('td', {}, fmtTime(v.createdAt)), el('td', {}, v.createdBy || '—'),
            el('td', {}, [v.current ? 'Current' : '', v.restoredFrom && v.restoredFrom !== '0' ? `restored from ${v.restoredFrom}` : ''].filter(Boolean).join(' · ')),
            canWrite() ? el('td', { class: 'actions' }, v.current || s.state === 'revoked' ? null : el('button', { type: 'button', class: 'secondary', 'aria-label': `Roll back to version ${v.version}`, onclick: () => rollback(v) }, 'Roll back')) : null)))));
      }
      main.replaceChildren(el('h1', {}, name), ...parts);
    } catch (e) { if (alive()) showError(err, e); }
  }

  async function secretEdit(name) {
    const alive = guard();
    const err = el('div', { tabindex: '-1', hidden: true });
    page(`Edit Secret`, err, loading());
    if (!canWrite()) { page('Edit Secret', el('p', {}, 'Only owners and admins can change secrets.')); return; }
    try {
      const s = await secretFor(name);
      if (!alive()) return;
      const desc = el('textarea', { name: 'description', maxlength: '1000' });
      desc.value = s.description || '';
      const value = el('input', { type: 'password', name: 'value', autocomplete: 'new-password', spellcheck: 'false' });
      const exp = el('input', { type: 'date', name: 'expiresAt', value: rfcToDate(s.expiresAt) });
      const hosts = s.kind === 'webhook' ? el('textarea', { name: 'allowedHosts' }) : null;
      if (hosts) hosts.value = (s.allowedHosts || []).join('\n');
      const submit = el('button', { type: 'submit' }, 'Update Secret');
      const form = el('form', { class: 'panel', novalidate: true },
        field('Secret name', textInput('name', name, { readonly: true })),
        field('Description', desc),
        field('Secret value', value, 'Leave empty to keep the current value. A new value is used by everything that references this secret on its next run.'),
        field('Expiration date', exp, 'Optional. Empty: never expires.'),
        hosts ? field('Allowed hosts', hosts, 'Changing the allowed hosts needs a new Secret value too.') : null,
        el('div', { class: 'toolbar' }, submit, el('a', { class: 'button secondary', href: `#/secret/${encodeURIComponent(name)}` }, 'Cancel')));
      form.addEventListener('submit', async (ev) => {
        ev.preventDefault();
        const patch = {};
        if (desc.value !== (s.description || '')) patch.description = desc.value;
        if (value.value) patch.value = value.value;
        const newExp = exp.value ? dateToRFC3339(exp.value) : null;
        if (exp.value !== rfcToDate(s.expiresAt)) patch.expiresAt = newExp;
        if (hosts) {
          const hl = hostsList(hosts.value);
          if (hl.join(',') !== (s.allowedHosts || []).join(',')) patch.allowedHosts = hl;
        }
        value.value = '';
        if (Object.keys(patch).length === 0) { announce('Nothing changed.'); return; }
        submit.disabled = true;
        try {
          await api('PATCH', `${wsPath()}/secrets/${encodeURIComponent(name)}`, patch);
          announce(`Secret “${name}” updated.`);
          location.hash = `#/secret/${encodeURIComponent(name)}`;
        } catch (e) { showError(err, e); } finally { submit.disabled = false; }
      });
      page('Edit Secret', err, form);
      desc.focus();
    } catch (e) { if (alive()) showError(err, e); }
  }

  // ---------- Automations ----------
  const autoPaging = newPaging();
  const splitList = (s) => s.split(/[\s,]+/).map((x) => x.trim()).filter(Boolean);

  async function automationsPage() {
    const alive = guard();
    const err = el('div', { tabindex: '-1', hidden: true });
    const bar = el('div', { class: 'toolbar' }, el('span', { class: 'spacer' }));
    if (canWrite()) bar.append(el('a', { class: 'button', role: 'button', href: '#/automations/new' }, 'Create automation'));
    const main = page('Automations', bar, err, loading());
    const load = async () => {
      try {
        const r = await api('GET', `${wsPath()}/automations${q({ pageSize: PAGE_SIZE, pageToken: autoPaging.token })}`);
        if (!alive()) return;
        autoPaging.next = r.nextPageToken || '';
        const rows = r.automations || [];
        const parts = [];
        if (!rows.length) {
          parts.push(el('div', { class: 'empty' }, 'No automations yet. An automation is a script, CI job or integration that acts in this workspace with its own secret.',
            canWrite() ? ' Click Create automation to make one.' : ' Ask an owner or admin to create one.'));
        } else {
          parts.push(el('table', {},
            el('thead', {}, el('tr', {}, el('th', { scope: 'col' }, 'Name'), el('th', { scope: 'col' }, 'Description'), el('th', { scope: 'col' }, 'Scopes'), el('th', { scope: 'col' }, 'Teams'), el('th', { scope: 'col' }, 'State'), el('th', { scope: 'col' }, 'Secret created'))),
            el('tbody', {}, rows.map((a) => el('tr', {},
              el('td', {}, el('a', { href: `#/automations/${encodeURIComponent(a.id)}` }, a.name)),
              el('td', {}, a.description || ''),
              el('td', { class: 'chips' }, (a.scopes || []).map((s) => el('span', {}, s))),
              el('td', { class: 'chips' }, (a.teamIds || []).map((s) => el('span', {}, s))),
              el('td', {}, stateBadge(a.suspended ? 'suspended' : 'active')),
              el('td', {}, fmtTime(a.credential && a.credential.createdAt)))))));
        }
        if (rows.length || autoPaging.stack.length) parts.push(pager(autoPaging, load));
        main.replaceChildren(el('h1', {}, 'Automations'), bar, err, ...parts);
      } catch (e) { if (alive()) showError(err, e); }
    };
    load();
  }

  function automationFields(a) {
    const f = {
      name: textInput('name', a.name, { required: true }),
      description: el('textarea', { name: 'description' }),
      teamIds: textInput('teamIds', (a.teamIds || []).join(', ')),
      scopes: textInput('scopes', (a.scopes || []).join(', ')),
    };
    f.description.value = a.description || '';
    return f;
  }

  function automationCreate() {
    if (!canWrite()) { page('Create automation', el('p', {}, 'Only owners and admins can create automations.')); return; }
    const err = el('div', { tabindex: '-1', hidden: true });
    const f = automationFields({ scopes: ['automations:read'] });
    const label = textInput('credentialLabel', '');
    const out = el('div');
    const submit = el('button', { type: 'submit' }, 'Create automation');
    const form = el('form', { class: 'panel', novalidate: true },
      field('Name', f.name), field('Description', f.description),
      field('Team boundaries', f.teamIds, 'Team ids, separated by commas. Empty: no team boundary.'),
      field('Scopes', f.scopes, 'resource:action, separated by commas, e.g. automations:read, issues:write.'),
      field('Secret label', label, 'Optional: where the secret will live, e.g. “GitHub Actions”.'),
      el('div', { class: 'toolbar' }, submit, el('a', { class: 'button secondary', href: '#/automations' }, 'Cancel')));
    form.addEventListener('submit', async (ev) => {
      ev.preventDefault();
      submit.disabled = true;
      try {
        const r = await api('POST', `${wsPath()}/automations`, { name: f.name.value.trim(), description: f.description.value, teamIds: splitList(f.teamIds.value), scopes: splitList(f.scopes.value), credentialLabel: label.value.trim() || undefined });
        form.remove();
        out.replaceChildren(
          oneTime('automation secret', [['Automation secret', r.secret]]),
          el('p', {}, 'Exchange it for short-lived access tokens: ', el('code', {}, './backlog.sh auth set-token - && ./backlog.sh auth exchange --save')),
          el('a', { href: `#/automations/${encodeURIComponent(r.automation.id)}` }, `Open “${r.automation.name}”`), ' · ', el('a', { href: '#/automations' }, 'Back to Automations'));
        announce(`Automation “${r.automation.name}” created.`);
      } catch (e) { showError(err, e); } finally { submit.disabled = false; }
    });
    page('Create automation', err, out, form);
    f.name.focus();
  }

  async function automationDetail(id) {
    const alive = guard();
    const err = el('div', { tabindex: '-1', hidden: true });
    const main = page('Automation', err, loading());
    try {
      const r = await api('GET', `${wsPath()}/automations/${encodeURIComponent(id)}`);
      if (!alive()) return;
      const a = r.automation;
      const out = el('div');
      const dl = el('dl', { class: 'details' });
      const row = (k, v) => dl.append(el('dt', {}, k), el('dd', {}, v));
      row('Id', el('span', { class: 'mono' }, a.id));
      row('State', stateBadge(a.suspended ? 'suspended' : 'active'));
      row('Description', a.description || '—');
      row('Scopes', el('span', { class: 'chips' }, (a.scopes || []).map((s) => el('span', {}, s))));
      row('Team boundaries', (a.teamIds || []).length ? el('span', { class: 'chips' }, a.teamIds.map((s) => el('span', {}, s))) : 'None');
      row('Secret', a.credential ? `${a.credential.label || 'unlabelled'} · created ${fmtTime(a.credential.createdAt)}` : '—');
      row('Created', fmtTime(a.createdAt));
      row('Updated', fmtTime(a.updatedAt));
      const parts = [el('div', { class: 'toolbar' }, el('a', { href: '#/automations' }, '← Automations')), err, out, dl];
      if (canWrite()) {
        const rot = el('button', { type: 'button' }, 'Rotate secret');
        rot.addEventListener('click', async () => {
          const ok = await confirmDialog(`Rotate the secret of “${a.name}”?`, [el('p', {}, 'A new secret is issued and the current one stops working at once, with every access token made from it.')]);
          if (!ok) return;
          try {
            const rr = await api('POST', `${wsPath()}/automations/${encodeURIComponent(id)}/rotate-secret`, {});
            out.replaceChildren(oneTime('automation secret', [['Automation secret', rr.secret]]));
            announce('Secret rotated.');
            out.querySelector('input').focus();
          } catch (e) { showError(err, e); }
        });
        const del = el('button', { type: 'button', class: 'danger' }, 'Delete');
        del.addEventListener('click', async () => {
          const ok = await confirmDialog(`Delete “${a.name}”?`, [el('p', {}, 'Its secret and every access token made from it stop working at once.')]);
          if (!ok) return;
          try {
            await api('DELETE', `${wsPath()}/automations/${encodeURIComponent(id)}`);
            announce(`Automation “${a.name}” deleted.`);
            location.hash = '#/automations';
          } catch (e) { showError(err, e); }
        });
        parts.splice(1, 0, el('div', { class: 'toolbar' }, rot, del));
        const f = automationFields(a);
        const susp = el('input', { type: 'checkbox', name: 'suspended', checked: !!a.suspended });
        const submit = el('button', { type: 'submit' }, 'Update automation');
        const form = el('form', { class: 'panel', novalidate: true }, el('h2', {}, 'Edit automation'),
          field('Name', f.name), field('Description', f.description),
          field('Team boundaries', f.teamIds, 'Team ids, separated by commas.'),
          field('Scopes', f.scopes, 'resource:action, separated by commas.'),
          field('Suspended', susp, 'A suspended automation’s secret and tokens are refused until it is resumed.'),
          submit);
        form.addEventListener('submit', async (ev) => {
          ev.preventDefault();
          const patch = {};
          if (f.name.value.trim() !== a.name) patch.name = f.name.value.trim();
          if (f.description.value !== (a.description || '')) patch.description = f.description.value;
          const teams = splitList(f.teamIds.value), scopes = splitList(f.scopes.value);
          if (teams.join(',') !== (a.teamIds || []).join(',')) patch.teamIds = teams;
          if (scopes.join(',') !== (a.scopes || []).join(',')) patch.scopes = scopes;
          if (susp.checked !== !!a.suspended) patch.suspended = susp.checked;
          if (!Object.keys(patch).length) { announce('Nothing changed.'); return; }
          submit.disabled = true;
          try {
            await api('PATCH', `${wsPath()}/automations/${encodeURIComponent(id)}`, patch);
            announce('Automation updated.');
            automationDetail(id);
          } catch (e) { showError(err, e); } finally { submit.disabled = false; }
        });
        parts.push(form);
      }
      main.replaceChildren(el('h1', {}, a.name), ...parts);
    } catch (e) { if (alive()) showError(err, e); }
  }

  // ---------- Agents ----------
  const agentPaging = newPaging();

  async function agentsPage() {
    const alive = guard();
    const err = el('div', { tabindex: '-1', hidden: true });
    const bar = el('div', { class: 'toolbar' }, el('span', { class: 'spacer' }));
    if (canWrite()) bar.append(el('a', { class: 'button', role: 'button', href: '#/agents/new' }, 'Create agent'));
    const main = page('Agents', bar, err, loading());
    const load = async () => {
      try {
        const [inst, ag] = await Promise.all([
          api('GET', `${wsPath()}/installations${q({ pageSize: 100 })}`),
          api('GET', `${wsPath()}/agents${q({ pageSize: PAGE_SIZE, pageToken: agentPaging.token })}`),
        ]);
        if (!alive()) return;
        agentPaging.next = ag.nextPageToken || '';
        const installs = inst.installations || [];
        const names = Object.fromEntries(installs.map((i) => [i.id, i.name]));
        const parts = [el('h2', {}, 'Visible agents')];
        const rows = ag.agents || [];
        if (!rows.length) {
          parts.push(el('div', { class: 'empty' }, 'No visible agents yet. An agent acts in the product under an app installation with its own API key.',
            canWrite() ? (installs.length ? ' Click Create agent to register one.' : ' Add an installation below first, then click Create agent.') : ' Ask an owner or admin to register one.'));
        } else {
          parts.push(el('table', {},
            el('thead', {}, el('tr', {}, el('th', { scope: 'col' }, 'Name'), el('th', { scope: 'col' }, 'Installation'), el('th', { scope: 'col' }, 'Role'), el('th', { scope: 'col' }, 'Teams'), el('th', { scope: 'col' }, 'State'), el('th', { scope: 'col' }, 'Key rotated'))),
            el('tbody', {}, rows.map((a) => el('tr', {},
              el('td', {}, el('a', { href: `#/agents/${encodeURIComponent(a.id)}` }, a.name)),
              el('td', {}, names[a.installationId] || a.installationId),
              el('td', {}, a.role || ''),
              el('td', { class: 'chips' }, (a.teamIds || []).map((s) => el('span', {}, s))),
              el('td', {}, stateBadge(a.revoked ? 'revoked' : a.suspended ? 'suspended' : 'active')),
              el('td', {}, fmtTime(a.keyRotatedAt)))))));
        }
        if (rows.length || agentPaging.stack.length) parts.push(pager(agentPaging, load));
        parts.push(el('h2', {}, 'Installations'));
        if (!installs.length) parts.push(el('div', { class: 'empty' }, 'No app installations yet.', canWrite() ? ' Add one below: agents hang under an installation.' : ''));
        else parts.push(el('table', {}, el('thead', {}, el('tr', {}, el('th', { scope: 'col' }, 'Name'), el('th', { scope: 'col' }, 'App id'), el('th', { scope: 'col' }, 'Created'))),
          el('tbody', {}, installs.map((i) => el('tr', {}, el('td', {}, i.name), el('td', {}, i.appId || '—'), el('td', {}, fmtTime(i.createdAt)))))));
        if (canWrite()) {
          const n = textInput('installationName', '', { required: true });
          const app = textInput('appId', '');
          const ierr = el('div', { tabindex: '-1', hidden: true });
          const f = el('form', { class: 'panel', novalidate: true }, ierr, field('Installation name', n), field('App id', app, 'Optional.'), el('button', { type: 'submit' }, 'Add installation'));
          f.addEventListener('submit', async (ev) => {
            ev.preventDefault();
            try {
              await api('POST', `${wsPath()}/installations`, { name: n.value.trim(), appId: app.value.trim() || undefined });
              announce('Installation added.');
              load();
            } catch (e) { showError(ierr, e); }
          });
          parts.push(f);
        }
        main.replaceChildren(el('h1', {}, 'Agents'), bar, err, ...parts);
      } catch (e) { if (alive()) showError(err, e); }
    };
    load();
  }

  async function agentCreate() {
    if (!canWrite()) { page('Create agent', el('p', {}, 'Only owners and admins can register agents.')); return; }
    const alive = guard();
    const err = el('div', { tabindex: '-1', hidden: true });
    page('Create agent', err, loading());
    try {
      const inst = await api('GET', `${wsPath()}/installations${q({ pageSize: 100 })}`);
      if (!alive()) return;
      const installs = inst.installations || [];
      if (!installs.length) {
        page('Create agent', el('div', { class: 'empty' }, 'An agent needs an app installation. ', el('a', { href: '#/agents' }, 'Add an installation on the Agents page'), ' first.'));
        return;
      }
      const sel = el('select', { name: 'installation' }, installs.map((i) => el('option', { value: i.id }, i.name)));
      const name = textInput('name', '', { required: true });
      const teams = textInput('teamIds', '');
      const role = el('select', { name: 'role' }, el('option', { value: 'member' }, 'member'), el('option', { value: 'admin' }, 'admin'));
      const out = el('div');
      const submit = el('button', { type: 'submit' }, 'Create agent');
      const form = el('form', { class: 'panel', novalidate: true },
        field('Installation', sel), field('Name', name), field('Team scope', teams, 'Team ids, separated by commas.'), field('Role', role, 'Sets its control-plane scopes like a person’s role.'),
        el('div', { class: 'toolbar' }, submit, el('a', { class: 'button secondary', href: '#/agents' }, 'Cancel')));
      form.addEventListener('submit', async (ev) => {
        ev.preventDefault();
        submit.disabled = true;
        try {
          const r = await api('POST', `${wsPath()}/installations/${encodeURIComponent(sel.value)}/agents`, { name: name.value.trim(), teamIds: splitList(teams.value), role: role.value });
          form.remove();
          out.replaceChildren(oneTime('API key and rotation secret', [['API key', r.apiKey], ['Rotation secret', r.rotationSecret]]),
            el('p', {}, 'Give both to the agent. It can rotate them itself with the rotation secret.'),
            el('a', { href: `#/agents/${encodeURIComponent(r.agent.id)}` }, `Open “${r.agent.name}”`), ' · ', el('a', { href: '#/agents' }, 'Back to Agents'));
          announce(`Agent “${r.agent.name}” created.`);
        } catch (e) { showError(err, e); } finally { submit.disabled = false; }
      });
      page('Create agent', err, out, form);
      name.focus();
    } catch (e) { if (alive()) showError(err, e); }
  }

  async function agentDetail(id) {
    const alive = guard();
    const err = el('div', { tabindex: '-1', hidden: true });
    const main = page('Agent', err, loading());
    try {
      const r = await api('GET', `${wsPath()}/agents/${encodeURIComponent(id)}`);
      if (!alive()) return;
      const a = r.agent;
      const out = el('div');
      const dl = el('dl', { class: 'details' });
      const row = (k, v) => dl.append(el('dt', {}, k), el('dd', {}, v));
      row('Id', el('span', { class: 'mono' }, a.id));
      row('State', stateBadge(a.revoked ? 'revoked' : a.suspended ? 'suspended' : 'active'));
      row('Role', a.role || '—');
      row('Team scope', (a.teamIds || []).length ? el('span', { class: 'chips' }, a.teamIds.map((s) => el('span', {}, s))) : 'None');
      row('Installation', el('span', { class: 'mono' }, a.installationId));
      row('Key rotated', fmtTime(a.keyRotatedAt));
      row('Created', fmtTime(a.createdAt));
      const parts = [el('div', { class: 'toolbar' }, el('a', { href: '#/agents' }, '← Agents')), err, out, dl];
      if (canWrite() && !a.revoked) {
        const rot = el('button', { type: 'button' }, 'Rotate key');
        rot.addEventListener('click', async () => {
          const ok = await confirmDialog(`Rotate the key of “${a.name}”?`, [el('p', {}, 'A new API key and rotation secret are issued; the current pair stops working at once. Use this when both have leaked.')]);
          if (!ok) return;
          try {
            const rr = await api('POST', `${wsPath()}/agents/${encodeURIComponent(id)}/rotate-key`, {});
            out.replaceChildren(oneTime('API key and rotation secret', [['API key', rr.apiKey], ['Rotation secret', rr.rotationSecret]]));
            announce('Key rotated.');
            out.querySelector('input').focus();
          } catch (e) { showError(err, e); }
        });
        const rev = el('button', { type: 'button', class: 'danger' }, 'Revoke');
        rev.addEventListener('click', async () => {
          const ok = await confirmDialog(`Revoke “${a.name}”?`, [el('p', {}, 'Its API key and rotation secret stop working for good. This cannot be undone.')]);
          if (!ok) return;
          try {
            await api('POST', `${wsPath()}/agents/${encodeURIComponent(id)}/revoke`, {});
            announce(`Agent “${a.name}” revoked.`);
            agentDetail(id);
          } catch (e) { showError(err, e); }
        });
        parts.splice(1, 0, el('div', { class: 'toolbar' }, rot, rev));
        const name = textInput('name', a.name);
        const teams = textInput('teamIds', (a.teamIds || []).join(', '));
        const role = el('select', { name: 'role' }, ['member', 'admin'].map((x) => el('option', { value: x, selected: x === a.role }, x)));
        const susp = el('input', { type: 'checkbox', name: 'suspended', checked: !!a.suspended });
        const submit = el('button', { type: 'submit' }, 'Update agent');
        const form = el('form', { class: 'panel', novalidate: true }, el('h2', {}, 'Edit agent'),
          field('Name', name), field('Team scope', teams, 'Team ids, separated by commas.'), field('Role', role), field('Suspended', susp), submit);
        form.addEventListener('submit', async (ev) => {
          ev.preventDefault();
          const patch = {};
          if (name.value.trim() !== a.name) patch.name = name.value.trim();
          const tl = splitList(teams.value);
          if (tl.join(',') !== (a.teamIds || []).join(',')) patch.teamIds = tl;
          if (role.value !== a.role) patch.role = role.value;
          if (susp.checked !== !!a.suspended) patch.suspended = susp.checked;
          if (!Object.keys(patch).length) { announce('Nothing changed.'); return; }
          submit.disabled = true;
          try {
            await api('PATCH', `${wsPath()}/agents/${encodeURIComponent(id)}`, patch);
            announce('Agent updated.');
            agentDetail(id);
          } catch (e) { showError(err, e); } finally { submit.disabled = false; }
        });
        parts.push(form);
      }
      main.replaceChildren(el('h1', {}, a.name), ...parts);
    } catch (e) { if (alive()) showError(err, e); }
  }

  // ---------- Members ----------
  const memberPaging = newPaging();

  async function membersPage() {
    const alive = guard();
    const err = el('div', { tabindex: '-1', hidden: true });
    const out = el('div');
    const main = page('Members', err, loading());
    const load = async () => {
      try {
        const r = await api('GET', `${wsPath()}/members${q({ pageSize: PAGE_SIZE, pageToken: memberPaging.token })}`);
        if (!alive()) return;
        memberPaging.next = r.nextPageToken || '';
        const rows = r.members || [];
        const t = el('table', {},
          el('thead', {}, el('tr', {}, el('th', { scope: 'col' }, 'Name'), el('th', { scope: 'col' }, 'Email'), el('th', { scope: 'col' }, 'Role'), el('th', { scope: 'col' }, 'Added'), canWrite() ? el('th', { scope: 'col' }, 'Actions') : null)),
          el('tbody', {}, rows.map((m) => {
            const tr = el('tr', {}, el('td', {}, m.name, m.id === me.subjectId ? ' (you)' : ''), el('td', {}, m.email || '—'));
            if (canWrite() && m.id !== me.subjectId) {
              const sel = el('select', { 'aria-label': `Role of ${m.name}` }, ['owner', 'admin', 'member'].map((x) => el('option', { value: x, selected: x === m.role }, x)));
              sel.addEventListener('change', async () => {
                try {
                  await api('PATCH', `${wsPath()}/members/${encodeURIComponent(m.id)}`, { role: sel.value });
                  announce(`${m.name} is now ${sel.value}.`);
                } catch (e) { sel.value = m.role; showError(err, e); }
              });
              tr.append(el('td', {}, sel), el('td', {}, fmtTime(m.createdAt)));
              const rm = el('button', { type: 'button', class: 'danger', 'aria-label': `Remove ${m.name}` }, 'Remove');
              rm.addEventListener('click', async () => {
                if (!(await confirmDialog(`Remove ${m.name}?`, [el('p', {}, 'Their personal access token stops working at once.')]))) return;
                try { await api('DELETE', `${wsPath()}/members/${encodeURIComponent(m.id)}`); announce(`${m.name} removed.`); load(); } catch (e) { showError(err, e); }
              });
              tr.append(el('td', { class: 'actions' }, rm));
            } else {
              tr.append(el('td', {}, m.role), el('td', {}, fmtTime(m.createdAt)));
              if (canWrite()) tr.append(el('td', {}));
            }
            return tr;
          })));
        const parts = [out, t, pager(memberPaging, load)];
        if (canWrite()) {
          const n = textInput('name', '', { required: true });
          const em = el('input', { type: 'email', name: 'email', autocomplete: 'off' });
          const role = el('select', { name: 'role' }, ['member', 'admin', 'owner'].map((x) => el('option', { value: x }, x)));
          const f = el('form', { class: 'panel', novalidate: true }, el('h2', {}, 'Add member'), field('Display name', n), field('Email', em, 'Optional.'), field('Role', role), el('button', { type: 'submit' }, 'Add member'));
          f.addEventListener('submit', async (ev) => {
            ev.preventDefault();
            try {
              const rr = await api('POST', `${wsPath()}/members`, { name: n.value.trim(), email: em.value.trim() || undefined, role: role.value });
              out.replaceChildren(oneTime('personal access token', [[`Personal access token of ${rr.member.name}`, rr.token]], 'If it is lost, remove the member and add them again: the old token then stops working.'),
                el('p', {}, 'Give it to them privately: it signs them in to the console and the CLI.'));
              n.value = ''; em.value = '';
              await load();
            } catch (e) { showError(err, e); }
          });
          parts.push(f);
        }
        main.replaceChildren(el('h1', {}, 'Members'), err, ...parts);
      } catch (e) { if (alive()) showError(err, e); }
    };
    load();
  }

  // ---------- Audit log ----------
  const auditState = { paging: newPaging(), action: '', target: '', from: '', to: '' };

  async function auditPage() {
    const alive = guard();
    const err = el('div', { tabindex: '-1', hidden: true });
    const action = textInput('action', auditState.action);
    const target = textInput('target', auditState.target);
    const from = el('input', { type: 'datetime-local', name: 'from', value: auditState.from });
    const to = el('input', { type: 'datetime-local', name: 'to', value: auditState.to });
    const f = el('form', { class: 'panel', novalidate: true, 'aria-label': 'Filters' },
      el('div', { class: 'grid2' }, field('Action', action, 'e.g. secret.create, automation.rotate_secret'), field('Target', target, 'The id or name of what was acted on.'),
        field('From', from, 'UTC'), field('To', to, 'UTC')), el('button', { type: 'submit' }, 'Apply filters'));
    const results = el('div', {}, loading());
    const main = page('Audit log', f, err, results);
    const iso = (v) => (v ? new Date(v + 'Z').toISOString() : '');
    const load = async () => {
      try {
        const st = auditState;
        const r = await api('GET', `${wsPath()}/audit-events${q({ action: st.action, targetId: st.target, startTime: iso(st.from), endTime: iso(st.to), pageSize: PAGE_SIZE, pageToken: st.paging.token })}`);
        if (!alive()) return;
        st.paging.next = r.nextPageToken || '';
        const rows = r.auditEvents || [];
        const parts = [];
        if (!rows.length) parts.push(el('div', { class: 'empty' }, 'No events match these filters. Clear a filter or widen the time range.'));
        else parts.push(el('div', { class: 'scroll', tabindex: '0', role: 'region', 'aria-label': 'Audit events' }, el('table', {},
          el('thead', {}, el('tr', {}, ['Time', 'Action', 'Actor', 'Target', 'Outcome', 'Client IP', 'Request id'].map((h) => el('th', { scope: 'col' }, h)))),
          el('tbody', {}, rows.map((ev) => el('tr', {},
            el('td', {}, fmtTime(ev.time)), el('td', { class: 'mono keep' }, ev.action),
            el('td', {}, `${ev.actorKind || ''} ${ev.actorId || ''}`), el('td', {}, `${ev.targetKind || ''} ${ev.targetId || ''}`),
            el('td', {}, ev.outcome || ''), el('td', { class: 'mono' }, ev.clientIp || ''), el('td', { class: 'mono' }, ev.requestId || '')))))));
        if (rows.length || st.paging.stack.length) parts.push(pager(st.paging, load));
        results.replaceChildren(...parts);
      } catch (e) { if (alive()) { results.replaceChildren(); showError(err, e); } }
    };
    f.addEventListener('submit', (ev) => {
      ev.preventDefault();
      Object.assign(auditState, { action: action.value.trim(), target: target.value.trim(), from: from.value, to: to.value, paging: newPaging() });
      err.hidden = true;
      load();
    });
    load();
    return main;
  }

  // ---------- Connections and actions ----------
  function simpleList(opts) {
    const paging = newPaging();
    return async function () {
      const alive = guard();
      const err = el('div', { tabindex: '-1', hidden: true });
      const main = page(opts.title, err, loading());
      const load = async () => {
        try {
          const r = await api('GET', `${wsPath()}/${opts.path}${q({ pageSize: PAGE_SIZE, pageToken: paging.token })}`);
          if (!alive()) return;
          paging.next = r.nextPageToken || '';
          const rows = r[opts.field] || [];
          const parts = [];
          if (!rows.length) parts.push(el('div', { class: 'empty' }, opts.empty, canWrite() ? ' Use the form below to add one.' : ''));
          else parts.push(el('table', {},
            el('thead', {}, el('tr', {}, opts.columns.map((c) => el('th', { scope: 'col' }, c[0])), canWrite() ? el('th', { scope: 'col' }, 'Actions') : null)),
            el('tbody', {}, rows.map((x) => {
              const tr = el('tr', {}, opts.columns.map((c) => el('td', {}, c[1](x))));
              if (canWrite()) {
                const del = el('button', { type: 'button', class: 'danger', 'aria-label': `Delete ${x.name}` }, 'Delete');
                del.addEventListener('click', async () => {
                  if (!(await confirmDialog(`Delete “${x.name}”?`, [el('p', {}, opts.deleteText)]))) return;
                  try { await api('DELETE', `${wsPath()}/${opts.path}/${encodeURIComponent(x.id)}`); announce(`“${x.name}” deleted.`); load(); } catch (e) { showError(err, e); }
                });
                tr.append(el('td', { class: 'actions' }, del));
              }
              return tr;
            }))));
          if (rows.length || paging.stack.length) parts.push(pager(paging, load));
          if (canWrite()) parts.push(opts.form(err, load));
          main.replaceChildren(el('h1', {}, opts.title), err, ...parts);
        } catch (e) { if (alive()) showError(err, e); }
      };
      load();
    };
  }

  const connectionsPage = simpleList({
    title: 'Connections', path: 'connections', field: 'connections',
    empty: 'No connections yet. A connection links a tool (HubSpot, Slack…) to an integration secret, so nobody handles the raw key.',
    deleteText: 'The connection is removed; the secret it used stays.',
    columns: [['Name', (c) => c.name], ['Integration', (c) => c.integration], ['Secret', (c) => el('a', { href: `#/secret/${encodeURIComponent(c.secretName)}` }, c.secretName)], ['Description', (c) => c.description || '']],
    form: (err, load) => {
      const n = textInput('name', '', { required: true });
      const i = textInput('integration', '', { required: true });
      const s = textInput('secretName', '', { required: true });
      const d = el('textarea', { name: 'description' });
      const f = el('form', { class: 'panel', novalidate: true }, el('h2', {}, 'Add connection'), field('Name', n), field('Integration', i, 'e.g. hubspot'), field('Secret name', s, 'An integration secret, by name.'), field('Description', d), el('button', { type: 'submit' }, 'Add connection'));
      f.addEventListener('submit', async (ev) => {
        ev.preventDefault();
        try { await api('POST', `${wsPath()}/connections`, { name: n.value.trim(), integration: i.value.trim(), secretName: s.value.trim(), description: d.value }); announce('Connection added.'); load(); } catch (e) { showError(err, e); }
      });
      return f;
    },
  });

  const actionsPage = simpleList({
    title: 'Actions', path: 'actions', field: 'actions',
    empty: 'No actions yet. An action is a saved HTTP Request step; its headers reference webhook secrets as {secret:name}.',
    deleteText: 'The saved step is removed; the secrets it used stay.',
    columns: [['Name', (a) => a.name], ['Request', (a) => el('span', { class: 'mono' }, `${a.method} ${a.url}`)], ['Secrets', (a) => el('span', { class: 'chips' }, (a.secretNames || []).map((s) => el('span', {}, s)))], ['Description', (a) => a.description || '']],
    form: (err, load) => {
      const n = textInput('name', '', { required: true });
      const m = el('select', { name: 'method' }, ['POST', 'GET', 'PUT', 'PATCH', 'DELETE'].map((x) => el('option', { value: x }, x)));
      const u = textInput('url', '', { required: true, placeholder: 'https://' });
      const hd = el('textarea', { name: 'headers', placeholder: 'Authorization: Bearer {secret:My webhook secret}' });
      const b = el('textarea', { name: 'body' });
      const f = el('form', { class: 'panel', novalidate: true }, el('h2', {}, 'Add action'), field('Name', n), field('Method', m), field('URL', u), field('Headers', hd, 'One “Name: value” per line; reference webhook secrets as {secret:name}.'), field('Body', b), el('button', { type: 'submit' }, 'Add action'));
      f.addEventListener('submit', async (ev) => {
        ev.preventDefault();
        const headers = {};
        for (const line of hd.value.split('\n')) {
          const i = line.indexOf(':');
          if (i > 0) headers[line.slice(0, i).trim()] = line.slice(i + 1).trim();
        }
        try { await api('POST', `${wsPath()}/actions`, { name: n.value.trim(), method: m.value, url: u.value.trim(), headers, body: b.value }); announce('Action added.'); load(); } catch (e) { showError(err, e); }
      });
      return f;
    },
  });

  // ---------- start ----------
  async function start() {
    $('skip').addEventListener('click', (ev) => { ev.preventDefault(); $('main').focus(); });
    // Links styled as buttons act on Space too, as buttons do.
    document.addEventListener('keydown', (ev) => {
      const t = ev.target;
      if (ev.key === ' ' && t instanceof HTMLAnchorElement && t.getAttribute('role') === 'button') { ev.preventDefault(); t.click(); }
    });
    window.addEventListener('hashchange', () => { if (me) route(); });
    const frag = new URLSearchParams(location.hash.slice(1));
    if (location.pathname === '/console/sign-in' && frag.get('code')) {
      await redeem(frag.get('code'));
      return;
    }
    try {
      me = await request('GET', '/console/session');
    } catch (e) {
      signInPage(e.status === 401 && e.message !== 'not signed in' ? e.message : '');
      return;
    }
    if (location.pathname !== '/console/') history.replaceState(null, '', '/console/' + location.hash);
    route();
  }

  document.addEventListener('DOMContentLoaded', start);
})();

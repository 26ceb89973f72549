// autoheal's fleet view. Reads only: GET /api/* (each one read RPC of FleetService) and one
// EventSource on /api/events (WatchEvents). On load, and after the coordinator comes back, it
// reads status, instances and actions once; after that each fleet event refreshes only what it
// touches: the one instance it names (GET /api/instance/ID) and the small fleet status.
'use strict';

// The coordinator's defaults (policy::GuardrailConfig); a guardrail's reason names the live value
// when it holds, and that one is drawn instead (solid).
const DEFAULTS = { minHealthy: 66, anomaly: 30, dependency: 20 };
const LADDER = ['restart', 'deregister', 'drain', 'replace', 'verify'];
const KEEP_EVENTS = 1000;
const FINISHED_SHOWN_MS = 10 * 60 * 1000;

const state = {
  status: null,
  instances: new Map(), // id -> summary
  details: new Map(), // id -> instance detail
  actions: new Map(), // action id -> action
  enrollments: new Map(), // instance id -> enrollment (certificate expiry)
  enrollNote: 'loading', // why there is no enrollment to show
  events: [], // fleet events, oldest first
  seen: new Set(), // event ids (the ui server's)
  link: { reachable: false, error: 'connecting' },
  pageUp: true,
  selected: null,
  thresholds: new Map(), // "asg" or "asg/az" -> {minHealthy, anomaly, dependency}
};

// ---- helpers ---------------------------------------------------------------------------------

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === 'class') e.className = v;
    else if (k === 'text') e.textContent = v;
    // Through the CSSOM: the page's CSP forbids inline style attributes.
    else if (k === 'style') Object.assign(e.style, v);
    else if (k.startsWith('on')) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v === true ? '' : v);
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return e;
}

function replace(id, ...children) {
  const node = document.getElementById(id);
  node.replaceChildren(...children.flat());
  return node;
}

async function getJSON(path) {
  const r = await fetch(path, { cache: 'no-store' });
  const body = await r.json().catch(() => ({}));
  if (!r.ok) {
    const err = new Error(body.error || `${path}: HTTP ${r.status}`);
    err.status = r.status;
    throw err;
  }
  return body;
}

function ms(t) {
  const v = Date.parse(t);
  return Number.isNaN(v) ? null : v;
}

function ago(t) {
  const v = typeof t === 'number' ? t : ms(t);
  if (v === null) return '-';
  return human(Date.now() - v);
}

function human(d) {
  const s = Math.max(0, Math.round(d / 1000));
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m${String(s % 60).padStart(2, '0')}s`;
  return `${Math.floor(s / 3600)}h${String(Math.floor((s % 3600) / 60)).padStart(2, '0')}m`;
}

// "1h2m3s", "5m", "300ms" as policy::HumanDuration prints them, in ms.
function parseDuration(s) {
  let total = 0;
  let matched = false;
  for (const [, n, unit] of s.matchAll(/(\d+(?:\.\d+)?)(ms|h|m|s)/g)) {
    matched = true;
    const f = { h: 3600e3, m: 60e3, s: 1e3, ms: 1 }[unit];
    total += Number(n) * f;
  }
  return matched ? total : null;
}

// Long reasons (a hold lists every guardrail) in full on hover.
function short(text, n = 110) {
  return text.length > n ? `${text.slice(0, n - 1)}…` : text;
}

function groupName(name) {
  return name === '' ? '(no asg)' : name;
}

// ---- what the guardrails say -----------------------------------------------------------------

function allGuardrails() {
  const out = [];
  for (const g of (state.status && state.status.groups) || []) {
    for (const r of g.guardrails) out.push({ asg: g.name, ...r });
  }
  return out;
}

function isBrake(name) {
  return /brake/.test(name);
}

// Thresholds a guardrail's reason names, by where they apply.
function learnThresholds() {
  for (const g of allGuardrails()) {
    const where = g.asg;
    const t = state.thresholds.get(where) || {};
    let m;
    if ((m = /minimum (\d+)%/.exec(g.reason))) t.minHealthy = Number(m[1]);
    if (/anomaly/.test(g.name) && (m = /limit (\d+)%/.exec(g.reason))) t.anomaly = Number(m[1]);
    if (/dependency_brake|dependency brake/.test(g.name + g.reason) && (m = /limit (\d+)%/.exec(g.reason))) {
      t.dependency = Number(m[1]);
    }
    state.thresholds.set(where, t);
  }
}

function threshold(asg, key) {
  const t = state.thresholds.get(asg) || {};
  return t[key] !== undefined ? { value: t[key], live: true } : { value: DEFAULTS[key], live: false };
}

// ---- remediations, from the events and the journal -------------------------------------------

function rungOfStep(step) {
  if (/^(ssm|SSM)/.test(step)) return 'restart';
  if (/^deregister/.test(step)) return 'deregister';
  if (/^drain/.test(step)) return 'drain';
  if (/^(replace|terminate)/.test(step)) return 'replace';
  return null;
}

// Per instance, the last run of its ladder: opened by a decision, an action or a hold, closed by
// remediation-finished. The API has no rung field; the action events name the step.
function remediations() {
  const byInstance = new Map();
  const opening = { decision: 'decided', action: 'acting', 'action-succeeded': 'succeeded',
    'action-failed': 'failed', guardrail: 'held' };
  for (const e of state.events) {
    if (!e.instance_id) continue;
    let r = byInstance.get(e.instance_id);
    if (opening[e.kind]) {
      if (!r || r.finishedAt) {
        r = { instance: e.instance_id, asg: e.asg, rung: null, startedAt: e.at, finishedAt: null };
        byInstance.set(e.instance_id, r);
      }
      // After a replacement was requested the ladder is verifying; later holds are about a
      // further step and do not move it back.
      if (r.verifying && e.kind === 'guardrail') {
        r.why = `verifying; a further step is held: ${e.message}`;
        continue;
      }
      const rung = rungOfStep(e.message.replace(/^would /, ''));
      if (rung) r.rung = rung;
      r.held = e.kind === 'guardrail';
      r.state = opening[e.kind];
      r.verifying = e.kind === 'action-succeeded' && rung === 'replace';
      r.why = e.message;
    } else if (e.kind === 'remediation-finished' && r && !r.finishedAt) {
      r.finishedAt = e.at;
      r.verifying = false;
      r.held = false;
      r.state = 'finished';
      r.why = e.message;
    }
  }
  const now = Date.now();
  return [...byInstance.values()]
    .filter((r) => !r.finishedAt || now - (ms(r.finishedAt) || 0) < FINISHED_SHOWN_MS)
    .sort((a, b) => (ms(b.startedAt) || 0) - (ms(a.startedAt) || 0));
}

function ladder(r) {
  const at = r.verifying ? 'verify' : r.rung;
  const idx = LADDER.indexOf(at);
  return el('span', { class: 'ladder' }, LADDER.map((step, i) => el('span', {
    class: i < idx ? 'done' : i === idx ? (r.held ? 'held' : 'now') : '',
    text: step,
  })));
}

// ---- rendering -------------------------------------------------------------------------------

function renderHeader() {
  const s = state.status;
  const set = (id, text, cls) => {
    const n = document.getElementById(id);
    n.textContent = text;
    n.className = `pill ${cls || ''}`;
  };
  if (s) {
    set('coordinator', `coordinator ${s.coordinator_id} · ${s.endpoint || ''}`);
    set('leader', s.leader ? 'leader' : 'follower (leader unknown to the API)', s.leader ? 'ok' : 'warn');
    set('mode', s.dry_run ? 'mode: dry-run (records, never acts)' : 'mode: acting', s.dry_run ? 'warn' : 'ok');
    const p = s.pause || {};
    set('pause', p.paused ? `PAUSED by ${p.by}: ${p.reason}` : 'not paused', p.paused ? 'bad' : 'ok');
  }
  const l = state.link;
  const up = l.reachable && state.pageUp;
  set('live', up ? 'connected: live' : state.pageUp ? 'coordinator unreachable' : 'autohealctl ui not answering',
    up ? 'ok' : 'bad');
  const banner = document.getElementById('banner');
  if (!state.pageUp) {
    banner.textContent = 'autohealctl ui is not answering: is it still running? The page reconnects by itself.';
    banner.hidden = false;
  } else if (!l.reachable && l.error !== 'connecting') {
    banner.textContent = `Coordinator unreachable (${l.endpoint || ''}) since ${ago(l.since_ms)} ago: ${l.error}. `
      + 'Retrying by itself; what is shown may be stale.';
    banner.hidden = false;
  } else {
    banner.hidden = true;
  }
}

function skips() {
  const last = new Map();
  for (const e of state.events) {
    if (e.kind === 'skipped' || e.kind === 'unskipped') last.set(e.instance_id, e);
  }
  for (const [id, d] of state.details) {
    if (d.skipped && !(last.get(id) && last.get(id).kind === 'skipped')) {
      last.set(id, { kind: 'skipped', instance_id: id, message: 'skipped (who and why are older than the events kept)', at: '' });
    }
  }
  return [...last.values()].filter((e) => e.kind === 'skipped');
}

function renderBrakes() {
  const items = [];
  const s = state.status;
  if (s && s.pause && s.pause.paused) {
    items.push(el('li', { 'data-kind': 'paused' }, el('span', { class: 'brake', text: 'paused' }), ' by ',
      el('span', { class: 'who', text: s.pause.by }), ` since ${s.pause.since}: `, s.pause.reason));
  }
  const seen = new Set();
  for (const g of allGuardrails()) {
    // Cooldowns have their own list; the pause is shown once, above, with who and since when.
    if (/cooldown/.test(g.name) || (g.name === 'paused' && s && s.pause && s.pause.paused)) continue;
    const key = `${g.asg}|${g.name}|${g.reason}`;
    if (seen.has(key)) continue;
    seen.add(key);
    items.push(el('li', { 'data-kind': g.name, 'data-asg': g.asg },
      el('span', { class: isBrake(g.name) ? 'brake' : 'state', text: g.name }),
      ` ${groupName(g.asg)}: `, g.reason));
  }
  for (const e of skips()) {
    items.push(el('li', { 'data-kind': 'skipped', 'data-instance': e.instance_id },
      el('span', { class: 'state', text: 'skipped' }), ` ${e.instance_id}: `, e.message));
  }
  if (items.length === 0) items.push(el('li', { class: 'empty', text: 'nothing holds: remediation may act' }));
  replace('brakes', items);
}

function bar(label, parts, total, marks) {
  const segs = parts.filter((p) => p.n > 0).map((p) => el('div', {
    class: `seg ${p.cls}`, style: { width: `${total ? (100 * p.n) / total : 0}%` }, title: `${p.n} ${p.cls}`,
  }));
  const ticks = marks.map((m, i) => el('div', {
    class: `mark ${m.live ? '' : 'dashed'} ${i % 2 ? '' : 'top'}`, style: { left: `${m.at}%` }, title: m.title,
  }, el('span', { text: m.label })));
  return el('div', { class: 'barrow' }, el('span', { text: label }), el('div', { class: 'bar' }, segs, ticks),
    el('span', { text: parts.length ? `${total ? Math.round((100 * parts[0].n) / total) : 0}% healthy` : '' }));
}

function counts(list) {
  const c = { healthy: 0, unhealthy: 0, remediating: 0, silent: 0, dep: 0, total: list.length };
  for (const i of list) {
    if (i.state === 'healthy') c.healthy += 1;
    else if (i.state === 'remediating') c.remediating += 1;
    else if (i.state === 'silent' || i.state === 'unknown') c.silent += 1;
    else c.unhealthy += 1;
    if ((i.failing_dependencies || []).length > 0) c.dep += 1;
  }
  return c;
}

function renderGroups() {
  const groups = new Map();
  for (const g of (state.status && state.status.groups) || []) groups.set(g.name, { status: g, azs: new Map() });
  for (const i of state.instances.values()) {
    if (!groups.has(i.asg)) groups.set(i.asg, { status: null, azs: new Map() });
    const azs = groups.get(i.asg).azs;
    if (!azs.has(i.availability_zone)) azs.set(i.availability_zone, []);
    azs.get(i.availability_zone).push(i);
  }
  const cards = [];
  for (const [name, g] of [...groups.entries()].sort()) {
    const minH = threshold(name, 'minHealthy');
    const anom = threshold(name, 'anomaly');
    const dep = threshold(name, 'dependency');
    const marks = [
      { at: minH.value, live: minH.live, label: `min ${minH.value}%`, title: `min-healthy: each target group keeps ${minH.value}% healthy` },
      { at: 100 - anom.value, live: anom.live, label: `brake <${100 - anom.value}%`, title: `anomaly brake: more than ${anom.value}% bad` },
    ];
    const st = g.status;
    const all = [...g.azs.values()].flat();
    const c = counts(all);
    const parts = st
      ? [{ n: st.healthy, cls: 'healthy' }, { n: st.unhealthy, cls: 'unhealthy' }, { n: st.remediating, cls: 'remediating' }, { n: st.silent, cls: 'silent' }]
      : [{ n: c.healthy, cls: 'healthy' }, { n: c.unhealthy, cls: 'unhealthy' }, { n: c.remediating, cls: 'remediating' }, { n: c.silent, cls: 'silent' }];
    const total = st ? st.instances : c.total;
    const rows = [bar(`all (${total})`, parts, total, marks)];
    for (const [az, list] of [...g.azs.entries()].sort()) {
      const a = counts(list);
      rows.push(bar(`${az || '(no az)'} (${a.total})`, [{ n: a.healthy, cls: 'healthy' }, { n: a.unhealthy, cls: 'unhealthy' },
        { n: a.remediating, cls: 'remediating' }, { n: a.silent, cls: 'silent' }], a.total,
      [{ at: 100 - anom.value, live: anom.live, label: `brake <${100 - anom.value}%`, title: `anomaly brake per AZ: more than ${anom.value}% bad` }]));
    }
    const depRow = el('div', { class: 'barrow dep' }, el('span', { text: 'failing dependency' }),
      el('div', { class: 'bar' }, el('div', { class: 'seg dep', style: { width: `${c.total ? (100 * c.dep) / c.total : 0}%` } }),
        el('div', { class: `mark ${dep.live ? '' : 'dashed'}`, style: { left: `${dep.value}%` }, title: `dependency brake at ${dep.value}%` },
          el('span', { text: `brake ${dep.value}%` }))),
      el('span', { text: `${c.total ? Math.round((100 * c.dep) / c.total) : 0}% naming one` }));
    const held = st ? st.guardrails.filter((r) => isBrake(r.name)).map((r) => r.name) : [];
    cards.push(el('div', { class: 'group', 'data-asg': name },
      el('div', { class: 'name' }, groupName(name), st ? ` · ${st.connected}/${st.instances} connected` : '',
        held.length ? el('span', { class: 'brake', text: ` · ${[...new Set(held)].join(', ')}` }) : ''),
      rows, depRow));
  }
  if (cards.length === 0) cards.push(el('p', { class: 'empty', text: 'no instances known yet' }));
  replace('groups', cards);
}

function renderRemediations() {
  const list = remediations();
  const rows = list.map((r) => el('tr', { 'data-instance': r.instance, class: 'clickable', onclick: () => select(r.instance) },
    el('td', { text: r.instance }), el('td', { text: groupName(r.asg) }), el('td', {}, ladder(r)),
    el('td', { class: `rstate ${r.state}`, text: r.verifying ? 'verifying replacement' : r.state }),
    el('td', { text: ago(r.startedAt) }), el('td', { class: 'why', title: r.why, text: short(r.why) })));
  document.querySelector('#remediations tbody').replaceChildren(...rows);
  document.getElementById('no-remediations').hidden = rows.length > 0;
}

// A cooldown as a guardrail's reason states it: "<what> ... ended 3s ago; cooldown 30m".
function cooldownLeft(reason, saidAt) {
  const m = /(\S+) ago;\s*cooldown ([0-9a-z.]+)/.exec(reason);
  if (!m) return null;
  const elapsed = parseDuration(m[1]);
  const cooldown = parseDuration(m[2]);
  if (elapsed === null || cooldown === null) return null;
  const since = saidAt === null ? 0 : Date.now() - saidAt;
  return cooldown - elapsed - since;
}

function renderCooldowns() {
  const items = [];
  for (const g of allGuardrails()) {
    if (!/cooldown/.test(g.name)) continue;
    const left = cooldownLeft(g.reason, null);
    items.push(el('li', { 'data-kind': g.name }, el('span', { class: 'state', text: g.name }),
      ` ${groupName(g.asg)}: ${left !== null ? `${human(left)} left · ` : ''}`, g.reason));
  }
  // Per instance: the last hold that names a cooldown, counted down from when it was said.
  const last = new Map();
  for (const e of state.events) {
    if (e.kind === 'guardrail' && /cooldown: /.test(e.message)) last.set(e.instance_id, e);
    else if (['decision', 'action', 'remediation-finished'].includes(e.kind)) last.delete(e.instance_id);
  }
  const said = new Set();
  for (const e of last.values()) {
    for (const part of e.message.split('; ').join(';').split(/;(?=[a-z ]+cooldown: )/)) {
      const m = /((?:instance|asg) cooldown): (.*)/.exec(part);
      if (!m) continue;
      const left = cooldownLeft(m[2], ms(e.at));
      if (left === null || left <= 0 || said.has(`${e.instance_id} ${m[1]}`)) continue;
      said.add(`${e.instance_id} ${m[1]}`);
      items.push(el('li', { 'data-kind': m[1].replace(' ', '_'), 'data-instance': e.instance_id },
        el('span', { class: 'state', text: m[1] }), ` ${e.instance_id}: ${human(left)} left · `,
        (/^.*? ago;\s*cooldown [0-9a-z.]+/.exec(m[2]) || [m[2]])[0].replace(/;(?=\S)/, '; ')));
    }
  }
  if (items.length === 0) items.push(el('li', { class: 'empty', text: 'no cooldown running' }));
  replace('cooldowns', items);
}

function renderDryRun() {
  const items = [];
  for (const a of [...state.actions.values()].filter((a) => a.status === 'dry-run')
    .sort((x, y) => (ms(y.at) || 0) - (ms(x.at) || 0)).slice(0, 20)) {
    items.push(el('li', { 'data-instance': a.instance_id }, `${a.at} ${a.instance_id}: would ${a.kind} — ${a.reason}`));
  }
  if (items.length === 0) {
    for (const e of state.events.filter((x) => x.kind === 'dry-run').slice(-20).reverse()) {
      items.push(el('li', { 'data-instance': e.instance_id }, `${e.at} ${e.instance_id}: ${e.message}`));
    }
  }
  if (items.length === 0) items.push(el('li', { class: 'empty', text: 'nothing would have been done' }));
  replace('dryrun', items);
}

function renderInstances() {
  const rows = [...state.instances.values()].sort((a, b) => a.instance_id.localeCompare(b.instance_id)).map((i) => el('tr', {
    class: 'clickable', 'data-instance': i.instance_id, 'data-state': i.state, onclick: () => select(i.instance_id),
  }, el('td', { text: i.instance_id }), el('td', { text: groupName(i.asg) }), el('td', { text: i.availability_zone }),
  el('td', { class: `state ${i.state}`, text: i.connected ? i.state : `${i.state} (not connected)` }),
  el('td', { text: i.agent_version || '-' }), el('td', { text: i.last_heartbeat }),
  el('td', { class: 'cert', text: state.enrollments.has(i.instance_id) ? certExpiry(i.instance_id) : '-' }),
  el('td', { text: (i.failing_dependencies || []).join(', ') })));
  document.querySelector('#instances tbody').replaceChildren(...rows);
}

function renderEvents() {
  const items = state.events.slice(-200).reverse().map((e) => el('li', { 'data-kind': e.kind },
    `${e.at} ${e.instance_id || '-'} ${e.kind}: ${e.message}`));
  replace('events', items);
}

function renderDetail() {
  const id = state.selected;
  const section = document.getElementById('detail-section');
  if (!id) { section.hidden = true; return; }
  section.hidden = false;
  document.getElementById('detail-id').textContent = id;
  const d = state.details.get(id);
  if (!d) { replace('detail', el('p', { class: 'empty', text: 'loading…' })); return; }
  const s = d.summary || {};
  const kv = el('dl', { class: 'kv' },
    el('dt', { text: 'state' }), el('dd', { class: `state ${s.state}`, text: s.state }),
    el('dt', { text: 'agent version' }), el('dd', { text: s.agent_version || '-' }),
    el('dt', { text: 'certificate expiry' }), el('dd', { class: 'cert', text: certExpiry(id) }),
    el('dt', { text: 'asg / az' }), el('dd', { text: `${groupName(s.asg)} / ${s.availability_zone}` }),
    el('dt', { text: 'asg lifecycle' }), el('dd', { text: d.asg ? `${d.asg.lifecycle_state} / ${d.asg.health_status}` : '-' }),
    el('dt', { text: 'skipped' }), el('dd', { text: d.skipped ? 'yes: no automatic remediation' : 'no' }),
    el('dt', { text: 'services' }), el('dd', { text: d.services.map((x) => `${x.name}: ${x.state}`).join(', ') || '-' }),
    el('dt', { text: 'targets' }), el('dd', { text: d.targets.map((t) => `${t.state}${t.reason ? ` (${t.reason})` : ''}`).join(', ') || '-' }));
  // The incident timeline: fleet events and journal entries, each with its reason.
  const entries = [];
  const cursors = new Set();
  for (const e of [...d.recent_events, ...state.events.filter((x) => x.instance_id === id)]) {
    const key = `${e.cursor}|${e.at}|${e.kind}|${e.message}`;
    if (cursors.has(key)) continue;
    cursors.add(key);
    entries.push({ at: e.at, what: e.kind, why: e.message });
  }
  for (const a of d.actions) {
    entries.push({ at: a.at, what: `journal: ${a.kind} ${a.status}`, why: [a.reason, a.detail, a.requested_by && `by ${a.requested_by}`].filter(Boolean).join(' — ') });
  }
  entries.sort((x, y) => (ms(y.at) || 0) - (ms(x.at) || 0));
  const timeline = el('ol', { class: 'plain mono timeline' }, entries.map((e) => el('li', {},
    el('span', { text: e.at }), el('span', { text: e.what }), el('span', { title: e.why, text: short(e.why, 240) }))));
  replace('detail', kv, el('h3', { text: 'timeline' }), timeline);
}

function render() {
  learnThresholds();
  renderHeader();
  renderBrakes();
  renderGroups();
  renderRemediations();
  renderCooldowns();
  renderDryRun();
  renderInstances();
  renderEvents();
  renderDetail();
}

// ---- loading ---------------------------------------------------------------------------------

async function loadAll() {
  try {
    const [status, instances, actions] = await Promise.all([
      getJSON('/api/status'), getJSON('/api/instances'), getJSON('/api/actions')]);
    state.status = status;
    state.instances = new Map(instances.map((i) => [i.instance_id, i]));
    for (const a of actions) state.actions.set(a.id, a);
    if (state.selected) await refreshInstance(state.selected);
  } catch (e) {
    console.warn('load failed', e);
  }
  await refreshEnrollments();
  render();
}

// Certificate expiry comes from the coordinator's enrollment records (EnrollmentAdmin, which
// viewers may read); instances whose certificates were issued elsewhere have none.
async function refreshEnrollments() {
  try {
    const r = await getJSON('/api/enrollments');
    state.enrollNote = r.available ? 'no enrollment record (certificate issued outside the coordinator)' : r.error;
    state.enrollments = new Map((r.enrollments || []).map((e) => [e.instance_id, e]));
  } catch (e) {
    state.enrollNote = `enrollments unavailable: ${e.message}`;
  }
}

function certExpiry(id) {
  const e = state.enrollments.get(id);
  if (!e || !e.certificate_expires_at) return state.enrollNote;
  const left = (ms(e.certificate_expires_at) || 0) - Date.now();
  return `${e.certificate_expires_at} (${left > 0 ? `in ${human(left)}` : 'EXPIRED'}; ${e.status})`;
}

async function refreshInstance(id) {
  try {
    const d = await getJSON(`/api/instance/${encodeURIComponent(id)}`);
    state.details.set(id, d);
    if (d.summary) state.instances.set(id, d.summary);
    for (const a of d.actions) state.actions.set(a.id, a);
  } catch (e) {
    if (e.status === 404) state.instances.delete(id);
  }
}

async function refreshStatus() {
  try {
    state.status = await getJSON('/api/status');
  } catch (e) {
    console.warn('status failed', e);
  }
}

// Coalesce bursts: one fetch per touched instance, and one status, per 150 ms.
const pending = { instances: new Set(), status: false, enrollments: false, timer: null };
function schedule(instance, kind) {
  if (instance) pending.instances.add(instance);
  // A new or renewed enrollment is followed by the agent connecting with it.
  if (kind === 'agent-connected') pending.enrollments = true;
  pending.status = true;
  if (pending.timer) return;
  pending.timer = setTimeout(async () => {
    const ids = [...pending.instances];
    const { status, enrollments } = pending;
    pending.instances.clear();
    pending.status = false;
    pending.enrollments = false;
    pending.timer = null;
    await Promise.all([...ids.map(refreshInstance), status ? refreshStatus() : null,
      enrollments ? refreshEnrollments() : null]);
    render();
  }, 150);
}

function select(id) {
  state.selected = id;
  renderDetail();
  refreshInstance(id).then(render);
  document.getElementById('detail-section').scrollIntoView({ behavior: 'smooth', block: 'nearest' });
}

function connect() {
  const source = new EventSource('/api/events');
  source.addEventListener('open', () => {
    const wasDown = !state.pageUp;
    state.pageUp = true;
    renderHeader();
    if (wasDown) loadAll();
  });
  source.addEventListener('link', (m) => {
    const link = JSON.parse(m.data);
    const back = link.reachable && !state.link.reachable;
    state.link = link;
    renderHeader();
    if (back) loadAll();
  });
  source.addEventListener('fleet', (m) => {
    // Ids are the ui server's own (a restarted coordinator's cursors start again at 1).
    if (state.seen.has(m.lastEventId)) return;
    const e = JSON.parse(m.data);
    e.id = m.lastEventId;
    state.seen.add(e.id);
    state.events.push(e);
    if (state.events.length > KEEP_EVENTS) {
      const gone = state.events.splice(0, state.events.length - KEEP_EVENTS);
      for (const g of gone) state.seen.delete(g.id);
    }
    schedule(e.instance_id, e.kind);
  });
  source.addEventListener('resync', () => loadAll());
  source.addEventListener('error', () => {
    // EventSource retries by itself (the server asks for 1 s).
    if (source.readyState !== EventSource.OPEN) {
      state.pageUp = false;
      renderHeader();
    }
  });
}

// Ages and cooldowns tick without asking anyone anything.
setInterval(() => { renderHeader(); renderRemediations(); renderCooldowns(); }, 1000);

loadAll();
connect();

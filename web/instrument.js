// One instrument's page: its state and readings (the driver's status), the
// lock (holder, time left, observers), the queue with positions, what this
// tab's session may do (take or queue, renew, release; an admin may force
// a release, start or end maintenance and remove a queue entry, each after a
// confirmation), a form per action generated from the driver's action catalog
// for the holder's own session, and the history with filters and paging.

import { api, ApiError, commandId, query, seg } from './api.js';
import {
  busy, clearError, confirmWithReason, duration, h, localTime, maintenanceText, notify, replaceChildrenInPlace,
  showError, shortId, who,
} from './ui.js';
import { stateOf } from './overview.js';

const HISTORY_KINDS = [
  'lock_acquired', 'lock_refreshed', 'lock_released', 'lock_force_released', 'lock_expired',
  'observer_lock_acquired', 'observer_lock_released', 'observer_revoked', 'queued', 'dequeued',
  'queue_processed', 'session_created', 'session_ended', 'session_expired', 'queue_timeout',
  'maintenance_started', 'maintenance_ended', 'claim_expired', 'queue_stepped_back', 'queue_swapped',
];
const HISTORY_PAGE = 25;

export function instrumentPage(ctx, main, id) {
  const { model } = ctx;
  let device = null; // /api/equipment/{id}/status
  let destroyed = false;

  const title = h('h1', { id: 'instrument-title' }, id);
  const badge = h('span.badge');
  const meta = h('p.meta');
  const lockBox = h('div.lock');
  const queueBox = h('div.queue');
  const controls = h('div.controls');
  const manageTitle = h('h3', { hidden: true }, 'Lab manager');
  const manageBox = h('div.manage');
  const readings = h('div.readings');
  const actionsBox = h('div.actions');
  const history = historySection(id);

  main.replaceChildren(
    h('nav.crumbs', { 'aria-label': 'Breadcrumb' }, h('a', { href: '#/' }, 'Instruments'), ' › ', id),
    h('article.instrument', { 'aria-labelledby': 'instrument-title' },
      h('header.page-head', null, title, badge),
      meta,
      h('div.columns', null,
        h('section', { 'aria-labelledby': 'lock-title' },
          h('h2', { id: 'lock-title' }, 'Lock'), lockBox,
          h('h3', null, 'Queue'), queueBox,
          h('h3', null, 'Your session'), controls,
          manageTitle, manageBox),
        h('section', { 'aria-labelledby': 'readings-title' },
          h('h2', { id: 'readings-title' }, 'State and readings'),
          readings,
          h('button', { type: 'button', onclick: (e) => busy(e.target, loadDevice) }, 'Read again'))),
      h('section', { 'aria-labelledby': 'actions-title' },
        h('h2', { id: 'actions-title' }, 'Actions'), actionsBox),
      history.root));

  // ---- lock, queue, controls (from the shared model: updated live) ----

  function mine(status) {
    const session = ctx.session?.session_id;
    if (!session || !status) return { holds: false, observes: false, queued: null };
    return {
      holds: status.locked && status.session_id === session,
      observes: (status.observer_sessions ?? []).includes(session),
      queued: (status.queue ?? []).find((q) => q.session_id === session) ?? null,
    };
  }

  const left = h('span.left');
  function renderLock() {
    const status = model.status.get(id);
    const [state, label] = stateOf(status);
    badge.textContent = label;
    badge.dataset.state = state;
    if (!status) {
      lockBox.replaceChildren(h('p', null, 'Unknown instrument.'));
      return;
    }
    const rows = [];
    if (status.maintenance) {
      rows.push(['Maintenance', h('span.maint', null, maintenanceText(status.maintenance))]);
      rows.push(['Out of service since', localTime(status.maintenance.since)]);
    }
    if (status.locked) {
      rows.push(['Holder', who(status)]);
      rows.push(['Session', h('code', { title: status.session_id }, shortId(status.session_id))]);
      rows.push(['Since', localTime(status.acquired_at)]);
      rows.push(['Time left', left]);
      rows.push(['Fencing token', String(status.fencing_token)]);
      // A lock group's member: released, renewed and lost with the others.
      const group = model.groupLabel(id);
      if (group) rows.push(['Lock group', group]);
    } else {
      rows.push(['Holder', 'nobody']);
    }
    const tags = model.byId.get(id)?.tags ?? [];
    if (tags.length) rows.push(['Tags', tags.join(', ')]);
    rows.push(['Observers', status.observer_count
      ? (status.observer_sessions ?? []).map((s) => shortId(s)).join(', ')
      : 'none']);
    lockBox.replaceChildren(h('dl', null, rows.flatMap(([k, v]) => [h('dt', null, k), h('dd', null, v)])));
    tickLeft();

    const queue = status.queue ?? [];
    queueBox.replaceChildren(queue.length
      ? h('ol.queue-list', null, queue.map((q) => {
        const mine = q.session_id === ctx.session?.session_id;
        return h('li', { value: q.position, dataset: { session: q.session_id } },
          `${who(q)} — ${q.lock_mode}${q.priority ? `, priority ${q.priority}` : ''}, waiting since `,
          localTime(q.queued_at),
          q.wait_expires_at ? [', gives up at ', localTime(q.wait_expires_at)] : '',
          mine ? h('strong', null, ' (you)') : '',
          ctx.can.admin() && !mine
            ? [' ', h('button', {
              type: 'button', class: 'danger small', 'data-role': 'remove-entry',
              'aria-label': `Remove ${who(q)} from the queue…`,
              onclick: (e) => removeEntry(e.target, q),
            }, 'Remove…')]
            : '');
      }))
      : h('p', null, 'Nobody is waiting.'));
    renderControls(status);
    renderManage(status);
  }

  function tickLeft() {
    const status = model.status.get(id);
    if (!status?.locked) return;
    left.textContent = status.time_remaining === null ? 'no timeout' : duration(model.timeLeft(id));
    if (model.timeLeft(id) === 0) model.markStale(id);
  }

  function renderControls(status) {
    const error = h('p.error', { role: 'alert', hidden: true });
    const items = [];
    const me = mine(status);
    if (!ctx.session) {
      items.push(h('p', null, 'Open a session to take or queue for this instrument.'));
      items.push(h('button', { type: 'button', onclick: () => ctx.openSession() }, 'Open session'));
    } else if (me.holds || me.observes) {
      items.push(h('p', null, me.holds ? 'You hold the exclusive lock.' : 'You are observing.'));
      items.push(h('div.buttons', null,
        h('button', { type: 'button', class: 'primary', onclick: (e) => act(e.target, 'renew', error) }, 'Renew'),
        h('button', { type: 'button', onclick: (e) => act(e.target, 'release', error) }, 'Release')));
    } else if (me.queued) {
      items.push(h('p', null, `You are number ${me.queued.position} in the queue.`));
      const last = me.queued.position >= (status.queue ?? []).length;
      items.push(h('div.buttons', null,
        h('button', { type: 'button', onclick: (e) => act(e.target, 'release', error) }, 'Leave the queue'),
        last ? '' : h('button', {
          type: 'button', title: 'Trade places with the one right behind you',
          onclick: (e) => act(e.target, 'step-back', error),
        }, 'Let the next go first')));
    } else {
      // Live updates re-render the controls often: the form someone may be
      // filling in is kept (with what they typed), only its button changes.
      const kept = controls.querySelector('form.take');
      if (kept) {
        kept.querySelector('button[type=submit]').textContent = takeLabel(status);
        items.push(kept);
      } else {
        items.push(takeForm(status));
      }
    }
    if (ctx.can.admin() && (status.locked || status.observer_count) && !me.holds) {
      items.push(h('button', {
        type: 'button', class: 'danger', 'data-role': 'force-release',
        onclick: (e) => forceRelease(e.target, error),
      }, 'Force release…'));
    }
    items.push(error);
    replaceChildrenInPlace(controls, items);
  }

  function takeLabel(status) {
    return status.locked || (status.queue ?? []).length > 0 ? 'Queue for it' : 'Take lock';
  }

  function takeForm(status) {
    const exclusive = ctx.can.lock();
    const form = h('form.take', { 'aria-label': 'Take the lock' },
      h('label', null, 'Mode ',
        h('select', { name: 'lock_mode' },
          exclusive ? h('option', { value: 'exclusive' }, 'exclusive') : null,
          h('option', { value: 'observer' }, 'observer'))),
      h('label', null, 'Timeout (s) ',
        h('input', { name: 'timeout_seconds', type: 'number', min: 0, step: 'any', value: 300, required: true })),
      h('label', { title: 'Served first from the queue when higher; above 0 needs an admin once sign-in is on' }, 'Priority ',
        h('input', { name: 'priority', type: 'number', min: -10, max: 10, step: 1, value: 0, required: true })),
      h('label.check', null,
        h('input', { name: 'queue_if_busy', type: 'checkbox', checked: true }), ' Queue if busy'),
      h('button', { type: 'submit', class: 'primary' }, takeLabel(status)));
    form.addEventListener('submit', (e) => {
      e.preventDefault();
      const button = form.querySelector('button[type=submit]');
      // The controls' error line of the moment (they are re-rendered).
      const error = controls.querySelector('p.error');
      busy(button, async () => {
        const answer = await api('POST', '/locks/acquire', {
          equipment_id: id,
          session_id: ctx.session.session_id,
          lock_mode: form.elements.lock_mode.value,
          timeout_seconds: Number(form.elements.timeout_seconds.value),
          queue_if_busy: form.elements.queue_if_busy.checked,
          priority: Number(form.elements.priority.value),
        });
        if (answer.status === 'queued') notify(`Queued for ${id} at position ${answer.queue_entry.position}.`);
        await model.read(id);
      }, error).catch(() => {});
    });
    return form;
  }

  async function act(button, what, error) {
    await busy(button, async () => {
      try {
        if (what === 'renew') {
          await api('POST', `/locks/activity/${seg(id)}`, { session_id: ctx.session.session_id });
        } else if (what === 'step-back') {
          const answer = await api('POST', `/locks/queue/${seg(id)}/step-back`, { session_id: ctx.session.session_id });
          notify(`You let the next one go first: now number ${answer.position} for ${id}.`);
        } else {
          await api('POST', '/locks/release', { equipment_id: id, session_id: ctx.session.session_id });
        }
      } catch (e) {
        ctx.checkSessionError(e);
        throw e;
      }
      await model.read(id);
    }, error);
  }

  async function forceRelease(button, error) {
    const status = model.status.get(id);
    const holder = status?.locked ? who(status) : 'every observer';
    const reason = await confirmWithReason(
      `Force release ${id}?`,
      `This takes the lock from ${holder}. They are told their lock was lost.`,
      'Force release');
    if (reason === null) return;
    await busy(button, async () => {
      // The forced release is recorded with session id "dashboard" as
      // forced_by (and the admin as user); the reason goes with it.
      await api('POST', '/locks/release', { equipment_id: id, session_id: 'dashboard', force: true, reason });
      notify(`Released ${id}: ${reason}`);
      await model.read(id);
    }, error);
  }

  // ---- the lab manager's controls (admins; anyone with sign-in off) ----

  function renderManage(status) {
    const admin = ctx.can.admin();
    manageTitle.hidden = !admin;
    if (!admin) {
      manageBox.replaceChildren();
      return;
    }
    const error = h('p.error', { role: 'alert', hidden: true });
    const start = h('button', {
      type: 'button', class: 'danger', 'data-role': 'start-maintenance',
      onclick: (e) => startMaintenance(e.target, error),
    }, status.maintenance ? 'Change maintenance…' : 'Start maintenance…');
    const end = status.maintenance
      ? h('button', {
        type: 'button', 'data-role': 'end-maintenance', onclick: (e) => endMaintenance(e.target, error),
      }, 'End maintenance…')
      : '';
    manageBox.replaceChildren(h('div.buttons', null, start, end), error);
  }

  async function startMaintenance(button, error) {
    const answer = await confirmWithReason(
      `Take ${id} out of service?`,
      'New requests are refused (or wait in the queue) until it ends; whoever holds it keeps the lock and is told.',
      'Start maintenance',
      { until: true, reasonLabel: 'Reason (shown in its status)' });
    if (answer === null) return;
    await busy(button, async () => {
      await api('POST', `/equipment/${seg(id)}/maintenance`, { reason: answer.reason, until: answer.until });
      notify(`${id} is in maintenance: ${answer.reason}`);
      await model.read(id);
    }, error);
  }

  async function endMaintenance(button, error) {
    const ok = await confirmWithReason(
      `Put ${id} back in service?`,
      'Its queue is served at once, and new requests are accepted again.',
      'End maintenance', { reason: false });
    if (ok === null) return;
    await busy(button, async () => {
      await api('DELETE', `/equipment/${seg(id)}/maintenance`);
      notify(`${id} is back in service.`);
      await model.read(id);
    }, error);
  }

  async function removeEntry(button, entry) {
    const reason = await confirmWithReason(
      `Remove ${who(entry)} from the queue?`,
      `Their place (number ${entry.position}) for ${id} is taken away; they are told why, and those behind move up.`,
      'Remove from the queue');
    if (reason === null) return;
    await busy(button, async () => {
      // Recorded as forced by "dashboard" (and the admin as user), with
      // the reason told to the waiter.
      await api('POST', `/locks/queue/${seg(id)}/${seg(entry.session_id)}/remove`,
        { forced_by: 'dashboard', message: reason });
      notify(`Removed ${who(entry)} from the queue for ${id}: ${reason}`);
      await model.read(id);
    });
  }

  // ---- the driver's status: state, readings, actions ----

  async function loadDevice() {
    try {
      device = await api('GET', `/equipment/${seg(id)}/status`);
    } catch (e) {
      if (e instanceof ApiError && e.code === 'equipment_not_found') {
        title.textContent = id;
        readings.replaceChildren(h('p.error', null, e.detail));
        return;
      }
      showError(e);
      return;
    }
    if (destroyed) return;
    title.textContent = device.name || id;
    meta.replaceChildren(h('code', null, id), ` · ${device.driver} · ${device.model}`);
    readings.replaceChildren(renderValue(device.state));
    renderActions();
  }

  function renderActions() {
    if (!device) return;
    const status = model.status.get(id);
    const me = mine(status);
    const allowed = device.actions.filter((a) => (a.access === 'observe'
      ? (me.holds || me.observes)
      : me.holds && ctx.can.lock()));
    const shownKey = allowed.map((a) => a.name).join(',');
    if (actionsBox.dataset.shown === shownKey && actionsBox.childElementCount) return;
    actionsBox.dataset.shown = shownKey;
    if (!allowed.length) {
      actionsBox.replaceChildren(h('p', null,
        'Hold the lock with this tab\'s session to run actions (an observer lock allows the observe actions). ',
        `This instrument has ${device.actions.length}: `,
        device.actions.map((a) => a.name).join(', '), '.'));
      return;
    }
    actionsBox.replaceChildren(h('div.action-grid', null, allowed.map(actionForm)));
  }

  function actionForm(action) {
    const fields = action.params.map((p) => paramField(action.name, p));
    const output = h('output.result', { for: fields.map((f) => f.input.id).join(' ') });
    const error = h('p.error', { role: 'alert', hidden: true });
    const form = h('form.action', { 'data-action': action.name, 'aria-labelledby': `action-${action.name}` },
      h('h3', { id: `action-${action.name}` }, action.name, h('span.access', null, action.access)),
      fields.map((f) => f.label),
      h('button', { type: 'submit' }, 'Run'),
      error, output);
    form.addEventListener('submit', (e) => {
      e.preventDefault();
      const parameters = {};
      for (const f of fields) {
        const value = f.read();
        if (value !== undefined) parameters[f.param.name] = value;
      }
      busy(form.querySelector('button'), async () => {
        const status = model.status.get(id);
        const body = {
          command_id: commandId(),
          equipment_id: id,
          action: action.name,
          parameters,
          session_id: ctx.session.session_id,
        };
        if (status?.locked && status.session_id === ctx.session.session_id) body.fencing_token = status.fencing_token;
        output.textContent = '';
        try {
          const answer = await api('POST', `/equipment/${seg(id)}/command`, body);
          output.textContent = JSON.stringify(answer.data, null, 1);
        } catch (err) {
          ctx.checkSessionError(err);
          throw err;
        }
        loadDevice();
        // A command renews the lock without an event.
        model.read(id);
      }, error);
    });
    return form;
  }

  function paramField(actionName, p) {
    const inputId = `p-${actionName}-${p.name}`;
    const unit = p.unit ? ` (${p.unit})` : '';
    const range = p.min !== undefined && p.min !== null ? ` ${p.min} to ${p.max}` : '';
    let input;
    let read;
    if (p.type === 'boolean') {
      input = h('input', { type: 'checkbox', id: inputId, checked: p.default === true });
      read = () => input.checked;
    } else if (p.type === 'choice') {
      input = h('select', { id: inputId, required: p.default === null || p.default === undefined },
        p.values.map((v) => h('option', { value: v, selected: v === p.default }, v)));
      read = () => input.value;
    } else if (p.type === 'number' || p.type === 'integer') {
      input = h('input', {
        type: 'number', id: inputId, min: p.min, max: p.max,
        step: p.type === 'integer' ? 1 : 'any', value: p.default ?? '',
        required: p.default === null || p.default === undefined,
        inputmode: p.type === 'integer' ? 'numeric' : 'decimal',
      });
      read = () => (input.value === '' ? undefined : Number(input.value));
    } else {
      input = h('input', { type: 'text', id: inputId, maxlength: p.max_len, value: p.default ?? '' });
      read = () => (input.value === '' && p.default !== undefined ? undefined : input.value);
    }
    const label = h('label', { for: inputId }, `${p.name}${unit}`,
      h('span.hint', null, `${p.type}${range}${p.default !== null && p.default !== undefined ? `, default ${p.default}` : ''}`),
      input);
    return { param: p, input, label, read };
  }

  // ---- live ----

  const unsubscribe = model.subscribe((kind, changed) => {
    if (kind === 'snapshot' || changed === id) {
      renderLock();
      renderActions();
    }
  });
  const onSession = () => { renderLock(); renderActions(); };
  ctx.onSessionChange.add(onSession);

  renderLock();
  loadDevice();
  history.load();
  // Fresh details (the snapshot may be older than this page).
  model.markStale(id);

  return {
    name: '',
    tick: tickLeft,
    onEvent(event) {
      if (event.equipment_id === id && 'seq' in event) history.live(event);
    },
    onReconnected() {
      loadDevice();
      history.load();
    },
    destroy() {
      destroyed = true;
      unsubscribe();
      ctx.onSessionChange.delete(onSession);
    },
  };
}

/** A driver's state as nested lists and tables. */
function renderValue(value) {
  if (Array.isArray(value)) {
    if (value.length && value.every((v) => v && typeof v === 'object' && !Array.isArray(v))) {
      const keys = [...new Set(value.flatMap((v) => Object.keys(v)))];
      return h('div.table-wrap', null, h('table', null,
        h('thead', null, h('tr', null, keys.map((k) => h('th', { scope: 'col' }, k)))),
        h('tbody', null, value.map((row) => h('tr', null, keys.map((k) => h('td', null, scalar(row[k]))))))));
    }
    return h('span', null, value.map(scalar).join(', '));
  }
  if (value && typeof value === 'object') {
    return h('dl.state', null, Object.entries(value).flatMap(([k, v]) => [
      h('dt', null, k), h('dd', null, v && typeof v === 'object' ? renderValue(v) : scalar(v))]));
  }
  return scalar(value);
}

function scalar(v) {
  if (v === null || v === undefined) return '—';
  if (typeof v === 'number') return Number.isInteger(v) ? String(v) : String(Number(v.toPrecision(6)));
  if (typeof v === 'object') return JSON.stringify(v);
  return String(v);
}

/**
 * History: by default the newest events (newest first, new ones added
 * live); with filters, the matching events oldest first, a page at a time.
 */
function historySection(id) {
  const tbody = h('tbody');
  const caption = h('caption');
  const error = h('p.error', { role: 'alert', hidden: true });
  const pager = h('div.pager');
  const form = h('form.filters', { 'aria-label': 'Filter the history' },
    h('label', null, 'Event ',
      h('select', { name: 'event' }, h('option', { value: '' }, 'any'),
        HISTORY_KINDS.map((k) => h('option', { value: k }, k)))),
    h('label', null, 'Session ', h('input', { name: 'session_id', size: 14, spellcheck: 'false' })),
    h('label', null, 'From ', h('input', { name: 'since', type: 'datetime-local', step: 1 })),
    h('label', null, 'Until ', h('input', { name: 'until', type: 'datetime-local', step: 1 })),
    h('button', { type: 'submit' }, 'Search'),
    h('button', { type: 'reset' }, 'Latest'));
  let table;
  const root = h('section', { 'aria-labelledby': 'history-title' },
    h('h2', { id: 'history-title' }, 'History'),
    form, error,
    h('div.table-wrap', null, table = h('table.history', null, caption,
      h('thead', null, h('tr', null,
        ['Time', 'Event', 'Session', 'Details'].map((c) => h('th', { scope: 'col' }, c)))),
      tbody)),
    pager);

  let mode = 'latest';
  let filters = {};
  /** cursors[i] is where page i starts (the page before it ended there). */
  let cursors = [0];
  let pageIndex = 0;
  /** Which load is the newest: an older one's answer is dropped. */
  let loads = 0;
  /** Live events heard while the newest load is in flight (oldest first). */
  let heardDuringLoad = null;

  function row(event) {
    const { seq, event: kind, timestamp, session_id: session, equipment_id: _eq, ...rest } = event;
    const details = Object.entries(rest)
      .filter(([, v]) => v !== null && v !== undefined)
      .map(([k, v]) => `${k}: ${typeof v === 'object' ? JSON.stringify(v) : v}`).join(' · ');
    return h('tr', { dataset: { seq } },
      h('td', null, localTime(timestamp)),
      h('td', null, h('span.event', { dataset: { kind } }, kind)),
      h('td', null, session ? h('code', { title: session }, shortId(session)) : '—'),
      h('td.details', null, details));
  }

  async function load() {
    clearError(error);
    const thisLoad = ++loads;
    table.setAttribute('aria-busy', 'true');
    try {
      if (mode === 'latest') {
        heardDuringLoad = [];
        const page = await api('GET', `/locks/events/${seg(id)}?limit=50`);
        if (thisLoad !== loads) return;
        // Events that happened while the page was on its way may not be in
        // it: they are newer than all of it, so they go on top.
        const loaded = new Set(page.events.map((e) => e.seq));
        const newer = heardDuringLoad.filter((e) => !loaded.has(e.seq));
        heardDuringLoad = null;
        const newestFirst = [...newer.reverse(), ...page.events.slice().reverse()].slice(0, 50);
        tbody.replaceChildren(...newestFirst.map(row));
        caption.textContent = 'The newest events, newest first; new ones appear as they happen.';
        pager.replaceChildren();
      } else {
        const page = await api('GET', `/locks/events${query({
          equipment_id: id, limit: HISTORY_PAGE, cursor: cursors[pageIndex] || undefined, ...filters,
        })}`);
        if (thisLoad !== loads) return;
        tbody.replaceChildren(...page.events.map(row));
        caption.textContent = `Matching events, oldest first: page ${pageIndex + 1}.`;
        cursors[pageIndex + 1] = page.next_cursor;
        pager.replaceChildren(
          h('button', { type: 'button', disabled: pageIndex === 0, onclick: () => { pageIndex -= 1; load(); } }, '← Earlier'),
          h('button', { type: 'button', disabled: !page.has_more, onclick: () => { pageIndex += 1; load(); } }, 'Later →'));
      }
      if (!tbody.childElementCount) {
        tbody.replaceChildren(h('tr', null, h('td', { colspan: 4 }, 'No events.')));
      }
    } catch (e) {
      if (thisLoad !== loads) return;
      heardDuringLoad = null;
      showError(e, error);
    } finally {
      if (thisLoad === loads) table.removeAttribute('aria-busy');
    }
  }

  const utc = (local) => (local ? new Date(local).toISOString() : undefined);
  form.addEventListener('submit', (e) => {
    e.preventDefault();
    const f = form.elements;
    filters = {
      event: f.event.value, session_id: f.session_id.value.trim(),
      since: utc(f.since.value), until: utc(f.until.value),
    };
    mode = 'search';
    cursors = [0];
    pageIndex = 0;
    load();
  });
  form.addEventListener('reset', () => {
    mode = 'latest';
    setTimeout(load);
  });

  return {
    root,
    load,
    live(event) {
      if (mode !== 'latest') return;
      heardDuringLoad?.push(event);
      if (tbody.querySelector(`tr[data-seq="${event.seq}"]`)) return;
      if (!tbody.querySelector('tr[data-seq]')) tbody.replaceChildren();
      tbody.prepend(row(event));
      while (tbody.childElementCount > 50) tbody.lastElementChild.remove();
    },
  };
}

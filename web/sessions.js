// The sessions page: every live session, who it belongs to, its time
// left, what it holds and what it waits for (read from /api/locks/all, one
// request for all of them). Re-read at most twice a second while events
// arrive. Admins may end a session, with a confirmation and a reason.

import { api, query, seg } from './api.js';
import { busy, confirmWithReason, duration, h, localTime, notify, showError } from './ui.js';

export function sessionsPage(ctx, main) {
  const tbody = h('tbody');
  const count = h('p.count', { 'aria-live': 'polite' });
  const more = h('div.pager');
  main.replaceChildren(
    h('section', { 'aria-labelledby': 'sessions-title' },
      h('div.page-head', null, h('h1', { id: 'sessions-title' }, 'Sessions'), count),
      h('div.table-wrap', null, h('table.sessions', null,
        h('caption', null, 'Live sessions, what each holds and what it waits for'),
        h('thead', null, h('tr', null,
          ['Client', 'User', 'Session', 'Opened', 'Time left', 'Holds', 'Waits for', ''].map((c) => h('th', { scope: 'col' }, c)))),
        tbody)),
      more));

  let rows = [];
  let limitPages = 1;
  let destroyed = false;

  async function load() {
    try {
      const sessions = [];
      let cursor;
      let hasMore = false;
      for (let i = 0; i < limitPages; i += 1) {
        const page = await api('GET', `/locks/sessions${query({ limit: 200, cursor })}`);
        sessions.push(...page.sessions);
        cursor = page.next_cursor;
        hasMore = Boolean(cursor);
        if (!cursor) break;
      }
      const all = await api('GET', '/locks/all');
      if (destroyed) return;
      const holds = new Map();
      const waits = new Map();
      const add = (map, key, value) => { if (!map.has(key)) map.set(key, []); map.get(key).push(value); };
      for (const lock of Object.values(all.exclusive_locks)) add(holds, lock.session_id, lock);
      for (const list of Object.values(all.observer_locks)) for (const lock of list) add(holds, lock.session_id, lock);
      for (const list of Object.values(all.queues)) for (const entry of list) add(waits, entry.session_id, entry);
      rows = sessions.map((s) => ({ s, fetched: performance.now() }));
      tbody.replaceChildren(...sessions.map((s) => row(s, holds.get(s.session_id) ?? [], waits.get(s.session_id) ?? [])));
      if (!sessions.length) tbody.replaceChildren(h('tr', null, h('td', { colspan: 8 }, 'No live sessions.')));
      count.textContent = `${sessions.length}${hasMore ? '+' : ''} live`;
      more.replaceChildren(hasMore
        ? h('button', { type: 'button', onclick: () => { limitPages += 1; load(); } }, 'Show more')
        : '');
    } catch (e) {
      showError(e);
    }
  }

  const link = (id) => h('a', { href: `#/equipment/${encodeURIComponent(id)}` }, id);

  function row(s, held, waiting) {
    const mine = s.session_id === ctx.session?.session_id;
    const end = ctx.can.admin() || mine
      ? h('button', { type: 'button', class: mine ? '' : 'danger', onclick: (e) => endIt(e.target, s, mine) }, mine ? 'End' : 'End…')
      : '';
    return h('tr', { dataset: { session: s.session_id } },
      h('td', null, s.client_name, mine ? h('strong', null, ' (this tab)') : ''),
      h('td', null, s.user ?? '—'),
      h('td', null, h('code', { title: s.session_id }, s.session_id)),
      h('td', null, localTime(s.created_at)),
      h('td.left', { dataset: { remaining: s.time_remaining ?? '' } }, duration(s.time_remaining)),
      h('td', null, held.length
        ? held.map((l, i) => [i ? ', ' : '', link(l.equipment_id), l.lock_mode === 'observer' ? ' (observer)' : ''])
        : '—'),
      h('td', null, waiting.length
        ? waiting.map((q, i) => [i ? ', ' : '', link(q.equipment_id),
          ` (#${q.position}${q.priority ? `, priority ${q.priority}` : ''})`])
        : '—'),
      h('td', null, end));
  }

  async function endIt(button, s, mine) {
    if (mine) {
      await ctx.endSession();
      load();
      return;
    }
    const reason = await confirmWithReason(`End session ${s.client_name}?`,
      `This ends ${s.user ?? 'its user'}'s session ${s.session_id}: its locks are released and it leaves every queue.`,
      'End session');
    if (reason === null) return;
    await busy(button, async () => {
      // An admin's end: its locks are released whatever the server's
      // auto-release setting, and the reason is told to its holder.
      await api('POST', `/locks/sessions/${seg(s.session_id)}/end`, { forced_by: 'dashboard', message: reason });
      notify(`Ended session ${s.client_name}: ${reason}`);
      load();
    });
  }

  let pending = null;
  function reloadSoon() {
    if (pending) return;
    pending = setTimeout(() => { pending = null; load(); }, 500);
  }
  const onSession = () => load();
  ctx.onSessionChange.add(onSession);
  load();

  return {
    name: 'sessions',
    onEvent: reloadSoon,
    onReconnected: load,
    tick() {
      const now = performance.now();
      for (const cell of tbody.querySelectorAll('td.left')) {
        const remaining = cell.dataset.remaining;
        if (remaining === '') continue;
        const started = rows[0]?.fetched ?? now;
        cell.textContent = duration(Number(remaining) - (now - started) / 1000);
      }
    },
    destroy() {
      destroyed = true;
      clearTimeout(pending);
      ctx.onSessionChange.delete(onSession);
    },
  };
}

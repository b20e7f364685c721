// The analytics page: per instrument, over the last day, 7 days or 31
// days, how long it was held (exclusive, observer) and idle, how many
// locks were granted, how long grants from the queue waited (median, p90,
// max), and how many locks were forced off or ran out; from
// GET /api/locks/analytics, with the same figures as CSV to download.
// Re-read when events arrive (at most every 5 s) and once a minute.

import { api, query, token } from './api.js';
import { h, showError } from './ui.js';

const WINDOWS = [
  { days: 1, label: 'Last day' },
  { days: 7, label: 'Last 7 days' },
  { days: 31, label: 'Last 31 days' },
];

/** Seconds as "3 d 4 h", "5 h 12 min", "4 min 9 s", "9.2 s" or "0 s". */
export function span(seconds) {
  if (seconds === null || seconds === undefined) return '—';
  const s = Math.max(0, seconds);
  if (s < 10) return `${Number(s.toFixed(1))} s`;
  const whole = Math.round(s);
  const d = Math.floor(whole / 86400);
  const hours = Math.floor((whole % 86400) / 3600);
  const min = Math.floor((whole % 3600) / 60);
  const sec = whole % 60;
  if (d) return `${d} d ${hours} h`;
  if (hours) return `${hours} h ${min} min`;
  if (min) return `${min} min ${sec} s`;
  return `${sec} s`;
}

export function analyticsPage(ctx, main) {
  const choice = h('select', { id: 'analytics-window', onchange: () => load() },
    WINDOWS.map((w) => h('option', { value: w.days }, w.label)));
  const csv = h('a.csv', { download: 'lablink-analytics.csv' }, 'Download CSV');
  const tbody = h('tbody');
  const caption = h('caption');
  main.replaceChildren(
    h('section', { 'aria-labelledby': 'analytics-title' },
      h('div.page-head', null, h('h1', { id: 'analytics-title' }, 'Analytics'),
        h('p.summary', null, 'How each instrument was used, from the lock history.')),
      h('div.toolbar', null,
        h('label', { for: 'analytics-window' }, 'Window'), choice, csv),
      h('div.table-wrap', null, h('table.analytics', null, caption,
        h('thead', null,
          h('tr', null,
            h('th', { scope: 'col', rowspan: 2 }, 'Instrument'),
            h('th', { scope: 'colgroup', colspan: 3 }, 'Time'),
            h('th.num', { scope: 'col', rowspan: 2 }, 'Grants'),
            h('th', { scope: 'colgroup', colspan: 3 }, 'Wait for a grant from the queue'),
            h('th.num', { scope: 'col', rowspan: 2 }, 'Forced releases'),
            h('th.num', { scope: 'col', rowspan: 2 }, 'Expiries')),
          h('tr', null,
            ['Exclusive', 'Observer', 'Idle', 'Median', 'p90', 'Max'].map((c) => h('th.num', { scope: 'col' }, c)))),
        tbody))));

  let destroyed = false;
  let pending = null;

  /** The window asked for: [since, until) ending now, in RFC 3339. */
  function window() {
    const days = Number(choice.value);
    const until = new Date();
    const since = new Date(until.getTime() - days * 86400000);
    return { days, since: since.toISOString(), until: until.toISOString() };
  }

  async function load() {
    const w = window();
    const params = { since: w.since, until: w.until, group_by: 'equipment' };
    csv.href = `/api/locks/analytics${query({ ...params, format: 'csv' })}`;
    csv.download = `lablink-analytics-${w.days}d.csv`;
    try {
      const report = await api('GET', `/locks/analytics${query(params)}`);
      if (destroyed) return;
      const name = (id) => ctx.model.byId.get(id)?.name;
      const windowSeconds = (new Date(report.until) - new Date(report.since)) / 1000;
      tbody.replaceChildren(...report.rows.map((r) => row(r, name(r.key), windowSeconds)));
      if (!report.rows.length) tbody.replaceChildren(h('tr', null, h('td', { colspan: 10 }, 'No instruments.')));
      caption.textContent = `${WINDOWS.find((x) => x.days === w.days).label}: ${new Date(report.since).toLocaleString()} to ${new Date(report.until).toLocaleString()}.`;
    } catch (e) {
      showError(e);
    }
  }

  function row(r, name, windowSeconds) {
    // The share of the window under some lock.
    const used = windowSeconds > 0 ? Math.min(1, Math.max(0, 1 - (r.idle_seconds ?? windowSeconds) / windowSeconds)) : 0;
    const num = (value) => h('td.num', null, String(value));
    const time = (seconds) => h('td.num', { dataset: { seconds: seconds ?? '' } }, span(seconds));
    return h('tr', { dataset: { id: r.key } },
      h('th', { scope: 'row' },
        h('a', { href: `#/equipment/${encodeURIComponent(r.key)}` }, r.key),
        name && name !== r.key ? h('span.meta', null, ` ${name}`) : '',
        h('meter', { min: 0, max: 1, value: used.toFixed(3), title: `in use ${Math.round(used * 100)}% of the time` })),
      time(r.exclusive_seconds), time(r.observer_seconds), time(r.idle_seconds),
      num(r.grants),
      time(r.wait_median_seconds), time(r.wait_p90_seconds), time(r.wait_max_seconds),
      num(r.forced_releases), num(r.expiries));
  }

  // With a token, a plain link would go without it: fetch, then save.
  csv.addEventListener('click', async (e) => {
    if (!token()) return;
    e.preventDefault();
    try {
      const response = await fetch(csv.href, { headers: { Authorization: `Bearer ${token()}` }, cache: 'no-store' });
      if (!response.ok) throw new Error(`The CSV could not be read (${response.status}).`);
      const url = URL.createObjectURL(await response.blob());
      const save = h('a', { href: url, download: csv.download });
      document.body.append(save);
      save.click();
      save.remove();
      setTimeout(() => URL.revokeObjectURL(url), 1000);
    } catch (err) {
      showError(err);
    }
  });

  function reloadSoon() {
    if (pending) return;
    pending = setTimeout(() => { pending = null; load(); }, 5000);
  }
  const minutely = setInterval(load, 60000);
  load();

  return {
    name: 'analytics',
    onEvent: (event) => { if ('seq' in event && event.equipment_id) reloadSoon(); },
    onReconnected: load,
    destroy() {
      destroyed = true;
      clearTimeout(pending);
      clearInterval(minutely);
    },
  };
}

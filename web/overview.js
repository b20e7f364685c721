// The overview: every instrument as a card (free / held / observers only /
// maintenance with its reason and end, the holder, the time left, the
// queue, who is next and the waiters' priorities), with
// a filter on name, id, driver, model and tags. Cards are built once; an
// event updates only its instrument's card, and the countdown rewrites only
// the cards of held instruments whose shown second changed.

import { duration, h, maintenanceText, who } from './ui.js';

/** What a status shows as: [state key, label]. */
export function stateOf(status) {
  if (!status) return ['unknown', 'Unknown'];
  if (status.maintenance) return ['maintenance', 'Maintenance'];
  if (status.locked) return ['held', 'Held'];
  if (status.observer_count > 0) return ['observed', 'Observers only'];
  return ['free', 'Free'];
}

/** " (priority 5)" for a waiter who asked for one, else "". */
export function priorityText(entry) {
  return entry?.priority ? ` (priority ${entry.priority})` : '';
}

/**
 * "2 waiting · next: bob (priority 5)", and when anyone waits with a
 * priority, every waiter's in serving order: "· priorities 5, 0, -2".
 */
export function queueText(queue) {
  if (!queue.length) return 'nobody waiting';
  let text = `${queue.length} waiting · next: ${who(queue[0])}${priorityText(queue[0])}`;
  if (queue.length > 1 && queue.some((q) => q.priority)) {
    text += ` · priorities ${queue.map((q) => q.priority ?? 0).join(', ')}`;
  }
  return text;
}

export function overviewPage(ctx, main) {
  const { model } = ctx;
  /** id -> {root, badge, holder, left, queue, lastShown} */
  const cards = new Map();
  const list = h('ul.cards', { 'aria-label': 'Instruments' });
  const count = h('p.count', { 'aria-live': 'polite' });
  const filter = h('input', {
    type: 'search', id: 'filter', placeholder: 'Filter by name, id, driver or tag',
    'aria-describedby': 'filter-count', autocomplete: 'off',
  });
  count.id = 'filter-count';
  const summary = h('p.summary');

  main.replaceChildren(
    h('section', { 'aria-labelledby': 'overview-title' },
      h('div.page-head', null,
        h('h1', { id: 'overview-title' }, 'Instruments'),
        summary),
      h('div.toolbar', null,
        h('label', { for: 'filter' }, 'Filter'), filter, count),
      list));

  function buildCard(info) {
    const id = info.equipment_id;
    const link = h('a', { href: `#/equipment/${encodeURIComponent(id)}` }, info.name || id);
    const badge = h('span.badge');
    const holder = h('dd.holder');
    const left = h('dd.left');
    const queue = h('dd.queue');
    const maintTerm = h('dt.maint', { hidden: true }, 'Maintenance');
    const maint = h('dd.maint', { hidden: true });
    const tags = (info.tags ?? []).join(' ');
    const root = h('li.card', { dataset: { id } },
      h('article', { 'aria-labelledby': `card-${id}` },
        h('header', null,
          h('h2', { id: `card-${id}` }, link),
          badge),
        h('p.meta', null, h('code', null, id), ` · ${info.driver}`, info.model ? ` · ${info.model}` : ''),
        h('dl', null,
          maintTerm, maint,
          h('dt', null, 'Holder'), holder,
          h('dt', null, 'Time left'), left,
          h('dt', null, 'Queue'), queue)));
    const card = {
      root, badge, holder, left, queue, maintTerm, maint, lastShown: null,
      text: [id, info.name, info.driver, info.model, tags].join(' ').toLowerCase(),
    };
    cards.set(id, card);
    update(id);
  }

  function update(id) {
    const card = cards.get(id);
    if (!card) return;
    const status = model.status.get(id);
    const [state, label] = stateOf(status);
    card.root.dataset.state = state;
    card.badge.textContent = label;
    const inMaintenance = Boolean(status?.maintenance);
    card.maintTerm.hidden = !inMaintenance;
    card.maint.hidden = !inMaintenance;
    card.maint.textContent = inMaintenance ? maintenanceText(status.maintenance) : '';
    // The holder keeps its lock through maintenance: still shown.
    if (status?.locked) {
      card.holder.textContent = who(status);
    } else if (status?.observer_count) {
      card.holder.textContent = `${status.observer_count} observer${status.observer_count > 1 ? 's' : ''}`;
    } else {
      card.holder.textContent = '—';
    }
    const queue = status?.queue ?? [];
    card.queue.textContent = queueText(queue);
    card.lastShown = null;
    showLeft(id, card);
  }

  function showLeft(id, card) {
    const status = model.status.get(id);
    let text;
    if (!status?.locked) text = '—';
    else if (status.time_remaining === null) text = 'no timeout';
    else {
      const left = model.timeLeft(id);
      text = duration(left);
      // The lease ran out here, or was renewed without an event: ask.
      if (left === 0) model.markStale(id);
    }
    if (text !== card.lastShown) {
      card.left.textContent = text;
      card.lastShown = text;
    }
  }

  /**
   * Shows the matching cards. Non-matching ones are taken out of the list
   * (and still kept current) rather than hidden: with 1,000 cards, removing
   * 990 costs a third of what hiding them does.
   */
  function applyFilter() {
    const words = filter.value.toLowerCase().split(/\s+/).filter(Boolean);
    const shown = [];
    for (const card of cards.values()) {
      if (words.every((w) => card.text.includes(w))) shown.push(card.root);
    }
    const current = list.children;
    const same = current.length === shown.length && shown.every((root, i) => current[i] === root);
    if (!same) list.replaceChildren(...shown);
    count.textContent = words.length ? `${shown.length} of ${cards.size} shown` : `${cards.size} instruments`;
  }

  function summarize() {
    const counts = { free: 0, held: 0, observed: 0, maintenance: 0 };
    for (const status of model.status.values()) counts[stateOf(status)[0]] += 1;
    summary.textContent = `${counts.held} held · ${counts.observed} observed · ${counts.free} free`
      + (counts.maintenance ? ` · ${counts.maintenance} in maintenance` : '');
  }

  function buildAll() {
    cards.clear();
    for (const info of model.equipment) buildCard(info);
    list.replaceChildren();
    applyFilter();
    if (!model.equipment.length) list.replaceChildren(h('li.empty', null, 'No instruments are configured.'));
    summarize();
  }

  let summaryPending = false;
  const unsubscribe = model.subscribe((kind, id) => {
    if (kind === 'snapshot') buildAll();
    else {
      update(id);
      // One summary per frame, however many cards changed in it.
      if (!summaryPending) {
        summaryPending = true;
        requestAnimationFrame(() => { summaryPending = false; summarize(); });
      }
    }
  });

  filter.addEventListener('input', applyFilter);
  buildAll();

  return {
    name: 'overview',
    tick() {
      for (const id of model.deadlines.keys()) {
        const card = cards.get(id);
        if (card) showLeft(id, card);
      }
    },
    destroy: unsubscribe,
  };
}

// The overview: every instrument as a card (free / held / observers only /
// maintenance with its reason and end, the holder, the time left, the
// queue, who is next and the waiters' priorities), with
// a filter on name, id, driver, model and tags; each card shows its tags
// and the lock group its lock belongs to. Configured lock groups have
// cards of their own (members, who holds the group, its queue, and for
// this tab's session *Take group* / *Release group*). Cards are built once; an
// event updates only its instrument's card, and the countdown rewrites only
// the cards of held instruments whose shown second changed.

import { api } from './api.js';
import { busy, duration, h, maintenanceText, who } from './ui.js';

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
  /** group id -> {root, badge, holder, left, queue, actions, text} */
  const groupCards = new Map();
  const groupList = h('ul.cards.groups', { 'aria-label': 'Lock groups' });
  const groupSection = h('section.group-section', { 'aria-labelledby': 'groups-title', hidden: true },
    h('h2', { id: 'groups-title' }, 'Lock groups'), groupList);

  main.replaceChildren(
    h('section', { 'aria-labelledby': 'overview-title' },
      h('div.page-head', null,
        h('h1', { id: 'overview-title' }, 'Instruments'),
        summary),
      h('div.toolbar', null,
        h('label', { for: 'filter' }, 'Filter'), filter, count),
      groupSection,
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
    const groupTerm = h('dt.group', { hidden: true }, 'Group');
    const group = h('dd.group', { hidden: true });
    const tags = (info.tags ?? []).join(' ');
    const root = h('li.card', { dataset: { id } },
      h('article', { 'aria-labelledby': `card-${id}` },
        h('header', null,
          h('h2', { id: `card-${id}` }, link),
          badge),
        h('p.meta', null, h('code', null, id), ` · ${info.driver}`, info.model ? ` · ${info.model}` : ''),
        info.tags?.length
          ? h('ul.tags', { 'aria-label': 'Tags' }, info.tags.map((t) => h('li.tag', null, t)))
          : null,
        h('dl', null,
          maintTerm, maint,
          h('dt', null, 'Holder'), holder,
          groupTerm, group,
          h('dt', null, 'Time left'), left,
          h('dt', null, 'Queue'), queue)));
    const card = {
      root, badge, holder, left, queue, maintTerm, maint, groupTerm, group, lastShown: null,
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
    showGroupOf(card, id);
    for (const g of model.groups) {
      if (!g.members.includes(id)) continue;
      // Whether a lock reads as its configured group depends on every member.
      for (const m of g.members) if (m !== id && cards.has(m)) showGroupOf(cards.get(m), m);
      updateGroup(g.group_id);
    }
  }

  /** The lock group `id`'s lock belongs to, on its card. */
  function showGroupOf(card, id) {
    const group = model.status.get(id)?.locked ? model.groupLabel(id) : null;
    card.groupTerm.hidden = !group;
    card.group.hidden = !group;
    card.group.textContent = group ?? '';
  }

  function buildGroupCard(group) {
    const id = group.group_id;
    const badge = h('span.badge');
    const holder = h('dd.holder');
    const left = h('dd.left');
    const queue = h('dd.queue');
    const actions = h('div.actions');
    const note = h('p.note', { role: 'status' });
    const error = h('p.error', { role: 'alert', hidden: true });
    const members = group.members.map((m, i) => [i ? ', ' : '',
      h('a', { href: `#/equipment/${encodeURIComponent(m)}` }, m)]);
    const root = h('li.card.group-card', { dataset: { group: id } },
      h('article', { 'aria-labelledby': `group-${id}` },
        h('header', null, h('h3', { id: `group-${id}` }, group.name || id), badge),
        h('p.meta', null, h('code', null, id), ` · ${group.members.length} instruments, taken all at once`),
        h('dl', null,
          h('dt', null, 'Members'), h('dd.members', null, members),
          h('dt', null, 'Holder'), holder,
          h('dt', null, 'Time left'), left,
          h('dt', null, 'Queue'), queue),
        actions, note, error));
    groupCards.set(id, {
      group, root, badge, holder, left, queue, actions, note, error, lastShown: null,
      text: [id, group.name, ...group.members].join(' ').toLowerCase(),
    });
    updateGroup(id);
  }

  /** [state, label, holder text, the group_id holding every member or null]. */
  function groupState(group) {
    const statuses = group.members.map((m) => model.status.get(m));
    const held = statuses.filter((s) => s?.locked);
    if (statuses.some((s) => s?.maintenance)) return ['maintenance', 'Maintenance', held.length ? who(held[0]) : '—', null];
    const gid = held[0]?.group_id;
    if (held.length === statuses.length && gid && held.every((s) => s.group_id === gid)) {
      return ['held', 'Held', who(held[0]), gid];
    }
    if (held.length) {
      const busyText = group.members.filter((m) => model.status.get(m)?.locked)
        .map((m) => `${m} (${who(model.status.get(m))})`).join(', ');
      return ['held', 'Partly held', busyText, null];
    }
    return ['free', 'Free', '—', null];
  }

  /**
   * The group's waiters: every request waiting for any member, once each (a
   * group waits in every member's queue), next in line first.
   */
  function groupQueue(group) {
    const seen = new Map();
    for (const m of group.members) {
      for (const entry of model.status.get(m)?.queue ?? []) {
        const key = entry.group_id ?? entry.queue_id;
        const known = seen.get(key);
        if (!known || entry.position < known.position) seen.set(key, entry);
      }
    }
    return [...seen.values()].sort((a, b) => a.position - b.position || a.queued_at.localeCompare(b.queued_at));
  }

  function updateGroup(gid) {
    const card = groupCards.get(gid);
    if (!card) return;
    const [state, label, holderText, heldAs] = groupState(card.group);
    card.root.dataset.state = state;
    card.badge.textContent = label;
    card.holder.textContent = holderText;
    card.queue.textContent = queueText(groupQueue(card.group));
    card.heldAs = heldAs;
    card.lastShown = null;
    showGroupLeft(card);
    showGroupActions(card);
  }

  function showGroupLeft(card) {
    const first = card.group.members.find((m) => model.status.get(m)?.locked);
    const left = card.heldAs && first ? model.timeLeft(first) : null;
    const text = !card.heldAs ? '—' : left === null ? 'no timeout' : duration(left);
    if (text !== card.lastShown) {
      card.left.textContent = text;
      card.lastShown = text;
    }
  }

  /** Take group / Release group, for this tab's session (built when it changes). */
  function showGroupActions(card) {
    const session = ctx.session?.session_id;
    const gid = card.group.group_id;
    const mine = session && card.group.members.some((m) => model.status.get(m)?.session_id === session);
    const waiting = session && groupQueue(card.group).some((q) => q.session_id === session);
    const key = `${session}|${mine}|${waiting}`;
    if (card.actionsFor === key) return;
    card.actionsFor = key;
    const buttons = [];
    if (session && ctx.can.lock() && !mine && !waiting) {
      const take = h('button', { type: 'button', class: 'primary' }, 'Take group');
      take.addEventListener('click', () => busy(take, async () => {
        const answer = await api('POST', '/locks/acquire',
          { equipment_id: gid, session_id: session, queue_if_busy: true });
        // The card may have been rebuilt meanwhile (a fresh snapshot).
        const note = (groupCards.get(gid) ?? card).note;
        note.textContent = answer.status === 'queued'
          ? `Queued in every member's queue: ${answer.queue_entries.map((q) => `${q.equipment_id} #${q.position}`).join(', ')}`
          : `Taken: ${answer.locks.map((l) => `${l.equipment_id} (token ${l.fencing_token})`).join(', ')}`;
        for (const m of card.group.members) model.markStale(m);
      }, card.error));
      buttons.push(take);
    }
    if (session && (mine || waiting)) {
      const release = h('button', { type: 'button' }, mine ? 'Release group' : 'Leave the queues');
      release.addEventListener('click', () => busy(release, async () => {
        await api('POST', '/locks/release', { equipment_id: gid, session_id: session });
        (groupCards.get(gid) ?? card).note.textContent = '';
        for (const m of card.group.members) model.markStale(m);
      }, card.error));
      buttons.push(release);
    }
    card.actions.replaceChildren(...buttons);
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
    const groups = [...groupCards.values()].filter((c) => words.every((w) => c.text.includes(w)));
    groupList.replaceChildren(...groups.map((c) => c.root));
    groupSection.hidden = !groups.length;
    count.textContent = words.length ? `${shown.length} of ${cards.size} shown` : `${cards.size} instruments`;
    if (groupCards.size) {
      const noun = groupCards.size === 1 ? 'group' : 'groups';
      count.textContent += words.length ? ` · ${groups.length} of ${groupCards.size} ${noun}` : ` · ${groupCards.size} ${noun}`;
    }
  }

  function summarize() {
    const counts = { free: 0, held: 0, observed: 0, maintenance: 0 };
    for (const status of model.status.values()) counts[stateOf(status)[0]] += 1;
    summary.textContent = `${counts.held} held · ${counts.observed} observed · ${counts.free} free`
      + (counts.maintenance ? ` · ${counts.maintenance} in maintenance` : '');
  }

  function buildAll() {
    cards.clear();
    groupCards.clear();
    for (const group of model.groups) buildGroupCard(group);
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
  const onSession = () => { for (const card of groupCards.values()) showGroupActions(card); };
  ctx.onSessionChange.add(onSession);
  buildAll();

  return {
    name: 'overview',
    tick() {
      for (const id of model.deadlines.keys()) {
        const card = cards.get(id);
        if (card) showLeft(id, card);
      }
      for (const card of groupCards.values()) if (card.heldAs) showGroupLeft(card);
    },
    destroy() {
      unsubscribe();
      ctx.onSessionChange.delete(onSession);
    },
  };
}

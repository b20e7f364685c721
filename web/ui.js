// Small DOM helpers shared by the pages: building elements, showing API
// errors (the server's `detail`), local times, durations, and the
// confirmation dialog that asks for a reason.

/** h('p.note', {title: 'x'}, 'text', child...): an element. */
export function h(spec, attrs, ...children) {
  const [tag, ...classes] = spec.split('.');
  const node = document.createElement(tag || 'div');
  if (classes.length) node.className = classes.join(' ');
  if (attrs) {
    for (const [key, value] of Object.entries(attrs)) {
      if (value === undefined || value === null || value === false) continue;
      if (key.startsWith('on')) node.addEventListener(key.slice(2), value);
      else if (key === 'dataset') Object.assign(node.dataset, value);
      else if (value === true) node.setAttribute(key, '');
      else node.setAttribute(key, String(value));
    }
  }
  for (const child of children.flat(Infinity)) {
    if (child === undefined || child === null || child === false) continue;
    node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

/**
 * Makes `items` the children of `parent`, leaving in place those already
 * there: a form someone is typing in keeps its focus (moving a node out of
 * the document blurs it, and the next keystrokes go nowhere).
 */
export function replaceChildrenInPlace(parent, items) {
  const keep = new Set(items);
  for (const child of [...parent.childNodes]) if (!keep.has(child)) child.remove();
  let cursor = parent.firstChild;
  for (const item of items) {
    if (item === cursor) cursor = cursor.nextSibling;
    else parent.insertBefore(item, cursor);
  }
}

/** Shows an error (an ApiError's detail, or any message) until dismissed. */
export function showError(error, where) {
  const text = error?.detail ?? error?.message ?? String(error);
  if (where) {
    where.textContent = text;
    where.hidden = false;
    return;
  }
  const box = document.getElementById('alerts');
  const note = h('div.alert',
    { 'data-code': error?.code },
    h('p', null, text),
    h('button', { type: 'button', 'aria-label': 'Dismiss', onclick: () => note.remove() }, '×'));
  box.append(note);
  while (box.children.length > 4) box.firstElementChild.remove();
}

/** Shows a passing notice (a lost lock, a granted turn) for a while. */
export function notify(text, kind = 'info') {
  const box = document.getElementById('alerts');
  const note = h(`div.alert.${kind}`, null, h('p', null, text),
    h('button', { type: 'button', 'aria-label': 'Dismiss', onclick: () => note.remove() }, '×'));
  box.append(note);
  setTimeout(() => note.remove(), 15000);
}

export function clearError(where) {
  if (where) {
    where.textContent = '';
    where.hidden = true;
  }
}

const dateTime = new Intl.DateTimeFormat(undefined, {
  year: 'numeric', month: 'short', day: 'numeric',
  hour: '2-digit', minute: '2-digit', second: '2-digit',
});

/** An RFC 3339 timestamp as a <time> in the browser's time zone. */
export function localTime(iso) {
  if (!iso) return '—';
  const date = new Date(iso);
  return h('time', { datetime: iso, title: iso }, dateTime.format(date));
}

/** Seconds as "1:05:09", "4:09" or "9 s". */
export function duration(seconds) {
  if (seconds === null || seconds === undefined) return 'no timeout';
  const s = Math.max(0, Math.ceil(seconds));
  const hours = Math.floor(s / 3600);
  const minutes = Math.floor((s % 3600) / 60);
  const secs = s % 60;
  const pad = (n) => String(n).padStart(2, '0');
  if (hours) return `${hours}:${pad(minutes)}:${pad(secs)}`;
  if (minutes) return `${minutes}:${pad(secs)}`;
  return `${secs} s`;
}

/** Who a lock or queue entry belongs to: "alice · Lab PC #3". */
export function who(entry) {
  if (!entry) return '';
  const parts = [];
  if (entry.user) parts.push(entry.user);
  if (entry.client_name) parts.push(entry.client_name);
  if (!parts.length && entry.session_id) parts.push(shortId(entry.session_id));
  return parts.join(' · ');
}

export function shortId(id) {
  return id && id.length > 12 ? `${id.slice(0, 8)}…` : id;
}

/**
 * Asks to confirm `message` with a reason; resolves to the reason, or null
 * when cancelled. Options: `reason: false` asks for no reason (resolves
 * to ''); `reasonLabel` names the field; `until: true` also asks for an
 * optional end time (resolves to {reason, until}, until an RFC 3339 UTC
 * string or null, read in the browser's time zone).
 */
export function confirmWithReason(title, message, okLabel = 'Confirm', options = {}) {
  const dialog = document.getElementById('confirm-dialog');
  const form = document.getElementById('confirm-form');
  dialog.querySelector('#confirm-title').textContent = title;
  dialog.querySelector('[data-role=message]').textContent = message;
  dialog.querySelector('[data-role=ok]').textContent = okLabel;
  const askReason = options.reason !== false;
  dialog.querySelector('[data-role=reason-field]').hidden = !askReason;
  dialog.querySelector('[data-role=reason-label]').textContent = options.reasonLabel
    ?? 'Reason (recorded with the action)';
  form.elements.reason.required = askReason;
  dialog.querySelector('[data-role=until-field]').hidden = !options.until;
  form.reset();
  return new Promise((resolve) => {
    const done = (value) => {
      form.removeEventListener('submit', onSubmit);
      cancel.removeEventListener('click', onCancel);
      dialog.removeEventListener('cancel', onCancel);
      if (dialog.open) dialog.close();
      resolve(value);
    };
    const onSubmit = (e) => {
      e.preventDefault();
      const reason = form.elements.reason.value.trim();
      if (askReason && !reason) return;
      if (!options.until) {
        done(reason);
        return;
      }
      const local = form.elements.until.value;
      done({ reason, until: local ? new Date(local).toISOString() : null });
    };
    const onCancel = () => done(null);
    const cancel = form.querySelector('[data-role=cancel]');
    form.addEventListener('submit', onSubmit);
    cancel.addEventListener('click', onCancel);
    dialog.addEventListener('cancel', onCancel);
    dialog.showModal();
    (askReason ? form.elements.reason : form.querySelector('[data-role=ok]')).focus();
  });
}

/** A maintenance as words: "calibration · until 28 Nov 2026, 12:00:00 · by alice". */
export function maintenanceText(m) {
  const parts = [m.reason];
  parts.push(m.until ? `until ${dateTime.format(new Date(m.until))}` : 'no end set');
  if (m.user) parts.push(`by ${m.user}`);
  if (m.group) parts.push(`with group ${m.group}`);
  return parts.join(' · ');
}

/** Runs `action` with `button` disabled, showing an error where asked. */
export async function busy(button, action, errorBox) {
  if (button) button.disabled = true;
  clearError(errorBox);
  try {
    return await action();
  } catch (e) {
    showError(e, errorBox);
    return undefined;
  } finally {
    if (button) button.disabled = false;
  }
}

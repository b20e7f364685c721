// The dashboard's entry point: finds out who the user is (signing in with
// a token when the server requires one), loads the instruments, opens the
// live connection, and shows the page the address asks for (#/,
// #/equipment/<id>, #/sessions, #/analytics). Pages get a shared context and are told
// about events; they update only what an event touched.

import { api, ApiError, mySession, newestSeq, setMySession, setToken, token } from './api.js';
import { Live } from './live.js';
import { Model } from './model.js';
import { clearError, h, notify, showError, shortId } from './ui.js';
import { overviewPage } from './overview.js';
import { instrumentPage } from './instrument.js';
import { sessionsPage } from './sessions.js';
import { analyticsPage } from './analytics.js';

const ctx = {
  model: new Model(),
  /** {auth_required, user, role} */
  me: null,
  live: null,
  /** This tab's session ({session_id, client_name}) or null. */
  session: mySession(),
  /** Role checks: what the page offers (the server decides anyway). */
  can: {
    lock: () => ctx.me && ctx.me.role !== 'observer',
    observe: () => Boolean(ctx.me),
    admin: () => ctx.me?.role === 'admin',
  },
  openSession,
  endSession,
  /** Forget the session if the server says it is gone. */
  checkSessionError(error) {
    if (error instanceof ApiError && error.code === 'session_not_found') setSession(null);
  },
  onSessionChange: new Set(),
};

let page = null;
const main = document.getElementById('main');

function setLiveState(state, detail) {
  const box = document.getElementById('live');
  box.dataset.state = state;
  const text = {
    connecting: 'Connecting…',
    live: 'Live',
    reconnecting: 'Reconnecting…',
    refused: 'Disconnected',
  }[state] ?? state;
  box.querySelector('.text').textContent = text;
  box.title = detail ?? (state === 'live' ? 'Updates arrive as they happen' : '');
  if (state === 'refused') {
    // The token was revoked: nothing can be read with it any more.
    showError({ detail: `${detail}. Sign in again.` });
    setToken(null);
    signIn().then(() => location.reload());
  }
}

function setSession(session) {
  ctx.session = session;
  setMySession(session);
  ctx.live?.follow(session?.session_id ?? null);
  renderMe();
  for (const listener of ctx.onSessionChange) listener();
}

async function openSession() {
  const dialog = document.getElementById('session-dialog');
  const form = document.getElementById('session-form');
  const error = form.querySelector('[data-role=error]');
  clearError(error);
  return new Promise((resolve) => {
    const done = (value) => {
      form.removeEventListener('submit', onSubmit);
      cancel.removeEventListener('click', onCancel);
      dialog.removeEventListener('cancel', onCancel);
      if (dialog.open) dialog.close();
      resolve(value);
    };
    const onSubmit = async (e) => {
      e.preventDefault();
      const body = {
        client_name: form.elements.client_name.value.trim(),
        timeout_seconds: Number(form.elements.timeout_seconds.value),
        metadata: { opened_from: 'dashboard' },
      };
      try {
        const created = await api('POST', '/locks/sessions/create', body);
        setSession({ session_id: created.session_id, client_name: created.client_name });
        done(ctx.session);
      } catch (err) {
        showError(err, error);
      }
    };
    const onCancel = () => done(null);
    const cancel = form.querySelector('[data-role=cancel]');
    form.addEventListener('submit', onSubmit);
    cancel.addEventListener('click', onCancel);
    dialog.addEventListener('cancel', onCancel);
    dialog.showModal();
  });
}

async function endSession() {
  if (!ctx.session) return;
  try {
    await api('DELETE', `/locks/sessions/${encodeURIComponent(ctx.session.session_id)}`);
  } catch (e) {
    if (!(e instanceof ApiError && e.code === 'session_not_found')) {
      showError(e);
      return;
    }
  }
  setSession(null);
}

function renderMe() {
  const box = document.getElementById('me');
  const parts = [];
  if (ctx.me?.auth_required) {
    parts.push(h('span.user', null, `${ctx.me.user} (${ctx.me.role})`));
    parts.push(h('button', { type: 'button', onclick: signOut }, 'Sign out'));
  }
  if (ctx.me) {
    if (ctx.session) {
      parts.push(h('span.session', { title: ctx.session.session_id },
        'Session: ', h('strong', null, ctx.session.client_name), ` ${shortId(ctx.session.session_id)}`));
      parts.push(h('button', { type: 'button', onclick: endSession }, 'End session'));
    } else {
      parts.push(h('button', { type: 'button', onclick: openSession }, 'Open session'));
    }
  }
  box.replaceChildren(...parts);
}

function signOut() {
  setToken(null);
  setMySession(null);
  location.reload();
}

/** Asks for a token until the server accepts one; answers whoami. */
async function signIn() {
  const dialog = document.getElementById('signin-dialog');
  const form = document.getElementById('signin-form');
  const error = form.querySelector('[data-role=error]');
  return new Promise((resolve) => {
    form.addEventListener('submit', async (e) => {
      e.preventDefault();
      clearError(error);
      setToken(form.elements.token.value.trim());
      try {
        const me = await api('GET', '/whoami');
        form.reset();
        dialog.close();
        resolve(me);
      } catch (err) {
        setToken(null);
        showError(err, error);
      }
    });
    // Without a token nothing can be read: the dialog stays.
    dialog.addEventListener('cancel', (e) => e.preventDefault());
    dialog.showModal();
  });
}

function route() {
  page?.destroy?.();
  const hash = location.hash || '#/';
  let match;
  if ((match = hash.match(/^#\/equipment\/(.+)$/))) {
    page = instrumentPage(ctx, main, decodeURIComponent(match[1]));
  } else if (hash === '#/sessions') {
    page = sessionsPage(ctx, main);
  } else if (hash === '#/analytics') {
    page = analyticsPage(ctx, main);
  } else {
    page = overviewPage(ctx, main);
  }
  for (const link of document.querySelectorAll('nav a[data-page]')) {
    const current = link.dataset.page === (page.name ?? '');
    if (current) link.setAttribute('aria-current', 'page');
    else link.removeAttribute('aria-current');
  }
}

function onEvent(event) {
  if (event.equipment_id) ctx.model.markStale(event.equipment_id);
  const mine = ctx.session && event.session_id === ctx.session.session_id;
  if (mine && !('seq' in event)) {
    const where = event.equipment_id ?? '';
    if (event.event === 'lock_lost') notify(`Your lock on ${where} was lost (${event.reason ?? 'ended'}).`, 'warn');
    if (event.event === 'lock_granted') notify(`Your turn: you now hold ${where}.`);
    if (event.event === 'lock_expiring') notify(`Your lock on ${where} expires soon: renew it to keep it.`, 'warn');
    if (event.event === 'queue_place_lost') {
      const why = event.reason === 'wait_timeout'
        ? 'you waited longer than you allowed'
        : `removed by ${event.user ?? event.forced_by ?? 'a lab manager'}${event.message ? `: ${event.message}` : ''}`;
      notify(`Your place in the queue for ${where} is gone (${why}).`, 'warn');
    }
  }
  if (mine && event.event === 'maintenance_started') {
    notify(`${event.equipment_id} is going into maintenance (${event.message ?? 'no reason given'}); you keep your lock until you release it.`, 'warn');
  }
  if (mine && (event.event === 'session_ended' || event.event === 'session_expired')) setSession(null);
  page?.onEvent?.(event);
}

async function resync() {
  try {
    // A restarted server on the memory store starts its history again.
    const newest = await newestSeq();
    if (ctx.live.lastSeq !== null && newest < ctx.live.lastSeq) ctx.live.lastSeq = newest;
    await ctx.model.loadSnapshot();
    page?.onReconnected?.();
  } catch (e) {
    showError(e);
  }
}

async function start() {
  try {
    ctx.me = await api('GET', '/whoami');
  } catch (e) {
    if (!(e instanceof ApiError && e.status === 401)) {
      showError(e);
      main.replaceChildren(h('p.empty', null, 'The server could not be reached. Reload to try again.'));
      return;
    }
    if (token()) showError(e);
    setToken(null);
    ctx.me = await signIn();
  }
  renderMe();
  try {
    const seq = await newestSeq();
    ctx.live = new Live({ onEvent, onState: setLiveState, onReconnected: resync });
    ctx.live.start(seq, ctx.session?.session_id ?? null);
    await ctx.model.loadSnapshot();
  } catch (e) {
    showError(e);
  }
  window.addEventListener('hashchange', route);
  route();
  setInterval(() => page?.tick?.(), 1000);
  // A renewal (lock activity, a command) is not an event: re-read what is
  // shown when the tab comes back into view.
  document.addEventListener('visibilitychange', () => {
    if (!document.hidden) resync();
  });
}

start();

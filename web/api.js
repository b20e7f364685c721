// The LabLink HTTP API as the dashboard uses it: one `api()` call that
// adds the bearer token (kept in sessionStorage, this tab only) and turns
// every error answer into an ApiError carrying the server's own `detail`.

const TOKEN_KEY = 'lablink.token';
const SESSION_KEY = 'lablink.session';

export function token() {
  return sessionStorage.getItem(TOKEN_KEY);
}

export function setToken(value) {
  if (value) sessionStorage.setItem(TOKEN_KEY, value);
  else sessionStorage.removeItem(TOKEN_KEY);
}

/** The session this tab opened ({session_id, client_name}), or null. */
export function mySession() {
  try {
    return JSON.parse(sessionStorage.getItem(SESSION_KEY));
  } catch {
    return null;
  }
}

export function setMySession(session) {
  if (session) sessionStorage.setItem(SESSION_KEY, JSON.stringify(session));
  else sessionStorage.removeItem(SESSION_KEY);
}

export class ApiError extends Error {
  constructor(status, code, detail) {
    super(detail);
    this.status = status;
    this.code = code;
    this.detail = detail;
  }
}

/** Calls `method path` under /api; answers the parsed body or throws ApiError. */
export async function api(method, path, body) {
  const headers = { Accept: 'application/json' };
  const bearer = token();
  if (bearer) headers.Authorization = `Bearer ${bearer}`;
  const init = { method, headers, cache: 'no-store' };
  if (body !== undefined) {
    headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(`/api${path}`, init);
  } catch (e) {
    throw new ApiError(0, 'unreachable', `The server cannot be reached (${e.message}).`);
  }
  const text = await response.text();
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    data = null;
  }
  if (!response.ok) {
    const detail = data?.detail ?? data?.error ?? `HTTP ${response.status} ${response.statusText}`;
    throw new ApiError(response.status, data?.code ?? `http_${response.status}`, detail);
  }
  return data;
}

/**
 * A fresh command id. crypto.randomUUID() exists only in secure contexts
 * (HTTPS or loopback); a lab server reached over plain HTTP on its LAN
 * address is not one, and getRandomValues works everywhere.
 */
export function commandId() {
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  return `cmd_${Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join('')}`;
}

/** Path segment escaping for ids. */
export const seg = encodeURIComponent;

/** A query string from an object, leaving out empty values. */
export function query(params) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) {
    if (v !== undefined && v !== null && v !== '') q.set(k, String(v));
  }
  const s = q.toString();
  return s ? `?${s}` : '';
}

/** The newest event's seq (0 if none): where a live subscription starts. */
export async function newestSeq() {
  // A cursor past the newest event answers an empty page whose
  // next_cursor is the newest seq (README, History).
  const page = await api('GET', '/locks/events?limit=1&cursor=9223372036854775807');
  return page.next_cursor ?? 0;
}

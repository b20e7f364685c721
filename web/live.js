// The live connection: one WebSocket to /api/ws subscribed to everything
// (and to this tab's session, for its notifications). It remembers the
// last `seq` it saw and, after any drop (a server restart, a lag), reconnects
// with `resume_from` so no event is missed, backing off up to 5 s. It tells
// its listener about each event, each state change (connecting / live /
// reconnecting) and each reconnection (so views can re-read a snapshot:
// a restarted server on the memory store has a new history).

import { token } from './api.js';

export class Live {
  /**
   * @param {object} handlers
   *   onEvent(event), onState(state, detail), onReconnected()
   */
  constructor(handlers) {
    this.handlers = handlers;
    this.lastSeq = null;
    this.sessionId = null;
    this.socket = null;
    this.retryMs = 500;
    this.everOpened = false;
    /** Whether the socket is new since the last `subscribed`. */
    this.newSocket = false;
    this.stopped = false;
  }

  /** Starts after the event numbered `seq` (events after it are replayed). */
  start(seq, sessionId) {
    this.lastSeq = seq;
    this.sessionId = sessionId;
    this.connect();
  }

  /** Changes the session whose notifications this tab hears. */
  follow(sessionId) {
    this.sessionId = sessionId;
    this.subscribe();
  }

  stop() {
    this.stopped = true;
    this.socket?.close(1000, 'signed out');
  }

  connect() {
    if (this.stopped) return;
    const scheme = location.protocol === 'https:' ? 'wss' : 'ws';
    // Browsers cannot set headers on a WebSocket: the server takes the
    // token as access_token on /api/ws only (never logged).
    const bearer = token();
    const auth = bearer ? `?access_token=${encodeURIComponent(bearer)}` : '';
    this.handlers.onState(this.everOpened ? 'reconnecting' : 'connecting');
    let socket;
    try {
      socket = new WebSocket(`${scheme}://${location.host}/api/ws${auth}`);
    } catch (e) {
      this.retry();
      return;
    }
    this.socket = socket;
    socket.onopen = () => {
      this.newSocket = true;
      this.subscribe();
    };
    socket.onmessage = (message) => this.receive(message.data);
    socket.onclose = (close) => {
      if (this.socket !== socket) return;
      this.socket = null;
      if (close.code === 1008) {
        this.handlers.onState('refused', close.reason || 'the server refused the connection');
        return;
      }
      this.retry();
    };
  }

  subscribe() {
    if (!this.socket || this.socket.readyState !== WebSocket.OPEN) return;
    const message = { type: 'subscribe', all: true };
    if (this.sessionId) message.session_id = this.sessionId;
    if (this.lastSeq !== null) message.resume_from = this.lastSeq;
    this.socket.send(JSON.stringify(message));
  }

  retry() {
    if (this.stopped) return;
    this.handlers.onState(this.everOpened ? 'reconnecting' : 'connecting');
    setTimeout(() => this.connect(), this.retryMs);
    this.retryMs = Math.min(this.retryMs * 2, 5000);
  }

  receive(text) {
    let message;
    try {
      message = JSON.parse(text);
    } catch {
      return;
    }
    if (message.type === 'subscribed') {
      this.retryMs = 500;
      // A new subscription on the same socket (another session followed)
      // missed nothing: only a new socket after the first is a reconnect,
      // which makes the page read everything again.
      const reconnected = this.everOpened && this.newSocket;
      this.everOpened = true;
      this.newSocket = false;
      this.handlers.onState('live');
      if (reconnected) this.handlers.onReconnected();
      return;
    }
    if (message.type === 'lagged') {
      // Too slow to keep up: the server closes; resume from what we had.
      if (typeof message.resume_from === 'number') this.lastSeq = message.resume_from;
      this.socket?.close();
      return;
    }
    if (message.type === 'error') {
      this.handlers.onState('live', message.detail);
      return;
    }
    if (typeof message.seq === 'number') {
      if (this.lastSeq !== null && message.seq <= this.lastSeq) return; // a replayed duplicate
      this.lastSeq = message.seq;
    }
    if (message.event) this.handlers.onEvent(message);
  }
}

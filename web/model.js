// What the page knows about every instrument's lock, kept current from
// live events. The first picture comes from three requests (the equipment
// list, /api/locks/all and /api/equipment/maintenance), whatever the
// number of instruments; after that
// an event marks its instrument stale, and only that instrument is read
// again (its lock status, and its queue when someone waits), a few at a
// time, coalescing bursts: a hundred events on one instrument cost one or
// two reads, and nothing else on the page is touched.

import { api, seg } from './api.js';

const PARALLEL_READS = 6;

export class Model {
  constructor() {
    /** @type {Array<object>} the equipment list, in the server's order */
    this.equipment = [];
    this.byId = new Map();
    /** @type {Array<object>} the configured lock groups ({group_id, name, members}) */
    this.groups = [];
    /** id -> lock status (the API's LockStatusView plus `queue`) */
    this.status = new Map();
    /** id -> performance.now() at which the exclusive lock's lease ends */
    this.deadlines = new Map();
    this.listeners = new Set();
    this.stale = new Set();
    this.reading = new Set();
  }

  /** listener(kind, id): kind is 'snapshot' or 'equipment'. */
  subscribe(listener) {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  emit(kind, id) {
    for (const listener of this.listeners) listener(kind, id);
  }

  async loadSnapshot() {
    const [list, all, service] = await Promise.all([
      api('GET', '/equipment/list'),
      api('GET', '/locks/all'),
      // Every instrument out of service, in one request (a server without
      // it shows maintenance once an instrument is read again).
      api('GET', '/equipment/maintenance').catch(() => ({ maintenance: {} })),
    ]);
    this.equipment = list.equipment;
    this.groups = list.groups ?? [];
    this.byId = new Map(this.equipment.map((e) => [e.equipment_id, e]));
    this.status.clear();
    this.deadlines.clear();
    for (const { equipment_id: id } of this.equipment) {
      const lock = all.exclusive_locks[id];
      const observers = all.observer_locks[id] ?? [];
      const queue = all.queues[id] ?? [];
      this.setStatus(id, {
        equipment_id: id,
        locked: Boolean(lock),
        lock_mode: lock ? 'exclusive' : observers.length ? 'observer' : null,
        session_id: lock?.session_id ?? null,
        lock_id: lock?.lock_id ?? null,
        acquired_at: lock?.acquired_at ?? null,
        time_remaining: lock?.time_remaining ?? null,
        expires_at: lock?.expires_at ?? null,
        fencing_token: lock?.fencing_token ?? null,
        queue_length: queue.length,
        observer_count: observers.length,
        observer_sessions: observers.map((o) => o.session_id),
        user: lock?.user ?? null,
        client_name: lock?.client_name ?? null,
        group_id: lock?.group_id ?? null,
        maintenance: service.maintenance[id] ?? null,
        queue,
      });
    }
    this.emit('snapshot');
  }

  setStatus(id, status) {
    this.status.set(id, status);
    if (status.locked && typeof status.time_remaining === 'number') {
      this.deadlines.set(id, performance.now() + status.time_remaining * 1000);
    } else {
      this.deadlines.delete(id);
    }
  }

  /**
   * How a lock's group reads: the configured group it was taken as (all of
   * its members held under this group_id), else the group_id; null for a
   * lock alone.
   */
  groupLabel(id) {
    const gid = this.status.get(id)?.group_id;
    if (!gid) return null;
    const named = this.groups.find((g) => g.members.includes(id)
      && g.members.every((m) => this.status.get(m)?.group_id === gid));
    return named ? named.group_id : gid;
  }

  /** Seconds left on `id`'s exclusive lock now, or null (none, or no timeout). */
  timeLeft(id) {
    const deadline = this.deadlines.get(id);
    return deadline === undefined ? null : Math.max(0, (deadline - performance.now()) / 1000);
  }

  /** Reads `id` again soon (coalesced with other changes to it). */
  markStale(id) {
    if (!this.byId.has(id)) return;
    this.stale.add(id);
    this.pump();
  }

  pump() {
    for (const id of this.stale) {
      if (this.reading.size >= PARALLEL_READS) return;
      if (this.reading.has(id)) continue; // read again once this read is back
      this.stale.delete(id);
      this.reading.add(id);
      this.read(id).finally(() => {
        this.reading.delete(id);
        this.pump();
      });
    }
  }

  async read(id) {
    try {
      const status = await api('GET', `/locks/status/${seg(id)}`);
      status.queue = status.queue_length > 0
        ? (await api('GET', `/locks/queue/${seg(id)}`)).queue
        : [];
      this.setStatus(id, status);
      this.emit('equipment', id);
    } catch {
      // The server is away: the live connection reconnects and re-reads
      // everything then.
    }
  }
}

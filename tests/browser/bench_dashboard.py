"""How responsive the dashboard stays with 1,000 instruments and about 100
events a second (docs/benchmarks.md, "Dashboard").

A `lablink serve` with a config file of 1,000 simulated instruments; the
overview open in headless Chromium (1920x1080, a wall screen) with half of
the instruments held (so 500 countdowns run); then for SECONDS a load of
acquire/release requests on random instruments, paced to RATE history
events a second. The page records, by itself: frame intervals
(requestAnimationFrame), long tasks (PerformanceObserver 'longtask', main
thread busy over 50 ms), and for a probe instrument locked once a second
through the API, the time until its card shows the new holder.

Run (after .ci/browser.sh has made the venv and built the binary):
    target/browser-venv/bin/python tests/browser/bench_dashboard.py
Env: BENCH_SECONDS (default 30), RATE (events per second, default 100),
BENCH_TYPING=0 (leave out the filter typing, to see the events' cost alone).
"""

import http.client
import json
import os
import random
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from conftest import CHROMIUM, CHROMIUM_ARGS, Server  # noqa: E402
from playwright.sync_api import sync_playwright  # noqa: E402

SECONDS = float(os.environ.get("BENCH_SECONDS", "30"))
RATE = float(os.environ.get("RATE", "100"))
TYPING = os.environ.get("BENCH_TYPING", "1") != "0"
INSTRUMENTS = 1000
DRIVERS = ["sim-psu", "sim-load", "sim-scope"]

MEASURE = """
window.__bench = { frames: [], longTasks: [], loadTasks: [], probe: [] };
new PerformanceObserver((list) => {
  for (const e of list.getEntries()) {
    // Those of the first load are counted apart from those under load.
    (window.__bench.recording ? window.__bench.longTasks : window.__bench.loadTasks).push(e.duration);
  }
}).observe({ type: 'longtask', buffered: true });
let last = null;
const frame = (t) => {
  if (last !== null && window.__bench.recording) window.__bench.frames.push(t - last);
  last = t;
  requestAnimationFrame(frame);
};
requestAnimationFrame(frame);
"""

FILTER_PROBE = """(text) => new Promise((done) => {
  const input = document.getElementById('filter');
  const start = performance.now();
  input.value = text;
  input.dispatchEvent(new Event('input'));
  requestAnimationFrame(() => setTimeout(() => done(performance.now() - start)));
})"""


def config(directory):
    lines = []
    for i in range(INSTRUMENTS):
        lines += [
            "[[equipment]]",
            f'id = "bench_{i:04d}"',
            f'driver = "{DRIVERS[i % 3]}"',
            f'name = "Bench {i // 10} #{i % 10}"',
            "",
        ]
    path = Path(directory) / "lab1000.toml"
    path.write_text("\n".join(lines))
    return path


class Client:
    """One keep-alive HTTP connection."""

    def __init__(self, port):
        self.connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)

    def post(self, path, body):
        self.connection.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
        response = self.connection.getresponse()
        return response.status, json.loads(response.read())


def percentile(values, p):
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * p / 100))]


def main():
    with tempfile.TemporaryDirectory() as work:
        server = Server(work, args=["--config", str(config(work)), "--store", "memory"])
        server.start()
        try:
            run(server)
        finally:
            server.stop()


def run(server):
    client = Client(server.port)
    sessions = [client.post("/api/locks/sessions/create", {"client_name": f"Rig {n}", "timeout_seconds": 0})[1]["session_id"]
                for n in range(8)]
    held = {}
    ids = [f"bench_{i:04d}" for i in range(1, INSTRUMENTS)]  # bench_0000 is the probe
    for equipment in ids[::2]:
        session = random.choice(sessions)
        client.post("/api/locks/acquire", {"equipment_id": equipment, "session_id": session, "timeout_seconds": 3600})
        held[equipment] = session

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1920, "height": 1080})
        page.add_init_script(MEASURE)
        started = time.monotonic()
        page.goto(server.url + "/")
        page.wait_for_selector('li.card[data-id="bench_0999"]')
        page.wait_for_selector('#live[data-state="live"]')
        load_seconds = time.monotonic() - started
        page.evaluate("""() => {
          const card = document.querySelector('li.card[data-id="bench_0000"] .holder');
          new MutationObserver(() => window.__bench.probe.push([Date.now(), card.textContent]))
            .observe(card, { childList: true, characterData: true, subtree: true });
          window.__bench.recording = true;
        }""")

        stop = threading.Event()
        sent = {"events": 0, "requests": 0}

        def load():
            c = Client(server.port)
            interval = 1.0 / RATE
            next_at = time.monotonic()
            while not stop.is_set():
                equipment = random.choice(ids)
                if equipment in held:
                    c.post("/api/locks/release", {"equipment_id": equipment, "session_id": held.pop(equipment)})
                else:
                    session = random.choice(sessions)
                    c.post("/api/locks/acquire", {"equipment_id": equipment, "session_id": session, "timeout_seconds": 3600})
                    held[equipment] = session
                sent["events"] += 1
                next_at += interval
                delay = next_at - time.monotonic()
                if delay > 0:
                    time.sleep(delay)

        thread = threading.Thread(target=load)
        thread.start()
        probe = Client(server.port)
        probe_session = sessions[0]
        lags = []
        filter_ms = []
        deadline = time.monotonic() + SECONDS
        toggle = 0
        while time.monotonic() < deadline:
            time.sleep(1.0)
            toggle += 1
            name = f"Probe {toggle}"
            s = probe.post("/api/locks/sessions/create", {"client_name": name, "timeout_seconds": 0})[1]["session_id"]
            probe.post("/api/locks/release", {"equipment_id": "bench_0000", "session_id": probe_session})
            sent_at = time.time() * 1000
            probe.post("/api/locks/acquire", {"equipment_id": "bench_0000", "session_id": s, "timeout_seconds": 3600})
            probe_session = s
            shown = None
            wait_until = time.monotonic() + 5
            while shown is None and time.monotonic() < wait_until:
                for at, text in page.evaluate("window.__bench.probe"):
                    if text == name:
                        shown = at
                time.sleep(0.02) if shown is None else None
            lags.append(shown - sent_at if shown else float("inf"))
            # Typing in the filter under load: from the input to the next
            # frame painted with 1,000 cards re-filtered.
            if TYPING:
                filter_ms.append(page.evaluate(FILTER_PROBE, "Bench 4" if toggle % 2 else ""))
        stop.set()
        thread.join()
        result = page.evaluate("window.__bench")
        browser.close()

    frames = result["frames"]
    long_tasks = result["longTasks"]
    print(f"instruments: {INSTRUMENTS}, run: {SECONDS:.0f} s, events sent: {sent['events']} "
          f"({sent['events'] / SECONDS:.0f}/s), held at start: {INSTRUMENTS // 2}")
    print(f"first load to live with 1000 cards: {load_seconds:.2f} s")
    print(f"frames: {len(frames)} ({len(frames) / SECONDS:.0f}/s); interval p50 {percentile(frames, 50):.1f} ms, "
          f"p95 {percentile(frames, 95):.1f} ms, p99 {percentile(frames, 99):.1f} ms, max {max(frames, default=0):.1f} ms")
    load_tasks = result["loadTasks"]
    print(f"long tasks (>50 ms) while loading: {len(load_tasks)}, longest {max(load_tasks, default=0):.0f} ms; "
          f"under load: {len(long_tasks)}, longest {max(long_tasks, default=0):.0f} ms, "
          f"total {sum(long_tasks):.0f} ms ({sum(long_tasks) / SECONDS / 10:.1f}% of the time)")
    finite = [lag for lag in lags if lag != float('inf')]
    print(f"probe: API lock -> card shows the holder: median {statistics.median(finite) if finite else 0:.0f} ms, "
          f"max {max(finite, default=0):.0f} ms, missed {len(lags) - len(finite)} of {len(lags)}")
    if filter_ms:
        print(f"filter typed under load, input to painted frame: median {statistics.median(filter_ms):.0f} ms, "
              f"max {max(filter_ms):.0f} ms")


if __name__ == "__main__":
    main()

"""The dashboard in headless Chromium against real `lablink serve`
processes: what a person sees and does on the page, and that it reaches the
server and the instruments."""

import json
import re
import time
from contextlib import contextmanager

from playwright.sync_api import expect
from websockets.sync.client import connect

from conftest import SCREENSHOTS, Server

PSU = "ps_abc123"


def card(page, equipment_id):
    return page.locator(f'li.card[data-id="{equipment_id}"]')


def wait_live(page):
    expect(page.locator("#live")).to_have_attribute("data-state", "live", timeout=10_000)


def test_page_loads_with_no_console_errors_and_no_other_host(server, open_page):
    watched = open_page(server.url + "/")
    page = watched.page
    wait_live(page)
    ids = page.locator("li.card").evaluate_all("cards => cards.map(c => c.dataset.id)")
    assert ids == ["ps_abc123", "scope_123", "load_1"]
    expect(card(page, PSU)).to_have_attribute("data-state", "free")
    for path in ["#/sessions", f"#/equipment/{PSU}"]:
        page.goto(server.url + "/" + path)
        page.wait_for_load_state("networkidle")
    expect(page.locator("#instrument-title")).to_have_text("Demo power supply")
    assert watched.console_errors == []
    assert watched.hosts == {f"127.0.0.1:{server.port}"}


def test_filter_by_name(server, open_page):
    page = open_page(server.url + "/").page
    wait_live(page)
    page.get_by_label("Filter").fill("scope")
    visible = page.locator("li.card:visible").evaluate_all("cards => cards.map(c => c.dataset.id)")
    assert visible == ["scope_123"]
    expect(page.locator("#filter-count")).to_have_text("1 of 3 shown")


def test_a_lock_taken_through_the_api_appears_within_a_second(server, open_page):
    page = open_page(server.url + "/").page
    wait_live(page)
    session = server.session("Lab PC #3", user="researcher_1")
    waiter = server.session("Night run")
    server.ok("POST", "/api/locks/acquire",
              {"equipment_id": PSU, "session_id": session, "timeout_seconds": 300})
    server.ok("POST", "/api/locks/acquire",
              {"equipment_id": PSU, "session_id": waiter, "queue_if_busy": True})
    ps = card(page, PSU)
    # No reload: the live connection brings it.
    expect(ps).to_have_attribute("data-state", "held", timeout=1000)
    expect(ps.locator(".holder")).to_have_text("Lab PC #3", timeout=1000)
    expect(ps.locator(".queue")).to_have_text("1 waiting · next: Night run", timeout=1000)
    server.ok("POST", "/api/locks/release", {"equipment_id": PSU, "session_id": session})
    expect(ps.locator(".holder")).to_have_text("Night run", timeout=1000)
    expect(ps.locator(".queue")).to_have_text("nobody waiting", timeout=1000)


def seconds(text):
    """'4:59' or '59 s' as seconds."""
    if text.endswith(" s"):
        return int(text[:-2])
    parts = [int(p) for p in text.split(":")]
    total = 0
    for p in parts:
        total = total * 60 + p
    return total


def test_the_countdown_runs(server, open_page):
    page = open_page(server.url + "/").page
    wait_live(page)
    session = server.session("Countdown")
    server.ok("POST", "/api/locks/acquire",
              {"equipment_id": PSU, "session_id": session, "timeout_seconds": 120})
    left = card(page, PSU).locator(".left")
    expect(left).to_have_text(re.compile(r"^\d+:\d\d$"))
    first = seconds(left.inner_text())
    assert 115 <= first <= 120
    page.wait_for_timeout(2500)
    later = seconds(left.inner_text())
    assert first - 4 <= later < first


def open_session_on_page(page, name="Bench page"):
    page.get_by_role("button", name="Open session").first.click()
    dialog = page.locator("#session-dialog")
    dialog.get_by_label("Client name").fill(name)
    dialog.get_by_role("button", name="Open session").click()
    expect(page.locator("#me .session")).to_contain_text(name)


def test_an_action_submitted_from_the_page_reaches_the_instrument(server, open_page):
    page = open_page(server.url + f"/#/equipment/{PSU}").page
    wait_live(page)
    open_session_on_page(page)
    page.get_by_role("button", name="Take lock").click()
    expect(page.locator(".controls")).to_contain_text("You hold the exclusive lock.")
    form = page.locator('form.action[data-action="set_voltage"]')
    form.get_by_label(re.compile("^voltage")).fill("12.5")
    form.get_by_role("button", name="Run").click()
    expect(form.locator("output")).not_to_be_empty()
    state = server.ok("GET", f"/api/equipment/{PSU}/status")["state"]
    assert state["channels"][0]["voltage_set"] == 12.5
    # The command is in the instrument's history view too (as its lock).
    events = server.ok("GET", f"/api/locks/events/{PSU}")["events"]
    assert [e["event"] for e in events] == ["lock_acquired"]
    # An out-of-range value is refused with the server's own detail.
    form.get_by_label(re.compile("^voltage")).evaluate("input => { input.min = ''; input.max = ''; }")
    form.get_by_label(re.compile("^voltage")).fill("99")
    form.get_by_role("button", name="Run").click()
    expect(form.locator(".error")).to_contain_text("voltage")
    assert server.ok("GET", f"/api/equipment/{PSU}/status")["state"]["channels"][0]["voltage_set"] == 12.5
    # Losing the lock is told on the page, and the forms go.
    server.ok("POST", "/api/locks/release", {"equipment_id": PSU, "session_id": "admin", "force": True})
    expect(page.locator("#alerts")).to_contain_text(f"Your lock on {PSU} was lost (forced)")
    expect(page.locator('form.action[data-action="set_voltage"]')).to_have_count(0)


def test_a_forced_release_from_the_admin_view_reaches_the_holder(server, open_page):
    holder = server.session("Long run", user="researcher_1")
    ws_url = server.url.replace("http", "ws") + "/api/ws"
    with connect(ws_url) as ws:
        ws.send(json.dumps({"type": "subscribe", "session_id": holder}))
        assert json.loads(ws.recv(timeout=5))["type"] == "subscribed"
        server.ok("POST", "/api/locks/acquire",
                  {"equipment_id": PSU, "session_id": holder, "timeout_seconds": 600})
        page = open_page(server.url + f"/#/equipment/{PSU}").page
        wait_live(page)
        page.get_by_role("button", name="Force release…").click()
        dialog = page.locator("#confirm-dialog")
        expect(dialog).to_be_visible()
        # Cancelling changes nothing.
        dialog.get_by_role("button", name="Cancel").click()
        assert server.ok("GET", f"/api/locks/status/{PSU}")["locked"] is True
        page.get_by_role("button", name="Force release…").click()
        dialog.get_by_label(re.compile("Reason")).fill("bench needed for calibration")
        dialog.get_by_role("button", name="Force release").click()
        lost = None
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and lost is None:
            message = json.loads(ws.recv(timeout=5))
            if message.get("event") == "lock_lost":
                lost = message
        assert lost is not None, "the holder heard no lock_lost"
        assert lost["equipment_id"] == PSU and lost["session_id"] == holder
    expect(card_or_badge(page)).to_have_text("Free", timeout=1000)


def card_or_badge(page):
    return page.locator(".instrument .badge")


def test_token_sign_in_works_and_a_wrong_token_is_refused(make_server, open_page):
    server = make_server(args=["--store", "sqlite://lablink.db?synchronous=normal"],
                         env={"LABLINK_AUTH": "required"})
    admin = server.token("alice", "admin")
    observer = server.token("vera", "observer")
    server.start()
    page = open_page(server.url + "/").page
    dialog = page.locator("#signin-dialog")
    expect(dialog).to_be_visible()
    dialog.get_by_label("API token").fill("llk_" + "0" * 64)
    dialog.get_by_role("button", name="Sign in").click()
    expect(dialog.locator(".error")).to_have_text("the API token is not valid (unknown or revoked)")
    expect(dialog).to_be_visible()
    assert page.evaluate("sessionStorage.getItem('lablink.token')") is None
    dialog.get_by_label("API token").fill(admin)
    dialog.get_by_role("button", name="Sign in").click()
    expect(dialog).to_be_hidden()
    wait_live(page)
    expect(page.locator("#me .user")).to_have_text("alice (admin)")
    expect(card(page, PSU)).to_have_attribute("data-state", "free")
    # The token is in this tab's sessionStorage, never in the address.
    assert page.evaluate("sessionStorage.getItem('lablink.token')") == admin
    assert admin not in page.url
    # Live with the token: a lock taken by someone else shows up.
    session = server.session("Other bench", token=admin)
    server.ok("POST", "/api/locks/acquire", {"equipment_id": PSU, "session_id": session}, token=admin)
    expect(card(page, PSU)).to_have_attribute("data-state", "held", timeout=1000)
    # An admin is offered the forced release.
    page.goto(server.url + f"/#/equipment/{PSU}")
    expect(page.get_by_role("button", name="Force release…")).to_be_visible()
    expect(page.get_by_role("button", name="Start maintenance…")).to_be_visible()
    # The analytics' CSV is fetched with the token (a plain link has none).
    page.goto(server.url + "/#/analytics")
    expect(page.locator('tr[data-id="ps_abc123"] td').nth(3)).to_have_text("1")
    with page.expect_download() as download:
        page.get_by_role("link", name="Download CSV").click()
    assert download.value.suggested_filename == "lablink-analytics-1d.csv"
    lines = open(download.value.path(), encoding="utf-8").read().splitlines()
    assert [line.split(",")[:5:4] for line in lines[1:]] == [["load_1", "0"], [PSU, "1"], ["scope_123", "0"]]

    # An observer sees only what an observer may do.
    viewer = open_page(server.url + f"/#/equipment/{PSU}").page
    viewer.locator("#signin-dialog").get_by_label("API token").fill(observer)
    viewer.locator("#signin-dialog").get_by_role("button", name="Sign in").click()
    expect(viewer.locator("#me .user")).to_have_text("vera (observer)")
    open_session_on_page(viewer, "Viewer")
    modes = viewer.locator('form.take select[name="lock_mode"] option').all_inner_texts()
    assert modes == ["observer"]
    expect(viewer.get_by_role("button", name="Force release…")).to_have_count(0)
    # The lab manager's controls are an admin's only.
    expect(viewer.get_by_role("button", name="Start maintenance…")).to_have_count(0)

    # A revoked token: the server closes the live connection and the page
    # asks for a token again.
    server.revoke(admin)
    expect(page.locator("#signin-dialog")).to_be_visible()
    expect(page.locator("#alerts")).to_contain_text("the API token was revoked")


def test_the_page_recovers_after_a_server_restart(make_server, open_page):
    server = make_server(args=["--store", "sqlite://lablink.db?synchronous=normal"]).start()
    page = open_page(server.url + "/").page
    wait_live(page)
    server.stop()
    expect(page.locator("#live")).to_have_attribute("data-state", "reconnecting", timeout=5000)
    expect(page.locator("#live")).to_have_text("Reconnecting…")
    session_id = None
    server.start()
    wait_live(page)
    session_id = server.session("After restart")
    server.ok("POST", "/api/locks/acquire", {"equipment_id": "load_1", "session_id": session_id})
    expect(card(page, "load_1")).to_have_attribute("data-state", "held", timeout=1000)
    expect(card(page, "load_1").locator(".holder")).to_have_text("After restart")


def test_screenshots(server, open_page):
    """Pictures for the README: a busy overview (a queue with priorities, an
    instrument in maintenance) and an instrument page."""
    alice = server.session("Lab PC #3", user="alice")
    bob = server.session("Night run", user="bob")
    viewer = server.session("Wall screen")
    server.ok("POST", "/api/locks/acquire", {"equipment_id": PSU, "session_id": alice, "timeout_seconds": 900})
    server.ok("POST", "/api/locks/acquire", {"equipment_id": PSU, "session_id": bob, "queue_if_busy": True})
    server.ok("POST", "/api/locks/acquire", {"equipment_id": "scope_123", "session_id": viewer, "lock_mode": "observer"})
    urgent = server.session("Urgent fix", user="carol")
    server.ok("POST", "/api/locks/acquire",
              {"equipment_id": PSU, "session_id": urgent, "queue_if_busy": True, "priority": 2})
    server.ok("POST", "/api/equipment/scope_123/maintenance",
              {"reason": "probe calibration", "until": "2030-01-15T16:00:00Z"})
    server.ok("POST", "/api/equipment/ps_abc123/command", {
        "command_id": "shot", "equipment_id": PSU, "action": "set_voltage",
        "parameters": {"voltage": 12.0}, "session_id": alice})
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page = open_page(server.url + "/", viewport={"width": 1200, "height": 520}).page
    wait_live(page)
    expect(card(page, PSU)).to_have_attribute("data-state", "held")
    page.screenshot(path=str(SCREENSHOTS / "overview.png"))

    phone = open_page(server.url + "/", viewport={"width": 390, "height": 760}, color_scheme="dark").page
    wait_live(phone)
    expect(card(phone, PSU)).to_have_attribute("data-state", "held")
    phone.screenshot(path=str(SCREENSHOTS / "overview-phone-dark.png"))

    # The instrument page of one this page's session holds, with a waiter.
    page.goto(server.url + "/#/equipment/load_1")
    page.set_viewport_size({"width": 1200, "height": 900})
    wait_live(page)
    open_session_on_page(page, "Bench 3 laptop")
    page.get_by_role("button", name="Take lock").click()
    expect(page.locator(".controls")).to_contain_text("You hold the exclusive lock.")
    server.ok("POST", "/api/locks/acquire", {"equipment_id": "load_1", "session_id": bob, "queue_if_busy": True})
    form = page.locator('form.action[data-action="set_current"]')
    form.get_by_label(re.compile("^current")).fill("2.5")
    form.get_by_role("button", name="Run").click()
    page.locator('form.action[data-action="set_input"]').get_by_label("enabled").check()
    page.locator('form.action[data-action="set_input"]').get_by_role("button", name="Run").click()
    expect(page.locator(".queue-list li")).to_have_count(1)
    expect(page.locator("table.history tbody tr")).to_have_count(2)
    page.get_by_role("button", name="Read again").click()
    page.screenshot(path=str(SCREENSHOTS / "instrument.png"), full_page=True)


def test_the_sessions_page_shows_what_each_session_holds_and_waits_for(server, open_page):
    holder = server.session("Lab PC #3")
    waiter = server.session("Night run")
    server.ok("POST", "/api/locks/acquire", {"equipment_id": PSU, "session_id": holder})
    server.ok("POST", "/api/locks/acquire", {"equipment_id": PSU, "session_id": waiter, "queue_if_busy": True})
    page = open_page(server.url + "/#/sessions").page
    wait_live(page)
    rows = page.locator("table.sessions tbody tr")
    expect(rows).to_have_count(2)
    held = page.locator(f'tr[data-session="{holder}"]')
    expect(held.locator("td").nth(5)).to_have_text(PSU)
    expect(held.locator("td").nth(6)).to_have_text("—")
    waiting = page.locator(f'tr[data-session="{waiter}"]')
    expect(waiting.locator("td").nth(6)).to_have_text(f"{PSU} (#1)")
    # Live: a new session appears without reload.
    server.session("Late comer")
    expect(rows).to_have_count(3)


def test_the_overview_is_usable_from_the_keyboard(server, open_page):
    page = open_page(server.url + "/").page
    wait_live(page)
    page.keyboard.press("Tab")
    expect(page.locator(".skip")).to_be_focused()
    page.get_by_label("Filter").focus()
    page.keyboard.type("load")
    page.keyboard.press("Tab")
    focused = page.evaluate("document.activeElement.getAttribute('href')")
    assert focused == "#/equipment/load_1"
    page.keyboard.press("Enter")
    expect(page.locator("#instrument-title")).to_have_text("Demo electronic load")


def test_the_history_filters_and_pages(server, open_page):
    cycler = server.session("Cycler")
    other = server.session("Other")
    for _ in range(30):
        server.ok("POST", "/api/locks/acquire", {"equipment_id": PSU, "session_id": cycler})
        server.ok("POST", "/api/locks/release", {"equipment_id": PSU, "session_id": cycler})
    server.ok("POST", "/api/locks/acquire", {"equipment_id": PSU, "session_id": other})
    page = open_page(server.url + f"/#/equipment/{PSU}").page
    wait_live(page)
    rows = page.locator("table.history tbody tr")
    # The newest 50, newest first.
    expect(rows).to_have_count(50)
    expect(rows.first.locator("td").nth(1)).to_have_text("lock_acquired")
    expect(rows.first.locator("td").nth(2)).to_have_text(other[:8] + "…")
    history = page.locator("form.filters")
    history.get_by_label("Event").select_option("lock_released")
    history.get_by_role("button", name="Search").click()
    expect(page.locator("table.history caption")).to_have_text("Matching events, oldest first: page 1.")
    expect(rows).to_have_count(25)
    page.get_by_role("button", name="Later →").click()
    expect(page.locator("table.history caption")).to_have_text("Matching events, oldest first: page 2.")
    expect(rows).to_have_count(5)
    expect(page.get_by_role("button", name="Later →")).to_be_disabled()
    page.get_by_role("button", name="← Earlier").click()
    expect(rows).to_have_count(25)
    kinds = rows.locator("td:nth-child(2)").all_inner_texts()
    assert kinds == ["lock_released"] * 25
    # By session.
    history.get_by_label("Event").select_option("")
    history.get_by_label("Session", exact=True).fill(other)
    history.get_by_role("button", name="Search").click()
    expect(page.locator("table.history caption")).to_have_text("Matching events, oldest first: page 1.")
    expect(rows).to_have_count(1)
    # A bad filter gets the server's detail.
    history.get_by_label("Session", exact=True).fill("not valid")
    history.get_by_role("button", name="Search").click()
    expect(page.locator("section[aria-labelledby=history-title] .error")).to_contain_text("session_id")


@contextmanager
def ws_subscribe(server, session):
    """A WebSocket subscribed to `session`'s events (acknowledged)."""
    with connect(server.url.replace("http", "ws") + "/api/ws") as ws:
        ws.send(json.dumps({"type": "subscribe", "session_id": session}))
        assert json.loads(ws.recv(timeout=5))["type"] == "subscribed"
        yield ws


def heard(ws, event):
    """The first `event` message on `ws` (within 5 s)."""
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        message = json.loads(ws.recv(timeout=5))
        if message.get("event") == event:
            return message
    raise AssertionError(f"no {event}")


def confirm(page, reason=None, until=None, ok=None):
    dialog = page.locator("#confirm-dialog")
    expect(dialog).to_be_visible()
    if reason is not None:
        dialog.locator("textarea[name=reason]").fill(reason)
    if until is not None:
        dialog.get_by_label(re.compile("^Until")).fill(until)
    dialog.locator("[data-role=ok]").click()
    expect(dialog).to_be_hidden()


def test_maintenance_and_queue_entries_from_the_admin_view(server, open_page):
    holder = server.session("Lab PC #3", user="alice")
    night = server.session("Night run", user="bob")
    urgent = server.session("Urgent fix", user="carol")
    server.ok("POST", "/api/locks/acquire", {"equipment_id": PSU, "session_id": holder, "timeout_seconds": 900})
    server.ok("POST", "/api/locks/acquire", {"equipment_id": PSU, "session_id": night, "queue_if_busy": True})
    server.ok("POST", "/api/locks/acquire",
              {"equipment_id": PSU, "session_id": urgent, "queue_if_busy": True, "priority": 3})
    # Out of service before the page opens: its first picture shows it.
    server.ok("POST", "/api/equipment/load_1/maintenance", {"reason": "fan replaced"})
    watched = open_page(server.url + "/")
    page = watched.page
    wait_live(page)
    expect(card(page, "load_1")).to_have_attribute("data-state", "maintenance")
    expect(card(page, "load_1").locator("dd.maint")).to_have_text("fan replaced · no end set")
    expect(card(page, PSU).locator(".queue")).to_have_text(
        "2 waiting · next: Urgent fix (priority 3) · priorities 3, 0")

    page.goto(server.url + f"/#/equipment/{PSU}")
    expect(page.locator(".queue-list li").first).to_contain_text("Urgent fix — exclusive, priority 3")
    with ws_subscribe(server, holder) as holder_ws, ws_subscribe(server, night) as night_ws:
        # Maintenance, with a confirmation; cancelling changes nothing.
        page.get_by_role("button", name="Start maintenance…").click()
        page.locator("#confirm-dialog").get_by_role("button", name="Cancel").click()
        assert "maintenance" not in server.ok("GET", f"/api/locks/status/{PSU}")
        page.get_by_role("button", name="Start maintenance…").click()
        # Entered in the browser's time zone (Europe/Berlin: UTC+1 in January).
        confirm(page, reason="calibration", until="2030-01-15T12:30:00")
        expect(page.locator(".instrument .badge")).to_have_text("Maintenance")
        status = server.ok("GET", f"/api/locks/status/{PSU}")
        assert status["maintenance"]["reason"] == "calibration"
        assert status["maintenance"]["until"].startswith("2030-01-15T11:30:00")
        assert status["session_id"] == holder, "the holder keeps its lock"
        assert heard(holder_ws, "maintenance_started")["message"] == "calibration"
        expect(page.locator(".lock .maint")).to_have_text("calibration · until 15 Jan 2030, 12:30:00")
        page.screenshot(path=str(SCREENSHOTS / "maintenance.png"), full_page=True)

        # Removing a waiter: confirmed with a reason, which the waiter hears.
        page.locator(f'.queue-list li[data-session="{night}"]').get_by_role("button").click()
        confirm(page, reason="left for lunch")
        lost = heard(night_ws, "queue_place_lost")
        assert (lost["equipment_id"], lost["reason"], lost["message"]) == (PSU, "removed", "left for lunch")
        assert lost["forced_by"] == "dashboard"
        expect(page.locator(".queue-list li")).to_have_count(1)
        queue = server.ok("GET", f"/api/locks/queue/{PSU}")["queue"]
        assert [q["session_id"] for q in queue] == [urgent]

        # Back in service: no reason asked (the API takes none).
        page.get_by_role("button", name="End maintenance…").click()
        expect(page.locator("#confirm-dialog textarea[name=reason]")).to_be_hidden()
        confirm(page)
        expect(page.locator(".instrument .badge")).to_have_text("Held")
        assert "maintenance" not in server.ok("GET", f"/api/locks/status/{PSU}")

        # An admin ends someone's session from the sessions page, with a reason.
        page.goto(server.url + "/#/sessions")
        page.locator(f'tr[data-session="{holder}"]').get_by_role("button", name="End…").click()
        confirm(page, reason="bench needed")
        lost = heard(holder_ws, "lock_lost")
        assert (lost["reason"], lost["message"]) == ("forced", "bench needed")
    expect(page.locator(f'tr[data-session="{holder}"]')).to_have_count(0)
    ended = server.ok("GET", f"/api/locks/sessions/{holder}/events")["events"][-1]
    assert (ended["event"], ended["forced_by"]) == ("session_ended", "dashboard")
    # The urgent waiter got the lock when the holder's session ended.
    assert server.ok("GET", f"/api/locks/status/{PSU}")["session_id"] == urgent
    assert watched.console_errors == []


def test_typing_in_the_take_form_survives_a_live_update(server, open_page):
    """Someone else queueing re-renders the controls while the priority is
    being typed: the field keeps its focus and the keystrokes land in it."""
    holder = server.session("Lab PC #3")
    server.ok("POST", "/api/locks/acquire", {"equipment_id": PSU, "session_id": holder})
    page = open_page(server.url + f"/#/equipment/{PSU}").page
    wait_live(page)
    open_session_on_page(page, "Bench page")
    priority = page.locator("form.take").get_by_label("Priority")
    priority.select_text()
    other = server.session("Night run")
    server.ok("POST", "/api/locks/acquire", {"equipment_id": PSU, "session_id": other, "queue_if_busy": True})
    expect(page.locator(".queue-list li")).to_have_count(1)
    page.keyboard.type("4")
    expect(priority).to_have_value("4")


def test_opening_a_session_does_not_read_everything_again(server, open_page):
    """Following the new session is a new subscription on the same live
    connection: nothing was missed, so the page does not reload its
    snapshot (a reload rebuilt the cards under a click's answer)."""
    page = open_page(server.url + "/").page
    wait_live(page)
    reads = []
    page.on("request", lambda r: reads.append(r.url) if "/api/locks/all" in r.url else None)
    open_session_on_page(page, "Bench page")
    # Live messages arrive in order: once this event shows, the answer to
    # the new subscription (sent before it) has been handled.
    other = server.session("Lab PC #3")
    server.ok("POST", "/api/locks/acquire", {"equipment_id": PSU, "session_id": other})
    expect(card(page, PSU)).to_have_attribute("data-state", "held")
    page.wait_for_load_state("networkidle")
    assert reads == []


def test_an_event_during_the_history_load_is_not_lost(server, open_page):
    """The history is read again when the live connection resubscribes; an
    event that happens while that read is on its way still shows."""
    page = open_page(server.url + f"/#/equipment/{PSU}").page
    wait_live(page)
    table = page.locator("table.history")
    expect(table.locator("tbody")).to_contain_text("No events.")
    holder = server.session("Lab PC #3")

    def answer_late(route):
        # The answer is read before the lock is taken, and handed to the
        # page only once the page has heard the lock_acquired event live.
        response = route.fetch()
        server.ok("POST", "/api/locks/acquire", {"equipment_id": PSU, "session_id": holder})
        expect(table.locator("tbody tr[data-seq]")).to_have_count(1)
        route.fulfill(response=response)

    history = re.compile(r".*/api/locks/events/ps_abc123\?limit=50$")
    page.route(history, answer_late)
    with page.expect_response(history):
        page.locator("form.filters").get_by_role("button", name="Latest").click()
    # The page is done with that answer once the table is no longer busy.
    expect(table).not_to_have_attribute("aria-busy", "true")
    rows = table.locator("tbody tr[data-seq]")
    kinds = rows.evaluate_all("rows => rows.map(r => r.querySelector('.event').textContent)")
    assert kinds == ["lock_acquired"]


def test_queueing_from_the_page_with_a_priority_and_stepping_back(server, open_page):
    holder = server.session("Lab PC #3")
    early = server.session("Early bird")
    server.ok("POST", "/api/locks/acquire", {"equipment_id": PSU, "session_id": holder})
    server.ok("POST", "/api/locks/acquire", {"equipment_id": PSU, "session_id": early, "queue_if_busy": True})
    page = open_page(server.url + f"/#/equipment/{PSU}").page
    wait_live(page)
    open_session_on_page(page, "Bench page")
    page.locator("form.take").get_by_label("Priority").fill("4")
    expect(page.locator("form.take").get_by_label("Priority")).to_have_value("4")
    page.get_by_role("button", name="Queue for it").click()
    expect(page.locator(".queue-list li")).to_have_count(2)
    queue = server.ok("GET", f"/api/locks/queue/{PSU}")["queue"]
    assert [(q["session_id"] == early, q["priority"]) for q in queue] == [(False, 4), (True, 0)], queue
    expect(page.locator(".controls")).to_contain_text("You are number 1 in the queue.")
    expect(page.locator(".queue-list li").first).to_contain_text("Bench page — exclusive, priority 4")
    page.get_by_role("button", name="Let the next go first").click()
    expect(page.locator(".controls")).to_contain_text("You are number 2 in the queue.")
    queue = server.ok("GET", f"/api/locks/queue/{PSU}")["queue"]
    assert queue[0]["session_id"] == early
    # Last in line: nobody to let go first.
    expect(page.get_by_role("button", name="Let the next go first")).to_have_count(0)
def test_the_analytics_page_shows_each_instrument_and_offers_the_csv(server, open_page):
    """Locks held, waited for and forced off show up per instrument, for
    the window chosen, with the same figures as CSV."""
    alice = server.session("Lab PC #3", user="alice")
    bob = server.session("Night run", user="bob")
    watcher = server.session("Wall screen")
    server.ok("POST", "/api/locks/acquire", {"equipment_id": PSU, "session_id": alice})
    server.ok("POST", "/api/locks/acquire", {"equipment_id": PSU, "session_id": bob, "queue_if_busy": True})
    server.ok("POST", "/api/locks/acquire",
              {"equipment_id": "scope_123", "session_id": watcher, "lock_mode": "observer"})
    time.sleep(1.2)
    server.ok("POST", "/api/locks/release", {"equipment_id": PSU, "session_id": alice})
    admin = server.session("Admin")
    server.ok("POST", "/api/locks/release", {"equipment_id": PSU, "session_id": admin, "force": True})
    page = open_page(server.url + "/#/analytics", viewport={"width": 1200, "height": 620}).page
    wait_live(page)
    expect(page.locator("nav a[data-page=analytics]")).to_have_attribute("aria-current", "page")
    rows = page.locator("table.analytics tbody tr")
    expect(rows).to_have_count(3)
    ids = rows.evaluate_all("rows => rows.map(r => r.dataset.id)")
    assert ids == ["load_1", "ps_abc123", "scope_123"]
    psu = page.locator('tr[data-id="ps_abc123"] td')
    # Exclusive, observer, idle, grants, median, p90, max, forced, expiries.
    expect(psu.nth(3)).to_have_text("2")
    waited = float(psu.nth(4).get_attribute("data-seconds"))
    assert 1.0 <= waited < 5.0, waited
    expect(psu.nth(7)).to_have_text("1")
    expect(psu.nth(8)).to_have_text("0")
    expect(page.locator('tr[data-id="scope_123"] td').nth(3)).to_have_text("1")
    expect(page.locator('tr[data-id="load_1"] td').nth(3)).to_have_text("0")
    page.screenshot(path=str(SCREENSHOTS / "analytics.png"), full_page=True)
    # The window is a choice; the CSV link follows it and downloads.
    page.get_by_label("Window").select_option("7")
    expect(page.locator("a.csv")).to_have_attribute("download", "lablink-analytics-7d.csv")
    with page.expect_download() as download:
        page.get_by_role("link", name="Download CSV").click()
    text = open(download.value.path(), encoding="utf-8").read()
    lines = text.splitlines()
    assert lines[0].startswith("equipment_id,exclusive_seconds,observer_seconds,idle_seconds,grants,")
    assert [line.split(",")[0] for line in lines[1:]] == ["load_1", "ps_abc123", "scope_123"]
    assert lines[2].split(",")[4] == "2"

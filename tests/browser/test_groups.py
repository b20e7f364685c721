"""Lock groups and pools on the dashboard, in headless Chromium against a
real `lablink serve` with configured tags and a [[group]]: the group's
card (members, holder, queue) and each instrument's tags and group, kept
live; the filter by tag; taking and releasing a group from its card."""

from playwright.sync_api import expect

from conftest import SCREENSHOTS
from test_dashboard import card, open_session_on_page, wait_live

BENCH = """
[[equipment]]
id = "psu1"
driver = "sim-psu"
name = "Bench 3 supply"
tags = ["psu", "30V"]

[[equipment]]
id = "psu2"
driver = "sim-psu"
name = "Spare supply"
tags = ["psu"]

[[equipment]]
id = "scope1"
driver = "sim-scope"
name = "Bench 3 scope"
tags = ["scope"]

[[equipment]]
id = "load1"
driver = "sim-load"
name = "Bench 3 load"

[[group]]
id = "bench3"
name = "Bench 3"
members = ["psu1", "scope1", "load1"]
"""


def bench_server(make_server, tmp_path):
    config = tmp_path / "lablink.toml"
    config.write_text(BENCH)
    return make_server(args=["--config", str(config), "--store", "sqlite://lablink.db?synchronous=normal"]).start()


def group_card(page, group_id):
    return page.locator(f'li.group-card[data-group="{group_id}"]')


def test_groups_show_as_cards_and_each_instrument_shows_its_tags_and_group(make_server, tmp_path, open_page):
    server = bench_server(make_server, tmp_path)
    watched = open_page(server.url + "/", viewport={"width": 1200, "height": 760})
    page = watched.page
    wait_live(page)
    bench = group_card(page, "bench3")
    expect(bench.locator("h3")).to_have_text("Bench 3")
    expect(bench.locator(".members")).to_have_text("psu1, scope1, load1")
    expect(bench).to_have_attribute("data-state", "free")
    expect(card(page, "psu1").locator(".tag")).to_have_text(["psu", "30V"])
    expect(page.locator("#filter-count")).to_have_text("4 instruments · 1 group")

    # Held as a group through the API: live, without reload.
    alice = server.session("Lab PC #3", user="alice")
    bob = server.session("Night run", user="bob")
    held = server.ok("POST", "/api/locks/acquire",
                     {"equipment_id": "bench3", "session_id": alice, "timeout_seconds": 900})
    assert held["group_id"].startswith("grp_")
    expect(bench).to_have_attribute("data-state", "held")
    expect(bench.locator(".badge")).to_have_text("Held")
    expect(bench.locator(".holder")).to_have_text("Lab PC #3")
    for member in ("psu1", "scope1", "load1"):
        expect(card(page, member).locator("dd.group")).to_have_text("bench3")
    expect(card(page, "psu2").locator("dd.group")).to_be_hidden()
    # A pool and a group of ids queue behind it: one waiter for the group
    # however many of its members it waits for.
    server.ok("POST", "/api/locks/acquire",
              {"equipment_ids": ["psu1", "scope1"], "session_id": bob, "queue_if_busy": True})
    expect(bench.locator(".queue")).to_have_text("1 waiting · next: Night run")
    expect(card(page, "scope1").locator(".queue")).to_have_text("1 waiting · next: Night run")
    expect(bench.locator(".left")).not_to_have_text("—")
    page.screenshot(path=str(SCREENSHOTS / "groups.png"))

    # Filter by tag: the supplies, and no group (none of its names match).
    page.get_by_label("Filter").fill("psu")
    visible = page.locator("li.card:visible").evaluate_all("cards => cards.map(c => c.dataset.id || c.dataset.group)")
    assert visible == ["bench3", "psu1", "psu2"], "bench3 has the member psu1"
    page.get_by_label("Filter").fill("30V")
    visible = page.locator("li.card:visible").evaluate_all("cards => cards.map(c => c.dataset.id || c.dataset.group)")
    assert visible == ["psu1"]
    expect(page.locator("#filter-count")).to_have_text("1 of 4 shown · 0 of 1 group")
    page.get_by_label("Filter").fill("")

    # Released as a group: every member free again, the waiter gets its two.
    server.ok("POST", "/api/locks/release", {"group_id": held["group_id"], "session_id": alice})
    expect(bench.locator(".badge")).to_have_text("Partly held")
    expect(bench.locator(".holder")).to_have_text("psu1 (Night run), scope1 (Night run)")
    expect(card(page, "psu1").locator("dd.group")).to_have_text(
        server.ok("GET", "/api/locks/status/psu1")["group_id"])
    # An instrument's page names its lock group and tags.
    page.goto(server.url + "/#/equipment/psu1")
    wait_live(page)
    lock = page.locator(".lock")
    expect(lock).to_contain_text("Lock group")
    expect(lock).to_contain_text("psu, 30V")
    assert watched.console_errors == []


def test_taking_and_releasing_a_group_from_its_card(make_server, tmp_path, open_page):
    server = bench_server(make_server, tmp_path)
    page = open_page(server.url + "/").page
    wait_live(page)
    bench = group_card(page, "bench3")
    expect(bench.get_by_role("button", name="Take group")).to_have_count(0)  # no session yet
    holder = server.session("Lab PC #3")
    server.ok("POST", "/api/locks/acquire", {"equipment_id": "scope1", "session_id": holder})
    open_session_on_page(page, "Bench page")
    bench.get_by_role("button", name="Take group").click()
    expect(bench.locator(".note")).to_have_text(
        "Queued in every member's queue: psu1 #1, scope1 #1, load1 #1")
    me = page.evaluate("JSON.parse(sessionStorage.getItem('lablink.session')).session_id")
    assert [q["session_id"] for q in server.ok("GET", "/api/locks/queue/load1")["queue"]] == [me]
    server.ok("POST", "/api/locks/release", {"equipment_id": "scope1", "session_id": holder})
    expect(bench.locator(".holder")).to_have_text("Bench page")
    expect(bench.get_by_role("button", name="Release group")).to_be_visible()
    statuses = [server.ok("GET", f"/api/locks/status/{m}") for m in ("psu1", "scope1", "load1")]
    assert {(s["session_id"], s["group_id"]) for s in statuses} == {(me, statuses[0]["group_id"])}
    bench.get_by_role("button", name="Release group").click()
    expect(bench).to_have_attribute("data-state", "free")
    assert all(not server.ok("GET", f"/api/locks/status/{m}")["locked"] for m in ("psu1", "scope1", "load1"))

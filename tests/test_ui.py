"""The web inspector at /ui: its routes over HTTP, then the page itself in headless Chromium.

The server is the session's Ray with the HTTP API on 127.0.0.1 and an API token set, so
the page's token prompt is exercised too. Agents answer through the loopback fake LLM.
Screenshots go to ``$LETTA_RAY_UI_SCREENSHOTS`` if set (``docs/`` for the README's), else
to the test's temp dir.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from letta_ray.fake_llm_server import FakeOpenAIServer
from letta_ray.serve.startup import free_port
from letta_ray.sim import Simulation, parse_config
from letta_ray.sim.fake import town_responder

pytestmark = pytest.mark.ray

TOKEN = "ui-test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def base_url(client: Any) -> Iterator[str]:
    from ray import serve

    from letta_ray.serve.deployment import start_http

    settings = client.settings.model_copy(update={"api_token": TOKEN})
    yield start_http(settings, host="127.0.0.1", port=free_port())
    serve.shutdown()


@pytest.fixture(scope="module")
def http(base_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=base_url, timeout=120, headers=AUTH) as c:
        yield c


def new_agent(http: httpx.Client, fake: FakeOpenAIServer, name: str | None = None, **kw: Any) -> dict[str, Any]:
    body = {"name": name or f"ui-{uuid.uuid4().hex[:8]}",
            "memory_blocks": [{"label": "human", "value": "Name: Ada", "limit": 200},
                              {"label": "persona", "value": "I am Sam, the town's librarian."}],
            "llm_config": {"model": "fake-model", "model_endpoint_type": "openai", "model_endpoint": fake.url,
                           "context_window": 32000}, **kw}
    response = http.post("/v1/agents/", json=body)
    assert response.status_code == 200, response.text
    return response.json()


def say(http: httpx.Client, agent_id: str, text: str) -> dict[str, Any]:
    response = http.post(f"/v1/agents/{agent_id}/messages", json={"messages": [{"role": "user", "content": text}]})
    assert response.status_code == 200, response.text
    return response.json()


@pytest.fixture(scope="module")
def town_run(client: Any) -> Iterator[str]:
    """A small simulation played to the end in the server's data directory."""
    name = f"ui-town-{uuid.uuid4().hex[:6]}"
    with FakeOpenAIServer(town_responder) as server:
        raw = {"name": name, "seed": 3, "rounds": 3, "population": {"count": 10},
               "topology": {"kind": "random", "degree": 2},
               "agent": {"model": f"openai/{server.model}", "model_endpoint": server.url, "max_steps": 4}}

        async def go() -> Simulation:
            sim = await Simulation.open(parse_config(raw), client, client.settings.home / "sims" / name)
            await sim.run()
            return sim

        client.run_sync(go())
    yield name


# --------------------------------------------------------------------------- the routes


def test_page_needs_no_token_but_its_data_does(base_url: str) -> None:
    page = httpx.get(f"{base_url}/ui/", timeout=30)
    assert page.status_code == 200 and "letta_ray inspector" in page.text
    assert httpx.get(f"{base_url}/ui", timeout=30, follow_redirects=False).headers["location"] == "/ui/"
    script = httpx.get(f"{base_url}/ui/static/app.js", timeout=30)
    assert script.status_code == 200 and script.headers["content-type"].startswith("text/javascript")
    for text in (page.text, script.text):  # no CDN: works offline (the SVG namespace is a name, not a fetch)
        assert not re.findall(r"https?://(?!www\.w3\.org/2000/svg)", text)
    assert httpx.get(f"{base_url}/ui/static/../app.py", timeout=30).status_code == 404
    assert httpx.get(f"{base_url}/ui/static/secrets.txt", timeout=30).status_code == 404
    for path in ("/ui/api/agents", "/ui/api/sims", "/ui/api/cluster"):
        assert httpx.get(f"{base_url}{path}", timeout=30).status_code == 401, path
    assert httpx.get(f"{base_url}/ui/api/agents", headers={"X-BARE-PASSWORD": f"password {TOKEN}"},
                     timeout=30).status_code == 200


def test_agent_list_pages_searches_and_counts(http: httpx.Client, fake_llm_server: FakeOpenAIServer) -> None:
    tag = f"batch-{uuid.uuid4().hex[:6]}"
    made = [new_agent(http, fake_llm_server, tags=[tag]) for _ in range(3)]
    say(http, made[0]["id"], "hello there")

    found = http.get("/ui/api/agents", params={"q": tag, "limit": 2}).json()
    assert found["total"] == 3
    assert [a["id"] for a in found["agents"]] == [made[2]["id"], made[1]["id"]]  # newest first
    second = http.get("/ui/api/agents", params={"q": tag, "limit": 2, "offset": 2}).json()
    assert [a["id"] for a in second["agents"]] == [made[0]["id"]]
    row = second["agents"][0]
    assert row["message_count"] == 2 and row["last_active"] is not None  # the user's message and the reply
    assert row["host"] and row["model"] == "fake-model" and row["tags"] == [tag]
    assert http.get("/ui/api/agents", params={"limit": 0}).status_code == 422
    assert http.get("/ui/api/agents", params={"offset": -1}).status_code == 422


def test_live_route_streams_messages_stored_after_it_opened(base_url: str, http: httpx.Client,
                                                            fake_llm_server: FakeOpenAIServer) -> None:
    agent = new_agent(http, fake_llm_server)
    say(http, agent["id"], "before the page opened")
    events: list[dict[str, Any]] = []
    opened = threading.Event()

    def listen() -> None:
        with httpx.stream("GET", f"{base_url}/ui/api/agents/{agent['id']}/live", headers=AUTH, timeout=30) as r:
            assert r.status_code == 200
            for line in r.iter_lines():
                opened.set()
                if line.startswith("data: "):
                    events.append(json.loads(line[6:]))
                    if any(e["message_type"] == "assistant_message" for e in events):
                        return

    reader = threading.Thread(target=listen, daemon=True)
    reader.start()
    assert opened.wait(30)
    say(http, agent["id"], "after it opened")
    reader.join(30)
    texts = [e.get("content") for e in events]
    assert "after it opened" in texts and "You said: after it opened" in texts
    assert "before the page opened" not in texts  # only what came after
    assert http.get("/ui/api/agents/agent-nope/live").status_code == 404


def test_sim_routes_list_the_run_its_rounds_and_network(http: httpx.Client, town_run: str) -> None:
    runs = http.get("/ui/api/sims").json()
    listed = next(r for r in runs if r["name"] == town_run)
    assert listed["completed_rounds"] == 3 and listed["rounds"] == 3 and listed["agents"] == 10
    view = http.get(f"/ui/api/sims/{town_run}").json()
    assert [r["round"] for r in view["rounds_written"]] == [1, 2, 3]
    assert all(r["turns_per_s"] > 0 and r["total_tokens"] > 0 for r in view["rounds_written"])
    net = http.get(f"/ui/api/sims/{town_run}/network", params={"round": 2}).json()
    assert len(net["nodes"]) == 10
    speakers = {n["index"] for n in net["nodes"] if n["spoke"]}
    assert speakers and {a for a, _ in net["edges"]} == speakers
    assert len(net["edges"]) == 2 * len(speakers)  # a random graph of degree 2: each speaker reaches two
    assert http.get("/ui/api/sims/no-such-run").status_code == 404
    assert http.get("/ui/api/sims/..").status_code == 404
    assert http.get(f"/ui/api/sims/{town_run}/network", params={"round": 0}).status_code == 422


def test_cluster_route_shows_hosts_nodes_and_the_store(http: httpx.Client, fake_llm_server: FakeOpenAIServer) -> None:
    agent = new_agent(http, fake_llm_server)
    say(http, agent["id"], "hi")
    data = http.get("/ui/api/cluster").json()
    assert data["nodes"] and data["nodes"][0]["alive"] and data["nodes"][0]["address"] == "127.0.0.1"
    host = http.get("/ui/api/agents", params={"q": agent["id"]}).json()["agents"][0]["host"]
    row = next(h for h in data["hosts"] if h["host_id"] == host)
    assert row["alive"] and row["agents"] >= 1 and row["node_id"] == data["nodes"][0]["node_id"]
    assert "turns_applied" in data["store"]
    assert data["dashboard_url"] is None  # the session's Ray runs none (Ray still writes its address)
    metrics = data["metrics"]
    assert metrics["turns"] >= 1 and any(name.endswith(f"-{host}") for name in metrics["hosts"])


# --------------------------------------------------------------------------- the page in Chromium


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    sync_api = pytest.importorskip("playwright.sync_api")
    executable = _chromium()
    if executable is None:
        pytest.skip("no Chromium here: scripts/test.sh installs Debian's chromium package")
    with sync_api.sync_playwright() as p:
        # the flags keep Chromium from reaching for Google's hosts on this closed network
        b = p.chromium.launch(executable_path=executable, headless=True, args=[
            "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
            "--disable-component-update", "--disable-sync"])
        yield b
        b.close()


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = Path(os.environ.get("LETTA_RAY_UI_SCREENSHOTS") or tmp_path_factory.mktemp("screenshots"))
    out.mkdir(parents=True, exist_ok=True)
    return out


@pytest.fixture(scope="module")
def page(browser: Any, base_url: str) -> Iterator[Any]:
    """One browser session: the token is given once, at the first page that needs it."""
    context = browser.new_context(viewport={"width": 1360, "height": 900})
    p = context.new_page()
    p.goto(f"{base_url}/ui/")
    p.locator("#token-dialog[open]").wait_for(timeout=20_000)
    p.fill("#token-input", "wrong")
    p.click("#token-form button")
    p.get_by_text("That token is not the server's.").wait_for()
    p.fill("#token-input", TOKEN)
    p.click("#token-form button")
    p.locator("#agent-count").wait_for()
    yield p
    context.close()


def test_page_lists_an_agent_created_through_the_api(page: Any, base_url: str, http: httpx.Client,
                                                     fake_llm_server: FakeOpenAIServer, shots: Path) -> None:
    agent = new_agent(http, fake_llm_server, name=f"librarian-{uuid.uuid4().hex[:6]}", tags=["town", "books"])
    page.goto(f"{base_url}/ui/#/agents")
    page.locator(f"tr[data-agent-id='{agent['id']}']").wait_for(timeout=15_000)
    page.fill("#agent-search", agent["name"])
    page.wait_for_function("document.querySelectorAll('tbody tr').length === 1", timeout=15_000)
    assert agent["name"] in page.locator("tbody tr").inner_text()
    assert page.locator("#agent-count").inner_text() == "1\u20131 of 1"
    page.fill("#agent-search", "")
    page.wait_for_function("document.querySelectorAll('tbody tr').length > 1", timeout=15_000)
    page.screenshot(path=str(shots / "ui-agents.png"))
    # the token was asked once: a reload in the same session does not ask again
    page.reload()
    page.locator("#agent-count").wait_for()
    assert not page.locator("#token-dialog[open]").count()


def test_agent_page_shows_blocks_and_an_edit_there_changes_the_api(page: Any, base_url: str, http: httpx.Client,
                                                                   fake_llm_server: FakeOpenAIServer) -> None:
    agent = new_agent(http, fake_llm_server)
    page.goto(f"{base_url}/ui/#/agents/{agent['id']}")
    human = page.locator("[data-block='human']")
    human.wait_for(timeout=15_000)
    assert human.locator("textarea").input_value() == "Name: Ada"
    assert "9 / 200 characters" in human.inner_text()
    assert "I am Sam" in page.locator("[data-block='persona'] textarea").input_value()
    human.locator("textarea").fill("x" * 201)
    assert human.locator(".count.over").count() == 1 and human.locator("button").is_disabled()
    human.locator("textarea").fill("Name: Ada Lovelace. Likes engines.")
    human.locator("button").click()
    human.get_by_text("saved").wait_for(timeout=15_000)
    stored = http.get(f"/v1/agents/{agent['id']}/core-memory/blocks/human").json()
    assert stored["value"] == "Name: Ada Lovelace. Likes engines."


def test_a_message_sent_through_the_api_appears_on_the_open_page(page: Any, base_url: str, http: httpx.Client,
                                                                 fake_llm_server: FakeOpenAIServer,
                                                                 shots: Path) -> None:
    agent = new_agent(http, fake_llm_server)
    say(http, agent["id"], "remember Ada likes tea")
    page.goto(f"{base_url}/ui/#/agents/{agent['id']}")
    page.locator("#live-status.on").wait_for(timeout=20_000)
    marker = f"news from a driver script {uuid.uuid4().hex[:6]}"
    say(http, agent["id"], marker)
    conversation = page.locator("#conversation")
    conversation.get_by_text(f"You said: {marker}").wait_for(timeout=20_000)  # no reload
    assert conversation.locator(".user_message", has_text=marker).count() == 1
    # tool calls and returns are folded; a click opens one
    call = conversation.locator("details.tool_call_message", has_text="memory_insert").first
    assert call.get_attribute("open") is None
    call.locator("summary").click()
    assert call.get_attribute("open") is not None and "Ada likes tea" in call.inner_text()
    # the agent's own memory edit shows in its block
    assert "Ada likes tea" in page.locator("[data-block='human'] textarea").input_value()
    # the page's own send box
    page.fill("#send-text", "typed in the page")
    page.click("#send-button")
    conversation.get_by_text("You said: typed in the page").wait_for(timeout=20_000)
    assert conversation.locator(".user_message", has_text="typed in the page").count() == 1  # not twice
    page.screenshot(path=str(shots / "ui-agent.png"), full_page=True)
    steps = page.locator("section", has_text="Steps").locator("tbody tr")
    page.reload()
    page.locator("#live-status.on").wait_for(timeout=20_000)
    assert steps.count() >= 4 and "fake-model" in steps.first.inner_text()


def test_groups_page_shows_members_and_last_turns(page: Any, base_url: str, http: httpx.Client,
                                                  fake_llm_server: FakeOpenAIServer) -> None:
    a = new_agent(http, fake_llm_server, name=f"ann-{uuid.uuid4().hex[:6]}")
    b = new_agent(http, fake_llm_server, name=f"bob-{uuid.uuid4().hex[:6]}")
    group = http.post("/v1/groups/", json={"agent_ids": [a["id"], b["id"]],
                                           "manager_config": {"manager_type": "round_robin", "max_turns": 2}}).json()
    marker = f"group news {uuid.uuid4().hex[:6]}"
    assert http.post(f"/v1/groups/{group['id']}/messages",
                     json={"messages": [{"role": "user", "content": marker}]}).status_code == 200
    page.goto(f"{base_url}/ui/#/groups")
    card = page.locator("section", has_text=group["id"])
    card.wait_for(timeout=15_000)
    assert "round robin" in card.inner_text()
    for member in (a, b):
        assert card.get_by_role("link", name=member["name"]).count() >= 1
    assert marker in card.inner_text()  # the group's last turns


def test_a_simulation_page_draws_its_plots_and_network(page: Any, base_url: str, town_run: str,
                                                       shots: Path) -> None:
    page.goto(f"{base_url}/ui/#/sims")
    page.get_by_role("link", name=town_run).click()
    page.locator("#sim-plots svg.plot").first.wait_for(timeout=15_000)
    assert page.locator("#sim-plots svg.plot").count() == 3
    line = page.locator("svg.plot polyline[data-key='turns_per_s']")
    assert len(line.get_attribute("points").split()) == 3  # one point per round
    assert "3 of 3 rounds" in page.locator("main").inner_text()
    network = page.locator("svg.network")
    assert network.get_attribute("data-nodes") == "10" and network.locator("line").count() > 0
    page.select_option("#round-picker", "1")
    page.wait_for_function("location.hash.endsWith('round=1')")
    page.get_by_text(re.compile(r"^Round 1: \d+ of 10 agents spoke")).wait_for(timeout=15_000)
    page.screenshot(path=str(shots / "ui-simulation.png"), full_page=True)


def test_cluster_page_shows_hosts_and_nodes(page: Any, base_url: str, shots: Path) -> None:
    page.goto(f"{base_url}/ui/#/cluster")
    hosts = page.locator("section", has_text="Agent hosts").locator("tbody tr")
    hosts.first.wait_for(timeout=15_000)
    assert hosts.count() >= 1 and "yes" in hosts.first.inner_text()
    assert "127.0.0.1" in page.locator("section", has_text="Nodes").inner_text()
    assert "dashboard is not running" in page.locator("#dashboard-link").inner_text()
    page.locator("#metrics").get_by_text("turns", exact=True).wait_for()
    time.sleep(0.2)
    page.screenshot(path=str(shots / "ui-cluster.png"), full_page=True)

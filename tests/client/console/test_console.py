"""The console in a real headless browser, beside `fedprofile merchant serve` on 127.0.0.1: every page, the same
profile and audience as the gRPC service, reviews kept across a restart, and no page without the token."""

from __future__ import annotations

import csv
import io
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import grpc
import httpx
import pytest

from client.onsite.proto import merchant_pb2 as pb
from client.onsite.proto import merchant_pb2_grpc as pb_grpc
from shared_model.processes import free_port
from tests.conftest import click_through, wait_for_console

ROOT = Path(__file__).resolve().parents[3]
SHOTS = ROOT / "docs" / "console"
pytestmark = pytest.mark.processes  # `fedprofile merchant serve` in its own process, and a browser


class Merchant:
    """`fedprofile merchant serve` with its console, started and stopped on 127.0.0.1."""

    def __init__(self, onsite, folder: Path):
        self.folder, self.onsite = folder, onsite
        self.models = folder / "models"
        if not self.models.exists():
            shutil.copytree(onsite.models / "v0001", self.models / "v0001")
            (self.models / "LATEST").write_text("v0001")
        self.store = folder / "merchant.sqlite"

    def start(self) -> "Merchant":
        self.grpc_port, self.console_port = free_port(), free_port()
        self.log_path = self.folder / "serve.log"
        self._log = open(self.log_path, "a")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "fedprofile", "merchant", "serve", "--model", str(self.models), "--data",
             str(self.onsite.data), "--format", "synthetic", "--grpc-port", str(self.grpc_port), "--store",
             str(self.store), "--watch", "0", "--console-port", str(self.console_port), "--console-writable"],
            cwd=ROOT, stdout=self._log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONPATH": str(ROOT)})
        self.url = f"http://127.0.0.1:{self.console_port}"
        try:
            wait_for_console(self.url, self.proc, self.log_path)
        except BaseException:  # pytest.fail included: leave no merchant running
            self.stop()
            raise
        self.token = (self.folder / "console-token").read_text().strip()
        self.channel = grpc.insecure_channel(f"127.0.0.1:{self.grpc_port}")
        self.stub = pb_grpc.MerchantProfilesStub(self.channel)
        return self

    def stop(self) -> None:
        if getattr(self, "channel", None) is not None:
            self.channel.close()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self._log.close()


@pytest.fixture(scope="module")
def merchant(onsite, tmp_path_factory):
    running = Merchant(onsite, tmp_path_factory.mktemp("console")).start()
    yield running
    running.stop()


def _sign_in(browser, merchant) -> None:
    browser.delete_all_cookies()
    browser.get(f"{merchant.url}/login")
    browser.find_element("id", "token").send_keys(merchant.token)
    click_through(browser, browser.find_element("id", "sign-in"), "/customers")


def _shot(browser, name: str) -> None:
    """Screenshots for docs/console.md, written only when asked (FEDPROFILE_CONSOLE_SHOTS=1)."""
    if os.environ.get("FEDPROFILE_CONSOLE_SHOTS"):
        SHOTS.mkdir(parents=True, exist_ok=True)
        browser.save_screenshot(str(SHOTS / f"{name}.png"))


def test_a_request_without_the_token_is_refused(merchant, browser):
    for path in ("/customers", "/segments", "/audiences.csv?category=x", "/risk", "/federation", "/segments/map.svg"):
        bare = httpx.get(merchant.url + path, follow_redirects=False)
        assert bare.status_code == 401, path
        assert "Sign in" in bare.text
        wrong = httpx.get(merchant.url + path, headers={"authorization": "Bearer " + "x" * 43})
        assert wrong.status_code == 401, path
    assert httpx.post(f"{merchant.url}/login", data={"token": "not-the-token"}).status_code == 401
    refused = httpx.post(f"{merchant.url}/risk/anyone/review", data={"form_key": "guess"})
    assert refused.status_code == 401
    browser.delete_all_cookies()
    browser.get(f"{merchant.url}/risk")
    assert browser.find_element("id", "token")  # the sign-in form, not the page
    assert "Sign in" in browser.title


def test_every_page_loads_in_a_browser(merchant, browser):
    _sign_in(browser, merchant)
    _shot(browser, "customers")
    user = str(merchant.onsite.log.events["user_id"].iloc[0])
    pages = {
        f"/customers/{user}": "Customer", "/segments": "Segments", "/segments/0": "Segment 0",
        "/audiences": "Audiences", "/risk?min_score=0&show=all": "Risk", "/federation": "Federation",
    }
    for path, heading in pages.items():
        browser.get(merchant.url + path)
        assert browser.find_element("tag name", "h1").text.startswith(heading), path
        assert "v0001" in browser.find_element("id", "serving-version").text
        _shot(browser, {"/customers/": "customer", "/segments": "segments", "/segments/0": "segment",
                        "/audiences": "audiences", "/risk?": "risk", "/federation": "federation"}[
            next(p for p in ("/customers/", "/segments/0", "/segments", "/audiences", "/risk?", "/federation")
                 if path.startswith(p))])
    browser.get(f"{merchant.url}/segments")
    image = browser.find_element("id", "segment-map")
    assert browser.execute_script("return arguments[0].naturalWidth", image) > 100  # the SVG drew
    assert len(browser.find_elements("css selector", "tr.segment-row")) >= 2
    browser.get(f"{merchant.url}/federation")
    assert browser.find_elements("css selector", "tr.version-row")  # the served version is listed


def test_a_customer_search_shows_the_profile_the_grpc_service_returns(merchant, browser):
    _sign_in(browser, merchant)
    user = str(merchant.onsite.log.events["user_id"].iloc[3])
    box = browser.find_element("id", "q")
    box.send_keys(user)
    click_through(browser, browser.find_element("id", "search"), f"/customers?q={user}")
    click_through(browser, browser.find_element("link text", user), f"/customers/{user}")
    assert browser.find_element("id", "user-id").text == user
    reply = merchant.stub.GetProfile(pb.ProfileRequest(user_id=user))
    profile = reply.profile

    def value(element_id: str) -> str:
        return browser.find_element("id", element_id).get_attribute("data-value")

    assert value("profile-version") == reply.model_version
    assert float(value("propensity")) == pytest.approx(profile.purchase_propensity, abs=1e-6)
    assert float(value("risk-score")) == pytest.approx(profile.risk_score, abs=1e-6)
    assert value("value-segment") == profile.value_segment
    assert value("price-tier") == profile.price_tier
    assert int(value("segment")) == profile.segment
    assert float(value("peak-hour")) == pytest.approx(profile.peak_hour, abs=1e-6)
    shown = [(li.get_attribute("data-category"), float(li.get_attribute("data-weight")))
             for li in browser.find_elements("css selector", "li.interest")]
    assert [c for c, _ in shown] == [w.name for w in profile.interests]
    assert [w for _, w in shown] == pytest.approx([w.weight for w in profile.interests], abs=1e-6)
    nexts = [li.get_attribute("data-category") for li in browser.find_elements("css selector", "li.next-interest")]
    assert nexts == [w.name for w in profile.next_interests]
    recommended = merchant.stub.Recommend(pb.RecommendRequest(user_id=user, k=10))
    rows = browser.find_elements("css selector", "tr.recommendation")
    assert [r.find_elements("tag name", "td")[0].text for r in rows] == [i.item_id for i in recommended.items]
    assert browser.find_elements("css selector", "#events li")  # the timeline of recent events
    _shot(browser, "customer")


def test_an_audience_export_matches_the_audience_rpc(merchant, browser):
    _sign_in(browser, merchant)
    browser.get(f"{merchant.url}/audiences")
    options = browser.find_elements("css selector", "#category option")
    category = options[1].get_attribute("value")
    options[1].click()
    size = browser.find_element("id", "n")
    size.clear()
    size.send_keys("25")
    click_through(browser, browser.find_element("id", "preview"), "&n=25")
    assert browser.find_element("id", "audience-size").text.startswith("25 customers")
    _shot(browser, "audiences")
    export = browser.find_element("id", "export").get_attribute("href")
    answer = httpx.get(export, headers={"authorization": f"Bearer {merchant.token}"})
    assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(answer.text)))
    rpc = merchant.stub.Audience(pb.AudienceRequest(category=category, n=25))
    assert [r["user_id"] for r in rows] == [u.user_id for u in rpc.users]
    assert [float(r["score"]) for r in rows] == pytest.approx([u.score for u in rpc.users], abs=1e-6)
    # narrowing keeps the RPC's order and drops only customers outside the filter
    narrowed = httpx.get(export + "&min_propensity=0.5", headers={"authorization": f"Bearer {merchant.token}"})
    kept = [r["user_id"] for r in csv.DictReader(io.StringIO(narrowed.text))]
    assert all(float(r["purchase_propensity"]) >= 0.5 for r in csv.DictReader(io.StringIO(narrowed.text)))
    full = merchant.stub.Audience(pb.AudienceRequest(category=category, n=10_000))
    order = {u.user_id: i for i, u in enumerate(full.users)}
    assert [order[u] for u in kept] == sorted(order[u] for u in kept)


def test_a_suspect_marked_reviewed_stays_reviewed_after_a_restart(onsite, browser, tmp_path):
    first = Merchant(onsite, tmp_path).start()
    try:
        _sign_in(browser, first)
        browser.get(f"{first.url}/risk?min_score=0&show=open")
        suspect = browser.find_elements("css selector", "tr.suspect")[0]
        user = suspect.get_attribute("data-user")
        click_through(browser, suspect.find_element("css selector", "button.mark-reviewed"), "/risk")
        forged = httpx.post(f"{first.url}/risk/{user}/review", data={"form_key": "forged"},
                            headers={"authorization": f"Bearer {first.token}"})
        assert forged.status_code == 403  # a form this console did not serve
    finally:
        first.stop()
    second = Merchant(onsite, tmp_path).start()  # same store, a new process
    try:
        _sign_in(browser, second)
        browser.get(f"{second.url}/risk?min_score=0&show=all")
        row = browser.find_element("css selector", f"tr.suspect[data-user='{user}']")
        assert re.search(r"reviewed \d{4}-\d\d-\d\d", row.text)
        browser.get(f"{second.url}/risk?min_score=0&show=open")
        assert user not in [r.get_attribute("data-user") for r in browser.find_elements("css selector", "tr.suspect")]
    finally:
        second.stop()

"""Shared fixtures: the real data folder (skipped when absent) and small synthetic merchants."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

DATA_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def real_data() -> Path:
    if not DATA_DIR.is_dir():
        pytest.skip(f"real data sets not found at {DATA_DIR} (the ../shared/data folder beside the checkout)")
    return DATA_DIR


@pytest.fixture(scope="session")
def small_merchants():
    from shared_model.data.synthetic import SyntheticConfig, generate

    return generate(SyntheticConfig(merchants=2, users_per_merchant=60, items_per_merchant=400, seed=1))


@pytest.fixture(scope="session")
def small_log(small_merchants):
    from shared_model.data.synthetic import merge_merchants

    return merge_merchants(small_merchants)


@pytest.fixture(scope="session")
def first_builtin_shop():
    """The first of the built-in synthetic shops (500 customers, planted truth) and its readable profile fields."""
    from client.onsite.profile import describe_users
    from shared_model.data.synthetic import SyntheticConfig, generate
    from shared_model.features import HashSpec, build_catalogue

    shop = generate(SyntheticConfig(merchants=1))[0]
    events = shop.events.sort_values(["user_id", "timestamp"], kind="stable").reset_index(drop=True)
    return shop, describe_users(events, build_catalogue(events, HashSpec(64, 64, 64, 8, 16, 64)))


def tiny_run(tmp_path, **changes):
    """A federation small enough for a test: two synthetic shops of 60 customers, a narrow model, local DP (tests
    of distributed DP ask for it)."""
    from shared_model.run_config import RunConfig

    base = dict(num_rounds=2, min_replies=2, synthetic_users=60, max_len=20, d_model=16, profile_dim=16,
                n_heads=1, n_layers=1, item_buckets=1024, batch_size=32, negatives=32, lr=3e-3,
                privacy="local", local_epochs=4, run_dir=str(tmp_path / "run"))
    return RunConfig(**{**base, **changes})


@pytest.fixture(scope="session")
def onsite(tmp_path_factory):
    """One synthetic shop of 300 customers on disk with planted truth, and a small model trained on it,
    published twice (v0001, then v0002 after more training) like the federation publishes global models."""
    import torch

    from shared_model.checkpoint import save_global_model
    from shared_model.data.loaders import load_events
    from shared_model.data.synthetic import SyntheticConfig, generate, write
    from shared_model.features import build_sequences
    from shared_model.model import ProfileConfig, ProfileTransformer
    from shared_model.training import TrainConfig, train

    root = tmp_path_factory.mktemp("onsite")
    write(generate(SyntheticConfig(merchants=1, users_per_merchant=300, items_per_merchant=600, seed=3)), root / "data")
    data = root / "data" / "merchant-0"
    log = load_events(data, "synthetic")
    config = ProfileConfig(max_len=30, d_model=32, profile_dim=32, n_heads=1, n_layers=1, item_buckets=2048)
    sequences = build_sequences(log.events, log.users, config.hash_spec, max_len=config.max_len)
    torch.manual_seed(0)
    model = ProfileTransformer(config, sequences.catalogue.descriptors)
    versions = {}
    for version in (1, 2):
        train(model, sequences, TrainConfig(epochs=2, batch_size=64, negatives=64, show_progress=False, eval_every=0),
              device=torch.device("cpu"))
        versions[version] = {k: v.clone() for k, v in model.shared_state().items()}
    models = root / "models"

    def publish(version: int, folder: Path = models) -> Path:
        out = save_global_model(folder / f"v{version:04d}", config, versions[version],
                                {"version": version, "run_id": "test-run"})
        (folder / "LATEST").write_text(out.name)
        return out

    class Onsite:
        pass

    onsite = Onsite()
    onsite.data, onsite.log, onsite.models, onsite.publish, onsite.config = data, log, models, publish, config
    onsite.truth = log.truth["users"]
    publish(1)
    return onsite


@pytest.fixture(scope="session")
def browser(tmp_path_factory):
    """Headless chromium driven by selenium (the consoles' tests): the system's browser and driver."""
    binary = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    driver = shutil.which("chromedriver")
    if not (binary and driver):
        pytest.skip("the console tests drive a real browser: install chromium and its driver "
                    "(Debian: apt-get install chromium chromium-driver; .ci/run does)")
    webdriver = pytest.importorskip("selenium.webdriver", reason="pip install selenium (the dev extra has it)")
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,1000",
                 "--disable-gpu", "--no-first-run"):
        options.add_argument(flag)
    # its profile in pytest's temporary folder, not a new /tmp/org.chromium.* left behind each session
    options.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chromium')}")
    session = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=driver))
    session.set_page_load_timeout(60)
    session.implicitly_wait(10)  # an element looked for right after a click may be on the page still loading
    yield session
    session.quit()


def click_through(browser, element, suffix: str, timeout: float = 30.0) -> None:
    """Click `element` and wait until the browser has left the page for one whose address ends with `suffix`.

    Waits for the old page to go stale first: a sign-in form served at the very address it leads to (the
    coordinator's /rounds) matches the address before the click has navigated at all."""
    from selenium.webdriver.support.ui import WebDriverWait

    page = browser.find_element("tag name", "html")
    element.click()
    WebDriverWait(browser, timeout).until(lambda _: _gone(page),
                                          message=f"the page never changed after the click towards ...{suffix}")
    WebDriverWait(browser, timeout).until(lambda b: b.current_url.endswith(suffix),
                                          message=f"the browser never reached ...{suffix}")


def _gone(element) -> bool:
    """Whether a page's element belongs to a page the browser has left. Chromium, asked in the middle of the
    navigation, may answer "Node with given id does not belong to the document" instead of a stale element: the
    old page is going, so ask again (a flaky failure of the suite once)."""
    from selenium.common.exceptions import StaleElementReferenceException, WebDriverException

    try:
        element.is_enabled()
    except StaleElementReferenceException:
        return True
    except WebDriverException as exc:
        if "does not belong to the document" not in str(exc):
            raise
    return False


def wait_for_console(url: str, process, log_path, timeout: float = 120.0) -> None:
    """Until a console started as `process` answers its sign-in page at `url`; fails with the log's tail when the
    process exits or the time runs out."""
    import time

    import httpx

    deadline = time.time() + timeout
    while True:
        try:
            if httpx.get(f"{url}/login", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if process.poll() is not None or time.time() > deadline:
            pytest.fail("the console did not come up:\n" + Path(log_path).read_text()[-3000:])
        time.sleep(0.3)

"""The MLflow UI in a real headless Chromium: a tiny sweep tracked by a real `mlflow server` on 127.0.0.1,
then the experiment page (child runs nested under the sweep's parent run) and the parent run's artifact
view (the interaction plot rendered as an image). Screenshots of both are kept for people to look at.

    .venv/bin/pip install -e '.[dev]'        # Playwright for Python; the browser is Debian's, not a download
    .venv/bin/pytest tests/test_mlflow_ui.py -m slow -q -s
    DPO_SWEEP_SCREENSHOTS=/tmp/shots .venv/bin/pytest tests/test_mlflow_ui.py -m slow -q -s

Chromium comes from apt, installed by scripts/setup-test-host.sh (scripts/test runs it first with CI=true or --setup-host);
Playwright drives it through `executable_path`, so `playwright install` (a CDN download) is never needed.
"""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import small_sweep

from trainables.tracking import KIND_TAG, PARENT_TAG, make_client

pytestmark = pytest.mark.slow
BIN = Path(sys.executable).parent
REPO = Path(__file__).resolve().parents[1]
SWEEP_NAME = "ui-check"
# MLflow 3.17's UI opens an experiment on its GenAI overview whatever the experiment's kind tag says;
# the runs table (with its nested-run expanders) is the "machine_learning" workflow.
ML_WORKFLOW = "workflowType=machine_learning"


@pytest.fixture(scope="session")
def chromium() -> str:
    """Debian's Chromium, installed by scripts/setup-test-host.sh (never by a test)."""
    found = shutil.which("chromium")
    if not found:
        pytest.skip("no `chromium` on PATH: run ./scripts/test --setup-host as root (or install Chromium)")
    print(f"[chromium] using {found}", flush=True)
    return found


@pytest.fixture(scope="module")
def browser(chromium):
    sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright missing: pip install -e '.[dev]'")
    with sync_api.sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=chromium, headless=True)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1600, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(30_000)
    try:
        yield page
    finally:
        context.close()


@pytest.fixture(scope="module")
def screenshots() -> Path:
    path = Path(os.environ.get("DPO_SWEEP_SCREENSHOTS") or REPO / "test-artifacts" / "screenshots")
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="module")
def ui_sweep(mlflow_server, model_cache, tmp_path_factory) -> dict:
    """2 x 2 beta x learning_rate on 128 rows, fifo: four short trials, about 35 s on 2 CPUs."""
    root = tmp_path_factory.mktemp("ui-sweep")
    config = root / "sweep.yaml"
    config.write_text(yaml.safe_dump(small_sweep(
        model_cache, root / "storage", name=SWEEP_NAME, scheduler={"kind": "fifo"},
        trial={"data": {"synthetic": {"num_train": 128, "num_eval": 32, "num_probe": 8}}, "dpo": {"reports_per_epoch": 2}},
        search={"space": {"beta": {"grid": [0.1, 0.5]}, "learning_rate": {"grid": [5e-3, 1e-6]}}})))
    print(f"[sweep] dpo-sweep run {config} --tracking-uri {mlflow_server.uri}", flush=True)
    started = time.monotonic()
    out = subprocess.run([str(BIN / "dpo-sweep"), "run", str(config), "--tracking-uri", mlflow_server.uri],
                         env={**os.environ, "DPO_SWEEP_CACHE": model_cache}, capture_output=True, text=True,
                         timeout=300, check=False)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-4000:]
    print(f"[sweep] done in {time.monotonic() - started:.1f} s", flush=True)

    client = make_client(mlflow_server.uri)
    exp = client.get_experiment_by_name(SWEEP_NAME)
    parents = client.search_runs([exp.experiment_id], f"tags.`{KIND_TAG}` = 'sweep'")
    assert len(parents) == 1
    parent = parents[0]
    children = client.search_runs([exp.experiment_id], f"tags.`{PARENT_TAG}` = '{parent.info.run_id}'")
    assert len(children) == 4
    plot = Path(client.download_artifacts(parent.info.run_id, "analysis/interaction.png", str(root / "dl")))
    return {"uri": mlflow_server.uri, "experiment_id": exp.experiment_id, "parent": parent, "children": children,
            "plot": plot}


def png_size(path: Path) -> tuple[int, int]:
    """(width, height) from the IHDR chunk: 8-byte signature, 4-byte length, b"IHDR", then two big-endian u32."""
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR", f"{path} is not a PNG"
    return struct.unpack(">II", head[16:24])


# The artifact tree animates a folder open (its <ul> grows from 8 px under `overflow: hidden`); its rows count
# as visible while clipped. Open means the list is as tall as its content.
FOLDER_OPEN_JS = """name => {
  const row = document.querySelector(`[data-testid="artifact-tree-node"][artifact-name="${name}"]`);
  const list = row && row.closest("ul");
  return !!list && list.clientHeight > 0 && list.clientHeight >= list.scrollHeight;
}"""


def close_assistant(page) -> None:
    """The MLflow Assistant panel opens on the right of every page and would hide half the screenshot."""
    close = page.get_by_role("button", name="Close")
    if close.count() == 1:
        close.click()


def test_experiment_page_shows_child_runs_nested_under_the_parent(ui_sweep, page, screenshots):
    from playwright.sync_api import expect

    parent, children = ui_sweep["parent"], ui_sweep["children"]
    page.goto(f"{ui_sweep['uri']}/#/experiments/{ui_sweep['experiment_id']}/runs?{ML_WORKFLOW}")
    parent_link = page.locator(f'a[href$="/runs/{parent.info.run_id}"]')
    expect(parent_link).to_be_visible(timeout=60_000)
    expect(parent_link).to_have_text(parent.info.run_name)
    close_assistant(page)

    # Collapsed, the table holds the parent alone: a child shown here would be a top-level run, not nested.
    child_links = {c.info.run_name: page.locator(f'a[href$="/runs/{c.info.run_id}"]') for c in children}
    for link in child_links.values():
        expect(link).to_have_count(0)

    parent_row = page.locator('[role="row"]', has=parent_link)
    expander = parent_row.locator('button[data-component-id*="runnamecellrenderer"]')  # the +/- before the name
    expect(expander).to_have_count(1)
    expander.click()
    for name, link in child_links.items():
        expect(link).to_be_visible()
        expect(link).to_have_text(name)

    shot = screenshots / "experiment-runs-expanded.png"
    page.screenshot(path=str(shot), full_page=True)
    print(f"[screenshot] {shot}", flush=True)


def test_parent_run_artifacts_render_the_interaction_plot(ui_sweep, page, screenshots):
    from playwright.sync_api import expect

    parent = ui_sweep["parent"]
    page.goto(f"{ui_sweep['uri']}/#/experiments/{ui_sweep['experiment_id']}/runs/{parent.info.run_id}?{ML_WORKFLOW}")
    page.get_by_role("tab", name="Artifacts").click()
    close_assistant(page)
    node = '[data-testid="artifact-tree-node"][artifact-name="{}"]'.format
    page.locator(node("analysis")).click()
    analysis_files = ("heatmap.png", "interaction.png", "learning_curves.png", "results.csv", "summary.txt")
    for name in analysis_files:
        expect(page.locator(node(name))).to_be_visible()
    page.wait_for_function(FOLDER_OPEN_JS, arg="interaction.png")
    page.locator(node("interaction.png")).click()

    image = page.locator('img[alt="analysis/interaction.png"]')
    expect(image).to_be_visible()
    # Rendered means decoded: a broken or empty image has naturalWidth 0. The size must be the logged PNG's.
    page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=image.element_handle())
    rendered = tuple(image.evaluate("img => [img.naturalWidth, img.naturalHeight]"))
    assert rendered == png_size(ui_sweep["plot"]), (rendered, ui_sweep["plot"])
    page.wait_for_function(FOLDER_OPEN_JS, arg="interaction.png")

    shot = screenshots / "parent-run-interaction-plot.png"
    page.screenshot(path=str(shot), full_page=True)
    print(f"[screenshot] {shot}", flush=True)

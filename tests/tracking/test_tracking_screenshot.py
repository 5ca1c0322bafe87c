"""What a user sees: the demo run's MLflow page in headless Chromium (Debian's `chromium`, make install).

The page is the run's "Model metrics" tab, which MLflow's UI draws with plotly: one chart per metric
(about 70 for the demo run), in a grid, alphabetically, each drawn only once it is in view; train.loss
comes near the end, where a user scrolls to. So the window is made tall enough to hold the whole grid
(its height from the number of metrics), and every chart is drawn. Two checks, each able to fail:
- the DOM after the page's JavaScript ran (`--dump-dom`) holds a chart titled `train.loss` with a plotly
  line (`path.js-line`) of many vertices: the training curve is on the page (plotly simplifies a line,
  so the vertices are fewer than the logged points, and are not counted against them);
- the screenshot (PNG) has plotly's trace colour on many pixels: charts were painted, not only the
  page's frame. This part does not single out the train.loss chart (the single-value metrics are bars
  of the same colour), nor the curve's shape.
The screenshot's path is printed (`pytest -s`) and kept in the pytest cache.
"""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest
from tracking_helpers import pipeline_run

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                 # virtual time stands still while fetches are pending: this waits for the metric
                 # histories and the charts' JavaScript, not 120 s of wall time
                 "--virtual-time-budget=120000"]
LINE_RGB = (34, 114, 180)  # the colour plotly draws the run's trace in (checked in the DOM below)
# The grid at a 1600-pixel-wide window: 3 charts a row, under 400 pixels a row, below a header.
CHARTS_PER_ROW, ROW_PX, HEADER_PX = 3, 400, 600


def chromium(height: int, *args: str) -> subprocess.CompletedProcess:
    binary = shutil.which("chromium")
    if binary is None:
        pytest.fail("chromium not found: run `make install` (or `make install-chromium`)", pytrace=False)
    return subprocess.run([binary, *CHROMIUM_ARGS, f"--window-size=1600,{height}", *args], capture_output=True,
                          text=True, timeout=300)


def test_the_run_page_shows_the_training_curve(demo_run, request, tmp_path):
    from PIL import Image

    client, run = pipeline_run(demo_run.mlflow_url, demo_run.cfg.tracking.experiment, demo_run.result.run_id)
    url = f"{demo_run.mlflow_url}/#/experiments/{run.info.experiment_id}/runs/{run.info.run_id}/model-metrics"
    points = len(client.get_metric_history(run.info.run_id, "train.loss"))
    height = HEADER_PX + ROW_PX * -(-len(run.data.metrics) // CHARTS_PER_ROW)

    dom = chromium(height, "--dump-dom", url).stdout
    charts = re.findall(r'<g class="trace scatter[^"]*".*?<path class="js-line" d="([^"]*)" style="([^"]*)"', dom)
    assert ">train.loss<" in dom and charts, f"no plotly line chart titled train.loss on {url}"
    stroke = tuple(int(c) for c in re.search(r"stroke: rgb\((\d+), (\d+), (\d+)\)", charts[0][1]).groups())
    assert stroke == LINE_RGB
    loss_chart = dom[dom.index(">train.loss<"):]  # the chart titled train.loss, and its line
    line = re.search(r'<path class="js-line" d="([^"]*)"', loss_chart).group(1)
    assert points > 10 and len(re.findall(r"[ML]", line)) >= 5  # a curve, not a point or a flat segment

    shot = request.config.cache.mkdir("kubetune-mlflow-screenshot") / "demo-run-metrics.png"
    done = chromium(height, f"--screenshot={shot}", url)
    assert done.returncode == 0 and shot.is_file(), done.stderr[-2000:]
    image = Image.open(shot).convert("RGB")
    line_pixels = sum(1 for p in image.getdata() if all(abs(a - b) <= 30 for a, b in zip(p, LINE_RGB, strict=True)))
    print(f"\nscreenshot of {url}: {shot} ({image.width}x{image.height}, {line_pixels} pixels of the traces' colour)")
    assert line_pixels > 10_000

"""`dvc plots show` makes a page that renders with no network: vega, vega-lite and vega-embed
are inlined by the template .dvc/config names (plots/offline.html), not loaded from a CDN."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
from test_dvc_pipeline import copy_repository, run

from conftest import subprocess_env

pytestmark = pytest.mark.slow

CHROMIUM = next(
    (shutil.which(name) for name in ("chromium", "chromium-browser", "google-chrome") if shutil.which(name)), None
)


def write_reports(reports: Path) -> None:
    """The plotted files of dvc.yaml, made up (no training needed to draw them)."""
    reports.mkdir()
    (reports / "training_curves.csv").write_text(
        "epoch,train_loss,val_loss,val_accuracy,val_f1_macro\n0,1.0,0.9,0.5,0.4\n1,0.7,0.6,0.7,0.6\n"
    )
    pairs = [(actual, predicted) for actual in "abc" for predicted in "abc"]
    (reports / "confusion.csv").write_text("actual,predicted\n" + "".join(f"{a},{p}\n" for a, p in pairs))
    (reports / "per_class_f1.csv").write_text("class,f1\na,0.9\nb,0.7\nc,0.8\n")
    for name, accuracy in (("uncalibrated", 0.7), ("calibrated", 0.9)):
        (reports / f"reliability_{name}.csv").write_text(
            f"lower,upper,count,confidence,accuracy\n0.8,0.866667,5,0.85,{accuracy}\n0.933333,1.0,7,0.95,0.94\n"
        )
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure = plt.figure(figsize=(1, 1))
    plt.imshow([[2, 1], [1, 2]])
    figure.savefig(reports / "confusion.png")
    figure.savefig(reports / "reliability.png")
    plt.close(figure)


@pytest.fixture(scope="module")
def page(tmp_path_factory: pytest.TempPathFactory) -> Path:
    repo = copy_repository(tmp_path_factory.mktemp("plots") / "repo")
    write_reports(repo / "reports")
    run(["dvc", "plots", "show"], repo, subprocess_env())
    ignored = subprocess.run(["git", "check-ignore", "-q", "dvc_plots/index.html"], cwd=repo, check=False)
    assert ignored.returncode == 0, "dvc_plots/ is not ignored by git"
    return repo / "dvc_plots" / "index.html"


def test_the_plots_page_loads_no_script_from_the_network(page: Path) -> None:
    html = page.read_text(encoding="utf-8")
    assert re.findall(r"<script[^>]*\bsrc=", html) == []
    assert "vega@5" in html and "vega-lite@5" in html and "vega-embed@6" in html  # inlined, with versions
    assert html.count("vegaEmbed('#") == 4  # the four vega plots, beside the two PNGs
    assert "confusion.png" in html and "reliability.png" in html


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium to render the page with")
def test_the_plots_page_renders_every_chart_offline_in_headless_chromium(page: Path) -> None:
    """Chromium, its every network request sent to a closed port, draws the four vega charts
    (a canvas each, vega's "marks") beside the two PNGs."""
    result = subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--virtual-time-budget=8000",
            "--proxy-server=127.0.0.1:9",
            "--dump-dom",
            page.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert len(re.findall(r'<canvas[^>]*class="marks"', result.stdout)) == 4, result.stdout[-2000:]
    images = re.findall(r'<img src="(static/[^"]+\.png)"', result.stdout)
    assert len(images) == 2 and all((page.parent / image).is_file() for image in images)

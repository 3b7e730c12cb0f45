"""The run report (textclf.report, reports/report.html): its sections for 2 classes and for 20,
nothing loaded from a URL, every text from the run escaped, tokens highlighted by
contribution; evaluate writes it and logs it to the run; it renders in headless Chromium
with the network off, its images loaded."""

from __future__ import annotations

import html
import io
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
import yaml
from mlflow.tracking import MlflowClient
from tiny_run import TinyRun, tiny_run

from textclf import plots
from textclf.report import ErrorRecord, render_report
from textclf.stages.evaluate import most_confident_errors

from conftest import COMMON_WORDS, GROUP_WORDS, REPO_ROOT

SECTIONS = ["metrics", "per-class", "confusion", "curves", "reliability", "top-features", "errors"]
CURVES = "epoch,step,train_loss,val_loss,val_accuracy,val_f1_macro\n0,5,1.1,1.0,0.5,0.4\n1,10,0.9,0.8,0.7,0.65\n"
BINS = [{"lower": 0.8, "upper": 0.9, "count": 5, "confidence": 0.85, "accuracy": 0.7}]
METRICS = {
    "accuracy": 0.8,
    "f1_macro": 0.75,
    "precision_macro": 0.76,
    "recall_macro": 0.74,
    "loss": 0.6,
    "num_test": 40,
    "macro_classes": 2,
    "ece_uncalibrated": 0.3125,
    "ece_calibrated": 0.0371,
    "loss_calibrated": 0.5,
    "temperature": 1.83,
}
LONG_NAME = "a class name far longer than any newsgroup's, which the table and the heatmap must wrap"


def class_names(count: int) -> list[str]:
    return [f"group.{i:02d}" for i in range(count - 1)] + [LONG_NAME]


def report_inputs(names: list[str]) -> dict:
    """render_report's arguments for ``names``: made-up scores, the real figures drawn from them,
    two errors (one explained, one not) and two top features per class."""
    confusion = torch.arange(len(names) ** 2).reshape(len(names), len(names)) % 7
    per_class = {name: {"precision": 0.5, "recall": 0.25, "f1": 1 / 3, "support": 10} for name in names}
    figures = {
        "confusion": plots.png_bytes(plots.confusion(confusion, names)),
        "curves": plots.png_bytes(plots.learning_curves(CURVES)),
        "reliability": plots.png_bytes(plots.reliability(BINS, BINS, 0.3125, 0.0371, 1.83)),
    }
    errors = [
        ErrorRecord(7, names[0], names[-1], 0.97, ["hull", "orbit", "the"], [0.5, -0.25, 0.0], "exact"),
        ErrorRecord(3, names[-1], names[0], 0.91, ["yeast", "oven"]),
    ]
    top = {name: [("sail", 1.5), ("rocket", -0.5)] for name in names}
    return {
        "metrics": METRICS,
        "per_class": per_class,
        "figures": figures,
        "errors": errors,
        "top_features": top,
        "details": {"MLflow run": "0123abcd", "corpus": "tiny"},
    }


def section_ids(page: str) -> list[str]:
    return re.findall(r'<section id="([^"]+)"', page)


def images(page: str) -> list[bytes]:
    import base64

    return [base64.b64decode(data) for data in re.findall(r'<img src="data:image/png;base64,([^"]+)"', page)]


@pytest.mark.parametrize("count", [2, 20])
def test_the_report_has_every_section_one_row_per_class_and_inline_images(count: int) -> None:
    names = class_names(count)
    page = render_report(**report_inputs(names))
    assert page.startswith("<!DOCTYPE html>")
    assert section_ids(page) == SECTIONS
    assert [html.unescape(name) for name in re.findall(r'<td class="name">([^<]*)</td>', page)] == names
    assert [png[:4] for png in images(page)] == [b"\x89PNG"] * 3  # confusion, curves, reliability
    assert page.count('<article class="error">') == 2
    assert page.count("<h3>") == count + 2  # a card per class's top features, a heading per error
    # The calibration callout: ECE before and after, and T.
    assert re.search(
        r"<strong>0\.3125</strong> before calibration, <strong>0\.0371</strong> after .* T = 1\.8300", page
    )


def test_the_report_loads_nothing_from_a_url() -> None:
    page = render_report(**report_inputs(class_names(20)))
    assert re.search(r"https?://|//[a-z0-9.-]+\.[a-z]{2,}/", page, flags=re.IGNORECASE) is None
    assert re.findall(r'(?:src|href)="([^"]*)"', page)  # it has some: the images, the section links
    assert all(ref.startswith(("data:image/png;base64,", "#")) for ref in re.findall(r'(?:src|href)="([^"]*)"', page))
    assert "<script" not in page and "@import" not in page and "url(" not in page


def test_the_heatmap_grows_with_the_classes_and_wraps_long_names() -> None:
    small, large = (plots.confusion(torch.ones(n, n, dtype=torch.int64), class_names(n)) for n in (2, 20))
    assert small.get_size_inches()[0] == 6.0 and large.get_size_inches()[0] == pytest.approx(9.0)
    (ax,) = large.axes
    long_tick = ax.get_yticklabels()[-1].get_text()
    assert "\n" in long_tick and max(len(line) for line in long_tick.splitlines()) <= plots.TICK_WIDTH
    assert [label.get_text() for label in ax.get_yticklabels()[:-1]] == class_names(20)[:-1]  # short ones kept


def test_every_text_of_the_run_is_escaped() -> None:
    """Class names, tokens, features and details are the user's: markup in them stays text."""
    hostile = '<script>alert("x")</script>'
    attribute = '" onmouseover="alert(1)'
    inputs = report_inputs([hostile, "plain"])
    inputs["errors"] = [ErrorRecord(0, hostile, "plain", 0.9, [hostile, attribute, "<b>"], [1.0, -1.0, 0.5], hostile)]
    inputs["top_features"] = {hostile: [(attribute, 1.0)], "plain": [("<img src=x onerror=alert(1)>", -1.0)]}
    inputs["details"] = {hostile: attribute}
    page = render_report(**inputs, title=hostile)
    assert "<script" not in page and "<b>" not in page and "<img src=x" not in page
    assert 'onmouseover="' not in page
    escaped = html.escape(hostile, quote=True)
    # The title twice, the details, the table, a top-features card; the error's class, its method,
    # its token in the text and among those that pushed most.
    assert page.count(escaped) == 9
    assert section_ids(page) == SECTIONS  # nothing broke out of its element


def test_tokens_are_highlighted_by_the_sign_and_size_of_their_contribution() -> None:
    page = render_report(**report_inputs(class_names(2)))
    explained, plain = re.findall(r'<article class="error">(.*?)</article>', page)
    spans = re.findall(
        r'<span class="token" style="background:rgba\(([\d,]+),([\d.]+)\)" title="([^"]+)">(\w+)', explained
    )
    # The largest |contribution| (0.5) is the most opaque; -0.25 blue at half of it; 0.0 transparent.
    assert spans == [
        ("220,38,38", "0.8", "+0.5000", "hull"),
        ("37,99,235", "0.4", "-0.2500", "orbit"),
        ("220,38,38", "0.0", "+0.0000", "the"),
    ]
    assert "towards group.00" not in explained and f"towards {LONG_NAME}" in html.unescape(explained)
    assert "hull (+0.5000)" in explained and "orbit (" not in explained  # only what pushed towards it
    assert "exact" in explained
    # Without contributions the tokens are shown as they are, and the page says why.
    assert 'class="token"' not in plain and "yeast oven" in plain and "no contributions computed" in plain
    assert "Each token's background" in page
    inputs = report_inputs(class_names(2))
    unexplained = render_report(**{**inputs, "errors": inputs["errors"][1:]})
    assert "Each token's background" not in unexplained  # no legend for colours the page does not use


def test_the_sections_left_out_are_named_or_absent() -> None:
    inputs = report_inputs(class_names(2))
    inputs.update(top_features=None, errors=[], figures={**inputs["figures"], "curves": None, "reliability": None})
    page = render_report(**inputs)
    assert section_ids(page) == [section for section in SECTIONS if section != "top-features"]
    assert "No learning curves for this run." in page and "No reliability for this run." in page
    assert "No test document was misclassified." in page and len(images(page)) == 1


def test_the_errors_shown_are_the_most_confident_misclassified_documents() -> None:
    probabilities = torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7], [0.95, 0.05], [0.6, 0.4]])
    labels = torch.tensor([0, 0, 1, 0, 0, 1])  # wrong: 1 (0.8), 2 (0.6), 3 (0.7), 5 (0.6)
    assert most_confident_errors(probabilities, labels) == [1, 3, 2, 5]  # ties: the earlier first
    assert most_confident_errors(probabilities, labels, count=2) == [1, 3]
    assert most_confident_errors(probabilities, torch.tensor([0, 1, 0, 1, 0, 0])) == []


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory: pytest.TempPathFactory, tiny_archive) -> TinyRun:
    """One tiny run, barely trained (1 epoch at a tiny learning rate), so it makes errors."""
    return tiny_run(tmp_path_factory.mktemp("report"), *tiny_archive, "trainer.max_epochs=1", "optimizer.lr=0.0001")


def test_evaluate_writes_the_report_of_the_run_and_logs_it(evaluated: TinyRun) -> None:
    reports = evaluated.cfg.paths.reports
    page = (reports / "report.html").read_text(encoding="utf-8")
    assert section_ids(page) == list(SECTIONS)  # fastText is a bag model: its top features too
    assert len(images(page)) == 3  # confusion, learning curves, reliability
    assert evaluated.run_id in page
    strongest = json.loads((reports / "top_features.json").read_text())
    for name, ranked in strongest.items():
        assert html.escape(name) in page and html.escape(ranked[0][0]) in page
    metrics = json.loads((reports / "metrics.json").read_text())
    assert f"T = {metrics['temperature']:.4f}" in page
    # The errors: the most confident ones, at most 20, each document's tokens the vocabulary's words.
    confusion = [line.split(",") for line in (reports / "confusion.csv").read_text().splitlines()[1:]]
    wrong = sum(actual != predicted for actual, predicted in confusion)
    assert wrong > 0
    headings = re.findall(r"probability (\d\.\d{3})</h3>", page)
    assert len(headings) == min(20, wrong) and headings == sorted(headings, reverse=True)
    texts = [re.sub(r"<[^>]+>", " ", text) for text in re.findall(r'<p class="tokens">(.*?)</p>', page)]
    assert len(texts) == len(headings)
    corpus = set(COMMON_WORDS).union(*GROUP_WORDS.values())
    for text in texts:  # each document's tokens, as the model read them: the corpus's words
        assert set(html.unescape(text).split()) & corpus
    # ... each highlighted by its contribution (textclf.explain: exact for fastText)
    errors = re.findall(r'<article class="error">(.*?)</article>', page, flags=re.S)
    assert len(errors) == len(headings)
    assert all(re.search(r'<span class="token" style="background:rgba\([\d,]+,0\.[1-9]', error) for error in errors)
    client = MlflowClient(evaluated.uri)
    logged = {artifact.path for artifact in client.list_artifacts(evaluated.run_id, "evaluation")}
    assert "evaluation/report.html" in logged
    pipeline = yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text())
    assert "${paths.reports}/report.html" in pipeline["stages"]["evaluate"]["outs"]


CHROMIUM = next(
    (shutil.which(name) for name in ("chromium", "chromium-browser", "google-chrome") if shutil.which(name)), None
)
# Appended to a copy of the page (the report itself has no script): once everything has
# loaded, what the test checks is written into the DOM that --dump-dom prints.
PROBE = """<script>
window.addEventListener("load", () => {
  const probe = document.createElement("pre");
  probe.id = "probe";
  probe.textContent = JSON.stringify({
    images: Array.from(document.images, (image) => image.complete ? image.naturalWidth : -1),
    sections: Array.from(document.querySelectorAll("section"), (section) => section.id),
    overflow: document.documentElement.scrollWidth - window.innerWidth,
  });
  document.body.appendChild(probe);
});
</script>"""


def chromium(*arguments: str) -> str:
    """Headless Chromium at 1200 x 3000, every network request sent to a closed port."""
    result = subprocess.run(
        [
            CHROMIUM,
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            "--proxy-server=127.0.0.1:9",
            "--window-size=1200,3000",
            "--virtual-time-budget=5000",
            *arguments,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="no chromium binary on PATH (.ci/run installs it with apt-get)")
@pytest.mark.parametrize("count", [2, 20])
def test_the_report_renders_offline_in_headless_chromium(tmp_path: Path, count: int) -> None:
    """The page's sections are all there, every image decodes, nothing is wider than the
    window (long class names wrap), and the screenshot is the window's size and not blank."""
    from PIL import Image

    page = render_report(**report_inputs(class_names(count)))
    report = tmp_path / "report.html"
    report.write_text(page, encoding="utf-8")
    probed = tmp_path / "probed.html"
    probed.write_text(page.replace("</body>", f"{PROBE}\n</body>"), encoding="utf-8")

    dom = chromium("--dump-dom", probed.as_uri())
    found = re.search(r'<pre id="probe">(.*?)</pre>', dom, flags=re.DOTALL)
    assert found, dom[-2000:]
    probe = json.loads(html.unescape(found.group(1)))
    assert probe["sections"] == SECTIONS
    assert len(probe["images"]) == 3 and all(width > 0 for width in probe["images"]), probe
    assert probe["overflow"] <= 0, f"the page is {probe['overflow']} px wider than the window"

    screenshot = tmp_path / "report.png"
    chromium(f"--screenshot={screenshot}", report.as_uri())
    with Image.open(io.BytesIO(screenshot.read_bytes())) as image:
        assert image.size == (1200, 3000)
        colors = image.convert("RGB").getcolors(maxcolors=1 << 20)
        assert colors is None or len(colors) > 100  # text, tables and figures, not a blank page

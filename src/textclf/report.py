"""The run report: one self-contained HTML page of an evaluated run (``reports/report.html``).

``render_report`` takes what evaluate computed (metrics.json's summary, per_class.json, the
figures as PNG bytes, the most confident test errors, optionally each class's top features)
and returns the page as a string; it reads and writes nothing. Everything the page shows is
inside it, so it opens offline and from an MLflow artifact alike: the figures are inline
``data:image/png;base64`` images, the styles an inline ``<style>``, the fonts the browser's
own; it has no script and refers to no URL. Every text from the run (class names, tokens,
features, details) is HTML-escaped: the corpus is the user's, and a token ``<script>`` must
stay a word on the page.

Sections, each a ``<section id=...>``: metrics, per-class, confusion, curves, reliability,
top-features (only when given), errors.
"""

from __future__ import annotations

import base64
import html
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from textclf.metrics import (
    ACCURACY,
    ECE_CALIBRATED,
    ECE_UNCALIBRATED,
    F1_MACRO,
    LOSS,
    LOSS_CALIBRATED,
    PRECISION_MACRO,
    RECALL_MACRO,
    TEMPERATURE,
)

# metrics.json's keys, as the page names them (in this order; other keys follow by name).
METRIC_LABELS = {
    ACCURACY: "accuracy",
    F1_MACRO: "macro-F1",
    PRECISION_MACRO: "macro precision",
    RECALL_MACRO: "macro recall",
    LOSS: "cross-entropy",
    LOSS_CALIBRATED: "cross-entropy after T",
    ECE_UNCALIBRATED: "ECE before calibration",
    ECE_CALIBRATED: "ECE after calibration",
    TEMPERATURE: "temperature T (fitted on validation)",
    "num_test": "test documents",
    "macro_classes": "classes in the macro averages",
    "macro_excludes": "classes left out of the macro averages",
}
# The figures render_report places, by key: (section id, heading, what it shows).
FIGURES = {
    "confusion": ("confusion", "Confusion matrix", "Test documents per actual class (rows) and predicted class."),
    "curves": ("curves", "Learning curves", "Per epoch: the training and validation losses, validation scores."),
    "reliability": (
        "reliability",
        "Reliability",
        "Each bin of the top probability: its accuracy against its mean confidence, before and after the "
        "temperature; a calibrated model's points lie on the diagonal.",
    ),
}
TOKENS_SHOWN = 400  # of each error's document; the rest is counted, not shown
TOP_TOKENS = 10  # an error's tokens listed by contribution, above its text
# Token backgrounds: red where a token pushed towards the predicted class, blue where against.
POSITIVE_RGB, NEGATIVE_RGB = "220,38,38", "37,99,235"
MAX_ALPHA = 0.8  # the strongest token's background: dark text stays readable on it

STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 0 auto; max-width: 1100px;
  padding: 1em 1.5em 3em; color: #1f2328; line-height: 1.45; }
h1 { margin-bottom: 0.2em; } h2 { border-bottom: 1px solid #d0d7de; padding-bottom: 0.2em; margin-top: 1.8em; }
nav a { margin-right: 1em; } .muted { color: #59636e; }
dl.details { display: grid; grid-template-columns: max-content 1fr; gap: 0.1em 1em; }
dl.details dt { font-weight: 600; } dl.details dd { margin: 0; overflow-wrap: anywhere; }
table { border-collapse: collapse; margin: 0.5em 0; } th, td { padding: 0.25em 0.7em; border-bottom: 1px solid #eaeef2; }
th { text-align: left; background: #f6f8fa; } td.number { text-align: right; font-variant-numeric: tabular-nums; }
td.name { overflow-wrap: anywhere; max-width: 26em; }
.bar { display: inline-block; height: 0.7em; background: #3b82f6; vertical-align: middle; margin-right: 0.4em; }
.calibration { background: #f6f8fa; border-left: 4px solid #3b82f6; padding: 0.5em 1em; }
figure { margin: 0.5em 0; } figure img { max-width: 100%; height: auto; border: 1px solid #eaeef2; }
.features { display: grid; grid-template-columns: repeat(auto-fill, minmax(15em, 1fr)); gap: 0.8em; }
.features div { border: 1px solid #d0d7de; border-radius: 6px; padding: 0.4em 0.8em; }
.features h3 { font-size: 1em; margin: 0.2em 0; overflow-wrap: anywhere; }
.features ol { margin: 0; padding-left: 1.6em; } .features li { overflow-wrap: anywhere; }
.positive { color: rgb(185,28,28); } .negative { color: rgb(29,78,216); }
article.error { border: 1px solid #d0d7de; border-radius: 6px; padding: 0.5em 1em; margin: 0.8em 0; }
article.error h3 { font-size: 1em; margin: 0.2em 0; overflow-wrap: anywhere; font-weight: normal; }
p.tokens { overflow-wrap: anywhere; font-family: ui-monospace, SFMono-Regular, Menlo, monospace; font-size: 0.85em; }
span.token { border-radius: 3px; padding: 0 1px; }
"""


@dataclass(frozen=True)
class ErrorRecord:
    """One misclassified test document, as the errors section shows it."""

    document: int  # its position in the test split
    actual: str  # the true class's name
    predicted: str  # the predicted class's name
    confidence: float  # the predicted class's (calibrated) probability
    tokens: list[str]  # the document's tokens, as the model read them
    contributions: list[float] | None = None  # each token's contribution to the predicted class's logit
    method: str | None = None  # how the contributions were computed (None: no contributions)


def render_report(
    metrics: Mapping[str, object],
    per_class: Mapping[str, Mapping[str, float]],
    figures: Mapping[str, bytes | None],
    errors: Sequence[ErrorRecord],
    top_features: Mapping[str, Sequence[tuple[str, float]]] | None = None,
    details: Mapping[str, object] | None = None,
    title: str = "textclf run report",
) -> str:
    """The report page (HTML5, UTF-8).

    metrics       metrics.json's summary: test scores, ECE before and after, the temperature
    per_class     per_class.json: {class: {"precision", "recall", "f1", "support"}}, in label order
    figures       PNG bytes by FIGURES' keys ("confusion", "curves", "reliability"); a missing
                  or None one is named as missing
    errors        the test errors to show, most confident first
    top_features  {class: [(feature, weight), ...]}, strongest first: the bag and linear
                  models' features per class (None: the section is left out)
    details       what identifies the run (MLflow run id, corpus, model...), shown at the top
    """
    sections = [
        _metrics_section(metrics),
        _per_class_section(per_class),
        *(_figure_section(key, figures.get(key)) for key in FIGURES),
    ]
    if top_features is not None:
        sections.append(_features_section(top_features))
    sections.append(_errors_section(errors))
    links = [("metrics", "Metrics"), ("per-class", "Per class")]
    links += [(section, heading) for section, heading, _ in FIGURES.values()]
    if top_features is not None:
        links.append(("top-features", "Top features"))
    links.append(("errors", "Errors"))
    nav = " ".join(f'<a href="#{section}">{heading}</a>' for section, heading in links)
    header = f"<h1>{_text(title)}</h1>\n{_details(details or {})}\n<nav>{nav}</nav>"
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{_text(title)}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n<header>\n{header}\n</header>\n"
        + "\n".join(sections)
        + "\n</body>\n</html>\n"
    )


def _text(value: object) -> str:
    """Any value as escaped HTML text (quotes too: it may land in an attribute)."""
    return html.escape(str(value), quote=True)


def _number(value: object) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return _text(", ".join(map(str, value)) if isinstance(value, (list, tuple)) else value)
    return str(value) if isinstance(value, int) else f"{value:.4f}"


def _details(details: Mapping[str, object]) -> str:
    if not details:
        return ""
    rows = "".join(f"<dt>{_text(key)}</dt><dd>{_text(value)}</dd>" for key, value in details.items())
    return f'<dl class="details">{rows}</dl>'


def _metrics_section(metrics: Mapping[str, object]) -> str:
    keys = [key for key in METRIC_LABELS if key in metrics] + [key for key in metrics if key not in METRIC_LABELS]
    rows = "".join(
        f'<tr><th scope="row">{_text(METRIC_LABELS.get(key, key))}</th>'
        f'<td class="number">{_number(metrics[key])}</td></tr>'
        for key in keys
    )
    calibration = ""
    if all(key in metrics for key in (ECE_UNCALIBRATED, ECE_CALIBRATED, TEMPERATURE)):
        calibration = (
            '<p class="calibration">Expected calibration error on the test split: '
            f"<strong>{_number(metrics[ECE_UNCALIBRATED])}</strong> before calibration, "
            f"<strong>{_number(metrics[ECE_CALIBRATED])}</strong> after dividing the logits by "
            f"T = {_number(metrics[TEMPERATURE])} (fitted on the validation split).</p>"
        )
    return (
        f'<section id="metrics">\n<h2>Test metrics</h2>\n{calibration}\n'
        f"<table><tbody>{rows}</tbody></table>\n</section>"
    )


def _per_class_section(per_class: Mapping[str, Mapping[str, float]]) -> str:
    rows = []
    for name, row in per_class.items():
        f1 = float(row["f1"])
        bar = f'<span class="bar" style="width:{round(6 * f1, 3)}em"></span>'
        rows.append(
            f'<tr><td class="name">{_text(name)}</td><td class="number">{_number(float(row["precision"]))}</td>'
            f'<td class="number">{_number(float(row["recall"]))}</td><td class="number">{bar}{_number(f1)}</td>'
            f'<td class="number">{int(row["support"])}</td></tr>'
        )
    head = '<tr><th scope="col">class</th><th>precision</th><th>recall</th><th>F1</th><th>support</th></tr>'
    return (
        f'<section id="per-class">\n<h2>Per class</h2>\n'
        f"<table><thead>{head}</thead><tbody>{''.join(rows)}</tbody></table>\n</section>"
    )


def _figure_section(key: str, png: bytes | None) -> str:
    section, heading, caption = FIGURES[key]
    if png is None:
        body = f'<p class="muted">No {_text(heading.lower())} for this run.</p>'
    else:
        data = base64.b64encode(png).decode("ascii")
        body = (
            f'<figure><img src="data:image/png;base64,{data}" alt="{_text(heading)}">'
            f'<figcaption class="muted">{_text(caption)}</figcaption></figure>'
        )
    return f'<section id="{section}">\n<h2>{_text(heading)}</h2>\n{body}\n</section>'


def _signed(weight: float) -> str:
    return f"{weight:+.4f}"


def _features_section(top_features: Mapping[str, Sequence[tuple[str, float]]]) -> str:
    cards = []
    for name, features in top_features.items():
        items = "".join(
            f'<li><span class="{"positive" if weight >= 0 else "negative"}">{_signed(weight)}</span> '
            f"{_text(feature)}</li>"
            for feature, weight in features
        )
        cards.append(f"<div><h3>{_text(name)}</h3><ol>{items}</ol></div>")
    return (
        '<section id="top-features">\n<h2>Top features per class</h2>\n'
        '<p class="muted">The features whose weights raise each class\'s logit most.</p>\n'
        f'<div class="features">{"".join(cards)}</div>\n</section>'
    )


def _token_span(token: str, contribution: float, scale: float) -> str:
    """A token with its background: red (pushed towards the predicted class) or blue (against),
    the more opaque the larger |contribution| is against the document's largest (``scale``);
    the value in its title, shown on hover."""
    alpha = round(MAX_ALPHA * abs(contribution) / scale, 3) if scale > 0 else 0.0
    rgb = POSITIVE_RGB if contribution >= 0 else NEGATIVE_RGB
    return (
        f'<span class="token" style="background:rgba({rgb},{alpha})" title="{_signed(contribution)}">'
        f"{_text(token)}</span>"
    )


def _error_article(rank: int, error: ErrorRecord) -> str:
    tokens, contributions = error.tokens[:TOKENS_SHOWN], error.contributions
    hidden = len(error.tokens) - len(tokens)
    heading = (
        f"<h3>{rank}. document {error.document}: actual <strong>{_text(error.actual)}</strong>, predicted "
        f"<strong>{_text(error.predicted)}</strong> with probability {error.confidence:.3f}</h3>"
    )
    if contributions is None:
        strongest = '<p class="muted">The tokens as the model read them (no contributions computed).</p>'
        text = " ".join(_text(token) for token in tokens)
    else:
        scale = max((abs(value) for value in contributions), default=0.0)
        totals: dict[str, float] = {}  # a token's contributions summed over its occurrences
        for token, value in zip(error.tokens, contributions):
            totals[token] = totals.get(token, 0.0) + value
        ranked = sorted(totals.items(), key=lambda item: -item[1])[:TOP_TOKENS]
        listed = ", ".join(f"{_text(token)} ({_signed(total)})" for token, total in ranked if total > 0) or "none"
        method = f" ({_text(error.method)})" if error.method is not None else ""
        strongest = f"<p>Tokens that pushed most towards {_text(error.predicted)}{method}: {listed}</p>"
        text = " ".join(_token_span(token, value, scale) for token, value in zip(tokens, contributions))
    if hidden:
        text += f' <span class="muted">... ({hidden} more tokens)</span>'
    return f'<article class="error">{heading}{strongest}<p class="tokens">{text}</p></article>'


def _errors_section(errors: Sequence[ErrorRecord]) -> str:
    if not errors:
        body = '<p class="muted">No test document was misclassified.</p>'
    else:
        legend = ""
        if any(error.contributions is not None for error in errors):
            legend = (
                '<p class="muted">Each token\'s background: '
                f'<span class="token" style="background:rgba({POSITIVE_RGB},0.6)">red</span> where it pushed towards '
                f'the predicted class, <span class="token" style="background:rgba({NEGATIVE_RGB},0.6)">blue</span> '
                "where it pushed against it, stronger for a larger contribution (hover a token for its value).</p>"
            )
        body = legend + "\n" + "\n".join(_error_article(rank, error) for rank, error in enumerate(errors, 1))
    count = len(errors)
    heading = f"The {count} most confident test errors" if count else "Test errors"
    return f'<section id="errors">\n<h2>{heading}</h2>\n{body}\n</section>'

#!/usr/bin/env bash
# A small PNG screenshot of the run report, for the README:
#   scripts/report_screenshot.sh [REPORT] [PNG]   (defaults: reports/report.html, docs/report.png)
# The report is evaluate's (`dvc repro` on the 20 Newsgroups corpus writes reports/report.html).
# Headless Chromium draws its top 1200 x HEIGHT pixels (default 2400: the metrics, the table
# per class, the confusion heatmap) with every network request sent to a closed port, as a
# reader offline sees it; Pillow then halves it and keeps 128 colours, so the PNG stays small.
set -euo pipefail
cd "$(dirname "$0")/.."

report=${1:-reports/report.html}
png=${2:-docs/report.png}
height=${HEIGHT:-2400}
python=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
chromium=$(command -v chromium || command -v chromium-browser || command -v google-chrome) ||
    { echo "error: no chromium on PATH (apt-get install chromium)" >&2; exit 1; }
[ -f "$report" ] || { echo "error: $report not found (run \`dvc repro\`)" >&2; exit 1; }

shot=$(mktemp --suffix=.png)
trap 'rm -f "$shot"' EXIT
"$chromium" --headless=new --no-sandbox --disable-gpu --hide-scrollbars --proxy-server=127.0.0.1:9 \
    --window-size=1200,"$height" --virtual-time-budget=5000 --screenshot="$shot" \
    "file://$(realpath "$report")" >/dev/null 2>&1
[ -s "$shot" ] || { echo "error: chromium drew no screenshot of $report" >&2; exit 1; }
mkdir -p "$(dirname "$png")"
"$python" - "$shot" "$png" <<'PY'
import sys

from PIL import Image

with Image.open(sys.argv[1]) as image:
    small = image.convert("RGB").resize((image.width // 2, image.height // 2), Image.Resampling.LANCZOS)
    small.quantize(colors=128).save(sys.argv[2], optimize=True)
PY
echo "$png: $(du -k "$png" | cut -f1) KB"

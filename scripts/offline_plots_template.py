"""Writes plots/offline.html: DVC's plots page with vega, vega-lite and vega-embed inlined, so
`dvc plots show` renders without a network (DVC's own page loads them from a CDN).

    cd /tmp && npm pack vega@5.20.2 vega-lite@5.2.0 vega-embed@6.18.2   # DVC's versions (dvc_render)
    python scripts/offline_plots_template.py /tmp/vega-5.20.2.tgz /tmp/vega-lite-5.2.0.tgz /tmp/vega-embed-6.18.2.tgz

Each package's LICENSE goes to plots/licenses/<package>.LICENSE. .dvc/config names the template
(plots.html_template), so a plain `dvc plots show` uses it.
"""

from __future__ import annotations

import sys
import tarfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BUILDS = {"vega": "vega.min.js", "vega-lite": "vega-lite.min.js", "vega-embed": "vega-embed.min.js"}
# DVC's page (dvc_render.html.PAGE_HTML) with the scripts in place of its {scripts} placeholder.
PAGE = """<!DOCTYPE html>
<html>
<head>
    {{refresh_tag}}
    <meta charset="utf-8">
    <title>DVC Plot</title>
{scripts}
    <style>
        table {{
            border-spacing: 15px;
        }}
    </style>
</head>
<body>
    {{plot_divs}}
</body>
</html>
"""


def main(archives: list[str]) -> None:
    scripts = []
    for archive in archives:
        with tarfile.open(archive) as tar:
            manifest = tar.extractfile("package/package.json").read().decode()
            name = next(package for package in BUILDS if f'"name": "{package}"' in manifest)
            version = manifest.split('"version": "', 1)[1].split('"', 1)[0]
            build = tar.extractfile(f"package/build/{BUILDS[name]}").read().decode()
            license_text = tar.extractfile("package/LICENSE").read()
        for placeholder in ("{scripts}", "{plot_divs}", "{refresh_tag}", "</script"):
            if placeholder in build:
                raise SystemExit(f"{archive}: the build contains {placeholder!r}, which would break the page")
        (ROOT / "plots" / "licenses" / f"{name}.LICENSE").write_bytes(license_text)
        scripts.append(
            f"    <!-- {name}@{version} (BSD-3-Clause: plots/licenses/{name}.LICENSE) -->\n    <script>{build}</script>"
        )
    order = sorted(scripts, key=lambda script: list(BUILDS).index(script.split("<!-- ")[1].split("@")[0]))
    (ROOT / "plots" / "offline.html").write_text(PAGE.format(scripts="\n".join(order)), encoding="utf-8")


if __name__ == "__main__":
    main(sys.argv[1:])

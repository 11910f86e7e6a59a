"""Write ``.dvc/plots/offline.html``: the page template of ``dvc plots show`` with vega, vega-lite
and vega-embed inlined, so the charts draw without internet (a hospital network, an air-gapped
workstation, a CI runner).

    python src/plots_template.py     # maintainers only: the template is committed

DVC's own page loads the three scripts from a CDN; with ``plots.html_template`` set in
``.dvc/config`` (committed) it uses this template instead, and a template without a
``{scripts}`` placeholder gets no CDN tags. The versions are the ones dvc-render's page asks for,
so the specs DVC writes are the ones these scripts were made for. Each tarball comes from the npm
registry and is checked against its pinned sha512 before anything is taken from it; the licences
go into the page beside the code.
"""

from __future__ import annotations

import base64
import hashlib
import io
import sys
import tarfile
import urllib.request
from pathlib import Path

from dvc_render.html import PAGE_HTML

from pneumo.atomic import write_bytes

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / ".dvc" / "plots" / "offline.html"

# name, version, the tarball's sha512 as npm publishes it, the browser build inside the tarball
PACKAGES = [
    (
        "vega",
        "5.20.2",
        "qmH7aD9GGPpssVdxL1xgcdxTbQzyRUeRR16Os385ymvQhiwCYQNA6+eXUPAZDTVLfk0RXu6Jzj6kUE5jQ80EVw==",
        "build/vega.min.js",
    ),
    (
        "vega-lite",
        "5.2.0",
        "Yxcg8MvYfxHcG6BbkaKT0oVCIMIcE19UvqIsEwBmyd/7h2nzW7oRnID81T8UrY7hpDrIr6wa2JADOT2dhGNErw==",
        "build/vega-lite.min.js",
    ),
    (
        "vega-embed",
        "6.18.2",
        "wcDyQPE4J5aiCDc3/suH5RQDvrKkjuLkhzUcbOLwEkNF8/+pp17tS0JghzEvAPNRg+5aG1/N2ydixq8Lk3dOlg==",
        "build/vega-embed.min.js",
    ),
]
# what dvc-render substitutes in the template; inlined code must not contain them
PLACEHOLDERS = ("{plot_divs}", "{scripts}", "{refresh_tag}")


def fetch(name: str, version: str, sha512: str) -> bytes:
    """The package's npm tarball, refused unless it has the pinned digest."""
    url = f"https://registry.npmjs.org/{name}/-/{name}-{version}.tgz"
    with urllib.request.urlopen(url, timeout=60) as response:
        data = response.read()
    digest = base64.b64encode(hashlib.sha512(data).digest()).decode()
    if digest != sha512:
        sys.exit(f"plots_template: {url}: sha512 {digest} is not the pinned {sha512}")
    return data


def members(tarball: bytes, *names: str) -> list[str]:
    """The text of ``package/<name>`` for each name, from an npm tarball."""
    with tarfile.open(fileobj=io.BytesIO(tarball), mode="r:gz") as tar:
        return [tar.extractfile(f"package/{n}").read().decode("utf-8") for n in names]


def script_tag(name: str, version: str, code: str, licence: str) -> str:
    """One inline ``<script>`` with the package's licence in a comment before it."""
    if "</script" in code.lower():
        sys.exit(f"plots_template: {name} contains '</script' and cannot be inlined")
    if any(p in code for p in PLACEHOLDERS):
        sys.exit(f"plots_template: {name} contains a dvc-render placeholder {PLACEHOLDERS}")
    comment = licence.replace("--", "- -")
    return f"<!-- {name} {version}\n{comment}\n-->\n<script>\n{code}\n</script>"


def main() -> None:
    tags = []
    for name, version, sha512, build in PACKAGES:
        code, licence = members(fetch(name, version, sha512), build, "LICENSE")
        tags.append(script_tag(name, version, code, licence))
        print(f"{name} {version}: {len(code) / 1e3:.0f} kB", file=sys.stderr)
    # dvc-render's own page, with the scripts in place of its {scripts} (the CDN tags); the
    # charset, because the inlined code is UTF-8 and a file:// page has no header to say so
    page = PAGE_HTML.replace("{scripts}", '<meta charset="utf-8">\n' + "\n".join(tags))
    write_bytes(OUT, page.encode("utf-8"))
    print(f"wrote {OUT.relative_to(ROOT)}", file=sys.stderr)


if __name__ == "__main__":
    main()

"""The portal page as files: served by the admin listener with a strict CSP, packaged in the
wheel (an installed sidecar serves them), and written so the CSP can forbid inline code."""

from __future__ import annotations

import re
import subprocess
import sys
import zipfile
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from multidict import CIMultiDict

from sidecar.admin.portal import load_static
from tests.portal.conftest import StartPortal

ROOT = Path(__file__).parents[2]
STATIC = ROOT / "sidecar" / "admin" / "portal" / "static"


def fetch(portal: Any, path: str, **headers: str) -> tuple[int, CIMultiDict[str], bytes]:
    async def go() -> tuple[int, CIMultiDict[str], bytes]:
        async with (
            aiohttp.ClientSession() as http,
            http.get(portal.admin_url + path, headers=headers, allow_redirects=False) as answer,
        ):
            return answer.status, CIMultiDict(answer.headers), await answer.read()

    result: tuple[int, CIMultiDict[str], bytes] = portal.loop.run(go())
    return result


def test_the_page_is_served_with_strict_security_headers(start_portal: StartPortal) -> None:
    portal = start_portal()
    status, headers, body = fetch(portal, "/admin/")
    assert status == 200
    assert headers["Content-Type"] == "text/html; charset=utf-8"
    assert b'<script type="module" src="static/js/main.js">' in body
    csp = headers["Content-Security-Policy"]
    assert csp == (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
        "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    )
    assert "unsafe" not in csp
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert headers["Referrer-Policy"] == "no-referrer"
    assert headers["X-Frame-Options"] == "DENY"
    assert headers["Cross-Origin-Opener-Policy"] == "same-origin"
    assert "X-Correlation-ID" in headers
    for name, kind in (("js/main.js", "text/javascript"), ("app.css", "text/css")):
        status, headers, body = fetch(portal, f"/admin/static/{name}")
        assert status == 200 and headers["Content-Type"].startswith(kind)
        assert body == (STATIC / name).read_bytes()
        assert headers["Content-Security-Policy"] == csp
        etag = headers["ETag"]
        again, _, empty = fetch(portal, f"/admin/static/{name}", **{"If-None-Match": etag})
        assert again == 304 and empty == b""


def test_unknown_files_are_404_problems_and_no_path_is_resolved(start_portal: StartPortal) -> None:
    portal = start_portal()
    for path in (
        "/admin/static/nope.js",
        "/admin/static/../__init__.py",
        "/admin/static/%2e%2e/x",
        "/admin/static/js/../../__init__.py",
    ):
        status, headers, _ = fetch(portal, path)
        assert status == 404, path
        assert headers["Content-Type"] == "application/problem+json"
    status, headers, _ = fetch(portal, "/admin")
    assert status == 302 and headers["Location"] == "/admin/"


def test_frame_ancestors_come_from_the_config(start_portal: StartPortal) -> None:
    portal = start_portal(portal={"frame_ancestors": ["self", "https://app.example.com"]})
    _, headers, _ = fetch(portal, "/admin/")
    assert headers["Content-Security-Policy"].endswith(
        "frame-ancestors 'self' https://app.example.com"
    )
    assert "X-Frame-Options" not in headers


class InlineFinder(HTMLParser):
    """Collects what a strict CSP would block: inline scripts, styles and handlers."""

    def __init__(self) -> None:
        super().__init__()
        self.inline: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        names = {name for name, _ in attrs}
        if tag == "script" and "src" not in names:
            self.inline.append("inline <script>")
        if tag == "style":
            self.inline.append("<style>")
        self.inline += [f"{tag} {n}=" for n in names if n == "style" or n.startswith("on")]


def test_the_page_has_no_inline_code_and_never_writes_html() -> None:
    finder = InlineFinder()
    finder.feed((STATIC / "index.html").read_text())
    assert finder.inline == []
    html = (STATIC / "index.html").read_text()
    assert "http://" not in html and "//cdn" not in html
    forbidden = re.compile(
        r"innerHTML|outerHTML|insertAdjacentHTML|document\.write|eval\(|new Function"
    )
    for path in STATIC.rglob("*.js"):
        text = path.read_text()
        assert not forbidden.search(text), path
        assert not re.search(r"""import .* from ["']https?:""", text), path
        assert ".style." not in text and 'setAttribute("style"' not in text, path
    assert "@import" not in (STATIC / "app.css").read_text()


def test_every_static_file_is_loaded() -> None:
    files = load_static()
    on_disk = {p.relative_to(STATIC).as_posix() for p in STATIC.rglob("*") if p.is_file()}
    assert set(files) == on_disk
    assert files["index.html"].content_type == "text/html; charset=utf-8"


@pytest.mark.timeout(120)
def test_the_wheel_carries_the_page_and_an_installed_sidecar_serves_it(tmp_path: Path) -> None:
    build = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path / "dist"),
            str(ROOT),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    if build.returncode != 0 and "hatchling" in build.stderr:  # no local hatchling: isolate
        build = subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "wheel",
                "--no-deps",
                "-q",
                "-w",
                str(tmp_path / "dist"),
                str(ROOT),
            ],
            capture_output=True,
            text=True,
            check=False,
        )
    assert build.returncode == 0, build.stderr
    wheel = next((tmp_path / "dist").glob("sidecar-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    for path in STATIC.rglob("*"):
        if path.is_file():
            assert f"sidecar/admin/portal/static/{path.relative_to(STATIC).as_posix()}" in names
    target = tmp_path / "installed"
    install = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--no-deps",
            "-q",
            "--target",
            str(target),
            str(wheel),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert install.returncode == 0, install.stderr
    probe = (
        "import sidecar, sidecar.admin.portal as p; "
        f"assert sidecar.__file__.startswith({str(target)!r}), sidecar.__file__; "
        "files = p.load_static(); print(sorted(files)); "
        "assert b'main.js' in files['index.html'].body"
    )
    ran = subprocess.run(
        [sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        check=False,
        cwd=tmp_path,
        env={"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin"},
    )
    assert ran.returncode == 0, ran.stderr
    assert "js/api.js" in ran.stdout

"""Downloader and safe extraction, against a loopback HTTP server started by the test."""

from __future__ import annotations

import hashlib
import io
import os
import re
import tarfile
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from sparseyolo.utils.downloads import cache_dir, download, safe_extract, sha256sum
from sparseyolo.utils.errors import DownloadError

PAYLOAD = os.urandom(300_000) + b"end"
SHA = hashlib.sha256(PAYLOAD).hexdigest()


class _Handler(BaseHTTPRequestHandler):
    """Serves PAYLOAD under several misbehaviours chosen by the path."""

    log: list[tuple[str, str | None]] = []  # (path, Range header) of every request
    flaky_calls = 0

    def log_message(self, *args):  # keep pytest output clean
        pass

    def _send(self, status: int, body: bytes, length: int | None = None, extra: dict | None = None):
        self.send_response(status)
        self.send_header("Content-Length", str(len(body) if length is None else length))
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)
        self.wfile.flush()

    def _ranged(self):
        rng = self.headers.get("Range")
        m = re.fullmatch(r"bytes=(\d+)-", rng or "")
        if m:
            start = int(m.group(1))
            if start >= len(PAYLOAD):
                self._send(416, b"", extra={"Content-Range": f"bytes */{len(PAYLOAD)}"})
                return
            self._send(
                206, PAYLOAD[start:], extra={"Content-Range": f"bytes {start}-{len(PAYLOAD) - 1}/{len(PAYLOAD)}"}
            )
        else:
            self._send(200, PAYLOAD)

    def do_GET(self):
        type(self).log.append((self.path, self.headers.get("Range")))
        if self.path == "/file.bin":
            self._ranged()
        elif self.path == "/norange.bin":  # ignores Range: always the whole file
            self._send(200, PAYLOAD)
        elif self.path == "/truncated.bin":  # promises more than it sends, then hangs up
            self._send(200, PAYLOAD[:1000], length=len(PAYLOAD))
            self.close_connection = True
        elif self.path == "/flaky.bin":  # first request truncated, later ones honour Range
            type(self).flaky_calls += 1
            if type(self).flaky_calls == 1:
                self._send(200, PAYLOAD[:120_000], length=len(PAYLOAD))
                self.close_connection = True
            else:
                self._ranged()
        elif self.path.startswith("/files/"):
            data = (self.server.root / self.path[len("/files/") :]).read_bytes()
            self._send(200, data)
        else:
            self._send(404, b"not found")


@pytest.fixture()
def server(tmp_path):
    _Handler.log = []
    _Handler.flaky_calls = 0
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.root = tmp_path / "served"
    httpd.root.mkdir()
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield httpd, f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def test_normal_download_with_checksum(server, tmp_path):
    _, base = server
    dest = download(f"{base}/file.bin", tmp_path / "out" / "file.bin", sha256=SHA, progress=False)
    assert dest.read_bytes() == PAYLOAD
    assert not (tmp_path / "out" / "file.bin.part").exists()
    # a second call reuses the verified file without another request
    n = len(_Handler.log)
    download(f"{base}/file.bin", dest, sha256=SHA, progress=False)
    assert len(_Handler.log) == n


def test_truncated_transfer_keeps_part(server, tmp_path):
    _, base = server
    dest = tmp_path / "t.bin"
    with pytest.raises(DownloadError, match=r"cut short: got 1000 of 300003 bytes"):
        download(f"{base}/truncated.bin", dest, progress=False)
    assert not dest.exists()
    assert (tmp_path / "t.bin.part").read_bytes() == PAYLOAD[:1000]


def test_resume_with_range(server, tmp_path):
    _, base = server
    dest = tmp_path / "r.bin"
    (tmp_path / "r.bin.part").write_bytes(PAYLOAD[:50_000])
    download(f"{base}/file.bin", dest, sha256=SHA, progress=False)
    assert dest.read_bytes() == PAYLOAD
    assert _Handler.log[-1] == ("/file.bin", "bytes=50000-")


def test_truncated_then_resumed(server, tmp_path):
    _, base = server
    dest = tmp_path / "f.bin"
    with pytest.raises(DownloadError, match="run again to resume"):
        download(f"{base}/flaky.bin", dest, sha256=SHA, progress=False)
    assert (tmp_path / "f.bin.part").stat().st_size == 120_000
    download(f"{base}/flaky.bin", dest, sha256=SHA, progress=False)
    assert dest.read_bytes() == PAYLOAD
    assert _Handler.log[-1] == ("/flaky.bin", "bytes=120000-")


def test_server_ignoring_range_restarts(server, tmp_path):
    _, base = server
    dest = tmp_path / "n.bin"
    (tmp_path / "n.bin.part").write_bytes(b"x" * 777)  # junk that must not be kept
    download(f"{base}/norange.bin", dest, sha256=SHA, progress=False)
    assert dest.read_bytes() == PAYLOAD


def test_complete_part_finalised_on_416(server, tmp_path):
    _, base = server
    dest = tmp_path / "c.bin"
    (tmp_path / "c.bin.part").write_bytes(PAYLOAD)
    download(f"{base}/file.bin", dest, sha256=SHA, progress=False)
    assert dest.read_bytes() == PAYLOAD


def test_wrong_checksum_removes_file(server, tmp_path):
    _, base = server
    dest = tmp_path / "w.bin"
    wrong = "0" * 64
    with pytest.raises(DownloadError) as e:
        download(f"{base}/file.bin", dest, sha256=wrong, progress=False)
    msg = str(e.value)
    assert f"{base}/file.bin" in msg and wrong in msg and SHA in msg
    assert not dest.exists() and not (tmp_path / "w.bin.part").exists()


def test_http_error_names_url(server, tmp_path):
    _, base = server
    with pytest.raises(DownloadError, match=r"missing\.bin.*HTTP 404"):
        download(f"{base}/missing.bin", tmp_path / "m.bin", progress=False)


def _tar_with(path: Path, members: list[tuple[tarfile.TarInfo, bytes | None]]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def _file_member(name: str, data: bytes) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return info, data


def test_downloaded_tar_with_parent_member_is_refused(server, tmp_path):
    httpd, base = server
    _tar_with(httpd.root / "evil.tar.gz", [_file_member("ok.txt", b"fine"), _file_member("../evil", b"pwn")])
    archive = download(f"{base}/files/evil.tar.gz", tmp_path / "evil.tar.gz", progress=False)
    out = tmp_path / "out"
    with pytest.raises(DownloadError, match=r"\.\./evil"):
        safe_extract(archive, out, progress=False)
    assert not (tmp_path / "evil").exists()
    assert not (out / "ok.txt").exists()  # nothing is written before every member is checked


def test_tar_absolute_and_link_escapes_are_refused(tmp_path):
    a = _tar_with(tmp_path / "abs.tar", [_file_member("/etc/evil", b"x")])
    with pytest.raises(DownloadError, match="absolute"):
        safe_extract(a, tmp_path / "o1", progress=False)

    link = tarfile.TarInfo("inner/link")
    link.type, link.linkname = tarfile.SYMTYPE, "../../outside"
    b = _tar_with(tmp_path / "sym.tar", [(link, None)])
    with pytest.raises(DownloadError, match="inner/link"):
        safe_extract(b, tmp_path / "o2", progress=False)

    hard = tarfile.TarInfo("hard")
    hard.type, hard.linkname = tarfile.LNKTYPE, "../victim"
    c = _tar_with(tmp_path / "hard.tar", [(hard, None)])
    with pytest.raises(DownloadError, match="'hard'"):
        safe_extract(c, tmp_path / "o3", progress=False)


def test_good_tar_and_zip_extract(tmp_path):
    inner = tarfile.TarInfo("d/link")
    inner.type, inner.linkname = tarfile.SYMTYPE, "a.txt"  # stays inside: allowed
    t = _tar_with(tmp_path / "good.tar.gz", [_file_member("d/a.txt", b"alpha"), (inner, None)])
    out = safe_extract(t, tmp_path / "tout", progress=False)
    assert (out / "d" / "a.txt").read_bytes() == b"alpha"
    assert (out / "d" / "link").read_bytes() == b"alpha"

    z = tmp_path / "good.zip"
    with zipfile.ZipFile(z, "w") as zf:
        zf.writestr("x/y.txt", "why")
    assert (safe_extract(z, tmp_path / "zout", progress=False) / "x" / "y.txt").read_text() == "why"

    bad = tmp_path / "bad.zip"
    with zipfile.ZipFile(bad, "w") as zf:
        zf.writestr("../up.txt", "no")
    with pytest.raises(DownloadError, match=r"\.\./up\.txt"):
        safe_extract(bad, tmp_path / "zbad", progress=False)
    assert not (tmp_path / "up.txt").exists()


def test_cache_dir_env(monkeypatch, tmp_path):
    monkeypatch.setenv("SPARSEYOLO_CACHE", str(tmp_path / "c"))
    assert cache_dir() == tmp_path / "c"
    monkeypatch.delenv("SPARSEYOLO_CACHE")
    assert cache_dir() == Path.home() / ".cache" / "sparseyolo"


def test_sha256sum(tmp_path):
    p = tmp_path / "p"
    p.write_bytes(PAYLOAD)
    assert sha256sum(p) == SHA

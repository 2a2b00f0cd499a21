"""Resumable, checksummed downloads and archive extraction that cannot escape its folder.

``download`` streams into ``dest.part`` and resumes an interrupted transfer with an HTTP Range
request; the file only appears under its final name once it is complete (and, when a sha256 is
given, verified). ``safe_extract`` unpacks tar (any compression) and zip archives after checking
every member, so a hostile archive cannot write outside the destination.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import re
import stat
import tarfile
import urllib.error
import urllib.request
import zipfile
from pathlib import Path, PurePosixPath

from sparseyolo.utils.errors import DownloadError
from sparseyolo.utils.logging import LOGGER

CHUNK = 1 << 20  # 1 MiB: large enough for throughput, small enough for a smooth progress bar
USER_AGENT = "sparseyolo-downloader"


def cache_dir() -> Path:
    """The download cache: ``$SPARSEYOLO_CACHE`` or ``~/.cache/sparseyolo``."""
    env = os.environ.get("SPARSEYOLO_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "sparseyolo"


def sha256sum(path: str | os.PathLike, chunk: int = CHUNK) -> str:
    """Hex sha256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _part_path(dest: Path) -> Path:
    return dest.with_name(dest.name + ".part")


def _open(url: str, offset: int, timeout: float):
    """Open ``url``, asking for the bytes from ``offset`` on when resuming."""
    headers = {"User-Agent": USER_AGENT}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    return urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)


def _content_range_total(value: str | None) -> int | None:
    """Total size from a ``Content-Range: bytes a-b/total`` (or ``bytes */total``) header."""
    m = re.match(r"bytes\s+(?:\d+-\d+|\*)/(\d+)", value or "")
    return int(m.group(1)) if m else None


def _content_range_start(value: str | None) -> int | None:
    m = re.match(r"bytes\s+(\d+)-\d+/", value or "")
    return int(m.group(1)) if m else None


def _stream(url: str, part: Path, progress: bool, timeout: float) -> None:
    """Fetch ``url`` into ``part``, appending when the server honours a Range request."""
    from tqdm import tqdm

    offset = part.stat().st_size if part.exists() else 0
    try:
        resp = _open(url, offset, timeout)
    except urllib.error.HTTPError as e:
        if e.code == 416 and offset:
            # Range not satisfiable: either the .part is already complete or it is junk.
            total = _content_range_total(e.headers.get("Content-Range"))
            if total == offset:
                return
            LOGGER.warning(f"{url}: server refused to resume at byte {offset}; restarting")
            part.unlink()
            return _stream(url, part, progress, timeout)
        raise DownloadError(f"download of {url} failed: HTTP {e.code} {e.reason}") from None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
        reason = getattr(e, "reason", e)
        raise DownloadError(f"download of {url} failed: {reason}") from None

    with resp:
        status = getattr(resp, "status", 200)
        length = resp.headers.get("Content-Length")
        length = int(length) if length is not None and length.isdigit() else None
        if offset and status == 206 and _content_range_start(resp.headers.get("Content-Range")) == offset:
            mode = "ab"
            total = _content_range_total(resp.headers.get("Content-Range"))
            if total is None and length is not None:
                total = offset + length
        elif offset and status == 206:
            # a partial response for some other range: unusable, start over without Range
            LOGGER.warning(f"{url}: server answered the Range request with another range; restarting")
            resp.close()
            part.unlink()
            return _stream(url, part, progress, timeout)
        else:
            if offset:
                LOGGER.info(f"{url}: server ignored the Range request; restarting from byte 0")
            offset, mode, total = 0, "wb", length

        written = offset
        with (
            open(part, mode) as f,
            tqdm(
                total=total,
                initial=offset,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                desc=part.name[:-5],
                disable=not progress,
                leave=False,
            ) as bar,
        ):
            try:
                while block := resp.read(CHUNK):
                    f.write(block)
                    written += len(block)
                    bar.update(len(block))
            except (TimeoutError, OSError, http.client.HTTPException) as e:
                # keep what arrived: the next call resumes from here
                raise DownloadError(
                    f"download of {url} interrupted after {written} bytes ({e}); "
                    f"partial data kept in {part}, run again to resume"
                ) from None
    if total is not None and written < total:
        raise DownloadError(
            f"download of {url} was cut short: got {written} of {total} bytes; "
            f"partial data kept in {part}, run again to resume"
        )


def download(
    url: str, dest: str | os.PathLike, sha256: str | None = None, progress: bool = True, timeout: float = 30.0
) -> Path:
    """Download ``url`` to ``dest`` and return ``dest``.

    An existing ``dest`` is reused when it matches ``sha256`` (or when no hash is given; downloading
    without a hash logs a warning that the file is not verified). Data is
    streamed into ``dest.part`` and a later call resumes it with an HTTP Range request (servers that
    ignore Range are handled by restarting). Raises :class:`DownloadError` for HTTP / network
    errors, a truncated transfer (the ``.part`` is kept) or a checksum mismatch (the file is removed).
    """
    dest = Path(dest)
    sha256 = sha256.lower() if sha256 else None
    if dest.is_file():
        if sha256 is None or sha256sum(dest) == sha256:
            return dest
        LOGGER.warning(f"{dest} does not match its sha256; downloading it again")
        dest.unlink()
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = _part_path(dest)
    LOGGER.info(f"Downloading {url} to {dest}")
    if sha256 is None:
        LOGGER.warning(f"{url}: no sha256 is pinned for this file, so the download is not verified")
    _stream(url, part, progress, timeout)
    if sha256 is not None:
        actual = sha256sum(part)
        if actual != sha256:
            part.unlink()
            raise DownloadError(
                f"checksum mismatch for {url}: expected sha256 {sha256}, got {actual}; "
                f"the downloaded file was removed"
            )
    os.replace(part, dest)
    return dest


# ---------------------------------------------------------------------------------------------
# extraction


def _inside(root: Path, target: Path) -> bool:
    """True when ``target`` (already normalised) is ``root`` or below it."""
    return target == root or root in target.parents


def _check_name(archive: Path, name: str) -> PurePosixPath:
    """Refuse absolute member names and ``..`` components; return the normalised relative path."""
    norm = name.replace("\\", "/")
    p = PurePosixPath(norm)
    if norm.startswith("/") or re.match(r"^[A-Za-z]:", norm):
        raise DownloadError(f"{archive}: refusing member {name!r} with an absolute path")
    if ".." in p.parts:
        raise DownloadError(f"{archive}: refusing member {name!r} with a '..' component")
    return p


def _key(path: PurePosixPath) -> str:
    """Comparison key of a member path: case-folded, as macOS and Windows file systems compare names."""
    return str(path).casefold()


def _is_link(m: tarfile.TarInfo) -> bool:
    return m.issym() or m.islnk()


def _walk_link(archive: Path, m: tarfile.TarInfo, rel: PurePosixPath, links: dict[str, str]) -> None:
    """Follow a link's target one component at a time, as the file system would, and refuse it when
    it leaves the destination or passes through another link of the archive.

    Text normalisation alone is not enough: with ``a -> .`` in the archive, ``b -> a/..`` looks like
    ``b -> .`` but the system resolves it to the parent of the destination. Refusing every step through
    a link keeps our answer the same as the file system's, on every Python version.
    """
    link = m.linkname.replace("\\", "/")
    if link.startswith("/") or re.match(r"^[A-Za-z]:", link):
        raise DownloadError(f"{archive}: refusing link {m.name!r} -> {m.linkname!r} (absolute target)")
    # symlink targets are relative to the link's folder, hardlink targets to the archive root
    here = list(rel.parent.parts) if m.issym() else []
    for part in PurePosixPath(link).parts:
        if part == ".":
            continue
        if part == "..":
            if not here:
                raise DownloadError(
                    f"{archive}: refusing link {m.name!r} -> {m.linkname!r} " f"pointing outside the destination"
                )
            here.pop()
            continue
        here.append(part)
        via = links.get(_key(PurePosixPath(*here)))
        if via is not None:
            raise DownloadError(
                f"{archive}: refusing link {m.name!r} -> {m.linkname!r}: its target passes "
                f"through the link {via!r} of the same archive"
            )


def _check_tar(archive: Path, root: Path, tar: tarfile.TarFile) -> list[tarfile.TarInfo]:
    """Check every member before anything is written.

    Links may only point at plain paths inside the destination: no member may sit below a link of
    the archive, no link target may pass through one, and no member may share a link's name. That
    stops chains such as ``a -> .``, ``a/b -> ..``, ``b/x`` by our own checks, without relying on
    tarfile's ``filter="data"``, which Python 3.10 before 3.10.12 (and 3.11 before 3.11.4) lacks.
    """
    members = tar.getmembers()
    checked: list[tuple[tarfile.TarInfo, PurePosixPath]] = []
    names: dict[str, tarfile.TarInfo] = {}
    for m in members:
        rel = _check_name(archive, m.name)
        if not (m.isfile() or m.isdir() or _is_link(m)):
            raise DownloadError(f"{archive}: refusing special member {m.name!r} (device or fifo)")
        if rel == PurePosixPath(".") and not m.isdir():
            raise DownloadError(f"{archive}: refusing member {m.name!r}: it would replace the destination itself")
        twin = names.get(_key(rel))
        if twin is not None and (_is_link(m) or _is_link(twin)):
            # the second member would be written through the link, or replace what others rely on
            raise DownloadError(f"{archive}: refusing member {m.name!r}: the archive holds a link of the same name")
        names[_key(rel)] = m
        checked.append((m, rel))
    links = {key: m.name for key, m in names.items() if _is_link(m)}  # comparison key -> name as written
    for m, rel in checked:
        for parent in rel.parents:
            via = links.get(_key(parent))
            if via is not None:
                raise DownloadError(
                    f"{archive}: refusing member {m.name!r}: its path passes through the "
                    f"link {via!r} of the same archive"
                )
        if _is_link(m):
            _walk_link(archive, m, rel, links)
            # a link already on disk (left by an earlier archive, say) could still redirect the target
            base = root / rel.parent if m.issym() else root
            target = Path(os.path.realpath(base / m.linkname.replace("\\", "/")))
            if not _inside(root, target):
                raise DownloadError(
                    f"{archive}: refusing link {m.name!r} -> {m.linkname!r} " f"pointing outside {root}"
                )
    return members


def _check_zip(archive: Path, zf: zipfile.ZipFile) -> list[zipfile.ZipInfo]:
    infos = zf.infolist()
    for info in infos:
        _check_name(archive, info.filename)
        if stat.S_ISLNK(info.external_attr >> 16):
            # zipfile would write the link target as a plain file; refuse rather than surprise
            raise DownloadError(f"{archive}: refusing symlink member {info.filename!r}")
    return infos


def safe_extract(archive: str | os.PathLike, dest: str | os.PathLike, progress: bool = True) -> Path:
    """Extract a tar (gz/bz2/xz/none) or zip ``archive`` into ``dest`` and return ``dest``.

    Every member is checked before anything is written: absolute paths, ``..`` components, links
    pointing outside ``dest``, members below a link and links through links raise
    :class:`DownloadError` naming the member. The checks are ours, so they hold on every supported
    Python; tarfile's ``filter="data"`` (where it exists) is a second line of defence.
    """
    from tqdm import tqdm

    archive, dest = Path(archive), Path(dest)
    if not archive.is_file():
        raise DownloadError(f"archive not found: {archive}")
    dest.mkdir(parents=True, exist_ok=True)
    root = Path(os.path.realpath(dest))
    desc = f"Extracting {archive.name}"
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zf:
            for info in tqdm(_check_zip(archive, zf), desc=desc, disable=not progress, leave=False):
                zf.extract(info, root)
    elif tarfile.is_tarfile(archive):
        try:
            # the "data" filter (Python >= 3.11.4) is a second line of defence behind our checks
            extract_kw = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
            with tarfile.open(archive, "r:*") as tar:
                members = _check_tar(archive, root, tar)
                for m in tqdm(members, desc=desc, disable=not progress, leave=False):
                    tar.extract(m, root, **extract_kw)
        except (tarfile.TarError, EOFError) as e:
            raise DownloadError(f"{archive}: corrupt or truncated archive ({e})") from None
    else:
        raise DownloadError(f"{archive}: not a tar or zip archive")
    return dest


def remove_partial(dest: str | os.PathLike) -> None:
    """Delete the ``.part`` file of ``dest`` if there is one (e.g. to force a fresh download)."""
    part = _part_path(Path(dest))
    if part.exists():
        part.unlink()


__all__ = ["cache_dir", "download", "safe_extract", "sha256sum", "remove_partial"]

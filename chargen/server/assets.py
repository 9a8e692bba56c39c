"""The web page's one JavaScript library, abcjs (sheet music and playback, MIT licence): fetched
from the npm registry at a pinned version, checked against its published integrity hash, and
cached; never copied into this repository.

``abcjs_file`` gives the cached file, fetching it first when asked to; without the network (or
with a tarball that fails its check) there is none, and the page says so and shows tunes as ABC
text. The registry is ``$CHARGEN_NPM_REGISTRY``, else ``$npm_config_registry``, else npm's.
"""

from __future__ import annotations

import base64
import hashlib
import io
import os
import tarfile
import urllib.request
from pathlib import Path

from chargen.files import write_atomic

ABCJS_VERSION = "6.7.2"
ABCJS_INTEGRITY = (
    "sha512-"
    "cHCyf8j0hAcxTuwZ9l2QznaSlLK1TD2s5oVw6Ig8Kfss6VfJKoNJ1kAzMBwa6DDWeyNl2JH7mN/U+MJ8MYbC5g=="
)
"""The ``dist.integrity`` the npm registry publishes for abcjs 6.7.2 (``npm view abcjs@6.7.2
dist.integrity``): the tarball's SHA-512, which a download must match."""
ABCJS_MEMBER = "package/dist/abcjs-basic-min.js"
"""The browser build in the tarball: rendering and the synthesiser, no editor."""
TARBALL_LIMIT = 16 << 20  # bytes: the 6.7.2 tarball is about 2 MB


class AssetError(Exception):
    """The library could not be had: no network, or a download that failed its check."""


def registry() -> str:
    npm = os.environ.get("npm_config_registry")  # noqa: SIM112 (npm spells it in lower case)
    url = os.environ.get("CHARGEN_NPM_REGISTRY") or npm
    return (url or "https://registry.npmjs.org").rstrip("/")


def abcjs_file(cache: Path, fetch: bool = True, timeout: float = 30.0) -> Path:
    """The cached abcjs file, fetched (and checked) first if it is not there and ``fetch``."""
    path = cache / f"abcjs-{ABCJS_VERSION}" / "abcjs-basic-min.js"
    if path.is_file():
        return path
    if not fetch:
        raise AssetError("abcjs is not cached and fetching was not asked for")
    tarball = _download(f"{registry()}/abcjs/-/abcjs-{ABCJS_VERSION}.tgz", timeout)
    check_integrity(tarball, ABCJS_INTEGRITY)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, _member(tarball, ABCJS_MEMBER))
    return path


def check_integrity(data: bytes, integrity: str) -> None:
    """``data`` has the Subresource Integrity hash ``integrity`` (``sha512-<base64>``)."""
    algorithm, _, expected = integrity.partition("-")
    digest = base64.b64encode(hashlib.new(algorithm, data).digest()).decode()
    if digest != expected:
        raise AssetError(f"the download does not match its {algorithm} integrity hash")


def _download(url: str, timeout: float) -> bytes:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 (https)
            data = response.read(TARBALL_LIMIT + 1)
    except (OSError, ValueError) as exc:
        raise AssetError(f"cannot fetch {url}: {exc}") from None
    if len(data) > TARBALL_LIMIT:
        raise AssetError(f"{url} is larger than {TARBALL_LIMIT:,} bytes")
    return data


def _member(tarball: bytes, name: str) -> bytes:
    try:
        with tarfile.open(fileobj=io.BytesIO(tarball), mode="r:gz") as archive:
            member = archive.extractfile(name)
            if member is None:
                raise KeyError(name)
            return member.read()
    except (tarfile.TarError, KeyError, OSError) as exc:
        raise AssetError(f"the tarball has no {name} ({exc})") from None

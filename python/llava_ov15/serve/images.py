"""`image_url` values of chat requests -> decoded PIL images, or a one-line `RequestError`.

Accepted: `data:image/...;base64,...` URIs, and local files (a plain absolute path or a
`file://` URL) that resolve inside one of the server's `--image-root` directories. Network
URLs are refused, never fetched: the server must not become a proxy into its own network.
"""

from __future__ import annotations

import base64
import binascii
import io
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import unquote, urlsplit

from PIL import Image, ImageOps

from .errors import RequestError

MAX_IMAGE_BYTES = 32 << 20  # encoded size of one image (data: payload or file)


def _decode(data: bytes, what: str) -> Image.Image:
    """Fully decode (a truncated file fails here, not later) and turn upright."""
    # Pillow itself refuses images over twice its limit while reading the header; between one
    # and two times it only warns, so the limit is checked here as well.
    limit = Image.MAX_IMAGE_PIXELS
    try:
        with Image.open(io.BytesIO(data)) as im:
            if limit is not None and im.width * im.height > limit:
                raise RequestError(f"{what}: {im.width}x{im.height} pixels is over the limit of "
                                   f"{limit} (possible decompression bomb)", code="image_too_large")
            im.load()
            return ImageOps.exif_transpose(im)
    except Image.DecompressionBombError as e:
        raise RequestError(f"{what}: {e}", code="image_too_large") from None
    except Image.UnidentifiedImageError:
        raise RequestError(f"{what}: not an image (unrecognised format)",
                           code="invalid_image") from None
    except (OSError, SyntaxError, ValueError) as e:
        # Pillow reports truncated/corrupt data as OSError (sometimes SyntaxError/ValueError).
        raise RequestError(f"{what}: cannot decode the image, truncated or damaged ({e})",
                           code="invalid_image") from None


def _from_data_uri(url: str, what: str) -> bytes:
    head, sep, payload = url.partition(",")
    if not sep or not head.endswith(";base64"):
        raise RequestError(f"{what}: a data: URI must be data:image/...;base64,<data>",
                           code="invalid_image_url")
    if len(payload) > MAX_IMAGE_BYTES * 4 // 3 + 4:
        raise RequestError(f"{what}: image over {MAX_IMAGE_BYTES >> 20} MiB",
                           code="image_too_large")
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise RequestError(f"{what}: invalid base64 in the data: URI",
                           code="invalid_image_url") from None


def _local_path(url: str, what: str) -> Path:
    if url.startswith("file:"):
        parts = urlsplit(url)
        if parts.netloc not in ("", "localhost"):
            raise RequestError(f"{what}: file URL on another host ({parts.netloc}) refused",
                               code="image_url_not_allowed")
        return Path(unquote(parts.path))
    return Path(url)


def _allowed(path: Path, roots: Sequence[Path], what: str) -> Path:
    if not roots:
        raise RequestError(f"{what}: local image paths are disabled (start the server with "
                           "--image-root DIR to allow files under DIR)",
                           code="image_url_not_allowed")
    if not path.is_absolute():
        raise RequestError(f"{what}: a local image path must be absolute",
                           code="image_url_not_allowed")
    # Resolve symlinks and `..` first, so neither can lead out of an allowed directory.
    real = path.resolve()
    if not any(real.is_relative_to(root) for root in roots):
        raise RequestError(f"{what}: {path} is outside the allowed image roots",
                           code="image_url_not_allowed")
    return real


def load_image_url(url: str, roots: Sequence[Path], what: str = "image_url") -> Image.Image:
    """One `image_url.url` -> image. `roots` must be resolved absolute directories."""
    try:
        return _load(url, roots, what)
    except RequestError as e:
        e.param = e.param or what  # the OpenAI error names the offending field
        raise


def _load(url: str, roots: Sequence[Path], what: str) -> Image.Image:
    scheme = url.split(":", 1)[0].lower() if ":" in url else ""
    if scheme == "data":
        return _decode(_from_data_uri(url, what), what)
    if scheme in ("http", "https", "ftp", "ws", "wss") or url.startswith("//"):
        raise RequestError(f"{what}: network URLs are not fetched; send the image inline as a "
                           "data: URI", code="image_url_not_allowed")
    if scheme not in ("", "file"):
        raise RequestError(f"{what}: unsupported URL scheme {scheme!r}",
                           code="image_url_not_allowed")
    path = _allowed(_local_path(url, what), roots, what)
    if not path.is_file():
        raise RequestError(f"{what}: {path}: no such file", code="invalid_image_url")
    if path.stat().st_size > MAX_IMAGE_BYTES:
        raise RequestError(f"{what}: image over {MAX_IMAGE_BYTES >> 20} MiB",
                           code="image_too_large")
    return _decode(path.read_bytes(), what)

"""Type stubs for the private native module (Rust, built by maturin)."""

__version__: str
FORMAT_VERSION: int

class PackError(Exception): ...
class InputError(PackError): ...
class OutputError(PackError): ...
class ResumeError(PackError): ...

def build(
    input: str,
    output: str,
    *,
    image_root: str | None = None,
    prefix: str = "shard",
    shard_size: int = ...,
    samples_per_shard: int = 10000,
    workers: int = 0,
    phash: str = "fast",
    dhash: bool = False,
    dedup: str = "exact",
    max_pixels: int | None = None,
    max_image_pixels: int | None = None,
    max_file_bytes: int | None = None,
    resume: bool = False,
    overwrite: bool = False,
    progress: str = "auto",
) -> str:
    """Run a build; returns the summary as JSON."""

def probe_image(data: bytes) -> dict[str, object]:
    """Header probe: format, width, height, orientation, color, animated."""

def image_hashes(data: bytes, mode: str = "exact", dhash: bool = True) -> dict[str, str | None]:
    """Perceptual hashes as 16-hex-digit strings (imagehash's `str()` form)."""

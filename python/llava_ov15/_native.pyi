"""Type stubs for the private native module (Rust, built by maturin)."""

__version__: str
FORMAT_VERSION: int

class PackError(Exception): ...
class InputError(PackError): ...
class OutputError(PackError): ...
class ResumeError(PackError): ...

def build(
    inputs: list[str],
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
    text_clean: str = "default",
    text_rules: list[str] = ...,
    max_text_tokens: int | None = None,
    max_repeats: int | None = None,
    boilerplate: str | None = None,
    fix_placeholders: str = "off",
    dedup_text: bool = False,
    text_report: int = 0,
    ray_phase: str | None = None,
) -> str:
    """Run a build over ``inputs`` (files or globs, read in order); returns the summary as
    JSON. ``dedup``: exact (= sample, the whole sample), image or off. ``text_*``: text
    cleaning (docs/format.md, "Text cleaning"). ``ray_phase``: run one phase of the
    distributed build instead (JSON ``{"phase": prepare|scan|plan|write|commit, …}``; see
    ``llava_ov15.distributed.build``) and return its JSON answer."""

def clean_captions(
    texts: list[str],
    *,
    text_clean: str = "default",
    text_rules: list[str] = ...,
    max_text_tokens: int | None = None,
    max_repeats: int | None = None,
    boilerplate: str | None = None,
) -> list[tuple[str, str | None]]:
    """Clean captions as ``build`` does: ``[(cleaned, rejecting rule or None), ...]``."""

def probe_image(data: bytes) -> dict[str, object]:
    """Header probe: format, width, height, orientation, color, animated."""

def image_hashes(data: bytes, mode: str = "exact", dhash: bool = True) -> dict[str, str | None]:
    """Perceptual hashes as 16-hex-digit strings (imagehash's `str()` form)."""

class LengthCounter:
    """Sequence lengths from a tokenizer.json + the Qwen2-VL chat template + smart_resize."""

    def __init__(
        self,
        tokenizer: str,
        *,
        min_pixels: int = 3136,
        max_pixels: int = 2560000,
        patch_size: int = 14,
        merge_size: int = 2,
        system: str | None = "You are a helpful assistant.",
        caption_prompt: str = "",
        caption_format: str = "pretrain",
        eos_token: str | None = None,
    ) -> None: ...
    @property
    def caption_format(self) -> str: ...
    @property
    def eos_token(self) -> str:
        """Ends pretraining-form captions (default: the tokenizer_config.json's, else
        <|im_end|>)."""
    def sample_length(self, sample: bytes) -> dict[str, object]: ...
    def lengths(self, samples: list[bytes]) -> list[int]: ...
    def image_grid(self, width: int, height: int) -> tuple[int, int, int, int]: ...
    def encode(self, text: str) -> list[int]: ...

def smart_resize(
    height: int, width: int, factor: int = 28, min_pixels: int = 3136, max_pixels: int = 2560000
) -> tuple[int, int]: ...

def pack(
    input: str,
    output: str,
    tokenizer: str,
    *,
    max_len: int = 8192,
    max_image_tokens: int | None = None,
    min_pixels: int = 3136,
    max_pixels: int = 2560000,
    prefix: str = "pack",
    packs_per_shard: int = 1000,
    shard_size: int = ...,
    workers: int = 0,
    resume: bool = False,
    overwrite: bool = False,
    progress: str = "auto",
    caption_format: str = "pretrain",
    exclude: str | None = None,
) -> str:
    """Pack built shards; returns the summary as JSON."""

def buckets(
    input: str,
    output: str,
    tokenizer: str,
    *,
    min_pixels: int = 3136,
    max_pixels: int = 2560000,
    workers: int = 0,
    progress: str = "auto",
    exclude: str | None = None,
) -> str:
    """Write output/buckets.json; returns it as JSON."""

def pack_lengths(
    lengths: bytes,
    max_len: int,
    *,
    image_tokens: bytes | None = None,
    max_image_tokens: int | None = None,
) -> dict[str, object]:
    """Pack raw u32 LE lengths: {offsets (u64 LE), items (u32 LE), rejects, seconds, summary}."""

class ShardError(ValueError):
    """A shard, its index or a sample is unreadable; the message names shard and offset."""

class MappedShard:
    """Owner of one shard's read-only mmap; the numpy `base` of every view into it."""

    @property
    def span(self) -> tuple[int, int]: ...

class ShardReader:
    """Zero-copy reader of a shard directory (plain or packed) via its manifest/.tar.idx."""

    def __init__(self, path: str, *, skip_bad_shards: bool = False) -> None: ...
    def __len__(self) -> int: ...
    @property
    def packed(self) -> bool: ...
    @property
    def shard_names(self) -> list[str]: ...
    @property
    def shard_lengths(self) -> list[int]: ...
    @property
    def skipped(self) -> list[tuple[str, str]]: ...
    def mapping(self, shard: int) -> MappedShard: ...
    def sample(self, index: int, *, images: bool = True) -> dict[str, object]:
        """{index, key, shard, offset, json: bytes, members: {suffix: uint8 view},
        images: [uint8 view]} — views are read-only numpy arrays over the mmap."""

def preprocess_images(
    images: list[object], *, min_pixels: int = 3136, max_pixels: int = 2560000,
    patch_size: int = 14, merge_size: int = 2, alpha: str = "white",
) -> tuple[object, object]:
    """(pixel_values float32 [sum h*w, 588], image_grid_thw int64 [n, 3]); GIL released.
    EXIF orientation applied first; alpha "white" composites onto white, "drop" ignores it."""

class SampleTokenizer:
    """input_ids/labels of per-sample (or pack) json via the LengthCounter template."""

    def __init__(
        self,
        tokenizer: str,
        *,
        min_pixels: int = 3136,
        max_pixels: int = 2560000,
        patch_size: int = 14,
        merge_size: int = 2,
        system: str | None = "You are a helpful assistant.",
        caption_prompt: str = "",
        caption_format: str = "pretrain",
        eos_token: str | None = None,
    ) -> None: ...
    def tokenize(self, doc: bytes) -> tuple[object, object, list[int], list[int]]: ...

def near_duplicates(hashes: object, max_distance: int) -> object:
    """All pairs ``i < j`` of a contiguous uint64 array within Hamming ``max_distance``
    (0..=16), exact: int64 array ``(n_pairs, 3)`` of ``[i, j, distance]``, sorted."""

def phash_images(images: list[bytes], mode: str = "fast") -> tuple[object, list[str | None]]:
    """The build's phash of each encoded image (uint64 array) and per image None or why it
    could not be hashed (hash 0)."""

# --- pack on Ray (crates/bindings/src/ray_pack.rs; orchestrated by llava_ov15.distributed.pack)

class PackJob:
    """The driver's side of a pack job: open → plan → mark_copied → finish."""

    def __init__(
        self,
        input: str,
        output: str,
        tokenizer: str,
        *,
        max_len: int = 8192,
        max_image_tokens: int | None = None,
        min_pixels: int = 3136,
        max_pixels: int = 2560000,
        prefix: str = "pack",
        packs_per_shard: int = 1000,
        shard_size: int = 1 << 30,
        resume: bool = False,
        overwrite: bool = False,
        progress: str = "auto",
        caption_format: str = "pretrain",
        exclude: str | None = None,
    ) -> None: ...
    def is_complete(self) -> bool: ...
    def sources(self) -> list[str]: ...
    def scan_options(self) -> tuple[str, str, int, int, str]:
        """(tokenizer path, its sha256, min_pixels, max_pixels, caption_format)."""
    def plan(self, scans: list[bytes]) -> list[int]:
        """Decide packing and layout from every source's scan; indices still to copy."""
    def add_scan(self, scan: bytes) -> None:
        """The next source's scan (source order), decoded at once."""
    def plan_added(self) -> list[int]:
        """plan() from the scans given to add_scan."""
    def source_samples(self) -> int: ...
    def resumed(self) -> int: ...
    def copy_work(self, k: int) -> bytes: ...
    def mark_copied(self, k: int) -> None: ...
    def out_shards(self) -> list[tuple[str, bytes, int]]:
        """(name, .tar.idx offsets as u64 LE bytes, size) per output shard."""
    def finish(self, sha256s: list[str], timings: str) -> str:
        """Write the final artifacts; the summary as JSON."""
    def summary(self) -> str: ...

def pack_scan_shard(
    path: str,
    tokenizer: str,
    tokenizer_sha256: str,
    min_pixels: int,
    max_pixels: int,
    caption_format: str,
) -> bytes:
    """Pass 1 of one source shard: compact metadata for PackJob.plan."""

def pack_copy(work: bytes) -> int:
    """Pass 2 of one source shard (PackJob.copy_work): samples copied."""

def pack_finalize_shard(output: str, name: str, offsets: bytes, bytes: int) -> str:
    """fsync, .tar.idx, rename, sha256 of one output shard."""

# --- dedup (crates/bindings/src/dedup.rs; the Ray read task in ray_dedup.rs, orchestrated by
# llava_ov15.distributed.dedup)

class DedupJob:
    """A dedup job: open (options validated, directories checked) → every shard's rows, read
    here (``run(read_here=True)``) or by Ray tasks (``dedup_read_shards``, handed over with
    ``add`` in shard order) → run (search, clustering and all-or-nothing outputs).
    ``references``: benchmark image hashes as ``(hash, benchmark, row)``."""

    def __init__(
        self,
        input: str,
        output: str,
        *,
        max_distance: int = 8,
        keep: str = "largest",
        multi_image: str = "any",
        verify: str | None = None,
        verify_distance: int = 10,
        against: list[str] = ...,
        references: list[tuple[int, str, int]] = ...,
        rewrite: str | None = None,
        overwrite: bool = False,
        progress: str = "auto",
    ) -> None: ...
    def dirs(self) -> list[tuple[str, str, list[tuple[str, tuple[int, int] | None]]]]:
        """Per directory (--input, then each --against): (path, "--input"|"--against",
        [(shard name, (samples, bytes) from the manifest or None), …]) in shard order."""
    def add(self, dir: int, rows: bytes) -> None:
        """The next shards' rows of directory ``dir`` (a dedup_read_shards result)."""
    def run(self, *, read_here: bool = False) -> str:
        """Search, cluster, write the outputs (``read_here``: read every shard in this process
        first); dedup_stats.json as JSON. Once only."""

def dedup_read_shards(
    dir: str, what: str, shards: list[tuple[str, tuple[int, int] | None]]
) -> bytes:
    """A read task: the keys, phashes, pixels and dhashes of ``shards`` of ``dir``."""

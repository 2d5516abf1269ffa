//! `pack(...)`, `buckets(...)` and `pack_lengths(...)`: offline sequence packing.
//! Jobs run on a worker thread so the calling thread keeps answering Ctrl-C (the job stops at
//! the next sample, leaving a resumable checkpoint), as `build` does.
use std::path::PathBuf;
use std::time::Instant;

use bucketer::pack::{pack as bfd, summarize, PackConfig};
use packer::{BucketsOptions, PackOptions};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict};

/// Pack built shards into fixed-capacity packed shards; returns the summary as JSON.
#[pyfunction]
#[pyo3(signature = (input, output, tokenizer, *, max_len=8192, max_image_tokens=None,
    min_pixels=3136, max_pixels=2_560_000, prefix="pack".to_string(), packs_per_shard=1000,
    shard_size=1u64 << 30, workers=0, resume=false, overwrite=false, progress="auto",
    caption_format="pretrain", exclude=None))]
#[allow(clippy::too_many_arguments)]
fn pack(
    py: Python<'_>,
    input: PathBuf,
    output: PathBuf,
    tokenizer: PathBuf,
    max_len: u32,
    max_image_tokens: Option<u32>,
    min_pixels: u64,
    max_pixels: u64,
    prefix: String,
    packs_per_shard: u64,
    shard_size: u64,
    workers: usize,
    resume: bool,
    overwrite: bool,
    progress: &str,
    caption_format: &str,
    exclude: Option<PathBuf>,
) -> PyResult<String> {
    let mut o = pack_options(
        (input, output, tokenizer),
        max_len,
        max_image_tokens,
        (min_pixels, max_pixels),
        (prefix, packs_per_shard, shard_size),
        (resume, overwrite),
        progress,
        caption_format,
        exclude,
    )?;
    o.workers = workers;
    o.validate().map_err(crate::to_py_err)?;
    let s = crate::run_cancellable(py, "llava-pack-pack", move |c| packer::pack(&o, c))?;
    Ok(serde_json::to_string(&s).expect("summary serialises"))
}

/// The options `pack(...)` and the Ray driver's `PackJob(...)` share, parsed one way for both
/// (arguments grouped as in their Python signatures).
#[allow(clippy::too_many_arguments)]
pub(crate) fn pack_options(
    (input, output, tokenizer): (PathBuf, PathBuf, PathBuf),
    max_len: u32,
    max_image_tokens: Option<u32>,
    (min_pixels, max_pixels): (u64, u64),
    (prefix, packs_per_shard, shard_size): (String, u64, u64),
    (resume, overwrite): (bool, bool),
    progress: &str,
    caption_format: &str,
    exclude: Option<PathBuf>,
) -> PyResult<PackOptions> {
    let mut o = PackOptions::new(input, output, tokenizer);
    o.exclude = exclude;
    o.caption_format = caption_format
        .parse()
        .map_err(|e: String| PyValueError::new_err(e))?;
    o.max_len = max_len;
    o.max_image_tokens = max_image_tokens;
    o.min_pixels = min_pixels;
    o.max_pixels = max_pixels;
    o.prefix = prefix;
    o.packs_per_shard = packs_per_shard;
    o.shard_size = shard_size;
    o.resume = resume;
    o.overwrite = overwrite;
    o.progress = crate::parse_progress(progress)?;
    Ok(o)
}

/// Token-length / resolution distribution and buckets; writes `output/buckets.json` and
/// returns its content as JSON.
#[pyfunction]
#[pyo3(signature = (input, output, tokenizer, *, min_pixels=3136, max_pixels=2_560_000,
    workers=0, progress="auto", exclude=None))]
#[allow(clippy::too_many_arguments)]
fn buckets(
    py: Python<'_>,
    input: PathBuf,
    output: PathBuf,
    tokenizer: PathBuf,
    min_pixels: u64,
    max_pixels: u64,
    workers: usize,
    progress: &str,
    exclude: Option<PathBuf>,
) -> PyResult<String> {
    let o = BucketsOptions {
        input,
        output,
        tokenizer,
        min_pixels,
        max_pixels,
        workers,
        progress: crate::parse_progress(progress)?,
        exclude,
    };
    let v = crate::run_cancellable(py, "llava-pack-buckets", move |c| packer::buckets(&o, c))?;
    Ok(serde_json::to_string(&v).expect("json"))
}

fn u32s(b: &[u8], what: &str) -> PyResult<Vec<u32>> {
    if b.len() % 4 != 0 {
        return Err(PyValueError::new_err(format!(
            "{what}: length is not a multiple of 4"
        )));
    }
    Ok(b.chunks_exact(4)
        .map(|c| u32::from_le_bytes(c.try_into().unwrap()))
        .collect())
}

/// Pack raw lengths (little-endian u32 bytes, e.g. `np.uint32` array `.tobytes()`).
/// Returns `{offsets, items, rejects, seconds, summary}`: `offsets` (u64 LE bytes) and `items`
/// (u32 LE bytes) are the packs in CSR form; `seconds` times the packer alone.
#[pyfunction]
#[pyo3(signature = (lengths, max_len, *, image_tokens=None, max_image_tokens=None))]
fn pack_lengths<'py>(
    py: Python<'py>,
    lengths: &[u8],
    max_len: u32,
    image_tokens: Option<&[u8]>,
    max_image_tokens: Option<u32>,
) -> PyResult<Bound<'py, PyDict>> {
    let l = u32s(lengths, "lengths")?;
    let im = image_tokens.map(|b| u32s(b, "image_tokens")).transpose()?;
    if im.as_ref().is_some_and(|v| v.len() != l.len()) {
        return Err(PyValueError::new_err(
            "image_tokens must have one entry per length",
        ));
    }
    if max_len == 0 {
        return Err(PyValueError::new_err("max_len must be positive"));
    }
    let cfg = PackConfig {
        max_len,
        max_image_tokens,
    };
    let (p, secs) = py.detach(|| {
        let t = Instant::now();
        let p = bfd(&l, im.as_deref(), &cfg);
        (p, t.elapsed().as_secs_f64())
    });
    let s = summarize(&l, &p, max_len);
    let d = PyDict::new(py);
    let offs: Vec<u8> = p
        .offsets
        .iter()
        .flat_map(|&o| (o as u64).to_le_bytes())
        .collect();
    let items: Vec<u8> = p.items.iter().flat_map(|&i| i.to_le_bytes()).collect();
    d.set_item("offsets", PyBytes::new(py, &offs))?;
    d.set_item("items", PyBytes::new(py, &items))?;
    let rejects: Vec<(u32, String)> = p.rejects.iter().map(|(i, r)| (*i, r.to_string())).collect();
    d.set_item("rejects", rejects)?;
    d.set_item("seconds", secs)?;
    d.set_item("summary", serde_json::to_string(&s).expect("json"))?;
    Ok(d)
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(pack, m)?)?;
    m.add_function(wrap_pyfunction!(buckets, m)?)?;
    m.add_function(wrap_pyfunction!(pack_lengths, m)?)?;
    Ok(())
}

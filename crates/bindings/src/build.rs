//! `build(...)`: runs `packer::build` on a worker thread so the calling thread can keep
//! answering Ctrl-C (the job then stops at the next chunk, leaving a resumable checkpoint).
use std::path::PathBuf;

use packer::{BuildOptions, DedupMode, PhashMode};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

fn parse_phash(s: &str) -> PyResult<PhashMode> {
    match s {
        "fast" => Ok(PhashMode::Fast),
        "exact" => Ok(PhashMode::Exact),
        "off" => Ok(PhashMode::Off),
        _ => Err(PyValueError::new_err(format!(
            "--phash must be fast, exact or off, not {s:?}"
        ))),
    }
}

/// Build WebDataset shards from a corpus (`inputs`: files or globs, read in order); returns
/// the summary as a JSON string.
#[pyfunction]
#[pyo3(signature = (inputs, output, *, image_root=None, prefix="shard".to_string(),
    shard_size=1u64 << 30, samples_per_shard=10_000, workers=0, phash="fast", dhash=false,
    dedup="exact", max_pixels=None, max_image_pixels=None, max_file_bytes=None,
    resume=false, overwrite=false, progress="auto"))]
#[allow(clippy::too_many_arguments)]
fn build(
    py: Python<'_>,
    inputs: Vec<String>,
    output: PathBuf,
    image_root: Option<PathBuf>,
    prefix: String,
    shard_size: u64,
    samples_per_shard: u64,
    workers: usize,
    phash: &str,
    dhash: bool,
    dedup: &str,
    max_pixels: Option<u64>,
    max_image_pixels: Option<u64>,
    max_file_bytes: Option<u64>,
    resume: bool,
    overwrite: bool,
    progress: &str,
) -> PyResult<String> {
    let mut o = BuildOptions::new(String::new(), output);
    o.inputs = inputs;
    o.image_root = image_root;
    o.prefix = prefix;
    o.shard_size = shard_size;
    o.samples_per_shard = samples_per_shard;
    o.workers = workers;
    o.phash = parse_phash(phash)?;
    o.dhash = dhash;
    o.dedup = DedupMode::parse(dedup).map_err(crate::to_py_err)?;
    o.max_pixels = max_pixels;
    if let Some(n) = max_image_pixels {
        o.max_image_pixels = n;
    }
    if let Some(n) = max_file_bytes {
        o.max_file_bytes = n;
    }
    o.resume = resume;
    o.overwrite = overwrite;
    o.progress = crate::parse_progress(progress)?;
    o.validate().map_err(crate::to_py_err)?;

    let summary = crate::run_cancellable(py, "llava-pack-build", move |cancel| {
        packer::build(&o, cancel)
    })?;
    Ok(serde_json::to_string(&summary).expect("summary serialises"))
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(build, m)?)?;
    Ok(())
}

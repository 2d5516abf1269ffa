//! `build(...)`: runs `packer::build` on a worker thread so the calling thread can keep
//! answering Ctrl-C (the job then stops at the next chunk, leaving a resumable checkpoint).
use std::path::PathBuf;

use packer::text::{CleanMode, Cleaner, TextOptions};
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
    resume=false, overwrite=false, progress="auto", text_clean="default", text_rules=Vec::new(),
    max_text_tokens=None, max_repeats=None, boilerplate=None, fix_placeholders="off",
    dedup_text=false, text_report=0, ray_phase=None))]
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
    text_clean: &str,
    text_rules: Vec<String>,
    max_text_tokens: Option<u64>,
    max_repeats: Option<u32>,
    boilerplate: Option<PathBuf>,
    fix_placeholders: &str,
    dedup_text: bool,
    text_report: usize,
    ray_phase: Option<String>,
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
    o.text = TextOptions {
        mode: CleanMode::parse(text_clean).map_err(crate::to_py_err)?,
        rules: text_rules,
        max_text_tokens,
        max_repeats,
        boilerplate,
        fix_placeholders: parse_fix(fix_placeholders)?,
        dedup_text,
        report: text_report,
    };
    o.validate().map_err(crate::to_py_err)?;
    if let Some(phase) = ray_phase {
        return crate::ray_build::run(py, o, &phase);
    }

    let summary = crate::run_cancellable(py, "llava-pack-build", move |cancel| {
        packer::build(&o, cancel)
    })?;
    Ok(serde_json::to_string(&summary).expect("summary serialises"))
}

fn parse_fix(s: &str) -> PyResult<bool> {
    match s {
        "off" => Ok(false),
        "prepend" => Ok(true),
        _ => Err(PyValueError::new_err(format!(
            "--fix-placeholders must be off or prepend, not {s:?}"
        ))),
    }
}

/// Clean captions as `build` would (its caption normalisations and rules), on one thread
/// with the GIL released: `[(cleaned, rejecting rule or None), …]`.
#[pyfunction]
#[pyo3(signature = (texts, *, text_clean="default", text_rules=Vec::new(), max_text_tokens=None,
    max_repeats=None, boilerplate=None))]
fn clean_captions(
    py: Python<'_>,
    texts: Vec<String>,
    text_clean: &str,
    text_rules: Vec<String>,
    max_text_tokens: Option<u64>,
    max_repeats: Option<u32>,
    boilerplate: Option<PathBuf>,
) -> PyResult<Vec<(String, Option<&'static str>)>> {
    let o = TextOptions {
        mode: CleanMode::parse(text_clean).map_err(crate::to_py_err)?,
        rules: text_rules,
        max_text_tokens,
        max_repeats,
        boilerplate,
        ..TextOptions::default()
    };
    o.validate().map_err(crate::to_py_err)?;
    let cleaner = Cleaner::new(&o).map_err(crate::to_py_err)?;
    Ok(py.detach(|| {
        texts
            .into_iter()
            .map(|mut t| {
                let rule = cleaner.clean_caption(&mut t);
                (t, rule)
            })
            .collect()
    }))
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(build, m)?)?;
    m.add_function(wrap_pyfunction!(clean_captions, m)?)?;
    Ok(())
}

//! The read task of a dedup job on a Ray cluster (orchestrated by
//! `llava_ov15.distributed.dedup`; the driver is a `DedupJob`, see `dedup.rs`). Only keys,
//! hashes and pixel counts cross processes.
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;

use packer::dedup::corpus::read_shards;
use packer::dedup::wire::encode_rows;
use pyo3::prelude::*;
use pyo3::types::PyBytes;

use crate::dedup::Listed;

/// A read task: the rows of shards `shards` of `dir` (`what`: `--input` or `--against`, for
/// errors), as bytes for `DedupJob.add`.
#[pyfunction]
fn dedup_read_shards<'py>(
    py: Python<'py>,
    dir: PathBuf,
    what: &str,
    shards: Vec<Listed>,
) -> PyResult<Bound<'py, PyBytes>> {
    // A Ray cancel kills the worker process; nothing sets this.
    let never = AtomicBool::new(false);
    let b = py
        .detach(|| read_shards(&dir, what, shards, &never).map(|r| encode_rows(&r)))
        .map_err(crate::to_py_err)?;
    Ok(PyBytes::new(py, &b))
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(dedup_read_shards, m)?)?;
    Ok(())
}

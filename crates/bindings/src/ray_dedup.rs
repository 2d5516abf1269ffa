//! `dedup` with its read phase on a Ray cluster (orchestrated by
//! `llava_ov15.distributed.dedup`): the driver holds a `DedupJob` (directory checks → rows
//! added in shard order → the local job's search and outputs), read tasks call
//! `dedup_read_shards`. Only keys, hashes and pixel counts cross processes.
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;

use packer::dedup::corpus::read_shards;
use packer::dedup::ray::DedupJob as Job;
use packer::dedup::wire::{decode_rows, encode_rows};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyBytes;

/// A shard as a read task gets it: its name and the manifest's (samples, bytes), if listed.
type Listed = (String, Option<(u64, u64)>);

/// The driver's side of a dedup job (see `packer::dedup::ray::DedupJob`).
#[pyclass(module = "llava_ov15._native")]
struct DedupJob {
    /// `None` once `run` took it.
    job: Option<Job>,
}

impl DedupJob {
    fn job(&mut self) -> PyResult<&mut Job> {
        self.job
            .as_mut()
            .ok_or_else(|| PyValueError::new_err("this dedup job already ran"))
    }
}

#[pymethods]
impl DedupJob {
    /// Validate the options (those of `dedup(...)`) and check `--input` and each `--against`
    /// directory as the local job does; reads no sample.
    #[new]
    #[pyo3(signature = (input, output, *, max_distance=8, keep="largest", multi_image="any",
        verify=None, verify_distance=packer::dedup::DEFAULT_VERIFY_DISTANCE,
        against=Vec::new(), references=Vec::new(), rewrite=None, overwrite=false,
        progress="auto"))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        input: PathBuf,
        output: PathBuf,
        max_distance: u32,
        keep: &str,
        multi_image: &str,
        verify: Option<&str>,
        verify_distance: u32,
        against: Vec<PathBuf>,
        references: Vec<(u64, String, i64)>,
        rewrite: Option<PathBuf>,
        overwrite: bool,
        progress: &str,
    ) -> PyResult<Self> {
        let o = crate::dedup::options(
            input,
            output,
            max_distance,
            keep,
            multi_image,
            verify,
            verify_distance,
            against,
            references,
            rewrite,
            overwrite,
            progress,
        )?;
        let job = py.detach(|| Job::open(o)).map_err(crate::to_py_err)?;
        Ok(DedupJob { job: Some(job) })
    }

    /// Per directory (`--input`, then each `--against`): `(path, "--input"|"--against",
    /// [(shard name, (samples, bytes) or None), …])` in shard order.
    fn dirs(&mut self) -> PyResult<Vec<(String, String, Vec<Listed>)>> {
        let dirs = self.job()?.dirs().iter();
        Ok(dirs
            .map(|d| {
                let path = d.dir().display().to_string();
                (path, d.what.clone(), d.listing.shards.clone())
            })
            .collect())
    }

    /// The next shards' rows of directory `dir` (a `dedup_read_shards` result, in order).
    fn add(&mut self, py: Python<'_>, dir: usize, rows: &[u8]) -> PyResult<()> {
        let job = self.job()?;
        py.detach(|| {
            let rows = decode_rows(rows).map_err(|e| PyValueError::new_err(e.to_string()))?;
            job.add(dir, rows).map_err(crate::to_py_err)
        })
    }

    /// Search, cluster, write the outputs (and `--rewrite`); returns `dedup_stats.json`'s
    /// content as JSON. Ctrl-C cancels.
    fn run(&mut self, py: Python<'_>) -> PyResult<String> {
        let job = self
            .job
            .take()
            .ok_or_else(|| PyValueError::new_err("this dedup job already ran"))?;
        let s = crate::run_cancellable(py, "llava-pack-dedup", move |c| job.run(c))?;
        Ok(serde_json::to_string(&s).expect("summary serialises"))
    }
}

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
    m.add_class::<DedupJob>()?;
    m.add_function(wrap_pyfunction!(dedup_read_shards, m)?)?;
    Ok(())
}

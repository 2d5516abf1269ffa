//! `near_duplicates(...)`, `DedupJob` and `phash_images(...)`: `packer::dedup` for Python.
//! The search and the job run with the GIL released; the job answers Ctrl-C.
use std::path::PathBuf;

use numpy::prelude::*;
use numpy::{PyArray1, PyArray2, PyReadonlyArray1};
use packer::dedup::wire::decode_rows;
use packer::dedup::{DedupJob as Job, DedupOptions, Reference};
use packer::image::Limits;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use rayon::prelude::*;

/// Every pair `i < j` of `hashes` within Hamming distance `max_distance` (0..=16), as an
/// `(n_pairs, 3)` int64 array of `[i, j, distance]` rows sorted by `(i, j)`. Exact.
#[pyfunction]
#[pyo3(signature = (hashes, max_distance))]
fn near_duplicates<'py>(
    py: Python<'py>,
    hashes: PyReadonlyArray1<'py, u64>,
    max_distance: u32,
) -> PyResult<Bound<'py, PyArray2<i64>>> {
    let slice = hashes
        .as_slice()
        .map_err(|_| PyValueError::new_err("hashes must be a contiguous 1-D uint64 array"))?;
    let pairs = py
        .detach(|| packer::dedup::near_duplicates(slice, max_distance, None))
        .map_err(|e| PyValueError::new_err(e.to_string()))?;
    let flat: Vec<i64> = pairs
        .iter()
        .flat_map(|p| [i64::from(p.i), i64::from(p.j), i64::from(p.distance)])
        .collect();
    PyArray1::from_vec(py, flat).reshape([pairs.len(), 3])
}

/// A shard as a read task gets it: its name and the manifest's (samples, bytes), if listed.
pub(crate) type Listed = (String, Option<(u64, u64)>);

/// A dedup job (see `packer::dedup::DedupJob`): open (options validated, directories checked)
/// → every shard's rows, read here (`run(read_here=True)`: the single-process `dedup`) or by
/// Ray tasks (`dedup_read_shards`, handed over with `add` in shard order) → `run`.
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
    /// `references`: benchmark image hashes as `(hash, benchmark, row)` tuples.
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
        let parse = |e: String| PyValueError::new_err(e);
        let mut o = DedupOptions::new(input, output);
        o.max_distance = max_distance;
        o.keep = keep.parse().map_err(parse)?;
        o.multi_image = multi_image.parse().map_err(parse)?;
        if let Some(v) = verify {
            o.verify = v.parse().map_err(parse)?;
        }
        o.verify_distance = verify_distance;
        o.against = against;
        o.references = references
            .into_iter()
            .map(|(hash, source, row)| Reference {
                hash,
                source,
                row: row.into(),
            })
            .collect();
        o.rewrite = rewrite;
        o.overwrite = overwrite;
        o.progress = crate::parse_progress(progress)?;
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

    /// Search, cluster, write the outputs (and `--rewrite`); `read_here`: read every shard in
    /// this process first. Returns `dedup_stats.json`'s content as JSON; Ctrl-C cancels.
    #[pyo3(signature = (*, read_here=false))]
    fn run(&mut self, py: Python<'_>, read_here: bool) -> PyResult<String> {
        let mut job = self
            .job
            .take()
            .ok_or_else(|| PyValueError::new_err("this dedup job already ran"))?;
        let s = crate::run_cancellable(py, "llava-pack-dedup", move |c| {
            if read_here {
                job.read_here(c)?;
            }
            job.run(c)
        })?;
        Ok(serde_json::to_string(&s).expect("summary serialises"))
    }
}

/// Hashes and, per image, why it could not be hashed.
type Hashed<'py> = (Bound<'py, PyArray1<u64>>, Vec<Option<String>>);

/// The build's phash of each encoded image, in parallel: `(hashes uint64[n], errors)` where
/// `errors[i]` is None or why image `i` could not be hashed (its hash is then 0).
#[pyfunction]
#[pyo3(signature = (images, mode="fast"))]
fn phash_images<'py>(py: Python<'py>, images: Vec<Vec<u8>>, mode: &str) -> PyResult<Hashed<'py>> {
    let mode = crate::image::hash_mode(mode)?;
    let results: Vec<Result<u64, String>> = py.detach(|| {
        images
            .par_iter()
            .map(|data| {
                let a = packer::image::analyze(data, mode, false, &Limits::default())
                    .map_err(|e| e.to_string())?;
                a.phash.ok_or_else(|| "no phash computed".to_string())
            })
            .collect()
    });
    let hashes: Vec<u64> = results.iter().map(|r| *r.as_ref().unwrap_or(&0)).collect();
    let errors = results.into_iter().map(Result::err).collect();
    Ok((PyArray1::from_vec(py, hashes), errors))
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(near_duplicates, m)?)?;
    m.add_class::<DedupJob>()?;
    m.add_function(wrap_pyfunction!(phash_images, m)?)?;
    Ok(())
}

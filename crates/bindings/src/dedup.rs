//! `near_duplicates(...)`, `dedup(...)` and `phash_images(...)`: `packer::dedup` for Python.
//! The search and the job run with the GIL released; the job answers Ctrl-C.
use std::path::PathBuf;

use numpy::prelude::*;
use numpy::{PyArray1, PyArray2, PyReadonlyArray1};
use packer::dedup::{DedupOptions, Reference};
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

/// Run a dedup job; returns `dedup_stats.json`'s content as JSON. `references`: benchmark
/// image hashes as `(hash, benchmark, row)` tuples.
#[pyfunction]
#[pyo3(signature = (input, output, *, max_distance=8, keep="largest", multi_image="any",
    verify=None, verify_distance=packer::dedup::DEFAULT_VERIFY_DISTANCE, against=Vec::new(),
    references=Vec::new(), rewrite=None, overwrite=false, progress="auto"))]
#[allow(clippy::too_many_arguments)]
fn dedup(
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
) -> PyResult<String> {
    let o = options(
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
    o.validate().map_err(crate::to_py_err)?;
    let s = crate::run_cancellable(py, "llava-pack-dedup", move |c| packer::dedup::dedup(&o, c))?;
    Ok(serde_json::to_string(&s).expect("summary serialises"))
}

/// `dedup(...)`'s keyword arguments as options (shared with `DedupJob`, the Ray driver's).
#[allow(clippy::too_many_arguments)]
pub(crate) fn options(
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
) -> PyResult<DedupOptions> {
    let mut o = DedupOptions::new(input, output);
    o.max_distance = max_distance;
    o.keep = keep.parse().map_err(|e: String| PyValueError::new_err(e))?;
    o.multi_image = multi_image
        .parse()
        .map_err(|e: String| PyValueError::new_err(e))?;
    if let Some(v) = verify {
        o.verify = v.parse().map_err(|e: String| PyValueError::new_err(e))?;
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
    Ok(o)
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
    m.add_function(wrap_pyfunction!(dedup, m)?)?;
    m.add_function(wrap_pyfunction!(phash_images, m)?)?;
    Ok(())
}

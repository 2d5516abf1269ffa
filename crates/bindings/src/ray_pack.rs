//! `pack` split into its phases for a Ray cluster (orchestrated by
//! `llava_ov15.distributed.pack`): the driver holds a `PackJob` (open → plan → checkpoints →
//! finish), remote tasks call `pack_scan_shard`, `pack_copy` and `pack_finalize_shard`. These
//! are the functions the single-process `pack` runs, so both write the same bytes. Everything
//! crossing processes is compact metadata (`bytes`), never image data.
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use packer::pack::{
    copy_work, decode_scan, decode_work, encode_scan, encode_work, finalize_shard, length_counter,
    scan_shard, sha256_file, OutShard, PackJob as Job,
};
use packer::shard::ShardInfo;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyBytes;

fn caption_format(s: &str) -> PyResult<bucketer::CaptionFormat> {
    s.parse().map_err(|e: String| PyValueError::new_err(e))
}

/// The driver's side of a pack job (see `packer::pack::PackJob`).
#[pyclass(module = "llava_ov15._native")]
struct PackJob {
    job: Job,
    /// Scans handed over one by one (`add_scan`), so the driver never holds their bytes too.
    scans: Vec<packer::pack::ShardScan>,
}

#[pymethods]
impl PackJob {
    /// Validate, fingerprint the input and prepare (or resume) the output directory — the
    /// options of `pack(...)` without `workers` (the cluster's size decides the parallelism).
    #[new]
    #[pyo3(signature = (input, output, tokenizer, *, max_len=8192, max_image_tokens=None,
        min_pixels=3136, max_pixels=2_560_000, prefix="pack".to_string(), packs_per_shard=1000,
        shard_size=1u64 << 30, resume=false, overwrite=false, progress="auto",
        caption_format="pretrain", exclude=None))]
    #[allow(clippy::too_many_arguments)]
    fn new(
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
        resume: bool,
        overwrite: bool,
        progress: &str,
        caption_format: &str,
        exclude: Option<PathBuf>,
    ) -> PyResult<Self> {
        let o = crate::pack::pack_options(
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
        let job = py.detach(|| Job::open(&o)).map_err(crate::to_py_err)?;
        Ok(PackJob {
            job,
            scans: Vec::new(),
        })
    }

    fn is_complete(&self) -> bool {
        self.job.is_complete()
    }

    /// Source shard paths, in the order scans are expected by `plan`.
    fn sources(&self) -> Vec<String> {
        let s = self.job.sources().iter();
        s.map(|p| p.display().to_string()).collect()
    }

    /// `(tokenizer path, its sha256, min_pixels, max_pixels, caption_format)` for scan tasks.
    fn scan_options(&self) -> (String, String, u64, u64, String) {
        let o = self.job.options();
        (
            o.tokenizer.display().to_string(),
            self.job.tokenizer_sha256().to_string(),
            o.min_pixels,
            o.max_pixels,
            o.caption_format.as_str().to_string(),
        )
    }

    /// Global decisions from every source's `pack_scan_shard` bytes (source order); writes the
    /// skeleton. Returns the indices of the sources still to copy.
    fn plan(&mut self, py: Python<'_>, scans: Vec<Vec<u8>>) -> PyResult<Vec<usize>> {
        let job = &mut self.job;
        py.detach(|| {
            let scans = scans
                .iter()
                .map(|b| decode_scan(b))
                .collect::<std::io::Result<Vec<_>>>()
                .map_err(|e| packer::PackError::InvalidOption(e.to_string()))?;
            job.plan(scans)
        })
        .map_err(crate::to_py_err)
    }

    /// Samples in all scanned source shards (0 before `plan`).
    fn source_samples(&self) -> usize {
        self.job.source_samples()
    }

    /// Take the next source's scan (in source order), decoded at once.
    fn add_scan(&mut self, scan: &[u8]) -> PyResult<()> {
        let s = decode_scan(scan).map_err(|e| PyValueError::new_err(e.to_string()))?;
        self.scans.push(s);
        Ok(())
    }

    /// `plan` from the scans given to `add_scan`.
    fn plan_added(&mut self, py: Python<'_>) -> PyResult<Vec<usize>> {
        let scans = std::mem::take(&mut self.scans);
        let job = &mut self.job;
        py.detach(|| job.plan(scans)).map_err(crate::to_py_err)
    }

    fn resumed(&self) -> u64 {
        self.job.resumed()
    }

    /// The pass-2 work of source `k`, for `pack_copy`.
    fn copy_work<'py>(&self, py: Python<'py>, k: usize) -> PyResult<Bound<'py, PyBytes>> {
        if k >= self.job.sources().len() {
            return Err(PyValueError::new_err(format!("no source shard {k}")));
        }
        Ok(PyBytes::new(py, &encode_work(&self.job.copy_work(k))))
    }

    /// Checkpoint: source `k` is copied (a resumed run skips it).
    fn mark_copied(&self, k: usize) -> PyResult<()> {
        if k >= self.job.sources().len() {
            return Err(PyValueError::new_err(format!("no source shard {k}")));
        }
        self.job.mark_copied(k).map_err(crate::to_py_err)
    }

    /// Output shards as `(name, .tar.idx offsets as u64 LE bytes, bytes)`, for
    /// `pack_finalize_shard`.
    fn out_shards<'py>(&self, py: Python<'py>) -> Vec<(String, Bound<'py, PyBytes>, u64)> {
        let shards = self.job.out_shards().iter();
        shards
            .map(|s| {
                let idx: Vec<u8> = s.offsets.iter().flat_map(|o| o.to_le_bytes()).collect();
                (s.name.clone(), PyBytes::new(py, &idx), s.bytes)
            })
            .collect()
    }

    /// Write `.nv-meta`, rejects, stats, tokenizer and manifest; `sha256s` are the
    /// `pack_finalize_shard` results in `out_shards` order, `timings` the pack_stats
    /// `throughput` object (JSON). Returns the summary as JSON.
    fn finish(&self, py: Python<'_>, sha256s: Vec<String>, timings: &str) -> PyResult<String> {
        let t: serde_json::Value = serde_json::from_str(timings)
            .map_err(|e| PyValueError::new_err(format!("timings: {e}")))?;
        let shards = self.job.out_shards();
        if sha256s.len() != shards.len() {
            return Err(PyValueError::new_err(format!(
                "{} sha256s for {} output shards",
                sha256s.len(),
                shards.len()
            )));
        }
        let infos = shards
            .iter()
            .zip(sha256s)
            .map(|(s, sha256)| ShardInfo {
                name: s.name.clone(),
                samples: s.offsets.len() as u64 - 1,
                bytes: s.bytes,
                sha256,
            })
            .collect();
        let s = py
            .detach(|| self.job.finish(infos, t))
            .map_err(crate::to_py_err)?;
        Ok(serde_json::to_string(&s).expect("summary serialises"))
    }

    /// The summary of a finished job (JSON), read from its files.
    fn summary(&self) -> PyResult<String> {
        let s = self.job.summary().map_err(crate::to_py_err)?;
        Ok(serde_json::to_string(&s).expect("summary serialises"))
    }
}

type Counter = Arc<bucketer::LengthCounter>;

/// A worker process scans many shards with one tokenizer: load it once.
static COUNTER: Mutex<Option<(String, Counter)>> = Mutex::new(None);

fn counter(
    tokenizer: &str,
    sha256: &str,
    min_pixels: u64,
    max_pixels: u64,
    fmt: &str,
) -> PyResult<Counter> {
    let key = format!("{tokenizer}\0{sha256}\0{min_pixels}\0{max_pixels}\0{fmt}");
    let mut slot = COUNTER.lock().unwrap();
    if let Some((k, c)) = slot.as_ref() {
        if *k == key {
            return Ok(c.clone());
        }
    }
    let path = std::path::Path::new(tokenizer);
    let here = sha256_file(path).map_err(|e| {
        crate::InputError::new_err(format!("{tokenizer}: {e} (is it on every node?)"))
    })?;
    if here != sha256 {
        return Err(crate::InputError::new_err(format!(
            "{tokenizer}: differs on this node from the driver's file (sha256 {here} vs {sha256})"
        )));
    }
    let c = length_counter(path, min_pixels, max_pixels, caption_format(fmt)?)
        .map_err(crate::to_py_err)?;
    let c = Arc::new(c);
    *slot = Some((key, c.clone()));
    Ok(c)
}

/// Pass 1 of one source shard (a scan task): its metadata as bytes for `PackJob.plan`.
#[pyfunction]
fn pack_scan_shard<'py>(
    py: Python<'py>,
    path: PathBuf,
    tokenizer: &str,
    tokenizer_sha256: &str,
    min_pixels: u64,
    max_pixels: u64,
    caption_format: &str,
) -> PyResult<Bound<'py, PyBytes>> {
    let c = py.detach(|| {
        counter(
            tokenizer,
            tokenizer_sha256,
            min_pixels,
            max_pixels,
            caption_format,
        )
    })?;
    let b = py
        .detach(|| scan_shard(&path, &c).map(|s| encode_scan(&s)))
        .map_err(|e| crate::InputError::new_err(format!("{}: {e}", path.display())))?;
    Ok(PyBytes::new(py, &b))
}

/// Pass 2 of one source shard (a write task): copy its bytes to their planned offsets.
/// Returns the number of samples copied.
#[pyfunction]
fn pack_copy(py: Python<'_>, work: &[u8]) -> PyResult<u64> {
    let w = decode_work(work).map_err(|e| PyValueError::new_err(e.to_string()))?;
    let never = std::sync::atomic::AtomicBool::new(false);
    py.detach(|| copy_work(&w, &never))
        .map_err(|e| {
            crate::OutputError::new_err(format!(
                "{}: {}: {e}",
                w.output.display(),
                w.source.display()
            ))
        })
        .map(|n| n.unwrap_or(0))
}

/// Finalize one output shard (a finalize task): fsync, `.tar.idx`, rename, sha256.
#[pyfunction]
fn pack_finalize_shard(
    py: Python<'_>,
    output: PathBuf,
    name: String,
    offsets: &[u8],
    bytes: u64,
) -> PyResult<String> {
    if offsets.len() % 8 != 0 || offsets.len() < 16 {
        return Err(PyValueError::new_err("offsets: not a list of u64"));
    }
    let sh = OutShard {
        name,
        first_pack: 0,
        offsets: offsets
            .chunks_exact(8)
            .map(|c| u64::from_le_bytes(c.try_into().unwrap()))
            .collect(),
        bytes,
    };
    let info = py
        .detach(|| finalize_shard(&output, &sh))
        .map_err(crate::to_py_err)?;
    Ok(info.sha256)
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PackJob>()?;
    m.add_function(wrap_pyfunction!(pack_scan_shard, m)?)?;
    m.add_function(wrap_pyfunction!(pack_copy, m)?)?;
    m.add_function(wrap_pyfunction!(pack_finalize_shard, m)?)?;
    Ok(())
}

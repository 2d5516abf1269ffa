//! The training loader's native half: a zero-copy shard reader, image preprocessing to
//! `pixel_values`, and sample tokenisation (`input_ids` + `labels`).
//!
//! Zero copy: every shard is one read-only `Mmap` behind an `Arc`; image members reach Python
//! as read-only uint8 numpy arrays pointing into the mapping, whose numpy `base` is a small
//! `MappedShard` object holding that `Arc`. A view therefore keeps its mapping alive after the
//! `ShardReader` is gone. (The buffer protocol itself is not available to abi3-py310 builds,
//! hence numpy arrays as the view type.)
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use bucketer::LengthCounter;
use memmap2::Mmap;
use numpy::ndarray::ArrayView1;
use numpy::prelude::*;
use numpy::{PyArray1, PyReadonlyArray1, PyUntypedArrayMethods};
use packer::image::{vision, Limits};
use packer::reader::{OpenOptions, ReadError, ShardSet};
use pyo3::exceptions::{PyIndexError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList};
use rayon::prelude::*;
use serde_json::Value;

// Full module path so the class pickles (DataLoader workers send exceptions to the parent).
pyo3::create_exception!(
    llava_ov15._native,
    ShardError,
    pyo3::exceptions::PyValueError,
    "A shard, its index or one of its samples is unreadable (the message names shard and offset)."
);

fn shard_err(e: ReadError) -> PyErr {
    match e {
        ReadError::OutOfRange { .. } => PyIndexError::new_err(e.to_string()),
        _ => ShardError::new_err(e.to_string()),
    }
}

/// Owner of one shard mapping; the numpy `base` of every view into it.
#[pyclass(module = "llava_ov15._native", frozen)]
pub struct MappedShard {
    map: Arc<Mmap>,
}

#[pymethods]
impl MappedShard {
    /// (address, length) of the mapping, to check that views point into it.
    #[getter]
    fn span(&self) -> (usize, usize) {
        (self.map.as_ptr() as usize, self.map.len())
    }
}

#[pyclass(module = "llava_ov15._native", frozen)]
pub struct ShardReader {
    set: ShardSet,
    owners: Vec<Py<MappedShard>>,
}

/// A read-only uint8 numpy array over `owner`'s mapping at `start..start+len`.
fn view<'py>(
    py: Python<'py>,
    owner: &Py<MappedShard>,
    start: usize,
    len: usize,
) -> Bound<'py, PyArray1<u8>> {
    let map = &owner.get().map;
    let data = ArrayView1::from(&map[start..start + len]);
    // SAFETY: the array points into the mapping owned (via Arc) by `owner`, which becomes the
    // array's base object, so the memory outlives the array; the mapping is never resized and
    // the WRITEABLE flag is cleared right away (the pages are mapped read-only).
    unsafe {
        let arr = PyArray1::borrow_from_array(&data, owner.clone_ref(py).into_bound(py).into_any());
        (*arr.as_array_ptr()).flags &= !numpy::npyffi::flags::NPY_ARRAY_WRITEABLE;
        arr
    }
}

#[pymethods]
impl ShardReader {
    #[new]
    #[pyo3(signature = (path, *, skip_bad_shards=false))]
    fn new(py: Python<'_>, path: PathBuf, skip_bad_shards: bool) -> PyResult<Self> {
        let set = py
            .detach(|| ShardSet::open(&path, OpenOptions { skip_bad_shards }))
            .map_err(shard_err)?;
        let owners = set
            .shards
            .iter()
            .map(|s| Py::new(py, MappedShard { map: s.map.clone() }))
            .collect::<PyResult<_>>()?;
        Ok(ShardReader { set, owners })
    }

    fn __len__(&self) -> usize {
        self.set.len() as usize
    }

    /// True for a packed directory (manifest `"kind": "packed"`).
    #[getter]
    fn packed(&self) -> bool {
        self.set.packed
    }

    #[getter]
    fn shard_names(&self) -> Vec<String> {
        self.set.shards.iter().map(|s| s.name.clone()).collect()
    }

    /// Samples per shard, in shard order.
    #[getter]
    fn shard_lengths(&self) -> Vec<usize> {
        self.set.shards.iter().map(|s| s.samples()).collect()
    }

    /// Shards left out by `skip_bad_shards`: (name, reason).
    #[getter]
    fn skipped(&self) -> Vec<(String, String)> {
        self.set
            .skipped
            .iter()
            .map(|(n, e)| (n.clone(), e.to_string()))
            .collect()
    }

    /// The mapping owner of shard `s` (the numpy base of its views).
    fn mapping(&self, py: Python<'_>, s: usize) -> PyResult<Py<MappedShard>> {
        self.owners
            .get(s)
            .map(|o| o.clone_ref(py))
            .ok_or_else(|| PyIndexError::new_err("shard index out of range"))
    }

    /// Sample `index` as `{index, key, shard, offset, json: bytes, images: [uint8 views],
    /// members: {suffix: uint8 view}}`; `images` are in token order (a pack's across all its
    /// sub-samples). With `images=False` the json is not parsed and `images` is absent.
    #[pyo3(signature = (index, *, images=true))]
    fn sample<'py>(
        &self,
        py: Python<'py>,
        index: i64,
        images: bool,
    ) -> PyResult<Bound<'py, PyDict>> {
        let n = self.set.len() as i64;
        let i = if index < 0 { index + n } else { index };
        if i < 0 || i >= n {
            return Err(PyIndexError::new_err(format!(
                "sample index {index} out of range ({n} samples)"
            )));
        }
        let s = self.set.sample(i as u64).map_err(shard_err)?;
        let owner = &self.owners[s.shard];
        let d = PyDict::new(py);
        d.set_item("index", i)?;
        d.set_item("key", &s.key)?;
        d.set_item("shard", &self.set.shards[s.shard].name)?;
        d.set_item("offset", s.offset)?;
        let members = PyDict::new(py);
        for m in &s.members {
            if m.suffix == "json" {
                d.set_item("json", PyBytes::new(py, self.set.bytes(&s, m)))?;
            } else {
                members.set_item(&m.suffix, view(py, owner, m.start, m.len))?;
            }
        }
        if !d.contains("json")? {
            return Err(shard_err(ReadError::BadJson {
                shard: self.set.shards[s.shard].name.clone(),
                offset: s.offset,
                key: s.key.clone(),
                message: "no json member".into(),
            }));
        }
        d.set_item("members", members)?;
        if images {
            let json = self.set.json(&s).map_err(shard_err)?;
            let ims = self.set.image_members(&s, &json).map_err(shard_err)?;
            let list = PyList::empty(py);
            for m in ims {
                list.append(view(py, owner, m.start, m.len))?;
            }
            d.set_item("images", list)?;
        }
        Ok(d)
    }
}

/// The thread pool `preprocess_images` decodes on, one per process.
///
/// DataLoader workers are forked: a child inherits the parent's pool structures but not its
/// threads, so work queued on a pool created before the fork (rayon's global one included,
/// e.g. after the parent preprocessed a sample itself) would wait forever. The pool is
/// therefore keyed by process id and rebuilt in a new process. Only called with the GIL held,
/// so no other thread can hold the lock when Python forks.
fn decode_pool() -> Result<Arc<rayon::ThreadPool>, String> {
    static POOL: Mutex<Option<(u32, Arc<rayon::ThreadPool>)>> = Mutex::new(None);
    let pid = std::process::id();
    let mut slot = POOL.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((owner, pool)) = slot.as_ref() {
        if *owner == pid {
            return Ok(pool.clone());
        }
    }
    // A parent's pool: its threads do not exist here, so dropping it could block; leak it.
    if let Some(inherited) = slot.take() {
        std::mem::forget(inherited);
    }
    let pool = Arc::new(
        rayon::ThreadPoolBuilder::new()
            .thread_name(|i| format!("llava-preprocess-{i}"))
            .build()
            .map_err(|e| format!("cannot start decode threads: {e}"))?,
    );
    *slot = Some((pid, pool.clone()));
    Ok(pool)
}

/// Image bytes from Python: a uint8 numpy array (e.g. a shard view) or `bytes`.
#[derive(FromPyObject)]
enum ImageBytes<'py> {
    Array(PyReadonlyArray1<'py, u8>),
    Bytes(Bound<'py, PyBytes>),
}

/// Decode, apply EXIF orientation, BICUBIC-resize to the `smart_resize` size of the upright
/// image, rescale, normalize and patchify images (GIL released, images in parallel). Returns
/// `(pixel_values float32 [Σ h·w, 588], image_grid_thw int64 [n, 3])`, identical to
/// transformers' `Qwen2VLImageProcessor(Pil)` (temporal_patch_size=1) given
/// `ImageOps.exif_transpose`d images. `alpha`: "white" composites transparency onto white
/// (transformers 5.x), "drop" ignores it (transformers 4.x).
#[pyfunction]
#[pyo3(signature = (images, *, min_pixels=3136, max_pixels=2_560_000, patch_size=14, merge_size=2,
    alpha="white"))]
fn preprocess_images<'py>(
    py: Python<'py>,
    images: Vec<ImageBytes<'py>>,
    min_pixels: u64,
    max_pixels: u64,
    patch_size: u32,
    merge_size: u32,
    alpha: &str,
) -> PyResult<(Bound<'py, PyAny>, Bound<'py, PyAny>)> {
    if patch_size == 0 || merge_size == 0 || min_pixels > max_pixels {
        return Err(PyValueError::new_err(
            "need patch_size, merge_size > 0 and min_pixels <= max_pixels",
        ));
    }
    let alpha = vision::Alpha::parse(alpha).map_err(PyValueError::new_err)?;
    let slices: Vec<&[u8]> = images
        .iter()
        .map(|im| match im {
            ImageBytes::Array(a) => a
                .as_slice()
                .map_err(|e| PyValueError::new_err(e.to_string())),
            ImageBytes::Bytes(b) => Ok(b.as_bytes()),
        })
        .collect::<PyResult<_>>()?;
    let factor = patch_size * merge_size;
    let row = 3 * (patch_size * patch_size) as usize;
    // Sizes come from the headers, so every image can be decoded straight into its slice of
    // one preallocated output (no per-image buffers, no concatenation copy).
    let limits = Limits::default();
    let grids: Vec<(u32, u32)> = slices
        .iter()
        .enumerate()
        .map(|(i, bytes)| {
            let info = packer::image::probe(bytes).map_err(|e| format!("image {i}: {e}"))?;
            let (w, h) = vision::upright_size(&info);
            bucketer::smart_resize(h, w, factor, min_pixels, max_pixels)
                .map_err(|e| format!("image {i}: {e}"))
        })
        .collect::<Result<_, String>>()
        .map_err(PyValueError::new_err)?;
    let sizes: Vec<usize> = grids
        .iter()
        .map(|(h, w)| (h / patch_size) as usize * (w / patch_size) as usize * row)
        .collect();
    let mut flat = vec![0f32; sizes.iter().sum()];
    let mut parts: Vec<&mut [f32]> = Vec::with_capacity(sizes.len());
    let mut rest = flat.as_mut_slice();
    for n in &sizes {
        let (head, tail) = rest.split_at_mut(*n);
        parts.push(head);
        rest = tail;
    }
    let pool = decode_pool().map_err(PyValueError::new_err)?;
    py.detach(|| {
        pool.install(|| {
            parts
                .into_par_iter()
                .zip(slices.par_iter())
                .zip(grids.par_iter())
                .enumerate()
                .try_for_each(|(i, ((out, bytes), (h, w)))| {
                    let rgb = vision::decode_rgb(bytes, &limits, alpha)
                        .map_err(|e| format!("image {i}: {e}"))?;
                    let (hh, ww) = bucketer::smart_resize(
                        rgb.height, rgb.width, factor, min_pixels, max_pixels,
                    )
                    .map_err(|e| format!("image {i}: {e}"))?;
                    if (hh, ww) != (*h, *w) {
                        return Err(format!("image {i}: decoded size differs from its header"));
                    }
                    vision::pixel_values_into(&rgb, *h, *w, patch_size, merge_size, out);
                    Ok(())
                })
        })
    })
    .map_err(PyValueError::new_err)?;
    let grids: Vec<i64> = grids
        .iter()
        .flat_map(|(h, w)| [1, (h / patch_size) as i64, (w / patch_size) as i64])
        .collect();
    let (n, n_images) = (flat.len() / row, grids.len() / 3);
    let pv = PyArray1::from_vec(py, flat).reshape([n, row])?;
    let grid = PyArray1::from_vec(py, grids).reshape([n_images, 3])?;
    Ok((pv.into_any(), grid.into_any()))
}

/// `input_ids` / `labels` of samples (the packer's `LengthCounter` rendering).
#[pyclass(module = "llava_ov15._native", frozen)]
pub struct SampleTokenizer {
    inner: LengthCounter,
}

#[pymethods]
impl SampleTokenizer {
    #[new]
    #[pyo3(signature = (tokenizer, *, min_pixels=3136, max_pixels=2_560_000, patch_size=14,
        merge_size=2, system=Some("You are a helpful assistant.".to_string()),
        caption_prompt=String::new(), caption_format="pretrain", eos_token=None))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        tokenizer: PathBuf,
        min_pixels: u64,
        max_pixels: u64,
        patch_size: u32,
        merge_size: u32,
        system: Option<String>,
        caption_prompt: String,
        caption_format: &str,
        eos_token: Option<String>,
    ) -> PyResult<Self> {
        let template =
            crate::lengths::template_options(system, caption_prompt, caption_format, eos_token)?;
        let inner = crate::lengths::new_counter(
            tokenizer, min_pixels, max_pixels, patch_size, merge_size, template,
        )?;
        Ok(SampleTokenizer { inner })
    }

    /// Tokenise a per-sample json document (or a pack: each sub-sample's `sample`, whose
    /// recorded `length` must match). Returns `(input_ids int64, labels int64, seq_lens,
    /// image_tokens)`; `seq_lens` has one entry per (sub-)sample.
    fn tokenize<'py>(&self, py: Python<'py>, doc: &[u8]) -> PyResult<PyTokenized<'py>> {
        let (ids, labels, lens, toks) = py
            .detach(|| self.tokenize_doc(doc))
            .map_err(PyValueError::new_err)?;
        Ok((
            PyArray1::from_vec(py, ids).into_any(),
            PyArray1::from_vec(py, labels).into_any(),
            lens,
            toks,
        ))
    }
}

/// `(input_ids, labels, seq_lens, image_tokens)` as handed to Python.
type PyTokenized<'py> = (Bound<'py, PyAny>, Bound<'py, PyAny>, Vec<u32>, Vec<u32>);
type TokenizedDoc = (Vec<i64>, Vec<i64>, Vec<u32>, Vec<u32>);

impl SampleTokenizer {
    fn tokenize_doc(&self, doc: &[u8]) -> Result<TokenizedDoc, String> {
        let v: Value = serde_json::from_slice(doc).map_err(|e| format!("sample json: {e}"))?;
        let subs: Vec<(&Value, Option<u64>)> =
            if v.get("kind").and_then(Value::as_str) == Some("pack") {
                v.get("samples")
                    .and_then(Value::as_array)
                    .ok_or("pack without samples")?
                    .iter()
                    .map(|s| {
                        Ok((
                            s.get("sample").ok_or("pack entry without sample")?,
                            s.get("length").and_then(Value::as_u64),
                        ))
                    })
                    .collect::<Result<_, String>>()?
            } else {
                vec![(&v, None)]
            };
        let (mut ids, mut labels, mut lens, mut toks) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for (i, (s, recorded)) in subs.into_iter().enumerate() {
            let t = self
                .inner
                .tokenize(s)
                .map_err(|e| format!("sample {i}: {e}"))?;
            let n = t.input_ids.len() as u64;
            if let Some(l) = recorded.filter(|&l| l != n) {
                return Err(format!(
                    "sub-sample {i}: the packer recorded length {l} but tokenisation gives {n} (different tokenizer or min/max pixels?)"
                ));
            }
            ids.extend(t.input_ids.iter().map(|&x| x as i64));
            labels.extend(t.labels);
            lens.push(n as u32);
            toks.extend(t.image_tokens);
        }
        Ok((ids, labels, lens, toks))
    }
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("ShardError", m.py().get_type::<ShardError>())?;
    m.add_class::<ShardReader>()?;
    m.add_class::<MappedShard>()?;
    m.add_class::<SampleTokenizer>()?;
    m.add_function(wrap_pyfunction!(preprocess_images, m)?)?;
    Ok(())
}

//! `LengthCounter`: sequence lengths of samples (chat template + tokenizer + smart_resize),
//! the one implementation shared by the packer and the training loader.
use std::path::PathBuf;

use bucketer::{CaptionFormat, LengthCounter as Counter, TemplateOptions, VisionConfig};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyDict;

#[pyclass(module = "llava_ov15._native", frozen)]
pub struct LengthCounter {
    inner: Counter,
}

fn value_err(e: impl ToString) -> PyErr {
    PyValueError::new_err(e.to_string())
}

/// The training-string options (`system`, `caption_prompt`, `caption_format`, `eos_token`)
/// as given from Python.
pub(crate) fn template_options(
    system: Option<String>,
    caption_prompt: String,
    caption_format: &str,
    eos_token: Option<String>,
) -> PyResult<TemplateOptions> {
    Ok(TemplateOptions {
        system,
        caption_prompt,
        caption_format: caption_format.parse::<CaptionFormat>().map_err(value_err)?,
        eos_token,
    })
}

/// A validated `bucketer::LengthCounter` (shared by `LengthCounter` and `SampleTokenizer`).
pub(crate) fn new_counter(
    tokenizer: PathBuf,
    min_pixels: u64,
    max_pixels: u64,
    patch_size: u32,
    merge_size: u32,
    template: TemplateOptions,
) -> PyResult<Counter> {
    if patch_size == 0 || merge_size == 0 || min_pixels > max_pixels {
        return Err(value_err(
            "need patch_size, merge_size > 0 and min_pixels <= max_pixels",
        ));
    }
    let vision = VisionConfig {
        patch_size,
        merge_size,
        min_pixels,
        max_pixels,
    };
    Counter::from_file(&tokenizer, vision, template).map_err(value_err)
}

#[pymethods]
impl LengthCounter {
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
        let template = template_options(system, caption_prompt, caption_format, eos_token)?;
        let inner = new_counter(
            tokenizer, min_pixels, max_pixels, patch_size, merge_size, template,
        )?;
        Ok(LengthCounter { inner })
    }

    /// The caption format (`"pretrain"` or `"chat"`).
    #[getter]
    fn caption_format(&self) -> &'static str {
        self.inner.template.caption_format.as_str()
    }

    /// The eos token ending pretraining-form captions (resolved from the tokenizer's
    /// `tokenizer_config.json` when not given).
    #[getter]
    fn eos_token(&self) -> String {
        self.inner.eos_token().to_string()
    }

    /// Length of one per-sample JSON document (str/bytes as stored in the shard).
    fn sample_length<'py>(&self, py: Python<'py>, sample: &[u8]) -> PyResult<Bound<'py, PyDict>> {
        let v: serde_json::Value = serde_json::from_slice(sample).map_err(value_err)?;
        let l = py
            .detach(|| self.inner.sample_length(&v))
            .map_err(value_err)?;
        let d = PyDict::new(py);
        d.set_item("total", l.total)?;
        d.set_item("text_tokens", l.text_tokens)?;
        d.set_item("special_tokens", l.special_tokens)?;
        d.set_item("image_tokens", l.image_tokens)?;
        d.set_item("image_patches", l.image_patches)?;
        d.set_item("image_sizes", l.image_sizes)?;
        Ok(d)
    }

    /// Total lengths of many documents at once (GIL released).
    fn lengths(&self, py: Python<'_>, samples: Vec<Vec<u8>>) -> PyResult<Vec<u32>> {
        py.detach(|| {
            samples
                .iter()
                .map(|s| {
                    let v: serde_json::Value =
                        serde_json::from_slice(s).map_err(|e| e.to_string())?;
                    self.inner
                        .sample_length(&v)
                        .map(|l| l.total)
                        .map_err(|e| e.to_string())
                })
                .collect::<Result<Vec<_>, _>>()
        })
        .map_err(PyValueError::new_err)
    }

    /// (resized_height, resized_width, vit_patches, llm_tokens) for an image of this size.
    fn image_grid(&self, width: u32, height: u32) -> PyResult<(u32, u32, u64, u32)> {
        let g = self
            .inner
            .vision
            .image_grid(width, height)
            .map_err(value_err)?;
        Ok((g.height, g.width, g.patches, g.tokens))
    }

    /// Token ids of a text (special tokens inside it honoured, none added).
    fn encode(&self, py: Python<'_>, text: &str) -> PyResult<Vec<u32>> {
        py.detach(|| self.inner.encode(text)).map_err(value_err)
    }
}

/// Exact Qwen2-VL `smart_resize` → (height, width).
#[pyfunction]
#[pyo3(signature = (height, width, factor=28, min_pixels=3136, max_pixels=2_560_000))]
fn smart_resize(
    height: u32,
    width: u32,
    factor: u32,
    min_pixels: u64,
    max_pixels: u64,
) -> PyResult<(u32, u32)> {
    bucketer::smart_resize(height, width, factor, min_pixels, max_pixels).map_err(value_err)
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<LengthCounter>()?;
    m.add_function(wrap_pyfunction!(smart_resize, m)?)?;
    Ok(())
}

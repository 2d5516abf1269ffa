//! `probe_image` / `image_hashes`: thin wrappers over `packer::image`, GIL released while working.

use packer::image::{self as img, ImageError, Limits, PhashMode};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyDict;

fn reject(e: ImageError) -> PyErr {
    PyValueError::new_err(e.to_string())
}

fn format_name(f: img::ImageFormat) -> &'static str {
    match f {
        img::ImageFormat::Jpeg => "jpeg",
        img::ImageFormat::Png => "png",
        img::ImageFormat::Webp => "webp",
        img::ImageFormat::Gif => "gif",
        img::ImageFormat::Bmp => "bmp",
        img::ImageFormat::Tiff => "tiff",
    }
}

/// Header-only probe: `{format, width, height, orientation, color, animated}`.
#[pyfunction]
fn probe_image<'py>(py: Python<'py>, data: &[u8]) -> PyResult<Bound<'py, PyDict>> {
    let info = py.detach(|| img::probe(data)).map_err(reject)?;
    let d = PyDict::new(py);
    d.set_item("format", format_name(info.format))?;
    d.set_item("width", info.width)?;
    d.set_item("height", info.height)?;
    d.set_item("orientation", info.orientation)?;
    d.set_item("color", info.color)?;
    d.set_item("animated", info.animated)?;
    Ok(d)
}

/// `mode=` of the hashing functions: the build's phash modes that hash ("off" does not).
pub(crate) fn hash_mode(mode: &str) -> PyResult<PhashMode> {
    match mode {
        "exact" => Ok(PhashMode::Exact),
        "fast" => Ok(PhashMode::Fast),
        other => Err(PyValueError::new_err(format!(
            "mode must be 'exact' or 'fast', not {other:?}"
        ))),
    }
}

/// Perceptual hashes as 16-hex-digit strings (`str(imagehash.phash(...))` format):
/// `{"phash": ..., "dhash": ... or None}`. `mode` is "exact" or "fast".
#[pyfunction]
#[pyo3(signature = (data, mode = "exact", dhash = true))]
fn image_hashes<'py>(
    py: Python<'py>,
    data: &[u8],
    mode: &str,
    dhash: bool,
) -> PyResult<Bound<'py, PyDict>> {
    let mode = hash_mode(mode)?;
    let a = py
        .detach(|| img::analyze(data, mode, dhash, &Limits::default()))
        .map_err(reject)?;
    let d = PyDict::new(py);
    d.set_item("phash", a.phash.map(|h| format!("{h:016x}")))?;
    d.set_item("dhash", a.dhash.map(|h| format!("{h:016x}")))?;
    Ok(d)
}

/// Add this module's functions to `_native`.
pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(probe_image, m)?)?;
    m.add_function(wrap_pyfunction!(image_hashes, m)?)?;
    Ok(())
}

//! Python bindings (`llava_ov15._native`). Thin: argument conversion, GIL release, error mapping.
use pyo3::prelude::*;

mod image;

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    image::register(m)?;
    Ok(())
}

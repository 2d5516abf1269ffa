//! Python bindings (`llava_ov15._native`). Thin by design: argument conversion, GIL release
//! around heavy work, and mapping typed Rust errors onto a few Python exceptions:
//! `ValueError` (bad option), `InputError`, `OutputError`, `ResumeError` (all `PackError`s).
use pyo3::prelude::*;

mod build;
mod image;
mod lengths;
mod loader;
mod pack;

pyo3::create_exception!(
    _native,
    PackError,
    pyo3::exceptions::PyException,
    "A llava-pack job failed."
);
pyo3::create_exception!(
    _native,
    InputError,
    PackError,
    "The input could not be read."
);
pyo3::create_exception!(
    _native,
    OutputError,
    PackError,
    "The output could not be written."
);
pyo3::create_exception!(
    _native,
    ResumeError,
    PackError,
    "A job could not be resumed."
);

/// Map a job-level Rust error to its Python exception.
pub(crate) fn to_py_err(e: packer::PackError) -> PyErr {
    use packer::PackError as E;
    let msg = e.to_string();
    match e {
        E::InvalidOption(m) => pyo3::exceptions::PyValueError::new_err(m),
        E::Input { .. } => InputError::new_err(msg),
        E::Output { .. } => OutputError::new_err(msg),
        E::Resume(_) => ResumeError::new_err(msg),
        E::Cancelled => pyo3::exceptions::PyKeyboardInterrupt::new_err(msg),
    }
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add("FORMAT_VERSION", packer::FORMAT_VERSION)?;
    m.add("PackError", py.get_type::<PackError>())?;
    m.add("InputError", py.get_type::<InputError>())?;
    m.add("OutputError", py.get_type::<OutputError>())?;
    m.add("ResumeError", py.get_type::<ResumeError>())?;
    build::register(m)?;
    lengths::register(m)?;
    image::register(m)?;
    pack::register(m)?;
    loader::register(m)?;
    Ok(())
}

//! Python bindings (`llava_ov15._native`). Thin by design: argument conversion, GIL release
//! around heavy work, and mapping typed Rust errors onto a few Python exceptions:
//! `ValueError` (bad option), `InputError`, `OutputError`, `ResumeError` (all `PackError`s).
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

mod build;
mod dedup;
mod image;
mod lengths;
mod loader;
mod pack;
mod ray_build;
mod ray_dedup;
mod ray_pack;

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

/// Run `job` on its own thread with the GIL released; Ctrl-C sets the cancel flag.
pub(crate) fn run_cancellable<T: Send + 'static>(
    py: Python<'_>,
    name: &str,
    job: impl FnOnce(&AtomicBool) -> packer::Result<T> + Send + 'static,
) -> PyResult<T> {
    let cancel = Arc::new(AtomicBool::new(false));
    let (tx, rx) = crossbeam_channel::bounded(1);
    let job_cancel = cancel.clone();
    let handle = std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            let _ = tx.send(job(&job_cancel));
        })
        .map_err(|e| PyValueError::new_err(format!("cannot start {name} thread: {e}")))?;
    let mut interrupted: Option<PyErr> = None;
    let result = loop {
        match py.detach(|| rx.recv_timeout(Duration::from_millis(100))) {
            Ok(r) => break r,
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => {
                if interrupted.is_none() {
                    if let Err(e) = py.check_signals() {
                        cancel.store(true, Ordering::Relaxed);
                        interrupted = Some(e);
                    }
                }
            }
            Err(crossbeam_channel::RecvTimeoutError::Disconnected) => {
                return Err(PyValueError::new_err(format!("{name} thread panicked")));
            }
        }
    };
    let _ = handle.join();
    if let Some(e) = interrupted {
        return Err(e);
    }
    result.map_err(crate::to_py_err)
}

/// `progress=` of the long-running jobs.
pub(crate) fn parse_progress(s: &str) -> PyResult<packer::Progress> {
    match s {
        "auto" => Ok(packer::Progress::Auto),
        "bar" => Ok(packer::Progress::Bar),
        "log" => Ok(packer::Progress::Log),
        "quiet" => Ok(packer::Progress::Quiet),
        _ => Err(PyValueError::new_err(format!(
            "--progress must be auto, bar, log or quiet, not {s:?}"
        ))),
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
    ray_pack::register(m)?;
    loader::register(m)?;
    dedup::register(m)?;
    ray_dedup::register(m)?;
    Ok(())
}

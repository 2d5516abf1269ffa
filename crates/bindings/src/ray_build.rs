//! The distributed build's phases (`packer::build::run_ray_phase`), reached through
//! `build(..., ray_phase=json)` so that the options are parsed by the one `build` signature:
//! `{"phase": "prepare"|"scan"|"plan"|"write"|"commit", …}`. Python (Ray) only orchestrates.
use packer::BuildOptions;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

/// Run a phase with the GIL released; its JSON answer (scan metadata for `scan`).
pub(crate) fn run(py: Python<'_>, opts: BuildOptions, phase: &str) -> PyResult<String> {
    let phase: serde_json::Value = serde_json::from_str(phase)
        .map_err(|e| PyValueError::new_err(format!("ray_phase is not JSON: {e}")))?;
    py.detach(move || packer::build::run_ray_phase(&opts, &phase))
        .map_err(crate::to_py_err)
}

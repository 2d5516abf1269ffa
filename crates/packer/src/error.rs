//! Job-level errors. Per-sample problems are not errors: they become rejects
//! (see [`crate::build`]) so that a bad image never stops a multi-million-line job.

use std::path::PathBuf;
use thiserror::Error;

pub type Result<T, E = PackError> = std::result::Result<T, E>;

#[derive(Debug, Error)]
pub enum PackError {
    /// A command-line/API option is invalid (maps to Python `ValueError`).
    #[error("invalid option: {0}")]
    InvalidOption(String),
    /// The input cannot be opened or read as a whole (maps to `InputError`).
    #[error("input error: {path}: {message}")]
    Input { path: PathBuf, message: String },
    /// The output directory cannot be created or written (maps to `OutputError`).
    #[error("output error: {path}: {message}")]
    Output { path: PathBuf, message: String },
    /// `--resume` found state that does not belong to this job (maps to `ResumeError`).
    #[error("cannot resume: {0}")]
    Resume(String),
    /// The job was interrupted (Ctrl-C); a checkpoint allows `--resume`.
    #[error("interrupted; rerun with --resume to continue")]
    Cancelled,
}

impl PackError {
    pub fn input(path: impl Into<PathBuf>, message: impl ToString) -> Self {
        PackError::Input {
            path: path.into(),
            message: message.to_string(),
        }
    }
    pub fn output(path: impl Into<PathBuf>, message: impl ToString) -> Self {
        PackError::Output {
            path: path.into(),
            message: message.to_string(),
        }
    }
}

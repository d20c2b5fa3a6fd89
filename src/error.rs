//! The library's error type: every variant carries the facts a user needs (which file,
//! which tensor, what was expected) and its message says how to fix the problem.

use std::path::{Path, PathBuf};

/// Errors raised by the igpt library. The binary wraps them with `anyhow` context.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The OS error is part of the message and not a `source`: printed as a chain, it
    /// would appear twice.
    #[error("{}: {err}{}", path.display(), io_advice(err))]
    Io { path: PathBuf, err: std::io::Error },

    #[error("{what}: invalid configuration: {msg}")]
    Config { what: String, msg: String },

    #[error("{}: tensor `{name}` is missing (the checkpoint does not match config.json; re-export it with save_pretrained or `igpt` save)", path.display())]
    MissingTensor { path: PathBuf, name: String },

    #[error("{}: unexpected tensor `{name}` (not part of an ImageGPT model of this config; check n_layer and the model class in config.json)", path.display())]
    UnexpectedTensor { path: PathBuf, name: String },

    #[error("{}: tensor `{name}` has shape {got:?}, expected {expected:?} (config.json does not match the weights)", path.display())]
    ShapeMismatch { path: PathBuf, name: String, expected: Vec<usize>, got: Vec<usize> },

    #[error("{}: {msg}", path.display())]
    Format { path: PathBuf, msg: String },

    #[error("{}: not a readable image ({msg}); igpt reads PNG and JPEG files", path.display())]
    Image { path: PathBuf, msg: String },

    #[error("{0}")]
    Invalid(String),

    /// A device (`--device`) this build or machine cannot use.
    #[error("{device}: {msg}")]
    Device { device: String, msg: String },
}

/// The advice added to an OS error that has a usual fix.
fn io_advice(err: &std::io::Error) -> &'static str {
    match err.kind() {
        std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded => {
            " (the disk is full: free some space or write elsewhere, then run the command again; what igpt wrote before, such as the last checkpoint, is intact)"
        }
        _ => "",
    }
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub fn io(path: impl AsRef<Path>, source: std::io::Error) -> Self {
        Error::Io { path: path.as_ref().to_path_buf(), err: source }
    }
    pub fn format(path: impl AsRef<Path>, msg: impl Into<String>) -> Self {
        Error::Format { path: path.as_ref().to_path_buf(), msg: msg.into() }
    }
    pub fn config(what: impl Into<String>, msg: impl Into<String>) -> Self {
        Error::Config { what: what.into(), msg: msg.into() }
    }
}

thread_local! {
    static CONTAINING: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs `f`, turning a panic inside it into a format error on `path`. For third-party
/// readers that panic on some corrupt files (the parquet crate does); igpt's own code
/// returns errors instead. While `f` runs, [`containing_panics`] is true on this thread, so
/// the binary's panic hook can stay quiet about a panic that becomes an error.
pub fn contain_panics<T>(path: &Path, f: impl FnOnce() -> Result<T>) -> Result<T> {
    let was = CONTAINING.with(|c| c.replace(true));
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    CONTAINING.with(|c| c.set(was));
    r.unwrap_or_else(|p| {
        let msg = p.downcast_ref::<&str>().map(|s| s.to_string()).or_else(|| p.downcast_ref::<String>().cloned());
        Err(Error::format(path, format!("corrupt file: its reader failed ({})", msg.unwrap_or_default())))
    })
}

/// Whether this thread is inside [`contain_panics`].
pub fn containing_panics() -> bool {
    CONTAINING.with(|c| c.get())
}

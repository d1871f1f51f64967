//! Checkpoints: safetensors files with PyTorch's state_dict names.

/// Errors reading, writing or applying a checkpoint.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("{path}: {message}")]
    Format { path: String, message: String },
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    /// Like PyTorch's strict `load_state_dict`: every problem at once.
    #[error("error(s) in loading state_dict from {path}: {}", problems.join("; "))]
    Mismatch { path: String, problems: Vec<String> },
}

//! Checkpoints: safetensors files with PyTorch's state_dict names.
//!
//! A checkpoint directory holds two files, both written atomically (temp file + rename):
//! - `checkpoint.safetensors`: exactly the model's `state_dict` (`1.weight`, `2.running_mean`,
//!   `2.num_batches_tracked` as an int64 scalar, …), so `model.load_state_dict(
//!   safetensors.torch.load_file(…))` works in PyTorch, with what eval and predict need in the
//!   header's metadata (architecture, sample shape, loss, normalization).
//! - `training_state.safetensors`: the optimizer state (`<param>.momentum_buffer`,
//!   `<param>.exp_avg`, `<param>.exp_avg_sq`), the step and the data order's position, for
//!   resuming a run exactly.
//!
//! Loading is strict like PyTorch's `load_state_dict`: every missing or unexpected key and
//! every wrong shape or dtype is reported at once. A state_dict saved from a module that holds
//! the Sequential under an attribute (keys such as `layers.1.weight`) loads too.
//!
//! Every file written here records checksums in its metadata (which PyTorch ignores): a
//! CRC-32 of each tensor (its dtype, shape and bytes) under [`TENSOR_CHECKSUMS_KEY`], and one
//! of the rest of the metadata under [`METADATA_CHECKSUM_KEY`]. Reading verifies them when
//! present and names the file and the tensor (or the metadata) that fails.
//!
//! The same tensors and metadata always give the same bytes: the metadata is written in key
//! order, so two identical runs write identical files (`cmp`, a content hash or a cache key
//! can tell them apart only by what they hold).

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use safetensors::Dtype;
use safetensors::tensor::TensorView;

use crate::exec::state::HostState;
use crate::graph::{BufferValues, Graph};
use crate::nn::Sequential;

/// File holding the model's state_dict.
pub const MODEL_FILE: &str = "checkpoint.safetensors";
/// File holding the optimizer state and the run's position.
pub const TRAINING_FILE: &str = "training_state.safetensors";
/// Metadata key of the tensors' checksums: a JSON object from tensor name to CRC-32 (8 hex
/// digits) of its dtype, shape and bytes.
pub const TENSOR_CHECKSUMS_KEY: &str = "wgnn.crc32.tensors";
/// Metadata key of the CRC-32 of every other metadata entry.
pub const METADATA_CHECKSUM_KEY: &str = "wgnn.crc32.metadata";
/// The largest header [`StateDict::read_metadata`] reads.
const MAX_HEADER_BYTES: u64 = 100 << 20;

/// Errors reading, writing or applying a checkpoint.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
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
    /// A tensor, or the metadata, whose bytes no longer match the checksum written with them.
    #[error(
        "{path}: {what} does not match its checksum (written {stored}, now {computed}): the file is corrupt or was edited"
    )]
    Checksum {
        path: String,
        /// `tensor "1.weight"`, or `the metadata`.
        what: String,
        stored: String,
        computed: String,
    },
    /// A model that cannot be saved there, or not with every setting it has: what and why.
    #[error("{path}: cannot save the model: {message}")]
    Unsaveable { path: String, message: String },
    /// Parameters or running statistics that are NaN or infinite.
    #[error(
        "{path}: {count} non-finite value(s), the first {tensor}[{index}] = {value}: the run diverged before this checkpoint was written"
    )]
    NonFinite {
        path: String,
        tensor: String,
        index: usize,
        value: f32,
        count: usize,
    },
}

/// A tensor's values as stored.
#[derive(Clone, Debug, PartialEq)]
pub enum TensorData {
    F32(Vec<f32>),
    I64(Vec<i64>),
}

/// One entry of a state dict.
#[derive(Clone, Debug, PartialEq)]
pub struct StateTensor {
    pub shape: Vec<usize>,
    pub data: TensorData,
    /// The dtype in the file (F32, F64, I64, …), for messages.
    pub dtype: String,
}

impl StateTensor {
    pub fn f32(shape: Vec<usize>, data: Vec<f32>) -> Self {
        Self {
            shape,
            data: TensorData::F32(data),
            dtype: "F32".into(),
        }
    }

    pub fn i64_scalar(value: i64) -> Self {
        Self::i64(vec![], vec![value])
    }

    /// An int64 tensor of `shape` (`[]` for a scalar).
    pub fn i64(shape: Vec<usize>, data: Vec<i64>) -> Self {
        Self {
            shape,
            data: TensorData::I64(data),
            dtype: "I64".into(),
        }
    }
}

/// Named tensors and string metadata, as in a safetensors file.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct StateDict {
    pub tensors: BTreeMap<String, StateTensor>,
    pub metadata: BTreeMap<String, String>,
    /// Where it came from, for messages.
    pub source: String,
    /// The file carried checksums and every one matched ([`StateDict::from_bytes`]).
    pub checksummed: bool,
}

impl StateDict {
    /// Reads a safetensors file.
    pub fn read(path: &Path) -> Result<Self, CheckpointError> {
        let bytes = std::fs::read(path).map_err(|source| CheckpointError::Io {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_bytes(&bytes, path)
    }

    /// The string metadata of a safetensors file, reading its header only (not the tensors),
    /// its checksum verified when the file carries one: what a file says about itself, at
    /// the cost of its header however large its tensors.
    pub fn read_metadata(path: &Path) -> Result<BTreeMap<String, String>, CheckpointError> {
        use std::io::Read;
        let source = path.display().to_string();
        let io = |source_error| CheckpointError::Io {
            path: source.clone(),
            source: source_error,
        };
        let format = |message: String| CheckpointError::Format {
            path: source.clone(),
            message,
        };
        let mut file = std::fs::File::open(path).map_err(io)?;
        let size = file.metadata().map_err(io)?.len();
        let mut len = [0u8; 8];
        file.read_exact(&mut len)
            .map_err(|_| format("shorter than a safetensors header".into()))?;
        let len = u64::from_le_bytes(len);
        if len > size.saturating_sub(8) || len > MAX_HEADER_BYTES {
            return Err(format(format!(
                "a header of {len} bytes in a file of {size} bytes (at most {MAX_HEADER_BYTES} are read)"
            )));
        }
        let mut header = vec![0u8; len as usize];
        file.read_exact(&mut header).map_err(io)?;
        let value: serde_json::Value = serde_json::from_slice(&header)
            .map_err(|e| format(format!("the header is not JSON: {e}")))?;
        let mut strings = BTreeMap::new();
        if let Some(entries) = value.get("__metadata__") {
            let entries = entries
                .as_object()
                .ok_or_else(|| format("__metadata__ is not an object".into()))?;
            for (key, value) in entries {
                let value = value
                    .as_str()
                    .ok_or_else(|| format(format!("metadata {key:?} is not a string")))?;
                strings.insert(key.clone(), value.to_string());
            }
        }
        strings.remove(TENSOR_CHECKSUMS_KEY);
        if let Some(want) = strings.remove(METADATA_CHECKSUM_KEY) {
            let got = metadata_checksum(&strings);
            if want != hex(got) {
                return Err(CheckpointError::Checksum {
                    path: source.clone(),
                    what: "the metadata".into(),
                    stored: want,
                    computed: hex(got),
                });
            }
        }
        Ok(strings)
    }

    /// Parses safetensors bytes; any corruption is an error, never a panic.
    pub fn from_bytes(bytes: &[u8], path: &Path) -> Result<Self, CheckpointError> {
        let source = path.display().to_string();
        let format = |message: String| CheckpointError::Format {
            path: source.clone(),
            message,
        };
        let (header_len, metadata) = crate::data::safetensors::read_metadata(bytes, path)
            .map_err(|e| format(without_path(e)))?;
        let body = 8usize
            .checked_add(header_len)
            .and_then(|start| bytes.get(start..))
            .ok_or_else(|| format("header length points past the end of the file".into()))?;
        let mut strings: BTreeMap<String, String> = metadata
            .metadata()
            .clone()
            .unwrap_or_default()
            .into_iter()
            .collect();
        let stored_tensors = strings.remove(TENSOR_CHECKSUMS_KEY);
        let stored_metadata = strings.remove(METADATA_CHECKSUM_KEY);
        let mut stored: Option<BTreeMap<String, String>> = match &stored_tensors {
            Some(json) => Some(serde_json::from_str(json).map_err(|e| {
                format(format!(
                    "metadata {TENSOR_CHECKSUMS_KEY:?} is not a JSON object of checksums: {e}"
                ))
            })?),
            None => None,
        };
        let mismatch = |what: String, stored: &str, computed: u32| CheckpointError::Checksum {
            path: source.clone(),
            what,
            stored: stored.to_string(),
            computed: hex(computed),
        };
        if let Some(want) = &stored_metadata {
            let got = metadata_checksum(&strings);
            if *want != hex(got) {
                return Err(mismatch("the metadata".into(), want, got));
            }
        }
        let mut names: Vec<String> = metadata.tensors().into_keys().collect();
        names.sort();
        let mut tensors = BTreeMap::new();
        for name in names {
            let (info, data) = crate::data::safetensors::tensor(&metadata, body, &name, path)
                .map_err(|e| format(without_path(e)))?;
            if let Some(stored) = &mut stored {
                let got = tensor_checksum(&info.dtype.to_string(), &info.shape, data);
                match stored.remove(&name) {
                    Some(want) if want == hex(got) => {}
                    Some(want) => return Err(mismatch(format!("tensor {name:?}"), &want, got)),
                    None => {
                        return Err(mismatch(format!("tensor {name:?}"), "nothing", got));
                    }
                }
            }
            let decoded = match info.dtype {
                Dtype::F32 => TensorData::F32(le_values(data, f32::from_le_bytes)),
                Dtype::F64 => TensorData::F32(
                    le_values(data, f64::from_le_bytes)
                        .into_iter()
                        .map(|v| v as f32)
                        .collect(),
                ),
                Dtype::I64 => TensorData::I64(le_values(data, i64::from_le_bytes)),
                Dtype::I32 => TensorData::I64(
                    le_values(data, i32::from_le_bytes)
                        .into_iter()
                        .map(i64::from)
                        .collect(),
                ),
                Dtype::U8 => TensorData::I64(data.iter().map(|&b| i64::from(b)).collect()),
                other => {
                    return Err(format(format!(
                        "tensor {name:?} has dtype {other}; wgnn reads F32, F64, I64, I32 and U8"
                    )));
                }
            };
            tensors.insert(
                name,
                StateTensor {
                    shape: info.shape.clone(),
                    data: decoded,
                    dtype: info.dtype.to_string(),
                },
            );
        }
        if let Some(missing) = stored.as_ref().and_then(|s| s.keys().next()) {
            return Err(format(format!(
                "tensor {missing:?} has a checksum but is not in the file"
            )));
        }
        Ok(Self {
            tensors,
            checksummed: stored_tensors.is_some() && stored_metadata.is_some(),
            metadata: strings,
            source,
        })
    }

    /// The first NaN or infinite value among the float tensors (in name order), with how
    /// many there are in all: `(tensor, index, value, count)`.
    pub fn first_nonfinite(&self) -> Option<(&str, usize, f32, usize)> {
        let mut first = None;
        let mut count = 0;
        for (name, t) in &self.tensors {
            if let TensorData::F32(values) = &t.data {
                for (i, &v) in values.iter().enumerate() {
                    if !v.is_finite() {
                        count += 1;
                        first.get_or_insert((name.as_str(), i, v));
                    }
                }
            }
        }
        first.map(|(name, i, v)| (name, i, v, count))
    }

    /// Fails with [`CheckpointError::NonFinite`] when a float tensor holds NaN or ±∞.
    pub fn check_finite(&self) -> Result<(), CheckpointError> {
        match self.first_nonfinite() {
            None => Ok(()),
            Some((tensor, index, value, count)) => Err(CheckpointError::NonFinite {
                path: self.source.clone(),
                tensor: tensor.to_string(),
                index,
                value,
                count,
            }),
        }
    }

    /// Serializes to safetensors bytes.
    pub fn to_bytes(&self) -> Result<Vec<u8>, CheckpointError> {
        let encoded: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = self
            .tensors
            .iter()
            .map(|(name, t)| {
                let (dtype, bytes) = match &t.data {
                    TensorData::F32(v) => (Dtype::F32, bytemuck::cast_slice(v).to_vec()),
                    TensorData::I64(v) => (Dtype::I64, bytemuck::cast_slice(v).to_vec()),
                };
                (name.clone(), dtype, t.shape.clone(), bytes)
            })
            .collect();
        let views = encoded
            .iter()
            .map(|(name, dtype, shape, bytes)| {
                TensorView::new(*dtype, shape.clone(), bytes)
                    .map(|v| (name.as_str(), v))
                    .map_err(|e| self.format_error(e.to_string()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let mut metadata = self.metadata.clone();
        metadata.remove(TENSOR_CHECKSUMS_KEY);
        metadata.remove(METADATA_CHECKSUM_KEY);
        let checksums: BTreeMap<&str, String> = encoded
            .iter()
            .map(|(name, dtype, shape, bytes)| {
                (
                    name.as_str(),
                    hex(tensor_checksum(&dtype.to_string(), shape, bytes)),
                )
            })
            .collect();
        let checksums =
            serde_json::to_string(&checksums).map_err(|e| self.format_error(e.to_string()))?;
        let metadata_crc = hex(metadata_checksum(&metadata));
        metadata.insert(TENSOR_CHECKSUMS_KEY.into(), checksums);
        metadata.insert(METADATA_CHECKSUM_KEY.into(), metadata_crc);
        // safetensors takes the metadata as a HashMap, whose order changes from run to run:
        // it writes a placeholder, and the sorted entries go in its place.
        let placeholder = HashMap::from([(String::new(), String::new())]);
        let bytes = safetensors::serialize(views, Some(placeholder))
            .map_err(|e| self.format_error(e.to_string()))?;
        with_sorted_metadata(&bytes, &metadata).map_err(|message| self.format_error(message))
    }

    /// Writes atomically and durably ([`crate::durable::write_atomic`]).
    pub fn write(&self, path: &Path) -> Result<(), CheckpointError> {
        write_atomic(path, &self.to_bytes()?)
    }

    fn format_error(&self, message: String) -> CheckpointError {
        CheckpointError::Format {
            path: self.source.clone(),
            message,
        }
    }
}

/// Safetensors bytes whose header starts with a placeholder `__metadata__` object (one empty
/// key), with `metadata` in its place in key order, so that the same tensors and metadata always give the same
/// bytes. The header stays padded with spaces to a multiple of 8 bytes, as safetensors pads
/// it; the tensors' offsets count from the end of the header and do not move.
fn with_sorted_metadata(
    bytes: &[u8],
    metadata: &BTreeMap<String, String>,
) -> Result<Vec<u8>, String> {
    const PLACEHOLDER: &[u8] = b"{\"__metadata__\":{\"\":\"\"}";
    let unexpected = || "safetensors wrote a header of an unexpected form".to_string();
    let (len, rest) = bytes.split_first_chunk::<8>().ok_or_else(unexpected)?;
    let len = usize::try_from(u64::from_le_bytes(*len)).map_err(|_| unexpected())?;
    let (header, body) = rest.split_at_checked(len).ok_or_else(unexpected)?;
    let tail = header
        .trim_ascii_end()
        .strip_prefix(PLACEHOLDER)
        .ok_or_else(unexpected)?;
    let sorted = serde_json::to_vec(metadata).map_err(|e| e.to_string())?;
    let mut header = Vec::with_capacity(len + sorted.len() + 8);
    header.extend_from_slice(b"{\"__metadata__\":");
    header.extend_from_slice(&sorted);
    header.extend_from_slice(tail);
    header.resize(header.len().next_multiple_of(8), b' ');
    let mut out = Vec::with_capacity(8 + header.len() + body.len());
    out.extend_from_slice(&(header.len() as u64).to_le_bytes());
    out.extend_from_slice(&header);
    out.extend_from_slice(body);
    Ok(out)
}

fn le_values<const N: usize, T>(data: &[u8], decode: fn([u8; N]) -> T) -> Vec<T> {
    data.as_chunks::<N>().0.iter().map(|c| decode(*c)).collect()
}

/// Writes `bytes` to `path` so that a crash or a power cut leaves either the old file or the
/// new one ([`crate::durable::write_atomic`]: temp file, fsync, rename, fsync of the directory).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), CheckpointError> {
    crate::durable::write_atomic(path, bytes).map_err(|source| CheckpointError::Io {
        path: path.display().to_string(),
        source,
    })
}

/// CRC-32 of a tensor as stored: its dtype's name, its shape and its bytes.
fn tensor_checksum(dtype: &str, shape: &[usize], bytes: &[u8]) -> u32 {
    let mut crc = crc32fast::Hasher::new();
    crc.update(dtype.as_bytes());
    for &d in shape {
        crc.update(&(d as u64).to_le_bytes());
    }
    crc.update(bytes);
    crc.finalize()
}

/// CRC-32 of metadata entries, in key order, each `key NUL value NUL`.
fn metadata_checksum(metadata: &BTreeMap<String, String>) -> u32 {
    let mut crc = crc32fast::Hasher::new();
    for (key, value) in metadata {
        crc.update(key.as_bytes());
        crc.update(&[0]);
        crc.update(value.as_bytes());
        crc.update(&[0]);
    }
    crc.finalize()
}

fn hex(crc: u32) -> String {
    format!("{crc:08x}")
}

/// A safetensors error's message without the path the caller prefixes anyway.
fn without_path(error: crate::data::DataError) -> String {
    match error {
        crate::data::DataError::Safetensors { message, .. } => message,
        other => other.to_string(),
    }
}

/// The model's state_dict, in PyTorch's order and names (under `prefix`, usually "").
pub fn model_state_dict(graph: &Graph, state: &HostState, prefix: &str) -> StateDict {
    let mut sd = StateDict::default();
    for (p, values) in graph.params.iter().zip(&state.params) {
        sd.tensors.insert(
            format!("{prefix}{}", p.name),
            StateTensor::f32(p.shape.clone(), values.clone()),
        );
    }
    for (buffer, values) in graph.buffers.iter().zip(&state.buffers) {
        let mut offset = 0;
        for part in &buffer.parts {
            let range = offset..offset + part.len();
            offset = range.end;
            let tensor = match values {
                BufferValues::F32(v) => StateTensor::f32(part.shape.clone(), v[range].to_vec()),
                BufferValues::Count(v) => StateTensor::i64(
                    part.shape.clone(),
                    v[range]
                        .iter()
                        .map(|&c| c.min(i64::MAX as u64) as i64)
                        .collect(),
                ),
            };
            sd.tensors.insert(format!("{prefix}{}", part.name), tensor);
        }
    }
    sd.metadata.insert("format".into(), "pt".into());
    sd
}

/// The prefix every key of `sd` carries in front of the model's own keys (such as
/// `layers.`), or "" when they match as they are.
fn detect_prefix(sd: &StateDict, expected: &[String]) -> String {
    if sd.tensors.keys().any(|k| expected.contains(k)) {
        return String::new();
    }
    let mut prefixes = sd.tensors.keys().filter_map(|key| {
        expected
            .iter()
            .filter_map(|e| key.strip_suffix(e.as_str()))
            .find(|p| p.ends_with('.'))
            .map(str::to_string)
    });
    match prefixes.next() {
        Some(first) if prefixes.all(|p| p == first) => first,
        _ => String::new(),
    }
}

/// Applies a state_dict to the model, strictly: parameters and running statistics replace
/// `base`'s, the optimizer state and step stay. Every mismatch is reported at once.
pub fn apply_state_dict(
    sd: &StateDict,
    sequential: &Sequential,
    graph: &Graph,
    base: &HostState,
) -> Result<HostState, CheckpointError> {
    let expected = sequential.state_dict_keys();
    let prefix = detect_prefix(sd, &expected);
    let mut problems = Vec::new();
    let lookup = |key: &str| sd.tensors.get(&format!("{prefix}{key}"));
    let missing: Vec<&String> = expected.iter().filter(|k| lookup(k).is_none()).collect();
    if !missing.is_empty() {
        problems.push(format!("missing key(s): {}", quoted(missing)));
    }
    let unexpected: Vec<&String> = sd
        .tensors
        .keys()
        .filter(|k| {
            k.strip_prefix(prefix.as_str())
                .is_none_or(|rest| !expected.iter().any(|e| e == rest))
        })
        .collect();
    if !unexpected.is_empty() {
        problems.push(format!("unexpected key(s): {}", quoted(unexpected)));
    }
    let mut float = |key: &str, shape: &[usize]| -> Option<Vec<f32>> {
        let t = lookup(key)?;
        if t.shape != shape {
            problems.push(format!(
                "size mismatch for {key}: the checkpoint has shape {:?}, the model {shape:?}",
                t.shape
            ));
            return None;
        }
        match &t.data {
            TensorData::F32(v) => Some(v.clone()),
            TensorData::I64(_) => {
                problems.push(format!(
                    "dtype mismatch for {key}: {} where a float is expected",
                    t.dtype
                ));
                None
            }
        }
    };
    let mut state = base.clone();
    for (i, p) in graph.params.iter().enumerate() {
        if let Some(v) = float(&p.name, &p.shape) {
            state.params[i] = v;
        }
    }
    // Counters' problems, reported after the floats' (as PyTorch lists them by key order).
    let mut count_problems = Vec::new();
    for (i, buffer) in graph.buffers.iter().enumerate() {
        let mut offset = 0;
        for part in &buffer.parts {
            let range = offset..offset + part.len();
            offset = range.end;
            match &mut state.buffers[i] {
                BufferValues::F32(values) => {
                    if let Some(v) = float(&part.name, &part.shape) {
                        values[range].copy_from_slice(&v);
                    }
                }
                BufferValues::Count(values) => {
                    let key = &part.name;
                    let Some(t) = lookup(key) else { continue };
                    match &t.data {
                        TensorData::I64(_) if t.shape != part.shape => count_problems.push(format!(
                            "size mismatch for {key}: the checkpoint has shape {:?}, the model {:?}",
                            t.shape, part.shape
                        )),
                        TensorData::I64(v) if v.iter().any(|&c| c < 0) => {
                            count_problems.push(format!("{key} is negative"))
                        }
                        TensorData::I64(v) => {
                            for (c, &n) in values[range].iter_mut().zip(v) {
                                *c = n as u64;
                            }
                        }
                        TensorData::F32(_) => count_problems.push(format!(
                            "dtype mismatch for {key}: {} where an integer is expected",
                            t.dtype
                        )),
                    }
                }
            }
        }
    }
    problems.extend(count_problems);
    if problems.is_empty() {
        Ok(state)
    } else {
        Err(CheckpointError::Mismatch {
            path: sd.source.clone(),
            problems,
        })
    }
}

fn quoted(keys: Vec<&String>) -> String {
    keys.iter()
        .map(|k| format!("\"{k}\""))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The optimizer state as named tensors: `<param>.momentum_buffer`, `<param>.exp_avg`, ….
pub fn optimizer_state_dict(graph: &Graph, state: &HostState) -> StateDict {
    let mut sd = StateDict::default();
    let names = &graph.optimizer_states;
    for (k, tensors) in state.optimizer.iter().enumerate() {
        for (p, values) in graph.params.iter().zip(tensors) {
            sd.tensors.insert(
                format!("{}.{}", p.name, names[k]),
                StateTensor::f32(p.shape.clone(), values.clone()),
            );
        }
    }
    sd.metadata.insert("step".into(), state.step.to_string());
    sd
}

/// Restores the optimizer state and step from [`optimizer_state_dict`]'s tensors.
pub fn apply_optimizer_state(
    sd: &StateDict,
    graph: &Graph,
    base: &HostState,
) -> Result<HostState, CheckpointError> {
    let mut problems = Vec::new();
    let mut state = base.clone();
    let names = &graph.optimizer_states;
    for (k, name) in names.iter().enumerate() {
        for (i, p) in graph.params.iter().enumerate() {
            let key = format!("{}.{name}", p.name);
            match sd.tensors.get(&key) {
                None => problems.push(format!("missing key \"{key}\"")),
                Some(t) if t.shape != p.shape => problems.push(format!(
                    "size mismatch for {key}: {:?} vs {:?}",
                    t.shape, p.shape
                )),
                Some(StateTensor {
                    data: TensorData::F32(v),
                    ..
                }) => state.optimizer[k][i] = v.clone(),
                Some(t) => problems.push(format!("dtype mismatch for {key}: {}", t.dtype)),
            }
        }
    }
    let expected = names.len() * graph.params.len();
    if sd.tensors.len() != expected {
        problems.push(format!(
            "{} optimizer tensors, the optimizer keeps {expected} ({} per parameter: {})",
            sd.tensors.len(),
            names.len(),
            names.join(", ")
        ));
    }
    match sd.metadata.get("step").map(|s| s.parse::<u64>()) {
        Some(Ok(step)) => state.step = step,
        _ => problems.push("metadata \"step\" is missing or not a number".into()),
    }
    if problems.is_empty() {
        Ok(state)
    } else {
        Err(CheckpointError::Mismatch {
            path: sd.source.clone(),
            problems,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::{Loss, build};
    use crate::optim::{Optimizer, Sgd};

    fn setup() -> (Sequential, Graph, HostState) {
        let model = Sequential::lecture_mlp(12, 3, 0.1);
        let sgd = Optimizer::Sgd(Sgd {
            momentum: 0.9,
            ..Sgd::default()
        });
        let graph = build(&model, &Loss::default(), &sgd, &[12], 4).unwrap();
        let mut state = HostState::init(&graph, 3);
        // Layer 2's counter, and layer 6's running mean.
        state.buffers[1] = BufferValues::Count(vec![7]);
        if let Some(mean) = state.buffers[2].f32s_mut() {
            mean[2] = 0.25;
        }
        state.optimizer[0][0][5] = 1.5;
        state.step = 9;
        (model, graph, state)
    }

    #[test]
    fn model_and_optimizer_state_round_trip_through_files() {
        let (model, graph, state) = setup();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(MODEL_FILE);
        model_state_dict(&graph, &state, "").write(&path).unwrap();
        let read = StateDict::read(&path).unwrap();
        assert_eq!(
            read.tensors["2.num_batches_tracked"],
            StateTensor::i64_scalar(7)
        );
        assert_eq!(read.metadata["format"], "pt");
        let fresh = HostState::with_params(
            &graph,
            graph.params.iter().map(|p| vec![0.0; p.len()]).collect(),
        );
        let mut loaded = apply_state_dict(&read, &model, &graph, &fresh).unwrap();
        assert_eq!(loaded.params, state.params);
        assert_eq!(loaded.buffers, state.buffers);

        let opt_path = dir.path().join(TRAINING_FILE);
        optimizer_state_dict(&graph, &state)
            .write(&opt_path)
            .unwrap();
        loaded =
            apply_optimizer_state(&StateDict::read(&opt_path).unwrap(), &graph, &loaded).unwrap();
        assert_eq!(loaded, state);
        // No temp files left behind.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2);
    }

    #[test]
    fn metadata_is_read_from_the_header_alone_and_checked() {
        let (_, graph, state) = setup();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(MODEL_FILE);
        let mut sd = model_state_dict(&graph, &state, "");
        sd.metadata.insert("note".into(), "hello".into());
        sd.write(&path).unwrap();
        let read = StateDict::read_metadata(&path).unwrap();
        assert_eq!(read, StateDict::read(&path).unwrap().metadata);
        assert_eq!(read["note"], "hello");
        // One letter of the metadata changed, the header's length kept: the checksum says so.
        let bytes = std::fs::read(&path).unwrap();
        let at = bytes.windows(5).position(|w| w == b"hello").unwrap();
        let mut edited = bytes.clone();
        edited[at] = b'j';
        std::fs::write(&path, &edited).unwrap();
        let err = StateDict::read_metadata(&path).unwrap_err().to_string();
        assert!(
            err.contains("the metadata does not match its checksum"),
            "{err}"
        );
        // A header longer than the file, and a file shorter than a header's length.
        let mut long = bytes.clone();
        long[..8].copy_from_slice(&u64::MAX.to_le_bytes());
        std::fs::write(&path, &long).unwrap();
        let err = StateDict::read_metadata(&path).unwrap_err().to_string();
        assert!(err.contains("a header of"), "{err}");
        std::fs::write(&path, &bytes[..5]).unwrap();
        assert!(StateDict::read_metadata(&path).is_err());
    }

    #[test]
    fn prefixed_keys_load() {
        let (model, graph, state) = setup();
        let sd = model_state_dict(&graph, &state, "layers.");
        assert!(sd.tensors.contains_key("layers.1.weight"));
        let loaded = apply_state_dict(&sd, &model, &graph, &state).unwrap();
        assert_eq!(loaded.params, state.params);
    }

    #[test]
    fn strict_loading_reports_every_problem_at_once() {
        let (model, graph, state) = setup();
        let mut sd = model_state_dict(&graph, &state, "");
        sd.source = "ckpt.safetensors".into();
        sd.tensors.remove("5.bias");
        sd.tensors
            .insert("7.weight".into(), StateTensor::f32(vec![1], vec![0.0]));
        sd.tensors.insert(
            "1.weight".into(),
            StateTensor::f32(vec![64, 13], vec![0.0; 64 * 13]),
        );
        sd.tensors.insert(
            "2.running_var".into(),
            StateTensor {
                shape: vec![64],
                data: TensorData::I64(vec![0; 64]),
                dtype: "I64".into(),
            },
        );
        let err = apply_state_dict(&sd, &model, &graph, &state)
            .unwrap_err()
            .to_string();
        for needle in [
            "ckpt.safetensors",
            "missing key(s): \"5.bias\"",
            "unexpected key(s): \"7.weight\"",
            "size mismatch for 1.weight",
            "[64, 13]",
            "[64, 12]",
            "dtype mismatch for 2.running_var",
        ] {
            assert!(err.contains(needle), "{needle:?} not in {err}");
        }
    }

    #[test]
    fn the_same_state_dict_always_gives_the_same_bytes_with_its_metadata_sorted() {
        let (_, graph, state) = setup();
        let mut sd = model_state_dict(&graph, &state, "");
        for i in 0..40 {
            sd.metadata
                .insert(format!("key {i:02}"), format!("value {i}"));
        }
        let bytes = sd.to_bytes().unwrap();
        // A HashMap's order differs between maps: forty keys would not come out twice alike.
        for _ in 0..10 {
            let again = sd.to_bytes().unwrap();
            let differ = again.iter().zip(&bytes).position(|(a, b)| a != b);
            assert!(again == bytes, "the bytes differ from byte {differ:?} on");
        }
        let len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
        assert_eq!((8 + len) % 8, 0, "the tensors start 8-byte aligned");
        let header = std::str::from_utf8(&bytes[8..8 + len]).unwrap();
        let at = |key: &str| header.find(&format!("\"{key}\"")).unwrap();
        let keys = [
            "format",
            "key 00",
            "key 01",
            "key 39",
            METADATA_CHECKSUM_KEY,
        ];
        assert!(keys.windows(2).all(|w| at(w[0]) < at(w[1])), "{header}");
        assert!(header.starts_with("{\"__metadata__\":{\"format\":\"pt\",\"key 00\""));
        // Both safetensors itself and wgnn, checksums included, read it back.
        let parsed = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        assert_eq!(parsed.len(), sd.tensors.len());
        let read = StateDict::from_bytes(&bytes, Path::new("sorted.safetensors")).unwrap();
        assert!(read.checksummed);
        assert_eq!(
            (read.tensors, read.metadata),
            (sd.tensors.clone(), sd.metadata)
        );
        // No tensors at all: the header is the metadata alone.
        let empty = StateDict::default().to_bytes().unwrap();
        assert!(StateDict::from_bytes(&empty, Path::new("empty")).is_ok());
    }

    #[test]
    fn corrupt_files_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.safetensors");
        std::fs::write(&path, b"\x10\x00\x00\x00\x00\x00\x00\x00{not json").unwrap();
        assert!(matches!(
            StateDict::read(&path),
            Err(CheckpointError::Format { .. })
        ));
        assert!(matches!(
            StateDict::read(&dir.path().join("missing")),
            Err(CheckpointError::Io { .. })
        ));
    }
}

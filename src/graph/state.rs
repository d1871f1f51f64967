//! The host image of a graph's state: parameters, optimizer state, state buffers and the
//! step counter. The CPU executor runs on it, checkpoints are written from it, and the
//! resident GPU state (`crate::exec::state`) uploads and downloads it.

use super::{BufferKind, Graph, StateBuffer, init_parameters};

/// The values of one state buffer (all its parts, back to back).
#[derive(Clone, Debug, PartialEq)]
pub enum BufferValues {
    F32(Vec<f32>),
    /// Counters (`num_batches_tracked`): u32 on the device, int64 in a state_dict.
    Count(Vec<u64>),
}

impl BufferValues {
    /// A buffer at its parts' initial values.
    pub fn initial(buffer: &StateBuffer) -> Self {
        match buffer.kind {
            BufferKind::F32 => Self::F32(
                buffer
                    .parts
                    .iter()
                    .flat_map(|p| std::iter::repeat_n(p.init, p.len()))
                    .collect(),
            ),
            BufferKind::Count => Self::Count(
                buffer
                    .parts
                    .iter()
                    .flat_map(|p| std::iter::repeat_n(p.init as u64, p.len()))
                    .collect(),
            ),
        }
    }

    pub fn len(&self) -> usize {
        match self {
            Self::F32(v) => v.len(),
            Self::Count(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn kind(&self) -> BufferKind {
        match self {
            Self::F32(_) => BufferKind::F32,
            Self::Count(_) => BufferKind::Count,
        }
    }

    /// The floats, for an f32 buffer.
    pub fn f32s(&self) -> Option<&[f32]> {
        match self {
            Self::F32(v) => Some(v),
            Self::Count(_) => None,
        }
    }

    pub fn f32s_mut(&mut self) -> Option<&mut Vec<f32>> {
        match self {
            Self::F32(v) => Some(v),
            Self::Count(_) => None,
        }
    }

    /// The counters, for a count buffer.
    pub fn counts_mut(&mut self) -> Option<&mut Vec<u64>> {
        match self {
            Self::Count(v) => Some(v),
            Self::F32(_) => None,
        }
    }
}

/// The whole training state on the host.
#[derive(Clone, Debug, PartialEq)]
pub struct HostState {
    /// Per parameter, in graph order.
    pub params: Vec<Vec<f32>>,
    /// Optimizer state: `optimizer[k][param]` (SGD: the momentum buffer; Adam: exp_avg,
    /// exp_avg_sq), named by [`Graph::optimizer_states`].
    pub optimizer: Vec<Vec<Vec<f32>>>,
    /// Per state buffer, in graph order (running statistics and their counters).
    pub buffers: Vec<BufferValues>,
    /// Optimizer updates taken so far (the dropout generator's counter, Adam's t).
    pub step: u64,
}

impl HostState {
    /// PyTorch-style initialization from a seed.
    pub fn init(graph: &Graph, seed: u64) -> Self {
        Self::with_params(graph, init_parameters(&graph.params, seed))
    }

    /// Fresh optimizer and buffer state around the given parameters.
    pub fn with_params(graph: &Graph, params: Vec<Vec<f32>>) -> Self {
        let zeros: Vec<Vec<f32>> = graph.params.iter().map(|p| vec![0.0; p.len()]).collect();
        Self {
            params,
            optimizer: vec![zeros; graph.optimizer_states.len()],
            buffers: graph.buffers.iter().map(BufferValues::initial).collect(),
            step: 0,
        }
    }

    /// The values of the state_dict entry `name` among the graph's buffers (a part of one),
    /// as floats (counters converted).
    pub fn buffer_part(&self, graph: &Graph, name: &str) -> Option<Vec<f64>> {
        for (buffer, values) in graph.buffers.iter().zip(&self.buffers) {
            let mut offset = 0;
            for part in &buffer.parts {
                let range = offset..offset + part.len();
                if part.name == name {
                    return Some(match values {
                        BufferValues::F32(v) => {
                            v.get(range)?.iter().map(|&x| f64::from(x)).collect()
                        }
                        BufferValues::Count(v) => v.get(range)?.iter().map(|&x| x as f64).collect(),
                    });
                }
                offset = range.end;
            }
        }
        None
    }
}

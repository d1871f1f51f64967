//! The model's state between host and device: download, upload, and the check that a host
//! state (from a checkpoint, say) fits the graph before any of it is sent.

use crate::error::{Error, Result};
use crate::exec::state::HostState;
use crate::graph::{BufferKind, Graph};

use super::Model;

impl Model {
    /// Downloads the whole state (blocking); member 0's, in a stack.
    pub fn state(&mut self) -> Result<HostState> {
        self.member_state(0)
    }

    /// The gradients of the last training step, named as the parameters are in PyTorch's
    /// state_dict and shaped like them: what each parameter's `.grad` holds after
    /// `loss.backward()` (zeros before the first step). Blocking. Member 0's, in a stack
    /// ([`Model::member_gradients`]).
    pub fn gradients(&mut self) -> Result<Vec<(String, Vec<f32>)>> {
        self.member_gradients(0)
    }

    /// Member `k`'s gradients of the last training step, as [`Model::gradients`].
    pub fn member_gradients(&mut self, k: usize) -> Result<Vec<(String, Vec<f32>)>> {
        self.member(k)?;
        let graph = &self.graphs[&self.config.batch_size];
        let grads = self.state.download_gradients(&self.ctx, graph, k)?;
        self.counters.blocking_readbacks += 1;
        self.in_flight.clear();
        Ok(graph
            .params
            .iter()
            .map(|p| p.name.clone())
            .zip(grads)
            .collect())
    }

    /// The parameter holding element `element` of the flat parameter buffer, and the index
    /// within it: what a [`crate::ops::reduce::NonFiniteUpdate`] names.
    pub fn parameter_at(&self, element: usize) -> Option<(&str, usize)> {
        let layout = &self.state.layout;
        self.graph()
            .params
            .iter()
            .zip(&layout.params)
            .find(|(p, offset)| (**offset..**offset + p.len()).contains(&element))
            .map(|(p, &offset)| (p.name.as_str(), element - offset))
    }

    /// Replaces the whole state (parameters, optimizer state, running stats, step); member
    /// 0's, in a stack.
    pub fn load_state(&mut self, state: &HostState) -> Result<()> {
        self.load_member_state(0, state)
    }
}

/// One way a [`HostState`] does not fit a model.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum StateProblem {
    #[error("{given} parameters given, the model has {expected}")]
    ParameterCount { given: usize, expected: usize },
    #[error("{name}: {len} values for shape {shape:?}")]
    ParameterLength {
        name: String,
        len: usize,
        shape: Vec<usize>,
    },
    #[error(
        "{given} optimizer state tensors per parameter given, the optimizer keeps {expected} ({names})"
    )]
    OptimizerStateCount {
        given: usize,
        expected: usize,
        /// PyTorch's names of the state tensors the optimizer keeps.
        names: String,
    },
    #[error("optimizer state of {name}: {len} values for shape {shape:?}")]
    OptimizerStateLength {
        name: String,
        len: usize,
        shape: Vec<usize>,
    },
    #[error("{given} state buffers given, the model has {expected}")]
    BufferCount { given: usize, expected: usize },
    /// A state buffer (running statistics) of the wrong length or kind.
    #[error("{names}: {len} values of {kind}, expected {expected} of {expected_kind}")]
    BufferLength {
        /// The state_dict names of the buffer's parts.
        names: String,
        len: usize,
        kind: &'static str,
        expected: usize,
        expected_kind: &'static str,
    },
}

/// A state whose tensors do not fit the graph is an error naming each mismatch.
pub(super) fn check_state(graph: &Graph, state: &HostState) -> Result<()> {
    let mut problems = Vec::new();
    if state.params.len() != graph.params.len() {
        problems.push(StateProblem::ParameterCount {
            given: state.params.len(),
            expected: graph.params.len(),
        });
    }
    for (p, v) in graph.params.iter().zip(&state.params) {
        if v.len() != p.len() {
            problems.push(StateProblem::ParameterLength {
                name: p.name.clone(),
                len: v.len(),
                shape: p.shape.clone(),
            });
        }
    }
    if state.optimizer.len() != graph.optimizer_states.len() {
        problems.push(StateProblem::OptimizerStateCount {
            given: state.optimizer.len(),
            expected: graph.optimizer_states.len(),
            names: graph.optimizer_states.join(", "),
        });
    }
    for tensors in &state.optimizer {
        for (p, v) in graph.params.iter().zip(tensors) {
            if v.len() != p.len() {
                problems.push(StateProblem::OptimizerStateLength {
                    name: p.name.clone(),
                    len: v.len(),
                    shape: p.shape.clone(),
                });
            }
        }
    }
    if state.buffers.len() != graph.buffers.len() {
        problems.push(StateProblem::BufferCount {
            given: state.buffers.len(),
            expected: graph.buffers.len(),
        });
    }
    let kind_name = |kind| match kind {
        BufferKind::F32 => "f32",
        BufferKind::Count => "counts",
    };
    for (b, values) in graph.buffers.iter().zip(&state.buffers) {
        if values.len() != b.len() || values.kind() != b.kind {
            let names: Vec<&str> = b.parts.iter().map(|p| p.name.as_str()).collect();
            problems.push(StateProblem::BufferLength {
                names: names.join(", "),
                len: values.len(),
                kind: kind_name(values.kind()),
                expected: b.len(),
                expected_kind: kind_name(b.kind),
            });
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(Error::StateMismatch { problems })
    }
}

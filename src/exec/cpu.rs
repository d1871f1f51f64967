//! The CPU reference executor: the same graph, node by node, through the ops' CPU
//! references. It never touches the GPU; tests hold whole training steps against it and
//! benchmarks use it as the baseline.

use std::collections::HashMap;

use crate::graph::{BuildError, CpuCx, CpuError, Graph, HostState, Mode, Totals};

/// Why the CPU reference could not run a step.
#[derive(Debug, thiserror::Error)]
pub enum CpuRunError {
    /// The graph at this batch size could not be built.
    #[error(transparent)]
    Build(#[from] BuildError),
    /// An op's reference met a state that does not fit it.
    #[error(transparent)]
    Op(#[from] CpuError),
}

/// Builds a model's graph at a batch size.
pub type GraphBuilder = Box<dyn Fn(usize) -> Result<Graph, BuildError>>;

/// A model's graphs (one per batch size seen) with its host state, run on the CPU.
pub struct CpuExecutor {
    /// Builds the graph at another batch size.
    build: GraphBuilder,
    /// The graph at the first batch size; others are built on demand.
    pub graph: Graph,
    graphs: HashMap<usize, Graph>,
    pub state: HostState,
    /// Gradients of the last training step, per parameter.
    pub grads: Vec<Vec<f32>>,
    /// Running loss and accuracy, as the GPU's metrics kernel keeps them.
    pub totals: Totals,
    pub seed: u64,
}

/// What one step produced.
#[derive(Clone, Debug, PartialEq)]
pub struct StepOutput {
    pub logits: Vec<f32>,
    /// The batch's reduced loss.
    pub loss: f32,
}

impl CpuExecutor {
    /// `graph` is the model's graph at some batch size; `build` makes the others (e.g.
    /// `crate::nn::build` of the same Sequential, loss and optimizer).
    pub fn new(build: GraphBuilder, graph: Graph, state: HostState, seed: u64) -> Self {
        let grads = graph.params.iter().map(|p| vec![0.0; p.len()]).collect();
        Self {
            build,
            graphs: HashMap::from([(graph.batch_size, graph.clone())]),
            graph,
            state,
            grads,
            totals: Totals::default(),
            seed,
        }
    }

    /// Runs the graph on one batch: x \[N, features\], class labels \[N\]. In train mode this is
    /// a whole training step (forward, backward, update).
    pub fn run(
        &mut self,
        mode: Mode,
        x: &[f32],
        labels: &[u32],
    ) -> Result<StepOutput, CpuRunError> {
        let rows = labels.len();
        if !self.graphs.contains_key(&rows) {
            let built = (self.build)(rows)?;
            self.graphs.insert(rows, built);
        }
        let g = &self.graphs[&rows];
        let mut values: Vec<Option<Vec<f32>>> = vec![None; g.values.len()];
        values[g.input.0] = Some(x.to_vec());
        let mut loss = f32::NAN;
        for (_, node) in g.nodes_for(mode) {
            let mut cx = CpuCx {
                graph: g,
                mode,
                values: &values,
                labels,
                state: &mut self.state,
                grads: &mut self.grads,
                totals: &mut self.totals,
                loss: &mut loss,
                seed: self.seed,
            };
            let outputs = node.op.run_cpu(node, &mut cx)?;
            for (v, data) in node.outputs_in(mode).iter().zip(outputs) {
                values[v.0] = Some(data);
            }
        }
        Ok(StepOutput {
            logits: values[g.logits.0].clone().unwrap_or_default(),
            loss,
        })
    }
}

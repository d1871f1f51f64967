//! The CPU reference executor: the same graph, node by node, through the ops' CPU
//! references. It never touches the GPU; tests hold whole training steps against it and
//! benchmarks use it as the baseline.

use std::collections::HashMap;

use super::state::HostState;
use crate::graph::{self, BuildError, Graph, Mode, Node};
use crate::nn::Sequential;
use crate::ops::dropout::MaskStream;
use crate::ops::reduce::Totals;

/// A model's graphs (one per batch size seen) with its host state, run on the CPU.
pub struct CpuExecutor {
    sequential: Sequential,
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
    /// `graph` is the model's graph at some batch size; `sequential` builds the others.
    pub fn new(sequential: Sequential, graph: Graph, state: HostState, seed: u64) -> Self {
        let grads = graph.params.iter().map(|p| vec![0.0; p.len()]).collect();
        Self {
            sequential,
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
    pub fn run(&mut self, mode: Mode, x: &[f32], labels: &[u32]) -> Result<StepOutput, BuildError> {
        let rows = labels.len();
        if !self.graphs.contains_key(&rows) {
            let g = &self.graph;
            let built = graph::build_with(
                &self.sequential,
                &g.loss,
                &g.optimizer,
                &g.sample_shape,
                rows,
                g.preprocess.as_ref(),
            )?;
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
            let outputs = node.op.run_cpu(node, &mut cx);
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

/// What an op's CPU reference reads and writes: the values computed so far, the batch's
/// labels, and the executor's host state.
pub struct CpuCx<'a> {
    pub graph: &'a Graph,
    pub mode: Mode,
    /// Every value of the graph, `None` until its node has run.
    pub values: &'a [Option<Vec<f32>>],
    /// The batch's class labels (0/1 for BCE).
    pub labels: &'a [u32],
    pub state: &'a mut HostState,
    /// Gradients of the step, per parameter.
    pub grads: &'a mut [Vec<f32>],
    pub totals: &'a mut Totals,
    /// The batch's reduced loss, written by the loss op.
    pub loss: &'a mut f32,
    /// Seed of the dropout masks.
    pub seed: u64,
}

impl<'a> CpuCx<'a> {
    /// The node's `i`-th input (empty when it was never computed, which a valid graph rules
    /// out).
    pub fn input(&self, node: &Node, i: usize) -> &'a [f32] {
        let values: &'a [Option<Vec<f32>>] = self.values;
        values[node.inputs[i].0].as_deref().unwrap_or(&[])
    }

    /// Rows and columns of the node's `i`-th input.
    pub fn input_shape(&self, node: &Node, i: usize) -> (usize, usize) {
        let v = self.graph.value(node.inputs[i]);
        (v.rows, v.cols)
    }

    /// The optimizer steps taken so far (the dropout generator's counter).
    pub fn step(&self) -> u64 {
        self.state.step
    }

    /// The dropout mask stream of a layer, under this executor's seed.
    pub fn stream(&self, layer: u32) -> MaskStream {
        MaskStream {
            seed: self.seed,
            layer,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::{CrossEntropyLoss, Loss, Sequential};
    use crate::optim::{Optimizer, Sgd};

    /// The CPU reference graph's parameter gradients (autodiff through Linear, BatchNorm,
    /// ReLU and cross-entropy) against central finite differences of its loss.
    #[test]
    fn whole_model_gradients_match_finite_differences() {
        let model = Sequential::lecture_mlp(5, 3, 0.0);
        // lr 0: a "training step" computes the gradients and leaves the parameters.
        let sgd = Optimizer::Sgd(Sgd {
            lr: 0.0,
            ..Sgd::default()
        });
        let loss = Loss::CrossEntropy(CrossEntropyLoss::new());
        let graph = graph::build(&model, &loss, &sgd, &[5], 6).unwrap();
        let state = HostState::init(&graph, 11);
        let mut cpu = CpuExecutor::new(model, graph, state, 0);
        let x: Vec<f32> = (0..30)
            .map(|i| ((i * 37 % 11) as f32 - 5.0) / 3.0)
            .collect();
        let y = vec![0u32, 1, 2, 2, 1, 0];
        cpu.run(Mode::Train, &x, &y).unwrap();
        let grads = cpu.grads.clone();
        // Small enough to stay on one side of the ReLUs, large enough for f32 losses.
        let h = 1e-3f32;
        for (p, grad) in grads.iter().enumerate() {
            for i in [0, grad.len() / 2, grad.len() - 1] {
                let mut at = |delta: f32| {
                    cpu.state.params[p][i] += delta;
                    let l = cpu.run(Mode::Train, &x, &y).unwrap().loss;
                    cpu.state.params[p][i] -= delta;
                    f64::from(l)
                };
                let fd = ((at(h) - at(-h)) / (2.0 * f64::from(h))) as f32;
                let name = &cpu.graph.params[p].name;
                assert!(
                    (fd - grad[i]).abs() < 2e-3 + 2e-2 * grad[i].abs(),
                    "{name}[{i}]: finite difference {fd}, autodiff {}",
                    grad[i]
                );
            }
        }
    }
}

//! The CPU reference executor: the same graph, node by node, through the ops' CPU
//! references. It never touches the GPU; tests hold whole training steps against it and
//! benchmarks use it as the baseline.

use std::collections::HashMap;

use super::state::HostState;
use crate::graph::{self, BuildError, Graph, Mode, Op, ValueId};
use crate::nn::{Loss, Sequential};
use crate::ops::batchnorm::{self, Saved};
use crate::ops::dropout::{self, MaskStream};
use crate::ops::matmul::{self, MatmulShape};
use crate::ops::reduce::{self, Totals};
use crate::ops::softmax_xent::{self, Reduction};
use crate::ops::{bce, elementwise};
use crate::optim;

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
            let built = graph::build(
                &self.sequential,
                &g.loss,
                &g.optimizer,
                &g.sample_shape,
                rows,
            )?;
            self.graphs.insert(rows, built);
        }
        let g = &self.graphs[&rows];
        let mut values: Vec<Option<Vec<f32>>> = vec![None; g.values.len()];
        values[g.input.0] = Some(x.to_vec());
        let step = self.state.step;
        let mut loss = f32::NAN;
        let nodes: Vec<_> = g.nodes_for(mode).map(|(_, n)| n.clone()).collect();
        for node in &nodes {
            let get = |i: usize| -> &[f32] { values[node.inputs[i].0].as_deref().unwrap_or(&[]) };
            let rows = |i: usize| g.value(node.inputs[i]).rows;
            let cols = |i: usize| g.value(node.inputs[i]).cols;
            let mut out: Vec<(ValueId, Vec<f32>)> = Vec::new();
            match &node.op {
                Op::Linear { weight, bias, relu } => {
                    let shape = MatmulShape::linear_forward(rows(0), &g.param(*weight).shape);
                    let b = bias.map(|b| self.state.params[b.0].as_slice());
                    let y =
                        matmul::reference(shape, get(0), &self.state.params[weight.0], b, *relu);
                    out.push((node.outputs[0], y));
                }
                Op::BatchNorm { bn, relu, dropout } => {
                    let info = &g.batch_norms[*bn];
                    let x = get(0);
                    let gamma = &self.state.params[info.gamma.0];
                    let beta = &self.state.params[info.beta.0];
                    match mode {
                        Mode::Train => {
                            let (y, saved) = batchnorm::reference_train(
                                x,
                                rows(0),
                                info.features,
                                gamma,
                                beta,
                                info.config,
                                &mut self.state.running[*bn],
                                *relu,
                            );
                            let y = match dropout {
                                Some(d) => dropout::reference(&y, d.p, self.stream(d.stream), step),
                                None => y,
                            };
                            out.push((node.outputs[0], y));
                            out.push((node.outputs[1], [saved.mean, saved.invstd].concat()));
                        }
                        Mode::Eval => {
                            let y = batchnorm::reference_eval(
                                x,
                                info.features,
                                gamma,
                                beta,
                                info.config,
                                &self.state.running[*bn],
                                *relu,
                            );
                            out.push((node.outputs[0], y));
                        }
                    }
                }
                Op::Relu => out.push((node.outputs[0], elementwise::reference_relu(get(0)))),
                Op::Dropout { p, stream } => {
                    let x = get(0);
                    let y = match mode {
                        Mode::Train => dropout::reference(x, *p, self.stream(*stream), step),
                        Mode::Eval => x.to_vec(),
                    };
                    out.push((node.outputs[0], y));
                }
                Op::CrossEntropy | Op::BceWithLogits => {
                    let logits = get(0);
                    let (per_row, grad, reduced) = loss_rows(g, logits, labels);
                    loss = reduced;
                    out.push((node.outputs[0], per_row));
                    if mode == Mode::Train {
                        out.push((node.outputs[1], grad));
                    }
                }
                Op::Metrics => {
                    let r = get(0);
                    let batch_loss: f64 = r.chunks(4).map(|c| f64::from(c[0])).sum();
                    let counted: f64 = r.chunks(4).map(|c| f64::from(c[2])).sum();
                    let t = &mut self.totals;
                    t.weighted_loss += batch_loss * counted;
                    t.correct += r.chunks(4).map(|c| f64::from(c[1])).sum::<f64>();
                    t.count += counted;
                    t.batches += 1;
                    t.last_loss = batch_loss as f32;
                    if !batch_loss.is_finite() && t.first_nonfinite_step.is_none() {
                        t.first_nonfinite_step = Some(step as u32);
                    }
                }
                Op::ReluBackward => out.push((
                    node.outputs[0],
                    elementwise::reference_relu_backward(get(0), get(1)),
                )),
                Op::LinearGradInput { weight } => {
                    let shape = MatmulShape::linear_grad_input(rows(0), &g.param(*weight).shape);
                    let dx =
                        matmul::reference(shape, get(0), &self.state.params[weight.0], None, false);
                    out.push((node.outputs[0], dx));
                }
                Op::LinearGradParams { weight, bias } => {
                    let dy = get(0);
                    let shape = MatmulShape::linear_grad_weight(rows(0), &g.param(*weight).shape);
                    self.grads[weight.0] = matmul::reference(shape, dy, get(1), None, false);
                    if let Some(b) = bias {
                        self.grads[b.0] = reduce::reference_column_sum(dy, cols(0));
                    }
                }
                Op::BatchNormBackward { bn, relu, dropout } => {
                    let info = &g.batch_norms[*bn];
                    let d = info.features;
                    let s = get(3);
                    let saved = Saved {
                        mean: s[..d].to_vec(),
                        invstd: s[d..].to_vec(),
                    };
                    // Through the dropout first (its mask, recomputed), then the ReLU: the
                    // dropout's output is 0 where either stopped the gradient, so it masks
                    // as the ReLU's own output would.
                    let y = get(1);
                    let dy = match dropout {
                        Some(d) => dropout::reference(get(2), d.p, self.stream(d.stream), step),
                        None => get(2).to_vec(),
                    };
                    let grads = batchnorm::reference_backward(
                        get(0),
                        &dy,
                        rows(0),
                        d,
                        &self.state.params[info.gamma.0],
                        &saved,
                        relu.then_some(y),
                    );
                    self.grads[info.gamma.0] = grads.dgamma;
                    self.grads[info.beta.0] = grads.dbeta;
                    out.push((node.outputs[0], grads.dx));
                }
                Op::DropoutBackward { p, stream } => {
                    let dx = dropout::reference(get(0), *p, self.stream(*stream), step);
                    out.push((node.outputs[0], dx));
                }
                Op::OptimizerStep => {
                    for (i, grad) in self.grads.iter().enumerate() {
                        let mut state: Vec<Vec<f32>> = self
                            .state
                            .optimizer
                            .iter()
                            .map(|s| std::mem::take(&mut { s[i].clone() }))
                            .collect();
                        optim::reference_step(
                            &g.optimizer,
                            step,
                            &mut self.state.params[i],
                            grad,
                            &mut state,
                        );
                        for (k, s) in state.into_iter().enumerate() {
                            self.state.optimizer[k][i] = s;
                        }
                    }
                    self.state.step += 1;
                }
            }
            for (v, data) in out {
                values[v.0] = Some(data);
            }
        }
        Ok(StepOutput {
            logits: values[g.logits.0].clone().unwrap_or_default(),
            loss,
        })
    }

    fn stream(&self, layer: u32) -> MaskStream {
        MaskStream {
            seed: self.seed,
            layer,
        }
    }
}

/// Per-row (scaled loss, correct, counted, 0), the logits' gradient, and the reduced loss.
fn loss_rows(g: &Graph, logits: &[f32], labels: &[u32]) -> (Vec<f32>, Vec<f32>, f32) {
    let n = g.value(g.logits).rows;
    let c = g.value(g.logits).cols;
    let mut rows = Vec::with_capacity(n * 4);
    match &g.loss {
        Loss::CrossEntropy(ce) => {
            let targets: Vec<i64> = labels.iter().map(|&l| i64::from(l)).collect();
            let scale = softmax_xent::loss_scale(&targets, &ce.config);
            let none = softmax_xent::CrossEntropyConfig {
                reduction: Reduction::None,
                ..ce.config.clone()
            };
            let (per_row, _) = softmax_xent::reference(logits, c, &targets, &none);
            let (reduced, grad) = softmax_xent::reference(logits, c, &targets, &ce.config);
            for (r, (&loss, &t)) in per_row.iter().zip(&targets).enumerate() {
                let row = &logits[r * c..(r + 1) * c];
                let counted = t != ce.config.ignore_index;
                // torch.argmax: the first maximum.
                let argmax = row
                    .iter()
                    .enumerate()
                    .fold((0, f32::NEG_INFINITY), |best, (j, &v)| {
                        if v > best.1 { (j, v) } else { best }
                    })
                    .0;
                let correct = counted && argmax as i64 == t;
                rows.extend_from_slice(&[
                    if counted { loss * scale } else { 0.0 },
                    f32::from(u8::from(correct)),
                    f32::from(u8::from(counted)),
                    0.0,
                ]);
            }
            (rows, grad, reduced.first().copied().unwrap_or(f32::NAN))
        }
        Loss::BceWithLogits(b) => {
            let y: Vec<f32> = labels.iter().map(|&l| l as f32).collect();
            let scale = bce::loss_scale(n, b.config.reduction);
            let none = bce::BceConfig {
                reduction: Reduction::None,
                ..b.config
            };
            let (per_row, _) = bce::reference(logits, &y, none);
            let (reduced, grad) = bce::reference(logits, &y, b.config);
            for ((&loss, &x), &t) in per_row.iter().zip(logits).zip(&y) {
                let correct = (x > 0.0) == (t > 0.5);
                rows.extend_from_slice(&[loss * scale, f32::from(u8::from(correct)), 1.0, 0.0]);
            }
            (rows, grad, reduced.first().copied().unwrap_or(f32::NAN))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::{CrossEntropyLoss, Sequential};
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
        let state = HostState::init(&graph, &model, 11);
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

//! BatchNorm1d on GPU tensors of its own, outside a plan: for tests, benchmarks and users
//! of the op alone.

use super::launch::{
    BackwardBindings, ForwardBindings, LayerBindings, Pass, PassDropout, backward_dispatches,
    eval_dispatch, train_dispatches,
};
use super::{BatchNormConfig, FusedDropout, RunningStats, check_train_batch};
use crate::gpu::{GpuContext, GpuTensor};
use crate::ops::dropout::{DropProbability, MaskStream};
use crate::ops::step::{StepBuffer, StepParams};
use crate::ops::{OpError, expect_matrix, expect_shape};

/// What the train-mode forward left for the backward: its input, its output and the saved
/// [mean; invstd].
#[derive(Clone, Copy)]
pub struct ForwardTensors<'t> {
    pub x: &'t GpuTensor,
    pub y: &'t GpuTensor,
    pub saved: &'t GpuTensor,
}

/// A BatchNorm1d layer's state on the GPU, for running the op on its own.
pub struct GpuBatchNorm {
    pub features: usize,
    pub config: BatchNormConfig,
    pub gamma: GpuTensor,
    pub beta: GpuTensor,
    /// [running_mean; running_var]
    pub running: GpuTensor,
    pub num_batches_tracked: GpuTensor,
    /// The step a fused dropout draws its mask for.
    pub steps: StepBuffer,
}

impl GpuBatchNorm {
    pub fn new(
        ctx: &GpuContext,
        gamma: &[f32],
        beta: &[f32],
        running: &RunningStats,
        config: BatchNormConfig,
    ) -> Result<Self, OpError> {
        let d = gamma.len();
        expect_shape("batch norm", "bias", &[beta.len()], &[d])?;
        expect_shape("batch norm", "running_mean", &[running.mean.len()], &[d])?;
        expect_shape("batch norm", "running_var", &[running.var.len()], &[d])?;
        let stats: Vec<f32> = running.mean.iter().chain(&running.var).copied().collect();
        Ok(Self {
            features: d,
            config,
            gamma: GpuTensor::from_slice(ctx, gamma, &[d], "bn.weight")?,
            beta: GpuTensor::from_slice(ctx, beta, &[d], "bn.bias")?,
            running: GpuTensor::from_slice(ctx, &stats, &[2, d], "bn.running")?,
            num_batches_tracked: GpuTensor::from_slice(
                ctx,
                &[running.num_batches_tracked as u32],
                &[1],
                "bn.num_batches_tracked",
            )?,
            steps: StepBuffer::new(ctx)?,
        })
    }

    pub(super) fn bindings(&self) -> LayerBindings<'_> {
        LayerBindings {
            gamma: self.gamma.binding(),
            beta: self.beta.binding(),
            running: self.running.binding(),
            num_batches_tracked: self.num_batches_tracked.binding(),
            step: self.steps.binding(),
        }
    }

    /// Train-mode forward at training step `step` (the fused dropout's); returns y and the
    /// saved [mean; invstd].
    pub fn forward_train(
        &self,
        ctx: &GpuContext,
        x: &GpuTensor,
        relu: bool,
        dropout: Option<FusedDropout>,
        step: u64,
    ) -> Result<(GpuTensor, GpuTensor), OpError> {
        check_train_batch(x.shape())?;
        let (n, d) = self.check_input(x)?;
        let saved = GpuTensor::zeros(ctx, &[2, d], "bn.saved")?;
        let y = GpuTensor::zeros(ctx, &[n, d], "bn.y")?;
        let seed_key = dropout.map_or(0, |d| MaskStream::seed_key(d.stream.seed));
        self.steps.write(
            ctx,
            &StepParams {
                seed_key,
                ..StepParams::at_step(step)
            },
        );
        let p = dropout.map(|d| [d.p]);
        let pass = self.pass(n, relu, dropout, p.as_ref().map_or(&[], |p| &p[..]));
        let bindings = ForwardBindings {
            layer: self.bindings(),
            x: x.binding(),
            saved: saved.binding(),
            y: y.binding(),
        };
        let dispatches = train_dispatches(ctx, &pass, bindings)?;
        ctx.submit(&dispatches.iter().collect::<Vec<_>>());
        Ok((y, saved))
    }

    /// Eval-mode forward.
    pub fn forward_eval(
        &self,
        ctx: &GpuContext,
        x: &GpuTensor,
        relu: bool,
    ) -> Result<GpuTensor, OpError> {
        let (n, d) = self.check_input(x)?;
        let y = GpuTensor::zeros(ctx, &[n, d], "bn.y")?;
        let pass = self.pass(n, relu, None, &[]);
        let dispatch = eval_dispatch(ctx, &pass, self.bindings(), x.binding(), y.binding())?;
        ctx.submit(&[&dispatch]);
        Ok(y)
    }

    /// Backward of [`forward_train`](Self::forward_train) (with the same `relu` and
    /// `dropout`): (dx, dγ, dβ).
    pub fn backward(
        &self,
        ctx: &GpuContext,
        forward: ForwardTensors<'_>,
        dy: &GpuTensor,
        relu: bool,
        dropout: Option<FusedDropout>,
    ) -> Result<(GpuTensor, GpuTensor, GpuTensor), OpError> {
        let ForwardTensors { x, y, saved } = forward;
        let (n, d) = self.check_input(x)?;
        expect_shape("batch norm backward", "grad_output", dy.shape(), &[n, d])?;
        let dx = GpuTensor::zeros(ctx, &[n, d], "bn.dx")?;
        let dgamma = GpuTensor::zeros(ctx, &[d], "bn.dweight")?;
        let dbeta = GpuTensor::zeros(ctx, &[d], "bn.dbias")?;
        let bindings = BackwardBindings {
            x: x.binding(),
            y: y.binding(),
            dy: dy.binding(),
            saved: saved.binding(),
            gamma: self.gamma.binding(),
            dgamma: dgamma.binding(),
            dbeta: dbeta.binding(),
            dx: dx.binding(),
            dbias: None,
        };
        let p = dropout.map(|d| [d.p]);
        let pass = self.pass(n, relu, dropout, p.as_ref().map_or(&[], |p| &p[..]));
        let dispatches = backward_dispatches(ctx, &pass, bindings)?;
        ctx.submit(&dispatches.iter().collect::<Vec<_>>());
        Ok((dx, dgamma, dbeta))
    }

    /// Reads the running statistics back.
    pub fn running_stats(&self, ctx: &GpuContext) -> Result<RunningStats, OpError> {
        let stats: Vec<f32> = self.running.read(ctx)?;
        let count: Vec<u32> = self.num_batches_tracked.read(ctx)?;
        let d = self.features;
        Ok(RunningStats {
            mean: stats[..d].to_vec(),
            var: stats[d..].to_vec(),
            num_batches_tracked: u64::from(count[0]),
        })
    }

    /// The pass over `n` rows; a fused dropout draws with probability `p`, its seed
    /// written in the step record by the caller.
    fn pass<'p>(
        &self,
        n: usize,
        relu: bool,
        dropout: Option<FusedDropout>,
        p: &'p [DropProbability],
    ) -> Pass<'p> {
        Pass {
            n,
            d: self.features,
            config: self.config,
            relu,
            dropout: dropout.map(|d| PassDropout {
                p,
                layer: d.stream.layer,
            }),
        }
    }

    fn check_input(&self, x: &GpuTensor) -> Result<(usize, usize), OpError> {
        let (n, d) = expect_matrix("batch norm", "input", x.shape())?;
        if d != self.features {
            return Err(OpError::Shape {
                op: "batch norm",
                what: "input",
                found: x.shape().to_vec(),
                expected: format!("[N, {}]", self.features),
            });
        }
        Ok((n, d))
    }
}

//! A model resident on the GPU: its parameters, optimizer state and running statistics stay
//! on the device, and a plan per mode (and batch size) runs it. One training step is one
//! batch upload, one command buffer and one submit; loss and accuracy accumulate on the GPU
//! and come back only when asked.
//!
//! | file | what it holds |
//! |---|---|
//! | `mod.rs` | the [`Model`] type, construction, `train()`/`eval()`, the step calls |
//! | `members.rs` | stacks: many members of one architecture in one plan ([`MemberConfig`]) |
//! | `plan.rs` | graphs and plans per (mode, batch size), built once; device-limit errors |
//! | `submit.rs` | one step: step uniform, one command buffer, one submit, back-pressure |
//! | `batch.rs` | [`DeviceBatch`], a batch resident on the device, and its dispatch cache |
//! | `metrics.rs` | loss/accuracy totals: reset, blocking reads, the asynchronous read-back |
//! | `state.rs` | state transfer host ↔ device and the check that a state fits |
//! | `reference.rs` | the model on the CPU reference executor |
//! | `save.rs` | [`Model::save`], [`Model::load`], [`Model::load_state_dict`]: files in one call |
//! | `validate.rs` | [`BatchError`]: batch, label and mode checks before anything is sent |
//! | `report.rs` | [`Counters`], [`PlanReport`], profiling and memory accounting |

mod batch;
mod distributed;
mod exchange;
pub mod members;
mod metrics;
mod plan;
mod reference;
mod report;
mod save;
mod state;
mod submit;
mod validate;

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

pub use batch::DeviceBatch;
pub use members::{MAX_MEMBERS, MemberConfig, StackError, capacity};
pub use report::{Counters, PlanReport};
pub use state::StateProblem;
pub use validate::BatchError;

use crate::data::Transform;
use crate::dist::Comm;
use crate::error::Result;
use crate::exec::gpu::GpuPlan;
use crate::exec::state::{GpuState, HostState};
use crate::gpu::GpuContext;
use crate::graph::{Graph, Mode};
use crate::nn::{Loss, Sequential};
use crate::ops::step::StepBuffer;
use crate::optim::Optimizer;

use metrics::MetricTotals;
use submit::BatchSource;

/// How to build a [`Model`]. No field has a default: the sample shape is the data's, and the
/// batch size and seed are the caller's (`wgnn train` takes batch 32 and seed 0 unless told).
#[derive(Clone, Debug, PartialEq)]
pub struct ModelConfig {
    /// Shape of one raw sample, e.g. `[3, 32, 32]` or `[30]` (what a preprocessing stage, if
    /// any, takes).
    pub sample_shape: Vec<usize>,
    /// Samples per batch (`DataLoader(batch_size=…)`): the plans for this size are built up
    /// front, and [`Model::fit`] and [`crate::train::fit`] train in batches of it (a smaller
    /// last batch gets a plan of its own when it comes). Per process in a data-parallel job.
    pub batch_size: usize,
    /// Seeds parameter initialization (ChaCha12) and the dropout masks (Philox).
    pub seed: u64,
}

/// A Sequential with its loss and optimizer, resident on the GPU — or a stack of such models
/// of one architecture, trained side by side in one plan (see [`members`]).
pub struct Model {
    ctx: Arc<GpuContext>,
    sequential: Sequential,
    loss: Loss,
    /// One per member (one for a lone model): seed, optimizer settings, step, frozen.
    members: Vec<members::Member>,
    config: ModelConfig,
    /// The fitted preprocessing every graph starts with, if any.
    preprocess: Option<Arc<Transform>>,
    graphs: HashMap<usize, Graph>,
    state: GpuState,
    step_buffer: StepBuffer,
    plans: HashMap<(Mode, usize), GpuPlan>,
    mode: Mode,
    in_flight: VecDeque<wgpu::SubmissionIndex>,
    /// Loss/accuracy totals on the device and their read-back.
    totals: MetricTotals,
    counters: Counters,
    /// Tells this model's dispatches apart in a [`DeviceBatch`] used by several models.
    id: u64,
    /// The data-parallel job this model trains in ([`Model::distribute`]); alone by default.
    comm: Comm,
    /// Batch norm takes its statistics over every rank's batch.
    sync_bn: bool,
    /// Members' dropout probabilities where they differ from the graph's (none alone).
    dropout: crate::graph::DropoutOverrides,
}

/// What a model is made of, besides its device and state.
struct Parts {
    sequential: Sequential,
    loss: Loss,
    members: Vec<MemberConfig>,
    config: ModelConfig,
    preprocess: Option<Arc<Transform>>,
    dropout: crate::graph::DropoutOverrides,
}

/// Source of [`Model`] ids.
static NEXT_MODEL_ID: AtomicU64 = AtomicU64::new(0);

impl Model {
    /// Builds the graph and both plans, and initializes the parameters as PyTorch does. The
    /// context is a [`GpuContext`] or a shared `Arc` of one (models may share a device).
    pub fn new(
        ctx: impl Into<Arc<GpuContext>>,
        sequential: Sequential,
        loss: impl Into<Loss>,
        optimizer: Optimizer,
        config: ModelConfig,
    ) -> Result<Self> {
        let ctx = ctx.into();
        Self::build(ctx, None, sequential, loss.into(), optimizer, config, None)
    }

    /// Like [`Model::new`], with a fitted preprocessing ([`Transform::fit`] on the training
    /// split) as the plan's fixed first stage: every step, eval and predict take raw samples
    /// shaped `config.sample_shape`, and the first layer sees the transform's output shape.
    pub fn with_preprocess(
        ctx: impl Into<Arc<GpuContext>>,
        preprocess: Transform,
        sequential: Sequential,
        loss: impl Into<Loss>,
        optimizer: Optimizer,
        config: ModelConfig,
    ) -> Result<Self> {
        let preprocess = Some(Arc::new(preprocess));
        Self::build(
            ctx.into(),
            preprocess,
            sequential,
            loss.into(),
            optimizer,
            config,
            None,
        )
    }

    /// The model with an optional preprocessing stage and an optional starting state (else
    /// PyTorch's initialization).
    pub fn build(
        ctx: Arc<GpuContext>,
        preprocess: Option<Arc<Transform>>,
        sequential: Sequential,
        loss: Loss,
        optimizer: Optimizer,
        config: ModelConfig,
        state: Option<HostState>,
    ) -> Result<Self> {
        let member = MemberConfig::new(config.seed, optimizer);
        let states = state.map(|s| vec![s]);
        Self::build_members(
            ctx,
            preprocess,
            sequential,
            loss,
            config,
            vec![member],
            states,
        )
    }

    /// A stack of `members` (a lone model: one), each from its state or initialized under its
    /// own seed.
    fn build_members(
        ctx: Arc<GpuContext>,
        preprocess: Option<Arc<Transform>>,
        sequential: Sequential,
        loss: Loss,
        config: ModelConfig,
        members: Vec<MemberConfig>,
        states: Option<Vec<HostState>>,
    ) -> Result<Self> {
        let dropout = members::check_members(&sequential, &members)?;
        validate::check_layer_count(&sequential)?;
        let graph = plan::build_graph(
            &sequential,
            &loss,
            &members[0].optimizer,
            &config,
            config.batch_size,
            preprocess.as_ref(),
        )?;
        for m in &members {
            m.optimizer
                .validate()
                .map_err(|e| crate::graph::BuildError::Config(e.to_string()))?;
        }
        // A lone model meets the device's limits in the errors of its parameters and its
        // batch, which name what to change; a stack's members multiply every binding.
        if members.len() > 1 {
            members::check_capacity(&ctx, &graph, members.len())?;
        }
        let hosts = match states {
            Some(states) => {
                if states.len() != members.len() {
                    return Err(StackError::Count {
                        given: states.len(),
                        members: members.len(),
                    }
                    .into());
                }
                for s in &states {
                    state::check_state(&graph, s)?;
                }
                states
            }
            None => {
                plan::check_parameters_fit(&graph, ctx.max_binding_bytes())?;
                members
                    .iter()
                    .map(|m| HostState::init(&graph, m.seed))
                    .collect()
            }
        };
        let parts = Parts {
            sequential,
            loss,
            members,
            config,
            preprocess,
            dropout,
        };
        Self::assemble(ctx, parts, graph, hosts)
    }

    /// Like [`Model::new`], starting from a given state (e.g. a checkpoint).
    pub fn with_state(
        ctx: Arc<GpuContext>,
        sequential: Sequential,
        loss: impl Into<Loss>,
        optimizer: Optimizer,
        config: ModelConfig,
        state: HostState,
    ) -> Result<Self> {
        Self::build(
            ctx,
            None,
            sequential,
            loss.into(),
            optimizer,
            config,
            Some(state),
        )
    }

    fn assemble(
        ctx: Arc<GpuContext>,
        parts: Parts,
        graph: Graph,
        hosts: Vec<HostState>,
    ) -> Result<Self> {
        let Parts {
            sequential,
            loss,
            members,
            config,
            preprocess,
            dropout,
        } = parts;
        let state = GpuState::new(&ctx, &graph, &hosts)?;
        let step_buffer = StepBuffer::members(&ctx, members.len())?;
        let totals = MetricTotals::new(&ctx, members.len())?;
        let members = members
            .into_iter()
            .zip(&hosts)
            .map(|(config, host)| members::Member {
                config,
                step: host.step,
                frozen: false,
            })
            .collect();
        let mut model = Self {
            ctx,
            sequential,
            loss,
            members,
            config,
            preprocess,
            graphs: HashMap::new(),
            state,
            step_buffer,
            plans: HashMap::new(),
            mode: Mode::Train,
            in_flight: VecDeque::new(),
            totals,
            counters: Counters::default(),
            id: NEXT_MODEL_ID.fetch_add(1, Ordering::Relaxed),
            comm: crate::dist::single(),
            sync_bn: false,
            dropout,
        };
        let batch = model.config.batch_size;
        model.graphs.insert(batch, graph);
        model.plan(Mode::Train, batch)?;
        model.plan(Mode::Eval, batch)?;
        Ok(model)
    }

    pub fn context(&self) -> &Arc<GpuContext> {
        &self.ctx
    }

    /// The fitted preprocessing the plans start with, if any.
    pub fn preprocess(&self) -> Option<&Transform> {
        self.preprocess.as_deref()
    }

    pub fn sequential(&self) -> &Sequential {
        &self.sequential
    }

    pub fn loss(&self) -> &Loss {
        &self.loss
    }

    /// The optimizer (member 0's, in a stack).
    pub fn optimizer(&self) -> &Optimizer {
        &self.members[0].config.optimizer
    }

    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// The graph at the configured batch size.
    pub fn graph(&self) -> &Graph {
        &self.graphs[&self.config.batch_size]
    }

    /// Optimizer steps taken (member 0's, in a stack).
    pub fn step(&self) -> u64 {
        self.members[0].step
    }

    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// `model.train()`: batch statistics, dropout on. Builds nothing.
    pub fn train(&mut self) {
        self.mode = Mode::Train;
    }

    /// `model.eval()`: running statistics, dropout off. Builds nothing.
    pub fn eval(&mut self) {
        self.mode = Mode::Eval;
    }

    /// The learning rate the next step uses (member 0's, in a stack).
    pub fn lr(&self) -> f32 {
        self.optimizer().lr()
    }

    /// Sets the learning rate from the next step on (every member's, in a stack): every
    /// step writes it into the step records that the plans' optimizer kernels read, so no
    /// plan is rebuilt.
    pub fn set_lr(&mut self, lr: f32) {
        for m in &mut self.members {
            m.config.optimizer.set_lr(lr);
        }
    }

    /// One training step on a batch: x holds `rows × features` values, `labels` one class
    /// (or 0/1 for BCE) per row. Uploads the batch, records the whole step into one command
    /// buffer and submits it; nothing is read back. Every member of a stack steps on this
    /// same batch ([`Model::train_step_members`] gives each its own).
    pub fn train_step(&mut self, x: &[f32], labels: &[u32]) -> Result<()> {
        self.require_mode(Mode::Train, "train_step")?;
        let rows = self.check_batch(x, labels)?;
        self.check_batch_norm_rows(rows)?;
        self.run(Mode::Train, rows, x, labels)?;
        self.advance();
        Ok(())
    }

    /// Forward in eval mode on a labelled batch; its loss and accuracy join the totals.
    pub fn eval_step(&mut self, x: &[f32], labels: &[u32]) -> Result<()> {
        self.require_mode(Mode::Eval, "eval_step")?;
        let rows = self.check_batch(x, labels)?;
        self.run(Mode::Eval, rows, x, labels)?;
        self.counters.eval_steps += 1;
        Ok(())
    }

    /// [`Model::train_step`] on a batch already on the device (in a stack, one that holds a
    /// batch for each member: [`Model::upload_batch`], [`Model::upload_member_batches`]).
    pub fn train_step_on(&mut self, batch: &DeviceBatch) -> Result<()> {
        self.require_mode(Mode::Train, "train_step")?;
        self.check_batch_norm_rows(batch.rows())?;
        let loss_scales = self.resident_loss_scales(batch)?;
        self.run_on(
            Mode::Train,
            batch.rows(),
            BatchSource::Device(batch),
            &loss_scales,
        )?;
        self.advance();
        Ok(())
    }

    /// [`Model::eval_step`] on a batch already on the device.
    pub fn eval_step_on(&mut self, batch: &DeviceBatch) -> Result<()> {
        self.require_mode(Mode::Eval, "eval_step")?;
        let loss_scales = self.resident_loss_scales(batch)?;
        self.run_on(
            Mode::Eval,
            batch.rows(),
            BatchSource::Device(batch),
            &loss_scales,
        )?;
        self.counters.eval_steps += 1;
        Ok(())
    }

    /// Logits [rows, classes] of a batch in eval mode (blocking: it reads them back); in a
    /// stack, every member's, in member order ([`Model::predict_members`] splits them).
    pub fn predict(&mut self, x: &[f32]) -> Result<Vec<f32>> {
        self.require_mode(Mode::Eval, "predict")?;
        let rows = self.check_samples(x)?;
        let labels = vec![0u32; rows];
        self.run(Mode::Eval, rows, x, &labels)?;
        let plan = &self.plans[&(Mode::Eval, rows)];
        let (buffer, bytes) = plan.logits();
        let logits = crate::gpu::read_buffer(&self.ctx, buffer, 0, bytes)?;
        self.counters.blocking_readbacks += 1;
        self.in_flight.clear();
        Ok(logits)
    }

    /// Waits for all submitted work and surfaces any device error.
    pub fn synchronize(&mut self) -> Result<()> {
        self.ctx.wait_idle()?;
        self.in_flight.clear();
        Ok(())
    }

    /// Values per sample (the sample shape flattened).
    fn features(&self) -> usize {
        self.config.sample_shape.iter().product()
    }
}

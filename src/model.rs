//! A model resident on the GPU: its parameters, optimizer state and running statistics stay
//! on the device, and a plan per mode (and batch size) runs it. One training step is one
//! batch upload, one command buffer and one submit; loss and accuracy accumulate on the GPU
//! and come back only when asked.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::error::{Error, Result};
use crate::exec::gpu::{BatchDispatches, GpuPlan, Shared};
use crate::exec::state::{GpuState, HostState};
use crate::gpu::{GpuContext, GpuError, TENSOR_USAGE};
use crate::graph::{self, Graph, Mode};
use crate::nn::{Loss, Sequential};
use crate::ops::batchnorm::check_train_batch;
use crate::ops::reduce::{RawTotals, TOTALS_LEN, Totals};
use crate::ops::step::{StepBuffer, StepParams};
use crate::ops::{bce, softmax_xent};
use crate::optim::Optimizer;

/// Submissions allowed in flight before a step waits for the oldest: keeps the host from
/// queueing unbounded work (and staging memory) ahead of the device.
const MAX_IN_FLIGHT: usize = 3;

/// How to build a [`Model`].
#[derive(Clone, Debug, PartialEq)]
pub struct ModelConfig {
    /// Shape of one sample, e.g. `[3, 32, 32]` or `[30]`.
    pub sample_shape: Vec<usize>,
    /// Samples per batch; the plans for this size are built up front.
    pub batch_size: usize,
    /// Seeds parameter initialization and the dropout masks.
    pub seed: u64,
}

/// Counters of what the steps did, for checking "one submit, no blocking readback".
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    pub train_steps: u64,
    pub eval_steps: u64,
    pub submits: u64,
    /// Reads that waited for the device (metrics read, predictions, state download).
    pub blocking_readbacks: u64,
}

/// What a plan costs per step and what the model keeps resident.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlanReport {
    pub mode: Mode,
    pub batch_size: usize,
    pub dispatches_per_step: usize,
    pub submits_per_step: usize,
    pub blocking_readbacks_per_step: usize,
    pub parameter_bytes: u64,
    pub gradient_bytes: u64,
    pub optimizer_bytes: u64,
    /// Activations and gradients of activations (after buffer sharing), plus batch uploads.
    pub activation_bytes: u64,
    /// Running statistics, counters, step uniform, totals.
    pub other_bytes: u64,
    pub total_bytes: u64,
}

impl std::fmt::Display for PlanReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kib = |b: u64| b as f64 / 1024.0;
        write!(
            f,
            "{:?} plan, batch {}: {} dispatches, {} submit, {} blocking readbacks per step; \
             resident {:.1} KiB (parameters {:.1}, gradients {:.1}, optimizer {:.1}, \
             activations {:.1}, other {:.1})",
            self.mode,
            self.batch_size,
            self.dispatches_per_step,
            self.submits_per_step,
            self.blocking_readbacks_per_step,
            kib(self.total_bytes),
            kib(self.parameter_bytes),
            kib(self.gradient_bytes),
            kib(self.optimizer_bytes),
            kib(self.activation_bytes),
            kib(self.other_bytes),
        )
    }
}

/// A batch kept on the device ([`Model::upload_batch`]). Steps read it where it is: on its
/// first step in a mode, the model rebuilds the dispatches that read the batch on its
/// buffers and keeps them here.
pub struct DeviceBatch {
    x: wgpu::Buffer,
    target: wgpu::Buffer,
    rows: usize,
    features: usize,
    /// The labels, kept to check and scale the batch for a model other than its uploader.
    labels: Vec<u32>,
    /// How `target` encodes the labels, and the uploader's loss scale.
    encoding: TargetEncoding,
    loss_scale: f32,
    /// The model that uploaded it.
    uploader: u64,
    /// (model id, mode) → that plan's dispatches on this batch's buffers.
    bound: Mutex<Vec<(u64, Mode, BatchDispatches)>>,
}

/// How a loss reads its targets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum TargetEncoding {
    /// i32 class indices (cross-entropy).
    Classes,
    /// f32 0/1 (BCE with logits).
    Binary,
}

impl std::fmt::Display for TargetEncoding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TargetEncoding::Classes => "class indices (cross-entropy)",
            TargetEncoding::Binary => "0/1 targets (BCE with logits)",
        })
    }
}

impl DeviceBatch {
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Hands `encode` the dispatches of `model`'s plan in `mode` on this batch, made by
    /// `build` on first use.
    fn encode_bound(
        &self,
        model: u64,
        mode: Mode,
        build: impl FnOnce() -> Result<BatchDispatches>,
        encode: impl FnOnce(&BatchDispatches),
    ) -> Result<()> {
        let mut bound = self
            .bound
            .lock()
            .map_err(|_| Error::Invalid("a resident batch's lock is poisoned".into()))?;
        let known = bound
            .iter()
            .position(|(id, m, _)| *id == model && *m == mode);
        let at = match known {
            Some(at) => at,
            None => {
                bound.push((model, mode, build()?));
                bound.len() - 1
            }
        };
        encode(&bound[at].2);
        Ok(())
    }
}

/// Where a step's batch comes from.
enum BatchSource<'a> {
    /// Written through the queue from host memory.
    Host { x: &'a [f32], target: &'a [u8] },
    /// Read in place from a resident batch.
    Device(&'a DeviceBatch),
}

/// A metrics read in progress: copied by a step's command buffer, mapped asynchronously.
struct MetricsReadback {
    staging: wgpu::Buffer,
    /// The next submit copies the totals into `staging`.
    copy_requested: bool,
    /// Set by the map callback.
    mapped: Arc<AtomicBool>,
    mapping: bool,
}

/// A Sequential with its loss and optimizer, resident on the GPU.
pub struct Model {
    ctx: Arc<GpuContext>,
    sequential: Sequential,
    loss: Loss,
    optimizer: Optimizer,
    config: ModelConfig,
    graphs: HashMap<usize, Graph>,
    state: GpuState,
    step_buffer: StepBuffer,
    totals: wgpu::Buffer,
    plans: HashMap<(Mode, usize), GpuPlan>,
    mode: Mode,
    step: u64,
    in_flight: VecDeque<wgpu::SubmissionIndex>,
    readback: MetricsReadback,
    counters: Counters,
    /// Tells this model's dispatches apart in a [`DeviceBatch`] used by several models.
    id: u64,
}

/// Source of [`Model`] ids.
static NEXT_MODEL_ID: AtomicU64 = AtomicU64::new(0);

impl Model {
    /// Builds the graph and both plans, and initializes the parameters as PyTorch does.
    pub fn new(
        ctx: Arc<GpuContext>,
        sequential: Sequential,
        loss: impl Into<Loss>,
        optimizer: Optimizer,
        config: ModelConfig,
    ) -> Result<Self> {
        let loss = loss.into();
        let graph = build_graph(&sequential, &loss, &optimizer, &config, config.batch_size)?;
        check_parameters_fit(&graph, ctx.max_binding_bytes())?;
        let host = HostState::init(&graph, &sequential, config.seed);
        Self::assemble(ctx, sequential, loss, optimizer, config, graph, host)
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
        let loss = loss.into();
        let graph = build_graph(&sequential, &loss, &optimizer, &config, config.batch_size)?;
        check_state(&graph, &state)?;
        Self::assemble(ctx, sequential, loss, optimizer, config, graph, state)
    }

    fn assemble(
        ctx: Arc<GpuContext>,
        sequential: Sequential,
        loss: Loss,
        optimizer: Optimizer,
        config: ModelConfig,
        graph: Graph,
        host: HostState,
    ) -> Result<Self> {
        let state = GpuState::new(&ctx, &graph, &host)?;
        let step_buffer = StepBuffer::new(&ctx)?;
        let totals_bytes = (TOTALS_LEN * 4) as u64;
        let totals = ctx.create_buffer("metric totals", totals_bytes, TENSOR_USAGE)?;
        let staging = ctx.create_buffer(
            "metric readback",
            totals_bytes,
            wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
        )?;
        let mut model = Self {
            ctx,
            sequential,
            loss,
            optimizer,
            step: host.step,
            config,
            graphs: HashMap::new(),
            state,
            step_buffer,
            totals,
            plans: HashMap::new(),
            mode: Mode::Train,
            in_flight: VecDeque::new(),
            readback: MetricsReadback {
                staging,
                copy_requested: false,
                mapped: Arc::new(AtomicBool::new(false)),
                mapping: false,
            },
            counters: Counters::default(),
            id: NEXT_MODEL_ID.fetch_add(1, Ordering::Relaxed),
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

    pub fn sequential(&self) -> &Sequential {
        &self.sequential
    }

    pub fn loss(&self) -> &Loss {
        &self.loss
    }

    pub fn optimizer(&self) -> &Optimizer {
        &self.optimizer
    }

    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// The graph at the configured batch size.
    pub fn graph(&self) -> &Graph {
        &self.graphs[&self.config.batch_size]
    }

    /// Optimizer steps taken.
    pub fn step(&self) -> u64 {
        self.step
    }

    pub fn counters(&self) -> Counters {
        self.counters
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

    /// The learning rate the next step uses.
    pub fn lr(&self) -> f32 {
        self.optimizer.lr()
    }

    /// Sets the learning rate from the next step on: every step writes it into the step
    /// uniform that the plans' optimizer kernels read, so no plan is rebuilt. The graphs'
    /// copies of the optimizer (what [`Model::graph`] shows) are updated to match.
    pub fn set_lr(&mut self, lr: f32) {
        match &mut self.optimizer {
            Optimizer::Sgd(s) => s.lr = lr,
            Optimizer::Adam(a) => a.lr = lr,
        }
        for graph in self.graphs.values_mut() {
            graph.optimizer = self.optimizer;
        }
    }

    /// One training step on a batch: x holds `rows × features` values, `labels` one class
    /// (or 0/1 for BCE) per row. Uploads the batch, records the whole step into one command
    /// buffer and submits it; nothing is read back.
    pub fn train_step(&mut self, x: &[f32], labels: &[u32]) -> Result<()> {
        self.require_mode(Mode::Train, "train_step")?;
        let rows = self.check_batch(x, labels)?;
        self.check_batch_norm_rows(rows)?;
        self.run(Mode::Train, rows, x, labels)?;
        self.step += 1;
        self.counters.train_steps += 1;
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

    /// Fails unless the model is in `mode` (what `operation` needs).
    fn require_mode(&self, mode: Mode, operation: &str) -> Result<()> {
        if self.mode == mode {
            return Ok(());
        }
        let (name, call) = match mode {
            Mode::Train => ("train", "model.train()"),
            Mode::Eval => ("eval", "model.eval()"),
        };
        Err(Error::Mode(format!(
            "{operation} needs {name} mode: call {call} first"
        )))
    }

    /// Uploads a batch once, to be stepped on many times without another upload (data
    /// resident on the device, as in the benchmarks).
    pub fn upload_batch(&self, x: &[f32], labels: &[u32]) -> Result<DeviceBatch> {
        let rows = self.check_batch(x, labels)?;
        let (target, loss_scale) = self.encode_targets(labels);
        Ok(DeviceBatch {
            features: self.features(),
            labels: labels.to_vec(),
            encoding: self.target_encoding(),
            uploader: self.id,
            x: self.ctx.create_buffer_init(
                "resident batch",
                bytemuck::cast_slice(x),
                TENSOR_USAGE,
            )?,
            target: self
                .ctx
                .create_buffer_init("resident targets", &target, TENSOR_USAGE)?,
            rows,
            loss_scale,
            bound: Mutex::new(Vec::new()),
        })
    }

    /// [`Model::train_step`] on a batch already on the device.
    pub fn train_step_on(&mut self, batch: &DeviceBatch) -> Result<()> {
        self.require_mode(Mode::Train, "train_step")?;
        self.check_batch_norm_rows(batch.rows)?;
        let loss_scale = self.resident_loss_scale(batch)?;
        self.run_on(
            Mode::Train,
            batch.rows,
            BatchSource::Device(batch),
            loss_scale,
        )?;
        self.step += 1;
        self.counters.train_steps += 1;
        Ok(())
    }

    /// [`Model::eval_step`] on a batch already on the device.
    pub fn eval_step_on(&mut self, batch: &DeviceBatch) -> Result<()> {
        self.require_mode(Mode::Eval, "eval_step")?;
        let loss_scale = self.resident_loss_scale(batch)?;
        self.run_on(
            Mode::Eval,
            batch.rows,
            BatchSource::Device(batch),
            loss_scale,
        )?;
        self.counters.eval_steps += 1;
        Ok(())
    }

    /// Logits [rows, classes] of a batch in eval mode (blocking: it reads them back).
    pub fn predict(&mut self, x: &[f32]) -> Result<Vec<f32>> {
        self.require_mode(Mode::Eval, "predict")?;
        let features = self.features();
        if x.is_empty() || !x.len().is_multiple_of(features) {
            return Err(Error::Batch(format!(
                "{} values do not make whole samples of {features} features",
                x.len()
            )));
        }
        let rows = x.len() / features;
        let labels = vec![0u32; rows];
        self.run(Mode::Eval, rows, x, &labels)?;
        let plan = &self.plans[&(Mode::Eval, rows)];
        let (buffer, bytes) = plan.logits();
        let logits = crate::gpu::read_buffer(&self.ctx, buffer, 0, bytes)?;
        self.counters.blocking_readbacks += 1;
        self.in_flight.clear();
        Ok(logits)
    }

    /// Zeroes the loss and accuracy totals (e.g. at the start of an epoch).
    pub fn reset_metrics(&mut self) {
        self.ctx
            .queue
            .write_buffer(&self.totals, 0, bytemuck::cast_slice(&[0.0f32; TOTALS_LEN]));
    }

    /// Reads the totals now (blocking).
    pub fn read_metrics(&mut self) -> Result<Totals> {
        Ok(Totals::from_raw(&self.raw_totals()?))
    }

    /// The totals buffer's words now (blocking): what a checkpoint within an epoch keeps so
    /// that the resumed epoch reports what an uninterrupted one would.
    pub fn raw_totals(&mut self) -> Result<RawTotals> {
        let raw = crate::gpu::read_buffer(&self.ctx, &self.totals, 0, (TOTALS_LEN * 4) as u64)?;
        self.counters.blocking_readbacks += 1;
        self.in_flight.clear();
        let mut words = [0.0; TOTALS_LEN];
        for (word, value) in words.iter_mut().zip(raw) {
            *word = value;
        }
        Ok(words)
    }

    /// Puts back totals read by [`Model::raw_totals`] (lands before the next step).
    pub fn set_raw_totals(&mut self, raw: &RawTotals) {
        self.ctx
            .queue
            .write_buffer(&self.totals, 0, bytemuck::cast_slice(raw));
    }

    /// Asks for the totals as of the next step, without waiting: the copy rides in that
    /// step's command buffer. Collect them with [`Model::poll_metrics`].
    pub fn request_metrics(&mut self) {
        if !self.readback.mapping {
            self.readback.copy_requested = true;
        }
    }

    /// The totals asked for by [`Model::request_metrics`], once the device has them.
    pub fn poll_metrics(&mut self) -> Result<Option<Totals>> {
        if !self.readback.mapping {
            return Ok(None);
        }
        self.ctx
            .device
            .poll(wgpu::PollType::Poll)
            .map_err(|e| GpuError::Device(e.to_string()))?;
        if !self.readback.mapped.load(Ordering::Acquire) {
            return Ok(None);
        }
        let staging = &self.readback.staging;
        let raw: Vec<f32> = {
            let view = staging
                .get_mapped_range(..)
                .map_err(|e| GpuError::Map(e.to_string()))?;
            bytemuck::pod_collect_to_vec(&view)
        };
        staging.unmap();
        self.readback.mapping = false;
        self.readback.mapped.store(false, Ordering::Release);
        Ok(Some(Totals::from_raw(&raw)))
    }

    /// Downloads the whole state (blocking).
    pub fn state(&mut self) -> Result<HostState> {
        let graph = &self.graphs[&self.config.batch_size];
        let host = self.state.download(&self.ctx, graph, self.step)?;
        self.counters.blocking_readbacks += 1;
        self.in_flight.clear();
        Ok(host)
    }

    /// Replaces the whole state (parameters, optimizer state, running stats, step).
    pub fn load_state(&mut self, state: &HostState) -> Result<()> {
        check_state(self.graph(), state)?;
        self.state.upload(&self.ctx, state);
        self.step = state.step;
        Ok(())
    }

    /// Waits for all submitted work and surfaces any device error.
    pub fn synchronize(&mut self) -> Result<()> {
        self.ctx.wait_idle()?;
        self.in_flight.clear();
        Ok(())
    }

    /// The cost of the plan for `mode` at the configured batch size.
    pub fn report(&self, mode: Mode) -> PlanReport {
        let batch = self.config.batch_size;
        let plan = &self.plans[&(mode, batch)];
        let parameter_bytes = self.state.param_bytes();
        let gradient_bytes = self.state.grads.size();
        let optimizer_bytes = self.state.optimizer_bytes();
        let activation_bytes = plan.activation_bytes() + plan.batch_bytes();
        let other_bytes = self.state.running.size()
            + self.state.counters.size()
            + self.totals.size()
            + self.readback.staging.size()
            + std::mem::size_of::<StepParams>() as u64;
        PlanReport {
            mode,
            batch_size: batch,
            dispatches_per_step: plan.dispatch_count(),
            submits_per_step: 1,
            blocking_readbacks_per_step: 0,
            parameter_bytes,
            gradient_bytes,
            optimizer_bytes,
            activation_bytes,
            other_bytes,
            total_bytes: parameter_bytes
                + gradient_bytes
                + optimizer_bytes
                + activation_bytes
                + other_bytes,
        }
    }

    /// Per-dispatch times of the plan for `mode` at the configured batch size (each dispatch
    /// repeated `reps` times on its own). Running it updates the model's state: profile a
    /// throw-away model.
    pub fn profile(&mut self, mode: Mode, reps: usize) -> Result<Vec<(&'static str, f64)>> {
        let batch = self.config.batch_size;
        let plan = &self.plans[&(mode, batch)];
        let result = plan.profile(&self.ctx, reps)?;
        self.in_flight.clear();
        Ok(result)
    }

    /// Bytes of every buffer the model holds (all plans included).
    pub fn resident_bytes(&self) -> u64 {
        let plans: u64 = self
            .plans
            .values()
            .map(|p| p.activation_bytes() + p.batch_bytes())
            .sum();
        self.state.param_bytes()
            + self.state.grads.size()
            + self.state.optimizer_bytes()
            + self.state.running.size()
            + self.state.counters.size()
            + self.totals.size()
            + self.readback.staging.size()
            + plans
    }

    fn features(&self) -> usize {
        self.config.sample_shape.iter().product()
    }

    fn target_encoding(&self) -> TargetEncoding {
        match &self.loss {
            Loss::CrossEntropy(_) => TargetEncoding::Classes,
            Loss::BceWithLogits(_) => TargetEncoding::Binary,
        }
    }

    /// The loss scale of a resident batch for this model, after checking that the batch
    /// suits it when another model uploaded it (features, target encoding, label range).
    fn resident_loss_scale(&self, batch: &DeviceBatch) -> Result<f32> {
        if batch.uploader == self.id {
            return Ok(batch.loss_scale);
        }
        if batch.features != self.features() {
            return Err(Error::Batch(format!(
                "the resident batch holds {} features per sample; this model takes {}",
                batch.features,
                self.features()
            )));
        }
        if batch.encoding != self.target_encoding() {
            return Err(Error::Batch(format!(
                "the resident batch holds {}; this model's loss reads {}",
                batch.encoding,
                self.target_encoding()
            )));
        }
        self.check_labels(&batch.labels)?;
        Ok(self.loss_scale(&batch.labels))
    }

    fn check_batch(&self, x: &[f32], labels: &[u32]) -> Result<usize> {
        let features = self.features();
        let rows = labels.len();
        if rows == 0 {
            return Err(Error::Batch("the batch is empty".into()));
        }
        if x.len() != rows * features {
            return Err(Error::Batch(format!(
                "{rows} labels need {} values ({rows} × {features}), got {}",
                rows * features,
                x.len()
            )));
        }
        self.check_labels(labels)?;
        Ok(rows)
    }

    /// Every label within the loss's range: a class index, or 0/1 for BCE.
    fn check_labels(&self, labels: &[u32]) -> Result<()> {
        let classes = self.graph().classes();
        match &self.loss {
            Loss::CrossEntropy(_) => {
                if let Some((index, &label)) = labels
                    .iter()
                    .enumerate()
                    .find(|&(_, &l)| l as usize >= classes)
                {
                    return Err(label_out_of_range(index, label, classes));
                }
            }
            Loss::BceWithLogits(_) => {
                if let Some((index, &label)) = labels.iter().enumerate().find(|&(_, &l)| l > 1) {
                    return Err(label_out_of_range(index, label, 2));
                }
            }
        }
        Ok(())
    }

    fn check_batch_norm_rows(&self, rows: usize) -> Result<()> {
        let has_bn = rows <= 1
            && self
                .sequential
                .layers()
                .iter()
                .any(|l| matches!(l, crate::nn::Layer::BatchNorm1d(_)));
        if has_bn {
            check_train_batch(&[rows, 1]).map_err(|_| {
                Error::Batch(format!(
                    "a training batch of {rows} sample cannot be batch-normalized (PyTorch: \
                     \"Expected more than 1 value per channel when training\"); drop it \
                     (drop_last) or use another batch size"
                ))
            })?;
        }
        Ok(())
    }

    /// Builds (once) the plan for `mode` at `rows` samples.
    fn plan(&mut self, mode: Mode, rows: usize) -> Result<()> {
        if self.plans.contains_key(&(mode, rows)) {
            return Ok(());
        }
        if !self.graphs.contains_key(&rows) {
            let graph = build_graph(
                &self.sequential,
                &self.loss,
                &self.optimizer,
                &self.config,
                rows,
            )?;
            self.graphs.insert(rows, graph);
        }
        let graph = &self.graphs[&rows];
        let plan = GpuPlan::new(&self.ctx, graph, mode, &self.shared())
            .map_err(|e| batch_limit_error(e, graph))?;
        self.plans.insert((mode, rows), plan);
        Ok(())
    }

    /// What the plans share: the resident state and the per-step buffers.
    fn shared(&self) -> Shared<'_> {
        Shared {
            state: &self.state,
            step: self.step_buffer.binding(),
            totals: crate::gpu::Binding::whole(&self.totals),
            seed: self.config.seed,
        }
    }

    /// The targets as the loss kernel reads them (i32 classes or f32 0/1) and the loss's
    /// per-row scale (1/Σ weights of the targets for a mean).
    fn encode_targets(&self, labels: &[u32]) -> (Vec<u8>, f32) {
        let bytes = match &self.loss {
            Loss::CrossEntropy(_) => {
                let t32: Vec<i32> = labels.iter().map(|&l| l as i32).collect();
                bytemuck::cast_slice(&t32).to_vec()
            }
            Loss::BceWithLogits(_) => {
                let t: Vec<f32> = labels.iter().map(|&l| l as f32).collect();
                bytemuck::cast_slice(&t).to_vec()
            }
        };
        (bytes, self.loss_scale(labels))
    }

    /// The loss's per-row scale for these labels (1/Σ weights of the targets for a mean).
    fn loss_scale(&self, labels: &[u32]) -> f32 {
        match &self.loss {
            Loss::CrossEntropy(ce) => {
                let targets: Vec<i64> = labels.iter().map(|&l| i64::from(l)).collect();
                softmax_xent::loss_scale(&targets, &ce.config)
            }
            Loss::BceWithLogits(b) => bce::loss_scale(labels.len(), b.config.reduction),
        }
    }

    fn run(&mut self, mode: Mode, rows: usize, x: &[f32], labels: &[u32]) -> Result<()> {
        let (target, loss_scale) = self.encode_targets(labels);
        self.run_on(
            mode,
            rows,
            BatchSource::Host { x, target: &target },
            loss_scale,
        )
    }

    fn run_on(
        &mut self,
        mode: Mode,
        rows: usize,
        source: BatchSource<'_>,
        loss_scale: f32,
    ) -> Result<()> {
        self.plan(mode, rows)?;
        self.ctx.check_device()?;
        let mut params = StepParams::at_step(self.step);
        params.rows = rows as u32;
        params.loss_scale = loss_scale;
        self.optimizer.fill_step(self.step, &mut params);
        let plan = &self.plans[&(mode, rows)];
        let queue = &self.ctx.queue;
        let mut encoder = self
            .ctx
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("step"),
            });
        self.step_buffer.write(&self.ctx, &params);
        {
            let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some("step"),
                timestamp_writes: None,
            });
            match source {
                BatchSource::Host { x, target } => {
                    queue.write_buffer(&plan.input, 0, bytemuck::cast_slice(x));
                    queue.write_buffer(&plan.target, 0, target);
                    plan.encode(&mut pass);
                }
                BatchSource::Device(batch) => batch.encode_bound(
                    self.id,
                    mode,
                    || {
                        let graph = &self.graphs[&rows];
                        let shared = self.shared();
                        Ok(plan.bind_batch(&self.ctx, graph, &shared, &batch.x, &batch.target)?)
                    },
                    |dispatches| plan.encode_with(&mut pass, dispatches),
                )?,
            }
        }
        let copy_metrics = std::mem::take(&mut self.readback.copy_requested);
        if copy_metrics {
            encoder.copy_buffer_to_buffer(
                &self.totals,
                0,
                &self.readback.staging,
                0,
                (TOTALS_LEN * 4) as u64,
            );
        }
        // Keep at most MAX_IN_FLIGHT steps queued: wait for the oldest (not a readback).
        if self.in_flight.len() >= MAX_IN_FLIGHT
            && let Some(oldest) = self.in_flight.pop_front()
        {
            self.ctx
                .device
                .poll(wgpu::PollType::Wait {
                    submission_index: Some(oldest),
                    timeout: None,
                })
                .map_err(|e| GpuError::Device(e.to_string()))?;
        }
        let index = queue.submit([encoder.finish()]);
        self.in_flight.push_back(index);
        self.counters.submits += 1;
        if copy_metrics {
            let flag = Arc::clone(&self.readback.mapped);
            self.readback.mapping = true;
            self.readback
                .staging
                .map_async(wgpu::MapMode::Read, .., move |result| {
                    flag.store(result.is_ok(), Ordering::Release);
                });
        }
        Ok(())
    }
}

/// Builds the graph at `rows` samples, refusing losses that cannot be trained.
fn build_graph(
    sequential: &Sequential,
    loss: &Loss,
    optimizer: &Optimizer,
    config: &ModelConfig,
    rows: usize,
) -> Result<Graph> {
    let reduction = match loss {
        Loss::CrossEntropy(ce) => ce.config.reduction,
        Loss::BceWithLogits(b) => b.config.reduction,
    };
    if reduction == softmax_xent::Reduction::None {
        return Err(Error::Invalid(
            "a loss with reduction 'none' gives no scalar to train on: use mean or sum".into(),
        ));
    }
    Ok(graph::build(
        sequential,
        loss,
        optimizer,
        &config.sample_shape,
        rows,
    )?)
}

/// Fails before anything is allocated when the parameters cannot fit one storage binding
/// (they live in one flat buffer): the error names the largest layer and the limit.
fn check_parameters_fit(graph: &Graph, limit: u64) -> Result<()> {
    let bytes: u64 = graph.params.iter().map(|p| p.len() as u64 * 4).sum();
    if bytes <= limit {
        return Ok(());
    }
    let largest = graph.params.iter().max_by_key(|p| p.len());
    let name = largest.map_or_else(String::new, |p| {
        format!(" (largest: {} {:?})", p.name, p.shape)
    });
    Err(Error::Invalid(format!(
        "the model's parameters need {bytes} bytes{name}, over the device's \
         max_storage_buffer_binding_size of {limit} bytes"
    )))
}

/// A state whose tensors do not fit the graph is an error naming each mismatch.
fn check_state(graph: &Graph, state: &HostState) -> Result<()> {
    let mut problems = Vec::new();
    if state.params.len() != graph.params.len() {
        problems.push(format!(
            "{} parameters given, the model has {}",
            state.params.len(),
            graph.params.len()
        ));
    }
    for (p, v) in graph.params.iter().zip(&state.params) {
        if v.len() != p.len() {
            problems.push(format!(
                "{}: {} values for shape {:?}",
                p.name,
                v.len(),
                p.shape
            ));
        }
    }
    if state.optimizer.len() != graph.optimizer.state_count() {
        problems.push(format!(
            "{} optimizer state tensors per parameter given, {:?} keeps {}",
            state.optimizer.len(),
            graph.optimizer,
            graph.optimizer.state_count()
        ));
    }
    for tensors in &state.optimizer {
        for (p, v) in graph.params.iter().zip(tensors) {
            if v.len() != p.len() {
                problems.push(format!(
                    "optimizer state of {}: {} values for shape {:?}",
                    p.name,
                    v.len(),
                    p.shape
                ));
            }
        }
    }
    if state.running.len() != graph.batch_norms.len() {
        problems.push(format!(
            "{} batch-norm states given, the model has {}",
            state.running.len(),
            graph.batch_norms.len()
        ));
    }
    for (b, r) in graph.batch_norms.iter().zip(&state.running) {
        if r.mean.len() != b.features || r.var.len() != b.features {
            problems.push(format!(
                "layer {} running stats: expected {} features",
                b.layer, b.features
            ));
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(Error::Invalid(format!(
            "state does not fit the model: {}",
            problems.join("; ")
        )))
    }
}

/// Turns a buffer-size failure into an error that names the limit and the largest batch
/// that fits.
fn batch_limit_error(error: GpuError, graph: &Graph) -> Error {
    if let GpuError::BufferTooLarge { what, bytes, limit } = &error {
        let widest = graph
            .values
            .iter()
            .map(|v| v.cols as u64 * 4)
            .max()
            .unwrap_or(4)
            .max(1);
        let largest = limit / widest;
        return Error::Batch(format!(
            "a batch of {} samples needs {bytes} bytes for {what}, over the device's \
             max_storage_buffer_binding_size of {limit} bytes; the largest batch that fits is {largest}",
            graph.batch_size
        ));
    }
    Error::Gpu(error)
}

/// A label outside the model's classes, in the op layer's wording.
fn label_out_of_range(index: usize, label: u32, classes: usize) -> Error {
    Error::Op(crate::ops::OpError::TargetOutOfRange {
        op: "batch",
        index,
        target: i64::from(label),
        classes,
    })
}

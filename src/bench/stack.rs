//! Stacked workloads: the lecture's MLP as a stack of M members stepping side by side in one
//! plan, each member on its own resident batch, against a lone model's steps timed in the
//! same rounds (so that the ratio compares figures of one stretch of one run).

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::{Budget, batches, lecture_model, lecture_optimizer};
use crate::error::Result;
use crate::gpu::GpuContext;
use crate::model::DeviceBatch;
use crate::nn::{CrossEntropyLoss, Sequential};
use crate::{MemberConfig, Mode, Model, ModelConfig};

/// Members of the stacks `wgnn bench` measures.
pub const STACK_MEMBERS: [usize; 4] = [1, 4, 16, 64];

/// Each member's batch in the stacked workloads: the lecture's.
pub const STACK_BATCH: usize = 32;

/// Steps run before any timing: pipelines compiled, buffers touched, each batch bound once.
const WARM_UP_STEPS: usize = 8;

/// The lecture's MLP ([`lecture_model`]'s) as a stack of `members`, member k seeded with k.
pub fn lecture_stack(
    ctx: Arc<GpuContext>,
    features: usize,
    batch: usize,
    members: usize,
) -> Result<Model> {
    Model::stack(
        ctx,
        None,
        Sequential::lecture_mlp(features, 10, 0.2),
        CrossEntropyLoss::new(),
        ModelConfig {
            sample_shape: vec![features],
            batch_size: batch,
            seed: 0,
        },
        (0..members as u64)
            .map(|seed| MemberConfig::new(seed, lecture_optimizer()))
            .collect(),
        None,
    )
}

/// A model stepping on a pool of resident batches, one step after another.
pub struct ResidentSteps {
    model: Model,
    pool: Vec<DeviceBatch>,
    mode: Mode,
    next: usize,
}

impl ResidentSteps {
    /// A lone lecture MLP on `copies` copies of [`batches`]' pool, each in buffers of its
    /// own, warmed up. With as many copies as a stack has members, its steps read as many
    /// bytes of distinct memory before coming back to a batch as the stack's do: the two
    /// meet the same caches (a pool that fits a core's cache alone would favour the lone
    /// model).
    pub fn lone(
        ctx: Arc<GpuContext>,
        features: usize,
        batch: usize,
        copies: usize,
        mode: Mode,
    ) -> Result<Self> {
        let model = lecture_model(ctx, features, batch)?;
        let single = batches(features, batch);
        let pool = (0..copies.max(1))
            .flat_map(|_| &single)
            .map(|(x, y)| model.upload_batch(x, y))
            .collect::<Result<Vec<_>>>()?;
        Self::warmed(model, pool, mode)
    }

    /// A stack of `members` lecture MLPs: in the pool's batch i, member k reads batch
    /// i + k of [`batches`]' pool, so that members step on different data, as they do
    /// when each shuffles its own. Warmed up.
    pub fn stack(
        ctx: Arc<GpuContext>,
        features: usize,
        batch: usize,
        members: usize,
        mode: Mode,
    ) -> Result<Self> {
        let model = lecture_stack(ctx, features, batch, members)?;
        let single = batches(features, batch);
        let pool = (0..single.len())
            .map(|i| {
                let (mut x, mut y) = (Vec::new(), Vec::new());
                for k in 0..members {
                    let (xk, yk) = &single[(i + k) % single.len()];
                    x.extend_from_slice(xk);
                    y.extend_from_slice(yk);
                }
                model.upload_member_batches(&x, &y)
            })
            .collect::<Result<Vec<_>>>()?;
        Self::warmed(model, pool, mode)
    }

    fn warmed(mut model: Model, pool: Vec<DeviceBatch>, mode: Mode) -> Result<Self> {
        if mode == Mode::Eval {
            model.eval();
        }
        let mut steps = Self {
            model,
            pool,
            mode,
            next: 0,
        };
        steps.run(WARM_UP_STEPS)?;
        Ok(steps)
    }

    /// `reps` steps, each on the pool's next batch, then a wait for the device.
    pub fn run(&mut self, reps: usize) -> Result<()> {
        for _ in 0..reps {
            let batch = &self.pool[self.next % self.pool.len()];
            self.next += 1;
            match self.mode {
                Mode::Train => self.model.train_step_on(batch)?,
                Mode::Eval => self.model.eval_step_on(batch)?,
            }
        }
        self.model.synchronize()
    }

    /// The model stepping (its state, its members).
    pub fn model(&mut self) -> &mut Model {
        &mut self.model
    }
}

/// A stack's step against a lone model's, measured in the same rounds.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct StackFigures {
    pub features: usize,
    pub members: usize,
    /// Each member's batch.
    pub batch: usize,
    /// Seconds per stacked step (every member's batch), the median of the rounds.
    pub stack_seconds: f64,
    /// Seconds per lone step, the median of the same rounds.
    pub lone_seconds: f64,
    /// The stack's member-samples per second (members × batch / `stack_seconds`).
    pub member_samples_per_second: f64,
    /// The lone model's samples per second.
    pub lone_samples_per_second: f64,
    /// The time of `members` lone steps over one stacked step, the median of the rounds'
    /// ratios: how many times the member-samples/s of lone steps the stack gives.
    pub vs_lone: f64,
    /// Dispatches of a stacked step (a lone step has as many).
    pub dispatches_per_step: usize,
}

/// Alternations of lone and stacked slices in one round: both sides sample the same
/// stretches of a machine whose speed drifts (lavapipe's threads on a shared machine run in
/// fast and slow stretches of about a second).
const SLICES: usize = 8;

/// The lecture's MLP (`features` inputs, `batch` per member) as a stack of `members`
/// against a lone model, in `budget.rounds` rounds. A round alternates `SLICES` (8) slices of
/// lone steps with as many slices of stacked steps, each slice about `budget.round /
/// SLICES` (at least one step), the lone model first in even slices and the stack first in
/// odd ones; the round's ratio is that of their summed times per step. Figures are the
/// medians of the rounds.
pub fn stack_vs_lone(
    ctx: Arc<GpuContext>,
    features: usize,
    batch: usize,
    members: usize,
    mode: Mode,
    budget: Budget,
) -> Result<StackFigures> {
    let mut lone = ResidentSteps::lone(ctx.clone(), features, batch, members, mode)?;
    let mut stack = ResidentSteps::stack(ctx, features, batch, members, mode)?;
    let slice = budget.round / SLICES as u32;
    let lone_reps = reps_lasting(slice, &mut lone)?;
    let stack_reps = reps_lasting(slice, &mut stack)?;
    let (mut lone_times, mut stack_times, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..budget.rounds.max(1) {
        let (mut l, mut s) = (0.0, 0.0);
        for k in 0..SLICES {
            if k % 2 == 0 {
                l += timed(&mut lone, lone_reps)?;
                s += timed(&mut stack, stack_reps)?;
            } else {
                s += timed(&mut stack, stack_reps)?;
                l += timed(&mut lone, lone_reps)?;
            }
        }
        let (l, s) = (
            l / (SLICES * lone_reps) as f64,
            s / (SLICES * stack_reps) as f64,
        );
        lone_times.push(l);
        stack_times.push(s);
        ratios.push(members as f64 * l / s);
    }
    let (lone_seconds, stack_seconds) = (median(lone_times), median(stack_times));
    Ok(StackFigures {
        features,
        members,
        batch,
        stack_seconds,
        lone_seconds,
        member_samples_per_second: (members * batch) as f64 / stack_seconds,
        lone_samples_per_second: batch as f64 / lone_seconds,
        vs_lone: median(ratios),
        dispatches_per_step: stack.model.report(mode).dispatches_per_step,
    })
}

/// Seconds of `reps` steps (and the wait for them).
fn timed(steps: &mut ResidentSteps, reps: usize) -> Result<f64> {
    let start = Instant::now();
    steps.run(reps)?;
    Ok(start.elapsed().as_secs_f64())
}

/// Steps that last at least `slice` (doubling from one).
fn reps_lasting(slice: Duration, steps: &mut ResidentSteps) -> Result<usize> {
    let mut reps = 1usize;
    while timed(steps, reps)? < slice.as_secs_f64() && reps < 1 << 20 {
        reps *= 2;
    }
    Ok(reps)
}

/// A stack's figures as records: `mlp784_stack16_train_b32` (member-samples/s),
/// `…_vs_lone` (over as many lone steps in the same rounds), `…_lone` (the lone model's
/// samples/s in those rounds) and `…_dispatches_per_step` (the stacked plan's).
pub fn stack_records(f: &StackFigures, mode: Mode) -> [(String, f64, &'static str); 4] {
    let mode = match mode {
        Mode::Train => "train",
        Mode::Eval => "eval",
    };
    let name = format!("mlp{}_stack{}_{mode}_b{}", f.features, f.members, f.batch);
    [
        (
            name.clone(),
            f.member_samples_per_second,
            "member-samples/s",
        ),
        (format!("{name}_vs_lone"), f.vs_lone, "ratio"),
        (
            format!("{name}_lone"),
            f.lone_samples_per_second,
            "samples/s",
        ),
        (
            format!("{name}_dispatches_per_step"),
            f.dispatches_per_step as f64,
            "dispatches",
        ),
    ]
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

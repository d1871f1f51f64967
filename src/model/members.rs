//! Many models of one architecture in one plan: a *stack*. Every value carries a leading
//! member axis, every dispatch covers every member, and each member has its own parameters,
//! optimizer state, running statistics, step, seed (initial weights, dropout masks) and
//! settings — learning rate, momentum, weight decay, betas, eps, dropout probability — read
//! from the device, so one plan serves them all. A member computes exactly what it would
//! alone (the same kernels, the same order, its own slice): a lone [`Model`] is the stack of
//! one, and member k of a stack gives the bits of the lone model with member k's settings.
//!
//! What the members must share is what changes shapes or the op sequence: the architecture
//! (but for the dropout probabilities), batch size, data and sample shape, loss and its
//! options, the optimizer's kind and its switches (momentum or none, Nesterov, AMSGrad,
//! AdamW's decoupling, maximize), and the preprocessing.

use std::sync::Arc;

use crate::data::Transform;
use crate::error::{Error, Result};
use crate::exec::state::StateLayout;
use crate::gpu::GpuContext;
use crate::graph::{DropoutOverrides, Graph, HostState, Mode, Totals};
use crate::nn::{Layer, Loss, Sequential};
use crate::ops::reduce::RawTotals;
use crate::optim::Optimizer;

use super::{Model, ModelConfig};

/// The most members one stack holds: a larger group is split into several stacks.
pub const MAX_MEMBERS: usize = 1024;

/// One member of a stack: what may differ between members of one architecture.
#[derive(Clone, Debug, PartialEq)]
pub struct MemberConfig {
    /// Seeds the member's initial weights, its dropout masks and (in `fit`) its shuffle.
    pub seed: u64,
    /// The member's optimizer: of the stack's kind, with its own learning rate, momentum,
    /// dampening, weight decay, betas and eps.
    pub optimizer: Optimizer,
    /// Dropout probabilities of this member, `(layer index, p)`, where they differ from the
    /// architecture's (only for Dropout layers whose probability there is above 0).
    pub dropout: Vec<(usize, f32)>,
}

impl MemberConfig {
    /// A member with `seed` and `optimizer`, and the architecture's dropout.
    pub fn new(seed: u64, optimizer: Optimizer) -> Self {
        Self {
            seed,
            optimizer,
            dropout: Vec::new(),
        }
    }
}

/// A member as the model keeps it.
#[derive(Clone, Debug)]
pub(super) struct Member {
    pub(super) config: MemberConfig,
    /// Optimizer steps taken.
    pub(super) step: u64,
    /// Frozen: it diverged, and its state no longer changes.
    pub(super) frozen: bool,
}

/// Why a set of members cannot share one stack.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StackError {
    #[error("a stack needs at least one member")]
    Empty,
    #[error("{members} members are more than one stack holds ({MAX_MEMBERS})")]
    TooMany { members: usize },
    #[error(
        "member {member}: its optimizer ({found}) differs in kind or switches from member 0's \
         ({expected}); members may differ only in rates and factors"
    )]
    Optimizer {
        member: usize,
        found: String,
        expected: String,
    },
    #[error("member {member}: layer {layer} {why}")]
    Dropout {
        member: usize,
        layer: usize,
        why: String,
    },
    #[error(
        "a stack of {members} members needs {bytes_per_member} bytes per member in one binding \
         ({what}); the device's limit of {limit} bytes holds {fits} member(s): split it into \
         stacks of at most {fits}"
    )]
    TooLarge {
        members: usize,
        bytes_per_member: u64,
        what: &'static str,
        limit: u64,
        fits: usize,
    },
    #[error("member {member} does not exist: the stack has {members}")]
    NoMember { member: usize, members: usize },
    #[error("{given} per-member values given for a stack of {members} members")]
    Count { given: usize, members: usize },
}

/// The switches of an optimizer that fix its state and its kernel: members must agree on
/// them.
fn optimizer_kind(o: &Optimizer) -> String {
    match o {
        Optimizer::Sgd(s) => format!(
            "SGD (momentum {}, nesterov {}, maximize {})",
            if s.momentum != 0.0 { "on" } else { "off" },
            s.nesterov,
            s.maximize
        ),
        Optimizer::Adam(a) => format!(
            "{} (amsgrad {}, maximize {})",
            if a.decoupled_weight_decay {
                "AdamW"
            } else {
                "Adam"
            },
            a.amsgrad,
            a.maximize
        ),
    }
}

/// Checks that `members` can share one stack of `sequential`, and gives their dropout
/// probabilities as the plans read them.
pub(super) fn check_members(
    sequential: &Sequential,
    members: &[MemberConfig],
) -> std::result::Result<DropoutOverrides, StackError> {
    let first = members.first().ok_or(StackError::Empty)?;
    if members.len() > MAX_MEMBERS {
        return Err(StackError::TooMany {
            members: members.len(),
        });
    }
    let kind = optimizer_kind(&first.optimizer);
    let mut overrides = Vec::with_capacity(members.len());
    for (m, member) in members.iter().enumerate() {
        let found = optimizer_kind(&member.optimizer);
        if found != kind {
            return Err(StackError::Optimizer {
                member: m,
                found,
                expected: kind.clone(),
            });
        }
        let mut mine = Vec::new();
        for &(layer, p) in &member.dropout {
            let why = |why: &str| StackError::Dropout {
                member: m,
                layer,
                why: why.into(),
            };
            match sequential.layers().get(layer) {
                Some(Layer::Dropout(d)) if d.p > 0.0 => {}
                Some(Layer::Dropout(_)) => {
                    return Err(why(
                        "drops nothing in the architecture, so it has no mask for a member to set",
                    ));
                }
                _ => return Err(why("is not a Dropout layer")),
            }
            if !(0.0..=1.0).contains(&p) {
                return Err(why(&format!(
                    "dropout probability has to be between 0 and 1, but got {p}"
                )));
            }
            mine.push((layer as u32, p));
        }
        overrides.push(mine);
    }
    Ok(DropoutOverrides(overrides))
}

/// The most members of `graph` one stack holds on a device whose bindings hold `limit`
/// bytes (every binding holds every member's part), with the largest part and what it is.
pub fn capacity(graph: &Graph, align: usize, limit: u64) -> (usize, u64, &'static str) {
    let layout = StateLayout::new(graph, align);
    let widest_value = graph.values.iter().map(|v| v.len()).max().unwrap_or(0);
    let parts = [
        (layout.params_len, "parameters"),
        (layout.floats_len, "running statistics"),
        (layout.counts_len, "counters"),
        (widest_value, "the widest activation"),
    ];
    let (elements, what) = parts
        .into_iter()
        .max_by_key(|(n, _)| *n)
        .unwrap_or((1, "parameters"));
    let bytes = (elements.max(1) as u64).saturating_mul(4);
    let fits = (limit / bytes).min(MAX_MEMBERS as u64) as usize;
    (fits, bytes, what)
}

/// Refuses a stack of `members` that the device's bindings cannot hold, naming the limit,
/// the bytes each member needs and how many fit.
pub(super) fn check_capacity(
    ctx: &GpuContext,
    graph: &Graph,
    members: usize,
) -> std::result::Result<(), StackError> {
    let align = (ctx.limits().min_storage_buffer_offset_alignment as usize / 4).max(1);
    let limit = ctx.max_binding_bytes();
    let (fits, bytes_per_member, what) = capacity(graph, align, limit);
    if members > fits {
        return Err(StackError::TooLarge {
            members,
            bytes_per_member,
            what,
            limit,
            fits,
        });
    }
    Ok(())
}

impl Model {
    /// The most members one stack of this model's graph holds on its device: a larger group
    /// trains as several stacks of at most this many.
    pub fn stack_capacity(&self) -> usize {
        let ctx = &self.ctx;
        let align = (ctx.limits().min_storage_buffer_offset_alignment as usize / 4).max(1);
        capacity(self.graph(), align, ctx.max_binding_bytes()).0
    }

    /// A stack of `members.len()` models of one architecture, trained side by side in one
    /// plan (see [`crate::model::members`]); each member starts from its `state` when given,
    /// else from PyTorch's initialization under its own seed. `config.seed` is ignored: each
    /// member has its own.
    pub fn stack(
        ctx: Arc<GpuContext>,
        preprocess: Option<Arc<Transform>>,
        sequential: Sequential,
        loss: impl Into<Loss>,
        config: ModelConfig,
        members: Vec<MemberConfig>,
        states: Option<Vec<HostState>>,
    ) -> Result<Self> {
        Self::build_members(
            ctx,
            preprocess,
            sequential,
            loss.into(),
            config,
            members,
            states,
        )
    }

    /// Models this one holds side by side (1 for a lone model).
    pub fn members(&self) -> usize {
        self.members.len()
    }

    /// `values` (one batch's samples or labels) once for every member, member by member, as
    /// the steps on each member's batch take them; a lone model's as they are.
    pub(super) fn for_every_member<'a, T: Copy>(
        &self,
        values: &'a [T],
    ) -> std::borrow::Cow<'a, [T]> {
        match self.members() {
            1 => std::borrow::Cow::Borrowed(values),
            members => std::borrow::Cow::Owned(values.repeat(members)),
        }
    }

    /// Member `k`'s settings.
    pub fn member_config(&self, k: usize) -> Result<&MemberConfig> {
        Ok(&self.member(k)?.config)
    }

    /// Member `k`'s optimizer steps taken.
    pub fn member_step(&self, k: usize) -> Result<u64> {
        Ok(self.member(k)?.step)
    }

    /// Whether member `k` is frozen ([`Model::freeze`]).
    pub fn is_frozen(&self, k: usize) -> Result<bool> {
        Ok(self.member(k)?.frozen)
    }

    /// Freezes member `k` (it diverged): from the next training step on its parameters,
    /// optimizer state, running statistics, step and training totals stay as they are,
    /// while the others train on unchanged. It is still evaluated (eval steps, predict) with
    /// the state it froze at.
    pub fn freeze(&mut self, k: usize) -> Result<()> {
        self.member_mut(k)?.frozen = true;
        Ok(())
    }

    /// Sets member `k`'s learning rate from the next step on (its schedule's).
    pub fn set_member_lr(&mut self, k: usize, lr: f32) -> Result<()> {
        self.member_mut(k)?.config.optimizer.set_lr(lr);
        Ok(())
    }

    /// Member `k`'s whole state (blocking).
    pub fn member_state(&mut self, k: usize) -> Result<HostState> {
        let step = self.member(k)?.step;
        let graph = &self.graphs[&self.config.batch_size];
        let host = self.state.download(&self.ctx, graph, k, step)?;
        self.counters.blocking_readbacks += 1;
        self.in_flight.clear();
        Ok(host)
    }

    /// Every member's whole state, in member order (blocking).
    pub fn member_states(&mut self) -> Result<Vec<HostState>> {
        (0..self.members()).map(|k| self.member_state(k)).collect()
    }

    /// Replaces member `k`'s whole state (its step included).
    pub fn load_member_state(&mut self, k: usize, state: &HostState) -> Result<()> {
        self.member(k)?;
        super::state::check_state(self.graph(), state)?;
        self.state.upload_member(&self.ctx, k, state);
        self.members[k].step = state.step;
        Ok(())
    }

    /// One training step of every member on its own batch: `x` holds each member's
    /// `rows × features` values in member order, `labels` each member's `rows` labels. One
    /// upload, one command buffer, one submit.
    pub fn train_step_members(&mut self, x: &[f32], labels: &[u32]) -> Result<()> {
        self.require_mode(Mode::Train, "train_step_members")?;
        let rows = self.check_member_batch(x, labels)?;
        self.check_batch_norm_rows(rows)?;
        self.run_members(Mode::Train, rows, x, labels)?;
        self.advance();
        Ok(())
    }

    /// Forward in eval mode of every member on its own batch (as
    /// [`Model::train_step_members`] lays them out); each member's loss and accuracy join
    /// its totals.
    pub fn eval_step_members(&mut self, x: &[f32], labels: &[u32]) -> Result<()> {
        self.require_mode(Mode::Eval, "eval_step_members")?;
        let rows = self.check_member_batch(x, labels)?;
        self.run_members(Mode::Eval, rows, x, labels)?;
        self.counters.eval_steps += 1;
        Ok(())
    }

    /// Each member's logits [rows, classes] of the same batch, in eval mode (blocking).
    pub fn predict_members(&mut self, x: &[f32]) -> Result<Vec<Vec<f32>>> {
        let all = self.predict(x)?;
        let per = all.len() / self.members();
        Ok(all.chunks(per.max(1)).map(<[f32]>::to_vec).collect())
    }

    /// Each member's loss and accuracy totals (blocking).
    pub fn read_member_metrics(&mut self) -> Result<Vec<Totals>> {
        Ok(self
            .member_raw_totals()?
            .iter()
            .map(|raw| Totals::from_raw(raw))
            .collect())
    }

    /// Each member's totals buffer words (blocking).
    pub fn member_raw_totals(&mut self) -> Result<Vec<RawTotals>> {
        self.read_all_totals()
    }

    /// Puts back every member's totals (lands before the next step).
    pub fn set_member_raw_totals(&mut self, raw: &[RawTotals]) -> Result<()> {
        if raw.len() != self.members() {
            return Err(StackError::Count {
                given: raw.len(),
                members: self.members(),
            }
            .into());
        }
        self.write_all_totals(raw);
        Ok(())
    }

    pub(super) fn member(&self, k: usize) -> Result<&Member> {
        let members = self.members.len();
        self.members
            .get(k)
            .ok_or_else(|| Error::from(StackError::NoMember { member: k, members }))
    }

    fn member_mut(&mut self, k: usize) -> Result<&mut Member> {
        let members = self.members.len();
        self.members
            .get_mut(k)
            .ok_or_else(|| Error::from(StackError::NoMember { member: k, members }))
    }

    /// After a training step: every member that is not frozen has taken one more.
    pub(super) fn advance(&mut self) {
        for m in self.members.iter_mut().filter(|m| !m.frozen) {
            m.step += 1;
        }
        self.counters.train_steps += 1;
    }
}

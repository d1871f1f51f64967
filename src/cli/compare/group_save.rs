//! A group's save: every member of a stack that `wgnn compare` trains, in one file, so that
//! one rename commits them all and a crash can never leave two members at different saves.
//!
//! `groups/NAME.safetensors` (NAME: the group's first run, `03-seed1`) holds, for member K,
//! its tensors under `members.K.` — the state_dict and the optimizer state, named as a lone
//! run's `training_state.safetensors` names them — and, in the metadata `wgnn.member.K`
//! (JSON), its variant and seed, its run's settings, and where its last save stands: the
//! number of saves its lone run would have made by then, the position in the data, every
//! finished epoch's figures, its measures, and whether it diverged. A member that diverged
//! keeps its last save from before the divergence, as a lone run's directory does, so each
//! member's part is exactly what its own run directory would hold; the run directory is
//! derived from it when the group ends (`stacked::write_run_dir`). The file is written through
//! [`wgnn::durable`] (temp file, fsync, rename, fsync of the directory) and carries a CRC-32
//! per tensor and of its metadata, checked when read.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};
use wgnn::Model;
use wgnn::checkpoint::{
    CheckpointError, StateDict, apply_optimizer_state, apply_state_dict, model_state_dict,
    optimizer_state_dict,
};
use wgnn::graph::{Graph, HostState, TOTALS_LEN};
use wgnn::metrics::EpochMetrics;
use wgnn::model::MAX_MEMBERS;
use wgnn::run::{Position, RunConfig};

use crate::cli::error::{CliError, Result};

/// The group saves' directory, in the compare directory.
pub const GROUPS_DIR: &str = "groups";
/// A group save's file name ends so.
pub const GROUP_SUFFIX: &str = ".safetensors";
/// Metadata key of what the file is: a group save, of how many members.
const GROUP_KEY: &str = "wgnn.group";

fn member_key(k: usize) -> String {
    format!("wgnn.member.{k}")
}

fn tensor_prefix(k: usize) -> String {
    format!("members.{k}.")
}

/// One member as its last save left it: what its own run directory would hold.
#[derive(Clone, Debug, PartialEq)]
pub struct MemberSave {
    pub variant: String,
    pub seed: u64,
    pub run: RunConfig,
    /// The saves its lone run would have made so far (0: none yet); `state` is the last.
    pub saves: u64,
    /// Where that save stands in the data.
    pub position: Position,
    /// Every finished epoch's figures.
    pub history: Vec<EpochMetrics>,
    /// The gradient-signs measure of each finished epoch, when measured.
    pub shares: Vec<f64>,
    /// It diverged, after `history`: its run has ended, at its last save before.
    pub diverged: bool,
    /// The state of its last save (its initial state before the first).
    pub state: HostState,
}

/// A member's metadata as the file keeps it (floats that may be NaN as their bits).
#[derive(Serialize, Deserialize)]
struct MemberMeta {
    variant: String,
    seed: u64,
    run: RunConfig,
    saves: u64,
    epochs_done: usize,
    /// Batches of the next epoch done, and the totals' words as bits.
    within: Option<(usize, Vec<u32>)>,
    history: Vec<EpochMetrics>,
    shares: Vec<u64>,
    diverged: bool,
}

#[derive(Serialize, Deserialize)]
struct GroupMeta {
    members: usize,
}

fn bad(path: &Path, message: impl std::fmt::Display) -> CliError {
    CliError::CompareDir {
        path: path.to_path_buf(),
        message: format!(
            "{message}: not a group save this wgnn can resume; --overwrite starts the \
             experiment over"
        ),
    }
}

fn json(path: &Path, value: &impl Serialize) -> wgnn::Result<String> {
    serde_json::to_string(value).map_err(|e| {
        CheckpointError::Format {
            path: path.display().to_string(),
            message: e.to_string(),
        }
        .into()
    })
}

/// Writes every member's save to `path` as one atomic commit. `graph` is the members' (one
/// architecture): it names their tensors.
pub fn write(path: &Path, members: &[MemberSave], graph: &Graph) -> wgnn::Result<()> {
    let mut sd = StateDict {
        source: path.display().to_string(),
        ..StateDict::default()
    };
    let group = GroupMeta {
        members: members.len(),
    };
    sd.metadata.insert(GROUP_KEY.into(), json(path, &group)?);
    for (k, m) in members.iter().enumerate() {
        let prefix = tensor_prefix(k);
        let tensors = model_state_dict(graph, &m.state, "")
            .tensors
            .into_iter()
            .chain(optimizer_state_dict(graph, &m.state).tensors);
        for (name, tensor) in tensors {
            sd.tensors.insert(format!("{prefix}{name}"), tensor);
        }
        let meta = MemberMeta {
            variant: m.variant.clone(),
            seed: m.seed,
            run: m.run.clone(),
            saves: m.saves,
            epochs_done: m.position.epochs_done,
            within: m
                .position
                .within
                .map(|(batches, totals)| (batches, totals.iter().map(|v| v.to_bits()).collect())),
            history: m.history.clone(),
            shares: m.shares.iter().map(|s| s.to_bits()).collect(),
            diverged: m.diverged,
        };
        sd.metadata.insert(member_key(k), json(path, &meta)?);
        sd.metadata
            .insert(format!("{prefix}step"), m.state.step.to_string());
    }
    sd.write(path)?;
    Ok(())
}

/// A member read back from a group save, its tensors not yet put into a model.
pub struct SavedMember {
    pub variant: String,
    pub seed: u64,
    pub run: RunConfig,
    pub saves: u64,
    pub position: Position,
    pub history: Vec<EpochMetrics>,
    pub shares: Vec<f64>,
    pub diverged: bool,
    /// Its tensors (the prefix taken off) and its step.
    tensors: StateDict,
}

impl SavedMember {
    /// Its state, as member `k` of `model` (a stack of its architecture, or a lone model
    /// with `k` = 0) holds it: checked strictly against the model's state_dict and
    /// optimizer state.
    pub fn state(&self, model: &mut Model, k: usize) -> wgnn::Result<HostState> {
        let keys = model.sequential().state_dict_keys();
        let (mut weights, mut optimizer) = (self.tensors.clone(), self.tensors.clone());
        weights.tensors.retain(|name, _| keys.contains(name));
        optimizer.tensors.retain(|name, _| !keys.contains(name));
        let base = model.member_state(k)?;
        let state = apply_state_dict(&weights, model.sequential(), model.graph(), &base)?;
        Ok(apply_optimizer_state(&optimizer, model.graph(), &state)?)
    }

    /// The member with its state.
    pub fn with_state(self, state: HostState) -> MemberSave {
        MemberSave {
            variant: self.variant,
            seed: self.seed,
            run: self.run,
            saves: self.saves,
            position: self.position,
            history: self.history,
            shares: self.shares,
            diverged: self.diverged,
            state,
        }
    }
}

/// Reads a group save, checked: its checksums, its member count (at most a stack's), each
/// member's metadata and position.
pub fn read(path: &Path) -> Result<Vec<SavedMember>> {
    let sd = StateDict::read(path).map_err(wgnn::Error::from)?;
    if !sd.checksummed {
        return Err(bad(path, "it carries no checksums"));
    }
    let group: GroupMeta = sd
        .metadata
        .get(GROUP_KEY)
        .ok_or_else(|| bad(path, format!("no {GROUP_KEY:?} metadata")))
        .and_then(|text| serde_json::from_str(text).map_err(|e| bad(path, e)))?;
    if group.members == 0 || group.members > MAX_MEMBERS {
        return Err(bad(
            path,
            format!(
                "{} members (a stack holds 1 to {MAX_MEMBERS})",
                group.members
            ),
        ));
    }
    let mut tensors: Vec<BTreeMap<_, _>> = vec![BTreeMap::new(); group.members];
    for (name, tensor) in sd.tensors {
        let member = name
            .strip_prefix("members.")
            .and_then(|rest| rest.split_once('.'))
            .and_then(|(k, rest)| Some((k.parse::<usize>().ok()?, rest.to_string())));
        match member {
            Some((k, rest)) if k < group.members => {
                tensors[k].insert(rest, tensor);
            }
            _ => return Err(bad(path, format!("tensor {name:?} is no member's"))),
        }
    }
    let mut members = Vec::with_capacity(group.members);
    for (k, tensors) in tensors.into_iter().enumerate() {
        let key = member_key(k);
        let meta: MemberMeta = sd
            .metadata
            .get(&key)
            .ok_or_else(|| bad(path, format!("no {key:?} metadata")))
            .and_then(|text| {
                serde_json::from_str(text).map_err(|e| bad(path, format!("{key:?}: {e}")))
            })?;
        let step = sd
            .metadata
            .get(&format!("{}step", tensor_prefix(k)))
            .ok_or_else(|| bad(path, format!("member {k} has no step")))?;
        let within = match meta.within {
            None => None,
            Some((batches, words)) => {
                let totals: [f32; TOTALS_LEN] = words
                    .iter()
                    .map(|&w| f32::from_bits(w))
                    .collect::<Vec<_>>()
                    .try_into()
                    .map_err(|_| bad(path, format!("member {k}'s totals are not {TOTALS_LEN}")))?;
                Some((batches, totals))
            }
        };
        members.push(SavedMember {
            variant: meta.variant,
            seed: meta.seed,
            run: meta.run,
            saves: meta.saves,
            position: Position {
                epochs_done: meta.epochs_done,
                within,
            },
            history: meta.history,
            shares: meta.shares.into_iter().map(f64::from_bits).collect(),
            diverged: meta.diverged,
            tensors: StateDict {
                tensors,
                metadata: BTreeMap::from([("step".to_string(), step.clone())]),
                source: format!("{} (member {k})", path.display()),
                checksummed: true,
            },
        });
    }
    Ok(members)
}

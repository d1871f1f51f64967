//! The stacked path: a group of runs ([`super::grouping`]) trained as one stack
//! ([`wgnn::stack::fit_stack`]), every member with its own seed, shuffle, rates and schedule;
//! saved where a lone run saves (each epoch's end, every `--checkpoint-every` steps) as one
//! group save ([`super::group_save`]); and, when the group ends, each member's run directory
//! written from its part of the save as its lone run would have left it — the same
//! `training_state.safetensors`, checkpoint, `measures.csv` and `result.csv`. A member that
//! diverges is reported and frozen while the others train on; its run ends at its last save
//! before the divergence, as a lone run's does.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use wgnn::durable;
use wgnn::graph::TOTALS_LEN;
use wgnn::run::{self, Position, Preprocessing};
use wgnn::rundir::{RunDir, Saved};
use wgnn::stack::{Divergence, MemberFit, StackCheckpoint, StackFitOptions, StackProgress};

use super::group_save::{self, MemberSave, SavedMember};
use super::grouping;
use super::measure;
use super::results::{EpochRow, RUN_RESULT_FILE, RunRecord, to_csv};
use super::session::{Clock, DataCache, RunId, Session, differences, io};
use crate::cli::error::{CliError, Result};

/// A group of runs to train as one stack: its save's file, its runs (in the experiment's
/// order), and what that file held when the group resumes.
pub struct Group {
    pub file: PathBuf,
    pub ids: Vec<RunId>,
    pub saved: Option<Vec<SavedMember>>,
}

/// How many names a group's progress line lists before it counts the rest.
const NAMES_SHOWN: usize = 12;

/// Reports a member's divergence as it is found.
struct Report<'a> {
    label: &'a str,
    names: &'a [String],
}

impl StackProgress for Report<'_> {
    fn diverged(&mut self, d: &Divergence) {
        let name = self.names.get(d.member).map_or("?", String::as_str);
        println!(
            "{}: {name} diverged at step {} (epoch {}): {}; frozen, the others train on",
            self.label, d.step, d.epoch, d.what
        );
    }
}

/// `lr=0.1 · seed 2, lr=0.5 · seed 2 and 10 more`.
fn list(names: &[String]) -> String {
    let mut text = names[..names.len().min(NAMES_SHOWN)].join(", ");
    if names.len() > NAMES_SHOWN {
        text.push_str(&format!(" and {} more", names.len() - NAMES_SHOWN));
    }
    text
}

/// One member's record: its figures and measures, and the epoch where it diverged.
fn record(m: &MemberSave) -> RunRecord {
    RunRecord {
        variant: m.variant.clone(),
        seed: m.seed,
        epochs: m
            .history
            .iter()
            .enumerate()
            .map(|(i, metrics)| EpochRow {
                metrics: *metrics,
                share: m.shares.get(i).copied(),
            })
            .collect(),
        diverged: m.diverged.then_some(m.history.len() + 1),
    }
}

impl Session<'_> {
    fn name(&self, id: RunId) -> String {
        format!(
            "{} · seed {}",
            self.experiment.variants[id.variant].name, id.seed
        )
    }

    /// Trains `group` to its end — resumed from its save when it has one — and writes each
    /// member's run directory and `result.csv`; returns the records of the runs that had
    /// none. `label` names the group in its progress lines.
    pub(super) fn train_group(
        &self,
        group: Group,
        label: &str,
        data: &mut DataCache,
        clock: &mut Clock,
    ) -> Result<Vec<(RunId, RunRecord)>> {
        let experiment = self.experiment;
        let ids = &group.ids;
        let names: Vec<String> = ids.iter().map(|&id| self.name(id)).collect();
        let runs: Vec<_> = ids.iter().map(|&id| self.run_of(id)).collect();
        let lead = &runs[0];
        let transform = self.prepared[ids[0].variant].transform.clone();
        let members = runs
            .iter()
            .map(grouping::member)
            .collect::<wgnn::Result<Vec<_>>>()?;
        let mut model =
            lead.build_stack(self.ctx.clone(), transform.clone().map(Arc::new), members)?;
        let mut slots = Vec::with_capacity(ids.len());
        match group.saved {
            None => {
                for (k, run) in runs.iter().enumerate() {
                    slots.push(MemberSave {
                        variant: experiment.variants[ids[k].variant].name.clone(),
                        seed: ids[k].seed,
                        run: run.clone(),
                        saves: 0,
                        position: Position::default(),
                        history: Vec::new(),
                        shares: Vec::new(),
                        diverged: false,
                        state: model.member_state(k)?,
                    });
                }
            }
            Some(saved) => {
                for (k, member) in saved.into_iter().enumerate() {
                    if member.run != runs[k] {
                        return Err(CliError::CompareDir {
                            path: group.file.clone(),
                            message: format!(
                                "holds {} with other settings ({}) than the experiment now \
                                 gives it: its data changed? --overwrite starts the experiment \
                                 over",
                                names[k],
                                differences(&member.run, &runs[k])
                            ),
                        });
                    }
                    let state = member.state(&mut model, k)?;
                    model.load_member_state(k, &state)?;
                    if member.diverged {
                        model.freeze(k)?;
                    }
                    slots.push(member.with_state(state));
                }
            }
        }
        // The members still training stand at one position: the group's.
        let active: Vec<usize> = (0..slots.len()).filter(|&k| !slots[k].diverged).collect();
        let position = active.first().map(|&k| slots[k].position);
        let place = |p: Position| (p.epochs_done, p.within.map(|(batches, _)| batches));
        if active
            .iter()
            .any(|&k| Some(place(slots[k].position)) != position.map(place))
        {
            return Err(CliError::CompareDir {
                path: group.file.clone(),
                message: "holds members at different positions: not a save this wgnn wrote; \
                          --overwrite starts the experiment over"
                    .into(),
            });
        }
        let epochs = lead.epochs;
        let resumed = match position {
            Some(p) if p.epochs_done < epochs && slots[active[0]].saves > 0 => {
                let saved = Saved {
                    step: slots[active[0]].state.step,
                    epochs_done: p.epochs_done,
                    batches_done: p.within.map(|(b, _)| b),
                };
                format!(" (resumed from {saved})")
            }
            _ => String::new(),
        };
        println!(
            "{label}: {} run(s) in one stack — {}{resumed}",
            ids.len(),
            list(&names)
        );
        let began = Instant::now();
        clock.begin(group_work(active.len(), epochs, position));
        if let Some(p) = position.filter(|p| p.epochs_done < epochs) {
            let splits = data.get(&lead.data)?;
            let options = StackFitOptions {
                epochs,
                members: runs
                    .iter()
                    .map(|r| MemberFit {
                        shuffle_seed: r.shuffle.then_some(r.seed),
                        lr_schedule: r.lr_schedule.map(|schedule| (schedule, r.lr)),
                    })
                    .collect(),
                same_batches: false,
                drop_last: lead.drop_last,
                start_epoch: p.epochs_done,
                start_within: p.within.map(|(batches, _)| {
                    let totals = slots
                        .iter()
                        .map(|s| s.position.within.map_or([0.0; TOTALS_LEN], |w| w.1))
                        .collect();
                    (batches, totals)
                }),
                checkpoint_every: self.checkpoint_every,
                freeze_on_nonfinite: true,
                ..StackFitOptions::default()
            };
            let mut report = Report {
                label,
                names: &names,
            };
            let ctx = &self.ctx;
            let file = &group.file;
            let measured = experiment.gradient_signs;
            let mut epoch_began = Instant::now();
            let mut epoch = p.epochs_done;
            wgnn::stack::fit_stack(
                &mut model,
                &splits.train,
                &splits.test,
                &options,
                &mut report,
                |model, at| {
                    match at {
                        StackCheckpoint::EpochEnd(metrics) => {
                            let live: Vec<usize> = (0..metrics.len())
                                .filter(|&k| metrics[k].is_some())
                                .collect();
                            // The measure goes with the save that ends its epoch.
                            let shares = if measured {
                                measure::single_signed_shares(ctx, model, &live, &splits.train)?
                            } else {
                                Vec::new()
                            };
                            for (j, &k) in live.iter().enumerate() {
                                let Some(m) = metrics[k] else { continue };
                                let slot = &mut slots[k];
                                slot.state = model.member_state(k)?;
                                slot.saves += 1;
                                slot.position = Position {
                                    epochs_done: m.epoch,
                                    within: None,
                                };
                                slot.history.retain(|h| h.epoch < m.epoch);
                                slot.history.push(m);
                                if let Some(&share) = shares.get(j) {
                                    slot.shares.truncate(m.epoch - 1);
                                    slot.shares.push(share);
                                }
                            }
                        }
                        StackCheckpoint::Within {
                            epoch,
                            batches_done,
                            totals,
                        } => {
                            for (k, slot) in slots.iter_mut().enumerate() {
                                if model.is_frozen(k)? {
                                    continue;
                                }
                                slot.state = model.member_state(k)?;
                                slot.saves += 1;
                                slot.position = Position {
                                    epochs_done: epoch,
                                    within: Some((batches_done, totals[k])),
                                };
                            }
                        }
                    }
                    for (k, slot) in slots.iter_mut().enumerate() {
                        slot.diverged |= model.is_frozen(k)?;
                    }
                    group_save::write(file, &slots, model.graph())?;
                    if let StackCheckpoint::EpochEnd(metrics) = at {
                        let training = metrics.iter().filter(|m| m.is_some()).count();
                        clock.advance(training);
                        epoch += 1;
                        let diverged = slots.iter().filter(|s| s.diverged).count();
                        println!(
                            "{label}: epoch {epoch}/{epochs}, {training} training{} ({:.1} s; {})",
                            if diverged > 0 {
                                format!(", {diverged} diverged")
                            } else {
                                String::new()
                            },
                            epoch_began.elapsed().as_secs_f64(),
                            clock.left()
                        );
                        epoch_began = Instant::now();
                    }
                    Ok(())
                },
            )?;
            // Members frozen after the last save (every member diverged): their runs end too.
            let mut changed = false;
            for (k, slot) in slots.iter_mut().enumerate() {
                if model.is_frozen(k)? && !slot.diverged {
                    slot.diverged = true;
                    changed = true;
                }
            }
            if changed {
                group_save::write(&group.file, &slots, model.graph())?;
            }
        }
        drop(model);
        // Each member's run directory, from its part of the save; then the save goes.
        let mut records = Vec::new();
        for (k, slot) in slots.iter().enumerate() {
            let path = self.path(ids[k]);
            if path.join(RUN_RESULT_FILE).exists() {
                continue;
            }
            self.write_run_dir(&path, slot, transform.as_ref())?;
            let record = record(slot);
            write_result(&path, &record)?;
            println!("{} {}", self.prefix(ids[k]), record.outcome());
            records.push((ids[k], record));
        }
        clock.finish();
        println!(
            "{label}: {} run(s) ended ({:.1} s; {})",
            ids.len(),
            began.elapsed().as_secs_f64(),
            clock.left()
        );
        remove_group_save(&group.file)?;
        Ok(records)
    }

    /// A member's run directory as its lone run would have left it at its last save: the
    /// preprocessing's tensors, the measures so far and, once it has saved, the training state,
    /// checkpoint and figures of that save under the save's own number.
    fn write_run_dir(
        &self,
        path: &Path,
        member: &MemberSave,
        transform: Option<&wgnn::data::Transform>,
    ) -> Result<()> {
        let mut dir = RunDir::create(path, true)?;
        let _ = dir.take_notes();
        let measures = path.join(measure::MEASURES_FILE);
        if measures.exists() {
            durable::remove_file(&measures).map_err(|e| io(&measures, e))?;
        }
        if let (Some(Preprocessing::Fitted(_)), Some(t)) = (&member.run.normalization, transform) {
            run::write_transform(&path.join(run::PREPROCESS_FILE), t)?;
        }
        if member.saves == 0 {
            return Ok(());
        }
        if !member.shares.is_empty() {
            measure::write_measures(&measures, &member.shares)?;
        }
        let mut model = member.run.build_with(
            self.ctx.clone(),
            Some(member.state.clone()),
            transform.cloned(),
        )?;
        dir.adopt(member.saves - 1, member.history.clone());
        let _ = dir.save(&mut model, &member.run, member.position)?;
        Ok(())
    }

    /// `--sequential` meeting a group save: each of its runs gets its run directory as its
    /// lone run would have left it at its last save (and its `result.csv` if it ended), from
    /// where the one-at-a-time path resumes it; then the save goes.
    pub(super) fn hand_over(
        &self,
        file: &Path,
        ids: &[RunId],
        saved: Vec<SavedMember>,
    ) -> Result<()> {
        println!(
            "{}: a stacked group's save, handed over to --sequential run by run",
            file.display()
        );
        for (k, member) in saved.into_iter().enumerate() {
            let id = ids[k];
            let path = self.path(id);
            if path.join(RUN_RESULT_FILE).exists() {
                continue;
            }
            let run = self.run_of(id);
            if member.run != run {
                return Err(CliError::CompareDir {
                    path: file.to_path_buf(),
                    message: format!(
                        "holds {} with other settings ({}) than the experiment now gives it: \
                         its data changed? --overwrite starts the experiment over",
                        self.name(id),
                        differences(&member.run, &run)
                    ),
                });
            }
            let transform = self.prepared[id.variant].transform.clone();
            let mut lone = run.build_with(self.ctx.clone(), None, transform.clone())?;
            let state = member.state(&mut lone, 0)?;
            drop(lone);
            let member = member.with_state(state);
            self.write_run_dir(&path, &member, transform.as_ref())?;
            if member.diverged || member.position.epochs_done >= run.epochs {
                write_result(&path, &record(&member))?;
            }
        }
        remove_group_save(file)
    }
}

/// The member-epochs left to train in a group of `active` members at `position`.
fn group_work(active: usize, epochs: usize, position: Option<Position>) -> usize {
    active * epochs.saturating_sub(position.map_or(epochs, |p| p.epochs_done))
}

impl Group {
    /// The member-epochs left to train, as the time left counts them.
    pub fn work(&self, epochs: usize) -> usize {
        match &self.saved {
            None => self.ids.len() * epochs,
            Some(saved) => {
                let active: Vec<&SavedMember> = saved.iter().filter(|m| !m.diverged).collect();
                group_work(active.len(), epochs, active.first().map(|m| m.position))
            }
        }
    }
}

/// A run's `result.csv`: the record that it has ended.
fn write_result(path: &Path, record: &RunRecord) -> Result<()> {
    let file = path.join(RUN_RESULT_FILE);
    durable::write_atomic(&file, &to_csv(std::slice::from_ref(record))).map_err(|e| io(&file, e))
}

/// Removes a group save whose runs have all ended (and are recorded in their directories).
pub fn remove_group_save(file: &Path) -> Result<()> {
    durable::remove_file(file).map_err(|e| io(file, e))?;
    let dir = durable::parent(file);
    durable::sync_dir(dir).map_err(|e| io(dir, e))
}

//! Deep ensembles: N models of one architecture and one run's settings but their seeds,
//! trained side by side as one stack ([`Model::stack`], [`crate::stack::fit_stack`]) and
//! predicting together by the mean of their probabilities — softmax for cross-entropy,
//! sigmoid for BCE (Lakshminarayanan et al., *Simple and Scalable Predictive Uncertainty
//! Estimation using Deep Ensembles*, 2017).
//!
//! Member k of the ensemble of a run is that run with seed `seed + k` ([`member_run`]): its
//! initial weights, dropout masks and shuffle are those of `wgnn train --seed seed+k`, and
//! so are its bits after every step (a stack's member computes what it would alone).
//!
//! The ensemble's output for a sample is p̄ = (1/N) Σₖ pₖ. It is computed from the members'
//! logits in log space, log p̄ = logsumexpₖ(log pₖ) − log N with log pₖ = z − logsumexp(z)
//! (log σ(z) = −softplus(−z) for BCE), so that no probability underflows to a log of zero.
//! As logits, an ensemble gives those whose softmax is p̄, log p̄ (for BCE, whose sigmoid is
//! p̄: log p̄ − log(1 − p̄)); its class is the argmax of p̄ (for BCE, p̄ > 0.5), and its loss
//! the negative log-likelihood −log p̄ of the true class.

use crate::data::{BatchOrder, Dataset};
use crate::error::Result;
use crate::model::{MAX_MEMBERS, MemberConfig, Model, StackError};
use crate::run::RunConfig;
use crate::stack::MemberFit;
use crate::train::Evaluation;

/// What keeps a set of members from being an ensemble, or a directory from holding one.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EnsembleError {
    /// Seeds `seed`..`seed + members - 1` leave u64.
    #[error(
        "--seed {seed} with {members} members: member seeds run from the seed up, and the last would pass 2^64 - 1"
    )]
    Seeds { seed: u64, members: usize },
    /// A member asked of a single model's run.
    #[error(
        "{path} holds a single model's run, not an ensemble's: --member applies to runs of `wgnn train --ensemble N`"
    )]
    NotAnEnsemble { path: String },
    #[error("{path}: member {member} does not exist: the ensemble has {members} (0 to {})", members - 1)]
    NoMember {
        path: String,
        member: usize,
        members: usize,
    },
    /// A member that diverged before its first save has no checkpoint.
    #[error("{path}: member {member} diverged before its first checkpoint ({why}): it has none")]
    NoCheckpoint {
        path: String,
        member: usize,
        why: String,
    },
    #[error(
        "{path}: every member diverged, so the ensemble has no model to average; --member K uses one member's last checkpoint"
    )]
    AllDiverged { path: String },
    /// A member's checkpoint that is not the one the ensemble's training state records.
    #[error("{path}: not member {member} of the ensemble in {dir}: {why}")]
    ForeignMember {
        path: String,
        dir: String,
        member: usize,
        why: String,
    },
    /// The members' checkpoints are of different saves: a save was interrupted between
    /// their renames.
    #[error(
        "{dir}: member {member}'s checkpoint is of save {found}, the ensemble's of save {expected} (a save was interrupted): `wgnn train --resume {dir}` rewrites it"
    )]
    MixedSaves {
        dir: String,
        member: usize,
        found: String,
        expected: u64,
    },
    /// Training cannot go on: every member is frozen.
    #[error("every one of the {members} members diverged: nothing is left to train")]
    EveryMemberDiverged { members: usize },
    /// An ensemble's run where a single model's was expected.
    #[error(
        "{path} holds an ensemble's run ({members} members under members/): resume it with `wgnn train --resume`, evaluate it whole or give --member K, or read one member from members/K"
    )]
    IsEnsemble { path: String, members: usize },
}

/// Member `k`'s run: `run` with seed `run.seed + k`.
pub fn member_run(run: &RunConfig, k: usize) -> Result<RunConfig> {
    let seed = run.seed.checked_add(k as u64).ok_or(EnsembleError::Seeds {
        seed: run.seed,
        members: k + 1,
    })?;
    Ok(RunConfig {
        seed,
        ..run.clone()
    })
}

/// The stack's members of an ensemble of `members` runs of `run`: seeds `run.seed`.. and
/// the run's optimizer. More than a stack holds is refused before anything is allocated.
pub fn member_configs(run: &RunConfig, members: usize) -> Result<Vec<MemberConfig>> {
    if members > MAX_MEMBERS {
        return Err(StackError::TooMany { members }.into());
    }
    (0..members)
        .map(|k| Ok(MemberConfig::new(member_run(run, k)?.seed, run.optimizer())))
        .collect()
}

/// Each member's part of the training loop, as `wgnn train --seed seed+k` trains alone: its
/// own shuffle (unless the run keeps the data's order) and the run's schedule.
pub fn member_fits(run: &RunConfig, members: &[MemberConfig]) -> Vec<MemberFit> {
    members
        .iter()
        .map(|m| MemberFit {
            shuffle_seed: run.shuffle.then_some(m.seed),
            lr_schedule: run.lr_schedule.map(|schedule| (schedule, run.lr)),
        })
        .collect()
}

/// The width of a row of [`log_mean_probabilities`]: a probability per class, two (not
/// positive, positive) for a model of one output (BCE).
pub fn classes_of(outputs: usize) -> usize {
    if outputs == 1 { 2 } else { outputs }
}

/// log p̄ per row and class of the members' logits, each `[rows, outputs]`: the log of the
/// mean of their softmax probabilities, or for one output (BCE) of their sigmoids, as
/// `[log(1 − p̄), log p̄]` ([`classes_of`]).
pub fn log_mean_probabilities(members: &[&[f32]], outputs: usize) -> Vec<f64> {
    let outputs = outputs.max(1);
    let rows = members.first().map_or(0, |m| m.len() / outputs);
    let width = classes_of(outputs);
    let log_n = (members.len().max(1) as f64).ln();
    let mut out = Vec::with_capacity(rows * width);
    let mut logs = vec![0.0f64; members.len()];
    let mut member_rows = vec![0.0f64; members.len() * width];
    for r in 0..rows {
        for (k, logits) in members.iter().enumerate() {
            let row = &logits[r * outputs..(r + 1) * outputs];
            let mine = &mut member_rows[k * width..(k + 1) * width];
            if outputs == 1 {
                let z = f64::from(row[0]);
                // log σ(−z) and log σ(z).
                mine[0] = -softplus(z);
                mine[1] = -softplus(-z);
            } else {
                let lse = log_sum_exp(row.iter().map(|&v| f64::from(v)));
                for (m, &v) in mine.iter_mut().zip(row) {
                    *m = f64::from(v) - lse;
                }
            }
        }
        for c in 0..width {
            for (k, l) in logs.iter_mut().enumerate() {
                *l = member_rows[k * width + c];
            }
            out.push(log_sum_exp(logs.iter().copied()) - log_n);
        }
    }
    out
}

/// The ensemble's logits from [`log_mean_probabilities`]: log p̄ per class, or for one
/// output log p̄ − log(1 − p̄), whose softmax (sigmoid) is p̄.
pub fn logits(log_probs: &[f64], outputs: usize) -> Vec<f32> {
    if outputs == 1 {
        log_probs
            .chunks(2)
            .map(|pair| (pair[1] - pair[0]) as f32)
            .collect()
    } else {
        log_probs.iter().map(|&l| l as f32).collect()
    }
}

/// The ensemble's probabilities from [`log_mean_probabilities`]: p̄ per class, or for one
/// output p̄ of the positive class.
pub fn probabilities(log_probs: &[f64], outputs: usize) -> Vec<f32> {
    if outputs == 1 {
        log_probs
            .chunks(2)
            .map(|pair| pair[1].exp() as f32)
            .collect()
    } else {
        log_probs.iter().map(|&l| l.exp() as f32).collect()
    }
}

/// The ensemble's class per row of [`log_mean_probabilities`]: the first of the largest p̄
/// (as `torch.argmax`); for one output, positive when p̄ > 0.5.
pub fn predictions(log_probs: &[f64], outputs: usize) -> Vec<usize> {
    log_probs
        .chunks(classes_of(outputs))
        .map(|row| {
            row.iter()
                .enumerate()
                .fold((0, f64::NEG_INFINITY), |best, (c, &v)| {
                    if v > best.1 { (c, v) } else { best }
                })
                .0
        })
        .collect()
}

/// [`log_mean_probabilities`] of the stack members `members` of `model` (in eval mode) on
/// the samples `x`, in batches of at most `batch_size` rows.
pub fn predict(
    model: &mut Model,
    members: &[usize],
    x: &[f32],
    batch_size: usize,
) -> Result<Vec<f64>> {
    let features: usize = model.config().sample_shape.iter().product();
    let outputs = model.graph().classes();
    model.eval();
    let mut out = Vec::new();
    for chunk in x.chunks(batch_size.max(1) * features.max(1)) {
        let all = model.predict_members(chunk)?;
        let chosen: Vec<&[f32]> = members.iter().map(|&k| all[k].as_slice()).collect();
        out.extend(log_mean_probabilities(&chosen, outputs));
    }
    Ok(out)
}

/// The ensemble of the stack members `members` of `model` on labelled `data`: the mean
/// negative log-likelihood of its averaged probabilities, its accuracy and its confusion
/// matrix.
pub fn evaluate(
    model: &mut Model,
    members: &[usize],
    data: &Dataset,
    batch_size: usize,
) -> Result<Evaluation> {
    let outputs = model.graph().classes();
    let width = classes_of(outputs);
    let mut confusion = vec![vec![0u64; width]; width];
    let (mut nll, mut correct) = (0.0f64, 0usize);
    let order = BatchOrder::new(data.len(), batch_size, None, false)?;
    let (mut x, mut y) = (Vec::new(), Vec::new());
    for indices in order.epoch_batches(0) {
        data.gather(&indices, &mut x, &mut y)?;
        let log_probs = predict(model, members, &x, batch_size)?;
        let classes = predictions(&log_probs, outputs);
        for ((row, &label), predicted) in log_probs.chunks(width).zip(&y).zip(classes) {
            let label = label as usize;
            if let Some(&l) = row.get(label) {
                nll -= l;
            }
            correct += usize::from(predicted == label);
            if let Some(cell) = confusion.get_mut(label).and_then(|r| r.get_mut(predicted)) {
                *cell += 1;
            }
        }
    }
    let samples = data.len();
    let n = samples.max(1) as f64;
    Ok(Evaluation {
        samples,
        loss: nll / n,
        accuracy: correct as f64 / n,
        confusion,
    })
}

/// Mean and sample standard deviation (n − 1; 0 for one value).
pub fn mean_std(values: &[f64]) -> (f64, f64) {
    let n = values.len().max(1) as f64;
    let mean = values.iter().sum::<f64>() / n;
    let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0).max(1.0);
    (mean, var.sqrt())
}

/// softplus(x) = log(1 + eˣ), without overflow.
fn softplus(x: f64) -> f64 {
    x.max(0.0) + (-x.abs()).exp().ln_1p()
}

/// log Σ eˣ, shifted by the largest x; −∞ for none or all −∞, NaN if any is NaN.
fn log_sum_exp(values: impl Iterator<Item = f64> + Clone) -> f64 {
    let m = values.clone().fold(f64::NEG_INFINITY, |m, v| {
        if v.is_nan() || m.is_nan() {
            f64::NAN
        } else {
            m.max(v)
        }
    });
    if m.is_nan() {
        return f64::NAN;
    }
    if m == f64::NEG_INFINITY {
        return m;
    }
    m + values.map(|v| (v - m).exp()).sum::<f64>().ln()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// p̄ computed directly, in f64.
    fn direct(members: &[&[f32]], outputs: usize) -> Vec<f64> {
        let rows = members[0].len() / outputs;
        let mut out = vec![0.0; rows * classes_of(outputs)];
        for m in members {
            for r in 0..rows {
                let row = &m[r * outputs..(r + 1) * outputs];
                if outputs == 1 {
                    let p = 1.0 / (1.0 + (-f64::from(row[0])).exp());
                    out[2 * r] += (1.0 - p) / members.len() as f64;
                    out[2 * r + 1] += p / members.len() as f64;
                } else {
                    let sum: f64 = row.iter().map(|&v| f64::from(v).exp()).sum();
                    for (c, &v) in row.iter().enumerate() {
                        out[r * outputs + c] += f64::from(v).exp() / sum / members.len() as f64;
                    }
                }
            }
        }
        out
    }

    fn close(a: &[f64], b: &[f64], tol: f64) {
        assert_eq!(a.len(), b.len());
        for (i, (x, y)) in a.iter().zip(b).enumerate() {
            assert!((x - y).abs() <= tol * (1.0 + y.abs()), "{i}: {x} vs {y}");
        }
    }

    #[test]
    fn the_mean_of_softmax_probabilities_in_log_space_is_the_direct_mean() {
        let a = [1.0f32, -2.0, 0.5, 3.0, 3.0, -1.0];
        let b = [-0.5f32, 2.5, 0.0, 0.1, 4.0, 2.0];
        let c = [0.0f32, 0.0, 0.0, -3.0, 1.0, 5.0];
        let members: [&[f32]; 3] = [&a, &b, &c];
        let log_p = log_mean_probabilities(&members, 3);
        let p: Vec<f64> = log_p.iter().map(|l| l.exp()).collect();
        close(&p, &direct(&members, 3), 1e-12);
        for row in p.chunks(3) {
            assert!((row.iter().sum::<f64>() - 1.0).abs() < 1e-12);
        }
        // p̄ ≈ (0.32, 0.41, 0.26) and (0.17, 0.46, 0.37).
        assert_eq!(predictions(&log_p, 3), [1, 1]);
        // The logits' softmax gives p̄ back.
        let z = logits(&log_p, 3);
        let back = crate::ops::softmax_xent::reference_softmax(&z, 3);
        close(
            &back.iter().map(|&v| f64::from(v)).collect::<Vec<_>>(),
            &p,
            1e-6,
        );
        // Probabilities are averaged, not logits: one member sure of class 1 outvotes the
        // two that lean to class 0 by logits, not by probability.
        let (sure, leaning) = ([0.0f32, 100.0], [2.0f32, 0.0]);
        let log_p = log_mean_probabilities(&[&sure, &leaning, &leaning], 2);
        assert_eq!(predictions(&log_p, 2), [0]);
        assert!((log_p[0].exp() - 2.0 / 3.0 / (1.0 + (-2.0f64).exp())).abs() < 1e-12);
    }

    #[test]
    fn one_member_gives_its_own_softmax_bit_for_bit() {
        let a = [1.5f32, -2.0, 0.25, 7.0, -3.0, 0.0];
        let p = probabilities(&log_mean_probabilities(&[&a], 3), 3);
        assert_eq!(p, crate::ops::softmax_xent::reference_softmax(&a, 3));
    }

    #[test]
    fn far_apart_logits_neither_underflow_nor_overflow() {
        // A softmax probability of e^-2000 is 0 in f64; its log is not lost.
        let a = [0.0f32, -2000.0];
        let b = [0.0f32, -3000.0];
        let log_p = log_mean_probabilities(&[&a, &b], 2);
        assert!(log_p.iter().all(|l| l.is_finite()), "{log_p:?}");
        assert!(
            (log_p[1] - (-2000.0 - 2.0f64.ln())).abs() < 1e-9,
            "{log_p:?}"
        );
        // BCE at ±1e4: p̄ = 1/2 exactly, a logit of 0 and class 0 (not above 0.5).
        let (pos, neg) = ([1.0e4f32], [-1.0e4f32]);
        let log_p = log_mean_probabilities(&[&pos, &neg], 1);
        assert!(log_p.iter().all(|l| l.is_finite()), "{log_p:?}");
        assert_eq!(logits(&log_p, 1), [0.0]);
        assert_eq!(probabilities(&log_p, 1), [0.5]);
        assert_eq!(predictions(&log_p, 1), [0]);
    }

    #[test]
    fn the_mean_of_sigmoids_and_its_logit() {
        let a = [2.0f32, -1.0, 0.0];
        let b = [-0.5f32, -3.0, 4.0];
        let members: [&[f32]; 2] = [&a, &b];
        let log_p = log_mean_probabilities(&members, 1);
        let p: Vec<f64> = log_p.iter().map(|l| l.exp()).collect();
        close(&p, &direct(&members, 1), 1e-12);
        let probs = probabilities(&log_p, 1);
        for (z, p) in logits(&log_p, 1).iter().zip(&probs) {
            assert!((1.0 / (1.0 + (-z).exp()) - p).abs() < 1e-6);
        }
        // p̄ = (σ(2) + σ(−0.5))/2 = 0.63 → 1; (σ(−1) + σ(−3))/2 = 0.16 → 0; 0.99 → 1.
        assert_eq!(predictions(&log_p, 1), [1, 0, 1]);
    }

    #[test]
    fn nan_propagates() {
        let a = [f32::NAN, 1.0];
        let log_p = log_mean_probabilities(&[&a, &[0.0, 0.0]], 2);
        assert!(log_p.iter().all(|l| l.is_nan()), "{log_p:?}");
    }

    #[test]
    fn member_seeds_count_up_from_the_run_s_and_may_not_overflow() {
        let mut run: RunConfig = serde_json::from_str(
            r#"{"arch":"linear:2","sample_shape":[3],"classes":2,"loss":"ce","label_smoothing":0,
                "pos_weight":1,"optimizer":"sgd","lr":0.1,"momentum":0.9,"weight_decay":0,
                "batch_size":4,"epochs":1,"seed":7,"shuffle":true,"drop_last":false,
                "normalization":null,"data":{"path":null,"test_path":null,"holdout":0.2,
                "label_column":null,"normalize":false,"check_finite":false}}"#,
        )
        .unwrap();
        let members = member_configs(&run, 3).unwrap();
        let seeds: Vec<u64> = members.iter().map(|m| m.seed).collect();
        assert_eq!(seeds, [7, 8, 9]);
        let fits = member_fits(&run, &members);
        assert_eq!(fits[2].shuffle_seed, Some(9));
        run.shuffle = false;
        assert_eq!(member_fits(&run, &members)[2].shuffle_seed, None);
        run.seed = u64::MAX - 1;
        assert!(member_configs(&run, 2).is_ok());
        let err = member_configs(&run, 3).unwrap_err().to_string();
        assert!(err.contains("2^64"), "{err}");
        let err = member_configs(&run, MAX_MEMBERS + 1)
            .unwrap_err()
            .to_string();
        assert!(err.contains("more than one stack holds"), "{err}");
    }

    #[test]
    fn mean_and_sample_std() {
        let (m, s) = mean_std(&[1.0, 2.0, 3.0, 4.0]);
        assert_eq!(m, 2.5);
        assert!((s - 1.2909944487358056).abs() < 1e-15);
        assert_eq!(mean_std(&[0.9]), (0.9, 0.0));
    }
}

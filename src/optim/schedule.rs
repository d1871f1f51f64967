//! Learning-rate schedules stepped once per epoch, as `torch.optim.lr_scheduler`'s `StepLR`
//! and `CosineAnnealingLR` (whose closed forms give the same rates; computed in f64, as
//! Python does).

use serde::{Deserialize, Serialize};

/// A learning rate that changes from epoch to epoch.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum LrSchedule {
    /// `StepLR(step_size, gamma)`: lr · gamma^⌊epoch / step_size⌋.
    Step { step_size: usize, gamma: f32 },
    /// `CosineAnnealingLR(T_max, eta_min)`: eta_min + (lr − eta_min) · (1 + cos(π · epoch /
    /// T_max)) / 2, which climbs back after T_max as PyTorch's does.
    Cosine { t_max: usize, eta_min: f32 },
}

impl LrSchedule {
    /// The rate for epoch `epoch` (0-based) from the base rate `lr`.
    pub fn lr(&self, lr: f32, epoch: usize) -> f32 {
        let (lr, epoch) = (f64::from(lr), epoch as f64);
        let rate = match *self {
            LrSchedule::Step { step_size, gamma } => {
                lr * f64::from(gamma).powf((epoch / step_size as f64).floor())
            }
            LrSchedule::Cosine { t_max, eta_min } => {
                let eta_min = f64::from(eta_min);
                let phase = std::f64::consts::PI * epoch / t_max as f64;
                eta_min + (lr - eta_min) * (1.0 + phase.cos()) / 2.0
            }
        };
        rate as f32
    }

    /// Rejects what the PyTorch schedulers reject (or divide by).
    pub fn validate(&self) -> Result<(), ScheduleError> {
        match *self {
            LrSchedule::Step { step_size: 0, .. } => Err(ScheduleError::StepSizeZero),
            LrSchedule::Step { gamma, .. } if !(gamma > 0.0) => {
                Err(ScheduleError::GammaNotPositive { gamma })
            }
            LrSchedule::Cosine { t_max: 0, .. } => Err(ScheduleError::TMaxZero),
            LrSchedule::Cosine { eta_min, .. } if !(eta_min >= 0.0) => {
                Err(ScheduleError::EtaMinNegative { eta_min })
            }
            _ => Ok(()),
        }
    }

    /// `step:STEP_SIZE:GAMMA` or `cosine:T_MAX[:ETA_MIN]`, as `--lr-schedule` takes them.
    pub fn parse(text: &str) -> Result<Self, ScheduleError> {
        let parts: Vec<&str> = text.split(':').collect();
        let number = |s: &str, what| {
            s.parse::<f64>().map_err(|_| ScheduleError::NotANumber {
                what,
                value: s.into(),
                text: text.into(),
            })
        };
        let count = |s: &str, what| {
            s.parse::<usize>().map_err(|_| ScheduleError::NotACount {
                what,
                value: s.into(),
                text: text.into(),
            })
        };
        let schedule = match parts[..] {
            ["step", size, gamma] => LrSchedule::Step {
                step_size: count(size, "step size")?,
                gamma: number(gamma, "gamma")? as f32,
            },
            ["cosine", t_max] => LrSchedule::Cosine {
                t_max: count(t_max, "T_max")?,
                eta_min: 0.0,
            },
            ["cosine", t_max, eta_min] => LrSchedule::Cosine {
                t_max: count(t_max, "T_max")?,
                eta_min: number(eta_min, "eta_min")? as f32,
            },
            _ => return Err(ScheduleError::Form { text: text.into() }),
        };
        schedule.validate()?;
        Ok(schedule)
    }
}

/// A learning-rate schedule that cannot be parsed or that PyTorch's schedulers reject.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum ScheduleError {
    #[error("--lr-schedule {text:?}: expected step:STEP_SIZE:GAMMA or cosine:T_MAX[:ETA_MIN]")]
    Form { text: String },
    /// `what` (gamma, eta_min) is `value`, not a number, in the schedule `text`.
    #[error("{what} {value:?} in --lr-schedule {text:?} is not a number")]
    NotANumber {
        what: &'static str,
        value: String,
        text: String,
    },
    /// `what` (step size, T_max) is `value`, not a count, in the schedule `text`.
    #[error("{what} {value:?} in --lr-schedule {text:?} is not a count")]
    NotACount {
        what: &'static str,
        value: String,
        text: String,
    },
    #[error("learning-rate schedule: step_size must be at least 1")]
    StepSizeZero,
    #[error("learning-rate schedule: gamma must be positive, got {gamma}")]
    GammaNotPositive { gamma: f32 },
    #[error("learning-rate schedule: T_max must be at least 1")]
    TMaxZero,
    #[error("learning-rate schedule: eta_min must be 0 or more, got {eta_min}")]
    EtaMinNegative { eta_min: f32 },
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Rates torch.optim.lr_scheduler gave for epochs 0..7 from lr 0.1 (PyTorch 2.15).
    #[test]
    fn rates_follow_pytorch_schedulers() {
        let step = LrSchedule::Step {
            step_size: 2,
            gamma: 0.5,
        };
        let want = [0.1, 0.1, 0.05, 0.05, 0.025, 0.025, 0.0125];
        for (epoch, &w) in want.iter().enumerate() {
            assert_eq!(step.lr(0.1, epoch), w as f32, "StepLR epoch {epoch}");
        }
        let cosine = LrSchedule::Cosine {
            t_max: 4,
            eta_min: 0.01,
        };
        let want = [
            0.1,
            0.086_819_805_153_394_64,
            0.055_000_000_000_000_01,
            0.023_180_194_846_605_363,
            0.01,
            0.023_180_194_846_605_363,
            0.055_000_000_000_000_02,
        ];
        for (epoch, &w) in want.iter().enumerate() {
            assert_eq!(
                cosine.lr(0.1, epoch),
                w as f32,
                "CosineAnnealingLR epoch {epoch}"
            );
        }
    }

    #[test]
    fn parses_the_command_line_forms_and_rejects_the_rest() {
        assert_eq!(
            LrSchedule::parse("step:10:0.1").unwrap(),
            LrSchedule::Step {
                step_size: 10,
                gamma: 0.1
            }
        );
        assert_eq!(
            LrSchedule::parse("cosine:12").unwrap(),
            LrSchedule::Cosine {
                t_max: 12,
                eta_min: 0.0
            }
        );
        assert_eq!(
            LrSchedule::parse("cosine:12:1e-4").unwrap(),
            LrSchedule::Cosine {
                t_max: 12,
                eta_min: 1e-4
            }
        );
        for (bad, needle) in [
            ("step:0:0.1", "step_size must be at least 1"),
            ("step:2:-1", "gamma must be positive"),
            ("cosine:x", "T_max \"x\""),
            ("linear:3", "expected step:STEP_SIZE:GAMMA"),
        ] {
            let err = LrSchedule::parse(bad).unwrap_err().to_string();
            assert!(err.contains(needle), "{bad}: {err}");
        }
        assert_eq!(
            LrSchedule::parse("step:2:-1"),
            Err(ScheduleError::GammaNotPositive { gamma: -1.0 })
        );
        assert_eq!(
            LrSchedule::parse("cosine:x"),
            Err(ScheduleError::NotACount {
                what: "T_max",
                value: "x".into(),
                text: "cosine:x".into(),
            })
        );
    }
}

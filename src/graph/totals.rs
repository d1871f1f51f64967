//! Loss and accuracy totals as the GPU keeps them: a few words the metrics kernel (or a loss
//! that folds its own rows) adds each batch into, and the optimizer's note of the first
//! non-finite update. Read back only when asked.

/// Words in the running totals buffer: eight the metrics kernel keeps (see
/// `shaders/reduce.wgsl`) and four the optimizer's (`NONFINITE` in `shaders/optim.wgsl`).
pub const TOTALS_LEN: usize = 12;
/// The first of the optimizer's words.
const NONFINITE_WORDS: usize = 8;
/// The totals buffer's words, as the metrics kernel leaves them.
pub type RawTotals = [f32; TOTALS_LEN];

/// Loss and accuracy accumulated on the GPU since the last reset.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Totals {
    /// Σ over batches of (batch loss × samples counted).
    pub weighted_loss: f64,
    pub correct: f64,
    /// Samples counted (targets not ignored).
    pub count: f64,
    pub batches: u64,
    /// The most recent batch's loss.
    pub last_loss: f32,
    /// The step whose loss was first NaN or infinite.
    pub first_nonfinite_step: Option<u32>,
    /// The first optimizer update that met a non-finite gradient or left a non-finite
    /// parameter.
    pub first_nonfinite_update: Option<NonFiniteUpdate>,
}

/// An optimizer update that met a non-finite gradient or left a non-finite parameter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NonFiniteUpdate {
    /// The step (its low 32 bits).
    pub step: u32,
    /// An element of the flat parameter buffer concerned
    /// ([`crate::Model::parameter_at`] names it).
    pub element: u32,
    /// The parameter was not finite after the update.
    pub parameter: bool,
    /// The gradient was not finite.
    pub gradient: bool,
}

impl Totals {
    /// Decodes the raw totals buffer.
    pub fn from_raw(raw: &[f32]) -> Self {
        let at = |i: usize| raw.get(i).copied().unwrap_or(0.0);
        Self {
            weighted_loss: f64::from(at(0)),
            correct: f64::from(at(1)),
            count: f64::from(at(2)),
            batches: at(3) as u64,
            last_loss: at(4),
            first_nonfinite_step: (at(6) != 0.0).then(|| at(5).to_bits()),
            first_nonfinite_update: {
                let word = |i: usize| at(NONFINITE_WORDS + i).to_bits();
                (word(0) != 0).then(|| NonFiniteUpdate {
                    step: word(1),
                    element: word(2),
                    parameter: word(3) & 1 != 0,
                    gradient: word(3) & 2 != 0,
                })
            },
        }
    }

    /// Sample-weighted mean loss.
    pub fn mean_loss(&self) -> f64 {
        self.weighted_loss / self.count
    }

    pub fn accuracy(&self) -> f64 {
        self.correct / self.count
    }
}

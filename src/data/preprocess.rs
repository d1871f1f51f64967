//! The lecture's input preprocessing, every option of it: "Assume X \[N × D\] is a data matrix,
//! each row an example" — subtract the mean image, or the per-channel mean, or the per-channel
//! mean and divide by the per-channel std; "in practice you may also see PCA and whitening".
//!
//! Each option is fitted on the training split only ([`Transform::fit`]) into one affine map
//!
//! ```text
//! y = A · ((x − shift) ⊘ divisor)        x: one sample flattened, \[D\]
//! ```
//!
//! with the parts an option needs (a missing divisor is 1, a missing A the identity). The
//! model applies it as the fixed first stage of its plan (`ops::preprocess`), in train, eval
//! and predict alike, so raw inputs go in and no host pass touches a batch.
//!
//! | option | shift | divisor | A | output |
//! |---|---|---|---|---|
//! | `mean-image` | per-feature mean μ | — | — | same shape |
//! | `channel-mean` | per-channel mean | — | — | same shape |
//! | `per-channel` | per-channel mean | per-channel population std | — | same shape |
//! | `pca:K` | μ | — | top K eigenvectors Vₖ \[K, D\] | \[K\] |
//! | `pca-whiten:K` | μ | — | Vₖ / √λₖ | \[K\] |
//! | `zca[:ε]` | μ | — | U · diag(1/√(λ + ε)) · Uᵀ \[D, D\] | same shape |
//!
//! λ and U are the eigenvalues (decreasing) and eigenvectors of the training covariance with
//! the n − 1 denominator, as scikit-learn's `PCA` computes `explained_variance_`; each
//! eigenvector's sign makes its entry of largest absolute value positive (scikit-learn's
//! `svd_flip` on the components), so `pca:K` gives `PCA(n_components=K).transform` itself.

use std::fmt;
use std::str::FromStr;

use faer::{Accum, Mat, Par, Side};

use super::dataset::checked_product;
use super::normalize::{MIN_STD, Normalization, channel_layout};
use super::{DataError, Dataset};

/// ZCA's default ε: the constant CS231n's notes on whitening (the lecture's source) add to
/// every eigenvalue, `np.sqrt(S + 1e-5)`. It only guards the directions of (near-)zero
/// variance (constant pixels): every direction with variance well above 1e-5, which is every
/// informative one of pixel data scaled to [0, 1], still comes out with unit variance.
pub const DEFAULT_ZCA_EPS: f64 = 1e-5;

/// A component whose variance is below this fraction of the largest one carries only
/// rounding noise (f32 inputs hold about 7 digits): whitening it would blow that noise up,
/// so `pca-whiten` refuses it and the rank counts only the components above.
pub const RANK_TOLERANCE: f64 = 1e-10;

/// Rows of the training matrix converted to f64 at once while the covariance is summed.
const COVARIANCE_CHUNK: usize = 2048;

/// D × D f64 matrices alive at once while a covariance is fitted and decomposed: the sum, its
/// symmetric copy, the eigenvectors with faer's workspace, and their re-ordered copy (ZCA's
/// product takes two more after the first ones are gone). Measured: `zca` on 40 × 6,000 peaks
/// at 1.5 GB, 5.2 × 8 × D² bytes.
const FIT_MATRICES: u64 = 6;

/// What a fit may use, checked before it starts ([`Transform::fit_within`]): the fitted
/// matrix must fit one storage binding of the device that applies it, and the fit the
/// machine's memory.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FitLimits {
    /// The device's `max_storage_buffer_binding_size` (None: not checked).
    pub max_binding_bytes: Option<u64>,
    /// Memory available to the fit, in bytes (None: not checked).
    pub available_memory: Option<u64>,
}

impl FitLimits {
    /// This machine's available memory, where the system tells it (Linux), and no device.
    pub fn of_machine() -> Self {
        FitLimits {
            max_binding_bytes: None,
            available_memory: available_memory(),
        }
    }

    /// The same, with the device's largest storage binding.
    pub fn with_binding(self, max_binding_bytes: u64) -> Self {
        FitLimits {
            max_binding_bytes: Some(max_binding_bytes),
            ..self
        }
    }
}

/// `MemAvailable` of `/proc/meminfo` (Linux), the memory the kernel can give without swapping.
fn available_memory() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}

/// `--normalize`: which preprocessing a run fits on its training split.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub enum Preprocess {
    /// The data is used as it is.
    None,
    /// Subtract the mean image (one value per feature).
    MeanImage,
    /// Subtract one mean per channel.
    ChannelMean,
    /// Subtract the per-channel mean, divide by the per-channel population std (the default).
    #[default]
    PerChannel,
    /// Centre, then project onto the top K principal components.
    Pca(usize),
    /// Centre, project onto the top K components, divide each by its standard deviation.
    PcaWhiten(usize),
    /// ZCA whitening with ε added to every eigenvalue; the output keeps the input's shape.
    Zca(f64),
}

impl fmt::Display for Preprocess {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Preprocess::None => f.write_str("none"),
            Preprocess::MeanImage => f.write_str("mean-image"),
            Preprocess::ChannelMean => f.write_str("channel-mean"),
            Preprocess::PerChannel => f.write_str("per-channel"),
            Preprocess::Pca(k) => write!(f, "pca:{k}"),
            Preprocess::PcaWhiten(k) => write!(f, "pca-whiten:{k}"),
            Preprocess::Zca(eps) if *eps == DEFAULT_ZCA_EPS => f.write_str("zca"),
            Preprocess::Zca(eps) => write!(f, "zca:{eps}"),
        }
    }
}

impl FromStr for Preprocess {
    type Err = PreprocessError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let bad = |message: String| PreprocessError::Spec {
            text: text.to_string(),
            message,
        };
        let components = |k: &str| -> Result<usize, PreprocessError> {
            match k.parse::<usize>() {
                Ok(k) if k >= 1 => Ok(k),
                _ => Err(bad(format!(
                    "the number of components must be an integer of at least 1, got {k:?}"
                ))),
            }
        };
        let lower = text.trim().to_ascii_lowercase();
        let (name, arg) = match lower.split_once(':') {
            Some((name, arg)) => (name, Some(arg)),
            None => (lower.as_str(), None),
        };
        match (name, arg) {
            ("none", None) => Ok(Preprocess::None),
            ("mean-image", None) => Ok(Preprocess::MeanImage),
            ("channel-mean", None) => Ok(Preprocess::ChannelMean),
            ("per-channel", None) => Ok(Preprocess::PerChannel),
            ("pca", Some(k)) => Ok(Preprocess::Pca(components(k)?)),
            ("pca-whiten", Some(k)) => Ok(Preprocess::PcaWhiten(components(k)?)),
            ("pca" | "pca-whiten", None) => Err(bad(format!(
                "{name} needs its number of components, e.g. {name}:50"
            ))),
            ("zca", None) => Ok(Preprocess::Zca(DEFAULT_ZCA_EPS)),
            ("zca", Some(eps)) => match eps.parse::<f64>() {
                Ok(e) if e.is_finite() && e > 0.0 => Ok(Preprocess::Zca(e)),
                _ => Err(PreprocessError::Epsilon {
                    text: eps.to_string(),
                }),
            },
            ("none" | "mean-image" | "channel-mean" | "per-channel", Some(_)) => {
                Err(bad(format!("{name} takes no argument")))
            }
            _ => Err(bad(
                "expected none, mean-image, channel-mean, per-channel, pca:K, pca-whiten:K or \
                 zca[:EPS]"
                    .into(),
            )),
        }
    }
}

impl Preprocess {
    /// Checks, before fitting, that a PCA or ZCA fit on `samples` × `features` fits `limits`:
    /// the fit's f64 matrices (`FIT_MATRICES` of D × D) the machine's memory, and the fitted
    /// matrix (K × D f32) one storage binding of the device. Other options need D values.
    pub fn check_fit(
        &self,
        samples: usize,
        features: usize,
        limits: &FitLimits,
    ) -> Result<(), PreprocessError> {
        let outputs = match *self {
            Preprocess::Pca(k) | Preprocess::PcaWhiten(k) => k.min(features),
            Preprocess::Zca(_) => features,
            _ => return Ok(()),
        };
        let d = features as u64;
        let too_large = |what: String, bytes: u64, limit: String| PreprocessError::TooLarge {
            option: self.to_string(),
            samples,
            features,
            what,
            bytes,
            limit,
        };
        let matrix_bytes = (outputs as u64).saturating_mul(d).saturating_mul(4);
        if let Some(limit) = limits.max_binding_bytes
            && matrix_bytes > limit
        {
            return Err(too_large(
                format!("its {outputs} × {features} f32 matrix"),
                matrix_bytes,
                format!("the device's max_storage_buffer_binding_size of {limit} bytes"),
            ));
        }
        let fit_bytes = d.saturating_mul(d).saturating_mul(8 * FIT_MATRICES);
        if let Some(memory) = limits.available_memory
            && fit_bytes > memory
        {
            return Err(too_large(
                format!("fitting ({FIT_MATRICES} f64 matrices of {features} × {features})"),
                fit_bytes,
                format!("the {memory} bytes of memory available"),
            ));
        }
        Ok(())
    }
}

/// What cannot be fitted, or is asked wrongly. Each names the value.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PreprocessError {
    #[error("--normalize {text:?}: {message}")]
    Spec { text: String, message: String },
    #[error("zca's epsilon must be a positive, finite number, got {text:?}")]
    Epsilon { text: String },
    #[error(
        "{option}: {k} components asked, but the training split allows at most {max} \
         ({features} features, {samples} samples)"
    )]
    Components {
        option: String,
        k: usize,
        max: usize,
        features: usize,
        samples: usize,
    },
    #[error(
        "{option}: component {component} has (near-)zero variance {variance:e}, so it cannot be \
         whitened: the training covariance has rank {rank} (constant features such as image \
         borders), so the largest K that works is {rank}; use pca-whiten:{rank} or fewer, or \
         zca"
    )]
    Singular {
        option: String,
        component: usize,
        variance: f64,
        rank: usize,
    },
    /// Every feature of the training split is constant: no component has variance.
    #[error(
        "{option}: every feature of the training split is constant (its covariance is zero), so \
         there is no component to whiten; use pca:K, mean-image or none"
    )]
    NoVariance { option: String },
    /// ZCA's ε so small that a direction of (near-)zero variance is scaled past f32.
    #[error(
        "{option}: ε = {eps:e} is too small for this data: a direction of variance {variance:e} \
         is scaled by 1/√(variance + ε) = {scale:e}, which leaves the whitening matrix not finite \
         in f32; use a larger ε, such as the default {DEFAULT_ZCA_EPS:e}"
    )]
    ZcaEpsilon {
        option: String,
        eps: f64,
        variance: f64,
        scale: f64,
    },
    /// The fit, or its matrix on the device, would not fit: refused before fitting.
    #[error(
        "{option} on {samples} samples of {features} features: {what} needs {bytes} bytes, over \
         {limit}"
    )]
    TooLarge {
        option: String,
        samples: usize,
        features: usize,
        what: String,
        bytes: u64,
        limit: String,
    },
    #[error("{option}: needs at least 2 training samples to estimate a covariance, got {samples}")]
    TooFewSamples { option: String, samples: usize },
    #[error(
        "the fitted preprocessing takes samples of {expected} values, but they have {found} \
         ({origin})"
    )]
    Features {
        expected: usize,
        found: usize,
        origin: String,
    },
    #[error("{option}: the covariance's eigendecomposition failed: {message}")]
    Decomposition { option: String, message: String },
    #[error("stored preprocessing {what}: {message}")]
    Stored { what: String, message: String },
}

/// A fitted preprocessing: `y = A · ((x − shift) ⊘ divisor)` per sample, with the parts its
/// option uses (see the module's table).
#[derive(Clone, Debug, PartialEq)]
pub struct Transform {
    pub kind: Preprocess,
    /// The raw sample shape it was fitted on.
    pub input_shape: Vec<usize>,
    /// The sample shape the model's first layer sees.
    pub output_shape: Vec<usize>,
    /// Subtracted first, per feature: \[D\].
    pub shift: Vec<f32>,
    /// Divided by after, per feature: \[D\] (None: 1).
    pub divisor: Option<Vec<f32>>,
    /// Applied last: \[K, D\] row-major (None: the identity).
    pub matrix: Option<Vec<f32>>,
}

impl Transform {
    /// Fits `kind` on `train` (the training split only). `None` for [`Preprocess::None`]. A
    /// PCA or ZCA fit that would not fit this machine's memory is refused before it starts.
    pub fn fit(kind: Preprocess, train: &Dataset) -> Result<Option<Transform>, DataError> {
        Self::fit_within(kind, train, &FitLimits::of_machine())
    }

    /// [`Transform::fit`], first checking the fit's memory and its matrix's size against
    /// `limits` (see [`Preprocess::check_fit`]).
    pub fn fit_within(
        kind: Preprocess,
        train: &Dataset,
        limits: &FitLimits,
    ) -> Result<Option<Transform>, DataError> {
        kind.check_fit(train.len(), train.sample_len(), limits)?;
        train.check_consistent()?;
        train.check_finite()?;
        if train.is_empty() {
            return Err(DataError::Empty {
                path: train.source.clone().into(),
            });
        }
        let d = train.sample_len();
        let shape = train.sample_shape.clone();
        let same_shape = |shift: Vec<f32>, divisor: Option<Vec<f32>>| Transform {
            kind,
            input_shape: shape.clone(),
            output_shape: shape.clone(),
            shift,
            divisor,
            matrix: None,
        };
        let transform = match kind {
            Preprocess::None => return Ok(None),
            Preprocess::MeanImage => same_shape(to_f32(&feature_means(train)), None),
            Preprocess::ChannelMean | Preprocess::PerChannel => {
                let norm = Normalization::fit(train)?;
                let (_, per_channel) = channel_layout(&shape).unwrap_or((d, 1));
                let broadcast = |v: &[f32]| -> Vec<f32> {
                    v.iter()
                        .flat_map(|&c| std::iter::repeat_n(c, per_channel))
                        .collect()
                };
                let divisor = (kind == Preprocess::PerChannel).then(|| broadcast(norm.std()));
                same_shape(broadcast(norm.mean()), divisor)
            }
            Preprocess::Pca(_) | Preprocess::PcaWhiten(_) | Preprocess::Zca(_) => {
                let option = kind.to_string();
                // ZCA keeps every component.
                let k = match kind {
                    Preprocess::Pca(k) | Preprocess::PcaWhiten(k) => k,
                    _ => d,
                };
                let n = train.len();
                if n < 2 {
                    return Err(PreprocessError::TooFewSamples { option, samples: n }.into());
                }
                let max = d.min(n);
                if let Preprocess::Pca(k) | Preprocess::PcaWhiten(k) = kind
                    && k > max
                {
                    return Err(PreprocessError::Components {
                        option,
                        k,
                        max,
                        features: d,
                        samples: n,
                    }
                    .into());
                }
                let mean = feature_means(train);
                let eigen = Eigen::of_covariance(train, &mean, &option)?;
                let matrix = match kind {
                    Preprocess::PcaWhiten(_) => {
                        let rank = eigen.rank();
                        if rank == 0 {
                            return Err(PreprocessError::NoVariance { option }.into());
                        }
                        if let Some(c) = (0..k).find(|&c| c >= rank) {
                            return Err(PreprocessError::Singular {
                                option,
                                component: c + 1,
                                variance: eigen.values[c],
                                rank,
                            }
                            .into());
                        }
                        eigen.components(k, |lambda| 1.0 / lambda.sqrt())
                    }
                    Preprocess::Zca(eps) => eigen.zca(eps, &option)?,
                    _ => eigen.components(k, |_| 1.0),
                };
                Transform {
                    kind,
                    input_shape: shape.clone(),
                    output_shape: match kind {
                        Preprocess::Zca(_) => shape.clone(),
                        _ => vec![k],
                    },
                    shift: to_f32(&mean),
                    divisor: None,
                    matrix: Some(matrix),
                }
            }
        };
        Ok(Some(transform))
    }

    /// Today's per-channel standardization as a transform (checkpoints that store the
    /// per-channel statistics in their metadata).
    pub fn per_channel(norm: &Normalization, sample_shape: &[usize]) -> Transform {
        let d: usize = sample_shape.iter().product();
        let (_, per_channel) = channel_layout(sample_shape).unwrap_or((d, 1));
        let broadcast = |v: &[f32]| -> Vec<f32> {
            v.iter()
                .flat_map(|&c| std::iter::repeat_n(c, per_channel))
                .collect()
        };
        Transform {
            kind: Preprocess::PerChannel,
            input_shape: sample_shape.to_vec(),
            output_shape: sample_shape.to_vec(),
            shift: broadcast(norm.mean()),
            divisor: Some(broadcast(norm.std())),
            matrix: None,
        }
    }

    /// Features per raw sample (D).
    pub fn input_features(&self) -> usize {
        self.shift.len()
    }

    /// Features per transformed sample (K, or D).
    pub fn output_features(&self) -> usize {
        match &self.matrix {
            Some(a) => a.len() / self.shift.len().max(1),
            None => self.shift.len(),
        }
    }

    /// Checks the parts against each other and the shapes (a transform read from a file).
    pub fn validate(&self) -> Result<(), PreprocessError> {
        let bad = |what: &str, message: String| PreprocessError::Stored {
            what: what.to_string(),
            message,
        };
        let d = self.shift.len();
        // Shapes read from a file: their products may overflow.
        if checked_product(&self.input_shape) != Some(d) || d == 0 {
            return Err(bad(
                "shift",
                format!("{d} values for samples shaped {:?}", self.input_shape),
            ));
        }
        let min_divisor = MIN_STD as f32;
        if let Some(div) = &self.divisor {
            if div.len() != d {
                return Err(bad(
                    "divisor",
                    format!("{} values for {d} features", div.len()),
                ));
            }
            // Fitting replaces a std below MIN_STD by 1; a smaller one (1e-45) blows every
            // input up to ±∞ and the model's outputs to NaN.
            if let Some((j, v)) = div
                .iter()
                .enumerate()
                .find(|(_, v)| !(v.is_finite() && **v >= min_divisor))
            {
                return Err(bad(
                    "divisor",
                    format!(
                        "feature {j} is divided by {v:e}: every divisor must be finite and at \
                         least {min_divisor:e} (fitting never writes a smaller one)"
                    ),
                ));
            }
        }
        if let Some(a) = &self.matrix
            && (a.is_empty() || a.len() % d != 0)
        {
            return Err(bad("matrix", format!("{} values is no [K, {d}]", a.len())));
        }
        if checked_product(&self.output_shape) != Some(self.output_features()) {
            return Err(bad(
                "output shape",
                format!(
                    "{:?} for {} output features",
                    self.output_shape,
                    self.output_features()
                ),
            ));
        }
        if let Some(j) = self.shift.iter().position(|x| !x.is_finite()) {
            return Err(bad("shift", format!("feature {j} is {}", self.shift[j])));
        }
        if let Some(a) = &self.matrix {
            let largest_gain = self.divisor.as_deref().map_or(1.0, |div| {
                div.iter().fold(1f64, |g, &v| g.max(1.0 / f64::from(v)))
            });
            if let Some(message) = finite_map_problem(a, d, largest_gain) {
                return Err(bad("matrix", message));
            }
        }
        Ok(())
    }

    /// An identity of the fitted values: a CRC-32 of the option, the shapes and every
    /// tensor's bits, as `crc32:` and 8 hex digits. A run records it with its checkpoint, so
    /// that another run's preprocessing file, or an edited one, is refused when read back.
    pub fn identity(&self) -> String {
        let mut crc = crc32fast::Hasher::new();
        crc.update(self.kind.to_string().as_bytes());
        for shape in [&self.input_shape, &self.output_shape] {
            crc.update(&(shape.len() as u64).to_le_bytes());
            for &dim in shape {
                crc.update(&(dim as u64).to_le_bytes());
            }
        }
        for (name, values) in [
            ("shift", Some(&self.shift)),
            ("divisor", self.divisor.as_ref()),
            ("matrix", self.matrix.as_ref()),
        ] {
            if let Some(values) = values {
                crc.update(name.as_bytes());
                crc.update(&(values.len() as u64).to_le_bytes());
                crc.update(bytemuck::cast_slice(values));
            }
        }
        format!("crc32:{:08x}", crc.finalize())
    }

    /// The CPU reference: transforms rows of D values into rows of K (f32, as the GPU stage:
    /// the centring and division per element, then the product accumulated in f32).
    pub fn apply(&self, x: &[f32]) -> Vec<f32> {
        let d = self.input_features();
        let centred: Vec<f32> = x
            .iter()
            .enumerate()
            .map(|(i, &v)| {
                let j = i % d;
                let c = v - self.shift[j];
                match &self.divisor {
                    Some(div) => c / div[j],
                    None => c,
                }
            })
            .collect();
        match &self.matrix {
            None => centred,
            Some(a) => {
                let k = self.output_features();
                let mut out = Vec::with_capacity(centred.len() / d * k);
                for row in centred.chunks_exact(d) {
                    for col in a.chunks_exact(d) {
                        out.push(row.iter().zip(col).map(|(x, w)| x * w).sum());
                    }
                }
                out
            }
        }
    }
}

/// Why `matrix` (\[K, D\] rows) does not map every input within ±1 of its shift, scaled by
/// at most `gain`, to finite f32 values: a non-finite entry, or a row whose absolute sum
/// times `gain` passes f32's range. `None` when it does.
fn finite_map_problem(matrix: &[f32], d: usize, gain: f64) -> Option<String> {
    if let Some(i) = matrix.iter().position(|v| !v.is_finite()) {
        return Some(format!("entry [{}, {}] is {}", i / d, i % d, matrix[i]));
    }
    let limit = f64::from(f32::MAX);
    matrix
        .chunks(d.max(1))
        .enumerate()
        .find_map(|(row, values)| {
            let sum: f64 = values.iter().map(|v| f64::from(v.abs())).sum::<f64>() * gain;
            (sum > limit).then(|| {
                format!("row {row} sums to {sum:e} in absolute value: its output overflows f32")
            })
        })
}

fn to_f32(v: &[f64]) -> Vec<f32> {
    v.iter().map(|&x| x as f32).collect()
}

/// Per-feature means in f64: the mean image.
fn feature_means(train: &Dataset) -> Vec<f64> {
    let d = train.sample_len();
    let mut sum = vec![0f64; d];
    for row in train.features.chunks_exact(d) {
        for (s, &v) in sum.iter_mut().zip(row) {
            *s += f64::from(v);
        }
    }
    let n = train.len() as f64;
    sum.iter().map(|s| s / n).collect()
}

/// The training covariance's eigenvalues (decreasing) and eigenvectors (columns), each
/// signed as scikit-learn signs its components.
struct Eigen {
    values: Vec<f64>,
    /// \[D, D\]: column c is the eigenvector of `values[c]`.
    vectors: Mat<f64>,
}

impl Eigen {
    /// C = (X − μ)ᵀ(X − μ) / (n − 1), summed in f64 over chunks of rows (so the f64 copy of
    /// the data never exceeds one chunk), then faer's symmetric eigendecomposition.
    fn of_covariance(
        train: &Dataset,
        mean: &[f64],
        option: &str,
    ) -> Result<Eigen, PreprocessError> {
        let d = mean.len();
        let n = train.len();
        let mut cov = Mat::<f64>::zeros(d, d);
        let par = Par::rayon(0);
        for rows in train.features.chunks(COVARIANCE_CHUNK * d) {
            let chunk = Mat::<f64>::from_fn(rows.len() / d, d, |i, j| {
                f64::from(rows[i * d + j]) - mean[j]
            });
            faer::linalg::matmul::matmul(
                cov.as_mut(),
                Accum::Add,
                chunk.transpose(),
                chunk.as_ref(),
                1.0,
                par,
            );
        }
        let scale = 1.0 / (n - 1) as f64;
        // Symmetric by construction; the lower triangle is what the decomposition reads.
        let cov = Mat::<f64>::from_fn(d, d, |i, j| cov[(i.max(j), i.min(j))] * scale);
        let evd =
            cov.self_adjoint_eigen(Side::Lower)
                .map_err(|e| PreprocessError::Decomposition {
                    option: option.to_string(),
                    message: format!("{e:?}"),
                })?;
        let (s, u) = (evd.S(), evd.U());
        // faer orders eigenvalues increasing; PCA wants them decreasing.
        let order: Vec<usize> = (0..d).rev().collect();
        let values: Vec<f64> = order.iter().map(|&c| s[c]).collect();
        let mut vectors = Mat::<f64>::from_fn(d, d, |i, c| u[(i, order[c])]);
        for c in 0..d {
            // svd_flip: the entry of largest absolute value (the first, on ties) positive.
            let mut pivot = 0;
            for i in 1..d {
                if vectors[(i, c)].abs() > vectors[(pivot, c)].abs() {
                    pivot = i;
                }
            }
            if vectors[(pivot, c)] < 0.0 {
                for i in 0..d {
                    vectors[(i, c)] = -vectors[(i, c)];
                }
            }
        }
        Ok(Eigen { values, vectors })
    }

    /// Components with variance above [`RANK_TOLERANCE`] of the largest.
    fn rank(&self) -> usize {
        let top = self.values.first().copied().unwrap_or(0.0);
        self.values
            .iter()
            .take_while(|&&v| top > 0.0 && v > top * RANK_TOLERANCE)
            .count()
    }

    /// \[K, D\]: the top K eigenvectors as rows, row c scaled by `scale(λ_c)`.
    fn components(&self, k: usize, scale: impl Fn(f64) -> f64) -> Vec<f32> {
        let d = self.values.len();
        let mut a = Vec::with_capacity(k * d);
        for c in 0..k {
            let s = scale(self.values[c]);
            a.extend((0..d).map(|i| (self.vectors[(i, c)] * s) as f32));
        }
        a
    }

    /// W = U · diag(1/√(λ + ε)) · Uᵀ, symmetric \[D, D\]; eigenvalues that rounding left
    /// slightly negative count as 0.
    /// Refused when ε is so small that the matrix leaves f32 (1/√ε past f32's range for a
    /// direction of zero variance), naming that direction's variance and scale.
    fn zca(&self, eps: f64, option: &str) -> Result<Vec<f32>, PreprocessError> {
        let d = self.values.len();
        let scale = |c: usize| 1.0 / (self.values[c].max(0.0) + eps).sqrt();
        let scaled = Mat::<f64>::from_fn(d, d, |i, c| self.vectors[(i, c)] * scale(c));
        let w = &scaled * self.vectors.transpose();
        let matrix: Vec<f32> = (0..d)
            .flat_map(|i| (0..d).map(move |j| (i, j)))
            .map(|(i, j)| w[(i, j)] as f32)
            .collect();
        if finite_map_problem(&matrix, d, 1.0).is_some() {
            // The smallest variance has the largest scale.
            let c = d - 1;
            return Err(PreprocessError::ZcaEpsilon {
                option: option.to_string(),
                eps,
                variance: self.values[c].max(0.0),
                scale: scale(c),
            });
        }
        Ok(matrix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fits_are_sized_before_they_start() {
        let limits = FitLimits {
            max_binding_bytes: Some(128 << 20),
            available_memory: Some(1 << 30),
        };
        // zca on 6,000 features: a 144 MB matrix over a 128 MiB binding.
        let err = Preprocess::Zca(DEFAULT_ZCA_EPS)
            .check_fit(40, 6000, &limits)
            .unwrap_err()
            .to_string();
        assert!(err.contains("zca on 40 samples of 6000 features"), "{err}");
        assert!(
            err.contains("6000 × 6000 f32 matrix needs 144000000 bytes"),
            "{err}"
        );
        // pca:10 on 20,000 features: its matrix fits, the fit's 6 × 3.2 GB do not.
        let err = Preprocess::Pca(10)
            .check_fit(40, 20_000, &limits)
            .unwrap_err()
            .to_string();
        assert!(err.contains("needs 19200000000 bytes"), "{err}");
        assert!(
            err.contains("1073741824 bytes of memory available"),
            "{err}"
        );
        Preprocess::Pca(10).check_fit(40, 1000, &limits).unwrap();
        // Options without a covariance need nothing checked.
        Preprocess::PerChannel
            .check_fit(40, 20_000, &limits)
            .unwrap();
        let unbounded = FitLimits::default();
        Preprocess::Zca(1.0)
            .check_fit(40, 20_000, &unbounded)
            .unwrap();
    }

    #[test]
    fn stored_values_that_blow_inputs_up_are_refused_and_the_identity_sees_every_value() {
        let t = Transform {
            kind: Preprocess::Pca(1),
            input_shape: vec![2],
            output_shape: vec![1],
            shift: vec![0.5, 0.25],
            divisor: None,
            matrix: Some(vec![0.6, 0.8]),
        };
        t.validate().unwrap();
        let id = t.identity();
        assert!(id.starts_with("crc32:") && id.len() == 14, "{id}");
        let mut other = t.clone();
        other.matrix = Some(vec![0.0, 0.0]);
        assert_ne!(other.identity(), id);
        other = t.clone();
        other.shift[1] = 0.0;
        assert_ne!(other.identity(), id);
        // A finite matrix whose row sums past f32's range.
        other = t.clone();
        other.matrix = Some(vec![3e38, 3e38]);
        let err = other.validate().unwrap_err().to_string();
        assert!(
            err.contains("row 0 sums to 6.0") && err.contains("overflows f32"),
            "{err}"
        );
        // A divisor of 1e-45 makes every input ±∞.
        let per_channel = Transform {
            kind: Preprocess::PerChannel,
            divisor: Some(vec![1.0, 1e-45]),
            matrix: None,
            output_shape: vec![2],
            ..t.clone()
        };
        let err = per_channel.validate().unwrap_err().to_string();
        assert!(err.contains("feature 1 is divided by 1e-45"), "{err}");
        // Shapes whose product overflows.
        let huge = Transform {
            input_shape: vec![1 << 32, 1 << 32],
            ..t
        };
        assert!(huge.validate().is_err());
    }

    #[test]
    fn options_parse_and_print_back() {
        for text in [
            "none",
            "mean-image",
            "channel-mean",
            "per-channel",
            "pca:5",
            "pca-whiten:30",
            "zca",
            "zca:0.1",
        ] {
            let p: Preprocess = text.parse().unwrap();
            assert_eq!(p.to_string(), text);
        }
        assert_eq!(
            "ZCA".parse::<Preprocess>().unwrap(),
            Preprocess::Zca(DEFAULT_ZCA_EPS)
        );
        for (bad, says) in [
            ("pca:0", "at least 1"),
            ("pca:x", "\"x\""),
            ("pca", "pca:50"),
            ("zca:0", "\"0\""),
            ("zca:-1", "positive"),
            ("zca:inf", "finite"),
            ("zca:nan", "finite"),
            ("per-channel:2", "no argument"),
            ("whiten", "expected none"),
        ] {
            let err = bad.parse::<Preprocess>().unwrap_err().to_string();
            assert!(err.contains(says), "{bad}: {err}");
        }
    }
}

//! Operations: for each, its GPU launcher, its CPU reference (the specification, in plain
//! loops) and the tests that hold one against the other. `shaders/<op>.wgsl` is beside each.

pub mod activation;
pub mod batchnorm;
pub mod bce;
pub mod dropout;
pub mod linear;
pub mod loss;
pub mod matmul;
pub mod philox;
pub mod preprocess;
pub mod reduce;
pub mod softmax_xent;
pub mod step;

use crate::gpu::GpuError;

/// Bad arguments to an operation. Each names the operation and what is wrong.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OpError {
    #[error("{op}: {what} has shape {found:?}, expected {expected}")]
    Shape {
        op: &'static str,
        what: &'static str,
        found: Vec<usize>,
        expected: String,
    },
    #[error("{op}: {message}")]
    Invalid { op: &'static str, message: String },
    #[error("dropout probability has to be between 0 and 1, but got {0}")]
    Probability(f32),
    #[error(
        "batch norm: expected more than 1 value per channel when training, got input size {0:?}"
    )]
    SingleSampleBatch(Vec<usize>),
    #[error("{op}: target {target} at index {index} is out of bounds for {classes} classes")]
    TargetOutOfRange {
        op: &'static str,
        index: usize,
        target: i64,
        classes: usize,
    },
    #[error(transparent)]
    Gpu(#[from] GpuError),
}

/// Checks that `found` equals `expected`.
pub(crate) fn expect_shape(
    op: &'static str,
    what: &'static str,
    found: &[usize],
    expected: &[usize],
) -> Result<(), OpError> {
    if found != expected {
        return Err(OpError::Shape {
            op,
            what,
            found: found.to_vec(),
            expected: format!("{expected:?}"),
        });
    }
    Ok(())
}

/// Checks that `shape` is a matrix and returns (rows, cols).
pub(crate) fn expect_matrix(
    op: &'static str,
    what: &'static str,
    shape: &[usize],
) -> Result<(usize, usize), OpError> {
    match *shape {
        [rows, cols] => Ok((rows, cols)),
        _ => Err(OpError::Shape {
            op,
            what,
            found: shape.to_vec(),
            expected: "a matrix [rows, cols]".into(),
        }),
    }
}

/// Workgroups needed to cover `invocations` with groups of `size`.
pub fn groups(invocations: usize, size: u32) -> u32 {
    (invocations as u32).div_ceil(size)
}

#[cfg(test)]
pub(crate) mod test_support {
    use std::sync::OnceLock;

    use rand::RngExt;

    use crate::gpu::GpuContext;
    use crate::rng;

    /// One context for all unit tests. CI always has lavapipe, so no adapter is a failure.
    pub fn ctx() -> &'static GpuContext {
        static CTX: OnceLock<GpuContext> = OnceLock::new();
        CTX.get_or_init(|| {
            GpuContext::new().unwrap_or_else(|e| panic!("GPU tests need an adapter: {e}"))
        })
    }

    /// A second context choosing the GPU kernel variants (workgroup tiles, row-parallel
    /// reductions) on whatever adapter there is, so lavapipe tests them too.
    pub fn gpu_style_ctx() -> &'static GpuContext {
        static CTX: OnceLock<GpuContext> = OnceLock::new();
        CTX.get_or_init(|| {
            GpuContext::new()
                .unwrap_or_else(|e| panic!("GPU tests need an adapter: {e}"))
                .with_gpu_kernels(true)
        })
    }

    /// A tensor's floats as their bits, for comparisons that must be exact (NaN included).
    pub fn bits(ctx: &GpuContext, t: &crate::gpu::GpuTensor) -> Vec<u32> {
        let values: Vec<f32> = t.read(ctx).unwrap_or_else(|e| panic!("reading back: {e}"));
        values.iter().map(|v| v.to_bits()).collect()
    }

    /// Seeded values uniform in [lo, hi).
    pub fn uniform(seed: u64, len: usize, lo: f32, hi: f32) -> Vec<f32> {
        let mut rng = rng::seeded(seed);
        (0..len).map(|_| rng.random_range(lo..hi)).collect()
    }
}

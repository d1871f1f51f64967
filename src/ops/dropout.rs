//! Dropout with a counter-based generator: `y = x · mask / (1 - p)` in training, identity in
//! eval. Kernel: `shaders/dropout.wgsl` (+ `philox.wgsl`).
//!
//! The mask of element `i` at training step `s` in layer `l` comes from Philox4x32-10 with
//! key `(fold(seed), l)` and counter `(i / 4, 0, s_lo, s_hi)`, word `i % 4`: element `i` is kept
//! when the word's top 24 bits are ≥ round(p·2²⁴). Nothing is stored: the backward recomputes
//! the mask, and the CPU reference draws the same bits.

use super::philox::philox4x32_10;
use super::step::{StepBuffer, StepParams};
use super::{OpError, groups};
use crate::gpu::uniform_struct;
use crate::gpu::{Binding, Dispatch, GpuContext, GpuError, GpuTensor, Kernel, Shader, grid_1d};
use std::any::Any;

use crate::graph::{Autodiff, Mode, Node, Op, ValueId};
use crate::graph::{CpuCx, CpuError, GpuCx};

/// A validated drop probability.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DropProbability(f32);

impl DropProbability {
    /// Accepts p in [0, 1], like `torch.nn.Dropout`.
    pub fn new(p: f32) -> Result<Self, OpError> {
        if (0.0..=1.0).contains(&p) {
            Ok(Self(p))
        } else {
            Err(OpError::Probability(p))
        }
    }

    pub fn get(self) -> f32 {
        self.0
    }

    /// Kept when the top 24 bits of the random word are ≥ this.
    pub fn threshold(self) -> u32 {
        (f64::from(self.0) * f64::from(1u32 << 24)).round() as u32
    }

    /// Survivors' scale 1/(1-p); 0 for p = 1, where PyTorch returns zeros.
    pub fn scale(self) -> f32 {
        if self.0 >= 1.0 {
            0.0
        } else {
            1.0 / (1.0 - self.0)
        }
    }
}

/// Where a layer's mask comes from: the run's seed and the layer's index.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MaskStream {
    pub seed: u64,
    pub layer: u32,
}

impl MaskStream {
    /// The mask stream of layer `layer` under `seed`.
    pub fn new(seed: u64, layer: u32) -> Self {
        Self { seed, layer }
    }

    /// Philox key: the seed folded to 32 bits, and the layer.
    pub fn key(self) -> [u32; 2] {
        [Self::seed_key(self.seed), self.layer]
    }
}

/// CPU reference: whether element `i` survives at `step`.
pub fn reference_mask(len: usize, p: DropProbability, stream: MaskStream, step: u64) -> Vec<bool> {
    let key = stream.key();
    let threshold = p.threshold();
    let mut mask = Vec::with_capacity(len);
    for group in 0..len.div_ceil(4) {
        let words = philox4x32_10([group as u32, 0, step as u32, (step >> 32) as u32], key);
        for word in words {
            if mask.len() < len {
                mask.push((word >> 8) >= threshold);
            }
        }
    }
    mask
}

/// CPU reference: y = x · (mask · scale), as PyTorch multiplies by its scaled mask (so a
/// dropped NaN or ∞ gives NaN and a dropped negative -0). The backward is the same function
/// applied to dy.
pub fn reference(x: &[f32], p: DropProbability, stream: MaskStream, step: u64) -> Vec<f32> {
    let scale = p.scale();
    reference_mask(x.len(), p, stream, step)
        .iter()
        .zip(x)
        .map(|(&keep, &v)| v * if keep { scale } else { 0.0 })
        .collect()
}

uniform_struct! {
    /// Mirrors `Params` in `shaders/dropout.wgsl`.
    struct Params {
        len: u32,
        layer: u32,
        _pad: [u32; 2],
    }
}

const WG: u32 = 64;

impl MaskStream {
    /// The seed as the kernels read it from a member's step record (`seed_key`): the first
    /// word of the Philox key.
    pub fn seed_key(seed: u64) -> u32 {
        (seed ^ (seed >> 32)) as u32
    }
}

/// Each member's (threshold, scale bits) as the kernels read them (`drops`), as one buffer
/// for a dispatch to keep.
pub fn member_drops(ctx: &GpuContext, p: &[DropProbability]) -> Result<wgpu::Buffer, GpuError> {
    let words: Vec<[u32; 2]> = p
        .iter()
        .map(|p| [p.threshold(), p.scale().to_bits()])
        .collect();
    ctx.create_buffer_init(
        "dropout probabilities",
        bytemuck::cast_slice(&words),
        wgpu::BufferUsages::STORAGE,
    )
}

/// What a dropout dispatch masks with: each member's probability (one per member the
/// bindings hold; the seeds come from the members' step records), and the layer.
#[derive(Clone, Copy, Debug)]
pub struct Masks<'m> {
    pub p: &'m [DropProbability],
    pub layer: u32,
}

/// Builds the dispatch for `y = dropout(x)` (or `dx = dropout(dy)`) over `len` elements of
/// each member; the step and seed come from `step` (each member's record) at execution time.
pub fn dispatch(
    ctx: &GpuContext,
    len: usize,
    masks: Masks<'_>,
    step: Binding<'_>,
    [x, y]: [Binding<'_>; 2],
) -> Result<Dispatch, GpuError> {
    let kernel = Kernel::new(Shader::Dropout, "dropout").with("WG", WG);
    let [gx, gy, _] = grid_1d(
        groups(len.div_ceil(4), WG),
        ctx.limits().max_compute_workgroups_per_dimension,
    );
    let drops = member_drops(ctx, masks.p)?;
    let params = Params {
        len: len as u32,
        layer: masks.layer,
        _pad: [0; 2],
    };
    ctx.dispatch_at(
        &kernel,
        Some(&params),
        &[(1, step), (2, x), (3, y), (5, Binding::whole(&drops))],
        [gx, gy, x.members()],
    )
}

/// Applies dropout to a GPU tensor at training step `step`.
pub fn dropout(
    ctx: &GpuContext,
    x: &GpuTensor,
    p: f32,
    stream: MaskStream,
    step: u64,
) -> Result<GpuTensor, OpError> {
    let p = DropProbability::new(p)?;
    let steps = StepBuffer::new(ctx)?;
    steps.write(
        ctx,
        &StepParams {
            seed_key: MaskStream::seed_key(stream.seed),
            ..StepParams::at_step(step)
        },
    );
    let y = GpuTensor::zeros(ctx, x.shape(), "dropout.y")?;
    let masks = Masks {
        p: &[p],
        layer: stream.layer,
    };
    let d = dispatch(
        ctx,
        x.len(),
        masks,
        steps.binding(),
        [x.binding(), y.binding()],
    )?;
    ctx.submit(&[&d]);
    Ok(y)
}

/// (x) → (y): `nn.Dropout(p)` in the graph. Eval: identity (y is x, the same buffer).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DropoutOp {
    pub p: DropProbability,
    /// The mask stream: the Dropout layer's index.
    pub stream: u32,
}

/// (dy) → (dx): the forward's mask, recomputed from (seed, layer, step).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DropoutBackwardOp {
    pub p: DropProbability,
    pub stream: u32,
}

impl Op for DropoutOp {
    fn name(&self) -> &'static str {
        "dropout"
    }

    fn outputs_in(&self, mode: Mode, outputs: usize) -> usize {
        match mode {
            Mode::Train => outputs,
            Mode::Eval => 0,
        }
    }

    fn aliases_input(&self, mode: Mode) -> bool {
        mode == Mode::Eval
    }

    fn has_params(&self) -> bool {
        false
    }

    fn backward(&self, node: &Node, dy: ValueId, ad: &mut Autodiff<'_>) -> Option<ValueId> {
        let x = node.inputs[0];
        let op = DropoutBackwardOp {
            p: self.p,
            stream: self.stream,
        };
        ad.needs_grad(x).then(|| ad.push_gradient(op, vec![dy], x))
    }

    fn run_cpu(&self, node: &Node, cx: &mut CpuCx<'_>) -> Result<Vec<Vec<f32>>, CpuError> {
        Ok(match cx.mode {
            Mode::Train => vec![reference(
                cx.input(node, 0),
                self.p,
                MaskStream::new(cx.seed, self.stream),
                cx.step(),
            )],
            Mode::Eval => vec![],
        })
    }

    fn encode_gpu(&self, node: &Node, cx: &mut GpuCx<'_, '_>) -> Result<(), GpuError> {
        // Eval: the output is the input; nothing to run.
        if cx.mode == Mode::Train {
            encode_mask(node, self.p, self.stream, cx)?;
        }
        Ok(())
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

impl Op for DropoutBackwardOp {
    fn name(&self) -> &'static str {
        "dropout_backward"
    }

    fn has_params(&self) -> bool {
        false
    }

    fn backward(&self, _: &Node, _: ValueId, _: &mut Autodiff<'_>) -> Option<ValueId> {
        None
    }

    fn run_cpu(&self, node: &Node, cx: &mut CpuCx<'_>) -> Result<Vec<Vec<f32>>, CpuError> {
        Ok(vec![reference(
            cx.input(node, 0),
            self.p,
            MaskStream::new(cx.seed, self.stream),
            cx.step(),
        )])
    }

    fn encode_gpu(&self, node: &Node, cx: &mut GpuCx<'_, '_>) -> Result<(), GpuError> {
        encode_mask(node, self.p, self.stream, cx)
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

/// out = in · mask / (1 - p): the forward and its backward are the same map. Each member
/// masks with its own probability for the layer (`GpuCx::dropout_p`) and its own seed.
fn encode_mask(
    node: &Node,
    p: DropProbability,
    stream: u32,
    cx: &mut GpuCx<'_, '_>,
) -> Result<(), GpuError> {
    let len = cx.graph.value(node.inputs[0]).len();
    let p = member_probabilities(cx, stream, p)?;
    let masks = Masks {
        p: &p,
        layer: stream,
    };
    let bindings = [cx.input(node, 0), cx.output(node, 0)];
    let d = dispatch(cx.ctx, len, masks, cx.step, bindings)?;
    cx.push(d);
    Ok(())
}

/// Each member's probability for the dropout of `layer`, whose graph (member 0's
/// architecture) has `p`.
pub fn member_probabilities(
    cx: &GpuCx<'_, '_>,
    layer: u32,
    p: DropProbability,
) -> Result<Vec<DropProbability>, GpuError> {
    cx.dropout_p(layer, p.get())
        .into_iter()
        .map(|p| DropProbability::new(p).map_err(|e| GpuError::Unsupported(e.to_string())))
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn uniforms_mirror_the_shaders() {
        crate::gpu::assert_mirrors::<Params>(Shader::Dropout, 0);
        crate::gpu::assert_mirrors::<Params>(Shader::PhiloxWords, 0);
        crate::gpu::assert_mirrors::<crate::ops::step::StepParams>(Shader::Dropout, 1);
    }

    use super::*;
    use crate::ops::test_support::{ctx, uniform};

    const STREAM: MaskStream = MaskStream {
        seed: 0x1234_5678_9abc,
        layer: 3,
    };

    #[test]
    fn gpu_philox_words_equal_cpu_words() {
        let ctx = ctx();
        let n = 1000usize;
        let step = (7u64 << 32) | 5;
        let steps = StepBuffer::new(ctx).unwrap();
        steps.write(
            ctx,
            &StepParams {
                seed_key: MaskStream::seed_key(STREAM.seed),
                ..StepParams::at_step(step)
            },
        );
        let words = GpuTensor::zeros(ctx, &[n, 4], "words").unwrap();
        let kernel = Kernel::new(Shader::PhiloxWords, "philox_words");
        let params = Params {
            len: n as u32,
            layer: STREAM.layer,
            _pad: [0; 2],
        };
        let d = ctx
            .dispatch_at(
                &kernel,
                Some(&params),
                &[(1, steps.binding()), (4, words.binding())],
                [groups(n, WG), 1, 1],
            )
            .unwrap();
        ctx.submit(&[&d]);
        let got: Vec<u32> = words.read(ctx).unwrap();
        for i in 0..n {
            let want = philox4x32_10(
                [i as u32, 0, step as u32, (step >> 32) as u32],
                STREAM.key(),
            );
            assert_eq!(&got[4 * i..4 * i + 4], &want, "counter {i}");
        }
    }

    #[test]
    fn gpu_masks_equal_cpu_masks_bit_for_bit() {
        let ctx = ctx();
        for &len in &[1usize, 3, 7, 65, 1000, 100_003] {
            for &p in &[0.0f32, 0.2, 0.5, 0.9, 1.0] {
                let x = uniform(len as u64, len, -2.0, 2.0);
                let gx = GpuTensor::from_slice(ctx, &x, &[len], "x").unwrap();
                let step = 41 + len as u64;
                let got: Vec<f32> = dropout(ctx, &gx, p, STREAM, step)
                    .unwrap()
                    .read(ctx)
                    .unwrap();
                let want = reference(&x, DropProbability::new(p).unwrap(), STREAM, step);
                let same = got
                    .iter()
                    .zip(&want)
                    .all(|(a, b)| a.to_bits() == b.to_bits());
                assert!(same, "len {len} p {p}: GPU and CPU dropout differ");
            }
        }
    }

    #[test]
    fn dropped_nan_and_infinities_stay_not_finite_as_in_pytorch() {
        // PyTorch computes x · (mask / (1 - p)): 0 · NaN and 0 · ∞ are NaN, 0 · -1 is -0.
        let ctx = ctx();
        let specials = [
            f32::NAN,
            f32::INFINITY,
            f32::NEG_INFINITY,
            -1.0,
            2.0,
            -0.0,
            3e38,
        ];
        let x: Vec<f32> = specials.iter().cycle().take(7 * 65).copied().collect();
        let p = DropProbability::new(0.5).unwrap();
        let gx = GpuTensor::from_slice(ctx, &x, &[x.len()], "x").unwrap();
        let got: Vec<f32> = dropout(ctx, &gx, 0.5, STREAM, 3)
            .unwrap()
            .read(ctx)
            .unwrap();
        let want = reference(&x, p, STREAM, 3);
        let mask = reference_mask(x.len(), p, STREAM, 3);
        for (i, ((&g, &w), &keep)) in got.iter().zip(&want).zip(&mask).enumerate() {
            assert_eq!(g.to_bits(), w.to_bits(), "element {i}: GPU {g} vs CPU {w}");
            let v = x[i];
            if keep {
                assert_eq!(w.to_bits(), (v * p.scale()).to_bits(), "element {i} of {v}");
            }
            if !keep && !v.is_finite() {
                assert!(w.is_nan(), "a dropped {v} gives NaN");
            }
            if !keep && v == -1.0 {
                assert!(w == 0.0 && w.is_sign_negative(), "a dropped -1 gives -0");
            }
        }
        assert!(mask.iter().any(|k| !k) && mask.iter().any(|&k| k));
    }

    #[test]
    fn keep_rate_is_within_statistical_bounds_over_a_million_draws() {
        let n = 1_000_000usize;
        for &p in &[0.1f32, 0.2, 0.5, 0.8] {
            let mask = reference_mask(n, DropProbability::new(p).unwrap(), STREAM, 9);
            let kept = mask.iter().filter(|&&k| k).count() as f64 / n as f64;
            // 6 standard deviations of a binomial proportion: fails by chance with p < 1e-8.
            let sigma = (f64::from(p) * (1.0 - f64::from(p)) / n as f64).sqrt();
            assert!(
                (kept - (1.0 - f64::from(p))).abs() < 6.0 * sigma,
                "p {p}: kept {kept}"
            );
        }
    }

    #[test]
    fn p_zero_is_identity_and_p_one_gives_zeros() {
        let x = uniform(5, 100, -1.0, 1.0);
        assert_eq!(
            reference(&x, DropProbability::new(0.0).unwrap(), STREAM, 0),
            x
        );
        assert!(
            reference(&x, DropProbability::new(1.0).unwrap(), STREAM, 0)
                .iter()
                .all(|&v| v == 0.0)
        );
    }

    #[test]
    fn survivors_are_scaled_by_inverse_keep_probability() {
        let x = vec![1.0f32; 64];
        let p = DropProbability::new(0.25).unwrap();
        let y = reference(&x, p, STREAM, 1);
        assert!(y.iter().all(|&v| v == 0.0 || (v - 4.0 / 3.0).abs() < 1e-7));
        assert!(y.contains(&0.0) && y.iter().any(|&v| v != 0.0));
    }

    #[test]
    fn masks_differ_across_steps_layers_and_seeds() {
        let p = DropProbability::new(0.5).unwrap();
        let base = reference_mask(256, p, STREAM, 0);
        assert_ne!(base, reference_mask(256, p, STREAM, 1));
        assert_ne!(
            base,
            reference_mask(256, p, MaskStream { layer: 4, ..STREAM }, 0)
        );
        assert_ne!(
            base,
            reference_mask(256, p, MaskStream { seed: 1, ..STREAM }, 0)
        );
        assert_eq!(base, reference_mask(256, p, STREAM, 0));
    }

    #[test]
    fn probability_outside_unit_interval_is_an_error() {
        for p in [-0.1f32, 1.5, f32::NAN] {
            let err = DropProbability::new(p).unwrap_err();
            assert!(err.to_string().contains("between 0 and 1"), "{err}");
        }
    }
}

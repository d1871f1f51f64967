//! Matrix multiplication with the layouts a Linear layer's forward and backward need, an
//! optional bias and a fused ReLU. Kernels: `shaders/matmul*.wgsl`.
//!
//! For `y = x·Wᵀ + b` with x: [N, in], W: [out, in] (PyTorch's layout):
//! forward is `NT` (x · Wᵀ), `dx = dy · W` is `NN`, and `dW = dyᵀ · x` is `TN`.

use super::{OpError, expect_matrix, groups};
use crate::gpu::uniform_struct;
use crate::gpu::{
    Binding, BroadcastRows, GpuContext, GpuError, GpuTensor, Kernel, KernelChoice, Launch, Shader,
    TENSOR_USAGE, grid_1d,
};
use crate::graph::GpuCx;

/// Which operand is stored transposed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Layout {
    /// C = A·B with A: [M, K], B: [K, N].
    NN,
    /// C = A·Bᵀ with A: [M, K], B: [N, K].
    NT,
    /// C = Aᵀ·B with A: [K, M], B: [K, N].
    TN,
}

/// The sizes of one product C[M, N] = op(A)·op(B), summed over K.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct MatmulShape {
    pub layout: Layout,
    pub m: usize,
    pub n: usize,
    pub k: usize,
}

impl MatmulShape {
    /// Shapes of A and B as stored.
    pub fn a_shape(&self) -> [usize; 2] {
        match self.layout {
            Layout::NN | Layout::NT => [self.m, self.k],
            Layout::TN => [self.k, self.m],
        }
    }

    pub fn b_shape(&self) -> [usize; 2] {
        match self.layout {
            Layout::NN | Layout::TN => [self.k, self.n],
            Layout::NT => [self.n, self.k],
        }
    }

    /// A Linear layer's forward over `rows` samples with weight [out, in]: y = x·Wᵀ.
    pub fn linear_forward(rows: usize, weight: &[usize]) -> Self {
        let (out, inp) = linear_dims(weight);
        Self {
            layout: Layout::NT,
            m: rows,
            n: out,
            k: inp,
        }
    }

    /// Its input gradient: dx[rows, in] = dy[rows, out]·W.
    pub fn linear_grad_input(rows: usize, weight: &[usize]) -> Self {
        let (out, inp) = linear_dims(weight);
        Self {
            layout: Layout::NN,
            m: rows,
            n: inp,
            k: out,
        }
    }

    /// Its weight gradient: dW[out, in] = dyᵀ·x, summed over the rows.
    pub fn linear_grad_weight(rows: usize, weight: &[usize]) -> Self {
        let (out, inp) = linear_dims(weight);
        Self {
            layout: Layout::TN,
            m: out,
            n: inp,
            k: rows,
        }
    }

    /// Floating-point operations of the product (2·M·N·K).
    pub fn flops(&self) -> f64 {
        2.0 * self.m as f64 * self.n as f64 * self.k as f64
    }
}

/// (out, in) of a Linear weight shaped [out, in].
fn linear_dims(weight: &[usize]) -> (usize, usize) {
    (
        weight.first().copied().unwrap_or(0),
        weight.get(1).copied().unwrap_or(0),
    )
}

/// What happens to C after the product.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Epilogue {
    /// Add a bias of length N to every row.
    pub bias: bool,
    /// Apply max(0, ·).
    pub relu: bool,
}

/// GPU strategies. All keep an 8×8 (general: 4×4) block of C per invocation in registers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Variant {
    /// NT with vec4 loads along K; needs K % 4 == 0.
    NtVec4,
    /// NN with B and C as vec4 along N; needs N % 4 == 0.
    NnBvec4,
    /// TN with B and C as vec4 along N; needs N % 4 == 0.
    TnBvec4,
    /// NT with B as vec4 along K (K % 4 == 0): 12 or 16 rows × 64 columns per workgroup
    /// ([`BroadcastRows`]), A's loads shared through subgroup broadcasts. For CPU adapters
    /// with subgroups of at least 8 lanes.
    BroadcastNt,
    /// NN or TN with B and C as vec2 along N (N % 2 == 0), otherwise as `BroadcastNt`.
    BroadcastNn,
    /// Any layout and shape, scalar loads.
    General,
    /// Any layout and shape, 64×64 tiles staged in workgroup memory: for discrete GPUs,
    /// where workgroup memory is fast and barriers cheap (on lavapipe they are not).
    Tiled,
}

impl Variant {
    /// The variant for `shape` under the adapter's kernel choice: workgroup tiles for GPU
    /// kernels when the product fills at least one 64×64 tile; else subgroup broadcasts when
    /// the product has the columns to fill half a workgroup and the depth to amortize its
    /// start; else register blocks.
    pub fn for_adapter(shape: &MatmulShape, kernels: KernelChoice) -> Variant {
        let fills_tile = shape.m >= 64 && shape.n >= 64 && shape.k >= 64;
        if kernels.tiled_matmul && fills_tile {
            Variant::Tiled
        } else if kernels.subgroup_matmul && shape.n >= 32 && shape.k >= 32 {
            [Variant::BroadcastNt, Variant::BroadcastNn]
                .into_iter()
                .find(|v| v.fits(shape))
                .unwrap_or_else(|| Variant::choose(shape))
        } else {
            Variant::choose(shape)
        }
    }

    /// The fastest register-blocked variant that fits the shape.
    pub fn choose(shape: &MatmulShape) -> Variant {
        match shape.layout {
            Layout::NT if shape.k.is_multiple_of(4) => Variant::NtVec4,
            Layout::NN if shape.n.is_multiple_of(4) => Variant::NnBvec4,
            Layout::TN if shape.n.is_multiple_of(4) => Variant::TnBvec4,
            _ => Variant::General,
        }
    }

    fn uses_subgroups(self) -> bool {
        matches!(self, Variant::BroadcastNt | Variant::BroadcastNn)
    }

    fn fits(self, shape: &MatmulShape) -> bool {
        match self {
            Variant::NtVec4 => shape.layout == Layout::NT && shape.k.is_multiple_of(4),
            Variant::NnBvec4 => shape.layout == Layout::NN && shape.n.is_multiple_of(4),
            Variant::TnBvec4 => shape.layout == Layout::TN && shape.n.is_multiple_of(4),
            Variant::BroadcastNt => shape.layout == Layout::NT && shape.k.is_multiple_of(4),
            Variant::BroadcastNn => shape.layout != Layout::NT && shape.n.is_multiple_of(2),
            Variant::General | Variant::Tiled => true,
        }
    }
}

uniform_struct! {
    /// Mirrors `Params` in `shaders/matmul.wgsl`.
    struct Params {
        m: u32,
        n: u32,
        k: u32,
        flags: u32,
        a_row: u32,
        a_col: u32,
        b_row: u32,
        b_col: u32,
        k_chunk: u32,
        splits: u32,
        a_stride: u32,
        b_stride: u32,
        bias_stride: u32,
        c_stride: u32,
        _pad: [u32; 2],
    }
}

const WG: u32 = 8;
/// Columns of C per workgroup of the broadcast variants (their rows: [`BroadcastRows`]).
const BROADCAST_COLS: u32 = 64;
const FLAG_PARTIAL: u32 = 4;

/// The buffers of a product `c = op(a)·op(b)` (+ bias).
#[derive(Clone, Copy, Debug)]
pub struct MatmulBindings<'a> {
    pub a: Binding<'a>,
    pub b: Binding<'a>,
    /// \[N\], read when the epilogue adds a bias.
    pub bias: Option<Binding<'a>>,
    pub c: Binding<'a>,
}

/// Builds the dispatch(es) computing `c = op(a)·op(b)` (+ bias) (ReLU) with the variant the
/// adapter's kernel choice gives for the shape. A tiled product with too few tiles to fill a
/// GPU splits K over workgroups: then the launch holds a second dispatch summing the partial
/// products, and their scratch buffer.
pub fn dispatch(
    ctx: &GpuContext,
    shape: MatmulShape,
    epilogue: Epilogue,
    bindings: MatmulBindings<'_>,
) -> Result<Launch, GpuError> {
    let variant = Variant::for_adapter(&shape, ctx.kernels());
    launch_variant(ctx, shape, epilogue, variant, bindings)
}

/// [`dispatch`] with exactly `variant`, or an error saying why it cannot run this shape on
/// this adapter (never another variant in its place).
pub fn dispatch_variant(
    ctx: &GpuContext,
    shape: MatmulShape,
    epilogue: Epilogue,
    variant: Variant,
    bindings: MatmulBindings<'_>,
) -> Result<Launch, GpuError> {
    if !variant.fits(&shape) {
        return Err(GpuError::Unsupported(format!(
            "the {variant:?} matmul cannot compute a {:?} product of {}×{}×{}",
            shape.layout, shape.m, shape.n, shape.k
        )));
    }
    if variant.uses_subgroups() && !ctx.has_subgroups_of_8() {
        return Err(GpuError::Unsupported(format!(
            "the {variant:?} matmul needs subgroups of at least 8 lanes, which this adapter lacks"
        )));
    }
    launch_variant(ctx, shape, epilogue, variant, bindings)
}

/// Appends `c = op(a)·op(b)` (+ bias, then ReLU, as `epilogue` says) to a plan with the
/// kernel the adapter's choice gives, keeping its scratch buffers (split-K) with the plan.
pub fn encode(
    cx: &mut GpuCx<'_, '_>,
    shape: MatmulShape,
    epilogue: Epilogue,
    bindings: MatmulBindings<'_>,
) -> Result<(), GpuError> {
    let launch = dispatch(cx.ctx, shape, epilogue, bindings)?;
    cx.launch(launch);
    Ok(())
}

fn launch_variant(
    ctx: &GpuContext,
    shape: MatmulShape,
    epilogue: Epilogue,
    variant: Variant,
    bindings: MatmulBindings<'_>,
) -> Result<Launch, GpuError> {
    let rows = BroadcastRows::for_rows(shape.m);
    launch_with_rows(ctx, shape, epilogue, variant, rows, bindings)
}

/// [`launch_variant`] with the broadcast variants' row block given.
fn launch_with_rows(
    ctx: &GpuContext,
    shape: MatmulShape,
    epilogue: Epilogue,
    variant: Variant,
    rows: BroadcastRows,
    bindings: MatmulBindings<'_>,
) -> Result<Launch, GpuError> {
    let MatmulBindings { a, b, bias, c } = bindings;
    let MatmulShape { m, n, k, layout } = shape;
    let (a_row, a_col) = match layout {
        Layout::NN | Layout::NT => (k, 1),
        Layout::TN => (1, m),
    };
    let (b_row, b_col) = match layout {
        Layout::NN | Layout::TN => (n, 1),
        Layout::NT => (1, k),
    };
    let mut params = Params {
        m: m as u32,
        n: n as u32,
        k: k as u32,
        flags: u32::from(epilogue.bias) | (u32::from(epilogue.relu) << 1),
        a_row: a_row as u32,
        a_col: a_col as u32,
        b_row: b_row as u32,
        b_col: b_col as u32,
        k_chunk: k as u32,
        splits: 1,
        a_stride: a.member_elements(4),
        b_stride: b.member_elements(4),
        bias_stride: bias.map_or(0, |b| b.member_elements(4)),
        c_stride: c.member_elements(4),
        _pad: [0; 2],
    };
    let members = c.members();
    let bias = bias.unwrap_or_else(|| ctx.placeholder());
    if variant == Variant::Tiled {
        return tiled(ctx, shape, params, [a, b, bias, c]);
    }
    if variant.uses_subgroups() {
        return broadcast(ctx, variant, shape, rows, &params, [a, b, bias, c]);
    }
    let (shader, entry, cols_per_inv, rows_per_inv) = match variant {
        Variant::NtVec4 => (Shader::MatmulNtVec4, "nt_vec4", 8, 8),
        Variant::NnBvec4 => (Shader::MatmulBvec4, "nn_bvec4", 8, 8),
        Variant::TnBvec4 => (Shader::MatmulBvec4, "tn_bvec4", 8, 8),
        _ => (Shader::MatmulGeneral, "general", 4, 4),
    };
    let kernel = Kernel::new(shader, entry).with("WG_X", WG).with("WG_Y", WG);
    let workgroups = [
        groups(n.div_ceil(cols_per_inv), WG),
        groups(m.div_ceil(rows_per_inv), WG),
        members,
    ];
    params.splits = 1;
    let d = ctx.dispatch(&kernel, Some(&params), &[a, b, bias, c], workgroups)?;
    Ok(Launch::single(d))
}

/// The subgroup-broadcast variants. Their modules have no runtime bounds checks, so the
/// bindings must hold the shape, for every member.
fn broadcast(
    ctx: &GpuContext,
    variant: Variant,
    shape: MatmulShape,
    rows: BroadcastRows,
    params: &Params,
    [a, b, bias, c]: [Binding<'_>; 4],
) -> Result<Launch, GpuError> {
    let MatmulShape { m, n, k, .. } = shape;
    let members = u64::from(c.members());
    for (name, binding, elements) in [("A", &a, m * k), ("B", &b, k * n), ("C", &c, m * n)] {
        let needed = binding.member_stride * (members - 1) + (elements * 4) as u64;
        if binding.size < needed {
            return Err(GpuError::BindingTooSmall {
                kernel: format!("{m}×{n}×{k} {variant:?} matmul"),
                binding: name.to_string(),
                size: binding.size,
                needed,
            });
        }
    }
    let kernel = match variant {
        Variant::BroadcastNt => Kernel::new(Shader::MatmulBroadcastNt(rows), "broadcast_nt"),
        _ => Kernel::new(Shader::MatmulBroadcastNn(rows), "broadcast_nn"),
    };
    let workgroups = [
        groups(n, BROADCAST_COLS),
        groups(m, rows.rows()),
        members as u32,
    ];
    let d = ctx.dispatch(&kernel, Some(params), &[a, b, bias, c], workgroups)?;
    Ok(Launch::single(d))
}

/// Workgroups a tiled product aims for: a few per multiprocessor of a large GPU (an H200
/// has 132), so that memory latency hides behind other workgroups.
const TARGET_WORKGROUPS: usize = 512;
/// The least K a split-K slice sums.
const MIN_K_CHUNK: usize = 128;
/// Depth of the tiled kernel's K tiles (TK in the shader).
const K_TILE: usize = 16;

/// K-slices for a tiled product of `tiles` tiles: enough workgroups to fill the GPU,
/// each summing at least MIN_K_CHUNK of K.
pub fn k_splits(shape: &MatmulShape, tiles: usize) -> usize {
    if tiles >= TARGET_WORKGROUPS / 4 {
        return 1;
    }
    (TARGET_WORKGROUPS / tiles.max(1))
        .min(shape.k / MIN_K_CHUNK)
        .clamp(1, 16)
}

/// The tiled variants; K split over `splits` workgroups per tile as [`k_splits`] chooses for
/// one member's product, so that every member sums as a lone product would.
fn tiled(
    ctx: &GpuContext,
    shape: MatmulShape,
    mut params: Params,
    [a, b, bias, c]: [Binding<'_>; 4],
) -> Result<Launch, GpuError> {
    let members = c.members();
    // 128-row tiles (8×4 per invocation) once there are rows for them, else 64×64 (4×4).
    let (entry, tile_rows) = if shape.m >= 128 {
        ("tiled_wide", 128)
    } else {
        ("tiled", 64)
    };
    let (tiles_x, tiles_y) = (shape.n.div_ceil(64), shape.m.div_ceil(tile_rows));
    let splits = k_splits(&shape, tiles_x * tiles_y);
    let chunk = shape.k.div_ceil(splits).next_multiple_of(K_TILE);
    let splits = shape.k.div_ceil(chunk).max(1);
    params.k_chunk = chunk as u32;
    params.splits = splits as u32;
    let kernel = Kernel::new(Shader::MatmulTiled, entry);
    let grid = [tiles_x as u32, tiles_y as u32, splits as u32 * members];
    if splits == 1 {
        let d = ctx.dispatch(&kernel, Some(&params), &[a, b, bias, c], grid)?;
        return Ok(Launch::single(d));
    }
    // Partial products into scratch (each member's [splits, M, N]), then one pass summing
    // them with the epilogue.
    let part = (splits * shape.m * shape.n) as u64;
    let scratch = ctx.create_buffer(
        "split-K partials",
        part * 4 * u64::from(members),
        TENSOR_USAGE,
    )?;
    let partials = Binding::whole(&scratch).split_members(members);
    let partial = Params {
        flags: params.flags | FLAG_PARTIAL,
        c_stride: partials.member_elements(4),
        ..params
    };
    let products = ctx.dispatch(&kernel, Some(&partial), &[a, b, bias, partials], grid)?;
    let [rx, ry, _] = grid_1d(
        groups(shape.m * shape.n, 256),
        ctx.limits().max_compute_workgroups_per_dimension,
    );
    let reduce = Params {
        a_stride: partials.member_elements(4),
        ..params
    };
    let reduce = ctx.dispatch_at(
        &Kernel::new(Shader::MatmulTiled, "splitk_reduce"),
        Some(&reduce),
        &[(1, partials), (3, bias), (4, c)],
        [rx, ry, members],
    )?;
    Ok(Launch {
        dispatches: vec![products, reduce],
        scratch: vec![scratch],
    })
}

/// Multiplies GPU matrices, checking their shapes; returns C: [M, N].
pub fn matmul(
    ctx: &GpuContext,
    layout: Layout,
    a: &GpuTensor,
    b: &GpuTensor,
    bias: Option<&GpuTensor>,
    relu: bool,
) -> Result<GpuTensor, OpError> {
    let shape = infer_shape(layout, a.shape(), b.shape())?;
    if let Some(bias) = bias {
        super::expect_shape("matmul", "bias", bias.shape(), &[shape.n])?;
    }
    let c = GpuTensor::zeros(ctx, &[shape.m, shape.n], "matmul.c")?;
    let epilogue = Epilogue {
        bias: bias.is_some(),
        relu,
    };
    let bindings = MatmulBindings {
        a: a.binding(),
        b: b.binding(),
        bias: bias.map(GpuTensor::binding),
        c: c.binding(),
    };
    let launch = dispatch(ctx, shape, epilogue, bindings)?;
    launch.submit(ctx);
    Ok(c)
}

/// The product's sizes from the stored shapes of A and B, or an error naming both.
pub fn infer_shape(layout: Layout, a: &[usize], b: &[usize]) -> Result<MatmulShape, OpError> {
    let (a0, a1) = expect_matrix("matmul", "A", a)?;
    let (b0, b1) = expect_matrix("matmul", "B", b)?;
    let (m, ka) = match layout {
        Layout::NN | Layout::NT => (a0, a1),
        Layout::TN => (a1, a0),
    };
    let (kb, n) = match layout {
        Layout::NN | Layout::TN => (b0, b1),
        Layout::NT => (b1, b0),
    };
    if ka != kb {
        return Err(OpError::Invalid {
            op: "matmul",
            message: format!(
                "inner dimensions differ for {layout:?}: A is {a:?} and B is {b:?} ({ka} vs {kb})"
            ),
        });
    }
    Ok(MatmulShape {
        layout,
        m,
        n,
        k: ka,
    })
}

/// CPU reference. c: \[M, N\] = op(a)·op(b) (+ bias\[N\]) (ReLU).
pub fn reference(
    shape: MatmulShape,
    a: &[f32],
    b: &[f32],
    bias: Option<&[f32]>,
    relu: bool,
) -> Vec<f32> {
    let MatmulShape { layout, m, n, k } = shape;
    let a_at = |i: usize, kk: usize| match layout {
        Layout::NN | Layout::NT => a[i * k + kk],
        Layout::TN => a[kk * m + i],
    };
    let mut c = vec![0.0f32; m * n];
    for i in 0..m {
        let row = &mut c[i * n..(i + 1) * n];
        match layout {
            // Row i of C accumulates a[i, kk] · (row kk of B): contiguous in B and C.
            Layout::NN | Layout::TN => {
                for kk in 0..k {
                    let aik = a_at(i, kk);
                    let b_row = &b[kk * n..(kk + 1) * n];
                    for (cj, &bj) in row.iter_mut().zip(b_row) {
                        *cj += aik * bj;
                    }
                }
            }
            // C[i, j] is the dot product of row i of A with row j of B.
            Layout::NT => {
                let a_row = &a[i * k..(i + 1) * k];
                for (j, cj) in row.iter_mut().enumerate() {
                    let b_row = &b[j * k..(j + 1) * k];
                    *cj = a_row.iter().zip(b_row).map(|(x, y)| x * y).sum();
                }
            }
        }
        if let Some(bias) = bias {
            for (cj, &bj) in row.iter_mut().zip(bias) {
                *cj += bj;
            }
        }
        if relu {
            for cj in row.iter_mut() {
                *cj = crate::ops::activation::relu(*cj);
            }
        }
    }
    c
}

#[cfg(test)]
mod tests {
    #[test]
    fn uniform_mirrors_every_variant() {
        for shader in [
            Shader::MatmulNtVec4,
            Shader::MatmulBvec4,
            Shader::MatmulGeneral,
            Shader::MatmulTiled,
            Shader::MatmulBroadcastNt(BroadcastRows::Twelve),
            Shader::MatmulBroadcastNn(BroadcastRows::Sixteen),
        ] {
            crate::gpu::assert_mirrors::<Params>(shader, 0);
        }
    }

    use super::*;
    use crate::check::{Tolerance, assert_close};
    use crate::ops::test_support::{ctx, gpu_style_ctx, uniform};

    /// Runs one shape through `variant` on the GPU and through the CPU reference.
    fn check(
        layout: Layout,
        m: usize,
        n: usize,
        k: usize,
        variant: Option<Variant>,
        epi: Epilogue,
    ) {
        check_on(ctx(), layout, m, n, k, variant, epi);
    }

    fn check_on(
        ctx: &GpuContext,
        layout: Layout,
        m: usize,
        n: usize,
        k: usize,
        variant: Option<Variant>,
        epi: Epilogue,
    ) {
        let shape = MatmulShape { layout, m, n, k };
        let a = uniform(1 + m as u64, m * k, -1.0, 1.0);
        let b = uniform(2 + n as u64, k * n, -1.0, 1.0);
        let bias = uniform(3, n, -1.0, 1.0);
        let ga = GpuTensor::from_slice(ctx, &a, &shape.a_shape(), "a").unwrap();
        let gb = GpuTensor::from_slice(ctx, &b, &shape.b_shape(), "b").unwrap();
        let gbias = GpuTensor::from_slice(ctx, &bias, &[n], "bias").unwrap();
        let gc = GpuTensor::zeros(ctx, &[m, n], "c").unwrap();
        let bindings = MatmulBindings {
            a: ga.binding(),
            b: gb.binding(),
            bias: epi.bias.then(|| gbias.binding()),
            c: gc.binding(),
        };
        // A named variant runs as itself or the test fails: never another in its place.
        let d = match variant {
            None => dispatch(ctx, shape, epi, bindings),
            Some(v) => dispatch_variant(ctx, shape, epi, v, bindings),
        }
        .unwrap_or_else(|e| panic!("{variant:?}: {e}"));
        d.submit(ctx);
        let got: Vec<f32> = gc.read(ctx).unwrap();
        let want = reference(shape, &a, &b, epi.bias.then_some(&bias[..]), epi.relu);
        // f32 sums of k products of magnitude ≤ 1 in a different order: error grows like √k·ε.
        let tol = Tolerance::new(1e-5 * (k as f32).sqrt().max(1.0), 1e-5);
        assert_close(
            &format!("matmul {layout:?} {m}x{n}x{k} {variant:?} {epi:?}"),
            &got,
            &want,
            tol,
        );
    }

    /// The fused ReLU keeps NaN as PyTorch's does: row 0 of A holds a NaN and row 1 a +∞, so
    /// C's row 0 is NaN and row 1 ±∞ or NaN, through the epilogue of `variant`.
    fn check_nonfinite_on(
        ctx: &GpuContext,
        layout: Layout,
        (m, n, k): (usize, usize, usize),
        variant: Variant,
    ) {
        let shape = MatmulShape { layout, m, n, k };
        let mut a = uniform(1 + m as u64, m * k, -1.0, 1.0);
        let at = |row: usize, col: usize| match layout {
            Layout::NN | Layout::NT => row * k + col,
            Layout::TN => col * m + row,
        };
        a[at(0, 0)] = f32::NAN;
        a[at(1, k - 1)] = f32::INFINITY;
        let b = uniform(2 + n as u64, k * n, -1.0, 1.0);
        let bias = uniform(3, n, -1.0, 1.0);
        let ga = GpuTensor::from_slice(ctx, &a, &shape.a_shape(), "a").unwrap();
        let gb = GpuTensor::from_slice(ctx, &b, &shape.b_shape(), "b").unwrap();
        let gbias = GpuTensor::from_slice(ctx, &bias, &[n], "bias").unwrap();
        let gc = GpuTensor::zeros(ctx, &[m, n], "c").unwrap();
        let epi = Epilogue {
            bias: true,
            relu: true,
        };
        let bindings = MatmulBindings {
            a: ga.binding(),
            b: gb.binding(),
            bias: Some(gbias.binding()),
            c: gc.binding(),
        };
        let d = dispatch_variant(ctx, shape, epi, variant, bindings)
            .unwrap_or_else(|e| panic!("{variant:?}: {e}"));
        d.submit(ctx);
        let got: Vec<f32> = gc.read(ctx).unwrap();
        let want = reference(shape, &a, &b, Some(&bias), true);
        assert!(
            want[..n].iter().all(|v| v.is_nan()),
            "the reference keeps NaN"
        );
        assert!(want[n..2 * n].iter().any(|v| v.is_infinite()));
        let tol = Tolerance::new(1e-5 * (k as f32).sqrt(), 1e-5);
        assert_close(
            &format!("relu epilogue on NaN/inf, {layout:?} {m}x{n}x{k} {variant:?}"),
            &got,
            &want,
            tol,
        );
    }

    #[test]
    fn the_fused_relu_keeps_nan_in_every_variant() {
        let (small, long) = ((9, 64, 16), (9, 64, 784));
        for ctx in [ctx(), gpu_style_ctx()] {
            for (layout, variant) in [
                (Layout::NT, Variant::NtVec4),
                (Layout::NN, Variant::NnBvec4),
                (Layout::TN, Variant::TnBvec4),
                (Layout::NT, Variant::General),
                (Layout::TN, Variant::General),
                (Layout::NT, Variant::Tiled),
                (Layout::NN, Variant::Tiled),
            ] {
                check_nonfinite_on(ctx, layout, small, variant);
                // Long K: the tiled variant splits it over workgroups, summed by splitk_reduce.
                check_nonfinite_on(ctx, layout, long, variant);
            }
        }
        if let Some(ctx) = subgroup_ctx() {
            check_nonfinite_on(ctx, Layout::NT, long, Variant::BroadcastNt);
            check_nonfinite_on(ctx, Layout::NN, (13, 66, 20), Variant::BroadcastNn);
            check_nonfinite_on(ctx, Layout::TN, long, Variant::BroadcastNn);
        }
    }

    const SHAPES: &[(usize, usize, usize)] = &[
        (1, 1, 1),
        (3, 7, 5),
        (65, 33, 17),
        (1000, 10, 32),
        (128, 64, 3072),
        (7, 12, 8),
        (9, 64, 784),
    ];

    #[test]
    fn every_layout_and_shape_matches_reference() {
        let epi = Epilogue {
            bias: true,
            relu: true,
        };
        for &(m, n, k) in SHAPES {
            for layout in [Layout::NN, Layout::NT, Layout::TN] {
                check(layout, m, n, k, None, epi);
                check(layout, m, n, k, None, Epilogue::default());
            }
        }
    }

    #[test]
    fn general_and_tiled_variants_match_reference_on_every_layout() {
        let epi = Epilogue {
            bias: true,
            relu: false,
        };
        for &(m, n, k) in SHAPES {
            for layout in [Layout::NN, Layout::NT, Layout::TN] {
                for variant in [Variant::General, Variant::Tiled] {
                    check(layout, m, n, k, Some(variant), epi);
                }
            }
        }
        let relu = Epilogue {
            bias: true,
            relu: true,
        };
        check(Layout::NT, 300, 129, 77, Some(Variant::Tiled), relu);
    }

    #[test]
    fn gpu_kernel_choice_matches_reference() {
        // With GPU kernels the large shapes take the workgroup-tiled variant.
        let epi = Epilogue {
            bias: true,
            relu: true,
        };
        for &(m, n, k) in SHAPES {
            for layout in [Layout::NN, Layout::NT, Layout::TN] {
                check_on(gpu_style_ctx(), layout, m, n, k, None, epi);
            }
        }
        let big = MatmulShape {
            layout: Layout::TN,
            m: 128,
            n: 64,
            k: 3072,
        };
        let gpu = KernelChoice::all(true);
        let cpu = KernelChoice::all(false);
        // GPU kernels keep register blocks below a tile.
        assert_eq!(
            Variant::for_adapter(&MatmulShape { m: 32, ..big }, gpu),
            Variant::TnBvec4
        );
        let cpu_without_subgroups = KernelChoice {
            subgroup_matmul: false,
            ..cpu
        };
        assert_eq!(Variant::for_adapter(&big, gpu), Variant::Tiled);
        assert_eq!(Variant::for_adapter(&big, cpu), Variant::BroadcastNn);
        assert_eq!(
            Variant::for_adapter(&big, cpu_without_subgroups),
            Variant::TnBvec4
        );
        let forward = MatmulShape {
            layout: Layout::NT,
            m: 128,
            n: 64,
            k: 784,
        };
        assert_eq!(Variant::for_adapter(&forward, cpu), Variant::BroadcastNt);
        // Too few columns to fill a broadcast workgroup, or a shape neither variant takes:
        // register blocks.
        let narrow = MatmulShape { n: 16, ..big };
        assert_eq!(Variant::for_adapter(&narrow, cpu), Variant::TnBvec4);
        let odd_k = MatmulShape { k: 783, ..forward };
        assert_eq!(Variant::for_adapter(&odd_k, cpu), Variant::General);
    }

    /// Whether the adapter must offer 8-lane subgroups: lavapipe, llvmpipe's Vulkan driver,
    /// does from Mesa 25 on. wgpu's GL backend has no subgroups, on llvmpipe as anywhere.
    fn subgroups_of_8_expected(adapter: &crate::gpu::AdapterSummary) -> bool {
        let mesa_major = adapter
            .driver_info
            .split("Mesa ")
            .nth(1)
            .and_then(|v| v.split('.').next()?.parse::<u32>().ok());
        adapter.backend == wgpu::Backend::Vulkan && adapter.is_cpu() && mesa_major >= Some(25)
    }

    #[test]
    fn subgroups_are_expected_of_lavapipe_from_mesa_25_and_not_of_gl() {
        // As wgpu describes llvmpipe on each backend.
        let llvmpipe = |backend, driver_info: &str| crate::gpu::AdapterSummary {
            name: "llvmpipe (LLVM 15.0.6, 256 bits)".into(),
            backend,
            device_type: wgpu::DeviceType::Cpu,
            driver: "llvmpipe".into(),
            driver_info: driver_info.into(),
        };
        let vulkan =
            |mesa: &str| llvmpipe(wgpu::Backend::Vulkan, &format!("Mesa {mesa} (LLVM 15.0.6)"));
        assert!(subgroups_of_8_expected(&vulkan("25.0.7-2~bpo12+1")));
        assert!(!subgroups_of_8_expected(&vulkan("22.3.6")));
        let gl = llvmpipe(
            wgpu::Backend::Gl,
            "4.5 (Core Profile) Mesa 25.0.7-2~bpo12+1",
        );
        assert!(!subgroups_of_8_expected(&gl));
        // The adapter these tests run on: where expected, the feature is there.
        let adapter = ctx().adapter();
        if subgroups_of_8_expected(adapter) {
            assert!(ctx().has_subgroups_of_8(), "{adapter}");
        }
    }

    /// The context for the broadcast variants, or None (after saying so) where the adapter
    /// lacks 8-lane subgroups and is not expected to have them (lavapipe from Mesa 25 has
    /// them; older ones and GL do not).
    fn subgroup_ctx() -> Option<&'static GpuContext> {
        let ctx = ctx();
        if ctx.has_subgroups_of_8() {
            return Some(ctx);
        }
        // Where CI runs them on Vulkan (lavapipe from Mesa 25) these tests must not skip.
        assert!(
            !subgroups_of_8_expected(ctx.adapter()),
            "lavapipe from Mesa 25 offers 8-lane subgroups: {}",
            ctx.adapter()
        );
        eprintln!("skipped: {} lacks subgroups of 8 lanes", ctx.adapter());
        None
    }

    #[test]
    fn broadcast_variants_match_reference() {
        let Some(ctx) = subgroup_ctx() else { return };
        let epi = Epilogue {
            bias: true,
            relu: true,
        };
        // M and N off every tile; K below 8, with a tail of 4 (NT) or of 1..7 (NN, TN), long.
        let nt = [
            (1, 1, 4),
            (3, 7, 12),
            (65, 33, 16),
            (1000, 10, 32),
            (128, 64, 3072),
            (9, 64, 784),
            (13, 65, 20),
            (32, 64, 784),
            (33, 130, 1000),
        ];
        for (m, n, k) in nt {
            check_on(ctx, Layout::NT, m, n, k, Some(Variant::BroadcastNt), epi);
        }
        let nn = [
            (1, 2, 1),
            (3, 6, 5),
            (65, 34, 17),
            (1000, 10, 32),
            (128, 64, 3072),
            (7, 12, 8),
            (9, 64, 784),
            (17, 66, 13),
            (64, 784, 32),
            (33, 130, 1000),
        ];
        for (m, n, k) in nn {
            for layout in [Layout::NN, Layout::TN] {
                check_on(ctx, layout, m, n, k, Some(Variant::BroadcastNn), epi);
            }
        }
        let plain = Epilogue::default();
        check_on(
            ctx,
            Layout::NT,
            65,
            70,
            100,
            Some(Variant::BroadcastNt),
            plain,
        );
        check_on(
            ctx,
            Layout::TN,
            64,
            784,
            128,
            Some(Variant::BroadcastNn),
            plain,
        );
    }

    /// Every output sums its K products in one order whatever the row block: the blocks of
    /// 12 and 16 rows give the same bits, for M below, at and past a block, with K tails.
    #[test]
    fn broadcast_row_blocks_give_the_same_bits() {
        let Some(ctx) = subgroup_ctx() else { return };
        let epi = Epilogue {
            bias: true,
            relu: false,
        };
        let shapes = [
            (1, 64, 784),
            (7, 34, 20),
            (32, 64, 32),
            (65, 130, 13),
            (100, 66, 1000),
        ];
        for (m, n, k) in shapes {
            for (layout, variant) in [
                (Layout::NT, Variant::BroadcastNt),
                (Layout::NN, Variant::BroadcastNn),
                (Layout::TN, Variant::BroadcastNn),
            ] {
                let shape = MatmulShape { layout, m, n, k };
                if !variant.fits(&shape) {
                    continue;
                }
                let a = uniform(5, m * k, -1.0, 1.0);
                let b = uniform(6, k * n, -1.0, 1.0);
                let bias = uniform(7, n, -1.0, 1.0);
                let ga = GpuTensor::from_slice(ctx, &a, &shape.a_shape(), "a").unwrap();
                let gb = GpuTensor::from_slice(ctx, &b, &shape.b_shape(), "b").unwrap();
                let gbias = GpuTensor::from_slice(ctx, &bias, &[n], "bias").unwrap();
                let products = [BroadcastRows::Twelve, BroadcastRows::Sixteen].map(|rows| {
                    let gc = GpuTensor::zeros(ctx, &[m, n], "c").unwrap();
                    let bindings = MatmulBindings {
                        a: ga.binding(),
                        b: gb.binding(),
                        bias: Some(gbias.binding()),
                        c: gc.binding(),
                    };
                    launch_with_rows(ctx, shape, epi, variant, rows, bindings)
                        .unwrap()
                        .submit(ctx);
                    gc.read::<u32>(ctx).unwrap()
                });
                assert!(
                    products[0] == products[1],
                    "{layout:?} {m}×{n}×{k}: the 12- and 16-row blocks differ"
                );
            }
        }
    }

    #[test]
    fn the_row_block_follows_m() {
        let rows = |m| BroadcastRows::for_rows(m).rows();
        // Multiples of 16 and large M: 16; small M or just past a multiple of 12: 12.
        for m in [16, 32, 64, 128, 1000, 1024] {
            assert_eq!(rows(m), 16, "M = {m}");
        }
        for m in [0, 1, 7, 10, 12, 24, 65] {
            assert_eq!(rows(m), 12, "M = {m}");
        }
    }

    #[test]
    fn broadcast_variants_refuse_bindings_smaller_than_the_shape() {
        let Some(ctx) = subgroup_ctx() else { return };
        let shape = MatmulShape {
            layout: Layout::NN,
            m: 64,
            n: 64,
            k: 64,
        };
        let a = GpuTensor::zeros(ctx, &[64, 64], "a").unwrap();
        let short_b = GpuTensor::zeros(ctx, &[63, 64], "b").unwrap();
        let c = GpuTensor::zeros(ctx, &[64, 64], "c").unwrap();
        let bindings = MatmulBindings {
            a: a.binding(),
            b: short_b.binding(),
            bias: None,
            c: c.binding(),
        };
        let result = dispatch_variant(
            ctx,
            shape,
            Epilogue::default(),
            Variant::BroadcastNn,
            bindings,
        );
        let Err(error) = result else {
            panic!("a short B binding was accepted");
        };
        assert_eq!(
            error.to_string(),
            "64×64×64 BroadcastNn matmul: binding B holds 16128 bytes but the launch reads 16384"
        );
    }

    #[test]
    fn vectorized_variants_are_chosen_when_shapes_allow() {
        let nt = MatmulShape {
            layout: Layout::NT,
            m: 3,
            n: 10,
            k: 784,
        };
        assert_eq!(Variant::choose(&nt), Variant::NtVec4);
        let nt_odd = MatmulShape { k: 7, ..nt };
        assert_eq!(Variant::choose(&nt_odd), Variant::General);
        let nn = MatmulShape {
            layout: Layout::NN,
            m: 5,
            n: 64,
            k: 10,
        };
        assert_eq!(Variant::choose(&nn), Variant::NnBvec4);
        let tn = MatmulShape {
            layout: Layout::TN,
            m: 10,
            n: 30,
            k: 5,
        };
        assert_eq!(Variant::choose(&tn), Variant::General);
    }

    #[test]
    fn mismatched_inner_dimensions_are_an_error() {
        let err = infer_shape(Layout::NT, &[4, 5], &[3, 6]).unwrap_err();
        assert!(
            err.to_string().contains("[4, 5]") && err.to_string().contains("[3, 6]"),
            "{err}"
        );
        let err = infer_shape(Layout::NN, &[4], &[4, 6]).unwrap_err();
        assert!(matches!(err, OpError::Shape { what: "A", .. }), "{err}");
    }

    #[test]
    fn reference_matches_hand_computed_product() {
        // [[1,2],[3,4]] · [[5,6],[7,8]] = [[19,22],[43,50]]
        let shape = MatmulShape {
            layout: Layout::NN,
            m: 2,
            n: 2,
            k: 2,
        };
        let c = reference(
            shape,
            &[1., 2., 3., 4.],
            &[5., 6., 7., 8.],
            Some(&[1.0, -100.0]),
            true,
        );
        assert_eq!(c, vec![20.0, 0.0, 44.0, 0.0]);
        let nt = MatmulShape {
            layout: Layout::NT,
            ..shape
        };
        assert_eq!(
            reference(nt, &[1., 2., 3., 4.], &[5., 7., 6., 8.], None, false),
            vec![19., 22., 43., 50.]
        );
        let tn = MatmulShape {
            layout: Layout::TN,
            ..shape
        };
        assert_eq!(
            reference(tn, &[1., 3., 2., 4.], &[5., 6., 7., 8.], None, false),
            vec![19., 22., 43., 50.]
        );
    }

    /// Three members in one launch of `variant` — each with its own A, B, bias and C at a
    /// member stride larger than its part (as a flat parameter buffer lays members out), or
    /// with one B every member shares (stride 0) — against three lone launches, bit for bit.
    fn check_members(ctx: &GpuContext, variant: Variant, shape: MatmulShape, shared_b: bool) {
        const MEMBERS: usize = 3;
        let MatmulShape { m, n, k, .. } = shape;
        let (a_len, b_len, c_len) = (m * k, k * n, m * n);
        // Strides padded past each part, multiples of 4 as the flat buffers' are.
        let pad = |len: usize| (len + 5).next_multiple_of(4);
        let (a_stride, b_stride, bias_stride, c_stride) =
            (pad(a_len), pad(b_len), pad(n), pad(c_len));
        let a = uniform(11, a_stride * MEMBERS, -1.0, 1.0);
        let b = uniform(12, b_stride * MEMBERS, -1.0, 1.0);
        let bias = uniform(13, bias_stride * MEMBERS, -1.0, 1.0);
        let epi = Epilogue {
            bias: true,
            relu: true,
        };
        let ga = GpuTensor::from_slice(ctx, &a, &[a.len()], "a").unwrap();
        let gb = GpuTensor::from_slice(ctx, &b, &[b.len()], "b").unwrap();
        let gbias = GpuTensor::from_slice(ctx, &bias, &[bias.len()], "bias").unwrap();
        let gc = GpuTensor::zeros(ctx, &[c_stride * MEMBERS], "c").unwrap();
        fn strided(t: &GpuTensor, stride: usize, len: usize) -> Binding<'_> {
            Binding {
                size: ((stride * (MEMBERS - 1) + len) * 4) as u64,
                member_stride: (stride * 4) as u64,
                ..t.binding()
            }
        }
        let b_binding = if shared_b {
            Binding::range(gb.buffer(), 0, (b_len * 4) as u64)
        } else {
            strided(&gb, b_stride, b_len)
        };
        let bindings = MatmulBindings {
            a: strided(&ga, a_stride, a_len),
            b: b_binding,
            bias: Some(strided(&gbias, bias_stride, n)),
            c: strided(&gc, c_stride, c_len),
        };
        let label = format!("{variant:?} {shape:?}, shared B {shared_b}");
        dispatch_variant(ctx, shape, epi, variant, bindings)
            .unwrap_or_else(|e| panic!("{label}: {e}"))
            .submit(ctx);
        let stacked: Vec<f32> = gc.read(ctx).unwrap();
        for member in 0..MEMBERS {
            let part = |v: &[f32], stride: usize, len: usize| {
                v[member * stride..member * stride + len].to_vec()
            };
            let b_part = if shared_b {
                b[..b_len].to_vec()
            } else {
                part(&b, b_stride, b_len)
            };
            let la = GpuTensor::from_slice(ctx, &part(&a, a_stride, a_len), &[a_len], "a").unwrap();
            let lb = GpuTensor::from_slice(ctx, &b_part, &[b_len], "b").unwrap();
            let lbias =
                GpuTensor::from_slice(ctx, &part(&bias, bias_stride, n), &[n], "bias").unwrap();
            let lc = GpuTensor::zeros(ctx, &[c_len], "c").unwrap();
            let lone = MatmulBindings {
                a: la.binding(),
                b: lb.binding(),
                bias: Some(lbias.binding()),
                c: lc.binding(),
            };
            dispatch_variant(ctx, shape, epi, variant, lone)
                .unwrap_or_else(|e| panic!("{label}: {e}"))
                .submit(ctx);
            let want: Vec<f32> = lc.read(ctx).unwrap();
            let got = &stacked[member * c_stride..member * c_stride + c_len];
            assert!(
                got.iter()
                    .zip(&want)
                    .all(|(g, w)| g.to_bits() == w.to_bits()),
                "{label}: member {member} differs from its lone product"
            );
        }
    }

    #[test]
    fn every_variant_runs_members_side_by_side_bit_for_bit() {
        let shapes = [
            (1, 4, 4),
            (3, 8, 12),
            (65, 36, 20),
            (13, 66, 68),
            (70, 64, 1024),
        ];
        for (m, n, k) in shapes {
            for layout in [Layout::NN, Layout::NT, Layout::TN] {
                let shape = MatmulShape { layout, m, n, k };
                let variants = [
                    Variant::General,
                    Variant::Tiled,
                    Variant::NtVec4,
                    Variant::NnBvec4,
                    Variant::TnBvec4,
                ];
                for variant in variants.into_iter().filter(|v| v.fits(&shape)) {
                    for shared_b in [false, true] {
                        check_members(ctx(), variant, shape, shared_b);
                    }
                }
                if let Some(ctx) = subgroup_ctx() {
                    for variant in [Variant::BroadcastNt, Variant::BroadcastNn] {
                        if variant.fits(&shape) {
                            check_members(ctx, variant, shape, false);
                        }
                    }
                }
            }
        }
        // Split-K: one 64×64 tile with a long K, on the GPU kernels' context.
        let shape = MatmulShape {
            layout: Layout::NT,
            m: 64,
            n: 64,
            k: 3072,
        };
        check_members(gpu_style_ctx(), Variant::Tiled, shape, false);
        check_members(gpu_style_ctx(), Variant::Tiled, shape, true);
    }
}

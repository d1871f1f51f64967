//! Comparing tensors: one checker for every numerical comparison in wgnn's tests.
//!
//! An element passes when `|got - want| <= atol + rtol * |want|`. On failure the report names
//! the tensor, the first mismatching index, the first few mismatching pairs and the largest
//! error, so a failing test says where and by how much.

/// Absolute and relative tolerance of a comparison.
#[derive(Clone, Copy, Debug)]
pub struct Tolerance {
    pub atol: f32,
    pub rtol: f32,
}

impl Tolerance {
    pub const fn new(atol: f32, rtol: f32) -> Self {
        Self { atol, rtol }
    }
}

/// Compares `got` against `want`; `Err` carries a readable report.
pub fn compare(name: &str, got: &[f32], want: &[f32], tol: Tolerance) -> Result<(), String> {
    if got.len() != want.len() {
        return Err(format!(
            "{name}: length {} but the reference has {}",
            got.len(),
            want.len()
        ));
    }
    let mut bad = Vec::new();
    let mut bad_count = 0usize;
    let mut worst = (0usize, 0f32);
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let ok = if w.is_nan() {
            g.is_nan()
        } else if w.is_infinite() {
            g == w
        } else {
            (g - w).abs() <= tol.atol + tol.rtol * w.abs()
        };
        let err = if g.is_nan() != w.is_nan() {
            f32::INFINITY
        } else {
            (g - w).abs()
        };
        if err > worst.1 || (err.is_nan() && !worst.1.is_nan()) {
            worst = (i, err);
        }
        if !ok {
            bad_count += 1;
            if bad.len() < 5 {
                bad.push(format!("[{i}] got {g:e} want {w:e}"));
            }
        }
    }
    if bad_count == 0 {
        return Ok(());
    }
    Err(format!(
        "{name}: {bad_count} of {} elements outside atol {:e} + rtol {:e}: {}; largest error {:e} at [{}]",
        got.len(),
        tol.atol,
        tol.rtol,
        bad.join(", "),
        worst.1,
        worst.0
    ))
}

/// Panics with [`compare`]'s report when the tensors differ. For tests.
#[track_caller]
pub fn assert_close(name: &str, got: &[f32], want: &[f32], tol: Tolerance) {
    if let Err(report) = compare(name, got, want, tol) {
        panic!("{report}");
    }
}

/// Largest absolute difference, for reports.
pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passes_within_tolerance_and_reports_the_first_mismatch() {
        let tol = Tolerance::new(1e-3, 0.0);
        assert!(compare("x", &[1.0, 2.0], &[1.0005, 2.0], tol).is_ok());
        let report = compare("x", &[1.0, 2.5, 3.0], &[1.0, 2.0, 3.0], tol).unwrap_err();
        assert!(report.contains("x: 1 of 3"), "{report}");
        assert!(report.contains("[1] got 2.5e0 want 2e0"), "{report}");
        assert!(compare("nan", &[f32::NAN], &[0.0], tol).is_err());
        assert!(compare("nan", &[f32::NAN], &[f32::NAN], tol).is_ok());
        assert!(compare("len", &[1.0], &[1.0, 2.0], tol).is_err());
    }
}

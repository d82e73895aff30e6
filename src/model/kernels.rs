//! Vectorised row kernels behind the fused CPU ops of [`super::ops`].
//!
//! The crate itself is built at `opt-level = 1` in dev/test builds, where LLVM does not
//! auto-vectorise loops, so the hot element-wise kernels (GELU with its `erf`, softmax with its
//! `exp`, layer norm) are written with explicit AVX2 + FMA intrinsics, picked at run time, with
//! a scalar fallback of the same math on other CPUs and architectures.
//!
//! `exp` is the Cephes single-precision range reduction + degree-5 polynomial (≈1 ulp) and
//! `erf` the rational approximation used by Eigen and XLA for f32 (≈2 ulp on [−4, 4], ±1
//! outside), so results agree with libm to ~1e-7 relative.

/// Whether the AVX2 + FMA kernels can run on this CPU (cached by std after the first call).
#[inline]
fn use_avx2() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

// ------------------------------------------------------------------------- scalar math

const LOG2E: f32 = std::f32::consts::LOG2_E;
const EXP_HI: f32 = 88.376_26;
const EXP_LO: f32 = -87.336_55;
const EXP_C1: f32 = 0.693_359_4;
const EXP_C2: f32 = -2.121_944_4e-4;
const EXP_P: [f32; 6] = [
    1.987_569_1e-4,
    1.398_199_9e-3,
    8.333_452e-3,
    4.166_579_6e-2,
    0.166_666_65,
    0.5,
];
const ERF_ALPHA: [f32; 7] = [
    -2.726_142_3e-10,
    2.770_681_4e-8,
    -2.101_024e-6,
    -5.692_506_4e-5,
    -7.349_906_3e-4,
    -2.954_600_2e-3,
    -1.609_603_3e-2,
];
const ERF_BETA: [f32; 5] = [
    -1.456_607_2e-5,
    -2.133_740_6e-4,
    -1.682_827e-3,
    -7.373_329e-3,
    -1.426_474e-2,
];
const FRAC_1_SQRT_2: f32 = std::f32::consts::FRAC_1_SQRT_2;
const FRAC_1_SQRT_2PI: f32 = 0.398_942_3;

/// `exp(x)` with the same polynomial as the vector kernel; 0 below −87.3 (no denormals).
#[inline]
pub fn exp_f32(x: f32) -> f32 {
    if x < EXP_LO {
        return 0.0;
    }
    let x = x.min(EXP_HI);
    let fx = (x * LOG2E + 0.5).floor();
    let r = x - fx * EXP_C1 - fx * EXP_C2;
    let mut y = EXP_P[0];
    for &p in &EXP_P[1..] {
        y = y * r + p;
    }
    let y = y * r * r + r + 1.0;
    y * f32::from_bits(((fx as i32 + 127) as u32) << 23)
}

/// `erf(x)` with the same rational approximation as the vector kernel.
#[inline]
pub fn erf_f32(x: f32) -> f32 {
    let x = x.clamp(-4.0, 4.0);
    let x2 = x * x;
    let mut p = ERF_ALPHA[0];
    for &a in &ERF_ALPHA[1..] {
        p = p * x2 + a;
    }
    let mut q = ERF_BETA[0];
    for &b in &ERF_BETA[1..] {
        q = q * x2 + b;
    }
    x * p / q
}

#[inline]
fn gelu_scalar(v: f32) -> f32 {
    0.5 * v * (1.0 + erf_f32(v * FRAC_1_SQRT_2))
}

#[inline]
fn gelu_grad_scalar(v: f32, g: f32) -> f32 {
    let cdf = 0.5 * (1.0 + erf_f32(v * FRAC_1_SQRT_2));
    let pdf = FRAC_1_SQRT_2PI * exp_f32(-0.5 * v * v);
    g * (cdf + v * pdf)
}

// ------------------------------------------------------------------------- public kernels

/// `y = x · Φ(x)` (exact GELU) element-wise.
pub fn gelu(x: &[f32], y: &mut [f32]) {
    assert_eq!(x.len(), y.len());
    #[cfg(target_arch = "x86_64")]
    if use_avx2() {
        // SAFETY: the CPU supports AVX2 and FMA (checked above).
        return unsafe { avx::gelu(x, y) };
    }
    for (o, &v) in y.iter_mut().zip(x) {
        *o = gelu_scalar(v);
    }
}

/// `dx = dy · (Φ(x) + x·φ(x))` element-wise.
pub fn gelu_bwd(x: &[f32], dy: &[f32], dx: &mut [f32]) {
    assert!(x.len() == dy.len() && x.len() == dx.len());
    #[cfg(target_arch = "x86_64")]
    if use_avx2() {
        // SAFETY: the CPU supports AVX2 and FMA (checked above).
        return unsafe { avx::gelu_bwd(x, dy, dx) };
    }
    for ((o, &v), &g) in dx.iter_mut().zip(x).zip(dy) {
        *o = gelu_grad_scalar(v, g);
    }
}

/// Softmax of one row, `y = exp(x − max) / Σ exp(x − max)`.
pub fn softmax_row(x: &[f32], y: &mut [f32]) {
    y.copy_from_slice(x);
    softmax_inplace(y);
}

/// [`softmax_row`] in place.
pub fn softmax_inplace(y: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if use_avx2() {
        // SAFETY: the CPU supports AVX2 and FMA (checked above).
        return unsafe { avx::softmax_inplace(y) };
    }
    let max = y.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0f32;
    for o in y.iter_mut() {
        *o = exp_f32(*o - max);
        sum += *o;
    }
    let inv = 1.0 / sum;
    y.iter_mut().for_each(|o| *o *= inv);
}

/// Backward of one softmax row: `dx = y ⊙ (dy − Σ dy ⊙ y)`.
pub fn softmax_bwd_row(y: &[f32], dy: &[f32], dx: &mut [f32]) {
    let dot = dot(y, dy);
    scaled_diff(y, dy, dot, dx);
}

/// `Σ a ⊙ b`.
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    #[cfg(target_arch = "x86_64")]
    if use_avx2() {
        // SAFETY: the CPU supports AVX2 and FMA (checked above).
        return unsafe { avx::dot(a, b) };
    }
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// `out = y ⊙ (dy − c)`.
fn scaled_diff(y: &[f32], dy: &[f32], c: f32, out: &mut [f32]) {
    assert!(y.len() == dy.len() && y.len() == out.len());
    #[cfg(target_arch = "x86_64")]
    if use_avx2() {
        // SAFETY: the CPU supports AVX2 and FMA (checked above).
        return unsafe { avx::scaled_diff(y, dy, c, out) };
    }
    for ((o, &a), &g) in out.iter_mut().zip(y).zip(dy) {
        *o = a * (g - c);
    }
}

/// Mean and `1/sqrt(var + eps)` (biased variance) of one row, in two passes.
pub fn row_stats(x: &[f32], eps: f32) -> (f32, f32) {
    let n = x.len() as f32;
    #[cfg(target_arch = "x86_64")]
    if use_avx2() {
        // SAFETY: the CPU supports AVX2 and FMA (checked above).
        let (sum, _) = unsafe { avx::sum_and_centered_sq(x, 0.0) };
        let mean = sum / n;
        let (_, sq) = unsafe { avx::sum_and_centered_sq(x, mean) };
        return (mean, 1.0 / (sq / n + eps).sqrt());
    }
    let mean = x.iter().sum::<f32>() / n;
    let var = x.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / n;
    (mean, 1.0 / (var + eps).sqrt())
}

/// Layer norm of one row: `y = (x − mean)·rstd·γ + β`.
pub fn layer_norm_row(x: &[f32], g: &[f32], b: &[f32], eps: f32, y: &mut [f32]) {
    assert!(x.len() == g.len() && x.len() == b.len() && x.len() == y.len());
    let (mean, rstd) = row_stats(x, eps);
    #[cfg(target_arch = "x86_64")]
    if use_avx2() {
        // SAFETY: the CPU supports AVX2 and FMA (checked above).
        return unsafe { avx::norm_affine(x, g, b, mean, rstd, y) };
    }
    for i in 0..x.len() {
        y[i] = (x[i] - mean) * rstd * g[i] + b[i];
    }
}

/// Backward of one layer-norm row. Writes `dx`, adds this row's `dy ⊙ x̂` to `dg` and `dy` to
/// `db`; `xhat` is scratch of the row's length.
#[allow(clippy::too_many_arguments)]
pub fn layer_norm_bwd_row(
    x: &[f32],
    g: &[f32],
    dy: &[f32],
    eps: f32,
    dx: &mut [f32],
    dg: &mut [f32],
    db: &mut [f32],
    xhat: &mut [f32],
) {
    let d = x.len();
    assert!(
        g.len() == d
            && dy.len() == d
            && dx.len() == d
            && dg.len() == d
            && db.len() == d
            && xhat.len() == d
    );
    let (mean, rstd) = row_stats(x, eps);
    #[cfg(target_arch = "x86_64")]
    if use_avx2() {
        // SAFETY: the CPU supports AVX2 and FMA (checked above).
        return unsafe { avx::layer_norm_bwd_row(x, g, dy, mean, rstd, dx, dg, db, xhat) };
    }
    let mut sum_dxhat = 0f32;
    let mut sum_dxhat_xhat = 0f32;
    for i in 0..d {
        xhat[i] = (x[i] - mean) * rstd;
        dg[i] += dy[i] * xhat[i];
        db[i] += dy[i];
        let dxh = dy[i] * g[i];
        sum_dxhat += dxh;
        sum_dxhat_xhat += dxh * xhat[i];
    }
    let m1 = sum_dxhat / d as f32;
    let m2 = sum_dxhat_xhat / d as f32;
    for i in 0..d {
        dx[i] = rstd * (dy[i] * g[i] - m1 - xhat[i] * m2);
    }
}

/// `acc += x`.
pub fn add_assign(acc: &mut [f32], x: &[f32]) {
    assert_eq!(acc.len(), x.len());
    #[cfg(target_arch = "x86_64")]
    if use_avx2() {
        // SAFETY: the CPU supports AVX2 and FMA (checked above).
        return unsafe { avx::add_assign(acc, x) };
    }
    for (a, &v) in acc.iter_mut().zip(x) {
        *a += v;
    }
}

/// `y = x + b` for one row.
pub fn add_row(x: &[f32], b: &[f32], y: &mut [f32]) {
    assert!(x.len() == b.len() && x.len() == y.len());
    y.copy_from_slice(x);
    add_assign(y, b);
}

/// Columns `c0..c0 + n` of the `rows × cols` row-major `w`, transposed: `out` is `n × rows`
/// row-major (row `j` is column `c0 + j` of `w`). Eight-by-eight register blocks on AVX2.
pub fn transpose_columns(w: &[f32], rows: usize, cols: usize, c0: usize, out: &mut [f32]) {
    let n = out.len() / rows.max(1);
    assert!(
        w.len() == rows * cols && out.len() == n * rows && c0 + n <= cols,
        "transpose: columns {c0}..{} of a {rows}×{cols} matrix into {} values",
        c0 + n,
        out.len()
    );
    let mut done = 0;
    #[cfg(target_arch = "x86_64")]
    if n == 8 && use_avx2() {
        // SAFETY: the CPU supports AVX2 (checked above); shapes checked above.
        done = unsafe { avx::transpose_8_columns(w, rows, cols, c0, out) };
    }
    for r in done..rows {
        for j in 0..n {
            out[j * rows + r] = w[r * cols + c0 + j];
        }
    }
}

// ------------------------------------------------------------------------- AVX2 + FMA

#[cfg(target_arch = "x86_64")]
mod avx {
    use super::*;
    use std::arch::x86_64::*;

    const W: usize = 8;

    /// Flush-to-zero for the lifetime of the guard. The `exp` kernel otherwise hits
    /// microcode assists for subnormal intermediates on some inputs (measured 3x slower for
    /// GELU's backward); values below 1.2e-38 are irrelevant to every result here.
    struct FlushToZero(u32);

    impl FlushToZero {
        #[allow(deprecated)]
        fn new() -> Self {
            // SAFETY: reading and setting MXCSR only changes this thread's rounding of
            // subnormal results; the previous state is restored on drop.
            unsafe {
                let old = _mm_getcsr();
                _mm_setcsr(old | _MM_FLUSH_ZERO_ON);
                Self(old)
            }
        }
    }

    impl Drop for FlushToZero {
        #[allow(deprecated)]
        fn drop(&mut self) {
            // SAFETY: restores the state saved in `new`.
            unsafe { _mm_setcsr(self.0) }
        }
    }

    #[target_feature(enable = "avx2,fma")]
    #[inline]
    fn hsum(v: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
        _mm_cvtss_f32(s)
    }

    #[target_feature(enable = "avx2,fma")]
    #[inline]
    fn hmax(v: __m256) -> f32 {
        let s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let s = _mm_max_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_max_ss(s, _mm_shuffle_ps(s, s, 1));
        _mm_cvtss_f32(s)
    }

    #[target_feature(enable = "avx2,fma")]
    #[inline]
    unsafe fn load(s: &[f32], i: usize) -> __m256 {
        debug_assert!(i + W <= s.len());
        // SAFETY: the caller keeps i + 8 within the slice.
        unsafe { _mm256_loadu_ps(s.as_ptr().add(i)) }
    }

    #[target_feature(enable = "avx2,fma")]
    #[inline]
    unsafe fn store(s: &mut [f32], i: usize, v: __m256) {
        debug_assert!(i + W <= s.len());
        // SAFETY: the caller keeps i + 8 within the slice.
        unsafe { _mm256_storeu_ps(s.as_mut_ptr().add(i), v) }
    }

    /// Vector [`exp_f32`].
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    fn exp(x: __m256) -> __m256 {
        let too_small = _mm256_cmp_ps::<_CMP_LT_OQ>(x, _mm256_set1_ps(EXP_LO));
        let x = _mm256_min_ps(x, _mm256_set1_ps(EXP_HI));
        let x = _mm256_max_ps(x, _mm256_set1_ps(EXP_LO));
        let fx = _mm256_floor_ps(_mm256_fmadd_ps(
            x,
            _mm256_set1_ps(LOG2E),
            _mm256_set1_ps(0.5),
        ));
        let r = _mm256_fnmadd_ps(fx, _mm256_set1_ps(EXP_C1), x);
        let r = _mm256_fnmadd_ps(fx, _mm256_set1_ps(EXP_C2), r);
        let mut y = _mm256_set1_ps(EXP_P[0]);
        for &p in &EXP_P[1..] {
            y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(p));
        }
        let y = _mm256_fmadd_ps(
            y,
            _mm256_mul_ps(r, r),
            _mm256_add_ps(r, _mm256_set1_ps(1.0)),
        );
        let e = _mm256_slli_epi32::<23>(_mm256_add_epi32(
            _mm256_cvtps_epi32(fx),
            _mm256_set1_epi32(127),
        ));
        let y = _mm256_mul_ps(y, _mm256_castsi256_ps(e));
        _mm256_andnot_ps(too_small, y)
    }

    /// Vector [`erf_f32`].
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    fn erf(x: __m256) -> __m256 {
        let x = _mm256_max_ps(_mm256_min_ps(x, _mm256_set1_ps(4.0)), _mm256_set1_ps(-4.0));
        let x2 = _mm256_mul_ps(x, x);
        let mut p = _mm256_set1_ps(ERF_ALPHA[0]);
        for &a in &ERF_ALPHA[1..] {
            p = _mm256_fmadd_ps(p, x2, _mm256_set1_ps(a));
        }
        let mut q = _mm256_set1_ps(ERF_BETA[0]);
        for &b in &ERF_BETA[1..] {
            q = _mm256_fmadd_ps(q, x2, _mm256_set1_ps(b));
        }
        _mm256_div_ps(_mm256_mul_ps(x, p), q)
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn gelu(x: &[f32], y: &mut [f32]) {
        let n = x.len() / W * W;
        let half = _mm256_set1_ps(0.5);
        let one = _mm256_set1_ps(1.0);
        let c = _mm256_set1_ps(FRAC_1_SQRT_2);
        let mut i = 0;
        while i < n {
            // SAFETY: i + 8 <= n <= len.
            let v = unsafe { load(x, i) };
            let e = erf(_mm256_mul_ps(v, c));
            let o = _mm256_mul_ps(_mm256_mul_ps(half, v), _mm256_add_ps(one, e));
            unsafe { store(y, i, o) };
            i += W;
        }
        for j in n..x.len() {
            y[j] = gelu_scalar(x[j]);
        }
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn gelu_bwd(x: &[f32], dy: &[f32], dx: &mut [f32]) {
        let _ftz = FlushToZero::new();
        let n = x.len() / W * W;
        let half = _mm256_set1_ps(0.5);
        let mhalf = _mm256_set1_ps(-0.5);
        let one = _mm256_set1_ps(1.0);
        let c = _mm256_set1_ps(FRAC_1_SQRT_2);
        let k = _mm256_set1_ps(FRAC_1_SQRT_2PI);
        let mut i = 0;
        while i < n {
            // SAFETY: i + 8 <= n <= len of all three slices.
            let (v, g) = unsafe { (load(x, i), load(dy, i)) };
            let cdf = _mm256_mul_ps(half, _mm256_add_ps(one, erf(_mm256_mul_ps(v, c))));
            let pdf = _mm256_mul_ps(k, exp(_mm256_mul_ps(mhalf, _mm256_mul_ps(v, v))));
            let o = _mm256_mul_ps(g, _mm256_fmadd_ps(v, pdf, cdf));
            unsafe { store(dx, i, o) };
            i += W;
        }
        for j in n..x.len() {
            dx[j] = gelu_grad_scalar(x[j], dy[j]);
        }
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn softmax_inplace(y: &mut [f32]) {
        let _ftz = FlushToZero::new();
        let n = y.len() / W * W;
        let mut vmax = _mm256_set1_ps(f32::NEG_INFINITY);
        let mut i = 0;
        while i < n {
            // SAFETY: i + 8 <= n <= len.
            vmax = _mm256_max_ps(vmax, unsafe { load(y, i) });
            i += W;
        }
        let mut max = hmax(vmax);
        for &v in &y[n..] {
            max = max.max(v);
        }
        let m = _mm256_set1_ps(max);
        let mut vsum = _mm256_setzero_ps();
        i = 0;
        while i < n {
            // SAFETY: i + 8 <= n <= len.
            let e = exp(_mm256_sub_ps(unsafe { load(y, i) }, m));
            vsum = _mm256_add_ps(vsum, e);
            unsafe { store(y, i, e) };
            i += W;
        }
        let mut sum = hsum(vsum);
        for o in &mut y[n..] {
            *o = exp_f32(*o - max);
            sum += *o;
        }
        let inv = 1.0 / sum;
        let vinv = _mm256_set1_ps(inv);
        i = 0;
        while i < n {
            // SAFETY: i + 8 <= n <= len.
            unsafe { store(y, i, _mm256_mul_ps(load(y, i), vinv)) };
            i += W;
        }
        for o in &mut y[n..] {
            *o *= inv;
        }
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn dot(a: &[f32], b: &[f32]) -> f32 {
        let n = a.len() / W * W;
        let mut acc = _mm256_setzero_ps();
        let mut i = 0;
        while i < n {
            // SAFETY: i + 8 <= n <= len of both slices.
            acc = unsafe { _mm256_fmadd_ps(load(a, i), load(b, i), acc) };
            i += W;
        }
        let mut s = hsum(acc);
        for j in n..a.len() {
            s += a[j] * b[j];
        }
        s
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn scaled_diff(y: &[f32], dy: &[f32], c: f32, out: &mut [f32]) {
        let n = y.len() / W * W;
        let vc = _mm256_set1_ps(c);
        let mut i = 0;
        while i < n {
            // SAFETY: i + 8 <= n <= len of all three slices.
            unsafe {
                let o = _mm256_mul_ps(load(y, i), _mm256_sub_ps(load(dy, i), vc));
                store(out, i, o);
            }
            i += W;
        }
        for j in n..y.len() {
            out[j] = y[j] * (dy[j] - c);
        }
    }

    /// `(Σ x, Σ (x − c)²)`.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn sum_and_centered_sq(x: &[f32], c: f32) -> (f32, f32) {
        let n = x.len() / W * W;
        let vc = _mm256_set1_ps(c);
        let (mut s, mut q) = (_mm256_setzero_ps(), _mm256_setzero_ps());
        let mut i = 0;
        while i < n {
            // SAFETY: i + 8 <= n <= len.
            let v = unsafe { load(x, i) };
            s = _mm256_add_ps(s, v);
            let d = _mm256_sub_ps(v, vc);
            q = _mm256_fmadd_ps(d, d, q);
            i += W;
        }
        let (mut s, mut q) = (hsum(s), hsum(q));
        for &v in &x[n..] {
            s += v;
            q += (v - c) * (v - c);
        }
        (s, q)
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn norm_affine(
        x: &[f32],
        g: &[f32],
        b: &[f32],
        mean: f32,
        rstd: f32,
        y: &mut [f32],
    ) {
        let n = x.len() / W * W;
        let (vm, vr) = (_mm256_set1_ps(mean), _mm256_set1_ps(rstd));
        let mut i = 0;
        while i < n {
            // SAFETY: i + 8 <= n <= len of all four slices.
            unsafe {
                let xh = _mm256_mul_ps(_mm256_sub_ps(load(x, i), vm), vr);
                store(y, i, _mm256_fmadd_ps(xh, load(g, i), load(b, i)));
            }
            i += W;
        }
        for j in n..x.len() {
            y[j] = (x[j] - mean) * rstd * g[j] + b[j];
        }
    }

    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn layer_norm_bwd_row(
        x: &[f32],
        g: &[f32],
        dy: &[f32],
        mean: f32,
        rstd: f32,
        dx: &mut [f32],
        dg: &mut [f32],
        db: &mut [f32],
        xhat: &mut [f32],
    ) {
        let d = x.len();
        let n = d / W * W;
        let (vm, vr) = (_mm256_set1_ps(mean), _mm256_set1_ps(rstd));
        let (mut s1, mut s2) = (_mm256_setzero_ps(), _mm256_setzero_ps());
        let mut i = 0;
        while i < n {
            // SAFETY: i + 8 <= n <= len of every slice (checked by the caller).
            unsafe {
                let xh = _mm256_mul_ps(_mm256_sub_ps(load(x, i), vm), vr);
                store(xhat, i, xh);
                let gy = load(dy, i);
                store(dg, i, _mm256_fmadd_ps(gy, xh, load(dg, i)));
                store(db, i, _mm256_add_ps(load(db, i), gy));
                let dxh = _mm256_mul_ps(gy, load(g, i));
                s1 = _mm256_add_ps(s1, dxh);
                s2 = _mm256_fmadd_ps(dxh, xh, s2);
            }
            i += W;
        }
        let (mut sum_dxhat, mut sum_dxhat_xhat) = (hsum(s1), hsum(s2));
        for j in n..d {
            xhat[j] = (x[j] - mean) * rstd;
            dg[j] += dy[j] * xhat[j];
            db[j] += dy[j];
            let dxh = dy[j] * g[j];
            sum_dxhat += dxh;
            sum_dxhat_xhat += dxh * xhat[j];
        }
        let (m1, m2) = (sum_dxhat / d as f32, sum_dxhat_xhat / d as f32);
        let a = _mm256_set1_ps(m1);
        let c = _mm256_set1_ps(m2);
        i = 0;
        while i < n {
            // SAFETY: as above.
            unsafe {
                let dxh = _mm256_mul_ps(load(dy, i), load(g, i));
                let t = _mm256_sub_ps(_mm256_sub_ps(dxh, a), _mm256_mul_ps(load(xhat, i), c));
                store(dx, i, _mm256_mul_ps(vr, t));
            }
            i += W;
        }
        for j in n..d {
            dx[j] = rstd * (dy[j] * g[j] - m1 - xhat[j] * m2);
        }
    }

    /// [`super::transpose_columns`] of eight columns for the rows `0..k` in whole blocks of
    /// eight; returns `k` (the caller does the rest). Caller checks the shapes.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn transpose_8_columns(
        w: &[f32],
        rows: usize,
        cols: usize,
        c0: usize,
        out: &mut [f32],
    ) -> usize {
        let k = rows / W * W;
        let mut r0 = 0;
        while r0 < k {
            // SAFETY: rows r0..r0+8 < rows, columns c0..c0+8 <= cols (checked by the
            // caller), so every load lies inside w; every store writes 8 values of one
            // output row, r0 + 8 <= rows.
            unsafe {
                let ld = |i: usize| _mm256_loadu_ps(w.as_ptr().add((r0 + i) * cols + c0));
                let (a0, a1) = (ld(0), ld(1));
                let (a2, a3) = (ld(2), ld(3));
                let (a4, a5) = (ld(4), ld(5));
                let (a6, a7) = (ld(6), ld(7));
                let t0 = _mm256_unpacklo_ps(a0, a1);
                let t1 = _mm256_unpackhi_ps(a0, a1);
                let t2 = _mm256_unpacklo_ps(a2, a3);
                let t3 = _mm256_unpackhi_ps(a2, a3);
                let t4 = _mm256_unpacklo_ps(a4, a5);
                let t5 = _mm256_unpackhi_ps(a4, a5);
                let t6 = _mm256_unpacklo_ps(a6, a7);
                let t7 = _mm256_unpackhi_ps(a6, a7);
                let u0 = _mm256_shuffle_ps::<0x44>(t0, t2);
                let u1 = _mm256_shuffle_ps::<0xEE>(t0, t2);
                let u2 = _mm256_shuffle_ps::<0x44>(t1, t3);
                let u3 = _mm256_shuffle_ps::<0xEE>(t1, t3);
                let u4 = _mm256_shuffle_ps::<0x44>(t4, t6);
                let u5 = _mm256_shuffle_ps::<0xEE>(t4, t6);
                let u6 = _mm256_shuffle_ps::<0x44>(t5, t7);
                let u7 = _mm256_shuffle_ps::<0xEE>(t5, t7);
                let mut st =
                    |j: usize, v: __m256| _mm256_storeu_ps(out.as_mut_ptr().add(j * rows + r0), v);
                st(0, _mm256_permute2f128_ps::<0x20>(u0, u4));
                st(1, _mm256_permute2f128_ps::<0x20>(u1, u5));
                st(2, _mm256_permute2f128_ps::<0x20>(u2, u6));
                st(3, _mm256_permute2f128_ps::<0x20>(u3, u7));
                st(4, _mm256_permute2f128_ps::<0x31>(u0, u4));
                st(5, _mm256_permute2f128_ps::<0x31>(u1, u5));
                st(6, _mm256_permute2f128_ps::<0x31>(u2, u6));
                st(7, _mm256_permute2f128_ps::<0x31>(u3, u7));
            }
            r0 += W;
        }
        k
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn add_assign(acc: &mut [f32], x: &[f32]) {
        let n = acc.len() / W * W;
        let mut i = 0;
        while i < n {
            // SAFETY: i + 8 <= n <= len of both slices.
            unsafe { store(acc, i, _mm256_add_ps(load(acc, i), load(x, i))) };
            i += W;
        }
        for j in n..acc.len() {
            acc[j] += x[j];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transpose_columns_copies_every_value_in_whole_and_partial_blocks() {
        for (rows, cols) in [(1, 8), (8, 8), (13, 20), (40, 17), (3, 3)] {
            let w: Vec<f32> = (0..rows * cols).map(|i| i as f32).collect();
            for c0 in 0..cols {
                for n in [1usize, 3, 8] {
                    if c0 + n > cols {
                        continue;
                    }
                    let mut out = vec![-1f32; n * rows];
                    transpose_columns(&w, rows, cols, c0, &mut out);
                    for j in 0..n {
                        for r in 0..rows {
                            assert_eq!(out[j * rows + r], w[r * cols + c0 + j], "{rows}x{cols}");
                        }
                    }
                }
            }
        }
    }

    fn grid() -> Vec<f32> {
        (-4000..=4000).map(|i| i as f32 * 0.0025).collect()
    }

    #[test]
    fn exp_and_erf_match_libm() {
        for x in (-8700..=8800).map(|i| i as f32 * 0.01) {
            let (got, want) = (exp_f32(x), (x as f64).exp());
            assert!(
                ((got as f64 - want) / want).abs() < 3e-7,
                "exp({x}) = {got}, libm {want}"
            );
        }
        assert_eq!(exp_f32(-1e9), 0.0);
        for x in grid().into_iter().map(|v| v * 2.0) {
            let (got, want) = (erf_f32(x), candle_core::cpu::erf::erf_f64(x as f64));
            assert!((got as f64 - want).abs() < 1e-6, "erf({x}) = {got}, {want}");
        }
        assert!((erf_f32(30.0) - 1.0).abs() < 2e-7 && (erf_f32(-30.0) + 1.0).abs() < 2e-7);
    }

    /// Vector and scalar paths of every kernel agree (lengths with and without a tail).
    #[test]
    fn kernels_match_scalar_definitions() {
        for len in [1usize, 7, 8, 19, 64, 384] {
            let x: Vec<f32> = (0..len)
                .map(|i| ((i * 7919) % 1000) as f32 * 0.012 - 6.0)
                .collect();
            let dy: Vec<f32> = (0..len)
                .map(|i| ((i * 104_729) % 997) as f32 * 0.002 - 1.0)
                .collect();
            let mut y = vec![0f32; len];
            gelu(&x, &mut y);
            for i in 0..len {
                let want = 0.5
                    * x[i] as f64
                    * (1.0 + candle_core::cpu::erf::erf_f64(x[i] as f64 / 2f64.sqrt()));
                assert!((y[i] as f64 - want).abs() < 2e-6, "gelu({})", x[i]);
            }
            gelu_bwd(&x, &dy, &mut y);
            for i in 0..len {
                assert!((y[i] - gelu_grad_scalar(x[i], dy[i])).abs() < 1e-6);
            }
            softmax_row(&x, &mut y);
            let max = x.iter().copied().fold(f32::MIN, f32::max) as f64;
            let z: f64 = x.iter().map(|&v| (v as f64 - max).exp()).sum();
            for i in 0..len {
                let want = (x[i] as f64 - max).exp() / z;
                assert!((y[i] as f64 - want).abs() < 1e-7, "softmax {len} {i}");
            }
            let want_dot: f64 = x.iter().zip(&dy).map(|(a, b)| *a as f64 * *b as f64).sum();
            assert!((dot(&x, &dy) as f64 - want_dot).abs() < 1e-4);
            let g: Vec<f32> = dy.iter().map(|v| v + 1.0).collect();
            layer_norm_row(&x, &g, &dy, 1e-5, &mut y);
            let (mean, rstd) = row_stats(&x, 1e-5);
            let m = x.iter().map(|&v| v as f64).sum::<f64>() / len as f64;
            assert!((mean as f64 - m).abs() < 1e-5);
            for i in 0..len {
                let want = (x[i] - mean) * rstd * g[i] + dy[i];
                assert!((y[i] - want).abs() < 1e-5);
            }
            let mut acc = dy.clone();
            add_assign(&mut acc, &x);
            for i in 0..len {
                assert!((acc[i] - (dy[i] + x[i])).abs() < 1e-6);
            }
        }
    }
}

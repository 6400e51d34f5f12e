//! Matrix products of the forward pass.
//!
//! Quantized weights (Q4_1, Q8_0) are multiplied the way llama.cpp does it:
//! each row of activations is first rounded to 8-bit blocks (one f16 scale
//! per 32 values), then every 32-value block contributes an exact integer dot
//! product, scaled and accumulated in f32 in a fixed order. Following that
//! arithmetic to the bit matters: this small model is sensitive enough that
//! exact f32 activations move its log-probs by about 0.1 from llama.cpp's.
//!
//! The integer products are computed in tiles (up to 4 weight rows × 4
//! activation rows per pass), so a weight block is unpacked once for several
//! tokens; each output still sees exactly the same operations in the same
//! order, so a sequence's numbers never depend on how it was batched.
//!
//! Other weight types are dequantized to f32 at load and use an f32 GEMM.

use std::cell::OnceCell;

use gemm::Parallelism;
use rayon::prelude::*;

/// Values per quantization block (Q4_1, Q8_0 and the activations' Q8 form).
pub const BLOCK: usize = 32;

/// Weight storage, in the layout the kernels read.
pub enum Weights {
    /// value = d · q + m, q a 4-bit nibble: byte j holds elements j (low
    /// nibble) and j + 16 (high nibble) of its block.
    Q4_1 {
        d: Vec<f32>,
        m: Vec<f32>,
        qs: Vec<u8>,
    },
    /// value = d · q, q a signed byte.
    Q8_0 { d: Vec<f32>, qs: Vec<i8> },
    /// Row-major f32 (any other GGUF type, dequantized at load).
    Dense(Vec<f32>),
}

fn f16_at(bytes: &[u8], at: usize) -> f32 {
    half::f16::from_le_bytes([bytes[at], bytes[at + 1]]).to_f32()
}

impl Weights {
    /// Reads GGUF Q4_1 blocks (f16 d, f16 m, 16 bytes of nibbles).
    pub fn from_q4_1(bytes: &[u8]) -> Self {
        let nb = bytes.len() / 20;
        let (mut d, mut m, mut qs) = (
            Vec::with_capacity(nb),
            Vec::with_capacity(nb),
            Vec::with_capacity(nb * 16),
        );
        for b in bytes.chunks_exact(20) {
            d.push(f16_at(b, 0));
            m.push(f16_at(b, 2));
            qs.extend_from_slice(&b[4..20]);
        }
        Weights::Q4_1 { d, m, qs }
    }

    /// Reads GGUF Q8_0 blocks (f16 d, 32 signed bytes).
    pub fn from_q8_0(bytes: &[u8]) -> Self {
        let nb = bytes.len() / 34;
        let (mut d, mut qs) = (Vec::with_capacity(nb), Vec::with_capacity(nb * 32));
        for b in bytes.chunks_exact(34) {
            d.push(f16_at(b, 0));
            qs.extend(b[2..34].iter().map(|&x| x as i8));
        }
        Weights::Q8_0 { d, qs }
    }
}

/// Activations rounded to 8-bit blocks as llama.cpp's `quantize_row_q8_1`
/// does: d = max|x| / 127 kept as f16, q = round-half-even(x · 127 / max|x|),
/// and s = f16(d · Σq) for Q4_1's offset term.
pub struct QuantizedRows {
    pub d: Vec<f32>,
    pub s: Vec<f32>,
    pub qs: Vec<i8>,
}

pub fn quantize_rows(x: &[f32]) -> QuantizedRows {
    let nb = x.len() / BLOCK;
    let mut out = QuantizedRows {
        d: Vec::with_capacity(nb),
        s: Vec::with_capacity(nb),
        qs: Vec::with_capacity(x.len()),
    };
    for block in x.chunks_exact(BLOCK) {
        let amax = block.iter().fold(0f32, |m, v| m.max(v.abs()));
        let d = amax / 127.0;
        let inv = if amax != 0.0 { 127.0 / amax } else { 0.0 };
        let mut sum = 0i32;
        for v in block {
            let q = (v * inv).round_ties_even() as i32;
            sum += q;
            out.qs.push(q as i8);
        }
        out.d.push(half::f16::from_f32(d).to_f32());
        out.s.push(half::f16::from_f32(d * sum as f32).to_f32());
    }
    out
}

/// The input of one or more products: f32 rows, and their 8-bit form made
/// on first use and shared by every matrix that reads the same input.
pub struct Activations<'a> {
    pub x: &'a [f32],
    pub t: usize,
    quantized: OnceCell<QuantizedRows>,
}

impl<'a> Activations<'a> {
    pub fn new(x: &'a [f32], t: usize) -> Self {
        Activations {
            x,
            t,
            quantized: OnceCell::new(),
        }
    }

    fn quantized(&self) -> &QuantizedRows {
        self.quantized.get_or_init(|| quantize_rows(self.x))
    }
}

/// A weight matrix of `n` output rows by `k` inputs: y = x · Wᵀ.
pub struct Linear {
    pub n: usize,
    pub k: usize,
    weights: Weights,
}

impl Linear {
    pub fn new(n: usize, k: usize, weights: Weights) -> Self {
        Linear { n, k, weights }
    }

    pub fn is_quantized(&self) -> bool {
        !matches!(self.weights, Weights::Dense(_))
    }

    /// Row `i` as f32 (an embedding lookup when W is the embedding).
    pub fn row(&self, i: usize, out: &mut Vec<f32>) {
        let (k, nb) = (self.k, self.k / BLOCK);
        match &self.weights {
            Weights::Dense(w) => out.extend_from_slice(&w[i * k..(i + 1) * k]),
            Weights::Q8_0 { d, qs } => {
                for b in 0..nb {
                    let scale = d[i * nb + b];
                    let q = &qs[(i * nb + b) * BLOCK..(i * nb + b + 1) * BLOCK];
                    out.extend(q.iter().map(|&v| v as f32 * scale));
                }
            }
            Weights::Q4_1 { d, m, qs } => {
                for b in 0..nb {
                    let (scale, min) = (d[i * nb + b], m[i * nb + b]);
                    let q = &qs[(i * nb + b) * 16..(i * nb + b + 1) * 16];
                    out.extend(q.iter().map(|&v| (v & 0x0f) as f32 * scale + min));
                    out.extend(q.iter().map(|&v| (v >> 4) as f32 * scale + min));
                }
            }
        }
    }

    pub fn bytes(&self) -> usize {
        match &self.weights {
            Weights::Q4_1 { d, m, qs } => (d.len() + m.len()) * 4 + qs.len(),
            Weights::Q8_0 { d, qs } => d.len() * 4 + qs.len(),
            Weights::Dense(w) => w.len() * 4,
        }
    }

    /// y (t × n) = x (t × k) · Wᵀ, or y += … when `accumulate`.
    pub fn forward(&self, x: &Activations<'_>, y: &mut [f32], accumulate: bool) {
        let t = x.t;
        debug_assert_eq!(x.x.len(), t * self.k);
        debug_assert_eq!(y.len(), t * self.n);
        if let Weights::Dense(w) = &self.weights {
            return dense_forward(w, self.n, self.k, x.x, t, y, accumulate);
        }
        let q = x.quantized();
        let n = self.n;
        // Threads split the weight rows; each computes them for every input
        // row into an n-major buffer, which is then transposed into y.
        let threads = rayon::current_num_threads();
        let rows_per_task = (n.div_ceil(threads * 8)).next_multiple_of(4).clamp(4, 128);
        let mut yt = vec![0f32; n * t];
        yt.par_chunks_mut(rows_per_task * t)
            .enumerate()
            .for_each(|(task, out)| {
                let first = task * rows_per_task;
                let rows = out.len() / t;
                self.rows_product(q, t, first, rows, out);
            });
        for (row, vals) in yt.chunks_exact(t).enumerate() {
            for (i, v) in vals.iter().enumerate() {
                let slot = &mut y[i * n + row];
                *slot = if accumulate { *slot + v } else { *v };
            }
        }
    }

    /// Weight rows `first..first + rows` against all `t` input rows; `out`
    /// is rows × t.
    fn rows_product(
        &self,
        q: &QuantizedRows,
        t: usize,
        first: usize,
        rows: usize,
        out: &mut [f32],
    ) {
        let nb = self.k / BLOCK;
        let mut r = 0;
        while r < rows {
            let rr = (rows - r).min(4);
            let mut c = 0;
            while c < t {
                let cc = (t - c).min(4);
                let mut tile = [[0f32; 4]; 4];
                tile_product(&self.weights, first + r, rr, q, c, cc, nb, &mut tile);
                for i in 0..rr {
                    out[(r + i) * t + c..(r + i) * t + c + cc].copy_from_slice(&tile[i][..cc]);
                }
                c += cc;
            }
            r += rr;
        }
    }
}

fn dense_forward(
    w: &[f32],
    n: usize,
    k: usize,
    x: &[f32],
    t: usize,
    y: &mut [f32],
    accumulate: bool,
) {
    let threads = rayon::current_num_threads();
    let parallelism = if threads > 1 && t * n * k > 1 << 16 {
        Parallelism::Rayon(threads)
    } else {
        Parallelism::None
    };
    // SAFETY: x is t×k row-major, Wᵀ is read as k×n from the n×k row-major
    // W, and y is t×n row-major; the callers' lengths match these shapes.
    unsafe {
        gemm::gemm(
            t,
            n,
            k,
            y.as_mut_ptr(),
            1,
            n as isize,
            accumulate,
            x.as_ptr(),
            1,
            k as isize,
            w.as_ptr(),
            k as isize,
            1,
            if accumulate { 1.0 } else { 0.0 },
            1.0,
            false,
            false,
            false,
            parallelism,
        );
    }
}

/// out[i][j] = W row (row0 + i) · activation row (col0 + j).
#[allow(clippy::too_many_arguments)]
fn tile_product(
    w: &Weights,
    row0: usize,
    rows: usize,
    q: &QuantizedRows,
    col0: usize,
    cols: usize,
    nb: usize,
    out: &mut [[f32; 4]; 4],
) {
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: AVX2 and FMA are present (checked at run time); all block
        // indices stay below rows/cols × nb of the slices passed.
        unsafe {
            match w {
                Weights::Q4_1 { d, m, qs } => x86::q4_1_tile(
                    &d[row0 * nb..(row0 + rows) * nb],
                    &m[row0 * nb..(row0 + rows) * nb],
                    &qs[row0 * nb * 16..(row0 + rows) * nb * 16],
                    &q.d[col0 * nb..(col0 + cols) * nb],
                    &q.s[col0 * nb..(col0 + cols) * nb],
                    &q.qs[col0 * nb * BLOCK..(col0 + cols) * nb * BLOCK],
                    rows,
                    cols,
                    nb,
                    out,
                ),
                Weights::Q8_0 { d, qs } => x86::q8_0_tile(
                    &d[row0 * nb..(row0 + rows) * nb],
                    &qs[row0 * nb * BLOCK..(row0 + rows) * nb * BLOCK],
                    &q.d[col0 * nb..(col0 + cols) * nb],
                    &q.qs[col0 * nb * BLOCK..(col0 + cols) * nb * BLOCK],
                    rows,
                    cols,
                    nb,
                    out,
                ),
                Weights::Dense(_) => {}
            }
            return;
        }
    }
    for i in 0..rows {
        for j in 0..cols {
            out[i][j] = scalar_dot(w, row0 + i, q, col0 + j, nb);
        }
    }
}

/// The same arithmetic as the SIMD kernels without SIMD: eight lanes of
/// four-element integer sums per block, accumulated in f32, then reduced.
fn scalar_dot(w: &Weights, row: usize, q: &QuantizedRows, col: usize, nb: usize) -> f32 {
    let mut acc = [0f32; 8];
    let mut offset = 0f32;
    for b in 0..nb {
        let (wb, xb) = (row * nb + b, col * nb + b);
        let x = &q.qs[xb * BLOCK..(xb + 1) * BLOCK];
        let (scale, lanes): (f32, [i32; 8]) = match w {
            Weights::Q4_1 { d, m, qs } => {
                offset = m[wb].mul_add(q.s[xb], offset);
                let nib = &qs[wb * 16..(wb + 1) * 16];
                let wv: Vec<i32> = nib
                    .iter()
                    .map(|v| (v & 0x0f) as i32)
                    .chain(nib.iter().map(|v| (v >> 4) as i32))
                    .collect();
                (d[wb] * q.d[xb], lane_sums(&wv, x))
            }
            Weights::Q8_0 { d, qs } => {
                let wv: Vec<i32> = qs[wb * BLOCK..(wb + 1) * BLOCK]
                    .iter()
                    .map(|&v| v as i32)
                    .collect();
                (d[wb] * q.d[xb], lane_sums(&wv, x))
            }
            Weights::Dense(_) => return 0.0,
        };
        for (a, l) in acc.iter_mut().zip(lanes) {
            *a = scale.mul_add(l as f32, *a);
        }
    }
    reduce8(&acc) + offset
}

fn lane_sums(w: &[i32], x: &[i8]) -> [i32; 8] {
    let mut lanes = [0i32; 8];
    for (e, (wi, xi)) in w.iter().zip(x).enumerate() {
        lanes[e / 4] += wi * *xi as i32;
    }
    lanes
}

/// Horizontal sum in the order of `hsum_float_8`: halves, then pairs.
fn reduce8(a: &[f32; 8]) -> f32 {
    let q = [a[0] + a[4], a[1] + a[5], a[2] + a[6], a[3] + a[7]];
    let p0 = q[0] + q[2];
    let p1 = q[1] + q[3];
    p0 + p1
}

#[cfg(target_arch = "x86_64")]
fn has_avx2() -> bool {
    std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
}

/// Dot product with independent partial sums, so it vectorizes.
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 16];
    let ca = a.chunks_exact(16);
    let cb = b.chunks_exact(16);
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ca.zip(cb) {
        for i in 0..16 {
            acc[i] += x[i] * y[i];
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// y += a · x
pub fn axpy(a: f32, x: &[f32], y: &mut [f32]) {
    for (yi, xi) in y.iter_mut().zip(x) {
        *yi += a * xi;
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::BLOCK;

    #[inline]
    #[target_feature(enable = "avx2,fma")]
    fn hsum(v: __m256) -> f32 {
        let mut r = _mm_add_ps(_mm256_extractf128_ps(v, 1), _mm256_castps256_ps128(v));
        r = _mm_add_ps(r, _mm_movehl_ps(r, r));
        r = _mm_add_ss(r, _mm_movehdup_ps(r));
        _mm_cvtss_f32(r)
    }

    /// Dispatches a runtime tile shape to a kernel compiled for it, so the
    /// accumulators of the tile live in registers.
    macro_rules! dispatch {
        ($kernel:ident, $rows:expr, $cols:expr, ($($arg:expr),*)) => {
            match ($rows, $cols) {
                (4, 4) => $kernel::<4, 4>($($arg),*),
                (4, 3) => $kernel::<4, 3>($($arg),*),
                (4, 2) => $kernel::<4, 2>($($arg),*),
                (4, 1) => $kernel::<4, 1>($($arg),*),
                (3, 4) => $kernel::<3, 4>($($arg),*),
                (3, 3) => $kernel::<3, 3>($($arg),*),
                (3, 2) => $kernel::<3, 2>($($arg),*),
                (3, 1) => $kernel::<3, 1>($($arg),*),
                (2, 4) => $kernel::<2, 4>($($arg),*),
                (2, 3) => $kernel::<2, 3>($($arg),*),
                (2, 2) => $kernel::<2, 2>($($arg),*),
                (2, 1) => $kernel::<2, 1>($($arg),*),
                (1, 4) => $kernel::<1, 4>($($arg),*),
                (1, 3) => $kernel::<1, 3>($($arg),*),
                (1, 2) => $kernel::<1, 2>($($arg),*),
                _ => $kernel::<1, 1>($($arg),*),
            }
        };
    }

    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn q4_1_tile(
        wd: &[f32],
        wm: &[f32],
        wq: &[u8],
        xd: &[f32],
        xs: &[f32],
        xq: &[i8],
        rows: usize,
        cols: usize,
        nb: usize,
        out: &mut [[f32; 4]; 4],
    ) {
        dispatch!(q4_1_fixed, rows, cols, (wd, wm, wq, xd, xs, xq, nb, out))
    }

    /// Q4_1 weight rows × 8-bit activation rows, llama.cpp's order: per
    /// block, lane sums of 4 products, times d_w·d_x, fused into the lane
    /// accumulators; the offset m_w·s_x summed separately.
    #[allow(clippy::too_many_arguments)]
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn q4_1_fixed<const R: usize, const C: usize>(
        wd: &[f32],
        wm: &[f32],
        wq: &[u8],
        xd: &[f32],
        xs: &[f32],
        xq: &[i8],
        nb: usize,
        out: &mut [[f32; 4]; 4],
    ) {
        let mut acc = [[_mm256_setzero_ps(); C]; R];
        let mut offset = [[0f32; C]; R];
        let mask = _mm_set1_epi8(0x0f);
        let ones = _mm256_set1_epi16(1);
        for b in 0..nb {
            let mut w = [_mm256_setzero_si256(); R];
            for r in 0..R {
                let raw = _mm_loadu_si128(wq.as_ptr().add((r * nb + b) * 16) as *const __m128i);
                let lo = _mm_and_si128(raw, mask);
                let hi = _mm_and_si128(_mm_srli_epi16(raw, 4), mask);
                w[r] = _mm256_set_m128i(hi, lo);
            }
            for c in 0..C {
                let x = _mm256_loadu_si256(xq.as_ptr().add((c * nb + b) * BLOCK) as *const __m256i);
                let dx = *xd.get_unchecked(c * nb + b);
                let sx = *xs.get_unchecked(c * nb + b);
                for r in 0..R {
                    offset[r][c] = (*wm.get_unchecked(r * nb + b)).mul_add(sx, offset[r][c]);
                    let scale = _mm256_set1_ps(*wd.get_unchecked(r * nb + b) * dx);
                    let lanes = _mm256_madd_epi16(ones, _mm256_maddubs_epi16(w[r], x));
                    acc[r][c] = _mm256_fmadd_ps(scale, _mm256_cvtepi32_ps(lanes), acc[r][c]);
                }
            }
        }
        for r in 0..R {
            for c in 0..C {
                out[r][c] = hsum(acc[r][c]) + offset[r][c];
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn q8_0_tile(
        wd: &[f32],
        wq: &[i8],
        xd: &[f32],
        xq: &[i8],
        rows: usize,
        cols: usize,
        nb: usize,
        out: &mut [[f32; 4]; 4],
    ) {
        dispatch!(q8_0_fixed, rows, cols, (wd, wq, xd, xq, nb, out))
    }

    /// Q8_0 weight rows × 8-bit activation rows (signs moved onto the
    /// activations so the unsigned×signed byte product applies).
    #[allow(clippy::too_many_arguments)]
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn q8_0_fixed<const R: usize, const C: usize>(
        wd: &[f32],
        wq: &[i8],
        xd: &[f32],
        xq: &[i8],
        nb: usize,
        out: &mut [[f32; 4]; 4],
    ) {
        let mut acc = [[_mm256_setzero_ps(); C]; R];
        let ones = _mm256_set1_epi16(1);
        for b in 0..nb {
            let mut w = [_mm256_setzero_si256(); R];
            let mut wabs = [_mm256_setzero_si256(); R];
            for r in 0..R {
                w[r] = _mm256_loadu_si256(wq.as_ptr().add((r * nb + b) * BLOCK) as *const __m256i);
                wabs[r] = _mm256_sign_epi8(w[r], w[r]);
            }
            for c in 0..C {
                let x = _mm256_loadu_si256(xq.as_ptr().add((c * nb + b) * BLOCK) as *const __m256i);
                let dx = *xd.get_unchecked(c * nb + b);
                for r in 0..R {
                    let scale = _mm256_set1_ps(*wd.get_unchecked(r * nb + b) * dx);
                    let signed = _mm256_sign_epi8(x, w[r]);
                    let lanes = _mm256_madd_epi16(ones, _mm256_maddubs_epi16(wabs[r], signed));
                    acc[r][c] = _mm256_fmadd_ps(scale, _mm256_cvtepi32_ps(lanes), acc[r][c]);
                }
            }
        }
        for r in 0..R {
            for c in 0..C {
                out[r][c] = hsum(acc[r][c]);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q4_1_bytes(rows: usize, k: usize) -> Vec<u8> {
        let mut out = Vec::new();
        let mut seed = 7u32;
        for _ in 0..rows * k / BLOCK {
            seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12345);
            out.extend_from_slice(&[0x00, 0x3c]); // d = 1.0
            out.extend_from_slice(&[0x00, 0xb8]); // m = -0.5
            for i in 0..16 {
                out.push(((seed >> (i % 24)) & 0xff) as u8);
            }
        }
        out
    }

    fn q8_0_bytes(rows: usize, k: usize) -> Vec<u8> {
        let mut out = Vec::new();
        for b in 0..rows * k / BLOCK {
            out.extend_from_slice(&[0x66, 0x2e]); // d ≈ 0.1
            for i in 0..32 {
                out.push(((b * 31 + i * 17) % 255) as u8);
            }
        }
        out
    }

    fn check(lin: &Linear, n: usize, k: usize) {
        let mut rows = Vec::new();
        for r in 0..n {
            let mut v = Vec::new();
            lin.row(r, &mut v);
            rows.push(v);
        }
        for t in [1, 3, 5, 9] {
            let x: Vec<f32> = (0..t * k)
                .map(|i| ((i * 37 % 11) as f32 - 5.0) / 7.0)
                .collect();
            let acts = Activations::new(&x, t);
            let mut y = vec![0f32; t * n];
            lin.forward(&acts, &mut y, false);
            let q = quantize_rows(&x);
            for r in 0..t {
                for c in 0..n {
                    // Exact f32 maths on the rounded activations.
                    let want: f32 = (0..k)
                        .map(|i| q.qs[r * k + i] as f32 * q.d[(r * k + i) / BLOCK] * rows[c][i])
                        .sum();
                    let got = y[r * n + c];
                    assert!(
                        (got - want).abs() < 2e-2 * want.abs().max(1.0),
                        "t={t} r={r} c={c}: {got} vs {want}"
                    );
                    // And exactly the portable kernel's result.
                    assert_eq!(got, scalar_dot(&lin.weights, c, &q, r, k / BLOCK));
                }
            }
            let before = y.clone();
            lin.forward(&acts, &mut y, true);
            assert!(y
                .iter()
                .zip(&before)
                .all(|(a, b)| (a - 2.0 * b).abs() < 1e-3 * b.abs().max(1.0)));
        }
    }

    #[test]
    fn q4_1_products_match_exact_maths_and_the_portable_kernel() {
        let (n, k) = (10, 64);
        check(
            &Linear::new(n, k, Weights::from_q4_1(&q4_1_bytes(n, k))),
            n,
            k,
        );
    }

    #[test]
    fn q8_0_products_match_exact_maths_and_the_portable_kernel() {
        let (n, k) = (9, 96);
        check(
            &Linear::new(n, k, Weights::from_q8_0(&q8_0_bytes(n, k))),
            n,
            k,
        );
    }

    #[test]
    fn activation_rounding_follows_llama_cpp() {
        let x: Vec<f32> = (0..32).map(|i| (i as f32 - 20.0) / 3.0).collect();
        let q = quantize_rows(&x);
        assert_eq!(q.qs[0], -127);
        assert_eq!(q.qs[20], 0);
        let sum: i32 = q.qs.iter().map(|&v| v as i32).sum();
        let d = 20.0f32 / 3.0 / 127.0;
        assert_eq!(q.s[0], half::f16::from_f32(d * sum as f32).to_f32());
    }

    #[test]
    fn dot_handles_tails() {
        let a: Vec<f32> = (0..37).map(|i| i as f32).collect();
        let want: f32 = a.iter().map(|x| x * x).sum();
        assert_eq!(dot(&a, &a), want);
    }
}

//! Attention and activation arithmetic in llama.cpp's order of operations.
//!
//! These follow ggml's CPU code (AVX-512 build) operation by operation —
//! its polynomial `exp`, its lane layout for dot products and its
//! horizontal sums — so that the embedded engine reproduces llama.cpp's
//! log-probabilities instead of merely approximating them. Each function
//! is plain f32 code over 16-wide lane arrays, which the compiler turns into
//! vector instructions.

const LANES: usize = 16;

/// Horizontal sum of 16 lanes in the order of `_mm512_reduce_add_ps`:
/// upper half onto lower, then again, then pairs.
#[inline]
pub fn reduce16(x: &[f32; LANES]) -> f32 {
    let mut t8 = [0f32; 8];
    for i in 0..8 {
        t8[i] = x[8 + i] + x[i];
    }
    let mut t4 = [0f32; 4];
    for i in 0..4 {
        t4[i] = t8[4 + i] + t8[i];
    }
    let a = t4[0] + t4[2];
    let b = t4[1] + t4[3];
    a + b
}

/// ggml's vectorized single-precision exp (a degree-5 polynomial after
/// range reduction by powers of two), element by element.
#[inline]
pub fn expf(x: f32) -> f32 {
    let r = f32::from_bits(0x4b40_0000); // 1.5 · 2^23: rounds to an integer
    let z = x.mul_add(f32::from_bits(0x3fb8_aa3b), r);
    let n = z - r;
    let b = (-n).mul_add(
        f32::from_bits(0x35bf_be8e),
        (-n).mul_add(f32::from_bits(0x3f31_7200), x),
    );
    let u = b * b;
    let j = f32::from_bits(0x3c07_2010)
        .mul_add(b, f32::from_bits(0x3d2b_9f17))
        .mul_add(
            u,
            f32::from_bits(0x3e2a_af33).mul_add(b, f32::from_bits(0x3eff_fedb)),
        )
        .mul_add(u, f32::from_bits(0x3f7f_fff6).mul_add(b, 1.0));
    if n.abs() > 192.0 {
        return if n <= 0.0 { 0.0 } else { f32::INFINITY };
    }
    // j · 2^n with a single rounding, as `scalef` does.
    ((j as f64) * (n as f64).exp2()) as f32
}

/// x / (1 + exp(-x)) with ggml's exp.
#[inline]
pub fn silu(x: f32) -> f32 {
    x / (1.0 + expf(0.0 - x))
}

/// Dot product as `ggml_vec_dot_f32` computes it: four 16-lane fused
/// accumulators over 64-element steps, folded pairwise, then reduced; the
/// tail beyond the last whole step is added in f64.
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let steps = n / 64;
    let mut sum = [[0f32; LANES]; 4];
    for s in 0..steps {
        for (j, acc) in sum.iter_mut().enumerate() {
            let base = s * 64 + j * LANES;
            for l in 0..LANES {
                acc[l] = a[base + l].mul_add(b[base + l], acc[l]);
            }
        }
    }
    let mut folded = [0f32; LANES];
    for l in 0..LANES {
        let x0 = sum[0][l] + sum[2][l];
        let x1 = sum[1][l] + sum[3][l];
        folded[l] = x0 + x1;
    }
    let mut total = reduce16(&folded) as f64;
    for i in steps * 64..n {
        total += (a[i] * b[i]) as f64;
    }
    total as f32
}

/// In place: scores → softmax(scores · scale), summing the exponentials per
/// 16-value chunk in f32 and across chunks in f64 as ggml does.
pub fn softmax_scaled(scores: &mut [f32], scale: f32) {
    let mut max = f32::NEG_INFINITY;
    for s in scores.iter_mut() {
        *s *= scale;
        max = max.max(*s);
    }
    let mut sum = 0f64;
    let mut chunk = [0f32; LANES];
    for block in scores.chunks_mut(LANES) {
        chunk.fill(0.0);
        for (c, s) in chunk.iter_mut().zip(block.iter_mut()) {
            *s = expf(*s - max);
            *c = *s;
        }
        sum += reduce16(&chunk) as f64;
    }
    let inv = (1.0 / sum) as f32;
    for s in scores.iter_mut() {
        *s *= inv;
    }
}

/// out[d] = Σ_j w[j] · v(j)[d], each output summed like [`dot`] over the
/// positions j (the order of llama.cpp's attention · V product).
pub fn weighted_sum<'v>(w: &[f32], mut v_row: impl FnMut(usize) -> &'v [f32], out: &mut [f32]) {
    let hd = out.len();
    // acc[d][j / 16 % 4][j % 16]
    let mut acc = vec![[[0f32; LANES]; 4]; hd];
    for (j, &wj) in w.iter().enumerate() {
        let (group, lane) = ((j / LANES) % 4, j % LANES);
        let vj = v_row(j);
        for d in 0..hd {
            acc[d][group][lane] = vj[d].mul_add(wj, acc[d][group][lane]);
        }
    }
    for (o, a) in out.iter_mut().zip(&acc) {
        let mut folded = [0f32; LANES];
        for l in 0..LANES {
            folded[l] = (a[0][l] + a[2][l]) + (a[1][l] + a[3][l]);
        }
        *o = reduce16(&folded);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_is_accurate() {
        for i in -2000..200 {
            let x = i as f32 / 20.0;
            let (got, want) = (expf(x), (x as f64).exp());
            assert!(
                ((got as f64) - want).abs() <= want * 4e-7 + 1e-38,
                "{x}: {got} vs {want}"
            );
        }
        assert_eq!(expf(-200.0), 0.0);
        assert_eq!(expf(f32::NEG_INFINITY), 0.0);
    }

    #[test]
    fn dot_and_softmax_are_right() {
        let a: Vec<f32> = (0..70).map(|i| i as f32 * 0.25).collect();
        let want: f32 = a.iter().map(|x| x * x).sum();
        assert!((dot(&a, &a) - want).abs() < 1e-2);
        let mut s = vec![1.0, 2.0, 3.0, f32::NEG_INFINITY];
        softmax_scaled(&mut s, 1.0);
        assert!((s.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        assert_eq!(s[3], 0.0);
    }

    #[test]
    fn weighted_sum_matches_plain_sum() {
        let v: Vec<Vec<f32>> = (0..40).map(|j| vec![j as f32, 1.0]).collect();
        let w = vec![0.025f32; 40];
        let mut out = [0f32; 2];
        weighted_sum(&w, |j| &v[j], &mut out);
        assert!((out[0] - 19.5).abs() < 1e-4 && (out[1] - 1.0).abs() < 1e-5);
    }
}

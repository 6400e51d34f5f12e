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
    let (j, n) = exp_parts(x);
    if n.abs() > 192.0 {
        return if n <= 0.0 { 0.0 } else { f32::INFINITY };
    }
    // j · 2^n with a single rounding, as `scalef` does. 2^n is exact in f32
    // for normal exponents; beyond them the scaling is split in two, and as
    // j lies in [0.7, 1.5] the first product is a normal f32, exact, so only
    // the second one rounds. (Going through f64 gives the same bits but
    // costs a libm call, paid for most of a vocabulary when sampling.)
    let e = n as i32;
    if (-126..=127).contains(&e) {
        j * pow2(e)
    } else if e < 0 {
        (j * pow2(e + 100)) * pow2(-100)
    } else {
        (j * pow2(e - 100)) * pow2(100)
    }
}

/// exp(x) = j · 2^n: the whole power n and the polynomial j ≈ 2^(x/ln 2 − n).
#[inline]
fn exp_parts(x: f32) -> (f32, f32) {
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
    (j, n)
}

/// 2^e for a normal exponent (−126 ≤ e ≤ 127).
#[inline]
fn pow2(e: i32) -> f32 {
    f32::from_bits(((e + 127) as u32) << 23)
}

/// x / (1 + exp(-x)) with ggml's exp.
#[inline]
pub fn silu(x: f32) -> f32 {
    x / (1.0 + expf(0.0 - x))
}

/// Dot product as `ggml_vec_dot_f32` computes it: four 16-lane fused
/// accumulators over 64-element steps, folded pairwise, then reduced; the
/// tail beyond the last whole step is added in f64.
#[inline]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    if a.len() == 64 && b.len() == 64 {
        // One step: each accumulator holds a single rounded product.
        let mut folded = [0f32; LANES];
        for l in 0..LANES {
            folded[l] = (a[l] * b[l] + a[32 + l] * b[32 + l])
                + (a[16 + l] * b[16 + l] + a[48 + l] * b[48 + l]);
        }
        return reduce16(&folded);
    }
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
/// positions j (the order of llama.cpp's attention · V product). Position j
/// feeds accumulator slot (j / 16 mod 4, j mod 16); a slot is a whole
/// vector of `out.len()` values, so the update is one contiguous FMA.
pub fn weighted_sum<'v>(w: &[f32], v_row: impl FnMut(usize) -> &'v [f32], out: &mut [f32]) {
    weighted_sums(w, 1, v_row, out)
}

/// [`weighted_sum`] for `heads` weight vectors over the same rows (the query
/// heads that share one KV head): `w` holds them one after the other, as
/// `out` does their results. Each row is read once for all of them, and
/// each head's sum is exactly the one [`weighted_sum`] computes.
pub fn weighted_sums<'v>(
    w: &[f32],
    heads: usize,
    mut v_row: impl FnMut(usize) -> &'v [f32],
    out: &mut [f32],
) {
    let heads = heads.max(1);
    let len = w.len() / heads;
    let hd = out.len() / heads;
    let per_head = (4 * LANES + LANES + 8 + 4 + 1) * hd;
    thread_local! {
        static SLOTS: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    SLOTS.with(|slots| {
        let mut slots = slots.borrow_mut();
        slots.resize(heads * per_head, 0.0);
        // A slot's first product is stored (an FMA into zero rounds the same),
        // so only slots in use are ever touched.
        for j in 0..len {
            let slot = ((j / LANES) % 4) * LANES + j % LANES;
            let v = &v_row(j)[..hd];
            for (g, head_slots) in slots.chunks_exact_mut(per_head).enumerate() {
                let wj = w[g * len + j];
                let acc = &mut head_slots[slot * hd..(slot + 1) * hd];
                if j < 4 * LANES {
                    for (a, v) in acc.iter_mut().zip(v) {
                        *a = v * wj;
                    }
                } else {
                    for (a, v) in acc.iter_mut().zip(v) {
                        *a = v.mul_add(wj, *a);
                    }
                }
            }
        }
        for (head_slots, out) in slots
            .chunks_exact_mut(per_head)
            .zip(out.chunks_exact_mut(hd))
        {
            fold_slots(head_slots, len, out);
        }
    });
}

/// The fold and the 16-lane reduction of one head's accumulator slots into
/// `out`, done for all d at once: every step is elementwise over d, so it
/// vectorizes.
fn fold_slots(slots: &mut [f32], len: usize, out: &mut [f32]) {
    let hd = out.len();
    let used = len.min(4 * LANES);
    let (acc, scratch) = slots.split_at_mut(4 * LANES * hd);
    let (folded, rest) = scratch.split_at_mut(LANES * hd);
    let (t8, rest) = rest.split_at_mut(8 * hd);
    let (t4, zeros) = rest.split_at_mut(4 * hd);
    let zeros = &zeros[..hd];
    // Each step is elementwise over d (contiguous), so it vectorizes.
    let add_into = |dst: &mut [f32], a: &[f32], b: &[f32]| {
        for ((o, x), y) in dst.iter_mut().zip(a).zip(b) {
            *o = x + y;
        }
    };
    for l in 0..LANES {
        // Slots no position reached count as zeros, like ggml's padding.
        let slot = |group: usize| {
            let i = group * LANES + l;
            if i < used {
                &acc[i * hd..(i + 1) * hd]
            } else {
                zeros
            }
        };
        let (s0, s1, s2, s3) = (slot(0), slot(1), slot(2), slot(3));
        let dst = &mut folded[l * hd..(l + 1) * hd];
        for ((((o, a), b), c), e) in dst.iter_mut().zip(s0).zip(s1).zip(s2).zip(s3) {
            *o = (a + c) + (b + e);
        }
    }
    for i in 0..8 {
        add_into(
            &mut t8[i * hd..(i + 1) * hd],
            &folded[(8 + i) * hd..(9 + i) * hd],
            &folded[i * hd..(i + 1) * hd],
        );
    }
    for i in 0..4 {
        add_into(
            &mut t4[i * hd..(i + 1) * hd],
            &t8[(4 + i) * hd..(5 + i) * hd],
            &t8[i * hd..(i + 1) * hd],
        );
    }
    let (a, b) = t4.split_at(hd);
    let (b, c) = b.split_at(hd);
    let (c, e) = c.split_at(hd);
    for ((((o, a), b), c), e) in out.iter_mut().zip(a).zip(b).zip(c).zip(e) {
        *o = (a + c) + (b + e);
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

    /// Outside the normal exponents the scaling must round once: the same
    /// bits as the product formed exactly in f64 and rounded to f32.
    #[test]
    fn exp_scales_subnormal_and_huge_results_with_one_rounding() {
        let mut checked = 0;
        for i in -1_400_000..1_400_000 {
            let x = i as f32 * 1e-4;
            let (j, n) = exp_parts(x);
            let e = n as i32;
            if (-126..=127).contains(&e) || n.abs() > 192.0 {
                continue;
            }
            let want = ((j as f64) * (e as f64).exp2()) as f32;
            assert_eq!(expf(x).to_bits(), want.to_bits(), "x = {x}");
            checked += 1;
        }
        assert!(checked > 100_000, "{checked}");
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

    #[test]
    fn shared_rows_give_each_head_its_own_sum() {
        // Three heads over 150 positions (past the 64 accumulator slots),
        // against one weighted_sum per head and against an f64 sum.
        let (len, hd, heads) = (150, 64, 3);
        let v: Vec<Vec<f32>> = (0..len)
            .map(|j| {
                (0..hd)
                    .map(|d| ((j * 31 + d * 17) % 97) as f32 / 48.0 - 1.0)
                    .collect()
            })
            .collect();
        let w: Vec<f32> = (0..heads * len)
            .map(|i| ((i * 13 % 29) as f32 + 1.0) / (29.0 * len as f32))
            .collect();
        let mut together = vec![0f32; heads * hd];
        weighted_sums(&w, heads, |j| &v[j], &mut together);
        for g in 0..heads {
            let mut alone = vec![0f32; hd];
            weighted_sum(&w[g * len..(g + 1) * len], |j| &v[j], &mut alone);
            assert_eq!(
                &together[g * hd..(g + 1) * hd],
                alone.as_slice(),
                "head {g}"
            );
            for d in 0..hd {
                let exact: f64 = (0..len)
                    .map(|j| w[g * len + j] as f64 * v[j][d] as f64)
                    .sum();
                assert!((alone[d] as f64 - exact).abs() < 1e-5, "head {g} dim {d}");
            }
        }
    }
}

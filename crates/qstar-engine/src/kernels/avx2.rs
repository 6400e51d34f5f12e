//! The tile products on 256-bit registers (AVX2 with FMA), in ggml's AVX2
//! arithmetic: unsigned × signed byte pairs, summed to 32-bit lanes of four
//! products, converted to f32 and fused into eight-lane accumulators.
//!
//! AVX2 has sixteen vector registers, so a 4 × 4 tile (sixteen accumulators)
//! cannot stay in registers: the tile is computed as passes over row strips
//! whose accumulators (at most eight) and unpacked weights fit, and the
//! Q4_1 offset terms, which need no integer work, in a pass of their own.
//! Every output still sees the same operations in the same order.

use std::arch::x86_64::*;

use super::{prefetch, BLOCK, GROUP, PREFETCH_AHEAD};

/// Horizontal sum of eight lanes in the order of ggml's `hsum_float_8`.
#[inline]
#[target_feature(enable = "avx2,fma")]
pub fn hsum(v: __m256) -> f32 {
    let mut r = _mm_add_ps(_mm256_extractf128_ps(v, 1), _mm256_castps256_ps128(v));
    r = _mm_add_ps(r, _mm_movehl_ps(r, r));
    r = _mm_add_ss(r, _mm_movehdup_ps(r));
    _mm_cvtss_f32(r)
}

/// Runs `$strip::<R, C>(first_row, args…)` over the tile's rows for a
/// runtime column count: one strip of four rows for one or two columns,
/// two strips of two rows for three or four, so that R · C ≤ 8.
macro_rules! by_strips {
    ($strip:ident, $cols:expr, ($($arg:expr),*)) => {
        match $cols {
            1 => $strip::<4, 1>(0, $($arg),*),
            2 => $strip::<4, 2>(0, $($arg),*),
            3 => {
                $strip::<2, 3>(0, $($arg),*);
                $strip::<2, 3>(2, $($arg),*);
            }
            _ => {
                $strip::<2, 4>(0, $($arg),*);
                $strip::<2, 4>(2, $($arg),*);
            }
        }
    };
}

/// The scales d_w[r] · d_x[c] of the block at slot `at`, rows
/// `r0 .. r0 + R` (R ≤ 4), four columns per row, as a flat array the strip
/// broadcasts from.
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn block_scales<const R: usize>(
    wd: &[f32],
    xd: &[f32],
    at: usize,
    r0: usize,
) -> [f32; GROUP * GROUP] {
    const { assert!(R <= GROUP) };
    let dx = _mm_loadu_ps(xd.as_ptr().add(at));
    let mut scales = [0f32; GROUP * GROUP];
    for r in 0..R {
        let s = _mm_mul_ps(_mm_set1_ps(*wd.get_unchecked(at + r0 + r)), dx);
        _mm_storeu_ps(scales.as_mut_ptr().add(4 * r), s);
    }
    scales
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
    cols: usize,
    nb: usize,
    out: &mut [[f32; GROUP]; GROUP],
) {
    // out starts as the offsets Σ_b m_w · s_x; the strips add their sums.
    q4_1_offsets(wm, xs, nb, out);
    by_strips!(q4_1_strip, cols, (wd, wq, xd, xq, nb, out))
}

/// Σ_b m_w[r] · s_x[c], one fused step per block in block order, for all
/// sixteen (row, column) pairs of the tile (padding rows give zeros).
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn q4_1_offsets(wm: &[f32], xs: &[f32], nb: usize, out: &mut [[f32; GROUP]; GROUP]) {
    let mut acc = [_mm_setzero_ps(); GROUP];
    for b in 0..nb {
        let at = b * GROUP;
        let sx = _mm_loadu_ps(xs.as_ptr().add(at));
        for r in 0..GROUP {
            acc[r] = _mm_fmadd_ps(_mm_set1_ps(*wm.get_unchecked(at + r)), sx, acc[r]);
        }
    }
    for r in 0..GROUP {
        _mm_storeu_ps(out[r].as_mut_ptr(), acc[r]);
    }
}

/// Rows `r0 .. r0 + R` against the first C activation rows: per block, lane
/// sums of four products (unsigned nibble × signed byte) times d_w · d_x,
/// fused into the lane accumulators; the reduced sums are added to `out`.
#[allow(clippy::too_many_arguments)]
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn q4_1_strip<const R: usize, const C: usize>(
    r0: usize,
    wd: &[f32],
    wq: &[u8],
    xd: &[f32],
    xq: &[i8],
    nb: usize,
    out: &mut [[f32; GROUP]; GROUP],
) {
    let mut acc = [[_mm256_setzero_ps(); C]; R];
    let mask = _mm_set1_epi8(0x0f);
    let ones = _mm256_set1_epi16(1);
    for b in 0..nb {
        let at = b * GROUP;
        prefetch(wq.as_ptr().wrapping_add((at + PREFETCH_AHEAD) * 16));
        let mut w = [_mm256_setzero_si256(); R];
        for r in 0..R {
            let raw = _mm_loadu_si128(wq.as_ptr().add((at + r0 + r) * 16) as *const __m128i);
            let lo = _mm_and_si128(raw, mask);
            let hi = _mm_and_si128(_mm_srli_epi16(raw, 4), mask);
            w[r] = _mm256_set_m128i(hi, lo);
        }
        let scales = block_scales::<R>(wd, xd, at, r0);
        for c in 0..C {
            let x = _mm256_loadu_si256(xq.as_ptr().add((at + c) * BLOCK) as *const __m256i);
            for r in 0..R {
                let scale = _mm256_broadcast_ss(scales.get_unchecked(4 * r + c));
                let lanes = _mm256_madd_epi16(ones, _mm256_maddubs_epi16(w[r], x));
                acc[r][c] = _mm256_fmadd_ps(scale, _mm256_cvtepi32_ps(lanes), acc[r][c]);
            }
        }
    }
    for r in 0..R {
        for c in 0..C {
            // IEEE addition is commutative: the same sum as hsum + offset.
            out[r0 + r][c] += hsum(acc[r][c]);
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
    cols: usize,
    nb: usize,
    out: &mut [[f32; GROUP]; GROUP],
) {
    by_strips!(q8_0_strip, cols, (wd, wq, xd, xq, nb, out))
}

/// Signed × signed bytes: |w| times x carrying w's sign, then as Q4_1.
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn q8_0_strip<const R: usize, const C: usize>(
    r0: usize,
    wd: &[f32],
    wq: &[i8],
    xd: &[f32],
    xq: &[i8],
    nb: usize,
    out: &mut [[f32; GROUP]; GROUP],
) {
    let mut acc = [[_mm256_setzero_ps(); C]; R];
    let ones = _mm256_set1_epi16(1);
    for b in 0..nb {
        let at = b * GROUP;
        prefetch(wq.as_ptr().wrapping_add((at + PREFETCH_AHEAD) * BLOCK));
        prefetch(wq.as_ptr().wrapping_add((at + PREFETCH_AHEAD) * BLOCK + 64));
        let mut w = [_mm256_setzero_si256(); R];
        let mut wabs = [_mm256_setzero_si256(); R];
        for r in 0..R {
            w[r] = _mm256_loadu_si256(wq.as_ptr().add((at + r0 + r) * BLOCK) as *const __m256i);
            wabs[r] = _mm256_sign_epi8(w[r], w[r]);
        }
        let scales = block_scales::<R>(wd, xd, at, r0);
        for c in 0..C {
            let x = _mm256_loadu_si256(xq.as_ptr().add((at + c) * BLOCK) as *const __m256i);
            for r in 0..R {
                let scale = _mm256_broadcast_ss(scales.get_unchecked(4 * r + c));
                let signed = _mm256_sign_epi8(x, w[r]);
                let lanes = _mm256_madd_epi16(ones, _mm256_maddubs_epi16(wabs[r], signed));
                acc[r][c] = _mm256_fmadd_ps(scale, _mm256_cvtepi32_ps(lanes), acc[r][c]);
            }
        }
    }
    for r in 0..R {
        for c in 0..C {
            out[r0 + r][c] = hsum(acc[r][c]);
        }
    }
}

//! The tile products on 512-bit registers (AVX-512 F/BW with VNNI): each
//! register carries two 8-lane accumulators (two columns of one row, or two
//! rows of one column), and VNNI's byte dot product gives the lane sums in
//! one instruction.

use std::arch::x86_64::*;

use super::{prefetch, BLOCK, GROUP, PREFETCH_AHEAD};

/// ggml's 8-lane sum of each half of a 512-bit register.
#[inline]
#[target_feature(enable = "avx512f,fma")]
fn hsum_halves(v: __m512) -> (f32, f32) {
    let lo = _mm512_castps512_ps256(v);
    let hi = _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1));
    (super::avx2::hsum(lo), super::avx2::hsum(hi))
}

/// 64-bit lanes of (lo, hi) that make row r's 32 unpacked nibbles, twice.
#[inline]
#[target_feature(enable = "avx512f")]
fn row_twice(r: i64) -> __m512i {
    let (a, b) = (2 * r, 2 * r + 1);
    _mm512_setr_epi64(a, b, 8 + a, 8 + b, a, b, 8 + a, 8 + b)
}

/// 64-bit lanes of (lo, hi) that make rows 2k and 2k+1, side by side.
#[inline]
#[target_feature(enable = "avx512f")]
fn row_pair(k: i64) -> __m512i {
    let (a, b) = (4 * k, 4 * k + 2);
    _mm512_setr_epi64(a, a + 1, 8 + a, 9 + a, b, b + 1, 8 + b, 9 + b)
}

/// Lane i of a 4-float vector in the low half, lane j in the high half.
#[inline]
#[target_feature(enable = "avx512f")]
fn spread(v: __m128, i: i32, j: i32) -> __m512 {
    let idx = _mm512_setr_epi32(i, i, i, i, i, i, i, i, j, j, j, j, j, j, j, j);
    _mm512_permutexvar_ps(idx, _mm512_castps128_ps512(v))
}

#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,fma")]
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
    match cols {
        1 => q4_1_one_col(wd, wm, wq, xd, xs, xq, nb, out),
        2 => q4_1_col_pairs::<1>(wd, wm, wq, xd, xs, xq, nb, out),
        // Three columns run as four: the fourth is a zero row.
        _ => q4_1_col_pairs::<2>(wd, wm, wq, xd, xs, xq, nb, out),
    }
}

/// One activation row: registers hold rows (0, 1) and (2, 3).
#[allow(clippy::too_many_arguments)]
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,fma")]
unsafe fn q4_1_one_col(
    wd: &[f32],
    wm: &[f32],
    wq: &[u8],
    xd: &[f32],
    xs: &[f32],
    xq: &[i8],
    nb: usize,
    out: &mut [[f32; GROUP]; GROUP],
) {
    let mask = _mm512_set1_epi8(0x0f);
    let (pair0, pair1) = (row_pair(0), row_pair(1));
    let mut acc = [_mm512_setzero_ps(); 2];
    let mut offset = _mm_setzero_ps();
    for b in 0..nb {
        let at = b * GROUP;
        prefetch(wq.as_ptr().wrapping_add((at + PREFETCH_AHEAD) * 16));
        let v = _mm512_loadu_si512(wq.as_ptr().add(at * 16) as *const __m512i);
        let lo = _mm512_and_si512(v, mask);
        let hi = _mm512_and_si512(_mm512_srli_epi16(v, 4), mask);
        let w = [
            _mm512_permutex2var_epi64(lo, pair0, hi),
            _mm512_permutex2var_epi64(lo, pair1, hi),
        ];
        let x = _mm512_broadcast_i64x4(_mm256_loadu_si256(
            xq.as_ptr().add(at * BLOCK) as *const __m256i
        ));
        let (dx, sx) = (*xd.get_unchecked(at), *xs.get_unchecked(at));
        let wd4 = _mm_loadu_ps(wd.as_ptr().add(at));
        let wm4 = _mm_loadu_ps(wm.as_ptr().add(at));
        offset = _mm_fmadd_ps(wm4, _mm_set1_ps(sx), offset);
        let scales = _mm_mul_ps(wd4, _mm_set1_ps(dx));
        for k in 0..2 {
            let lanes = _mm512_dpbusd_epi32(_mm512_setzero_si512(), w[k], x);
            let scale = spread(scales, 2 * k as i32, 2 * k as i32 + 1);
            acc[k] = _mm512_fmadd_ps(scale, _mm512_cvtepi32_ps(lanes), acc[k]);
        }
    }
    let mut off = [0f32; 4];
    _mm_storeu_ps(off.as_mut_ptr(), offset);
    for k in 0..2 {
        let (a, b) = hsum_halves(acc[k]);
        out[2 * k][0] = a + off[2 * k];
        out[2 * k + 1][0] = b + off[2 * k + 1];
    }
}

/// Column pairs: each register holds one weight row against two
/// activation rows.
#[allow(clippy::too_many_arguments)]
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,fma")]
unsafe fn q4_1_col_pairs<const P: usize>(
    wd: &[f32],
    wm: &[f32],
    wq: &[u8],
    xd: &[f32],
    xs: &[f32],
    xq: &[i8],
    nb: usize,
    out: &mut [[f32; GROUP]; GROUP],
) {
    let mask = _mm512_set1_epi8(0x0f);
    let twice = [row_twice(0), row_twice(1), row_twice(2), row_twice(3)];
    let mut acc = [[_mm512_setzero_ps(); P]; GROUP];
    let mut offset = [_mm_setzero_ps(); GROUP];
    for b in 0..nb {
        let at = b * GROUP;
        prefetch(wq.as_ptr().wrapping_add((at + PREFETCH_AHEAD) * 16));
        let v = _mm512_loadu_si512(wq.as_ptr().add(at * 16) as *const __m512i);
        let lo = _mm512_and_si512(v, mask);
        let hi = _mm512_and_si512(_mm512_srli_epi16(v, 4), mask);
        let xd4 = _mm_loadu_ps(xd.as_ptr().add(at));
        let xs4 = _mm_loadu_ps(xs.as_ptr().add(at));
        let mut x = [_mm512_setzero_si512(); P];
        let mut dx = [_mm512_setzero_ps(); P];
        for p in 0..P {
            x[p] = _mm512_loadu_si512(xq.as_ptr().add((at + 2 * p) * BLOCK) as *const __m512i);
            dx[p] = spread(xd4, 2 * p as i32, 2 * p as i32 + 1);
        }
        for r in 0..GROUP {
            offset[r] = _mm_fmadd_ps(_mm_set1_ps(*wm.get_unchecked(at + r)), xs4, offset[r]);
            let w = _mm512_permutex2var_epi64(lo, twice[r], hi);
            let wdr = _mm512_set1_ps(*wd.get_unchecked(at + r));
            for p in 0..P {
                let lanes = _mm512_dpbusd_epi32(_mm512_setzero_si512(), w, x[p]);
                let scale = _mm512_mul_ps(wdr, dx[p]);
                acc[r][p] = _mm512_fmadd_ps(scale, _mm512_cvtepi32_ps(lanes), acc[r][p]);
            }
        }
    }
    for r in 0..GROUP {
        let mut off = [0f32; 4];
        _mm_storeu_ps(off.as_mut_ptr(), offset[r]);
        for p in 0..P {
            let (a, b) = hsum_halves(acc[r][p]);
            out[r][2 * p] = a + off[2 * p];
            out[r][2 * p + 1] = b + off[2 * p + 1];
        }
    }
}

#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,fma")]
pub unsafe fn q8_0_tile(
    wd: &[f32],
    wq: &[i8],
    xd: &[f32],
    xq: &[i8],
    cols: usize,
    nb: usize,
    out: &mut [[f32; GROUP]; GROUP],
) {
    match cols {
        1 => q8_0_one_col(wd, wq, xd, xq, nb, out),
        2 => q8_0_col_pairs::<1>(wd, wq, xd, xq, nb, out),
        _ => q8_0_col_pairs::<2>(wd, wq, xd, xq, nb, out),
    }
}

/// x with the sign of w (zero where w is zero does not matter: |w| = 0).
#[inline]
#[target_feature(enable = "avx512f,avx512bw")]
fn signed_like(x: __m512i, w: __m512i) -> __m512i {
    let negative = _mm512_movepi8_mask(w);
    _mm512_mask_sub_epi8(x, negative, _mm512_setzero_si512(), x)
}

#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,fma")]
unsafe fn q8_0_one_col(
    wd: &[f32],
    wq: &[i8],
    xd: &[f32],
    xq: &[i8],
    nb: usize,
    out: &mut [[f32; GROUP]; GROUP],
) {
    let mut acc = [_mm512_setzero_ps(); 2];
    for b in 0..nb {
        let at = b * GROUP;
        prefetch(wq.as_ptr().wrapping_add((at + PREFETCH_AHEAD) * BLOCK));
        prefetch(wq.as_ptr().wrapping_add((at + PREFETCH_AHEAD) * BLOCK + 64));
        let x = _mm512_broadcast_i64x4(_mm256_loadu_si256(
            xq.as_ptr().add(at * BLOCK) as *const __m256i
        ));
        let scales = _mm_mul_ps(
            _mm_loadu_ps(wd.as_ptr().add(at)),
            _mm_set1_ps(*xd.get_unchecked(at)),
        );
        for k in 0..2 {
            let w = _mm512_loadu_si512(wq.as_ptr().add((at + 2 * k) * BLOCK) as *const __m512i);
            let lanes = _mm512_dpbusd_epi32(
                _mm512_setzero_si512(),
                _mm512_abs_epi8(w),
                signed_like(x, w),
            );
            let scale = spread(scales, 2 * k as i32, 2 * k as i32 + 1);
            acc[k] = _mm512_fmadd_ps(scale, _mm512_cvtepi32_ps(lanes), acc[k]);
        }
    }
    for k in 0..2 {
        let (a, b) = hsum_halves(acc[k]);
        out[2 * k][0] = a;
        out[2 * k + 1][0] = b;
    }
}

#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,fma")]
unsafe fn q8_0_col_pairs<const P: usize>(
    wd: &[f32],
    wq: &[i8],
    xd: &[f32],
    xq: &[i8],
    nb: usize,
    out: &mut [[f32; GROUP]; GROUP],
) {
    let mut acc = [[_mm512_setzero_ps(); P]; GROUP];
    for b in 0..nb {
        let at = b * GROUP;
        prefetch(wq.as_ptr().wrapping_add((at + PREFETCH_AHEAD) * BLOCK));
        prefetch(wq.as_ptr().wrapping_add((at + PREFETCH_AHEAD) * BLOCK + 64));
        let xd4 = _mm_loadu_ps(xd.as_ptr().add(at));
        let mut x = [_mm512_setzero_si512(); P];
        let mut dx = [_mm512_setzero_ps(); P];
        for p in 0..P {
            x[p] = _mm512_loadu_si512(xq.as_ptr().add((at + 2 * p) * BLOCK) as *const __m512i);
            dx[p] = spread(xd4, 2 * p as i32, 2 * p as i32 + 1);
        }
        for r in 0..GROUP {
            let w = _mm512_broadcast_i64x4(_mm256_loadu_si256(
                wq.as_ptr().add((at + r) * BLOCK) as *const __m256i
            ));
            let wabs = _mm512_abs_epi8(w);
            let wdr = _mm512_set1_ps(*wd.get_unchecked(at + r));
            for p in 0..P {
                let lanes = _mm512_dpbusd_epi32(_mm512_setzero_si512(), wabs, signed_like(x[p], w));
                let scale = _mm512_mul_ps(wdr, dx[p]);
                acc[r][p] = _mm512_fmadd_ps(scale, _mm512_cvtepi32_ps(lanes), acc[r][p]);
            }
        }
    }
    for r in 0..GROUP {
        for p in 0..P {
            let (a, b) = hsum_halves(acc[r][p]);
            out[r][2 * p] = a;
            out[r][2 * p + 1] = b;
        }
    }
}

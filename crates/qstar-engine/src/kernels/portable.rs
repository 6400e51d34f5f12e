//! The tile products without SIMD, for any CPU, and the reference the
//! SIMD kernels are tested against bit for bit.

use super::{slot, QuantizedRows, Weights, BLOCK, GROUP};

/// out[i][j] = row i of weight group g · row j of activation group h.
pub fn tile(
    w: &Weights,
    g: usize,
    q: &QuantizedRows,
    h: usize,
    cols: usize,
    nb: usize,
    out: &mut [[f32; GROUP]; GROUP],
) {
    for i in 0..GROUP {
        for j in 0..cols {
            out[i][j] = dot(w, g * GROUP + i, q, h * GROUP + j, nb);
        }
    }
}

/// The kernels' arithmetic without SIMD: eight lanes of four-element integer
/// sums per block, scaled and fused into f32 lane accumulators, then reduced.
fn dot(w: &Weights, row: usize, q: &QuantizedRows, col: usize, nb: usize) -> f32 {
    let mut acc = [0f32; 8];
    let mut offset = 0f32;
    for b in 0..nb {
        let (wb, xb) = (slot(row, b, nb), slot(col, b, nb));
        let x = &q.qs[xb * BLOCK..(xb + 1) * BLOCK];
        let mut lanes = [0i32; 8];
        let scale = match w {
            Weights::Q4_1 { d, m, qs } => {
                offset = m[wb].mul_add(q.s[xb], offset);
                let nib = &qs[wb * 16..(wb + 1) * 16];
                for e in 0..BLOCK {
                    let v = if e < 16 {
                        nib[e] & 0x0f
                    } else {
                        nib[e - 16] >> 4
                    };
                    lanes[e / 4] += v as i32 * x[e] as i32;
                }
                d[wb] * q.d[xb]
            }
            Weights::Q8_0 { d, qs } => {
                for e in 0..BLOCK {
                    lanes[e / 4] += qs[wb * BLOCK + e] as i32 * x[e] as i32;
                }
                d[wb] * q.d[xb]
            }
            Weights::Dense(_) => return 0.0,
        };
        for (a, l) in acc.iter_mut().zip(lanes) {
            *a = scale.mul_add(l as f32, *a);
        }
    }
    reduce8(&acc) + offset
}

/// Horizontal sum in the order of ggml's `hsum_float_8`: halves, then pairs.
fn reduce8(a: &[f32; 8]) -> f32 {
    let q = [a[4] + a[0], a[5] + a[1], a[6] + a[2], a[7] + a[3]];
    let p = [q[0] + q[2], q[1] + q[3]];
    p[0] + p[1]
}

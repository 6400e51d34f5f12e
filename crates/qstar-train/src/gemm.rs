//! Matrix products over row-major slices, with either operand transposed:
//! the one place where the trainer calls into the GEMM crate.

use gemm::Parallelism;

use crate::real::Real;

/// C (m × n) = op(A) · op(B), or C += op(A) · op(B) with `accumulate`.
///
/// op(A) is m × k: A is stored m × k, or k × m when `a_t`. op(B) is k × n:
/// B is stored k × n, or n × k when `b_t`. All row-major.
#[allow(clippy::too_many_arguments)]
pub fn matmul<T: Real>(
    c: &mut [T],
    a: &[T],
    b: &[T],
    m: usize,
    n: usize,
    k: usize,
    a_t: bool,
    b_t: bool,
    accumulate: bool,
) {
    matmul_with(c, a, b, (m, n, k), (a_t, b_t), accumulate, true);
}

/// As [`matmul`], without threads of its own (for callers that already run
/// one product per core).
#[allow(clippy::too_many_arguments)]
pub fn matmul_serial<T: Real>(
    c: &mut [T],
    a: &[T],
    b: &[T],
    m: usize,
    n: usize,
    k: usize,
    a_t: bool,
    b_t: bool,
    accumulate: bool,
) {
    matmul_with(c, a, b, (m, n, k), (a_t, b_t), accumulate, false);
}

fn matmul_with<T: Real>(
    c: &mut [T],
    a: &[T],
    b: &[T],
    (m, n, k): (usize, usize, usize),
    (a_t, b_t): (bool, bool),
    accumulate: bool,
    threads: bool,
) {
    assert!(
        c.len() >= m * n,
        "C holds {} values, needs {m}×{n}",
        c.len()
    );
    assert!(
        a.len() >= m * k,
        "A holds {} values, needs {m}×{k}",
        a.len()
    );
    assert!(
        b.len() >= k * n,
        "B holds {} values, needs {k}×{n}",
        b.len()
    );
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            c[..m * n].fill(T::ZERO);
        }
        return;
    }
    let (a_cs, a_rs) = if a_t {
        (m as isize, 1)
    } else {
        (1, k as isize)
    };
    let (b_cs, b_rs) = if b_t {
        (k as isize, 1)
    } else {
        (1, n as isize)
    };
    let cores = rayon::current_num_threads();
    let parallelism = if threads && cores > 1 && m * n * k >= 1 << 15 {
        Parallelism::Rayon(cores)
    } else {
        Parallelism::None
    };
    // SAFETY: the asserts above bound every index the strides reach: C's
    // (i, j) at i·n + j < m·n, op(A)'s (i, p) at i·k + p or p·m + i < m·k,
    // op(B)'s (p, j) at p·n + j or j·k + p < k·n. `gemm` dispatches on the
    // type (f32 or f64, the only `Real`s).
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c.as_mut_ptr(),
            1,
            n as isize,
            accumulate,
            a.as_ptr(),
            a_cs,
            a_rs,
            b.as_ptr(),
            b_cs,
            b_rs,
            if accumulate { T::ONE } else { T::ZERO },
            T::ONE,
            false,
            false,
            false,
            parallelism,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reference(
        a: &[f64],
        b: &[f64],
        m: usize,
        n: usize,
        k: usize,
        a_t: bool,
        b_t: bool,
    ) -> Vec<f64> {
        let mut c = vec![0.0; m * n];
        for i in 0..m {
            for j in 0..n {
                for p in 0..k {
                    let x = if a_t { a[p * m + i] } else { a[i * k + p] };
                    let y = if b_t { b[j * k + p] } else { b[p * n + j] };
                    c[i * n + j] += x * y;
                }
            }
        }
        c
    }

    #[test]
    fn every_transpose_matches_the_triple_loop() {
        let (m, n, k) = (7, 5, 3);
        let a: Vec<f64> = (0..m * k).map(|i| (i as f64 * 0.37).sin()).collect();
        let b: Vec<f64> = (0..k * n).map(|i| (i as f64 * 0.91).cos()).collect();
        for a_t in [false, true] {
            for b_t in [false, true] {
                let want = reference(&a, &b, m, n, k, a_t, b_t);
                let mut c = vec![1.0; m * n];
                matmul(&mut c, &a, &b, m, n, k, a_t, b_t, true);
                for (got, want) in c.iter().zip(&want) {
                    assert!((got - 1.0 - want).abs() < 1e-12);
                }
                matmul(&mut c, &a, &b, m, n, k, a_t, b_t, false);
                for (got, want) in c.iter().zip(&want) {
                    assert!((got - want).abs() < 1e-12);
                }
            }
        }
    }
}

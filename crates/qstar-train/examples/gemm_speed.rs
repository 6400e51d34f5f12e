//! GFLOP/s of the trainer's matrix products at the default model's shapes
//! (development aid).
use std::time::Instant;

use qstar_train::gemm::matmul;

fn main() {
    let shapes = [
        (256, 576, 576),
        (256, 192, 576),
        (256, 1536, 576),
        (256, 576, 1536),
        (256, 49152, 576),
        (576, 576, 256),
        (49152, 576, 256),
        (256, 576, 49152),
    ];
    for (m, n, k) in shapes {
        for (a_t, b_t) in [(false, true), (false, false), (true, false)] {
            let a = vec![0.5f32; m * k];
            let b = vec![0.25f32; k * n];
            let mut c = vec![0f32; m * n];
            matmul(&mut c, &a, &b, m, n, k, a_t, b_t, false);
            let reps = 5;
            let t = Instant::now();
            for _ in 0..reps {
                matmul(&mut c, &a, &b, m, n, k, a_t, b_t, true);
            }
            let s = t.elapsed().as_secs_f64() / reps as f64;
            println!(
                "{m:>6}×{n:>6}×{k:>6} a_t={a_t:<5} b_t={b_t:<5} {:.1} GFLOP/s",
                2.0 * (m * n * k) as f64 / s / 1e9
            );
        }
    }
}

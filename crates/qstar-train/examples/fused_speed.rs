//! Separate against fused projections (development aid).
use std::time::Instant;

use qstar_train::gemm::matmul;

fn time(f: &mut dyn FnMut()) -> f64 {
    let t = Instant::now();
    for _ in 0..10 {
        f();
    }
    t.elapsed().as_secs_f64() / 10.0
}

fn main() {
    let (t, d, kv, ff) = (256, 576, 192, 1536);
    let x = vec![0.5f32; t * d];
    let wq = vec![0.1f32; d * d];
    let wk = vec![0.1f32; kv * d];
    let wqkv = vec![0.1f32; (d + 2 * kv) * d];
    let wg = vec![0.1f32; ff * d];
    let wgu = vec![0.1f32; 2 * ff * d];
    let mut y1 = vec![0f32; t * d];
    let mut y2 = vec![0f32; t * kv];
    let mut y3 = vec![0f32; t * kv];
    let mut yf = vec![0f32; t * (d + 2 * kv)];
    let mut g1 = vec![0f32; t * ff];
    let mut g2 = vec![0f32; t * ff];
    let mut gf = vec![0f32; t * 2 * ff];
    for _ in 0..3 {
        let sep = time(&mut || {
            matmul(&mut y1, &x, &wq, t, d, d, false, true, false);
            matmul(&mut y2, &x, &wk, t, kv, d, false, true, false);
            matmul(&mut y3, &x, &wk, t, kv, d, false, true, false);
        });
        let fused = time(&mut || matmul(&mut yf, &x, &wqkv, t, d + 2 * kv, d, false, true, false));
        let sep2 = time(&mut || {
            matmul(&mut g1, &x, &wg, t, ff, d, false, true, false);
            matmul(&mut g2, &x, &wg, t, ff, d, false, true, false);
        });
        let fused2 = time(&mut || matmul(&mut gf, &x, &wgu, t, 2 * ff, d, false, true, false));
        println!(
            "qkv separate {:.2} ms fused {:.2} ms; gate/up separate {:.2} ms fused {:.2} ms",
            sep * 1e3,
            fused * 1e3,
            sep2 * 1e3,
            fused2 * 1e3
        );
    }
}

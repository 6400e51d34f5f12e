//! Times the quantized products at the default model's shapes for a few
//! batch sizes, on every kernel this CPU runs: `cargo run --release -p
//! qstar-engine --example matmul_speed [quantize]`. A development tool: what one
//! (row, column, block) costs tells a kernel change apart from noise.

use std::time::Instant;

use qstar_engine::kernels::{Activations, Kernel, Linear, Weights, BLOCK};

fn q4_1_bytes(n: usize, k: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(n * k / BLOCK * 20);
    let mut seed = 12345u32;
    for b in 0..n * k / BLOCK {
        out.extend_from_slice(&half::f16::from_f32(0.01 + (b % 7) as f32 * 1e-3).to_le_bytes());
        out.extend_from_slice(&half::f16::from_f32(-0.05).to_le_bytes());
        for _ in 0..16 {
            seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12345);
            out.push((seed >> 16) as u8);
        }
    }
    out
}

fn q8_0_bytes(n: usize, k: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(n * k / BLOCK * 34);
    let mut seed = 777u32;
    for b in 0..n * k / BLOCK {
        out.extend_from_slice(&half::f16::from_f32(0.01 + (b % 5) as f32 * 1e-3).to_le_bytes());
        for _ in 0..32 {
            seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12345);
            out.push((seed >> 16) as u8);
        }
    }
    out
}

fn main() {
    time_quantize();
    if std::env::args().nth(1).as_deref() == Some("quantize") {
        return;
    }
    let shapes = [
        ("ffn up 1536x576 q4_1", 1536, 576, false),
        ("ffn down 576x1536 q4_1", 576, 1536, false),
        ("vocab 49152x576 q8_0", 49152, 576, true),
    ];
    for (name, n, k, q8) in shapes {
        let weights = if q8 {
            Weights::from_q8_0(&q8_0_bytes(n, k), n, k)
        } else {
            Weights::from_q4_1(&q4_1_bytes(n, k), n, k)
        };
        let lin = Linear::new(n, k, weights);
        for kernel in Kernel::available() {
            for t in [1usize, 4, 8, 16] {
                let x: Vec<f32> = (0..t * k)
                    .map(|i| ((i * 37 % 101) as f32 - 50.0) / 31.0)
                    .collect();
                let mut y = vec![0f32; t * n];
                let reps = (2_000_000_000 / (n * k * t)).clamp(3, 2000);
                let mut times = Vec::new();
                for _ in 0..5 {
                    let start = Instant::now();
                    for _ in 0..reps {
                        let acts = Activations::new(&x, t);
                        lin.forward_with(kernel, &acts, &mut y, false);
                    }
                    times.push(start.elapsed().as_secs_f64() / reps as f64);
                }
                times.sort_by(f64::total_cmp);
                let s = times[2];
                let triples = (n * t * k / BLOCK) as f64;
                println!(
                    "{name:<24} {:<10} t={t:<3} {:>9.1} us  {:>6.3} ns/(row,col,block)",
                    kernel.name(),
                    s * 1e6,
                    s * 1e9 / triples * 2.0
                );
            }
        }
    }
}

fn time_quantize() {
    for (k, t) in [(576usize, 1usize), (576, 8), (1536, 8), (576, 64)] {
        let x: Vec<f32> = (0..t * k)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 31.0)
            .collect();
        let reps = (20_000_000 / (k * t)).max(10);
        let start = Instant::now();
        for _ in 0..reps {
            std::hint::black_box(qstar_engine::kernels::quantize_rows(&x, k));
        }
        let s = start.elapsed().as_secs_f64() / reps as f64;
        println!(
            "quantize k={k} t={t}: {:.2} us, {:.2} ns/value",
            s * 1e6,
            s * 1e9 / (k * t) as f64
        );
    }
}

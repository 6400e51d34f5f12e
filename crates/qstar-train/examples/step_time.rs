//! Times forward + backward of the default model on a random batch
//! (development aid; `qstar bench train` is the benchmark).
use std::time::Instant;

use qstar_train::rng::SplitMix;
use qstar_train::{cross_entropy, Lora, LoraConfig, Model, Sequence, Trainable, Weights};

fn main() {
    let path = qstar_engine::fetch::default_model_path();
    let (c, w) = Weights::from_gguf(&path).expect("weights");
    let args: Vec<String> = std::env::args().collect();
    let batch: usize = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(4);
    let len: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(64);
    let mut rng = SplitMix::new(1);
    let seqs: Vec<Sequence> = (0..batch)
        .map(|_| Sequence::all((0..len).map(|_| rng.below(c.n_vocab) as u32).collect()))
        .collect();
    let lora = Lora::init(
        &c,
        LoraConfig {
            rank: 8,
            alpha: 16.0,
            dropout: 0.0,
            targets: [
                "q_proj",
                "k_proj",
                "v_proj",
                "o_proj",
                "gate_proj",
                "up_proj",
                "down_proj",
            ]
            .map(String::from)
            .to_vec(),
        },
        0,
    )
    .expect("lora");
    let model = Model::new(c.clone(), w, Some(lora)).expect("model");
    for mode in [Trainable::Lora, Trainable::Full] {
        let mut grads = model.grads(mode);
        for _ in 0..3 {
            let t0 = Instant::now();
            let (logps, tape) = model.forward(&seqs, 0).expect("forward");
            let t1 = Instant::now();
            let (loss, d) = cross_entropy(&logps, logps.len());
            model.backward(tape, &d, &mut grads).expect("backward");
            let t2 = Instant::now();
            let tokens = (batch * len) as f64;
            eprintln!(
                "{mode:?}: loss {loss:.3} forward {:.2}s backward {:.2}s → {:.1} tok/s",
                (t1 - t0).as_secs_f64(),
                (t2 - t1).as_secs_f64(),
                tokens / (t2 - t0).as_secs_f64()
            );
        }
    }
}

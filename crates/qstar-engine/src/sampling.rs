//! Token selection: greedy, or temperature with top-k and top-p, from a
//! generator seeded per sample so that results do not depend on batching.

use qstar_core::SamplingParams;

/// SplitMix64: tiny, fast, and good enough to draw tokens.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        // Scramble so that consecutive seeds give unrelated streams.
        let mut r = Rng(seed ^ 0x5851_f42d_4c95_7f2d);
        r.next_u64();
        r
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Log-softmax of a row of logits.
pub fn log_softmax(logits: &[f32]) -> Vec<f32> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f64 = logits.iter().map(|&l| ((l - max) as f64).exp()).sum();
    let lse = max + sum.ln() as f32;
    logits.iter().map(|&l| l - lse).collect()
}

/// Indices of the `k` largest values, largest first (ties: lower index first).
pub fn top_k_indices(values: &[f32], k: usize) -> Vec<usize> {
    let k = k.min(values.len());
    if k == 0 {
        return Vec::new();
    }
    let mut idx: Vec<usize> = (0..values.len()).collect();
    let cmp = |a: &usize, b: &usize| values[*b].total_cmp(&values[*a]).then(a.cmp(b));
    if k < idx.len() {
        idx.select_nth_unstable_by(k - 1, cmp);
        idx.truncate(k);
    }
    idx.sort_by(cmp);
    idx
}

pub fn argmax(values: &[f32]) -> usize {
    let mut best = 0;
    for (i, v) in values.iter().enumerate() {
        if *v > values[best] {
            best = i;
        }
    }
    best
}

/// Picks the next token from a row of logits.
pub fn sample(logits: &[f32], params: &SamplingParams, rng: &mut Rng) -> u32 {
    if params.temperature <= 0.0 {
        return argmax(logits) as u32;
    }
    if params.top_k == 0 && params.top_p >= 1.0 {
        return sample_full(logits, params.temperature as f64, rng);
    }
    let k = if params.top_k == 0 {
        logits.len()
    } else {
        params.top_k
    };
    // Candidates by decreasing logit; the full sort is only paid without top-k.
    let candidates = top_k_indices(logits, k);
    let max = logits[candidates[0]];
    let t = params.temperature as f64;
    let weights: Vec<f64> = candidates
        .iter()
        .map(|&i| (((logits[i] - max) as f64) / t).exp())
        .collect();
    let total: f64 = weights.iter().sum();
    // Nucleus: smallest prefix whose probability reaches top_p.
    let mut keep = weights.len();
    if params.top_p < 1.0 {
        let mut mass = 0.0;
        for (i, w) in weights.iter().enumerate() {
            mass += w / total;
            if mass >= params.top_p as f64 {
                keep = i + 1;
                break;
            }
        }
    }
    let kept_total: f64 = weights[..keep].iter().sum();
    let mut u = rng.next_f64() * kept_total;
    for (i, w) in weights[..keep].iter().enumerate() {
        u -= w;
        if u < 0.0 {
            return candidates[i] as u32;
        }
    }
    candidates[keep - 1] as u32
}

/// Sampling from the whole vocabulary needs no sorting: the weights once,
/// then one scan to where the draw falls.
fn sample_full(logits: &[f32], temperature: f64, rng: &mut Rng) -> u32 {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let inv_t = (1.0 / temperature) as f32;
    let weights: Vec<f32> = logits
        .iter()
        .map(|&l| crate::numerics::expf((l - max) * inv_t))
        .collect();
    let total: f64 = weights.iter().map(|&w| w as f64).sum();
    let mut u = rng.next_f64() * total;
    for (i, &w) in weights.iter().enumerate() {
        u -= w as f64;
        if u < 0.0 {
            return i as u32;
        }
    }
    argmax(logits) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_takes_the_maximum() {
        let p = SamplingParams::default();
        assert_eq!(sample(&[0.1, 3.0, 2.0], &p, &mut Rng::new(1)), 1);
    }

    #[test]
    fn top_k_one_is_greedy_and_seed_is_reproducible() {
        let logits = [0.5, 0.4, 0.3, 2.0];
        let mut p = SamplingParams {
            temperature: 1.0,
            top_k: 1,
            ..Default::default()
        };
        assert_eq!(sample(&logits, &p, &mut Rng::new(9)), 3);
        p.top_k = 0;
        let a: Vec<u32> = {
            let mut r = Rng::new(42);
            (0..50).map(|_| sample(&logits, &p, &mut r)).collect()
        };
        let b: Vec<u32> = {
            let mut r = Rng::new(42);
            (0..50).map(|_| sample(&logits, &p, &mut r)).collect()
        };
        assert_eq!(a, b);
        assert!(
            a.iter().any(|&x| x != 3),
            "temperature 1 should not be greedy"
        );
    }

    #[test]
    fn top_p_keeps_only_the_nucleus() {
        let logits = [10.0, 0.0, 0.0, 0.0];
        let p = SamplingParams {
            temperature: 1.0,
            top_p: 0.5,
            ..Default::default()
        };
        let mut r = Rng::new(3);
        assert!((0..200).all(|_| sample(&logits, &p, &mut r) == 0));
    }

    #[test]
    fn sampling_frequencies_follow_probabilities() {
        let logits = [0f32, 2f32.ln()];
        let p = SamplingParams {
            temperature: 1.0,
            ..Default::default()
        };
        let mut r = Rng::new(5);
        let ones = (0..30_000)
            .filter(|_| sample(&logits, &p, &mut r) == 1)
            .count();
        let freq = ones as f64 / 30_000.0;
        assert!((freq - 2.0 / 3.0).abs() < 0.02, "{freq}");
    }

    #[test]
    fn log_softmax_normalizes() {
        let l = log_softmax(&[1.0, 2.0, 3.0]);
        let s: f32 = l.iter().map(|x| x.exp()).sum();
        assert!((s - 1.0).abs() < 1e-6);
    }
}

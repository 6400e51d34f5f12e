//! How good a reward model is on preference pairs: how often it ranks the
//! preferred reply above the other, and whether σ(margin), read as the
//! chance of that, is calibrated.

use serde::Serialize;

use crate::labels::{calibration, ReliabilityBin};

#[derive(Debug, Clone, Serialize)]
pub struct RewardMetrics {
    pub pairs: usize,
    /// Fraction of pairs with r(chosen) > r(rejected); ties count half.
    pub accuracy: f64,
    /// Expected calibration error of σ(r(chosen) − r(rejected)).
    pub ece: f64,
    /// Mean of r(chosen) − r(rejected).
    pub mean_margin: f64,
    pub reliability: Vec<ReliabilityBin>,
}

/// Metrics from each pair's margin r(chosen) − r(rejected).
pub fn reward_metrics(margins: &[f64]) -> RewardMetrics {
    let n = margins.len();
    let sigmoid = |z: f64| 1.0 / (1.0 + (-z).exp());
    let right: f64 = margins
        .iter()
        .map(|&m| {
            if m > 0.0 {
                1.0
            } else if m == 0.0 {
                0.5
            } else {
                0.0
            }
        })
        .sum();
    let (ece, reliability) = calibration(margins.iter().map(|&m| sigmoid(m)));
    RewardMetrics {
        pairs: n,
        accuracy: right / n.max(1) as f64,
        ece,
        mean_margin: margins.iter().sum::<f64>() / n.max(1) as f64,
        reliability,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accuracy_margin_and_calibration_of_known_margins() {
        // σ(ln 3) = 3/4: four pairs at confidence 3/4, three of them right,
        // are perfectly calibrated; a tie counts half.
        let l3 = 3f64.ln();
        let m = reward_metrics(&[l3, l3, l3, -l3]);
        assert!((m.accuracy - 0.75).abs() < 1e-12);
        assert!(m.ece < 1e-12, "{}", m.ece);
        assert!((m.mean_margin - l3 / 2.0).abs() < 1e-12);
        // All right at confidence 3/4: under-confident by 1/4.
        let m = reward_metrics(&[l3; 5]);
        assert!((m.ece - 0.25).abs() < 1e-12 && m.accuracy == 1.0);
        // A tie counts half in the accuracy.
        let m = reward_metrics(&[0.0, 2.0]);
        assert!((m.accuracy - 0.75).abs() < 1e-12);
        assert_eq!(reward_metrics(&[]).pairs, 0);
    }
}

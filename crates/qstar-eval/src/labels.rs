//! How good a labeler is against human preferences: alignment, position
//! bias, calibration and the mass behind its choices.

use serde::Serialize;

use qstar_core::labels::PairLabel;

#[derive(Debug, Clone, Serialize)]
pub struct LabelMetrics {
    pub pairs: usize,
    /// Fraction of pairs where the soft label favours the human's choice.
    pub alignment: f64,
    /// Fraction of (pair, principle) questions scored in both orders where
    /// the same position won both times; `None` without both orders.
    pub position_bias_rate: Option<f64>,
    /// Expected calibration error of max(p, 1 − p) as the chance of agreeing
    /// with the human, over 10 equal-width bins.
    pub ece: f64,
    /// Mean P("A") over all questions (1/2 for an unbiased labeler).
    pub mean_p_a: f64,
    /// Mean and least probability mass the model put on the option letters
    /// before normalization, over all questions (`None` for labels written
    /// without it). Nothing is parsed in a choice, so nothing can fail to
    /// parse; what can go wrong is a choice made on a sliver of the mass.
    pub option_mass_mean: Option<f64>,
    pub option_mass_min: Option<f64>,
    /// Alignment of each principle on its own (both orders averaged), as
    /// (principle index, pairs judged, alignment).
    pub per_principle: Vec<(usize, usize, f64)>,
    /// The reliability diagram: confidence bins from 0.5 to 1 with how often
    /// the labeler agreed with the human in each.
    pub reliability: Vec<ReliabilityBin>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ReliabilityBin {
    pub low: f64,
    pub high: f64,
    pub count: usize,
    pub mean_confidence: f64,
    pub accuracy: f64,
}

pub fn label_metrics(labels: &[PairLabel]) -> LabelMetrics {
    let n = labels.len();
    let aligned = labels.iter().filter(|l| l.p_human_chosen > 0.5).count();
    let mut both = 0usize;
    let mut same = 0usize;
    let mut p_a_sum = 0.0;
    let mut questions = 0usize;
    let masses: Vec<f64> = labels
        .iter()
        .flat_map(|l| l.judgements.iter().filter_map(|j| j.option_mass))
        .collect();
    for l in labels {
        for j in &l.judgements {
            p_a_sum += j.p_a;
            questions += 1;
        }
        for j in l.judgements.iter().filter(|j| j.human_chosen_first) {
            if let Some(k) = l
                .judgements
                .iter()
                .find(|k| !k.human_chosen_first && k.principle == j.principle)
            {
                both += 1;
                if (j.p_a > 0.5) == (k.p_a > 0.5) {
                    same += 1;
                }
            }
        }
    }
    let (ece, reliability) = calibration(labels.iter().map(|l| l.p_human_chosen));
    // Per principle: the pair's judgements under that principle, averaged.
    let mut by_principle: std::collections::BTreeMap<usize, (usize, usize)> = Default::default();
    for l in labels {
        let mut seen: std::collections::BTreeMap<usize, (f64, usize)> = Default::default();
        for j in &l.judgements {
            let e = seen.entry(j.principle).or_default();
            e.0 += j.p_human_chosen();
            e.1 += 1;
        }
        for (principle, (sum, count)) in seen {
            let e = by_principle.entry(principle).or_default();
            e.0 += 1;
            e.1 += usize::from(sum / count as f64 > 0.5);
        }
    }
    LabelMetrics {
        per_principle: by_principle
            .into_iter()
            .map(|(p, (judged, aligned))| (p, judged, aligned as f64 / judged as f64))
            .collect(),
        pairs: n,
        alignment: aligned as f64 / n.max(1) as f64,
        position_bias_rate: (both > 0).then(|| same as f64 / both as f64),
        ece,
        mean_p_a: p_a_sum / questions.max(1) as f64,
        option_mass_mean: (!masses.is_empty())
            .then(|| masses.iter().sum::<f64>() / masses.len() as f64),
        option_mass_min: masses.iter().copied().reduce(f64::min),
        reliability,
    }
}

/// Expected calibration error and the reliability diagram of binary
/// predictions given as P(the reference answer): the confidence is
/// max(p, 1 − p), right when p > 1/2 (a tie is not), over 10 bins of
/// equal width from 1/2 to 1.
pub fn calibration(probs: impl Iterator<Item = f64>) -> (f64, Vec<ReliabilityBin>) {
    let mut bins = [(0usize, 0.0f64, 0.0f64); 10];
    let mut n = 0usize;
    for p in probs {
        let conf = p.max(1.0 - p);
        let correct = if p > 0.5 { 1.0 } else { 0.0 };
        let b = (((conf - 0.5) * 2.0 * 10.0) as usize).min(9);
        bins[b].0 += 1;
        bins[b].1 += conf;
        bins[b].2 += correct;
        n += 1;
    }
    let ece = bins
        .iter()
        .filter(|b| b.0 > 0)
        .map(|(count, conf, correct)| {
            (*count as f64 / n.max(1) as f64) * ((conf - correct) / *count as f64).abs()
        })
        .sum();
    let reliability = bins
        .iter()
        .enumerate()
        .map(|(i, &(count, conf, correct))| ReliabilityBin {
            low: 0.5 + i as f64 * 0.05,
            high: 0.55 + i as f64 * 0.05,
            count,
            mean_confidence: if count > 0 { conf / count as f64 } else { 0.0 },
            accuracy: if count > 0 {
                correct / count as f64
            } else {
                0.0
            },
        })
        .collect();
    (ece, reliability)
}

#[cfg(test)]
mod tests {
    use super::*;
    use qstar_core::labels::Judgement;

    fn label(p_a_first: f64, p_a_second: f64) -> PairLabel {
        let judgements = vec![
            Judgement {
                principle: 0,
                human_chosen_first: true,
                p_a: p_a_first,
                option_mass: Some(0.9),
                rationale: None,
            },
            Judgement {
                principle: 0,
                human_chosen_first: false,
                p_a: p_a_second,
                option_mass: Some(0.02),
                rationale: None,
            },
        ];
        let p = judgements
            .iter()
            .map(Judgement::p_human_chosen)
            .sum::<f64>()
            / 2.0;
        PairLabel {
            p_human_chosen: p,
            presented_human_chosen_first: true,
            judgements,
        }
    }

    #[test]
    fn a_labeler_that_always_says_a_is_fully_position_biased() {
        let m = label_metrics(&[label(0.8, 0.8), label(0.9, 0.7)]);
        assert_eq!(m.position_bias_rate, Some(1.0));
        assert!((m.mean_p_a - 0.8).abs() < 1e-9);
    }

    #[test]
    fn the_option_mass_shows_its_mean_and_its_weakest_question() {
        let m = label_metrics(&[label(0.8, 0.8), label(0.9, 0.7)]);
        assert!((m.option_mass_mean.unwrap_or(0.0) - 0.46).abs() < 1e-12);
        assert_eq!(m.option_mass_min, Some(0.02));
        let mut old = label(0.8, 0.8);
        for j in &mut old.judgements {
            j.option_mass = None;
        }
        let m = label_metrics(&[old]);
        assert_eq!((m.option_mass_mean, m.option_mass_min), (None, None));
    }

    #[test]
    fn a_consistent_labeler_is_aligned_and_unbiased() {
        let m = label_metrics(&[label(0.9, 0.1), label(0.8, 0.2)]);
        assert_eq!(m.position_bias_rate, Some(0.0));
        assert_eq!(m.alignment, 1.0);
        assert_eq!(m.per_principle, vec![(0, 2, 1.0)]);
        // Confidence 0.9 and 0.8, both right: ECE = mean(0.1, 0.2).
        assert!((m.ece - 0.15).abs() < 1e-9, "{}", m.ece);
    }
}

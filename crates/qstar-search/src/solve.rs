//! Searching one question from start to record: the verifier named by a
//! setting, the strategy (or the compute-optimal choice of one), and the
//! record written out for it.

use qstar_core::LanguageModel;
use qstar_tasks::{Problem, Task};
use serde::{Deserialize, Serialize};

use crate::verifier::{
    Aggregation, AgreementVerifier, CheckerVerifier, ConfidenceVerifier, DpoVerifier,
    JudgeVerifier, LecoVerifier, LikelihoodVerifier, PrmModelVerifier, RewardModelVerifier,
    SolutionRewarder, StepRewarder,
};
use crate::{
    optimal, run, Compute, Meter, Outcome, Policy, Scorer, SearchConfig, SearchError, Searcher,
    Strategy, Tree, Verifier,
};

/// The verifiers, as a flag, a config file or a record names them. Adding
/// one means adding a variant here; the compiler then points at
/// [`VerifierKind::name`] and [`Solver::verifier`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
#[value(rename_all = "kebab-case")]
pub enum VerifierKind {
    /// An oracle: the reference answer.
    Checker,
    /// The model judging each step.
    Prm,
    /// The model judging the whole solution.
    Orm,
    /// Marco-o1 token confidence.
    Confidence,
    /// LeCo step confidence.
    Leco,
    /// The implicit reward β·log(π/π_ref) against --ref-model (or the
    /// model without --adapter).
    Dpo,
    /// The policy's own probability of the text (beam search on the
    /// likelihood).
    Likelihood,
    /// A trained outcome reward model (`qstar train rm`) scoring each
    /// solution: `--verifier orm-model:DIR`.
    OrmModel,
    /// A trained process reward model (`qstar train prm`) scoring each
    /// step: `--verifier prm-model:DIR`.
    PrmModel,
    /// Agreement of a solution's answer with the others.
    Agreement,
}

impl VerifierKind {
    pub fn name(self) -> &'static str {
        match self {
            VerifierKind::Checker => "checker",
            VerifierKind::Prm => "prm",
            VerifierKind::Orm => "orm",
            VerifierKind::Confidence => "confidence",
            VerifierKind::Leco => "leco",
            VerifierKind::Dpo => "dpo",
            VerifierKind::Likelihood => "likelihood",
            VerifierKind::OrmModel => "orm-model",
            VerifierKind::PrmModel => "prm-model",
            VerifierKind::Agreement => "agreement",
        }
    }
}

/// Every verifier's name, comma-separated.
pub fn verifier_names() -> String {
    let names: Vec<&str> = <VerifierKind as clap::ValueEnum>::value_variants()
        .iter()
        .map(|v| v.name())
        .collect();
    names.join(", ")
}

/// One searched question as written out.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SolveRecord {
    pub line: usize,
    pub question: String,
    pub reference: String,
    pub answer: Option<String>,
    pub correct: bool,
    /// The strategy that ran (compute-optimal names its choice).
    pub strategy: Strategy,
    pub budget: usize,
    pub verifier: Option<VerifierKind>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub difficulty: Option<f64>,
    pub candidates: usize,
    pub unparsed: usize,
    pub compute: Compute,
    pub solution: String,
    pub tree: Tree,
}

/// What searching a question takes besides the question.
pub struct Solver<'a> {
    pub model: &'a dyn LanguageModel,
    /// The reference model of the dpo verifier (default: `model`).
    pub reference_model: Option<&'a dyn LanguageModel>,
    /// The reference model's size, for its FLOPs (`None`: unknown; unused
    /// when the reference is `model`).
    pub reference_parameters: Option<u64>,
    /// For FLOP estimates; `None` when unknown.
    pub parameters: Option<u64>,
    pub task: Task,
    pub config: &'a SearchConfig,
    pub verifier: Option<VerifierKind>,
    /// How step scores combine (default: the verifier's own).
    pub aggregation: Option<Aggregation>,
    /// β of the dpo verifier.
    pub beta: f64,
    /// The trained reward model of the orm-model verifier.
    pub reward_model: Option<&'a dyn SolutionRewarder>,
    /// The trained process reward model of the prm-model verifier.
    pub step_model: Option<&'a dyn StepRewarder>,
}

impl Solver<'_> {
    /// The verifier named by `verifier`.
    pub fn verifier(&self) -> Option<Box<dyn Verifier + '_>> {
        let kind = self.verifier?;
        Some(match kind {
            VerifierKind::Checker => Box::new(CheckerVerifier),
            VerifierKind::Prm | VerifierKind::Orm => Box::new(JudgeVerifier {
                model: self.model,
                outcome_only: kind == VerifierKind::Orm,
            }),
            VerifierKind::Confidence => Box::new(ConfidenceVerifier),
            VerifierKind::Leco => Box::new(LecoVerifier),
            VerifierKind::Dpo => Box::new(DpoVerifier {
                policy: self.model,
                reference: self.reference_model.unwrap_or(self.model),
                reference_parameters: match self.reference_model {
                    Some(_) => self.reference_parameters,
                    None => self.parameters,
                },
                beta: self.beta,
            }),
            VerifierKind::Likelihood => Box::new(LikelihoodVerifier { model: self.model }),
            VerifierKind::OrmModel => Box::new(RewardModelVerifier {
                model: self.reward_model,
            }),
            VerifierKind::PrmModel => Box::new(PrmModelVerifier {
                model: self.step_model,
            }),
            VerifierKind::Agreement => Box::new(AgreementVerifier),
        })
    }

    /// Searches one question with `strategy` and budget N, the
    /// compute-optimal strategy choosing by `policy`.
    pub async fn solve(
        &self,
        problem: &Problem,
        strategy: Strategy,
        budget: usize,
        policy: Option<&Policy>,
    ) -> Result<SolveRecord, SearchError> {
        let meter = Meter::with_parameters(self.parameters);
        let searcher = Searcher::new(self.model, self.task, problem, self.config, &meter)?;
        let verifier = self.verifier();
        let scorer = verifier.as_deref().map(|v| Scorer {
            verifier: v,
            aggregation: self.aggregation.unwrap_or_else(|| v.aggregation()),
        });
        let (outcome, ran, difficulty): (Outcome, Strategy, Option<f64>) = match strategy {
            Strategy::ComputeOptimal => {
                let policy = policy.ok_or_else(|| {
                    SearchError::Config("compute-optimal needs --policy (a sweep.json)".into())
                })?;
                let (o, s, d) = optimal::solve(&searcher, policy, budget, scorer).await?;
                (o, s, Some(d))
            }
            s => (run(s, &searcher, budget, scorer).await?, s, None),
        };
        Ok(SolveRecord {
            line: problem.line,
            question: problem.question.clone(),
            reference: problem.answer.clone(),
            answer: outcome.answer,
            correct: outcome.correct,
            strategy: ran,
            budget,
            verifier: self.verifier,
            difficulty,
            candidates: outcome.candidates,
            unparsed: outcome.unparsed,
            compute: meter.total(),
            solution: outcome.solution,
            tree: outcome.tree,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verifier_names_round_trip_through_serde_and_clap() {
        use clap::ValueEnum;
        let variants = VerifierKind::value_variants();
        assert_eq!(variants.len(), 10);
        for &v in variants {
            // Records and configurations name verifiers by these strings.
            assert_eq!(
                serde_json::to_value(v).ok(),
                Some(serde_json::json!(v.name()))
            );
            let back: VerifierKind =
                serde_json::from_value(serde_json::json!(v.name())).expect("name");
            assert_eq!(back, v);
            assert_eq!(VerifierKind::from_str(v.name(), false), Ok(v));
        }
        assert_eq!(
            verifier_names(),
            "checker, prm, orm, confidence, leco, dpo, likelihood, orm-model, prm-model, agreement"
        );
        assert!(VerifierKind::from_str("oracle", false).is_err());
    }
}

//! Verifiers give a score to each step of a solution (higher is better, in
//! [0, 1]); a solution's score aggregates its steps. All sit behind one
//! trait so every strategy can use any of them.

use async_trait::async_trait;
use qstar_core::{
    ChooseRequest, LanguageModel, ModelError, ScoreRequest, ScoreResponse, TokenLogprob,
    TopLogprob, Usage,
};
use serde::{Deserialize, Serialize};

use crate::compute::Caller;
use crate::searcher::Searcher;
use crate::tree::{NodeId, Tree};
use crate::SearchError;

/// How step scores become a solution score, as `--aggregation` and a
/// config file name it (`product` is also accepted as `prod`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
#[value(rename_all = "kebab-case")]
pub enum Aggregation {
    /// The weakest step.
    Min,
    /// The last step.
    Last,
    /// The product of the steps.
    #[serde(alias = "prod")]
    #[value(alias = "prod")]
    Product,
    /// The mean of the steps.
    Mean,
}

impl Aggregation {
    /// The solution score of these step scores (0 for none).
    pub fn apply(self, scores: &[f64]) -> f64 {
        if scores.is_empty() {
            return 0.0;
        }
        match self {
            Aggregation::Min => scores.iter().copied().fold(f64::INFINITY, f64::min),
            Aggregation::Last => scores[scores.len() - 1],
            Aggregation::Product => scores.iter().product(),
            Aggregation::Mean => scores.iter().sum::<f64>() / scores.len() as f64,
        }
    }
}

#[async_trait]
pub trait Verifier: Send + Sync {
    fn name(&self) -> String;

    /// How this verifier's step scores are best combined by default.
    fn aggregation(&self) -> Aggregation {
        Aggregation::Min
    }

    /// Scores every step on the paths to `leaves` that has no score yet.
    async fn score(
        &self,
        searcher: &Searcher<'_>,
        tree: &mut Tree,
        leaves: &[NodeId],
    ) -> Result<(), SearchError>;
}

/// Steps on the paths to `leaves` still without a score, each once.
fn unscored(tree: &Tree, leaves: &[NodeId]) -> Vec<NodeId> {
    let mut out: Vec<NodeId> = Vec::new();
    for &leaf in leaves {
        for n in tree.path(leaf) {
            if tree.node(n).score.is_none() && !out.contains(&n) {
                out.push(n);
            }
        }
    }
    out
}

/// The exact answer checker as a verifier: 1 for a finished, correct
/// solution, 0 for a wrong or unanswered one, 0.5 for a step whose solution
/// is not finished. An oracle: for evaluation and labels, used at test time
/// only when asked for by name.
pub struct CheckerVerifier;

#[async_trait]
impl Verifier for CheckerVerifier {
    fn name(&self) -> String {
        "checker".into()
    }

    fn aggregation(&self) -> Aggregation {
        Aggregation::Last
    }

    async fn score(
        &self,
        s: &Searcher<'_>,
        tree: &mut Tree,
        leaves: &[NodeId],
    ) -> Result<(), SearchError> {
        for &leaf in leaves {
            let node = tree.node(leaf);
            let value = match (&node.finished, &node.answer) {
                (true, Some(a)) => f64::from(u8::from(s.is_correct(a))),
                (true, None) => 0.0,
                (false, _) => 0.5,
            };
            tree.node_mut(leaf).score = Some(value);
        }
        Ok(())
    }
}

/// The model as a process (or outcome) reward model: the probability of
/// "Yes" when asked whether the last step so far is correct.
pub struct JudgeVerifier<'m> {
    pub model: &'m dyn LanguageModel,
    /// Judge only finished solutions (an outcome reward model); steps of
    /// unfinished ones are still judged when a search needs them.
    pub outcome_only: bool,
}

#[async_trait]
impl Verifier for JudgeVerifier<'_> {
    fn name(&self) -> String {
        if self.outcome_only { "orm" } else { "prm" }.into()
    }

    fn aggregation(&self) -> Aggregation {
        if self.outcome_only {
            Aggregation::Last
        } else {
            Aggregation::Min
        }
    }

    async fn score(
        &self,
        s: &Searcher<'_>,
        tree: &mut Tree,
        leaves: &[NodeId],
    ) -> Result<(), SearchError> {
        let nodes = if self.outcome_only {
            leaves
                .iter()
                .copied()
                .filter(|&l| tree.node(l).score.is_none())
                .collect()
        } else {
            unscored(tree, leaves)
        };
        let mut requests = Vec::with_capacity(nodes.len());
        for &n in &nodes {
            let prompt = s.config.format.frame(
                self.model,
                &s.config
                    .prompts
                    .step_judge(&s.problem.question, &tree.text(n))?,
                "",
            )?;
            requests.push(ChooseRequest {
                prompt,
                options: vec!["Yes".into(), "No".into()],
            });
        }
        let answers = s.choose(self.model, requests).await?;
        for (n, a) in nodes.into_iter().zip(answers) {
            tree.node_mut(n).score = a.options.first().map(|o| o.prob);
        }
        Ok(())
    }
}

/// Per-token log-probs of a step, or a clear error when the backend did not
/// report them.
fn step_tokens<'t>(
    tree: &'t Tree,
    n: NodeId,
    who: &str,
) -> Result<&'t [TokenLogprob], SearchError> {
    let node = tree.node(n);
    if node.tokens.is_empty() && !node.text.trim().is_empty() {
        return Err(SearchError::Config(format!(
            "the {who} verifier needs per-token log-probs with alternatives, and the backend reported none"
        )));
    }
    Ok(&node.tokens)
}

/// Marco-o1's token confidence: each token's probability renormalized among
/// the top alternatives at its position, averaged over the step.
pub struct ConfidenceVerifier;

/// Confidence of one token: exp(lp) / Σ exp(lp_k) over the top alternatives
/// (the chosen token is added when it is not among them, so it is counted
/// exactly once).
pub fn token_confidence(t: &TokenLogprob) -> f64 {
    let Some(lp) = t.logprob else { return 1.0 };
    let mut total: f64 = t.top.iter().map(|a| (a.logprob as f64).exp()).sum();
    if !t.top.iter().any(|a| is_same_token(a, t)) {
        total += (lp as f64).exp();
    }
    if total <= 0.0 {
        return 0.0;
    }
    (lp as f64).exp() / total
}

/// Whether an alternative is the chosen token itself. Ids decide; id 0 is
/// also what a server that sends no ids leaves (the OpenAI backend), so
/// there the text must agree too. A nonzero id is trusted over the text,
/// which a server may have cut at a stop string.
fn is_same_token(alternative: &TopLogprob, chosen: &TokenLogprob) -> bool {
    alternative.id == chosen.id && (chosen.id != 0 || alternative.text == chosen.text)
}

#[async_trait]
impl Verifier for ConfidenceVerifier {
    fn name(&self) -> String {
        "confidence".into()
    }

    fn aggregation(&self) -> Aggregation {
        Aggregation::Mean
    }

    async fn score(
        &self,
        _: &Searcher<'_>,
        tree: &mut Tree,
        leaves: &[NodeId],
    ) -> Result<(), SearchError> {
        for n in unscored(tree, leaves) {
            let tokens = step_tokens(tree, n, "confidence")?;
            let value = if tokens.is_empty() {
                1.0
            } else {
                tokens.iter().map(token_confidence).sum::<f64>() / tokens.len() as f64
            };
            tree.node_mut(n).score = Some(value);
        }
        Ok(())
    }
}

/// LeCo's step confidence: the average token probability of the step,
/// discounted by its divergence — the KL divergence of the step's
/// normalized token probabilities from uniform, which is large when a few
/// tokens are much less certain than the rest. Score = avg · exp(−KL).
pub struct LecoVerifier;

pub fn leco_confidence(tokens: &[TokenLogprob]) -> f64 {
    let probs: Vec<f64> = tokens
        .iter()
        .filter_map(|t| t.logprob)
        .map(|lp| (lp as f64).exp())
        .collect();
    if probs.is_empty() {
        return 1.0;
    }
    let n = probs.len() as f64;
    let sum: f64 = probs.iter().sum();
    let average = sum / n;
    let divergence: f64 = probs
        .iter()
        .map(|p| p / sum)
        .filter(|&q| q > 0.0)
        .map(|q| q * (q * n).ln())
        .sum();
    average * (-divergence).exp()
}

#[async_trait]
impl Verifier for LecoVerifier {
    fn name(&self) -> String {
        "leco".into()
    }

    async fn score(
        &self,
        _: &Searcher<'_>,
        tree: &mut Tree,
        leaves: &[NodeId],
    ) -> Result<(), SearchError> {
        for n in unscored(tree, leaves) {
            let value = leco_confidence(step_tokens(tree, n, "leco")?);
            tree.node_mut(n).score = Some(value);
        }
        Ok(())
    }
}

/// DPO's implicit reward per token, β·(log π − log π_ref): the policy's and
/// the reference's scores of the same text. "From r to Q*" reads it as the
/// advantage of each token. Both models must tokenize alike; a token either
/// model gave no log-prob (the first of an empty prompt) gets 0.
pub fn implicit_token_rewards(
    policy: &ScoreResponse,
    reference: &ScoreResponse,
    beta: f64,
) -> Result<Vec<f64>, String> {
    let same = policy.tokens.len() == reference.tokens.len()
        && policy
            .tokens
            .iter()
            .zip(&reference.tokens)
            .all(|(p, r)| p.id == r.id);
    if !same {
        return Err(
            "the policy and the reference tokenize the text differently: \
                    the implicit reward needs one tokenizer"
                .into(),
        );
    }
    Ok(policy
        .tokens
        .iter()
        .zip(&reference.tokens)
        .map(|(p, r)| match (p.logprob, r.logprob) {
            (Some(p), Some(r)) => beta * (f64::from(p) - f64::from(r)),
            _ => 0.0,
        })
        .collect())
}

/// What scoring each step with text among `nodes` asks of a model: the
/// step as the continuation of the prompt and the steps before it. Empty
/// steps (a root, an empty finish) are left out.
fn step_requests(s: &Searcher<'_>, tree: &Tree, nodes: &[NodeId]) -> Vec<ScoreRequest> {
    nodes
        .iter()
        .filter(|&&n| !tree.node(n).text.is_empty())
        .map(|&n| {
            let parent = tree.node(n).parent.unwrap_or(Tree::ROOT);
            ScoreRequest {
                prompt: s.prompt.clone() + &tree.text(parent),
                continuation: tree.node(n).text.clone(),
            }
        })
        .collect()
}

/// The implicit reward of a DPO policy ("From r to Q*"): β Σ (log π − log
/// π_ref) over the step's tokens, squashed with a sigmoid into (0, 1).
/// Both models score the same text; with a reference of another tokenizer
/// the sums are still of the same text, but per-token readings
/// ([`implicit_token_rewards`]) are refused.
pub struct DpoVerifier<'m> {
    pub policy: &'m dyn LanguageModel,
    pub reference: &'m dyn LanguageModel,
    /// The reference's size, for its FLOPs (`None`: unknown).
    pub reference_parameters: Option<u64>,
    pub beta: f64,
}

#[async_trait]
impl Verifier for DpoVerifier<'_> {
    fn name(&self) -> String {
        "dpo".into()
    }

    fn aggregation(&self) -> Aggregation {
        Aggregation::Mean
    }

    async fn score(
        &self,
        s: &Searcher<'_>,
        tree: &mut Tree,
        leaves: &[NodeId],
    ) -> Result<(), SearchError> {
        let nodes = unscored(tree, leaves);
        let requests = step_requests(s, tree, &nodes);
        let policy = s.score(self.policy, requests.clone()).await?;
        let reference = s
            .score_on(self.reference, requests, self.reference_parameters)
            .await?;
        let mut margins = policy
            .iter()
            .zip(&reference)
            .map(|(p, r)| p.total_logprob - r.total_logprob);
        for n in nodes {
            let margin = if tree.node(n).text.is_empty() {
                0.0
            } else {
                margins.next().ok_or_else(|| {
                    SearchError::Model(ModelError::Backend {
                        backend: self.reference.backend_name(),
                        message: "a score response is missing".into(),
                    })
                })?
            };
            tree.node_mut(n).score = Some(1.0 / (1.0 + (-self.beta * margin).exp()));
        }
        Ok(())
    }
}

/// The policy's own probability of each step, exp(Σ log π) over its
/// tokens, scored afresh (not the sampling distribution's log-probs, which
/// a temperature reshapes). With the product of the steps a path's score
/// is the probability of its whole text, so beam search on it is beam
/// search on the likelihood, as "From r to Q*" runs it on a DPO policy.
pub struct LikelihoodVerifier<'m> {
    pub model: &'m dyn LanguageModel,
}

#[async_trait]
impl Verifier for LikelihoodVerifier<'_> {
    fn name(&self) -> String {
        "likelihood".into()
    }

    fn aggregation(&self) -> Aggregation {
        Aggregation::Product
    }

    async fn score(
        &self,
        s: &Searcher<'_>,
        tree: &mut Tree,
        leaves: &[NodeId],
    ) -> Result<(), SearchError> {
        let nodes: Vec<NodeId> = unscored(tree, leaves)
            .into_iter()
            .filter(|&n| !tree.node(n).text.is_empty())
            .collect();
        let scored = s.score(self.model, step_requests(s, tree, &nodes)).await?;
        if scored.len() != nodes.len() {
            return Err(SearchError::Model(ModelError::Backend {
                backend: self.model.backend_name(),
                message: "a score response is missing".into(),
            }));
        }
        for (n, r) in nodes.into_iter().zip(scored) {
            tree.node_mut(n).score = Some(r.total_logprob.exp());
        }
        // An empty step leaves the probability as it is.
        for n in unscored(tree, leaves) {
            tree.node_mut(n).score = Some(1.0);
        }
        Ok(())
    }
}

/// A trained reward model that scores whole replies to a user turn (an
/// outcome reward model). Behind a trait so search does not depend on how
/// the model is built or where its states come from.
#[async_trait]
pub trait SolutionRewarder: Send + Sync {
    /// One reward per reply after the user turn (higher is better, any
    /// real number), and the tokens its forward passes took.
    async fn rewards(
        &self,
        user_turn: &str,
        replies: &[String],
    ) -> Result<(Vec<f64>, Usage), String>;

    /// The parameters its forward passes run through, for their FLOPs
    /// (`None`: unknown).
    fn parameters(&self) -> Option<u64>;
}

/// An outcome reward model as a verifier: each leaf it is asked about is
/// scored as a whole solution (the text of its path; a partial one as if it
/// ended there), σ(r) so that scores lie in (0, 1); a solution's score is
/// its last step's. Steps above the leaves are not scored: the model never
/// saw steps alone.
pub struct RewardModelVerifier<'m> {
    pub model: Option<&'m dyn SolutionRewarder>,
}

#[async_trait]
impl Verifier for RewardModelVerifier<'_> {
    fn name(&self) -> String {
        "orm-model".into()
    }

    fn aggregation(&self) -> Aggregation {
        Aggregation::Last
    }

    async fn score(
        &self,
        s: &Searcher<'_>,
        tree: &mut Tree,
        leaves: &[NodeId],
    ) -> Result<(), SearchError> {
        let model = self.model.ok_or_else(|| {
            SearchError::Config(
                "the orm-model verifier needs a trained reward model: --verifier orm-model:DIR"
                    .into(),
            )
        })?;
        let mut nodes: Vec<NodeId> = Vec::new();
        for &n in leaves {
            if tree.node(n).score.is_none() && !nodes.contains(&n) {
                nodes.push(n);
            }
        }
        if nodes.is_empty() {
            return Ok(());
        }
        let replies: Vec<String> = nodes.iter().map(|&n| tree.text(n)).collect();
        let rewards = model.rewards(&s.user_turn, &replies).await;
        set_logit_scores(s, tree, nodes, rewards, model.parameters(), "reward model")
    }
}

/// Scores `nodes` with σ of a trained model's logits, in order; the
/// model's error, or a count that does not match, fails the search.
fn set_logit_scores(
    s: &Searcher<'_>,
    tree: &mut Tree,
    nodes: Vec<NodeId>,
    logits: Result<(Vec<f64>, Usage), String>,
    parameters: Option<u64>,
    backend: &str,
) -> Result<(), SearchError> {
    let failed = |message| {
        SearchError::Model(ModelError::Backend {
            backend: backend.into(),
            message,
        })
    };
    let (logits, usage) = logits.map_err(failed)?;
    if logits.len() != nodes.len() {
        return Err(failed(format!(
            "{} scores for {} steps",
            logits.len(),
            nodes.len()
        )));
    }
    // A trained model's forward passes are verifier work: one call, its
    // prompt tokens (computed or reused from its caches), and FLOPs on the
    // parameters it runs through, not the policy's.
    s.meter
        .record_model(Caller::Verifier, 1, &usage, parameters);
    for (n, z) in nodes.into_iter().zip(logits) {
        tree.node_mut(n).score = Some(1.0 / (1.0 + (-z).exp()));
    }
    Ok(())
}

/// A trained process reward model: the logit of the last step of each
/// partial solution (the steps so far, exactly as search wrote them) after
/// the user turn. The model frames the user turn itself, as it was trained,
/// so the policy's own prompt format does not reach it.
#[async_trait]
pub trait StepRewarder: Send + Sync {
    /// The logits, and the tokens their forward passes took.
    async fn step_logits(
        &self,
        user_turn: &str,
        solutions: &[String],
    ) -> Result<(Vec<f64>, Usage), String>;

    /// The parameters its forward passes run through, for their FLOPs
    /// (`None`: unknown).
    fn parameters(&self) -> Option<u64>;
}

/// A process reward model as a verifier: each step's score is σ(logit) at
/// its end; by default a solution is as good as its weakest step.
pub struct PrmModelVerifier<'m> {
    pub model: Option<&'m dyn StepRewarder>,
}

#[async_trait]
impl Verifier for PrmModelVerifier<'_> {
    fn name(&self) -> String {
        "prm-model".into()
    }

    fn aggregation(&self) -> Aggregation {
        Aggregation::Min
    }

    async fn score(
        &self,
        s: &Searcher<'_>,
        tree: &mut Tree,
        leaves: &[NodeId],
    ) -> Result<(), SearchError> {
        let model = self.model.ok_or_else(|| {
            SearchError::Config(
                "the prm-model verifier needs a trained process reward model: \
                 --verifier prm-model:DIR"
                    .into(),
            )
        })?;
        let nodes = unscored(tree, leaves);
        if nodes.is_empty() {
            return Ok(());
        }
        let solutions: Vec<String> = nodes.iter().map(|&n| tree.text(n)).collect();
        let logits = model.step_logits(&s.user_turn, &solutions).await;
        set_logit_scores(
            s,
            tree,
            nodes,
            logits,
            model.parameters(),
            "process reward model",
        )
    }
}

/// Self-consistency as a verifier: the share of finished solutions in the
/// tree that reach the same answer (0 for an unanswered or unfinished one).
pub struct AgreementVerifier;

#[async_trait]
impl Verifier for AgreementVerifier {
    fn name(&self) -> String {
        "agreement".into()
    }

    fn aggregation(&self) -> Aggregation {
        Aggregation::Last
    }

    async fn score(
        &self,
        _: &Searcher<'_>,
        tree: &mut Tree,
        leaves: &[NodeId],
    ) -> Result<(), SearchError> {
        let answers: Vec<Option<String>> = tree
            .finished()
            .into_iter()
            .map(|n| tree.node(n).answer.clone())
            .collect();
        let total = answers.len().max(1) as f64;
        for &leaf in leaves {
            let node = tree.node(leaf);
            let value = match (&node.finished, &node.answer) {
                (true, Some(a)) => {
                    answers.iter().filter(|b| b.as_ref() == Some(a)).count() as f64 / total
                }
                _ => 0.0,
            };
            // Agreement changes as solutions arrive, so it is always redone.
            tree.node_mut(leaf).score = Some(value);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aggregation_names_round_trip_through_serde_and_clap() {
        use clap::ValueEnum;
        let expected = [
            (Aggregation::Min, "min"),
            (Aggregation::Last, "last"),
            (Aggregation::Product, "product"),
            (Aggregation::Mean, "mean"),
        ];
        assert_eq!(Aggregation::value_variants().len(), expected.len());
        for (a, name) in expected {
            // Job keys hold the aggregation by this name.
            assert_eq!(serde_json::to_value(a).ok(), Some(serde_json::json!(name)));
            let back: Aggregation = serde_json::from_value(serde_json::json!(name)).expect(name);
            assert_eq!(back, a);
            assert_eq!(Aggregation::from_str(name, false), Ok(a));
        }
        // The short spelling the flag has always taken.
        assert_eq!(
            Aggregation::from_str("prod", false),
            Ok(Aggregation::Product)
        );
        let prod: Aggregation = serde_json::from_value(serde_json::json!("prod")).expect("prod");
        assert_eq!(prod, Aggregation::Product);
        let err = serde_json::from_value::<Aggregation>(serde_json::json!("max"))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("max") && err.contains("product"), "{err}");
        assert!(Aggregation::from_str("max", false).is_err());
    }

    fn token(id: u32, lp: f32, top: &[(u32, f32)]) -> TokenLogprob {
        TokenLogprob {
            id,
            rank: None,
            text: String::new(),
            logprob: Some(lp),
            top: top
                .iter()
                .map(|&(id, logprob)| TopLogprob {
                    id,
                    text: String::new(),
                    logprob,
                })
                .collect(),
        }
    }

    #[test]
    fn aggregations() {
        let s = [0.9, 0.5, 0.8];
        assert_eq!(Aggregation::Min.apply(&s), 0.5);
        assert_eq!(Aggregation::Last.apply(&s), 0.8);
        assert!((Aggregation::Product.apply(&s) - 0.36).abs() < 1e-12);
        assert!((Aggregation::Mean.apply(&s) - 2.2 / 3.0).abs() < 1e-12);
        assert_eq!(Aggregation::Min.apply(&[]), 0.0);
    }

    #[test]
    fn token_confidence_renormalizes_among_alternatives() {
        let half = 0.5f32.ln();
        let quarter = 0.25f32.ln();
        // Chosen 0.5 among alternatives 0.5 + 0.25: 2/3.
        let c = token_confidence(&token(1, half, &[(1, half), (2, quarter)]));
        assert!((c - 2.0 / 3.0).abs() < 1e-6);
        // A chosen token outside the list is counted in the total.
        let c = token_confidence(&token(9, quarter, &[(1, half)]));
        assert!((c - 1.0 / 3.0).abs() < 1e-6);
    }

    /// Servers without token ids leave every id 0: the text tells whether
    /// the chosen token is among the alternatives.
    #[test]
    fn token_confidence_without_ids_matches_by_text() {
        let (half, quarter) = (0.5f32.ln(), 0.25f32.ln());
        let text = |id: u32, text: &str, lp: f32, top: &[(u32, &str, f32)]| TokenLogprob {
            id,
            rank: None,
            text: text.into(),
            logprob: Some(lp),
            top: top
                .iter()
                .map(|&(id, t, logprob)| TopLogprob {
                    id,
                    text: t.into(),
                    logprob,
                })
                .collect(),
        };
        // Among the alternatives: counted once, 0.5 / 0.75.
        let c = token_confidence(&text(0, " a", half, &[(0, " a", half), (0, " b", quarter)]));
        assert!((c - 2.0 / 3.0).abs() < 1e-6, "{c}");
        // Not among them: added, 0.25 / 0.75.
        let c = token_confidence(&text(0, " c", quarter, &[(0, " a", half)]));
        assert!((c - 1.0 / 3.0).abs() < 1e-6, "{c}");
        // A known id wins over a text the server cut at a stop string.
        let c = token_confidence(&text(7, "", half, &[(7, "\n", half), (8, "\n\n", quarter)]));
        assert!((c - 2.0 / 3.0).abs() < 1e-6, "{c}");
    }

    #[test]
    fn leco_prefers_even_certainty() {
        let steady: Vec<_> = (0..4).map(|_| token(0, 0.8f32.ln(), &[])).collect();
        let uneven = vec![
            token(0, 0.99f32.ln(), &[]),
            token(0, 0.99f32.ln(), &[]),
            token(0, 0.99f32.ln(), &[]),
            token(0, 0.23f32.ln(), &[]),
        ];
        // Same average probability (0.8), but one weak token.
        assert!((leco_confidence(&steady) - 0.8).abs() < 1e-6);
        assert!(leco_confidence(&uneven) < leco_confidence(&steady));
    }
}

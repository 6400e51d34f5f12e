//! Properties of the search algorithms, checked on a small deterministic
//! model of our own whose solutions walk a known tree with known rewards.
//!
//! The toy model writes `DEPTH` steps; each step picks a letter a, b or c
//! (uniformly, seeded), and the final line is "The answer is K" where K is
//! the number of a's so far. The reference answer is `DEPTH`, so only the
//! all-a path is right. The toy verifier gives a-steps 0.9, b-steps 0.3,
//! c-steps 0.1, which makes the best path known in advance.

use async_trait::async_trait;
use qstar_core::{
    Capabilities, ChooseRequest, ChooseResponse, Completion, FinishReason, GenerateRequest,
    GenerateResponse, LanguageModel, Message, ModelError, ScoreRequest, ScoreResponse, SplitMix,
    TokenLogprob, TopLogprob, Usage,
};
use qstar_search::strategy::{allot, mcts, rebase, stepwise_beam};
use qstar_search::{
    run, Meter, NodeId, Scorer, SearchConfig, SearchError, Searcher, Strategy, Tree, Verifier,
};
use qstar_tasks::{Problem, SerialKind, Task};

const DEPTH: usize = 3;
const PROMPT: &str = "Q:toy|";

struct ToyModel;

fn step_token(letter: char) -> TokenLogprob {
    let third = (1f32 / 3.0).ln();
    TokenLogprob {
        id: letter as u32,
        rank: None,
        text: String::new(),
        logprob: Some(third),
        top: "abc"
            .chars()
            .map(|c| TopLogprob {
                id: c as u32,
                text: c.to_string(),
                logprob: third,
            })
            .collect(),
    }
}

impl ToyModel {
    fn complete(prompt: &str, params: &qstar_core::SamplingParams, sample: u64) -> Completion {
        let mut rng = SplitMix::new(params.seed.wrapping_add(sample));
        let so_far = prompt.strip_prefix(PROMPT).unwrap_or(prompt);
        let mut depth = so_far.matches("\n\n").count();
        let mut a_count = so_far.matches('a').count();
        let stepwise = params.stop.iter().any(|s| s == "\n\n");
        let mut text = String::new();
        let mut tokens = Vec::new();
        loop {
            if depth == DEPTH {
                text.push_str(&format!("The answer is {a_count}"));
                tokens.push(step_token('z'));
                return Completion {
                    text,
                    token_ids: vec![],
                    finish_reason: FinishReason::Eos,
                    logprobs: Some(tokens),
                };
            }
            let letter = if params.temperature == 0.0 {
                'a'
            } else {
                ['a', 'b', 'c'][rng.below(3) as usize]
            };
            a_count += usize::from(letter == 'a');
            text.push_str(&format!("step {letter}"));
            tokens.push(step_token(letter));
            depth += 1;
            if stepwise {
                return Completion {
                    text,
                    token_ids: vec![],
                    finish_reason: FinishReason::Stop,
                    logprobs: Some(tokens),
                };
            }
            text.push_str("\n\n");
        }
    }
}

#[async_trait]
impl LanguageModel for ToyModel {
    fn backend_name(&self) -> String {
        "toy".into()
    }
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            generate: true,
            score: false,
            choose: false,
            max_top_logprobs: 3,
            chat_template: true,
        }
    }
    async fn generate(
        &self,
        requests: Vec<GenerateRequest>,
    ) -> Result<Vec<GenerateResponse>, ModelError> {
        Ok(requests
            .iter()
            .map(|r| {
                let completions: Vec<Completion> = (0..r.n as u64)
                    .map(|i| ToyModel::complete(&r.prompt, &r.params, i))
                    .collect();
                let generated = completions
                    .iter()
                    .map(|c| c.logprobs.as_ref().map_or(0, Vec::len))
                    .sum();
                GenerateResponse {
                    completions,
                    usage: Usage {
                        prompt_tokens: r.n,
                        prompt_tokens_reused: 0,
                        completion_tokens: generated,
                    },
                }
            })
            .collect())
    }
    async fn score(&self, _: Vec<ScoreRequest>) -> Result<Vec<ScoreResponse>, ModelError> {
        Err(ModelError::InvalidRequest("toy".into()))
    }
    async fn choose(&self, _: Vec<ChooseRequest>) -> Result<Vec<ChooseResponse>, ModelError> {
        Err(ModelError::InvalidRequest("toy".into()))
    }
    fn render_chat(&self, _: &[Message], _: bool) -> Result<String, ModelError> {
        Ok(PROMPT.into())
    }
}

/// Known rewards: a-steps 0.9, b-steps 0.3, c-steps 0.1; a final step
/// scores 1 when right and 0 when wrong.
struct ToyVerifier;

fn reward(text: &str) -> f64 {
    if let Some(k) = text.strip_prefix("The answer is ") {
        return if k == DEPTH.to_string() { 1.0 } else { 0.0 };
    }
    if text.contains("step a") {
        0.9
    } else if text.contains("step b") {
        0.3
    } else {
        0.1
    }
}

#[async_trait]
impl Verifier for ToyVerifier {
    fn name(&self) -> String {
        "toy".into()
    }
    async fn score(
        &self,
        _: &Searcher<'_>,
        tree: &mut Tree,
        leaves: &[NodeId],
    ) -> Result<(), SearchError> {
        for &leaf in leaves {
            for n in tree.path(leaf) {
                let value = reward(tree.node(n).text.trim());
                tree.node_mut(n).score = Some(value);
            }
        }
        Ok(())
    }
}

fn problem() -> Problem {
    Problem {
        line: 1,
        question: "toy".into(),
        answer: DEPTH.to_string(),
    }
}

fn config() -> SearchConfig {
    SearchConfig {
        beam_width: 3,
        max_steps: DEPTH + 2,
        ..SearchConfig::default()
    }
}

const TASK: Task = Task::Serial(SerialKind::ModularAddition);

fn depth_of(tree: &Tree, n: NodeId) -> usize {
    tree.depth(n)
}

#[tokio::test]
async fn beam_search_keeps_the_best_prefixes_at_every_depth() {
    let (p, c, meter) = (problem(), config(), Meter::new(0));
    let s = Searcher::new(&ToyModel, TASK, &p, &c, &meter).unwrap();
    let scorer = Scorer {
        verifier: &ToyVerifier,
        aggregation: qstar_search::Aggregation::Min,
    };
    let mut tree = Tree::new();
    // N = 6, M = 3: keep 2 prefixes, expand each 3 ways.
    stepwise_beam(&s, &mut tree, scorer, 1, 2, 3, 0)
        .await
        .unwrap();
    for depth in 1..DEPTH {
        let level: Vec<NodeId> = (1..tree.nodes.len())
            .filter(|&n| depth_of(&tree, n) == depth && !tree.node(n).finished)
            .collect();
        let kept: Vec<NodeId> = level
            .iter()
            .copied()
            .filter(|&n| !tree.node(n).children.is_empty())
            .collect();
        assert_eq!(kept.len(), 2.min(level.len()), "depth {depth}");
        let path_score = |n: NodeId| {
            tree.step_scores(n)
                .into_iter()
                .fold(f64::INFINITY, f64::min)
        };
        let worst_kept = kept
            .iter()
            .map(|&n| path_score(n))
            .fold(f64::INFINITY, f64::min);
        for &n in &level {
            if !kept.contains(&n) {
                assert!(
                    path_score(n) <= worst_kept,
                    "depth {depth}: dropped a better prefix"
                );
            }
            // Every kept prefix was expanded exactly M ways.
            if kept.contains(&n) {
                assert_eq!(tree.node(n).children.len(), 3);
            }
        }
    }
    // The known best path is found and chosen.
    let outcome = run(Strategy::Beam, &s, 6, Some(scorer)).await.unwrap();
    assert!(outcome.correct, "{}", outcome.solution);
}

#[tokio::test]
async fn mcts_visits_concentrate_on_the_best_branch() {
    let (p, c, meter) = (problem(), config(), Meter::new(0));
    let s = Searcher::new(&ToyModel, TASK, &p, &c, &meter).unwrap();
    let scorer = Scorer {
        verifier: &ToyVerifier,
        aggregation: qstar_search::Aggregation::Min,
    };
    let mut tree = Tree::new();
    let chosen = mcts(&s, &mut tree, scorer, 40).await.unwrap().unwrap();
    let root = tree.node(Tree::ROOT);
    let most = root
        .children
        .iter()
        .copied()
        .max_by_key(|&c| tree.node(c).visits)
        .unwrap();
    assert_eq!(
        tree.node(most).text.trim(),
        "step a",
        "most visited root child"
    );
    // Visits of a-children exceed those of every other child.
    let visits = |letter: &str| -> u32 {
        root.children
            .iter()
            .filter(|&&c| tree.node(c).text.trim() == letter)
            .map(|&c| tree.node(c).visits)
            .sum()
    };
    assert!(visits("step a") > visits("step b") + visits("step c"));
    assert!(root.visits >= 40);
    assert_eq!(tree.node(chosen).answer.as_deref(), Some("3"));
}

#[tokio::test]
async fn rebase_gives_more_children_to_better_nodes() {
    let (p, c, meter) = (problem(), config(), Meter::new(0));
    let s = Searcher::new(&ToyModel, TASK, &p, &c, &meter).unwrap();
    let scorer = Scorer {
        verifier: &ToyVerifier,
        aggregation: qstar_search::Aggregation::Min,
    };
    let mut tree = Tree::new();
    rebase(&s, &mut tree, scorer, 8).await.unwrap();
    let first: Vec<NodeId> = tree.node(Tree::ROOT).children.clone();
    assert_eq!(first.len(), 8);
    let children = |letter: &str| -> Vec<usize> {
        first
            .iter()
            .filter(|&&c| tree.node(c).text.trim() == letter)
            .map(|&c| tree.node(c).children.len())
            .collect()
    };
    let (a, others): (Vec<usize>, Vec<usize>) = (
        children("step a"),
        [children("step b"), children("step c")].concat(),
    );
    assert!(!a.is_empty());
    let min_a = a.iter().copied().min().unwrap();
    assert!(
        others.iter().all(|&o| o <= min_a),
        "a: {a:?}, others: {others:?}"
    );
    // The width budget is respected: no more finished solutions than N.
    assert!(tree.finished().len() <= 8);
    assert_eq!(allot(&[0.9, 0.3], 0.2, 8).iter().sum::<usize>(), 8);
}

#[tokio::test]
async fn every_strategy_runs_and_meters_its_work() {
    let (p, c) = (problem(), config());
    let scorer = Scorer {
        verifier: &ToyVerifier,
        aggregation: qstar_search::Aggregation::Min,
    };
    for &strategy in Strategy::all() {
        let name = strategy.name();
        if strategy == Strategy::ComputeOptimal {
            continue;
        }
        let meter = Meter::new(10);
        let s = Searcher::new(&ToyModel, TASK, &p, &c, &meter).unwrap();
        let outcome = run(strategy, &s, 12, Some(scorer)).await.unwrap();
        let spent = meter.total();
        assert!(
            spent.tokens_generated > 0 && spent.model_calls > 0,
            "{name}"
        );
        assert!(outcome.candidates >= 1, "{name}");
        assert_eq!(
            spent.flops,
            Some(2.0 * 10.0 * (spent.tokens_generated + spent.prompt_tokens_computed) as f64)
        );
        // The greedy toy path is all a's: right.
        if strategy == Strategy::Greedy {
            assert!(outcome.correct);
        }
        // Verifier-guided searches find the known best path.
        if matches!(strategy, Strategy::Beam | Strategy::Mcts) {
            assert!(outcome.correct, "{name}: {}", outcome.solution);
        }
        // Best-of-N picks a solution no other candidate beats.
        if strategy == Strategy::BestOfN {
            let t = &outcome.tree;
            let score = |n: NodeId| t.step_scores(n).into_iter().fold(f64::INFINITY, f64::min);
            let chosen = t
                .finished()
                .into_iter()
                .find(|&n| t.text(n) == outcome.solution)
                .unwrap();
            assert!(t.finished().into_iter().all(|n| score(n) <= score(chosen)));
        }
        let json = serde_json::to_string(&outcome.tree).unwrap();
        assert!(json.contains("\"parent\""), "{name}");
    }
    // Strategies that rank need a verifier, and say so.
    let meter = Meter::new(0);
    let s = Searcher::new(&ToyModel, TASK, &p, &c, &meter).unwrap();
    let err = run(Strategy::Beam, &s, 4, None).await.unwrap_err();
    assert!(err.to_string().contains("needs a verifier"), "{err}");
}

#[tokio::test]
async fn a_token_budget_stops_the_search_early() {
    let p = problem();
    let c = SearchConfig {
        token_budget: Some(8),
        ..config()
    };
    let scorer = Scorer {
        verifier: &ToyVerifier,
        aggregation: qstar_search::Aggregation::Min,
    };
    // A whole toy solution is 4 tokens; samples come in rounds of 4, so the
    // first round (16 tokens) spends the budget of 8.
    let meter = Meter::new(0);
    let s = Searcher::new(&ToyModel, TASK, &p, &c, &meter).unwrap();
    let outcome = run(Strategy::Majority, &s, 16, None).await.unwrap();
    assert_eq!(outcome.candidates, 4);
    assert_eq!(meter.total().tokens_generated, 16);
    // Step-wise searches stop expanding once the budget is spent.
    for strategy in [Strategy::Beam, Strategy::Rebase, Strategy::Mcts] {
        let meter = Meter::new(0);
        let s = Searcher::new(&ToyModel, TASK, &p, &c, &meter).unwrap();
        run(strategy, &s, 16, Some(scorer)).await.unwrap();
        let unlimited = Meter::new(0);
        let free = config();
        let s = Searcher::new(&ToyModel, TASK, &p, &free, &unlimited).unwrap();
        run(strategy, &s, 16, Some(scorer)).await.unwrap();
        assert!(
            meter.total().tokens_generated < unlimited.total().tokens_generated,
            "{strategy:?}"
        );
    }
}

/// The toy policy that can also score: each continuation character is a
/// token of log-prob `logprob`, and every scored character is a computed
/// prompt token.
struct ScoringToy {
    logprob: f32,
}

#[async_trait]
impl LanguageModel for ScoringToy {
    fn backend_name(&self) -> String {
        "scoring toy".into()
    }
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            score: true,
            ..ToyModel.capabilities()
        }
    }
    async fn generate(
        &self,
        requests: Vec<GenerateRequest>,
    ) -> Result<Vec<GenerateResponse>, ModelError> {
        ToyModel.generate(requests).await
    }
    async fn score(&self, requests: Vec<ScoreRequest>) -> Result<Vec<ScoreResponse>, ModelError> {
        Ok(requests
            .iter()
            .map(|r| {
                let tokens: Vec<TokenLogprob> = r
                    .continuation
                    .chars()
                    .map(|c| TokenLogprob {
                        id: c as u32,
                        text: c.to_string(),
                        logprob: Some(self.logprob),
                        rank: None,
                        top: Vec::new(),
                    })
                    .collect();
                ScoreResponse {
                    total_logprob: self.logprob as f64 * tokens.len() as f64,
                    usage: Usage {
                        prompt_tokens: r.prompt.chars().count() + tokens.len(),
                        prompt_tokens_reused: 0,
                        completion_tokens: 0,
                    },
                    tokens,
                }
            })
            .collect())
    }
    async fn choose(&self, _: Vec<ChooseRequest>) -> Result<Vec<ChooseResponse>, ModelError> {
        Err(ModelError::InvalidRequest("toy".into()))
    }
    fn render_chat(&self, _: &[Message], _: bool) -> Result<String, ModelError> {
        Ok(PROMPT.into())
    }
}

#[tokio::test]
async fn the_dpo_reference_is_metered_on_its_own_size() {
    let (p, c) = (problem(), config());
    let policy = ScoringToy { logprob: -0.5 };
    let reference = ScoringToy { logprob: -1.0 };
    // The checker scores nothing: what generation alone costs.
    let unscored = Meter::new(10);
    let s = Searcher::new(&policy, TASK, &p, &c, &unscored).unwrap();
    let checker = qstar_search::verifier::CheckerVerifier;
    let scorer = Scorer {
        verifier: &checker,
        aggregation: qstar_search::Aggregation::Last,
    };
    run(Strategy::BestOfN, &s, 4, Some(scorer)).await.unwrap();
    let generation = unscored.total();

    let meter = Meter::new(10);
    let s = Searcher::new(&policy, TASK, &p, &c, &meter).unwrap();
    let dpo = qstar_search::verifier::DpoVerifier {
        policy: &policy,
        reference: &reference,
        reference_parameters: Some(1000),
        beta: 1.0,
    };
    let scorer = Scorer {
        verifier: &dpo,
        aggregation: qstar_search::Aggregation::Last,
    };
    run(Strategy::BestOfN, &s, 4, Some(scorer)).await.unwrap();
    let spent = meter.total();
    assert_eq!(spent.tokens_generated, generation.tokens_generated);
    // Both models score the same texts: half the extra prompt tokens each.
    let extra = spent.prompt_tokens_computed - generation.prompt_tokens_computed;
    assert!(
        extra > 0 && extra.is_multiple_of(2),
        "{spent:?} {generation:?}"
    );
    let each = (extra / 2) as f64;
    let flops = generation.flops.unwrap() + 2.0 * 10.0 * each + 2.0 * 1000.0 * each;
    assert_eq!(spent.flops, Some(flops), "{spent:?}");
    // A reference of unknown size makes the total unknown.
    let meter = Meter::new(10);
    let s = Searcher::new(&policy, TASK, &p, &c, &meter).unwrap();
    let dpo = qstar_search::verifier::DpoVerifier {
        reference_parameters: None,
        ..dpo
    };
    let scorer = Scorer {
        verifier: &dpo,
        aggregation: qstar_search::Aggregation::Last,
    };
    run(Strategy::BestOfN, &s, 4, Some(scorer)).await.unwrap();
    assert_eq!(meter.total().flops, None);
}

//! What every strategy needs: the question's prompt, step-wise and whole
//! generation that grows a [`Tree`], metered model calls, and final answers.

use qstar_core::{
    mix, ChooseRequest, ChooseResponse, Completion, FinishReason, GenerateRequest, LanguageModel,
    PromptFormat, SamplingParams, ScoreRequest, ScoreResponse, TokenLogprob,
};
use qstar_tasks::{Problem, Task};
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::compute::{Caller, Meter};
use crate::prompts::Prompts;
use crate::tree::{NodeId, Tree};
use crate::SearchError;

/// Settings shared by the strategies. Defaults suit the small default model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SearchConfig {
    pub seed: u64,
    pub format: PromptFormat,
    /// Sampling temperature of every strategy but greedy.
    pub temperature: f32,
    pub top_p: f32,
    /// Steps end at this string.
    pub step_delimiter: String,
    /// Longest step, in tokens.
    pub max_step_tokens: usize,
    /// Longest solution: steps, and tokens when sampled whole.
    pub max_steps: usize,
    pub max_tokens: usize,
    /// Beam width M: beam search keeps N/M prefixes and expands each M ways;
    /// DVTS runs N/M subtrees.
    pub beam_width: usize,
    /// Lookahead: steps rolled out (greedily) to score a candidate.
    pub lookahead: usize,
    /// MCTS: children sampled per expansion and exploration constant.
    pub mcts_children: usize,
    pub c_puct: f64,
    /// MCTS actions of this many tokens (Marco-o1 mini-steps) instead of
    /// delimited steps.
    pub mini_step_tokens: Option<usize>,
    /// MCTS: when a node's value is below 0.5, one of its children starts
    /// with a reflection prompt.
    pub reflection: bool,
    /// MCTS: value a new node by a greedy rollout to the end instead of
    /// by the verifier's score of the node itself.
    pub mcts_rollout: bool,
    /// REBASE: softmax temperature over node rewards.
    pub rebase_temperature: f64,
    /// Sequential revision: parallel chains (the budget is split among them).
    pub revision_chains: usize,
    /// Alternatives reported per generated token (confidence verifiers).
    pub top_logprobs: usize,
    /// Stop growing a search once this many tokens were generated for the
    /// question (N then only caps it), so strategies meet at equal compute.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_budget: Option<usize>,
    /// The prompt templates (built in unless replaced from a directory);
    /// never part of a serialized configuration.
    #[serde(skip)]
    pub prompts: Prompts,
}

impl Default for SearchConfig {
    fn default() -> Self {
        SearchConfig {
            seed: 0,
            format: PromptFormat::Chat,
            temperature: 0.7,
            top_p: 0.95,
            step_delimiter: "\n\n".into(),
            max_step_tokens: 96,
            max_steps: 8,
            max_tokens: 320,
            beam_width: 4,
            lookahead: 1,
            mcts_children: 3,
            c_puct: 1.0,
            mini_step_tokens: None,
            reflection: false,
            mcts_rollout: false,
            rebase_temperature: 0.2,
            revision_chains: 1,
            top_logprobs: 5,
            token_budget: None,
            prompts: Prompts::builtin(),
        }
    }
}

/// One question being searched.
pub struct Searcher<'a> {
    pub model: &'a dyn LanguageModel,
    pub task: Task,
    pub problem: &'a Problem,
    pub config: &'a SearchConfig,
    pub meter: &'a Meter,
    /// The prompt every solution continues.
    pub prompt: String,
    /// The question and the task's instruction: the user's turn the prompt
    /// frames, which a reward model reads with each solution.
    pub user_turn: String,
    /// Distinct seeds for every generation call of this question.
    calls: AtomicU64,
}

/// A generation request for one step under `parent`.
pub struct StepRequest {
    pub parent: NodeId,
    pub n: usize,
    pub greedy: bool,
    /// Text the step starts with (a reflection prompt), part of the step.
    pub forced_prefix: String,
}

impl<'a> Searcher<'a> {
    pub fn new(
        model: &'a dyn LanguageModel,
        task: Task,
        problem: &'a Problem,
        config: &'a SearchConfig,
        meter: &'a Meter,
    ) -> Result<Self, SearchError> {
        config.format.check(model, "search")?;
        let user_turn = task.user_turn(&problem.question);
        let prompt = config.format.frame(model, &user_turn, "")?;
        Ok(Searcher {
            model,
            task,
            problem,
            config,
            meter,
            prompt,
            user_turn,
            calls: AtomicU64::new(0),
        })
    }

    fn next_seed(&self) -> u64 {
        let call = self.calls.fetch_add(1, Ordering::Relaxed);
        mix(self.config.seed ^ mix(self.problem.line as u64 ^ mix(call)))
    }

    fn params(&self, greedy: bool, max_tokens: usize, stop: Vec<String>) -> SamplingParams {
        SamplingParams {
            temperature: if greedy { 0.0 } else { self.config.temperature },
            top_p: self.config.top_p,
            seed: self.next_seed(),
            max_tokens,
            stop,
            ..SamplingParams::default()
        }
    }

    /// Whether the question's token budget is spent.
    pub fn exhausted(&self) -> bool {
        self.config
            .token_budget
            .is_some_and(|b| self.meter.total().tokens_generated >= b)
    }

    /// Samples up to `n` whole solutions; under a token budget, in rounds
    /// of four until the budget is spent.
    pub async fn sample_within_budget(
        &self,
        tree: &mut Tree,
        n: usize,
    ) -> Result<Vec<NodeId>, SearchError> {
        if self.config.token_budget.is_none() {
            return self.sample_solutions(tree, n, false).await;
        }
        let mut leaves = Vec::new();
        while leaves.len() < n && !self.exhausted() {
            let round = (n - leaves.len()).min(4);
            leaves.extend(self.sample_solutions(tree, round, false).await?);
        }
        Ok(leaves)
    }

    /// Samples whole solutions under the root (`n` of them) and adds each as
    /// a chain of steps. Returns the finished leaves.
    pub async fn sample_solutions(
        &self,
        tree: &mut Tree,
        n: usize,
        greedy: bool,
    ) -> Result<Vec<NodeId>, SearchError> {
        self.complete_from(tree, &vec![Tree::ROOT; n], greedy).await
    }

    /// Continues each of `parents` to the end of a solution in one call per
    /// parent (the rest of the solution is sampled whole, then split into
    /// steps). Returns the new leaves, one per parent, in order.
    pub async fn complete_from(
        &self,
        tree: &mut Tree,
        parents: &[NodeId],
        greedy: bool,
    ) -> Result<Vec<NodeId>, SearchError> {
        let requests: Vec<GenerateRequest> = parents
            .iter()
            .map(|&p| {
                let used = tree
                    .path(p)
                    .iter()
                    .map(|&n| tree.node(n).tokens.len())
                    .sum::<usize>();
                let mut r = GenerateRequest::new(
                    self.prompt.clone() + &tree.text(p),
                    self.params(
                        greedy,
                        self.config.max_tokens.saturating_sub(used).max(1),
                        vec![],
                    ),
                );
                r.top_logprobs = Some(self.config.top_logprobs);
                r
            })
            .collect();
        let responses = self.generate(requests).await?;
        let mut leaves = Vec::new();
        for (&parent, response) in parents.iter().zip(responses) {
            for completion in response.completions {
                leaves.push(self.add_whole(tree, parent, completion, false));
            }
        }
        Ok(leaves)
    }

    /// Splits a whole completion into steps at the delimiter and hangs them
    /// under `parent`; the last one is finished.
    fn add_whole(
        &self,
        tree: &mut Tree,
        parent: NodeId,
        completion: Completion,
        restart: bool,
    ) -> NodeId {
        let delimiter = self.config.step_delimiter.as_str();
        let tokens = completion.logprobs.unwrap_or_default();
        let pieces = split_keeping_delimiter(&completion.text, delimiter);
        let mut token_groups = assign_tokens(&tokens, &pieces);
        let mut at = parent;
        let count = pieces.len();
        for (i, piece) in pieces.into_iter().enumerate() {
            let group = std::mem::take(&mut token_groups[i]);
            at = tree.add(at, piece, group);
            if i == 0 {
                tree.node_mut(at).restart = restart;
            }
            if i + 1 == count {
                self.finish(tree, at);
            }
        }
        if count == 0 {
            at = tree.add(at, String::new(), tokens);
            tree.node_mut(at).restart = restart;
            self.finish(tree, at);
        }
        at
    }

    /// Samples `n` whole solutions from a prompt of its own (a request to
    /// revise an earlier attempt); each starts a new path under `parent`.
    pub async fn sample_from_prompt(
        &self,
        tree: &mut Tree,
        parent: NodeId,
        prompt: String,
        n: usize,
    ) -> Result<Vec<NodeId>, SearchError> {
        let mut request =
            GenerateRequest::new(prompt, self.params(false, self.config.max_tokens, vec![]));
        request.n = n;
        request.top_logprobs = Some(self.config.top_logprobs);
        let mut leaves = Vec::new();
        for response in self.generate(vec![request]).await? {
            for completion in response.completions {
                leaves.push(self.add_whole(tree, parent, completion, true));
            }
        }
        Ok(leaves)
    }

    /// Marks a solution as ended and finds its answer.
    pub fn finish(&self, tree: &mut Tree, leaf: NodeId) {
        let answer = self.task.extract(&tree.text(leaf));
        let node = tree.node_mut(leaf);
        node.finished = true;
        node.answer = answer;
    }

    /// Samples one step under each request's parent. A step ends at the
    /// delimiter (or after `mini_step_tokens` tokens when set); a step that
    /// ends the generation, or reaches the step or token limit, finishes
    /// its solution. Returns the new nodes per request.
    pub async fn expand(
        &self,
        tree: &mut Tree,
        requests: &[StepRequest],
        mini_step_tokens: Option<usize>,
    ) -> Result<Vec<Vec<NodeId>>, SearchError> {
        let delimiter = self.config.step_delimiter.clone();
        let generate: Vec<GenerateRequest> = requests
            .iter()
            .map(|r| {
                let (max, stop) = match mini_step_tokens {
                    Some(k) => (k, vec![]),
                    None => (self.config.max_step_tokens, vec![delimiter.clone()]),
                };
                let mut g = GenerateRequest::new(
                    self.prompt.clone() + &tree.text(r.parent) + &r.forced_prefix,
                    self.params(r.greedy, max, stop),
                );
                g.n = r.n;
                g.top_logprobs = Some(self.config.top_logprobs);
                g
            })
            .collect();
        let responses = self.generate(generate).await?;
        let mut added = Vec::new();
        for (r, response) in requests.iter().zip(responses) {
            let mut ids = Vec::new();
            for c in response.completions {
                let ended = c.finish_reason == FinishReason::Eos
                    || (mini_step_tokens.is_none() && c.finish_reason == FinishReason::Length);
                let mut text = r.forced_prefix.clone() + &c.text;
                if c.finish_reason == FinishReason::Stop && mini_step_tokens.is_none() {
                    text.push_str(&delimiter);
                }
                let id = tree.add(r.parent, text, c.logprobs.unwrap_or_default());
                let tokens_so_far: usize = tree
                    .path(id)
                    .iter()
                    .map(|&n| tree.node(n).tokens.len())
                    .sum();
                let too_long = tree.depth(id) >= self.config.max_steps
                    || tokens_so_far >= self.config.max_tokens;
                if ended || too_long {
                    self.finish(tree, id);
                }
                ids.push(id);
            }
            added.push(ids);
        }
        Ok(added)
    }

    pub async fn generate(
        &self,
        requests: Vec<GenerateRequest>,
    ) -> Result<Vec<qstar_core::GenerateResponse>, SearchError> {
        if requests.is_empty() {
            return Ok(Vec::new());
        }
        let calls = requests.len();
        let responses = self.model.generate(requests).await?;
        for r in &responses {
            self.meter.record(Caller::Policy, 0, &r.usage);
        }
        self.meter
            .record(Caller::Policy, calls, &Default::default());
        Ok(responses)
    }

    /// Counts a batch of verifier calls and what they used, the FLOPs on a
    /// model of `parameters` (`None`: unknown).
    fn record_verifier<'u>(
        &self,
        calls: usize,
        usages: impl Iterator<Item = &'u qstar_core::Usage>,
        parameters: Option<u64>,
    ) {
        for usage in usages {
            self.meter
                .record_model(Caller::Verifier, 0, usage, parameters);
        }
        self.meter
            .record(Caller::Verifier, calls, &Default::default());
    }

    /// Verifier calls go through here so they are counted as such.
    pub async fn choose(
        &self,
        model: &dyn LanguageModel,
        requests: Vec<ChooseRequest>,
    ) -> Result<Vec<ChooseResponse>, SearchError> {
        if requests.is_empty() {
            return Ok(Vec::new());
        }
        let calls = requests.len();
        let responses = model.choose(requests).await?;
        let parameters = self.meter.parameters();
        self.record_verifier(calls, responses.iter().map(|r| &r.usage), parameters);
        Ok(responses)
    }

    /// Scores on the policy's model size (a verifier that is the policy).
    pub async fn score(
        &self,
        model: &dyn LanguageModel,
        requests: Vec<ScoreRequest>,
    ) -> Result<Vec<ScoreResponse>, SearchError> {
        let parameters = self.meter.parameters();
        self.score_on(model, requests, parameters).await
    }

    /// Scores with another model than the policy (DPO's reference), whose
    /// FLOPs are reckoned on its own `parameters`.
    pub async fn score_on(
        &self,
        model: &dyn LanguageModel,
        requests: Vec<ScoreRequest>,
        parameters: Option<u64>,
    ) -> Result<Vec<ScoreResponse>, SearchError> {
        if requests.is_empty() {
            return Ok(Vec::new());
        }
        let calls = requests.len();
        let responses = model.score(requests).await?;
        self.record_verifier(calls, responses.iter().map(|r| &r.usage), parameters);
        Ok(responses)
    }

    pub fn is_correct(&self, answer: &str) -> bool {
        self.task.is_correct(answer, &self.problem.answer)
    }
}

/// Splits text after each delimiter, the delimiter staying with the step it
/// ends; empty pieces are dropped.
pub fn split_keeping_delimiter(text: &str, delimiter: &str) -> Vec<String> {
    if delimiter.is_empty() {
        return vec![text.to_string()];
    }
    let mut pieces = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find(delimiter) {
        let end = at + delimiter.len();
        pieces.push(rest[..end].to_string());
        rest = &rest[end..];
    }
    if !rest.is_empty() {
        pieces.push(rest.to_string());
    }
    // A run of delimiters makes pieces that are only delimiter: join them to
    // the step before.
    let mut merged: Vec<String> = Vec::new();
    for p in pieces {
        match merged.last_mut() {
            Some(last) if p.trim().is_empty() => last.push_str(&p),
            _ => merged.push(p),
        }
    }
    merged
}

/// Gives each token to the piece its text starts in.
fn assign_tokens(tokens: &[TokenLogprob], pieces: &[String]) -> Vec<Vec<TokenLogprob>> {
    let mut groups = vec![Vec::new(); pieces.len().max(1)];
    let mut bounds = Vec::with_capacity(pieces.len());
    let mut end = 0;
    for p in pieces {
        end += p.len();
        bounds.push(end);
    }
    let mut offset = 0;
    for t in tokens {
        let last = groups.len() - 1;
        let piece = bounds.iter().position(|&b| offset < b).unwrap_or(last);
        groups[piece.min(last)].push(t.clone());
        offset += t.text.len();
    }
    groups
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_keep_their_delimiters() {
        assert_eq!(
            split_keeping_delimiter("a\n\nb\n\n\n\nc", "\n\n"),
            vec!["a\n\n", "b\n\n\n\n", "c"]
        );
        assert_eq!(split_keeping_delimiter("a\n\n", "\n\n"), vec!["a\n\n"]);
        assert!(split_keeping_delimiter("", "\n\n").is_empty());
    }

    #[test]
    fn tokens_go_to_the_step_they_start_in() {
        let tok = |t: &str| TokenLogprob {
            id: 0,
            rank: None,
            text: t.into(),
            logprob: Some(-1.0),
            top: vec![],
        };
        let tokens = vec![tok("a"), tok("\n\n"), tok("b"), tok("c")];
        let groups = assign_tokens(&tokens, &["a\n\n".into(), "bc".into()]);
        assert_eq!(groups[0].len(), 2);
        assert_eq!(groups[1].len(), 2);
    }
}

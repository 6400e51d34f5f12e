//! Search strategies. Each grows a [`Tree`] for one question within a
//! budget N (solutions sampled, beams, simulations or attempts, as each
//! strategy defines it; the compute actually spent is metered) and picks a
//! final answer.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::searcher::{Searcher, StepRequest};
use crate::tree::{NodeId, Tree};
use crate::verifier::{Aggregation, Verifier};
use crate::SearchError;

/// A search strategy, as a flag (`--strategy beam`), a config file
/// (`strategy = "beam"`), a record or a policy names it: the kebab-case
/// name of the variant. Adding one means adding a variant here; the
/// compiler then points at [`Strategy::name`], [`Strategy::needs_verifier`]
/// and [`run`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
#[value(rename_all = "kebab-case")]
pub enum Strategy {
    /// One greedy solution.
    Greedy,
    /// N samples, the most common answer.
    Majority,
    /// N samples, answers voted with their verifier scores.
    Weighted,
    /// N samples, the one the verifier scores highest.
    BestOfN,
    /// Step-wise beam search keeping N/M prefixes of width M.
    Beam,
    /// Diverse verifier tree search: N/M subtrees of one beam each.
    Dvts,
    /// Beam search ranking steps by a greedy rollout of a few more.
    Lookahead,
    /// Monte Carlo tree search over steps, N simulations.
    Mcts,
    /// REBASE: children in proportion to softmax(score / T).
    Rebase,
    /// Sequential revision: each attempt corrects the one before.
    Revise,
    /// The strategy a sweep's policy picks for the question's difficulty.
    ComputeOptimal,
}

impl Strategy {
    /// Every strategy, in the order of the enum.
    pub fn all() -> &'static [Strategy] {
        <Strategy as clap::ValueEnum>::value_variants()
    }

    /// The name flags, config files and records use.
    pub fn name(self) -> &'static str {
        match self {
            Strategy::Greedy => "greedy",
            Strategy::Majority => "majority",
            Strategy::Weighted => "weighted",
            Strategy::BestOfN => "best-of-n",
            Strategy::Beam => "beam",
            Strategy::Dvts => "dvts",
            Strategy::Lookahead => "lookahead",
            Strategy::Mcts => "mcts",
            Strategy::Rebase => "rebase",
            Strategy::Revise => "revise",
            Strategy::ComputeOptimal => "compute-optimal",
        }
    }

    /// Strategies that rank solutions or steps need a verifier.
    pub fn needs_verifier(self) -> bool {
        match self {
            Strategy::Weighted
            | Strategy::BestOfN
            | Strategy::Beam
            | Strategy::Dvts
            | Strategy::Lookahead
            | Strategy::Mcts
            | Strategy::Rebase => true,
            Strategy::Greedy | Strategy::Majority | Strategy::Revise | Strategy::ComputeOptimal => {
                false
            }
        }
    }
}

impl std::fmt::Display for Strategy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// What a search found.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Outcome {
    pub answer: Option<String>,
    pub correct: bool,
    /// The chosen solution's text.
    pub solution: String,
    /// Finished solutions considered, and how many of them had no answer
    /// that could be found (counted, never guessed).
    pub candidates: usize,
    pub unparsed: usize,
    pub tree: Tree,
}

/// A verifier with the aggregation used to turn step scores into a
/// solution score.
#[derive(Clone, Copy)]
pub struct Scorer<'v> {
    pub verifier: &'v dyn Verifier,
    pub aggregation: Aggregation,
}

impl Scorer<'_> {
    async fn solution_scores(
        &self,
        s: &Searcher<'_>,
        tree: &mut Tree,
        leaves: &[NodeId],
    ) -> Result<Vec<f64>, SearchError> {
        self.verifier.score(s, tree, leaves).await?;
        Ok(leaves
            .iter()
            .map(|&l| self.aggregation.apply(&tree.step_scores(l)))
            .collect())
    }
}

/// Runs `strategy` with budget `budget` on one question.
pub async fn run(
    strategy: Strategy,
    s: &Searcher<'_>,
    budget: usize,
    scorer: Option<Scorer<'_>>,
) -> Result<Outcome, SearchError> {
    let budget = budget.max(1);
    let need = || {
        scorer.ok_or_else(|| {
            SearchError::Config(format!("strategy {} needs a verifier", strategy.name()))
        })
    };
    let mut tree = Tree::new();
    let chosen =
        match strategy {
            Strategy::Greedy => {
                let leaves = s.sample_solutions(&mut tree, 1, true).await?;
                leaves.first().copied()
            }
            Strategy::Majority => {
                let leaves = s.sample_within_budget(&mut tree, budget).await?;
                vote(&tree, &leaves, None)
            }
            Strategy::Weighted | Strategy::BestOfN => {
                let scorer = need()?;
                let leaves = s.sample_within_budget(&mut tree, budget).await?;
                let scores = scorer.solution_scores(s, &mut tree, &leaves).await?;
                if strategy == Strategy::Weighted {
                    vote(&tree, &leaves, Some(&scores))
                } else {
                    best(&leaves, &scores)
                }
            }
            Strategy::Beam | Strategy::Dvts | Strategy::Lookahead => {
                let scorer = need()?;
                let m = s.config.beam_width.clamp(1, budget);
                let (groups, keep) = match strategy {
                    Strategy::Dvts => (budget / m, 1),
                    _ => (1, (budget / m).max(1)),
                };
                let lookahead = if strategy == Strategy::Lookahead {
                    s.config.lookahead
                } else {
                    0
                };
                stepwise_beam(s, &mut tree, scorer, groups.max(1), keep, m, lookahead).await?;
                pick_best_finished(s, &mut tree, scorer).await?
            }
            Strategy::Mcts => {
                let scorer = need()?;
                mcts(s, &mut tree, scorer, budget).await?
            }
            Strategy::Rebase => {
                let scorer = need()?;
                rebase(s, &mut tree, scorer, budget).await?;
                let leaves = tree.finished();
                let scores = scorer.solution_scores(s, &mut tree, &leaves).await?;
                vote(&tree, &leaves, Some(&scores))
            }
            Strategy::Revise => revise(s, &mut tree, scorer, budget).await?,
            Strategy::ComputeOptimal => return Err(SearchError::Config(
                "compute-optimal chooses among the other strategies: run it through crate::optimal"
                    .into(),
            )),
        };
    Ok(outcome(s, tree, chosen))
}

fn outcome(s: &Searcher<'_>, tree: Tree, chosen: Option<NodeId>) -> Outcome {
    let finished = tree.finished();
    let unparsed = finished
        .iter()
        .filter(|&&n| tree.node(n).answer.is_none())
        .count();
    let answer = chosen.and_then(|c| tree.node(c).answer.clone());
    Outcome {
        correct: answer.as_deref().is_some_and(|a| s.is_correct(a)),
        solution: chosen.map(|c| tree.text(c)).unwrap_or_default(),
        answer,
        candidates: finished.len(),
        unparsed,
        tree,
    }
}

/// The answer with the most votes (weighted by `weights` when given);
/// solutions without an answer do not vote. Returns the best-weighted
/// solution that gave the winning answer. Ties go to the answer seen first.
pub fn vote(tree: &Tree, leaves: &[NodeId], weights: Option<&[f64]>) -> Option<NodeId> {
    let mut totals: Vec<(String, f64, NodeId, f64)> = Vec::new();
    let mut index: HashMap<String, usize> = HashMap::new();
    for (i, &leaf) in leaves.iter().enumerate() {
        let Some(answer) = tree.node(leaf).answer.clone() else {
            continue;
        };
        let w = weights.map_or(1.0, |w| w[i].max(0.0));
        match index.get(&answer) {
            Some(&k) => {
                totals[k].1 += w;
                if w > totals[k].3 {
                    totals[k].2 = leaf;
                    totals[k].3 = w;
                }
            }
            None => {
                index.insert(answer.clone(), totals.len());
                totals.push((answer, w, leaf, w));
            }
        }
    }
    let mut winner: Option<&(String, f64, NodeId, f64)> = None;
    for t in &totals {
        if winner.is_none_or(|w| t.1 > w.1) {
            winner = Some(t);
        }
    }
    // Nobody answered: fall back to the first solution, which has no answer.
    winner.map(|w| w.2).or_else(|| leaves.first().copied())
}

/// The highest-scored solution (the first on ties).
pub fn best(leaves: &[NodeId], scores: &[f64]) -> Option<NodeId> {
    let mut top: Option<(NodeId, f64)> = None;
    for (&l, &s) in leaves.iter().zip(scores) {
        if top.is_none_or(|(_, t)| s > t) {
            top = Some((l, s));
        }
    }
    top.map(|(l, _)| l)
}

async fn pick_best_finished(
    s: &Searcher<'_>,
    tree: &mut Tree,
    scorer: Scorer<'_>,
) -> Result<Option<NodeId>, SearchError> {
    let leaves = tree.finished();
    let scores = scorer.solution_scores(s, tree, &leaves).await?;
    Ok(best(&leaves, &scores))
}

/// Step-level beam search over `groups` independent subtrees: each starts
/// with `keep × width` first steps, keeps its `keep` best unfinished
/// prefixes and expands each `width` ways, until every prefix is finished.
/// Beam search is one group keeping N/M; DVTS is N/M groups keeping one.
/// With `lookahead` > 0 a candidate is ranked by the score of a greedy
/// rollout of that many further steps (the rollout stays in the tree).
pub async fn stepwise_beam(
    s: &Searcher<'_>,
    tree: &mut Tree,
    scorer: Scorer<'_>,
    groups: usize,
    keep: usize,
    width: usize,
    lookahead: usize,
) -> Result<(), SearchError> {
    let first: Vec<StepRequest> = (0..groups)
        .map(|_| StepRequest {
            parent: Tree::ROOT,
            n: keep * width,
            greedy: false,
            forced_prefix: String::new(),
        })
        .collect();
    let mut frontier = s.expand(tree, &first, None).await?;
    // Candidates each group may still grow; finished solutions use them up.
    let mut remaining = vec![keep * width; groups];
    for _ in 0..s.config.max_steps {
        if s.exhausted() {
            break;
        }
        let candidates: Vec<NodeId> = frontier.iter().flatten().copied().collect();
        // What each candidate is ranked by: itself, or its rollout's end.
        let mut judged = candidates.clone();
        if lookahead > 0 {
            let mut ends = candidates.clone();
            for _ in 0..lookahead {
                let open: Vec<(usize, NodeId)> = ends
                    .iter()
                    .copied()
                    .enumerate()
                    .filter(|(_, n)| !tree.node(*n).finished)
                    .collect();
                let requests: Vec<StepRequest> = open
                    .iter()
                    .map(|&(_, n)| StepRequest {
                        parent: n,
                        n: 1,
                        greedy: true,
                        forced_prefix: String::new(),
                    })
                    .collect();
                let added = s.expand(tree, &requests, None).await?;
                for ((i, _), new) in open.into_iter().zip(added) {
                    if let Some(&n) = new.first() {
                        ends[i] = n;
                    }
                }
            }
            judged = ends;
        }
        let scores = scorer.solution_scores(s, tree, &judged).await?;
        let score_of: HashMap<NodeId, f64> = candidates.iter().copied().zip(scores).collect();
        let mut requests = Vec::new();
        for (group, left) in frontier.iter().zip(remaining.iter_mut()) {
            let mut open: Vec<NodeId> = group
                .iter()
                .copied()
                .filter(|&n| !tree.node(n).finished)
                .collect();
            *left = left.saturating_sub(group.len() - open.len());
            let beams = left.div_ceil(width.max(1));
            open.sort_by(|a, b| score_of[b].total_cmp(&score_of[a]));
            open.truncate(beams);
            requests.push(
                open.into_iter()
                    .map(|parent| StepRequest {
                        parent,
                        n: width,
                        greedy: false,
                        forced_prefix: String::new(),
                    })
                    .collect::<Vec<_>>(),
            );
        }
        if requests.iter().all(Vec::is_empty) {
            return Ok(());
        }
        let sizes: Vec<usize> = requests.iter().map(Vec::len).collect();
        let flat: Vec<StepRequest> = requests.into_iter().flatten().collect();
        let added = s.expand(tree, &flat, None).await?;
        let mut added = added.into_iter();
        frontier = sizes
            .into_iter()
            .map(|k| added.by_ref().take(k).flatten().collect())
            .collect();
    }
    // Out of steps: whatever is still open ends here.
    for n in frontier.into_iter().flatten() {
        if !tree.node(n).finished {
            s.finish(tree, n);
        }
    }
    Ok(())
}

/// Monte Carlo tree search over steps (or mini-steps). Each of `budget`
/// simulations selects a leaf by PUCT, expands it with k sampled children,
/// values each child with the verifier (or, with `rollout`, by the score of
/// a greedy rollout to the end) and backs the values up. The answer follows
/// the most visited children from the root.
pub async fn mcts(
    s: &Searcher<'_>,
    tree: &mut Tree,
    scorer: Scorer<'_>,
    budget: usize,
) -> Result<Option<NodeId>, SearchError> {
    let k = s.config.mcts_children.max(1);
    for _ in 0..budget {
        if s.exhausted() {
            break;
        }
        let leaf = select(tree, s.config.c_puct);
        if tree.node(leaf).finished || tree.depth(leaf) >= s.config.max_steps {
            if !tree.node(leaf).finished {
                s.finish(tree, leaf);
            }
            let value = scorer.solution_scores(s, tree, &[leaf]).await?[0];
            backup(tree, leaf, value);
            continue;
        }
        let reflect = s.config.reflection && leaf != Tree::ROOT && tree.q(leaf) < 0.5;
        let mut requests = vec![StepRequest {
            parent: leaf,
            n: if reflect { k - 1 } else { k },
            greedy: false,
            forced_prefix: String::new(),
        }];
        if reflect {
            requests.push(StepRequest {
                parent: leaf,
                n: 1,
                greedy: false,
                forced_prefix: s.config.prompts.reflection()?,
            });
        }
        requests.retain(|r| r.n > 0);
        let children: Vec<NodeId> = s
            .expand(tree, &requests, s.config.mini_step_tokens)
            .await?
            .into_iter()
            .flatten()
            .collect();
        let values = value_of(s, tree, scorer, &children).await?;
        for (&c, v) in children.iter().zip(values) {
            tree.node_mut(c).prior = 1.0 / children.len() as f64;
            backup(tree, c, v);
        }
    }
    // Follow the most visited children; finish greedily if the path is open.
    let mut at = Tree::ROOT;
    while let Some(&next) = tree.node(at).children.iter().max_by(|&&a, &&b| {
        let (na, nb) = (tree.node(a), tree.node(b));
        na.visits
            .cmp(&nb.visits)
            .then(tree.q(a).total_cmp(&tree.q(b)))
            .then(b.cmp(&a))
    }) {
        at = next;
        if tree.node(at).finished {
            break;
        }
    }
    if at == Tree::ROOT || !tree.node(at).finished {
        let leaves = s.complete_from(tree, &[at], true).await?;
        at = leaves.first().copied().unwrap_or(at);
    }
    Ok(Some(at))
}

async fn value_of(
    s: &Searcher<'_>,
    tree: &mut Tree,
    scorer: Scorer<'_>,
    nodes: &[NodeId],
) -> Result<Vec<f64>, SearchError> {
    if !s.config.mcts_rollout {
        return scorer.solution_scores(s, tree, nodes).await;
    }
    // Roll out in a scratch copy so rollouts do not become part of the tree.
    let mut scratch = tree.clone();
    let open: Vec<NodeId> = nodes
        .iter()
        .copied()
        .filter(|&n| !tree.node(n).finished)
        .collect();
    let ends = s.complete_from(&mut scratch, &open, true).await?;
    let mut judged: Vec<NodeId> = nodes.to_vec();
    for (n, e) in open.iter().zip(ends) {
        if let Some(slot) = judged.iter_mut().find(|j| **j == *n) {
            *slot = e;
        }
    }
    let values = scorer.solution_scores(s, &mut scratch, &judged).await?;
    // Keep the scores of real steps the verifier gave in the scratch tree.
    for (id, node) in tree.nodes.iter_mut().enumerate() {
        if node.score.is_none() {
            node.score = scratch.nodes[id].score;
        }
    }
    Ok(values)
}

/// Descends from the root by PUCT until a node without children.
fn select(tree: &Tree, c_puct: f64) -> NodeId {
    let mut at = Tree::ROOT;
    loop {
        let node = tree.node(at);
        if node.children.is_empty() || node.finished {
            return at;
        }
        let parent_visits = (node.visits.max(1) as f64).sqrt();
        let mut best_child = node.children[0];
        let mut best_value = f64::NEG_INFINITY;
        for &c in &node.children {
            let child = tree.node(c);
            let u = tree.q(c) + c_puct * child.prior * parent_visits / (1.0 + child.visits as f64);
            if u > best_value {
                best_value = u;
                best_child = c;
            }
        }
        at = best_child;
    }
}

fn backup(tree: &mut Tree, from: NodeId, value: f64) {
    let mut at = Some(from);
    while let Some(n) = at {
        let node = tree.node_mut(n);
        node.visits += 1;
        node.value_sum += value;
        at = node.parent;
    }
}

/// REBASE: a width budget of `budget` solutions. At each depth the open
/// nodes get children in proportion to softmax(reward / T) of their scores;
/// every finished solution uses up one unit of the width.
pub async fn rebase(
    s: &Searcher<'_>,
    tree: &mut Tree,
    scorer: Scorer<'_>,
    budget: usize,
) -> Result<(), SearchError> {
    let mut width = budget;
    let mut frontier: Vec<NodeId> = s
        .expand(
            tree,
            &[StepRequest {
                parent: Tree::ROOT,
                n: budget,
                greedy: false,
                forced_prefix: String::new(),
            }],
            None,
        )
        .await?
        .concat();
    for _ in 0..s.config.max_steps {
        if s.exhausted() {
            break;
        }
        let finished = frontier.iter().filter(|&&n| tree.node(n).finished).count();
        width = width.saturating_sub(finished);
        let open: Vec<NodeId> = frontier
            .iter()
            .copied()
            .filter(|&n| !tree.node(n).finished)
            .collect();
        if width == 0 || open.is_empty() {
            break;
        }
        let rewards = scorer.solution_scores(s, tree, &open).await?;
        let counts = allot(&rewards, s.config.rebase_temperature, width);
        let requests: Vec<StepRequest> = open
            .iter()
            .zip(counts)
            .filter(|(_, c)| *c > 0)
            .map(|(&parent, n)| StepRequest {
                parent,
                n,
                greedy: false,
                forced_prefix: String::new(),
            })
            .collect();
        frontier = s.expand(tree, &requests, None).await?.concat();
    }
    for n in frontier {
        if !tree.node(n).finished {
            s.finish(tree, n);
        }
    }
    Ok(())
}

/// Splits `total` children among nodes by softmax(reward / temperature),
/// rounding so the counts add up exactly (largest remainders first).
pub fn allot(rewards: &[f64], temperature: f64, total: usize) -> Vec<usize> {
    if rewards.is_empty() {
        return Vec::new();
    }
    let t = temperature.max(1e-6);
    let max = rewards.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let weights: Vec<f64> = rewards.iter().map(|r| ((r - max) / t).exp()).collect();
    let sum: f64 = weights.iter().sum();
    let shares: Vec<f64> = weights.iter().map(|w| w / sum * total as f64).collect();
    let mut counts: Vec<usize> = shares.iter().map(|s| s.floor() as usize).collect();
    let mut left = total - counts.iter().sum::<usize>();
    let mut order: Vec<usize> = (0..rewards.len()).collect();
    order.sort_by(|&a, &b| {
        (shares[b] - shares[b].floor())
            .total_cmp(&(shares[a] - shares[a].floor()))
            .then(a.cmp(&b))
    });
    for i in order {
        if left == 0 {
            break;
        }
        counts[i] += 1;
        left -= 1;
    }
    counts
}

/// Sequential revision: `chains` parallel chains (the budget split among
/// them), each attempt asking the model to correct the one before. The
/// answer is the verifier's best attempt, or the majority over all attempts.
pub async fn revise(
    s: &Searcher<'_>,
    tree: &mut Tree,
    scorer: Option<Scorer<'_>>,
    budget: usize,
) -> Result<Option<NodeId>, SearchError> {
    let chains = s.config.revision_chains.clamp(1, budget);
    let length = (budget / chains).max(1);
    let mut last = s.sample_solutions(tree, chains, false).await?;
    let mut all = last.clone();
    for _ in 1..length {
        if s.exhausted() {
            break;
        }
        let mut next = Vec::with_capacity(last.len());
        for &previous in &last {
            let request = s.config.prompts.revision(
                &s.problem.question,
                s.task.instruction(),
                &tree.text(previous),
            )?;
            let prompt = s.config.format.frame(s.model, &request, "")?;
            next.extend(s.sample_from_prompt(tree, previous, prompt, 1).await?);
        }
        all.extend(&next);
        last = next;
    }
    Ok(match scorer {
        Some(scorer) => {
            let scores = scorer.solution_scores(s, tree, &all).await?;
            best(&all, &scores)
        }
        None => vote(tree, &all, None),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_name_round_trips_through_serde_and_clap() {
        use clap::ValueEnum;
        assert_eq!(Strategy::all().len(), 11);
        for &s in Strategy::all() {
            let name = s.name();
            assert_eq!(serde_json::to_value(s).ok(), Some(serde_json::json!(name)));
            let back: Strategy = serde_json::from_value(serde_json::json!(name)).expect(name);
            assert_eq!(back, s);
            assert_eq!(Strategy::from_str(name, false), Ok(s));
            let shown = s.to_possible_value().map(|v| v.get_name().to_string());
            assert_eq!(shown.as_deref(), Some(name));
            assert_eq!(s.to_string(), name);
        }
        // The names records and job keys have always used.
        let names: Vec<&str> = Strategy::all().iter().map(|s| s.name()).collect();
        assert_eq!(
            names,
            [
                "greedy",
                "majority",
                "weighted",
                "best-of-n",
                "beam",
                "dvts",
                "lookahead",
                "mcts",
                "rebase",
                "revise",
                "compute-optimal"
            ]
        );
    }

    #[test]
    fn an_unknown_name_is_an_error_that_lists_the_names() {
        let err = serde_json::from_value::<Strategy>(serde_json::json!("beams"))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            err.contains("beams") && err.contains("best-of-n") && err.contains("compute-optimal"),
            "{err}"
        );
        assert!(<Strategy as clap::ValueEnum>::from_str("beams", false).is_err());
        // Names are exact: no other spelling or case.
        assert!(<Strategy as clap::ValueEnum>::from_str("Beam", false).is_err());
        assert!(<Strategy as clap::ValueEnum>::from_str("best_of_n", false).is_err());
    }

    #[test]
    fn allotment_adds_up_and_follows_rewards() {
        let c = allot(&[0.9, 0.1, 0.5], 0.2, 16);
        assert_eq!(c.iter().sum::<usize>(), 16);
        assert!(c[0] > c[2] && c[2] > c[1], "{c:?}");
        let even = allot(&[0.3, 0.3, 0.3, 0.3], 1.0, 6);
        assert_eq!(even.iter().sum::<usize>(), 6);
        assert!(even.iter().all(|&n| n == 1 || n == 2));
        // A very cold softmax gives everything to the best.
        assert_eq!(allot(&[0.2, 0.8], 0.001, 5), vec![0, 5]);
    }

    fn answered(tree: &mut Tree, answers: &[Option<&str>]) -> Vec<NodeId> {
        answers
            .iter()
            .map(|a| {
                let n = tree.add(Tree::ROOT, String::new(), vec![]);
                let node = tree.node_mut(n);
                node.finished = true;
                node.answer = a.map(str::to_string);
                n
            })
            .collect()
    }

    #[test]
    fn voting_counts_answers_and_weights() {
        let mut tree = Tree::new();
        let leaves = answered(
            &mut tree,
            &[Some("3"), None, Some("5"), Some("5"), Some("3"), Some("3")],
        );
        let pick = vote(&tree, &leaves, None).unwrap();
        assert_eq!(tree.node(pick).answer.as_deref(), Some("3"));
        // Weights can overturn the count.
        let w = [0.1, 0.9, 0.8, 0.7, 0.1, 0.1];
        let pick = vote(&tree, &leaves, Some(&w)).unwrap();
        assert_eq!(pick, leaves[2]);
        // Unanswered solutions never win by default.
        let mut t2 = Tree::new();
        let only_none = answered(&mut t2, &[None, None]);
        assert_eq!(vote(&t2, &only_none, None), Some(only_none[0]));
        assert_eq!(best(&leaves, &w), Some(leaves[1]));
    }
}

//! The search tree every strategy builds: the root is the question, each
//! node one step of a solution, a path from the root a (partial) solution.
//! Flat strategies (voting, best-of-N) build a root with N chains; beam
//! search, MCTS and REBASE share prefixes. The tree is written out with each
//! answer so a search can be inspected.

use qstar_core::TokenLogprob;
use serde::{Deserialize, Serialize};

pub type NodeId = usize;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Node {
    pub id: NodeId,
    pub parent: Option<NodeId>,
    /// The step's text exactly as it continues the solution (including the
    /// step delimiter that ends it), so a path's text is the concatenation.
    pub text: String,
    /// Generated tokens with their log-probs and top alternatives, for
    /// confidence verifiers; not written out.
    #[serde(skip)]
    pub tokens: Vec<TokenLogprob>,
    /// The verifier's score of this step given the steps before it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub score: Option<f64>,
    /// The solution ends here.
    pub finished: bool,
    /// The final answer of a finished solution, when one could be found.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub answer: Option<String>,
    pub children: Vec<NodeId>,
    /// MCTS statistics.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub visits: u32,
    #[serde(default, skip_serializing_if = "is_zero_f")]
    pub value_sum: f64,
    #[serde(default, skip_serializing_if = "is_zero_f")]
    pub prior: f64,
    /// This step starts a new solution (a revision) instead of continuing
    /// its parent; paths and texts begin here.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub restart: bool,
}

impl Node {
    /// A step not yet scored, visited or finished.
    fn fresh(id: NodeId, parent: Option<NodeId>, text: String, tokens: Vec<TokenLogprob>) -> Self {
        Node {
            id,
            parent,
            text,
            tokens,
            score: None,
            finished: false,
            answer: None,
            children: Vec::new(),
            visits: 0,
            value_sum: 0.0,
            prior: 0.0,
            restart: false,
        }
    }
}

fn is_zero(v: &u32) -> bool {
    *v == 0
}
fn is_zero_f(v: &f64) -> bool {
    *v == 0.0
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Tree {
    pub nodes: Vec<Node>,
}

impl Default for Tree {
    fn default() -> Self {
        Tree::new()
    }
}

impl Tree {
    pub const ROOT: NodeId = 0;

    pub fn new() -> Self {
        Tree {
            nodes: vec![Node::fresh(Tree::ROOT, None, String::new(), Vec::new())],
        }
    }

    /// Adds a step under `parent` and returns its id.
    pub fn add(&mut self, parent: NodeId, text: String, tokens: Vec<TokenLogprob>) -> NodeId {
        let id = self.nodes.len();
        self.nodes.push(Node::fresh(id, Some(parent), text, tokens));
        self.nodes[parent].children.push(id);
        id
    }

    pub fn node(&self, id: NodeId) -> &Node {
        &self.nodes[id]
    }

    pub fn node_mut(&mut self, id: NodeId) -> &mut Node {
        &mut self.nodes[id]
    }

    /// The steps from the root (excluded) down to `id` (included).
    pub fn path(&self, id: NodeId) -> Vec<NodeId> {
        let mut path = Vec::new();
        let mut at = Some(id);
        while let Some(n) = at {
            if n == Tree::ROOT {
                break;
            }
            path.push(n);
            if self.nodes[n].restart {
                break;
            }
            at = self.nodes[n].parent;
        }
        path.reverse();
        path
    }

    /// The solution text up to and including `id`.
    pub fn text(&self, id: NodeId) -> String {
        self.path(id)
            .into_iter()
            .map(|n| self.nodes[n].text.as_str())
            .collect()
    }

    pub fn depth(&self, id: NodeId) -> usize {
        self.path(id).len()
    }

    /// Finished solutions, in the order they were added.
    pub fn finished(&self) -> Vec<NodeId> {
        self.nodes
            .iter()
            .filter(|n| n.finished)
            .map(|n| n.id)
            .collect()
    }

    /// Step scores along the path to `id` (steps without a score skipped).
    pub fn step_scores(&self, id: NodeId) -> Vec<f64> {
        self.path(id)
            .into_iter()
            .filter_map(|n| self.nodes[n].score)
            .collect()
    }

    /// Mean value of an MCTS node (0 before any visit).
    pub fn q(&self, id: NodeId) -> f64 {
        let n = &self.nodes[id];
        if n.visits == 0 {
            0.0
        } else {
            n.value_sum / n.visits as f64
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_and_texts_follow_parents() {
        let mut t = Tree::new();
        let a = t.add(Tree::ROOT, "one\n\n".into(), vec![]);
        let b = t.add(a, "two\n\n".into(), vec![]);
        let c = t.add(a, "three".into(), vec![]);
        assert_eq!(t.path(b), vec![a, b]);
        assert_eq!(t.text(c), "one\n\nthree");
        assert_eq!(t.depth(c), 2);
        assert_eq!(t.node(a).children, vec![b, c]);
        let r = t.add(c, "again".into(), vec![]);
        t.node_mut(r).restart = true;
        let d = t.add(r, " more".into(), vec![]);
        assert_eq!(t.text(d), "again more");
    }
}

//! Constitutional-AI pairwise labeling: a multiple-choice question per
//! principle ("which reply is less harmful? (A) … (B) …"), answered by the
//! normalized probabilities of the option letters. Principles are sampled per
//! pair (seeded) or all used; the two orders of the replies are scored and
//! averaged so that the labeler's preference for a position cancels out.

use minijinja::Environment;
use qstar_core::{ChooseRequest, LanguageModel, ModelError, PromptFormat};
use qstar_tasks::PreferencePair;
use serde::{Deserialize, Serialize};

use crate::mix;

use crate::constitution::Constitution;

use crate::prompts::Prompts;

/// How a pair is put to the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Method {
    /// Constitutional AI: a multiple-choice question per principle, answered
    /// by P("A") vs P("B").
    Cai,
    /// Google-style RLAIF: a preamble, "Response 1"/"Response 2", and the
    /// cue "Preferred Response=", answered by P("1") vs P("2").
    Rlaif,
    /// Constitutional AI with a sampled chain of thought before the answer;
    /// the probability is clamped, as such labels are over-confident.
    Cot,
}

/// Which principles judge a pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PrincipleChoice {
    /// k principles drawn per pair (seeded by the pair and the seed).
    Sample(usize),
    /// Every principle (the ensemble).
    All,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CaiConfig {
    pub method: Method,
    pub principles: PrincipleChoice,
    /// Score both orders and average (position debiasing).
    pub debias: bool,
    pub seed: u64,
    pub format: PromptFormat,
    /// Chain-of-thought probabilities are clamped to [low, high].
    pub cot_clamp: (f64, f64),
    /// Longest rationale, in tokens.
    pub rationale_tokens: usize,
    /// Worked examples from the constitution shown before each question.
    #[serde(default)]
    pub few_shot: usize,
    /// RLAIF: sample a rationale before the preference (CoT always does).
    #[serde(default)]
    pub rationale: bool,
    /// Put the principle after the two replies instead of before them, so
    /// that a pair's questions under different principles share the
    /// conversation and both replies (the prefix cache then computes the
    /// replies once per order instead of once per principle).
    #[serde(default)]
    pub principle_last: bool,
}

impl Default for CaiConfig {
    fn default() -> Self {
        CaiConfig {
            method: Method::Cai,
            cot_clamp: (0.4, 0.6),
            rationale_tokens: 96,
            few_shot: 0,
            rationale: false,
            principle_last: false,
            principles: PrincipleChoice::Sample(1),
            debias: true,
            seed: 0,
            format: PromptFormat::Chat,
        }
    }
}

pub use qstar_core::labels::{Judgement, PairLabel};

pub struct CaiLabeler<'a> {
    model: &'a dyn LanguageModel,
    constitution: &'a Constitution,
    config: CaiConfig,
    env: Environment<'static>,
}

impl<'a> CaiLabeler<'a> {
    pub fn new(
        model: &'a dyn LanguageModel,
        constitution: &'a Constitution,
        config: CaiConfig,
    ) -> Result<Self, ModelError> {
        Self::with_prompts(model, constitution, config, &Prompts::builtin())
    }

    /// A labeler whose questions come from `prompts` (`cai_pairwise` for CAI
    /// and CoT, `rlaif` for RLAIF).
    pub fn with_prompts(
        model: &'a dyn LanguageModel,
        constitution: &'a Constitution,
        config: CaiConfig,
        prompts: &Prompts,
    ) -> Result<Self, ModelError> {
        config.format.check(model, "labeling")?;
        Ok(CaiLabeler {
            model,
            constitution,
            config,
            env: prompts.environment()?,
        })
    }

    /// The principles that judge this pair (RLAIF has one preamble instead).
    pub fn principles_for(&self, pair: &PreferencePair) -> Vec<usize> {
        let n = self.constitution.principles.len();
        if self.config.method == Method::Rlaif {
            return vec![0];
        }
        match self.config.principles {
            PrincipleChoice::All => (0..n).collect(),
            PrincipleChoice::Sample(k) => {
                let mut idx: Vec<usize> = (0..n).collect();
                let mut state = mix(self.config.seed ^ mix(pair.line as u64));
                for i in 0..k.min(n) {
                    state = mix(state);
                    let j = i + (state % (n - i) as u64) as usize;
                    idx.swap(i, j);
                }
                idx.truncate(k.min(n));
                idx
            }
        }
    }

    /// Whether the presented order shows the source's chosen reply first;
    /// drawn from the seed so the order never reveals the human choice.
    pub fn human_chosen_first(&self, pair: &PreferencePair) -> bool {
        mix(mix(self.config.seed.wrapping_add(0x51ed)) ^ pair.line as u64) & 1 == 0
    }

    /// The two option strings the model chooses between.
    fn options(&self) -> Vec<String> {
        match self.config.method {
            Method::Rlaif => vec!["1".into(), "2".into()],
            Method::Cai | Method::Cot => vec!["A".into(), "B".into()],
        }
    }

    /// The prompt for one principle and order, up to where the model answers
    /// (or, for CoT, starts its rationale).
    pub fn prompt(
        &self,
        pair: &PreferencePair,
        principle: usize,
        human_chosen_first: bool,
    ) -> Result<String, ModelError> {
        let (a, b) = if human_chosen_first {
            (&pair.chosen, &pair.rejected)
        } else {
            (&pair.rejected, &pair.chosen)
        };
        let template = if self.config.method == Method::Rlaif {
            "rlaif"
        } else {
            "cai_pairwise"
        };
        let question = self
            .env
            .get_template(template)
            .and_then(|t| {
                t.render(minijinja::context! {
                    conversation => &pair.conversation,
                    principle => &self.constitution.principles[principle],
                    option_a => a,
                    option_b => b,
                    examples => &self.constitution.few_shot[..self.config.few_shot.min(self.constitution.few_shot.len())],
                    reasoning => self.reasons(),
                    principle_last => self.config.principle_last,
                })
            })
            .map_err(|e| ModelError::InvalidRequest(format!("labeling template: {e}")))?;
        let cue = match self.config.method {
            Method::Cai => "The answer is (",
            Method::Rlaif if self.config.rationale => "Rationale:",
            Method::Rlaif => "Preferred Response=",
            Method::Cot => "Let's think step by step:",
        };
        self.config.format.frame(self.model, &question, cue)
    }

    /// Whether a rationale is sampled before the answer.
    fn reasons(&self) -> bool {
        self.config.method == Method::Cot
            || (self.config.method == Method::Rlaif && self.config.rationale)
    }

    /// Labels a batch of pairs; all their questions go to the model at once,
    /// so it can batch them and share their common prefixes.
    pub async fn label(&self, pairs: &[PreferencePair]) -> Result<Vec<PairLabel>, ModelError> {
        let mut prompts = Vec::new();
        let mut plan = Vec::new(); // (pair index, principle, human chosen first)
        for (pi, pair) in pairs.iter().enumerate() {
            let presented = self.human_chosen_first(pair);
            let orders: Vec<bool> = if self.config.debias {
                vec![presented, !presented]
            } else {
                vec![presented]
            };
            for principle in self.principles_for(pair) {
                for &first in &orders {
                    prompts.push(self.prompt(pair, principle, first)?);
                    plan.push((pi, principle, first));
                }
            }
        }
        // CoT (and RLAIF with rationales): sample a rationale per question,
        // then ask for the answer after it.
        let mut rationales: Vec<Option<String>> = vec![None; prompts.len()];
        if self.reasons() {
            let answer_cue = if self.config.method == Method::Rlaif {
                "Preferred Response="
            } else {
                "The answer is ("
            };
            let requests = prompts
                .iter()
                .zip(&plan)
                .map(|(prompt, &(pi, principle, first))| {
                    let seed = mix(self.config.seed
                        ^ mix(pairs[pi].line as u64)
                        ^ ((principle as u64) << 1 | first as u64));
                    qstar_core::GenerateRequest::new(
                        prompt.clone(),
                        qstar_core::SamplingParams {
                            temperature: 0.7,
                            top_p: 0.95,
                            seed,
                            max_tokens: self.config.rationale_tokens,
                            stop: vec![answer_cue
                                .trim_end_matches(['(', '='])
                                .trim_end()
                                .to_string()],
                            ..Default::default()
                        },
                    )
                })
                .collect();
            let answers = self.model.generate(requests).await?;
            for ((prompt, rationale), answer) in
                prompts.iter_mut().zip(&mut rationales).zip(answers)
            {
                let text = answer.into_first_text();
                prompt.push_str(&text);
                prompt.push('\n');
                prompt.push_str(answer_cue);
                *rationale = Some(text);
            }
        }
        let options = self.options();
        let requests = prompts
            .into_iter()
            .map(|prompt| ChooseRequest {
                prompt,
                options: options.clone(),
            })
            .collect();
        let answers = self.model.choose(requests).await?;
        let mut labels: Vec<PairLabel> = pairs
            .iter()
            .map(|p| PairLabel {
                p_human_chosen: 0.0,
                presented_human_chosen_first: self.human_chosen_first(p),
                judgements: Vec::new(),
            })
            .collect();
        let (low, high) = self.config.cot_clamp;
        for (((pi, principle, first), answer), rationale) in
            plan.into_iter().zip(answers).zip(rationales)
        {
            let p = answer.options[0].prob;
            labels[pi].judgements.push(Judgement {
                principle,
                human_chosen_first: first,
                p_a: if self.config.method == Method::Cot {
                    p.clamp(low, high)
                } else {
                    p
                },
                option_mass: Some(answer.mass),
                rationale,
            });
        }
        for label in &mut labels {
            let n = label.judgements.len().max(1) as f64;
            label.p_human_chosen = label
                .judgements
                .iter()
                .map(Judgement::p_human_chosen)
                .sum::<f64>()
                / n;
        }
        Ok(labels)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use qstar_core::Message;

    fn pair(line: usize) -> PreferencePair {
        PreferencePair {
            line,
            conversation: vec![Message::user("How do I pick a lock?")],
            chosen: "I can't help with breaking in.".into(),
            rejected: "Use a tension wrench.".into(),
            soft_label: None,
        }
    }

    #[test]
    fn principle_sampling_is_seeded_and_distinct() {
        let c = Constitution::default_constitution();
        let model = NoModel;
        let cfg = CaiConfig {
            principles: PrincipleChoice::Sample(4),
            ..Default::default()
        };
        let l = CaiLabeler::new(&model, &c, cfg.clone()).expect("labeler");
        let a = l.principles_for(&pair(7));
        assert_eq!(a.len(), 4);
        assert_eq!(a, l.principles_for(&pair(7)));
        let mut sorted = a.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), 4);
        let orders: std::collections::HashSet<bool> =
            (0..64).map(|i| l.human_chosen_first(&pair(i))).collect();
        assert_eq!(orders.len(), 2, "both presentation orders occur");
        let prompt = l.prompt(&pair(1), 0, false).expect("prompt");
        assert!(
            prompt.contains("(A) Use a tension wrench.") && prompt.ends_with("The answer is (")
        );
    }

    #[test]
    fn few_shot_examples_come_first_and_rationales_only_when_asked() {
        let c = Constitution::default_constitution();
        assert!(c.few_shot.len() >= 2);
        let model = NoModel;
        let plain = CaiLabeler::new(&model, &c, CaiConfig::default()).expect("labeler");
        let shots = CaiLabeler::new(
            &model,
            &c,
            CaiConfig {
                few_shot: 2,
                ..Default::default()
            },
        )
        .expect("labeler");
        let (p0, p2) = (
            plain.prompt(&pair(1), 0, true).expect("prompt"),
            shots.prompt(&pair(1), 0, true).expect("prompt"),
        );
        assert!(!p0.contains(&c.few_shot[0].response_a));
        let first_example = p2.find(&c.few_shot[0].response_a).expect("example 1");
        let second = p2.find(&c.few_shot[1].response_a).expect("example 2");
        let question = p2.find("How do I pick a lock?").expect("question");
        assert!(first_example < second && second < question);
        assert!(p2.contains(&format!("The answer is ({})", c.few_shot[0].preferred)));
        assert!(
            !p2.contains("Let's think step by step: "),
            "no rationale for plain CAI"
        );
        // The question itself is unchanged by the examples before it.
        let tail = |p: &str| p[p.rfind("Conversation:").expect("question")..].to_string();
        assert_eq!(tail(&p0), tail(&p2));

        let rlaif = CaiLabeler::new(
            &model,
            &c,
            CaiConfig {
                method: Method::Rlaif,
                few_shot: 1,
                rationale: true,
                ..Default::default()
            },
        )
        .expect("labeler");
        let p = rlaif.prompt(&pair(1), 0, true).expect("prompt");
        assert!(
            p.contains("Rationale: ") && p.ends_with("Rationale:"),
            "{p}"
        );
        let wanted = if c.few_shot[0].preferred == "A" {
            "1"
        } else {
            "2"
        };
        assert!(p.contains(&format!("Preferred Response={wanted}\n")));
    }

    #[test]
    fn the_principle_can_follow_the_replies() {
        let c = Constitution::default_constitution();
        let model = NoModel;
        let before = CaiLabeler::new(&model, &c, CaiConfig::default()).expect("labeler");
        let after = CaiLabeler::new(
            &model,
            &c,
            CaiConfig {
                principle_last: true,
                ..Default::default()
            },
        )
        .expect("labeler");
        let (p, q) = (
            before.prompt(&pair(1), 3, true).expect("prompt"),
            after.prompt(&pair(1), 3, true).expect("prompt"),
        );
        let at = |s: &str, what: &str| s.find(what).expect(what);
        assert!(at(&p, &c.principles[3]) < at(&p, "(A) "));
        assert!(at(&q, "(B) ") < at(&q, &c.principles[3]));
        // Same parts, other order: only the position of the principle moves.
        assert_eq!(p.len(), q.len());
        // Under another principle, everything up to the principle is shared.
        let other = after.prompt(&pair(1), 5, true).expect("prompt");
        assert!(other.starts_with(&q[..at(&q, &c.principles[3])]));
    }

    /// A model with no abilities but a chat template, for prompt tests.
    struct NoModel;

    #[async_trait::async_trait]
    impl LanguageModel for NoModel {
        fn backend_name(&self) -> String {
            "none".into()
        }
        fn capabilities(&self) -> qstar_core::Capabilities {
            qstar_core::Capabilities {
                generate: false,
                score: false,
                choose: false,
                max_top_logprobs: 0,
                chat_template: true,
            }
        }
        async fn generate(
            &self,
            _: Vec<qstar_core::GenerateRequest>,
        ) -> Result<Vec<qstar_core::GenerateResponse>, ModelError> {
            Err(ModelError::InvalidRequest("none".into()))
        }
        async fn score(
            &self,
            _: Vec<qstar_core::ScoreRequest>,
        ) -> Result<Vec<qstar_core::ScoreResponse>, ModelError> {
            Err(ModelError::InvalidRequest("none".into()))
        }
        async fn choose(
            &self,
            _: Vec<ChooseRequest>,
        ) -> Result<Vec<qstar_core::ChooseResponse>, ModelError> {
            Err(ModelError::InvalidRequest("none".into()))
        }
        fn render_chat(&self, m: &[Message], _: bool) -> Result<String, ModelError> {
            Ok(format!("<user>{}</user><assistant>", m[0].content))
        }
    }
}

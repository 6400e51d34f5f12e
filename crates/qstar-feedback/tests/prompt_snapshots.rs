//! Every prompt the labelers send, pinned by a snapshot: a change to a
//! template, to the way it is filled or to the way it is framed shows up as
//! a failing test. The model is a recorder whose chat template is a fixed
//! simple text, so the snapshots depend on no model file.

use std::sync::Mutex;

use async_trait::async_trait;
use qstar_core::{
    Capabilities, ChooseRequest, ChooseResponse, Completion, FinishReason, GenerateRequest,
    GenerateResponse, LanguageModel, Message, ModelError, OptionScore, ScoreRequest, ScoreResponse,
    Usage,
};
use qstar_feedback::{
    critique_and_revise, judge_prompts, judge_prompts_with, CaiConfig, CaiLabeler, Constitution,
    JudgeConfig, Method, PrincipleChoice, PromptFormat, Prompts, Rater, ReviseConfig,
};
use qstar_tasks::PreferencePair;

/// Records every prompt it is sent; its answers are fixed texts and even
/// odds.
#[derive(Default)]
struct Recorder {
    prompts: Mutex<Vec<String>>,
}

impl Recorder {
    fn take(&self) -> Vec<String> {
        std::mem::take(&mut *self.prompts.lock().expect("recorder lock"))
    }

    fn record(&self, prompt: String) {
        self.prompts.lock().expect("recorder lock").push(prompt);
    }
}

#[async_trait]
impl LanguageModel for Recorder {
    fn backend_name(&self) -> String {
        "recorder".into()
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            generate: true,
            score: false,
            choose: true,
            max_top_logprobs: 0,
            chat_template: true,
        }
    }

    async fn generate(
        &self,
        requests: Vec<GenerateRequest>,
    ) -> Result<Vec<GenerateResponse>, ModelError> {
        let mut out = Vec::new();
        for (i, r) in requests.into_iter().enumerate() {
            let prompt = match &r.messages {
                Some(m) => self.render_chat(m, true)?,
                None => r.prompt.clone(),
            };
            self.record(prompt);
            let text = if r.params.max_tokens <= 2 {
                "4".to_string()
            } else {
                format!("generated text {i}")
            };
            out.push(GenerateResponse {
                completions: (0..r.n)
                    .map(|k| Completion {
                        text: format!("{text}.{k}"),
                        token_ids: Vec::new(),
                        finish_reason: FinishReason::Stop,
                        logprobs: None,
                    })
                    .collect(),
                usage: Usage::default(),
            });
        }
        Ok(out)
    }

    async fn score(&self, _: Vec<ScoreRequest>) -> Result<Vec<ScoreResponse>, ModelError> {
        Err(ModelError::InvalidRequest(
            "the recorder does not score".into(),
        ))
    }

    async fn choose(
        &self,
        requests: Vec<ChooseRequest>,
    ) -> Result<Vec<ChooseResponse>, ModelError> {
        Ok(requests
            .into_iter()
            .map(|r| {
                self.record(r.prompt);
                let p = 1.0 / r.options.len() as f64;
                ChooseResponse {
                    options: r
                        .options
                        .into_iter()
                        .map(|text| OptionScore {
                            text,
                            logprob: p.ln(),
                            prob: p,
                        })
                        .collect(),
                    mass: 1.0,
                    usage: Usage::default(),
                }
            })
            .collect())
    }

    fn render_chat(
        &self,
        messages: &[Message],
        add_generation_prompt: bool,
    ) -> Result<String, ModelError> {
        let mut text: String = messages
            .iter()
            .map(|m| format!("<{}>\n{}\n</{}>\n", m.role, m.content, m.role))
            .collect();
        if add_generation_prompt {
            text.push_str("<assistant>\n");
        }
        Ok(text)
    }
}

fn pair() -> PreferencePair {
    PreferencePair {
        line: 3,
        conversation: vec![
            Message::user("My neighbour's dog barks all night."),
            Message::assistant("That sounds exhausting. Have you talked to them?"),
            Message::user("Yes. How do I make it stop for good?"),
        ],
        chosen: "Ask them again calmly, and if nothing changes, contact your local council.".into(),
        rejected: "Leave some poisoned meat by the fence.".into(),
        soft_label: None,
    }
}

/// The prompts one after another, each closed by a visible end mark: insta
/// trims trailing whitespace, and the end of a prompt (the space after
/// "Rating:", say) is what the model's next token depends on.
fn joined(prompts: &[String]) -> String {
    prompts
        .iter()
        .map(|p| format!("{p}⟨end⟩"))
        .collect::<Vec<_>>()
        .join("\n=====\n")
}

/// The question under the first principle, in both orders.
fn cai_questions(config: CaiConfig) -> String {
    let model = Recorder::default();
    let constitution = Constitution::default_constitution();
    let labeler = CaiLabeler::new(&model, &constitution, config).expect("labeler");
    joined(&[
        labeler.prompt(&pair(), 0, true).expect("prompt"),
        labeler.prompt(&pair(), 0, false).expect("prompt"),
    ])
}

/// Every prompt one pair's labeling sends, in order.
async fn labeling_prompts(config: CaiConfig) -> String {
    let model = Recorder::default();
    let constitution = Constitution::default_constitution();
    let labeler = CaiLabeler::new(&model, &constitution, config).expect("labeler");
    labeler.label(&[pair()]).await.expect("labels");
    joined(&model.take())
}

fn cai(method: Method) -> CaiConfig {
    CaiConfig {
        method,
        principles: PrincipleChoice::Sample(1),
        ..Default::default()
    }
}

#[test]
fn cai_question_principle_first() {
    insta::assert_snapshot!(cai_questions(cai(Method::Cai)));
}

#[test]
fn cai_question_principle_last() {
    insta::assert_snapshot!(cai_questions(CaiConfig {
        principle_last: true,
        ..cai(Method::Cai)
    }));
}

#[test]
fn cai_question_few_shot_principle_first() {
    insta::assert_snapshot!(cai_questions(CaiConfig {
        few_shot: 2,
        ..cai(Method::Cai)
    }));
}

#[test]
fn cai_question_few_shot_principle_last() {
    insta::assert_snapshot!(cai_questions(CaiConfig {
        few_shot: 2,
        principle_last: true,
        ..cai(Method::Cai)
    }));
}

#[test]
fn cai_question_plain() {
    insta::assert_snapshot!(cai_questions(CaiConfig {
        format: PromptFormat::Plain,
        ..cai(Method::Cai)
    }));
}

#[test]
fn cai_question_few_shot_plain() {
    insta::assert_snapshot!(cai_questions(CaiConfig {
        format: PromptFormat::Plain,
        few_shot: 2,
        ..cai(Method::Cai)
    }));
}

#[tokio::test]
async fn rlaif_without_rationale() {
    insta::assert_snapshot!(labeling_prompts(cai(Method::Rlaif)).await);
}

#[tokio::test]
async fn rlaif_with_rationale_and_few_shot() {
    insta::assert_snapshot!(
        labeling_prompts(CaiConfig {
            rationale: true,
            few_shot: 2,
            ..cai(Method::Rlaif)
        })
        .await
    );
}

#[tokio::test]
async fn rlaif_with_rationale_plain() {
    insta::assert_snapshot!(
        labeling_prompts(CaiConfig {
            rationale: true,
            format: PromptFormat::Plain,
            ..cai(Method::Rlaif)
        })
        .await
    );
}

#[tokio::test]
async fn cot_rationale_then_answer() {
    insta::assert_snapshot!(labeling_prompts(cai(Method::Cot)).await);
}

#[tokio::test]
async fn cot_few_shot_with_example_rationales() {
    insta::assert_snapshot!(
        labeling_prompts(CaiConfig {
            few_shot: 2,
            ..cai(Method::Cot)
        })
        .await
    );
}

fn rating_questions(format: PromptFormat, prompts: &Prompts) -> String {
    let model = Recorder::default();
    let rater = Rater::with_prompts(&model, format, prompts).expect("rater");
    let p = pair();
    rater
        .prompt(&p.conversation, &p.chosen)
        .expect("rating prompt")
}

#[test]
fn d_rlaif_rating_chat() {
    insta::assert_snapshot!(format!(
        "{}⟨end⟩",
        rating_questions(PromptFormat::Chat, &Prompts::builtin())
    ));
}

#[test]
fn d_rlaif_rating_plain() {
    insta::assert_snapshot!(format!(
        "{}⟨end⟩",
        rating_questions(PromptFormat::Plain, &Prompts::builtin())
    ));
}

#[tokio::test]
async fn critique_and_revision_requests() {
    let model = Recorder::default();
    let constitution = Constitution::default_constitution();
    let config = ReviseConfig {
        rounds: 2,
        ..Default::default()
    };
    critique_and_revise(
        &model,
        &constitution,
        &config,
        &[(5, "How do I get back at a coworker who insulted me?".into())],
    )
    .await
    .expect("revisions");
    insta::assert_snapshot!(joined(&model.take()));
}

#[tokio::test]
async fn judge_rubric() {
    let model = Recorder::default();
    let config = JudgeConfig {
        samples: 2,
        ..Default::default()
    };
    judge_prompts(
        &model,
        &config,
        &[(1, "What is the boiling point of water?".into())],
    )
    .await
    .expect("judged");
    insta::assert_snapshot!(joined(&model.take()));
}

/// A directory of overrides: the replaced template changes its prompt and
/// nothing else.
#[tokio::test]
async fn an_override_changes_exactly_its_prompt() {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(
        dir.path().join("rate.j2"),
        "Score this reply from 1 to 10: {{ reply }}\n",
    )
    .expect("write");
    let prompts = Prompts::from_dir(dir.path()).expect("overrides load");
    let builtin = Prompts::builtin();
    for name in Prompts::NAMES {
        if name == "rate" {
            assert_ne!(prompts.source(name), builtin.source(name));
        } else {
            assert_eq!(prompts.source(name), builtin.source(name), "{name}");
        }
    }
    // The rating question is the override, framed as before (minijinja drops
    // the file's final newline).
    assert_eq!(
        rating_questions(PromptFormat::Chat, &prompts),
        format!(
            "<user>\nScore this reply from 1 to 10: {}\n</user>\n<assistant>\nRating: ",
            pair().chosen
        )
    );
    // The other prompts render exactly as the built-in ones.
    let model = Recorder::default();
    let constitution = Constitution::default_constitution();
    for method in [Method::Cai, Method::Rlaif] {
        let config = CaiConfig {
            few_shot: 1,
            ..cai(method)
        };
        let ours = CaiLabeler::with_prompts(&model, &constitution, config.clone(), &prompts)
            .expect("labeler");
        let theirs = CaiLabeler::new(&model, &constitution, config).expect("labeler");
        assert_eq!(
            ours.prompt(&pair(), 2, false).expect("prompt"),
            theirs.prompt(&pair(), 2, false).expect("prompt")
        );
    }
    let question = [(9, "Name a prime number.".to_string())];
    judge_prompts_with(&model, &prompts, &JudgeConfig::default(), &question)
        .await
        .expect("judged");
    let ours = model.take();
    judge_prompts(&model, &JudgeConfig::default(), &question)
        .await
        .expect("judged");
    assert_eq!(ours, model.take());
}

#[test]
fn overriding_the_judge_rubric_reaches_the_judge() {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(
        dir.path().join("judge.j2"),
        "Grade {{ response }} for {{ question }}.",
    )
    .expect("write");
    let prompts = Prompts::from_dir(dir.path()).expect("overrides load");
    let model = Recorder::default();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    runtime
        .block_on(judge_prompts_with(
            &model,
            &prompts,
            &JudgeConfig {
                samples: 1,
                ..Default::default()
            },
            &[(2, "Why is the sky blue?".into())],
        ))
        .expect("judged");
    let sent = model.take();
    assert_eq!(
        sent[1],
        "<user>\nGrade generated text 0.0 for Why is the sky blue?.\n</user>\n<assistant>\n"
    );
}

#[test]
fn unknown_files_and_broken_templates_are_errors_naming_them() {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(dir.path().join("rating.j2"), "x").expect("write");
    let err = Prompts::from_dir(dir.path())
        .expect_err("unknown name")
        .to_string();
    assert!(
        err.contains("rating.j2") && err.contains("cai_pairwise.j2, rlaif.j2, rate.j2, judge.j2"),
        "{err}"
    );
    std::fs::remove_file(dir.path().join("rating.j2")).expect("remove");
    std::fs::write(dir.path().join("rlaif.j2"), "{% for x in y %} no end").expect("write");
    let err = Prompts::from_dir(dir.path())
        .expect_err("broken template")
        .to_string();
    assert!(
        err.contains("rlaif.j2") && err.contains("line 1") && err.contains("does not parse"),
        "{err}"
    );
    let missing = dir.path().join("absent");
    let err = Prompts::from_dir(&missing)
        .expect_err("missing directory")
        .to_string();
    assert!(err.contains("absent"), "{err}");
}

//! The search's prompts, pinned by snapshots, and the directory of
//! overrides that replaces them.

use std::sync::Mutex;

use async_trait::async_trait;
use qstar_core::{
    Capabilities, ChooseRequest, ChooseResponse, GenerateRequest, GenerateResponse, LanguageModel,
    Message, ModelError, OptionScore, ScoreRequest, ScoreResponse, Usage,
};
use qstar_search::prompts::REFLECTION;
use qstar_search::{JudgeVerifier, Meter, Prompts, SearchConfig, Searcher, Tree, Verifier};
use qstar_tasks::{Problem, Task};

const QUESTION: &str = "  Tom has 3 apples and buys 4 more. How many apples does he have?\n";
const STEPS: &str = "Tom starts with 3 apples.\n\nHe buys 4 more, so 3 + 4 = 8.\n\n";

#[test]
fn step_judge() {
    // The end mark keeps the prompt's trailing whitespace, which insta trims.
    insta::assert_snapshot!(format!(
        "{}⟨end⟩",
        Prompts::builtin()
            .step_judge(QUESTION, STEPS)
            .expect("renders")
    ));
}

#[test]
fn revision_request() {
    insta::assert_snapshot!(format!(
        "{}⟨end⟩",
        Prompts::builtin()
            .revision(
                QUESTION,
                "Solve step by step and end with \"#### <answer>\".",
                "\n3 + 4 = 8\n#### 8\n",
            )
            .expect("renders")
    ));
}

#[test]
fn reflection() {
    let text = Prompts::builtin().reflection().expect("renders");
    assert_eq!(text, REFLECTION);
    // Debug formatting makes the trailing newlines visible in the snapshot.
    insta::assert_snapshot!(format!("{text:?}"));
}

/// Answers every choice with even odds and keeps the prompts.
#[derive(Default)]
struct Recorder {
    prompts: Mutex<Vec<String>>,
}

#[async_trait]
impl LanguageModel for Recorder {
    fn backend_name(&self) -> String {
        "recorder".into()
    }
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            generate: false,
            score: false,
            choose: true,
            max_top_logprobs: 0,
            chat_template: true,
        }
    }
    async fn generate(&self, _: Vec<GenerateRequest>) -> Result<Vec<GenerateResponse>, ModelError> {
        Err(ModelError::InvalidRequest(
            "the recorder does not generate".into(),
        ))
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
        let mut sent = self.prompts.lock().expect("recorder lock");
        Ok(requests
            .into_iter()
            .map(|r| {
                sent.push(r.prompt);
                ChooseResponse {
                    options: r
                        .options
                        .into_iter()
                        .map(|text| OptionScore {
                            text,
                            logprob: 0.5f64.ln(),
                            prob: 0.5,
                        })
                        .collect(),
                    mass: 1.0,
                    usage: Usage::default(),
                }
            })
            .collect())
    }
    fn render_chat(&self, messages: &[Message], generation: bool) -> Result<String, ModelError> {
        let mut text: String = messages
            .iter()
            .map(|m| format!("<{}>\n{}\n</{}>\n", m.role, m.content, m.role))
            .collect();
        if generation {
            text.push_str("<assistant>\n");
        }
        Ok(text)
    }
}

/// The question the PRM judge sends for one step under `config`.
async fn judged_prompt(config: &SearchConfig) -> String {
    let model = Recorder::default();
    let problem = Problem {
        line: 1,
        question: QUESTION.into(),
        answer: "7".into(),
    };
    let meter = Meter::new(0);
    let s = Searcher::new(&model, Task::Gsm8k, &problem, config, &meter).expect("searcher");
    let mut tree = Tree::new();
    let step = tree.add(Tree::ROOT, "3 + 4 = 7".into(), Vec::new());
    let judge = JudgeVerifier {
        model: &model,
        outcome_only: false,
    };
    judge.score(&s, &mut tree, &[step]).await.expect("judged");
    let mut sent = model.prompts.lock().expect("recorder lock");
    assert_eq!(sent.len(), 1);
    sent.remove(0)
}

#[tokio::test]
async fn an_override_changes_exactly_its_prompt() {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(
        dir.path().join("step_judge.j2"),
        "Is this right? {{ solution }} (for: {{ problem }})",
    )
    .expect("write");
    let prompts = Prompts::from_dir(dir.path()).expect("overrides load");
    let builtin = Prompts::builtin();
    assert_ne!(prompts.source("step_judge"), builtin.source("step_judge"));
    for name in ["revision", "reflection"] {
        assert_eq!(prompts.source(name), builtin.source(name), "{name}");
    }
    assert_eq!(
        prompts.revision("Q", "I", "A").expect("renders"),
        builtin.revision("Q", "I", "A").expect("renders")
    );
    assert_eq!(prompts.reflection().expect("renders"), REFLECTION);
    // The judge verifier sends the override through the configuration.
    let config = SearchConfig {
        prompts,
        ..Default::default()
    };
    assert_eq!(
        judged_prompt(&config).await,
        "<user>\nIs this right? 3 + 4 = 7 (for: Tom has 3 apples and buys 4 more. \
         How many apples does he have?)\n</user>\n<assistant>\n"
    );
    let default = judged_prompt(&SearchConfig::default()).await;
    assert_eq!(
        default,
        format!(
            "<user>\n{}\n</user>\n<assistant>\n",
            builtin.step_judge(QUESTION, "3 + 4 = 7").expect("renders")
        )
    );
}

#[test]
fn the_prompts_are_never_serialized() {
    let mut config = SearchConfig::default();
    let plain = serde_json::to_string(&config).expect("serializes");
    config
        .prompts
        .set("reflection", "Let me check again.\n".into())
        .expect("parses");
    assert_eq!(serde_json::to_string(&config).expect("serializes"), plain);
    assert!(!plain.contains("prompts"));
}

#[test]
fn unknown_files_and_broken_templates_are_errors_naming_them() {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(dir.path().join("reflection.txt"), "x").expect("write");
    let err = Prompts::from_dir(dir.path())
        .expect_err("unknown name")
        .to_string();
    assert!(
        err.contains("reflection.txt") && err.contains("step_judge.j2, revision.j2, reflection.j2"),
        "{err}"
    );
    std::fs::remove_file(dir.path().join("reflection.txt")).expect("remove");
    std::fs::write(dir.path().join("revision.j2"), "{{ attempt ").expect("write");
    let err = Prompts::from_dir(dir.path())
        .expect_err("broken template")
        .to_string();
    assert!(
        err.contains("revision.j2") && err.contains("does not parse"),
        "{err}"
    );
}

//! The original Constitutional-AI principle files (read from the shared data
//! folder, never copied into the project) load as a constitution and label
//! pairs on the real model.

use qstar_core::Message;
use qstar_feedback::{CaiConfig, CaiLabeler, Constitution, PrincipleChoice};
use qstar_tasks::PreferencePair;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cai_principle_index_labels_pairs() {
    let Some(path) = qstar_core::shared_data::shared_file_or_skip(
        "the_cai_principle_index_labels_pairs",
        "data/cai/cai_principles.json",
    ) else {
        return;
    };
    let c = Constitution::load(&path).expect("CAI index loads");
    assert_eq!(c.principles.len(), 16);
    assert_eq!(c.critiques.len(), 16);
    assert!(c
        .principles
        .iter()
        .all(|p| !p.contains("Options:") && !p.is_empty()));
    assert!(c
        .critiques
        .iter()
        .all(|x| !x.critique.contains("CritiqueRequest")));

    let model = qstar_engine::Engine::load(
        &qstar_engine::fetch::default_model_path(),
        qstar_engine::EngineOptions::default(),
    )
    .expect("model");
    let labeler = CaiLabeler::new(
        &model,
        &c,
        CaiConfig {
            principles: PrincipleChoice::Sample(2),
            ..Default::default()
        },
    )
    .expect("labeler");
    let pair = PreferencePair {
        line: 1,
        conversation: vec![Message::user("How can I hurt someone without leaving marks?")],
        chosen: "I won't help hurt anyone. If you're in a conflict, I can suggest ways to step back or get help.".into(),
        rejected: "Use a wet towel so there are no bruises.".into(),
        soft_label: None,
    };
    let labels = labeler.label(&[pair]).await.expect("label");
    assert_eq!(labels[0].judgements.len(), 4);
    assert!((0.0..=1.0).contains(&labels[0].p_human_chosen));
}

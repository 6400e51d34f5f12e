//! SFT rows on the real model's tokenizer and chat template: what is masked,
//! what is learned, and the errors of bad rows.

use std::io::Write;

use qstar_engine::LoadedModel;
use qstar_tasks::Task;
use qstar_train::data::read_sft;

fn model() -> LoadedModel {
    let path = qstar_engine::fetch::default_model_path();
    assert!(
        path.exists(),
        "the default model is missing; run `qstar model fetch`"
    );
    LoadedModel::load(&path).expect("model")
}

fn file(lines: &[&str]) -> tempfile::NamedTempFile {
    let mut f = tempfile::NamedTempFile::new().expect("file");
    for l in lines {
        writeln!(f, "{l}").expect("write");
    }
    f
}

/// The learned tokens and the tokens before the first learned one, as text.
fn split(m: &LoadedModel, s: &qstar_train::Sequence) -> (String, String) {
    let first = s
        .predict
        .iter()
        .position(|&p| p)
        .expect("something learned")
        + 1;
    let learned: Vec<u32> = (1..s.tokens.len())
        .filter(|&j| s.predict[j - 1])
        .map(|j| s.tokens[j])
        .collect();
    (
        m.tokenizer.decode(&s.tokens[..first]),
        m.tokenizer.decode(&learned),
    )
}

#[test]
fn every_row_form_learns_only_the_reply() {
    let m = model();
    let chat = m.chat.as_ref().expect("template");
    let f = file(&[
        r#"{"question": "What is 47 + 38?", "answer": "47 + 38 = 85\n#### 85"}"#,
        r#"{"prompt": [{"role": "user", "content": "Hi"}], "completion": [{"role": "assistant", "content": "Hello!"}]}"#,
        r#"{"messages": [{"role": "user", "content": "A"}, {"role": "assistant", "content": "B"}, {"role": "user", "content": "C"}, {"role": "assistant", "content": "D"}]}"#,
        "",
        r#"{"prompt": "2 + 2 =", "completion": " 4"}"#,
    ]);
    let data = read_sft(f.path(), &m, Some(Task::Gsm8k), 4096).expect("rows");
    assert_eq!(data.lines, vec![1, 2, 3, 5]);

    // A question is framed as `qstar solve --task gsm8k` frames it.
    let q = &data.sequences[0];
    let solve_prompt = chat
        .render(
            &[qstar_core::Message::user(format!(
                "What is 47 + 38?\n\n{}",
                Task::Gsm8k.instruction()
            ))],
            true,
        )
        .expect("render");
    let prompt_ids = m.tokenizer.encode(&solve_prompt, m.tokenizer.add_bos);
    assert_eq!(
        &q.tokens[..prompt_ids.len()],
        &prompt_ids[..],
        "the prompt's tokens are solve's"
    );
    assert!(
        q.predict[..prompt_ids.len() - 1].iter().all(|&p| !p),
        "the prompt is masked"
    );
    let (_, reply) = split(&m, q);
    assert_eq!(reply, "47 + 38 = 85\n\nThe answer is 85.<|im_end|>\n");

    let (_, reply) = split(&m, &data.sequences[1]);
    assert_eq!(reply, "Hello!<|im_end|>\n");

    // Both assistant turns are learned, neither user turn.
    let s = &data.sequences[2];
    let learned: Vec<u32> = (1..s.tokens.len())
        .filter(|&j| s.predict[j - 1])
        .map(|j| s.tokens[j])
        .collect();
    assert_eq!(m.tokenizer.decode(&learned), "B<|im_end|>\nD<|im_end|>\n");

    // With --task, a plain prompt is a question too; without, it is raw text.
    let (_, reply) = split(&m, &data.sequences[3]);
    assert_eq!(reply, " 4<|im_end|>\n");
    let raw = read_sft(f.path(), &m, None, 4096).expect("rows");
    let (prompt, reply) = split(&m, &raw.sequences[3]);
    assert_eq!(prompt, "2 + 2 =");
    let eos = m.tokenizer.token_text(m.tokenizer.eos.expect("eos"));
    assert_eq!(reply, format!(" 4{eos}"));
    let (_, reply) = split(&m, &raw.sequences[0]);
    assert_eq!(
        reply, "47 + 38 = 85\n#### 85<|im_end|>\n",
        "no task: the answer as written"
    );
}

#[test]
fn a_bad_row_names_its_file_and_line() {
    let m = model();
    let cases = [
        ("not json", "not JSON"),
        (r#"{"question": "q"}"#, "needs a string `answer`"),
        (
            r#"{"messages": [{"role": "user", "content": "only a question"}]}"#,
            "no assistant turn",
        ),
        (r#"{"messages": [{"role": "user"}]}"#, "no string `content`"),
        (r#"{"prompt": "p"}"#, "a row needs"),
        (r#"{"question": "q", "answer": "no marker"}"#, "####"),
        (r#"[1, 2]"#, "JSON object"),
        (
            r#"{"question": "q q q q q q q q q q q q q q q q q q q q q q q q q q q q q q q q q q q q q q q q", "answer": "x\n#### 1"}"#,
            "more than the 80",
        ),
    ];
    for (row, want) in cases {
        let f = file(&[r#"{"question": "fine", "answer": "1\n#### 1"}"#, row]);
        let err = match read_sft(
            f.path(),
            &m,
            Some(Task::Gsm8k),
            if want.contains("more than") { 80 } else { 4096 },
        ) {
            Err(e) => e,
            Ok(_) => panic!("{row:?} was accepted"),
        };
        let text = err.to_string();
        assert!(err.is_input_error(), "{text}");
        assert!(
            text.contains(&format!("{}:2:", f.path().display())),
            "{text}"
        );
        assert!(text.contains(want), "{row:?}: {text}");
    }
}

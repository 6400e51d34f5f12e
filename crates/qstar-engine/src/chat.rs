//! The model's chat template, rendered as Hugging Face's `apply_chat_template`
//! renders it: Jinja with `messages`, `add_generation_prompt`, `bos_token` and
//! `eos_token`, plus Python-style string methods many templates use.

use std::io::Write;

use minijinja::{Environment, ErrorKind};
use qstar_core::Message;
use serde::Serialize;

use crate::error::EngineError;

/// The template comes from the model file, so its time is bounded: a loop
/// nested in a loop must end in an error, not a hang. (Memory is bounded
/// only for the output, below: a template that doubles a string in a
/// variable a few dozen times can still build a large one.) Instructions per
/// render: SmolLM2's template spends a few dozen per message, so this
/// leaves room for conversations of well over 100,000 turns.
const FUEL: u64 = 10_000_000;

/// The most a rendering may write; beyond it the rendering is an error
/// rather than a prompt of gigabytes.
const MAX_OUTPUT_BYTES: usize = 64 << 20;

pub struct ChatTemplate {
    env: Environment<'static>,
    pub source: String,
    bos_token: String,
    eos_token: String,
}

#[derive(Serialize)]
struct Context<'a> {
    messages: &'a [Message],
    add_generation_prompt: bool,
    bos_token: &'a str,
    eos_token: &'a str,
}

impl ChatTemplate {
    pub fn new(source: &str, bos_token: &str, eos_token: &str) -> Result<Self, EngineError> {
        let mut env = Environment::new();
        minijinja_contrib::add_to_environment(&mut env);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        // Templates call this to reject conversations they cannot render.
        env.add_function(
            "raise_exception",
            |msg: String| -> Result<String, minijinja::Error> {
                Err(minijinja::Error::new(ErrorKind::InvalidOperation, msg))
            },
        );
        env.set_fuel(Some(FUEL));
        // HF renders with trim_blocks and lstrip_blocks on.
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.add_template_owned("chat", source.to_string())
            .map_err(|e| EngineError::Template(e.to_string()))?;
        Ok(ChatTemplate {
            env,
            source: source.to_string(),
            bos_token: bos_token.to_string(),
            eos_token: eos_token.to_string(),
        })
    }

    pub fn render(
        &self,
        messages: &[Message],
        add_generation_prompt: bool,
    ) -> Result<String, EngineError> {
        let template = self
            .env
            .get_template("chat")
            .map_err(|e| EngineError::Template(e.to_string()))?;
        let mut out = CappedOutput::default();
        template
            .render_captured_to(
                Context {
                    messages,
                    add_generation_prompt,
                    bos_token: &self.bos_token,
                    eos_token: &self.eos_token,
                },
                &mut out,
            )
            .map_err(|e| {
                EngineError::Template(if out.overflowed {
                    format!("the output passed {} MiB", MAX_OUTPUT_BYTES >> 20)
                } else {
                    e.to_string()
                })
            })?;
        String::from_utf8(out.bytes).map_err(|e| EngineError::Template(e.to_string()))
    }
}

/// A buffer that refuses to grow past [`MAX_OUTPUT_BYTES`].
#[derive(Default)]
struct CappedOutput {
    bytes: Vec<u8>,
    overflowed: bool,
}

impl Write for CappedOutput {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.bytes.len() + buf.len() > MAX_OUTPUT_BYTES {
            self.overflowed = true;
            return Err(std::io::ErrorKind::OutOfMemory.into());
        }
        self.bytes.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_messages_and_generation_prompt() {
        let t = ChatTemplate::new(
            "{% for m in messages %}<{{ m.role }}>{{ m.content | trim }}\n{% endfor %}{% if add_generation_prompt %}<assistant>{% endif %}",
            "<s>",
            "</s>",
        )
        .expect("template");
        let out = t.render(&[Message::user(" hi ")], true).expect("render");
        assert_eq!(out, "<user>hi\n<assistant>");
    }

    #[test]
    fn a_template_that_loops_for_ever_runs_out_of_fuel() {
        let t = ChatTemplate::new(
            "{% for a in range(100000) %}{% for b in range(100000) %}{% endfor %}{% endfor %}",
            "",
            "",
        )
        .expect("t");
        let err = t.render(&[], false).unwrap_err();
        assert!(err.to_string().contains("fuel"), "{err}");
    }

    #[test]
    fn a_template_that_writes_gigabytes_is_stopped() {
        let t = ChatTemplate::new(
            "{% for a in range(100) %}{{ 'x' * 10000000 }}{% endfor %}",
            "",
            "",
        )
        .expect("t");
        let err = t.render(&[], false).unwrap_err();
        assert!(err.to_string().contains("MiB"), "{err}");
    }

    #[test]
    fn raise_exception_is_an_error() {
        let t = ChatTemplate::new("{{ raise_exception('no system role') }}", "", "").expect("t");
        let err = t.render(&[], false).unwrap_err();
        assert!(err.to_string().contains("no system role"));
    }
}

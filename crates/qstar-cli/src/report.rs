//! What the job commands print goes through one [`Reporter`]: the summary
//! on stdout (lines and Markdown tables, or one JSON line under `--json`),
//! notes and progress bars on stderr, so a script reading stdout never
//! sees a note. A closed stdout (`qstar … | head -1`) ends the output
//! quietly instead of panicking.

use std::io::Write;

use anyhow::Result;
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

#[derive(Debug, Clone, Copy)]
pub struct Reporter {
    json: bool,
}

impl Reporter {
    /// A reporter whose summaries are JSON when `json`.
    pub fn new(json: bool) -> Self {
        Reporter { json }
    }

    /// A line for the person watching the run, on stderr.
    pub fn note(&self, text: &str) {
        let _ = writeln!(std::io::stderr().lock(), "{text}");
    }

    /// A progress bar over `len` items of which `done` are done, on stderr
    /// (drawn only on a terminal).
    pub fn progress(&self, len: usize, done: usize, label: &str, unit: &str) -> ProgressBar {
        let bar = ProgressBar::new(len as u64);
        bar.set_style(
            ProgressStyle::with_template(&format!(
                "{label} {{bar:30}} {{pos}}/{{len}} {unit}  {{per_sec}}  eta {{eta}}"
            ))
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        bar.set_position(done as u64);
        bar
    }

    /// A command's summary: `figures` as one JSON line under `--json`,
    /// otherwise `text`.
    pub fn summary(&self, figures: &impl Serialize, text: &Text) -> Result<()> {
        if self.json {
            let line = serde_json::to_string(figures)?;
            write_stdout(std::slice::from_ref(&line))
        } else {
            write_stdout(&text.lines)
        }
    }
}

/// Writes lines to stdout; a reader that went away is not an error.
fn write_stdout(lines: &[String]) -> Result<()> {
    let mut out = std::io::stdout().lock();
    for l in lines {
        match writeln!(out, "{l}") {
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return Ok(()),
            r => r?,
        }
    }
    Ok(())
}

/// The human-readable form of a summary: lines and Markdown tables.
#[derive(Debug, Default)]
pub struct Text {
    lines: Vec<String>,
}

/// How a table column is aligned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Align {
    Left,
    Right,
}

impl Text {
    pub fn new() -> Self {
        Text::default()
    }

    pub fn line(mut self, text: impl Into<String>) -> Self {
        self.lines.push(text.into());
        self
    }

    /// A Markdown table: the header, the alignment row, then `rows` (an
    /// empty cell is written as `| |`).
    pub fn table(mut self, header: &[&str], align: &[Align], rows: &[Vec<String>]) -> Self {
        let row = |cells: &mut dyn Iterator<Item = &str>| {
            let mut s = String::from("|");
            for c in cells {
                if c.is_empty() {
                    s.push_str(" |");
                } else {
                    s.push_str(&format!(" {c} |"));
                }
            }
            s
        };
        self.lines.push(row(&mut header.iter().copied()));
        let rule: Vec<&str> = align
            .iter()
            .map(|a| match a {
                Align::Left => "---",
                Align::Right => "---:",
            })
            .collect();
        self.lines.push(row(&mut rule.iter().copied()));
        for r in rows {
            self.lines.push(row(&mut r.iter().map(String::as_str)));
        }
        self
    }

    /// The two-column `| metric | value |` table of a job's figures.
    pub fn metrics(self, rows: &[(&str, String)]) -> Self {
        let rows: Vec<Vec<String>> = rows
            .iter()
            .map(|(k, v)| vec![k.to_string(), v.clone()])
            .collect();
        self.table(&["metric", "value"], &[Align::Left, Align::Right], &rows)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_are_markdown_with_empty_cells_kept_narrow() {
        let text = Text::new()
            .line("title")
            .table(
                &["a", "N"],
                &[Align::Left, Align::Right],
                &[
                    vec!["x".into(), "1".into()],
                    vec!["y".into(), String::new()],
                ],
            )
            .metrics(&[("mean", "0.5".into())]);
        assert_eq!(
            text.lines,
            [
                "title",
                "| a | N |",
                "| --- | ---: |",
                "| x | 1 |",
                "| y | |",
                "| metric | value |",
                "| --- | ---: |",
                "| mean | 0.5 |",
            ]
        );
    }
}

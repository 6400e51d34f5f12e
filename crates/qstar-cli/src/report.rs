//! Everything the binary prints goes through one [`Reporter`]: data and
//! summaries on stdout (lines and Markdown tables, or JSON under `--json`),
//! notes and progress bars on stderr, so a script reading stdout never
//! sees a note. A closed stdout (`qstar … | head -1`) ends the output
//! quietly instead of panicking. Nothing else in the binary prints; the
//! last-resort error line of `main` is [`error`].

use std::io::Write;

use anyhow::Result;
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

/// The default reporter writes text (no `--json`); its notes go to stderr
/// like every reporter's.
#[derive(Debug, Clone, Copy, Default)]
pub struct Reporter {
    json: bool,
}

impl Reporter {
    /// A reporter whose summaries are JSON when `json`.
    pub fn new(json: bool) -> Self {
        Reporter { json }
    }

    /// Whether summaries are JSON.
    pub fn is_json(&self) -> bool {
        self.json
    }

    /// A line for the person watching the run, on stderr.
    pub fn note(&self, text: &str) {
        let _ = writeln!(std::io::stderr().lock(), "{text}");
    }

    /// Before a plot is drawn: a note on stderr, whatever the output mode,
    /// when no font was found and the plot will have no text.
    pub fn before_plot(&self) {
        if !qstar_eval::plot::font_available() {
            self.note("warning: no TrueType font found (set QSTAR_FONT); the plot has no text");
        }
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

    /// A byte counter for a download of a size learnt on the way, on
    /// stderr (drawn only on a terminal).
    pub fn download_progress(&self) -> ProgressBar {
        let bar = ProgressBar::new(0);
        bar.set_style(
            ProgressStyle::with_template(
                "{spinner} {bytes}/{total_bytes} {bar:30} {bytes_per_sec} eta {eta}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        bar
    }

    /// A progress bar whose line ends with a message the caller updates
    /// (a training run's loss and speed).
    pub fn progress_with_message(
        &self,
        len: usize,
        done: usize,
        label: &str,
        unit: &str,
    ) -> ProgressBar {
        let bar = self.progress(len, done, label, unit);
        bar.set_style(
            ProgressStyle::with_template(&format!(
                "{label} {{bar:30}} {{pos}}/{{len}} {unit}  {{msg}}  eta {{eta}}"
            ))
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
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

    /// A summary whose JSON form is indented (a model's description, a
    /// benchmark report): `figures` pretty-printed under `--json`,
    /// otherwise `text`.
    pub fn summary_pretty(&self, figures: &impl Serialize, text: &Text) -> Result<()> {
        if self.json {
            let json = serde_json::to_string_pretty(figures)?;
            write_stdout(std::slice::from_ref(&json))
        } else {
            write_stdout(&text.lines)
        }
    }

    /// Lines on stdout in every mode: the result itself (a path, a worker's
    /// figures for the process that started it).
    pub fn data(&self, text: &Text) -> Result<()> {
        write_stdout(&text.lines)
    }
}

/// Logs (`QSTAR_LOG`, default `warn`) go to stderr, like every other line
/// that is not data.
pub fn init_logging() {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("QSTAR_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
}

/// The error that ends the program, on stderr: the one print outside a
/// [`Reporter`], for failures before or after any command runs.
pub fn error(message: impl std::fmt::Display) {
    let _ = writeln!(std::io::stderr().lock(), "error: {message}");
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

    /// The lines as they will be written.
    #[cfg(test)]
    pub fn lines(&self) -> &[String] {
        &self.lines
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
    fn nothing_outside_this_module_prints() {
        let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut offenders = Vec::new();
        let mut files = 0;
        // Every source file, in subdirectories too.
        let mut dirs = vec![src];
        while let Some(dir) = dirs.pop() {
            for entry in std::fs::read_dir(&dir).expect("src") {
                let path = entry.expect("entry").path();
                if path.is_dir() {
                    dirs.push(path);
                    continue;
                }
                if path.extension().is_none_or(|e| e != "rs") || path.ends_with("report.rs") {
                    continue;
                }
                files += 1;
                let text = std::fs::read_to_string(&path).expect("source");
                for (i, line) in text.lines().enumerate() {
                    let printing = ["print!(", "println!(", "eprint!(", "eprintln!(", "dbg!("]
                        .iter()
                        .any(|m| line.contains(m));
                    // The standard streams, called or passed as a value
                    // (`io::stderr`), imported and called (`stderr()`).
                    let streams = ["stdout", "stderr"].iter().any(|s| {
                        line.contains(&format!("io::{s}")) || line.contains(&format!("{s}()"))
                    });
                    if printing || streams {
                        offenders.push(format!("{}:{}: {}", path.display(), i + 1, line.trim()));
                    }
                }
            }
        }
        assert!(files > 10, "read {files} source files");
        assert!(offenders.is_empty(), "{}", offenders.join("\n"));
    }

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

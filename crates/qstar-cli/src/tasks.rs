//! `qstar tasks generate`: seeded synthetic question sets (arithmetic and
//! the serial problems) in the JSONL layout `qstar solve` reads.

use std::path::PathBuf;

use anyhow::Result;
use clap::{Args, ValueEnum};
use qstar_tasks::{arithmetic_problem_in, ArithmeticFormat, SerialFormat, Task};
use serde_json::json;

use crate::job::write_lines;
use crate::report::Reporter;
use crate::UsageError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum FormatArg {
    Cot,
    Direct,
    /// Arithmetic only: each addition worked column by column (a scratchpad).
    Columns,
}

#[derive(Args)]
pub struct GenerateTasksArgs {
    /// arithmetic or serial:<modadd|permutation|squaring|circuit>.
    #[arg(long)]
    pub task: String,
    #[arg(long, default_value_t = 100)]
    pub count: usize,
    /// Serial chain length, or the number of terms of an arithmetic sum.
    #[arg(long, default_value_t = 2)]
    pub size: usize,
    /// Digits per arithmetic term.
    #[arg(long, default_value_t = 2)]
    pub digits: u32,
    /// Worked answers: intermediate steps (cot), the answer only (direct),
    /// or for arithmetic each addition column by column (columns).
    #[arg(long, value_enum, default_value = "cot")]
    pub format: FormatArg,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[arg(long)]
    pub out: PathBuf,
}

pub fn generate(args: GenerateTasksArgs) -> Result<()> {
    if args.digits == 0 || args.digits > 9 {
        return Err(UsageError("--digits takes 1 to 9".into()).into());
    }
    let rows: Vec<String> = if args.task == "arithmetic" {
        let format = match args.format {
            FormatArg::Cot => ArithmeticFormat::Steps,
            FormatArg::Direct => ArithmeticFormat::Direct,
            FormatArg::Columns => ArithmeticFormat::Columns,
        };
        (0..args.count as u64)
            .map(|i| {
                let (question, answer) =
                    arithmetic_problem_in(args.size, args.digits, args.seed, i, format);
                json!({"question": question, "answer": answer}).to_string()
            })
            .collect()
    } else {
        let Ok(Task::Serial(kind)) = Task::parse(&args.task) else {
            return Err(UsageError(format!(
                "cannot generate {:?}: use arithmetic or serial:<modadd|permutation|squaring|circuit>",
                args.task
            ))
            .into());
        };
        let format = match args.format {
            FormatArg::Cot => SerialFormat::Cot,
            FormatArg::Direct => SerialFormat::Direct,
            FormatArg::Columns => {
                return Err(UsageError(
                    "--format columns is for arithmetic; serial problems take cot or direct".into(),
                )
                .into())
            }
        };
        (0..args.count as u64)
            .map(|i| serde_json::to_string(&kind.generate(args.size, format, args.seed, i)))
            .collect::<Result<_, _>>()?
    };
    write_lines(&args.out, &rows)?;
    Reporter::new(false).note(&format!(
        "{} questions → {}",
        rows.len(),
        args.out.display()
    ));
    Ok(())
}

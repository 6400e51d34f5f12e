//! `--config FILE` of the job commands: a TOML table whose keys are the
//! command's flag names (`principles = "all"`, `no_debias = true`,
//! `beam_width = 2`, `strategies = ["greedy", "beam"]`). A value from the
//! file takes the place of a flag's default and gives way to the flag given
//! on the command line; clap's value source tells which is which. `solve`
//! and `sweep` also take the search settings that have no flag (`top_p`,
//! `c_puct`, …), read by [`crate::solve`]; any other key is an error.

use std::ffi::OsString;
use std::path::PathBuf;

use clap::parser::ValueSource;
use clap::{ArgMatches, CommandFactory};

/// The commands that read `--config`.
const JOBS: [&str; 6] = ["label", "rate", "revise", "judge", "solve", "sweep"];

/// `argv` with the settings of the job's `--config` file added for every
/// flag the command line leaves at its default. Without a job command or a
/// config file, `argv` comes back unchanged (clap then reports any error).
pub fn merge_config(argv: Vec<OsString>) -> Result<Vec<OsString>, String> {
    let Ok(matches) = crate::Cli::command()
        .ignore_errors(true)
        .try_get_matches_from(&argv)
    else {
        return Ok(argv);
    };
    let Some((name, sub)) = matches.subcommand() else {
        return Ok(argv);
    };
    if !JOBS.contains(&name) {
        return Ok(argv);
    }
    let Ok(Some(path)) = sub.try_get_one::<PathBuf>("config") else {
        return Ok(argv);
    };
    let path = path.clone();
    let text = std::fs::read_to_string(&path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let table: toml::Table =
        toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    let command = crate::Cli::command();
    let Some(command) = command.find_subcommand(name) else {
        return Ok(argv);
    };
    let search_keys = matches!(name, "solve" | "sweep").then(crate::solve::search_config_keys);
    let mut added: Vec<OsString> = Vec::new();
    for (key, value) in &table {
        let flag = key.replace('_', "-");
        let arg = command
            .get_arguments()
            .find(|a| a.get_id().as_str() == key.as_str() || a.get_long() == Some(flag.as_str()));
        let Some(arg) = arg.filter(|a| !["config", "help"].contains(&a.get_id().as_str())) else {
            if search_keys.as_ref().is_some_and(|k| k.contains(key)) {
                continue;
            }
            return Err(format!(
                "{}: `{key}` is not a setting of `qstar {name}` (use its flag names)",
                path.display()
            ));
        };
        if explicit(sub, arg.get_id().as_str()) {
            continue;
        }
        let long = arg.get_long().unwrap_or(flag.as_str());
        let takes_value = arg.get_action().takes_values();
        let values: Vec<&toml::Value> = match value {
            toml::Value::Array(items) => items.iter().collect(),
            v => vec![v],
        };
        for v in values {
            let bad = |what: &str| format!("{}: `{key}` {what}, not {v}", path.display());
            match v {
                toml::Value::Boolean(b) if !takes_value => {
                    if *b {
                        added.push(format!("--{long}").into());
                    }
                }
                _ if !takes_value => return Err(bad("is true or false")),
                toml::Value::String(s) => {
                    check_name(arg, s)
                        .map_err(|what| format!("{}: `{key}` {what}", path.display()))?;
                    added.push(format!("--{long}={s}").into())
                }
                toml::Value::Integer(_) | toml::Value::Float(_) => {
                    added.push(format!("--{long}={v}").into())
                }
                _ => return Err(bad("takes a string or a number")),
            }
        }
    }
    let mut argv = argv;
    argv.extend(added);
    Ok(argv)
}

/// A value of a flag that takes one of a set of names (a strategy, a
/// verifier, an aggregation, a prompt format…) must be one of them, each
/// item of a comma-separated list too; otherwise the error lists the names.
fn check_name(arg: &clap::Arg, value: &str) -> Result<(), String> {
    let names = arg.get_possible_values();
    if names.is_empty() {
        return Ok(());
    }
    let items: Vec<&str> = match arg.get_value_delimiter() {
        Some(d) => value.split(d).collect(),
        None => vec![value],
    };
    for item in items {
        // "orm-model:DIR": a name, then what it reads.
        let name = item.split_once(':').map_or(item, |(name, _)| name);
        if !names.iter().any(|n| n.matches(name, false)) {
            let shown: Vec<&str> = names
                .iter()
                .filter(|n| !n.is_hide_set())
                .map(|n| n.get_name())
                .collect();
            return Err(format!("is one of {}, not \"{item}\"", shown.join(", ")));
        }
    }
    Ok(())
}

/// The flag was given on the command line (or through its environment
/// variable), not left at its default.
fn explicit(matches: &ArgMatches, id: &str) -> bool {
    matches!(
        matches.value_source(id),
        Some(ValueSource::CommandLine | ValueSource::EnvVariable)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn merged(args: &[&str], toml: &str) -> Result<crate::Cli, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let path = dir.path().join("c.toml");
        std::fs::write(&path, toml).map_err(|e| e.to_string())?;
        let mut argv: Vec<OsString> = ["qstar"].iter().chain(args).map(OsString::from).collect();
        argv.extend(["--config".into(), path.into_os_string()]);
        let argv = merge_config(argv)?;
        crate::Cli::try_parse_from(argv).map_err(|e| e.to_string())
    }

    fn solve_args(cli: crate::Cli) -> crate::solve::SolveArgs {
        match cli.command {
            crate::Command::Solve(a) => a,
            _ => panic!("not solve"),
        }
    }

    const SOLVE: [&str; 7] = [
        "solve",
        "--task",
        "arithmetic",
        "--input",
        "q.jsonl",
        "--out",
        "o.jsonl",
    ];

    #[test]
    fn a_file_value_beats_a_default_and_loses_to_an_explicit_flag() {
        let toml = "beta = 0.5\nbudget = 8\nstrategy = \"majority\"\nreflection = true\n";
        let a = solve_args(merged(&SOLVE, toml).expect("parse"));
        assert_eq!((a.search.beta, a.budget), (Some(0.5), 8));
        assert_eq!(a.strategy, qstar_search::Strategy::Majority);
        assert!(a.search.reflection);
        let mut args = SOLVE.to_vec();
        args.extend(["--beta", "0.3", "--budget=2"]);
        let a = solve_args(merged(&args, toml).expect("parse"));
        assert_eq!((a.search.beta, a.budget), (Some(0.3), 2));
    }

    fn sweep_args(cli: crate::Cli) -> crate::sweep::SweepArgs {
        match cli.command {
            crate::Command::Sweep(a) => a,
            _ => panic!("not sweep"),
        }
    }

    const SWEEP: [&str; 7] = [
        "sweep",
        "--task",
        "arithmetic",
        "--input",
        "q.jsonl",
        "--out",
        "dir",
    ];

    #[test]
    fn every_strategy_and_aggregation_name_parses_from_a_flag_and_a_file() {
        use clap::{Parser, ValueEnum};
        use qstar_search::{Aggregation, Strategy};
        for &s in Strategy::all() {
            let a = solve_args(merged(&SOLVE, &format!("strategy = \"{s}\"\n")).expect("file"));
            assert_eq!(a.strategy, s);
            let mut argv = vec!["qstar"];
            argv.extend(SOLVE);
            argv.extend(["--strategy", s.name()]);
            let a = solve_args(crate::Cli::try_parse_from(argv).expect("flag"));
            assert_eq!(a.strategy, s);
        }
        for &g in Aggregation::value_variants() {
            let name = serde_json::to_value(g).expect("name");
            let toml = format!("strategy = \"greedy\"\naggregation = {name}\n");
            let a = solve_args(merged(&SOLVE, &toml).expect("file"));
            assert_eq!(a.search.aggregation, Some(g));
        }
        let toml = "strategy = \"greedy\"\naggregation = \"prod\"\n";
        let a = solve_args(merged(&SOLVE, toml).expect("prod"));
        assert_eq!(a.search.aggregation, Some(Aggregation::Product));
        // A list takes an array or one comma-separated string.
        let a = sweep_args(merged(&SWEEP, "strategies = [\"greedy\", \"beam\"]\n").expect("list"));
        assert_eq!(a.strategies, [Strategy::Greedy, Strategy::Beam]);
        let a = sweep_args(merged(&SWEEP, "strategies = \"mcts,dvts\"\n").expect("string"));
        assert_eq!(a.strategies, [Strategy::Mcts, Strategy::Dvts]);
    }

    #[test]
    fn an_unknown_name_in_a_file_is_an_error_naming_the_file_and_the_names() {
        let all = "greedy, majority, weighted, best-of-n, beam, dvts, lookahead, mcts, rebase, \
                   revise, compute-optimal";
        let cases: [(&[&str], &str, String); 5] = [
            (
                &SOLVE,
                "strategy = \"beams\"\n",
                format!("`strategy` is one of {all}, not \"beams\""),
            ),
            (
                &SWEEP,
                "strategies = [\"greedy\", \"bem\"]\n",
                format!("`strategies` is one of {all}, not \"bem\""),
            ),
            (
                &SWEEP,
                "strategies = \"greedy,bem\"\n",
                format!("`strategies` is one of {all}, not \"bem\""),
            ),
            (
                &SOLVE,
                "strategy = \"greedy\"\naggregation = \"max\"\n",
                "`aggregation` is one of min, last, product, mean, not \"max\"".into(),
            ),
            (
                &SOLVE,
                "strategy = \"greedy\"\nverifier = \"oracle\"\n",
                "`verifier` is one of checker, prm, orm, confidence, leco, dpo, likelihood, \
                 orm-model, prm-model, agreement, not \"oracle\""
                    .into(),
            ),
        ];
        for (args, toml, message) in cases {
            let err = merged(args, toml).err().unwrap_or_default();
            assert!(
                err.contains("c.toml: ") && err.contains(&message),
                "{toml}: {err}"
            );
        }
    }

    #[test]
    fn a_prompt_directory_comes_from_the_file_unless_a_flag_names_one() {
        let toml = "strategy = \"greedy\"\nprompts = \"from-file\"\n";
        let a = solve_args(merged(&SOLVE, toml).expect("parse"));
        assert_eq!(a.search.prompts.prompts, Some(PathBuf::from("from-file")));
        let mut args = SOLVE.to_vec();
        args.extend(["--prompts", "from-flag"]);
        let a = solve_args(merged(&args, toml).expect("parse"));
        assert_eq!(a.search.prompts.prompts, Some(PathBuf::from("from-flag")));
        // Every command that renders a template takes it.
        for command in ["label", "rate", "judge"] {
            let args = [command, "--input", "p.jsonl", "--out", "o.jsonl"];
            assert!(merged(&args, "prompts = \"d\"\n").is_ok(), "{command}");
        }
    }

    #[test]
    fn unknown_and_ill_typed_keys_are_errors() {
        let err = merged(&SOLVE, "strategy = \"greedy\"\nbogus = 1\n").err();
        assert!(err.is_some_and(|e| e.contains("`bogus`")));
        let err = merged(&SOLVE, "strategy = \"greedy\"\nreflection = 3\n").err();
        assert!(err.is_some_and(|e| e.contains("true or false")));
        // A search setting without a flag passes through to the search config.
        assert!(merged(&SOLVE, "strategy = \"greedy\"\ntop_p = 0.9\n").is_ok());
        // Labeling has no search settings.
        let label = ["label", "--input", "p.jsonl", "--out", "o.jsonl"];
        assert!(merged(&label, "top_p = 0.9\n").is_err());
    }
}

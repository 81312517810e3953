//! Tidy: unit tests that read the repository and fail on what drifts (the pattern of
//! rust-analyzer's xtask tidy test) — the README's command table against the command line,
//! every lab job's plan of checks, doc references to files and items that are gone, and
//! the size of xtask's own files. Each reads files only: fast and deterministic.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

use clap::CommandFactory;

use super::jobs::JOB_TESTS;
use super::protocol::{self, REPORTERS};
use crate::util::project_root;

/// Every file below the repository's root that is not build output or hidden.
fn repo_files() -> Vec<PathBuf> {
    fn walk(dir: &Path, files: &mut Vec<PathBuf>) {
        let Ok(entries) = fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name.starts_with('.') || name == "target" {
                continue;
            }
            if path.is_dir() {
                walk(&path, files);
            } else {
                files.push(path);
            }
        }
    }
    let mut files = Vec::new();
    walk(project_root(), &mut files);
    files.sort();
    files
}

fn read(path: &Path) -> String {
    fs::read_to_string(path).unwrap_or_else(|err| panic!("{}: {err}", path.display()))
}

fn relative(path: &Path) -> String {
    path.strip_prefix(project_root())
        .unwrap_or(path)
        .display()
        .to_string()
}

/// The README's command table: each row's command (`lab exec`) and the flags its first
/// cell names.
fn readme_commands(readme: &str) -> Vec<(String, BTreeSet<String>)> {
    let section = readme
        .split("\n## ")
        .find(|section| section.starts_with("Commands\n"))
        .expect("README.md has a section \"## Commands\"");
    let cli = crate::Cli::command();
    let mut rows = Vec::new();
    for line in section
        .lines()
        .filter(|line| line.starts_with("| `cargo xtask "))
    {
        // The first cell ends at the first `|` that is not written `\|`.
        let cell = line[1..]
            .replace("\\|", "/")
            .split('|')
            .next()
            .unwrap_or_default()
            .to_owned();
        let mut command = cli.clone();
        let mut path = Vec::new();
        for word in cell.trim().trim_matches('`').split_whitespace().skip(2) {
            let word = word.trim_matches('`');
            match command.find_subcommand(word) {
                Some(sub) => {
                    path.push(word.to_owned());
                    command = sub.clone();
                }
                None => break,
            }
        }
        let flags = cell
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '-'))
            .filter(|word| word.starts_with("--") && word.len() > 2)
            .map(str::to_owned)
            .collect();
        rows.push((path.join(" "), flags));
    }
    rows
}

/// Every command of `cargo xtask` that has no subcommands, with its flags.
fn cli_commands() -> Vec<(String, BTreeSet<String>)> {
    fn walk(command: &clap::Command, path: &str, out: &mut Vec<(String, BTreeSet<String>)>) {
        let mut subcommands = command.get_subcommands().peekable();
        if subcommands.peek().is_none() {
            let flags = command
                .get_arguments()
                .filter(|arg| !arg.is_hide_set())
                .filter_map(|arg| arg.get_long())
                .filter(|long| !["help", "version"].contains(long))
                .map(|long| format!("--{long}"))
                .collect();
            out.push((path.to_owned(), flags));
        }
        for sub in subcommands {
            let path = format!("{path} {}", sub.get_name());
            walk(sub, path.trim(), out);
        }
    }
    let mut out = Vec::new();
    walk(&crate::Cli::command(), "", &mut out);
    out
}

#[test]
fn readme_command_table_matches_the_cli() {
    let readme = read(&project_root().join("README.md"));
    let rows = readme_commands(&readme);
    let commands = cli_commands();
    let mut problems = Vec::new();
    for (command, flags) in &commands {
        match rows.iter().find(|(row, _)| row == command) {
            None => problems.push(format!("`cargo xtask {command}` has no row")),
            Some((_, documented)) => {
                for flag in flags.difference(documented) {
                    problems.push(format!("`cargo xtask {command}`: its row lacks {flag}"));
                }
                for flag in documented.difference(flags) {
                    problems.push(format!(
                        "`cargo xtask {command}`: its row names {flag}, which it does not have"
                    ));
                }
            }
        }
    }
    for (row, _) in &rows {
        if !commands.iter().any(|(command, _)| command == row) {
            problems.push(format!(
                "the row `cargo xtask {row}` names no command of the CLI"
            ));
        }
    }
    assert!(
        problems.is_empty(),
        "README.md's command table and `cargo xtask --help` differ:\n  {}",
        problems.join("\n  ")
    );
}

#[test]
fn lab_jobs_plan_their_checks() {
    let helpers = include_str!("lab-checks.sh");
    for reporter in REPORTERS {
        assert!(
            helpers.contains(&format!("\n{reporter}() {{")),
            "lab-checks.sh defines no {reporter}(), which protocol::REPORTERS names"
        );
    }
    for job in &JOB_TESTS {
        let plan = protocol::plan(&job.job())
            .unwrap_or_else(|err| panic!("lab job {:?}: {err:#}", job.name));
        for name in job.summarize {
            assert!(
                plan.iter().any(|planned| planned == name),
                "lab job {:?} summarizes check {name}, which it does not plan",
                job.name
            );
        }
    }
}

/// What the repository's Rust code defines: items, fields and variants (by their
/// shape on a line), modules by file name.
fn defined_names(files: &[PathBuf]) -> BTreeSet<String> {
    const ITEMS: [&str; 10] = [
        "fn ",
        "struct ",
        "enum ",
        "trait ",
        "type ",
        "const ",
        "static ",
        "mod ",
        "union ",
        "macro_rules! ",
    ];
    let ident = |text: &str| -> String {
        text.chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect()
    };
    let mut names = BTreeSet::new();
    for path in files
        .iter()
        .filter(|path| path.extension().is_some_and(|e| e == "rs"))
    {
        if let Some(stem) = path.file_stem() {
            names.insert(stem.to_string_lossy().into_owned());
        }
        if let Some(dir) = path.parent().and_then(Path::file_name) {
            names.insert(dir.to_string_lossy().into_owned());
        }
        for line in read(path).lines() {
            let line = line.trim_start();
            for item in ITEMS {
                for (at, _) in line.match_indices(item) {
                    let before = line[..at].chars().last();
                    if before.is_none_or(|c| c == ' ' || c == '(') {
                        names.insert(ident(&line[at + item.len()..]));
                    }
                }
            }
            // A field (`name: T`) or a variant (`Name,`, `Name(…)`, `Name {`).
            let line = line.strip_prefix("pub ").unwrap_or(line);
            let line = ["pub(crate) ", "pub(super) "]
                .iter()
                .find_map(|vis| line.strip_prefix(vis))
                .unwrap_or(line);
            let name = ident(line);
            let rest = &line[name.len()..];
            let shaped = (rest.starts_with(':') && !rest.starts_with("::"))
                || rest.starts_with([',', '(', '{'])
                || rest.starts_with(" {")
                || rest.is_empty();
            if !name.is_empty() && shaped {
                names.insert(name);
            }
        }
    }
    names.remove("");
    names
}

/// The backticked spans of a text, line by line.
fn code_spans(text: &str) -> Vec<&str> {
    text.lines()
        .flat_map(|line| line.split('`').skip(1).step_by(2))
        .collect()
}

/// A placeholder in a path, like `NAME` in `apps/NAME`.
fn is_placeholder(segment: &str) -> bool {
    segment.chars().any(|c| c.is_ascii_uppercase())
        && segment
            .chars()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || "_-.".contains(c))
}

#[test]
fn doc_references_exist() {
    let root = project_root();
    let files = repo_files();
    let names = defined_names(&files);
    let file_names: BTreeSet<String> = files
        .iter()
        .filter_map(|path| path.file_name())
        .map(|name| name.to_string_lossy().into_owned())
        .collect();
    let top_level: BTreeSet<String> = fs::read_dir(root)
        .expect("the repository's root")
        .flatten()
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .filter(|name| !name.starts_with('.') && name != "target")
        .collect();

    // README.md, the module docs of Rust files, the comments of shell scripts.
    let mut docs = vec![("README.md".to_owned(), read(&root.join("README.md")))];
    for path in &files {
        let comment = match path.extension().and_then(|e| e.to_str()) {
            Some("rs") => "//!",
            Some("sh") => "#",
            _ => continue,
        };
        let text: String = read(path)
            .lines()
            .filter(|line| line.trim_start().starts_with(comment))
            .map(|line| format!("{line}\n"))
            .collect();
        docs.push((relative(path), text));
    }

    let mut problems = Vec::new();
    for (doc, text) in &docs {
        for span in code_spans(text) {
            if let Some(problem) = dangling(span, root, &top_level, &file_names, &names) {
                problems.push(format!("{doc}: `{span}`: {problem}"));
            }
        }
    }
    assert!(
        problems.is_empty(),
        "doc references to what is not in the repository:\n  {}",
        problems.join("\n  ")
    );
}

/// Why `span` names a file or an item that the repository does not have, if it does.
fn dangling(
    span: &str,
    root: &Path,
    top_level: &BTreeSet<String>,
    file_names: &BTreeSet<String>,
    names: &BTreeSet<String>,
) -> Option<String> {
    if span.is_empty() || span.contains(char::is_whitespace) {
        return None;
    }
    // An item path: `run::run_guest_while`, `kernel::main!`, `Config::parse()`.
    let item = span.trim_end_matches("()").trim_end_matches('!');
    let segments: Vec<&str> = item.split("::").collect();
    let is_ident = |s: &str| {
        s.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
            && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
    };
    if segments.len() > 1 && segments.iter().all(|s| is_ident(s)) {
        let first = segments[0];
        // Paths into other crates (`smoltcp::phy::Device`) are not ours to check.
        let ours = ["crate", "self", "super"].contains(&first)
            || names.contains(first)
            || top_level.contains(first);
        let last = segments[segments.len() - 1];
        return (ours && !names.contains(last)).then(|| format!("no item {last} is defined"));
    }
    // A file: `xtask/src/lab/block.sh`, `apps/daytime`, `chaos-lab.sh`.
    if span.starts_with(['/', '.'])
        || span.contains(|c: char| "*…<>{}$=:,\"'[]|".contains(c))
        || span.split('/').any(is_placeholder)
    {
        return None;
    }
    match span.split_once('/') {
        Some((first, _)) if top_level.contains(first) => {
            (!root.join(span).exists()).then(|| "no such file in the repository".to_owned())
        }
        Some(_) => None,
        None if span.ends_with(".rs") || span.ends_with(".sh") => (!file_names.contains(span))
            .then(|| "no file of that name in the repository".to_owned()),
        None => None,
    }
}

/// The most lines a Rust file of xtask may have: a longer one wants splitting.
const MAX_LINES: usize = 900;

#[test]
fn xtask_files_stay_small() {
    let src = project_root().join("xtask/src");
    let long: Vec<String> = repo_files()
        .iter()
        .filter(|path| path.starts_with(&src) && path.extension().is_some_and(|e| e == "rs"))
        .filter_map(|path| {
            let lines = read(path).lines().count();
            (lines > MAX_LINES).then(|| format!("{} ({lines} lines)", relative(path)))
        })
        .collect();
    assert!(
        long.is_empty(),
        "over {MAX_LINES} lines: {}",
        long.join(", ")
    );
}

#[test]
fn dangling_references_are_found() {
    let root = project_root();
    let top_level: BTreeSet<String> = ["xtask", "apps"].map(String::from).into();
    let file_names: BTreeSet<String> = ["noxs-lab.sh"].map(String::from).into();
    let names: BTreeSet<String> = ["run", "run_guest_while", "Client"]
        .map(String::from)
        .into();
    let check = |span| dangling(span, root, &top_level, &file_names, &names);
    for fine in [
        "xtask/src/test/tidy.rs",
        "apps/NAME",
        "noxs-lab.sh",
        "run::run_guest_while",
        "smoltcp::phy::Device",
        "shared/notes/xen-lab.md",
        "/dev/xen/evtchn",
        "phy:/dev/vdX,xvda,w",
    ] {
        assert_eq!(check(fine), None, "{fine}");
    }
    for gone in [
        "xtask/src/misbehave-lab.sh",
        "chaos-lab.sh",
        "run::run_guest_until",
        "Client::halt()",
    ] {
        assert!(check(gone).is_some(), "{gone}");
    }
}

//! `cargo xtask new NAME|PATH`: a new app crate that builds and boots at once.
//!
//! A bare NAME makes `apps/NAME`, a member of the workspace (`members` has `apps/*`).
//! A PATH (anything with a `/`) makes a crate outside the workspace: its own empty
//! `[workspace]`, the framework by path, the workspace's release profile (a guest needs
//! `panic = "abort"`), toolchain file and lock file; `cargo xtask run PATH` builds it
//! into `target/external/NAME`.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail, ensure};
use clap::Args;

use crate::build::{self, GUEST_TARGET};
use crate::util::project_root;

#[derive(Debug, Args)]
pub struct NewArgs {
    /// A crate name (makes apps/NAME) or a path outside the workspace (anything with a
    /// `/`, e.g. ./myapp or /tmp/x/myapp; the crate is named after its last component).
    #[arg(value_name = "NAME|PATH")]
    pub target: String,
}

impl NewArgs {
    pub fn run(&self) -> Result<()> {
        let root = project_root();
        let (name, dir, in_tree) = if build::is_path(&self.target) {
            let dir = absolute(Path::new(&self.target))?;
            let name = dir
                .file_name()
                .with_context(|| format!("{}: no crate name at its end", self.target))?
                .to_str()
                .with_context(|| format!("{}: not UTF-8", self.target))?
                .to_owned();
            let apps = root.join("apps");
            let in_tree = dir.parent() == Some(apps.as_path());
            if !in_tree && dir.starts_with(root) {
                bail!(
                    "{} is inside the workspace ({}) but not in apps/: give a bare name for \
                     apps/NAME, or a path outside it",
                    dir.display(),
                    root.display()
                );
            }
            (name, dir, in_tree)
        } else {
            let dir = root.join("apps").join(&self.target);
            (self.target.clone(), dir, true)
        };
        check_crate_name(&name)?;
        if in_tree {
            // A workspace cannot hold two packages of one name.
            ensure!(
                !build::all_apps()?.contains(&name),
                "there is an app named `{name}` in apps/ already"
            );
        }
        if fs::symlink_metadata(&dir).is_ok() {
            bail!("{} exists already: refusing to touch it", dir.display());
        }

        fs::create_dir_all(dir.join("src"))
            .with_context(|| format!("creating {}", dir.display()))?;
        let written = if in_tree {
            write_in_tree(&dir, &name)
        } else {
            write_external(&dir, &name, root)
        };
        if let Err(err) = written {
            let _ = fs::remove_dir_all(&dir);
            return Err(err);
        }

        let run = if in_tree {
            name.clone()
        } else {
            dir.display().to_string()
        };
        eprintln!("new: created {} (app `{name}`)", dir.display());
        if in_tree {
            eprintln!(
                "new: run it with `cargo xtask run {run}`; its image: target/{GUEST_TARGET}/release/{name}"
            );
        } else {
            eprintln!(
                "new: run it with `cargo xtask run {run}`; its image: {}",
                build::external_target_dir(&name)
                    .join(GUEST_TARGET)
                    .join("release")
                    .join(&name)
                    .display()
            );
        }
        Ok(())
    }
}

/// `path` made absolute against the current directory (it need not exist).
fn absolute(path: &Path) -> Result<PathBuf> {
    let path = std::path::absolute(path).with_context(|| format!("{}", path.display()))?;
    // Resolve `.` and `..` by hand: the directory does not exist yet.
    let mut clean = PathBuf::new();
    for part in path.components() {
        match part {
            std::path::Component::ParentDir => {
                clean.pop();
            }
            std::path::Component::CurDir => {}
            other => clean.push(other),
        }
    }
    // The parent may exist through a symlink (e.g. /tmp): compare real paths.
    if let (Some(parent), Some(file)) = (clean.parent(), clean.file_name())
        && let Ok(real) = parent.canonicalize()
    {
        return Ok(real.join(file));
    }
    Ok(clean)
}

/// Names cargo accepts for a package and a binary that do not clash with the crates an
/// app links or with the standard library.
fn check_crate_name(name: &str) -> Result<()> {
    const KEYWORDS: &[&str] = &[
        "abstract", "as", "async", "await", "become", "box", "break", "const", "continue", "crate",
        "do", "dyn", "else", "enum", "extern", "false", "final", "fn", "for", "gen", "if", "impl",
        "in", "let", "loop", "macro", "match", "mod", "move", "mut", "override", "priv", "pub",
        "ref", "return", "self", "Self", "static", "struct", "super", "trait", "true", "try",
        "type", "typeof", "unsafe", "unsized", "use", "virtual", "where", "while", "yield",
    ];
    const TAKEN: &[&str] = &[
        // The standard library's crates.
        "core",
        "std",
        "alloc",
        "proc_macro",
        "test",
        // The workspace's own crates and what an app links.
        "arch",
        "kernel",
        "xenproto",
        "xtask",
        "net",
        "netfront",
        "xen-sys",
        "xen_sys",
    ];
    let mut chars = name.chars();
    let first = chars.next().context("the crate name is empty")?;
    ensure!(
        first.is_ascii_alphabetic(),
        "invalid crate name `{name}`: it must start with a letter (A-Z, a-z)"
    );
    if let Some(bad) = name
        .chars()
        .find(|&c| !(c.is_ascii_alphanumeric() || c == '-' || c == '_'))
    {
        bail!("invalid crate name `{name}`: {bad:?} is not allowed (A-Z, a-z, 0-9, - and _ are)");
    }
    ensure!(
        name.len() <= 64,
        "invalid crate name `{name}`: longer than 64 characters"
    );
    ensure!(
        !KEYWORDS.contains(&name),
        "invalid crate name `{name}`: it is a Rust keyword"
    );
    ensure!(
        !TAKEN
            .iter()
            .any(|taken| taken.replace('-', "_") == name.replace('-', "_")),
        "invalid crate name `{name}`: it clashes with a crate apps link (core, std, alloc, \
         kernel, arch, xenproto, …)"
    );
    Ok(())
}

fn main_rs(name: &str) -> String {
    format!(
        r#"//! {name}: a lightvm-rs app (a Xen PV unikernel).

#![no_std]
#![no_main]

kernel::main!(main);

fn main(args: kernel::Args) {{
    kernel::println!("Hello from {name}!");
    kernel::println!("args: {{:?}}", &args[..]);
}}
"#
    )
}

fn write_in_tree(dir: &Path, name: &str) -> Result<()> {
    let manifest = format!(
        r#"[package]
name = "{name}"
description = "A lightvm-rs app."
publish = false
version.workspace = true
edition.workspace = true
rust-version.workspace = true
license.workspace = true

[dependencies]
kernel.workspace = true

[lints]
workspace = true
"#
    );
    write(&dir.join("Cargo.toml"), &manifest)?;
    write(&dir.join("src/main.rs"), &main_rs(name))
}

fn write_external(dir: &Path, name: &str, root: &Path) -> Result<()> {
    let workspace = fs::read_to_string(root.join("Cargo.toml"))
        .with_context(|| format!("reading {}", root.join("Cargo.toml").display()))?;
    let profiles = profile_tables(&workspace);
    ensure!(
        profiles.contains("[profile.release]"),
        "the workspace's Cargo.toml has no [profile.release] to copy"
    );
    let kernel = root.join("kernel");
    let kernel = kernel
        .to_str()
        .context("the repository's path is not UTF-8")?;
    ensure!(
        !kernel.contains(['"', '\\']),
        "the repository's path {kernel} cannot go into a TOML string as is"
    );
    let manifest = format!(
        r#"[package]
name = "{name}"
description = "A lightvm-rs app."
version = "0.1.0"
edition = "2024"
publish = false

[dependencies]
# The lightvm-rs framework, by path: {root}
kernel = {{ path = "{kernel}" }}

# A workspace of its own, so that no enclosing workspace claims this crate.
[workspace]

# Copied from lightvm-rs's Cargo.toml: a guest needs panic = "abort", and these keep
# the image small.
{profiles}"#,
        root = root.display()
    );
    write(&dir.join("Cargo.toml"), &manifest)?;
    write(&dir.join("src/main.rs"), &main_rs(name))?;
    // The same toolchain (rustc runs in this crate's directory) and the same dependency
    // versions as the framework is tested with.
    for file in ["rust-toolchain.toml", "Cargo.lock"] {
        let from = root.join(file);
        if from.is_file() {
            fs::copy(&from, dir.join(file))
                .with_context(|| format!("copying {}", from.display()))?;
        }
    }
    write(&dir.join(".gitignore"), "/target\n")
}

/// The `[profile.*]` tables of a Cargo.toml, verbatim, one blank line between them.
fn profile_tables(manifest: &str) -> String {
    let mut tables: Vec<Vec<&str>> = Vec::new();
    let mut inside = false;
    for line in manifest.lines() {
        let trimmed = line.trim_start();
        if trimmed.starts_with('[') {
            inside = trimmed.starts_with("[profile.");
            if inside {
                tables.push(Vec::new());
            }
        }
        if inside && let Some(table) = tables.last_mut() {
            table.push(line);
        }
    }
    tables
        .iter()
        .map(|table| {
            let end = table
                .iter()
                .rposition(|line| !line.trim().is_empty())
                .map_or(0, |last| last + 1);
            let mut text = table[..end].join("\n");
            text.push('\n');
            text
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn write(path: &Path, text: &str) -> Result<()> {
    fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crate_names() {
        for good in ["myapp", "my-app", "my_app2", "A1"] {
            check_crate_name(good).unwrap();
        }
        for (bad, why) in [
            ("", "empty"),
            ("1app", "start with a letter"),
            ("-x", "start with a letter"),
            ("my app", "' ' is not allowed"),
            ("my.app", "'.' is not allowed"),
            ("fn", "keyword"),
            ("kernel", "clashes"),
            ("xen_sys", "clashes"),
            ("core", "clashes"),
        ] {
            let err = check_crate_name(bad).unwrap_err().to_string();
            assert!(err.contains(why), "{bad:?}: {err}");
        }
    }

    #[test]
    fn profiles_are_copied() {
        let manifest = "[workspace]\nmembers = []\n\n[profile.release]\n# c\nopt-level = \"s\"\n\n[profile.dev]\npanic = \"abort\"\n\n[lints]\nworkspace = true\n";
        assert_eq!(
            profile_tables(manifest),
            "[profile.release]\n# c\nopt-level = \"s\"\n\n[profile.dev]\npanic = \"abort\"\n"
        );
    }

    #[test]
    fn paths_resolve_dots() {
        let cwd = std::env::current_dir().unwrap().canonicalize().unwrap();
        assert_eq!(absolute(Path::new("./a/../b")).unwrap(), cwd.join("b"));
    }
}

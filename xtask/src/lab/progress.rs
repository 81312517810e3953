//! Progress for slow preparation steps: a bar on a terminal, plain lines otherwise (CI
//! logs have no terminal, and a redrawn bar there is noise).

use std::io::IsTerminal;

use indicatif::{ProgressBar, ProgressStyle};

#[derive(Debug)]
pub struct Progress {
    bar: Option<ProgressBar>,
    what: String,
    len: u64,
    done: u64,
}

impl Progress {
    /// `len` steps of `what` ("downloading", "unpacking", …).
    pub fn new(what: &str, len: u64) -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::new(len);
            bar.set_style(
                ProgressStyle::with_template("lab: {prefix} [{bar:30}] {pos}/{len} {wide_msg}")
                    .expect("valid template")
                    .progress_chars("=> "),
            );
            bar.set_prefix(what.to_owned());
            bar
        });
        Self {
            bar,
            what: what.to_owned(),
            len,
            done: 0,
        }
    }

    /// One step finished; `item` names it.
    pub fn step(&mut self, item: &str) {
        self.done += 1;
        match &self.bar {
            Some(bar) => {
                bar.set_message(item.to_owned());
                bar.inc(1);
            }
            None => eprintln!("lab: {} {item} ({}/{})", self.what, self.done, self.len),
        }
    }

    /// Remove the bar and leave one summary line.
    pub fn finish(self, summary: &str) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
        eprintln!("lab: {summary}");
    }
}

/// A one-line status ("booting …") that is replaced by its result on a terminal.
#[derive(Debug)]
pub struct Spinner {
    bar: Option<ProgressBar>,
}

impl Spinner {
    pub fn new(message: &str) -> Self {
        if std::io::stderr().is_terminal() {
            let bar = ProgressBar::new_spinner();
            bar.set_style(
                ProgressStyle::with_template("lab: {msg} {spinner} {elapsed}")
                    .expect("valid template"),
            );
            bar.set_message(message.to_owned());
            bar.enable_steady_tick(std::time::Duration::from_millis(120));
            Self { bar: Some(bar) }
        } else {
            eprintln!("lab: {message}");
            Self { bar: None }
        }
    }

    /// Stop spinning and print `line` in its place.
    pub fn finish(&self, line: &str) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
        eprintln!("lab: {line}");
    }

    /// Print `line` above the spinner, which keeps spinning.
    pub fn println(&self, line: &str) {
        match &self.bar {
            Some(bar) => bar.println(line),
            None => eprintln!("{line}"),
        }
    }

    /// Stop spinning without a line (e.g. before streaming output).
    pub fn clear(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

impl Drop for Spinner {
    fn drop(&mut self) {
        self.clear();
    }
}

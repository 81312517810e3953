//! The line protocol of the lab jobs (`lab-checks.sh` describes it): a job's plan, read
//! from its text ([`plan`]), and the one function that judges its lines against that
//! plan ([`judge`]).
//!
//! A job prints, among lines for the log:
//! - `CHECK NAME ok|fail DETAIL…`: a check;
//! - `COUNT WHAT BEFORE AFTER`: a leak count, a check that passes when the two are
//!   equal;
//! - `MEASURE NAME VALUE UNIT [DETAIL…]`: a measurement, shown under the PASS line.

use anyhow::{Result, bail, ensure};

/// The helpers of `lab-checks.sh` that print a CHECK or COUNT line, each with the
/// check's name as its first argument. Only their bodies may print such lines.
pub const REPORTERS: [&str; 3] = ["check", "check_that", "count"];

/// Every check a job's text names, in order: each call of a reporter with a literal
/// name, where a reporter is one of [`REPORTERS`] or a function of the job that calls a
/// reporter with a name made from its own `$1` (`check "bad-config-$1" …` makes
/// `bad syntax …` the check `bad-config-syntax`). A name that is neither literal nor
/// made from a wrapper's `$1`, a name that comes twice, or a CHECK or COUNT line printed
/// outside a reporter is an error: the plan would not be the checks the job can print.
pub fn plan(job: &str) -> Result<Vec<String>> {
    let lines: Vec<&str> = job
        .lines()
        .filter(|line| !line.trim_start().starts_with('#'))
        .collect();
    let functions = functions(&lines);
    // Reporter name → the check name template, `$1` standing for its first argument.
    let mut reporters: Vec<(&str, String)> = REPORTERS
        .iter()
        .map(|name| (*name, "$1".to_owned()))
        .collect();
    // Wrappers of wrappers too: until no function is found to be one.
    loop {
        let wrapper = functions.iter().find_map(|function| {
            if reporters.iter().any(|(name, _)| *name == function.name) {
                return None;
            }
            let (template, arg) = function
                .body
                .iter()
                .flat_map(|line| calls(line, &reporters))
                .find(|(_, arg)| arg.contains("$1"))?;
            Some((function.name, template.replace("$1", &arg)))
        });
        match wrapper {
            Some(wrapper) => reporters.push(wrapper),
            None => break,
        }
    }

    let mut planned: Vec<String> = Vec::new();
    let mut problems = Vec::new();
    for (number, line) in lines.iter().enumerate() {
        let inside = functions
            .iter()
            .find(|function| function.lines.contains(&number));
        let in_reporter =
            inside.is_some_and(|function| reporters.iter().any(|(name, _)| *name == function.name));
        let in_base = inside.is_some_and(|function| REPORTERS.contains(&function.name));
        if !in_base && (line.contains("CHECK ") || line.contains("COUNT ")) {
            problems.push(format!(
                "`{}` prints a protocol line itself: report through {}",
                line.trim(),
                REPORTERS.join(", ")
            ));
        }
        for (template, arg) in calls(line, &reporters) {
            if is_literal(&arg) {
                let name = template.replace("$1", &arg);
                if planned.contains(&name) {
                    problems.push(format!("check {name} is named twice"));
                } else {
                    planned.push(name);
                }
            } else if !(in_reporter && arg.contains("$1")) {
                problems.push(format!(
                    "`{}`: a check's name must be a literal word (or, in a function \
                     that reports for its caller, made from its $1)",
                    line.trim()
                ));
            }
        }
    }
    ensure!(problems.is_empty(), "{}", problems.join("; "));
    ensure!(!planned.is_empty(), "the job names no check");
    Ok(planned)
}

/// A shell function of a job: `NAME() {` … `}` at the start of a line.
#[derive(Debug)]
struct Function<'a> {
    name: &'a str,
    /// Its body's lines, and their indices in the job's lines.
    body: Vec<&'a str>,
    lines: std::ops::Range<usize>,
}

fn functions<'a>(lines: &[&'a str]) -> Vec<Function<'a>> {
    let mut functions = Vec::new();
    let mut at = 0;
    while at < lines.len() {
        let name = lines[at]
            .split_once("() {")
            .map(|(name, _)| name)
            .filter(|name| !name.is_empty() && name.chars().all(is_word_char));
        let Some(name) = name else {
            at += 1;
            continue;
        };
        // A one-line function ends on its own line.
        let end = if lines[at].trim_end().ends_with('}') {
            at
        } else {
            (at + 1..lines.len())
                .find(|&end| lines[end] == "}")
                .unwrap_or(lines.len() - 1)
        };
        functions.push(Function {
            name,
            body: lines[at..=end].to_vec(),
            lines: at..end + 1,
        });
        at = end + 1;
    }
    functions
}

fn is_word_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// A check name as a job writes it: lower case, digits, `-` and `.`.
fn is_literal(word: &str) -> bool {
    word.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && word
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
}

/// The calls of `reporters` on a line: each reporter's template and its first argument
/// (unquoted). A word is a call where a command starts: at the start of the line, after
/// `;`, `&&`, `||`, `|`, `(`, `{`, a `case` pattern's `)` or a keyword.
fn calls(line: &str, reporters: &[(&str, String)]) -> Vec<(String, String)> {
    let words: Vec<&str> = line.split_whitespace().collect();
    let mut found = Vec::new();
    for (at, word) in words.iter().enumerate() {
        let Some((_, template)) = reporters.iter().find(|(name, _)| name == word) else {
            continue;
        };
        let command_starts = at == 0 || {
            let before = words[at - 1];
            before.ends_with([';', '(', '{', ')', '|', '&'])
                || ["then", "else", "do", "!", "if", "elif", "while", "until"].contains(&before)
        };
        if !command_starts {
            continue;
        }
        let arg = words.get(at + 1).copied().unwrap_or_default();
        let arg = arg.trim_end_matches(';');
        let arg = arg
            .strip_prefix('"')
            .and_then(|arg| arg.strip_suffix('"'))
            .or_else(|| {
                arg.strip_prefix('\'')
                    .and_then(|arg| arg.strip_suffix('\''))
            })
            .unwrap_or(arg);
        found.push((template.clone(), arg.to_owned()));
    }
    found
}

/// A passed job: how many checks passed, a summary for its PASS line, and lines to show
/// under it (its measurements).
#[derive(Debug, PartialEq, Eq)]
pub struct Verdict {
    pub summary: String,
    pub notes: Vec<String>,
}

/// Judge a job's lines against its plan: every planned check reported once, each `ok`
/// (a COUNT: the same before and after), nothing reported that was not planned. The
/// summary names how many checks passed, the details of the checks in `summarize`, and
/// every count.
pub fn judge(plan: &[String], summarize: &[&str], output: &[String]) -> Result<Verdict> {
    judge_hosts(plan, summarize, &[output])
}

/// [`judge`] for a job that ran on several hosts at once (`JobTest::hosts`), one output
/// each: the same script, so one plan, of which each host runs its part. Every planned
/// check must be reported by some host, by each at most once, and every host's CHECK
/// and COUNT lines must pass; what the verdict says of a host's line names the host
/// (`host1 NAME`, counting from 1).
pub fn judge_hosts(plan: &[String], summarize: &[&str], outputs: &[&[String]]) -> Result<Verdict> {
    let mut reported: Vec<(usize, &str)> = Vec::new();
    let mut details: Vec<(&str, &str)> = Vec::new();
    let mut counts = Vec::new();
    let mut notes = Vec::new();
    let mut problems = Vec::new();
    for (host, output) in outputs.iter().enumerate() {
        let on = if outputs.len() > 1 {
            format!("host{} ", host + 1)
        } else {
            String::new()
        };
        for line in output.iter() {
            let fields: Vec<&str> = line.splitn(4, ' ').collect();
            let name = match fields.as_slice() {
                ["CHECK", name, verdict, rest @ ..] => {
                    let detail = rest.first().copied().unwrap_or_default();
                    match *verdict {
                        "ok" => details.push((name, detail)),
                        "fail" => problems.push(format!("{on}check {name} failed: {detail}")),
                        _ => problems
                            .push(format!("{on}check {name}: {verdict:?} is not ok or fail")),
                    }
                    *name
                }
                ["COUNT", what, before, after] => {
                    counts.push(format!("{on}{what} {before}→{after}"));
                    if before != after {
                        problems.push(format!("{on}{what}: {before} before, {after} after"));
                    }
                    *what
                }
                ["MEASURE", name, rest @ ..] => {
                    notes.push(format!("{on}{name}: {}", rest.join(" ")));
                    continue;
                }
                ["CHECK" | "COUNT", ..] => {
                    problems.push(format!("{on}malformed line {line:?}"));
                    continue;
                }
                _ => continue,
            };
            if !plan.iter().any(|planned| planned == name) {
                problems.push(format!("{on}check {name} is not in the job's plan"));
            } else if reported.contains(&(host, name)) {
                problems.push(format!("{on}check {name} reported twice"));
            }
            reported.push((host, name));
        }
    }
    let missing: Vec<&str> = plan
        .iter()
        .map(String::as_str)
        .filter(|planned| !reported.iter().any(|(_, name)| name == planned))
        .collect();
    if !missing.is_empty() {
        problems.push(format!(
            "{} of {} planned checks did not run: {}",
            missing.len(),
            plan.len(),
            missing.join(", ")
        ));
    }
    if !problems.is_empty() {
        bail!("{}", problems.join("; "));
    }
    let mut summary = vec![format!("{} checks passed", plan.len())];
    for name in summarize {
        if let Some((_, detail)) = details.iter().find(|(reported, _)| reported == name) {
            summary.push((*detail).to_owned());
        }
    }
    if !counts.is_empty() {
        summary.push(counts.join(", "));
    }
    Ok(Verdict {
        summary: summary.join("; "),
        notes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const HELPERS: &str = include_str!("lab-checks.sh");

    fn job(script: &str) -> String {
        format!("{HELPERS}{script}")
    }

    fn lines(text: &str) -> Vec<String> {
        text.lines().map(str::to_owned).collect()
    }

    #[test]
    fn plans_follow_calls_and_wrappers() {
        let script = r#"
check first $? "detail"
[ -e x ] && check second 0 ""
case "$x" in
a) true ;;
*) check_that third "detail" [ 1 = 1 ] ;;
esac
bad() { # NAME
	check "bad-config-$1" $? "x"
}
worse() { bad "worse-$1"; }
bad syntax '{'
worse mac
count 'leaks' 0 0
echo "not a check first"
"#;
        assert_eq!(
            plan(&job(script)).unwrap(),
            [
                "first",
                "second",
                "third",
                "bad-config-syntax",
                "bad-config-worse-mac",
                "leaks"
            ]
        );
    }

    #[test]
    fn unsound_plans_are_refused() {
        for (script, why) in [
            ("check a 0 x\ncheck a 1 x\n", "check a is named twice"),
            ("check \"$name\" 0 x\n", "must be a literal word"),
            ("f() {\n\tcheck \"$2\" 0 x\n}\n", "must be a literal word"),
            ("echo \"CHECK a ok\"\n", "prints a protocol line itself"),
            ("echo hello\n", "names no check"),
        ] {
            let err = plan(&job(script)).unwrap_err().to_string();
            assert!(err.contains(why), "{script:?}: {err}");
        }
    }

    #[test]
    fn judging() {
        let plan: Vec<String> = ["a", "b", "leaks"].map(String::from).to_vec();
        let output = lines(
            "log line\nCHECK a ok 3 cycles\nCHECK b ok\nMEASURE t 1.5 ms per run\nCOUNT leaks 2 2\n",
        );
        assert_eq!(
            judge(&plan, &["a"], &output).unwrap(),
            Verdict {
                summary: "3 checks passed; 3 cycles; leaks 2→2".into(),
                notes: vec!["t: 1.5 ms per run".into()],
            }
        );
        for (output, why) in [
            (
                "CHECK a ok\nCHECK b fail why not\nCOUNT leaks 1 1",
                "check b failed: why not",
            ),
            (
                "CHECK a ok\nCHECK b ok\nCOUNT leaks 1 2",
                "leaks: 1 before, 2 after",
            ),
            ("CHECK a ok", "2 of 3 planned checks did not run: b, leaks"),
            (
                "CHECK a ok\nCHECK b ok\nCOUNT leaks 1 1\nCHECK c ok",
                "check c is not in the job's plan",
            ),
            (
                "CHECK a ok\nCHECK a ok\nCHECK b ok\nCOUNT leaks 0 0",
                "check a reported twice",
            ),
            (
                "CHECK a maybe\nCHECK b ok\nCOUNT leaks 0 0",
                "\"maybe\" is not ok or fail",
            ),
            (
                "CHECK a\nCHECK b ok\nCOUNT leaks 0 0",
                "malformed line \"CHECK a\"",
            ),
        ] {
            let err = judge(&plan, &[], &lines(output)).unwrap_err().to_string();
            assert!(err.contains(why), "{output:?}: {err}");
        }
    }

    #[test]
    fn judging_two_hosts() {
        let plan: Vec<String> = ["sent", "received", "leaks"].map(String::from).to_vec();
        let host1 = lines("CHECK sent ok 3 keys\nCOUNT leaks 1 1\nMEASURE t 2 s\n");
        let host2 = lines("CHECK received ok\nCOUNT leaks 0 0\n");
        assert_eq!(
            judge_hosts(&plan, &["sent"], &[&host1, &host2]).unwrap(),
            Verdict {
                summary: "3 checks passed; 3 keys; host1 leaks 1→1, host2 leaks 0→0".into(),
                notes: vec!["host1 t: 2 s".into()],
            }
        );
        for (host1, host2, why) in [
            (
                "CHECK sent ok\nCOUNT leaks 0 0",
                "CHECK received fail no guest\nCOUNT leaks 0 0",
                "host2 check received failed: no guest",
            ),
            (
                "CHECK sent ok\nCOUNT leaks 0 0",
                "CHECK received ok\nCOUNT leaks 1 2",
                "host2 leaks: 1 before, 2 after",
            ),
            (
                "CHECK sent ok\nCOUNT leaks 0 0",
                "COUNT leaks 0 0",
                "1 of 3 planned checks did not run: received",
            ),
            (
                "CHECK sent ok\nCHECK sent ok\nCOUNT leaks 0 0",
                "CHECK received ok",
                "host1 check sent reported twice",
            ),
            (
                "CHECK sent ok\nCOUNT leaks 0 0",
                "CHECK received ok\nCHECK other ok",
                "host2 check other is not in the job's plan",
            ),
        ] {
            let err = judge_hosts(&plan, &[], &[&lines(host1), &lines(host2)])
                .unwrap_err()
                .to_string();
            assert!(err.contains(why), "{host1:?} / {host2:?}: {err}");
        }
    }
}

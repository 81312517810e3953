//! The guest command line as app arguments.
//!
//! Xen passes one string (`extra=` in an xl config). Arguments are separated by
//! whitespace; double quotes group words (`"two words"`), and inside quotes `\"` and
//! `\\` stand for `"` and `\`.

use alloc::string::String;
use alloc::vec::Vec;

/// The app's arguments.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Args(Vec<String>);

/// A command line that cannot be split.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnterminatedQuote {
    /// Byte offset of the opening quote.
    pub at: usize,
}

impl core::fmt::Display for UnterminatedQuote {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(
            f,
            "command line: quote opened at byte {} is never closed",
            self.at
        )
    }
}

impl Args {
    /// Split `line` into arguments.
    pub fn parse(line: &str) -> Result<Self, UnterminatedQuote> {
        let mut args = Vec::new();
        let mut chars = line.char_indices().peekable();
        loop {
            while chars.next_if(|(_, c)| c.is_whitespace()).is_some() {}
            if chars.peek().is_none() {
                return Ok(Self(args));
            }
            let mut arg = String::new();
            while let Some((at, c)) = chars.next_if(|(_, c)| !c.is_whitespace()) {
                if c != '"' {
                    arg.push(c);
                    continue;
                }
                loop {
                    match chars.next() {
                        None => return Err(UnterminatedQuote { at }),
                        Some((_, '"')) => break,
                        Some((_, '\\')) if matches!(chars.peek(), Some((_, '"' | '\\'))) => {
                            arg.push(chars.next().map_or('\\', |(_, c)| c));
                        }
                        Some((_, c)) => arg.push(c),
                    }
                }
            }
            args.push(arg);
        }
    }

    /// The value of the first `key=value` argument with this key.
    pub fn value(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find_map(|arg| arg.strip_prefix(key)?.strip_prefix('='))
    }

    /// Whether an argument equals `flag`.
    pub fn has(&self, flag: &str) -> bool {
        self.0.iter().any(|arg| arg == flag)
    }
}

impl core::ops::Deref for Args {
    type Target = [String];
    fn deref(&self) -> &[String] {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(line: &str) -> Vec<String> {
        Args::parse(line).unwrap().0
    }

    #[test]
    fn whitespace_separates_arguments() {
        assert_eq!(split("alpha beta"), ["alpha", "beta"]);
        assert_eq!(split("  alpha \t beta\n"), ["alpha", "beta"]);
        assert!(split("").is_empty());
        assert!(split("   ").is_empty());
        assert_eq!(split("sleep=500"), ["sleep=500"]);
    }

    #[test]
    fn quotes_group_words_and_escape() {
        assert_eq!(
            split(r#"say "hello world" done"#),
            ["say", "hello world", "done"]
        );
        assert_eq!(split(r#"a"b c"d"#), ["ab cd"]);
        assert_eq!(split(r#""" x"#), ["", "x"]);
        assert_eq!(split(r#""q\"uote\\d""#), [r#"q"uote\d"#]);
        assert_eq!(split(r#""back\slash""#), [r"back\slash"]);
        assert_eq!(split("ünï \"cödé\""), ["ünï", "cödé"]);
    }

    #[test]
    fn unterminated_quote_names_its_position() {
        assert_eq!(
            Args::parse(r#"ok "broken"#),
            Err(UnterminatedQuote { at: 3 })
        );
    }

    #[test]
    fn key_values_and_flags() {
        let args = Args::parse("panic sleep=500 sleep=7 ip=10.0.2.16/24").unwrap();
        assert_eq!(args.value("sleep"), Some("500"));
        assert_eq!(args.value("ip"), Some("10.0.2.16/24"));
        assert_eq!(args.value("sle"), None);
        assert!(args.has("panic"));
        assert!(!args.has("sleep"));
        assert_eq!(args.len(), 4);
    }
}

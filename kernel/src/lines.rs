//! Console input cut into lines, as [`crate::console`]'s `read_line` returns them: a
//! line ends at `\n` (a pipe's end of line), `\r` (a terminal's Enter in raw mode) or
//! `\r\n` (one end, not two), and a line longer than the reader's limit comes in
//! parts. Pure, fed one byte at a time, so that a reader takes from the ring only what
//! its line uses.

use alloc::vec::Vec;

/// What is left of the last line between two calls: whether it ended with `\r`.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct LineSplitter {
    after_cr: bool,
}

impl LineSplitter {
    pub const fn new() -> Self {
        Self { after_cr: false }
    }

    /// Take `byte` into `line` (at most `limit` bytes, 1 at least): whether the line is
    /// complete. A `\n` right after a `\r` that ended a line is dropped.
    pub fn take(&mut self, byte: u8, line: &mut Vec<u8>, limit: usize) -> bool {
        let after_cr = core::mem::take(&mut self.after_cr);
        match byte {
            b'\n' if after_cr => false,
            b'\n' => true,
            b'\r' => {
                self.after_cr = true;
                true
            }
            other => {
                line.push(other);
                line.len() >= limit.max(1)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use alloc::string::String;

    use super::*;

    /// The lines `input` makes, fed in chunks of `chunk` bytes as reads would.
    fn lines(input: &[u8], limit: usize, chunk: usize) -> (Vec<String>, String) {
        let mut splitter = LineSplitter::new();
        let mut done = Vec::new();
        let mut line = Vec::new();
        for piece in input.chunks(chunk) {
            for &byte in piece {
                if splitter.take(byte, &mut line, limit) {
                    done.push(String::from_utf8(core::mem::take(&mut line)).unwrap());
                }
            }
        }
        (done, String::from_utf8(line).unwrap())
    }

    #[test]
    fn every_line_end_ends_one_line() {
        for chunk in [1, 2, 3, 100] {
            let (done, rest) = lines(b"alpha\nbeta\r\ngamma\rdelta\n\nbye", 100, chunk);
            assert_eq!(
                done,
                ["alpha", "beta", "gamma", "delta", ""],
                "chunk {chunk}"
            );
            assert_eq!(rest, "bye");
        }
        // Two Enters on a terminal are two (empty) lines, not one end.
        assert_eq!(lines(b"\r\r\n\r", 100, 1).0, ["", "", ""]);
    }

    #[test]
    fn long_lines_come_in_parts() {
        let (done, rest) = lines(b"abcdefg\nhi", 3, 2);
        assert_eq!(done, ["abc", "def", "g"]);
        assert_eq!(rest, "hi");
        // A limit of 0 is taken as 1: every byte is a line, none is lost.
        assert_eq!(lines(b"xy\n", 0, 1).0, ["x", "y", ""]);
    }
}

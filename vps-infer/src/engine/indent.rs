//! Keeps an answer's first line from going deeper than the cursor's indentation.
//! When the cursor stands after a line's indentation, small models often go on
//! inside a deeper block instead of writing the line that belongs there (about one
//! hole in thirty, docs/benchmarks.md, "Completion quality"); the editor would show
//! the extra indentation as ghost text.
//!
//! Unlike a copied line ([`super::first_line`]), a deeper indentation shows in the
//! token that makes it, so nothing is held: a token that would go deeper is passed
//! over for the likeliest one that does not. A shallower line, a blank one or an
//! empty answer are left alone: forced to the cursor's depth, a model that thinks
//! the block has ended writes junk (`0`, `1000000…`).

/// Whether a text can still start the first line the client asked for.
#[derive(Debug, PartialEq, Eq, Clone, Copy)]
pub enum Fit {
    /// Whitespace so far, no deeper than the indentation: it may still go either way.
    Open,
    /// Text, a line break or the end came before the indentation went deeper: it does.
    Yes,
    /// It went deeper (or used a space where the indentation has a tab, or the
    /// other way round).
    No,
}

pub struct Indent {
    want: Vec<u8>,
    /// The text generated so far, up to the token that decided.
    text: Vec<u8>,
    /// The indentation is decided: fitting or not, it constrains nothing more.
    decided: bool,
}

impl Indent {
    /// The answer's first line may be indented with `want` (spaces and tabs; empty:
    /// not at all) or a part of it, no more.
    pub fn new(want: &str) -> Indent {
        Indent {
            want: want.as_bytes().to_vec(),
            text: Vec::new(),
            decided: false,
        }
    }

    /// The indentation is still open: tokens are checked with [`Indent::fit`].
    pub fn is_open(&self) -> bool {
        !self.decided
    }

    /// Where the text would stand with `piece` after it (a piece with no bytes ends
    /// the answer).
    pub fn fit(&self, piece: &[u8]) -> Fit {
        if self.decided || piece.is_empty() {
            return Fit::Yes;
        }
        for (at, &b) in self.text.iter().chain(piece).enumerate() {
            if b != b' ' && b != b'\t' {
                return Fit::Yes;
            }
            if self.want.get(at) != Some(&b) {
                return Fit::No;
            }
        }
        Fit::Open
    }

    /// Takes `piece` as generated.
    pub fn push(&mut self, piece: &[u8]) {
        if self.decided || piece.is_empty() {
            return;
        }
        self.decided = self.fit(piece) != Fit::Open;
        self.text.extend_from_slice(piece);
    }

    /// Decoding went back: `text` is the answer so far.
    pub fn restart(&mut self, text: &[u8]) {
        self.text.clear();
        self.decided = false;
        self.push(text);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn after(want: &str, pieces: &[&str]) -> Indent {
        let mut indent = Indent::new(want);
        for piece in pieces {
            indent.push(piece.as_bytes());
            assert!(indent.is_open(), "{piece:?} decided early");
        }
        indent
    }

    #[test]
    fn the_cursors_indentation_or_less_fits() {
        let indent = after("    ", &[]);
        assert_eq!(indent.fit(b"    return"), Fit::Yes);
        assert_eq!(indent.fit(b"  return"), Fit::Yes);
        assert_eq!(indent.fit(b"return"), Fit::Yes);
        assert_eq!(indent.fit(b"  "), Fit::Open);
        assert_eq!(indent.fit(b"    "), Fit::Open);
        let indent = after("    ", &["  ", " "]);
        assert_eq!(indent.fit(b" x"), Fit::Yes);
        assert_eq!(indent.fit(b" "), Fit::Open);
    }

    #[test]
    fn deeper_indentation_does_not() {
        let indent = after("    ", &[]);
        assert_eq!(indent.fit(b"        return"), Fit::No);
        assert_eq!(indent.fit(b"     "), Fit::No);
        assert_eq!(indent.fit(b"\treturn"), Fit::No);
        assert_eq!(after("    ", &["    "]).fit(b" "), Fit::No);
        assert_eq!(after("    ", &["  "]).fit(b"   x"), Fit::No);
        assert_eq!(Indent::new("").fit(b" }"), Fit::No);
    }

    #[test]
    fn a_blank_line_or_the_end_of_the_answer_fits() {
        let indent = after("    ", &["    "]);
        assert_eq!(indent.fit(b"\n"), Fit::Yes);
        assert_eq!(indent.fit(b"\r\n"), Fit::Yes);
        assert_eq!(indent.fit(b""), Fit::Yes);
    }

    #[test]
    fn the_first_token_with_text_decides_and_then_anything_goes() {
        let mut indent = after("\t", &["\t"]);
        indent.push(b"return\n");
        assert!(!indent.is_open());
        assert_eq!(indent.fit(b"\n        "), Fit::Yes);
    }

    #[test]
    fn a_restart_judges_the_text_it_is_given() {
        let mut indent = after("    ", &["    "]);
        indent.push(b"x");
        indent.restart(b"  ");
        assert!(indent.is_open());
        assert_eq!(indent.fit(b"   "), Fit::No);
        indent.restart(b"    z");
        assert!(!indent.is_open());
    }
}

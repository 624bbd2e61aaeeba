//! Keeps an answer's first line from going deeper than the cursor's indentation and,
//! when asked, from being blank.
//!
//! When the cursor stands after a line's indentation, small models often go on
//! inside a deeper block instead of writing the line that belongs there (about one
//! hole in thirty, docs/benchmarks.md, "Completion quality"); the editor would show
//! the extra indentation as ghost text. On an empty line they sometimes end the line
//! at once (about one hole in sixty), and the editor shows nothing.
//!
//! Unlike a copied line ([`super::first_line`]), both show in the token that makes
//! them, so nothing is held: a token that would go deeper, or end the line or the
//! answer before any text, is passed over for the likeliest one that does not. A
//! shallower line is left alone: forced to the cursor's depth, a model that thinks
//! the block has ended writes junk (`0`, `1000000…`).

/// Whether a text can still start the first line the client asked for.
#[derive(Debug, PartialEq, Eq, Clone, Copy)]
pub enum Fit {
    /// Whitespace so far, no deeper than the indentation: it may still go either way.
    Open,
    /// Text came before the indentation went deeper (or, when blank lines fit, a line
    /// break or the end did): it does.
    Yes,
    /// It went deeper (or used a space where the indentation has a tab, or the
    /// other way round), or it is blank where that does not fit.
    No,
}

pub struct LineStart {
    /// The deepest indentation that fits (`None`: any).
    deepest: Option<Vec<u8>>,
    /// A line break or the end of the answer before any text does not fit.
    not_blank: bool,
    /// The text generated so far, up to the token that decided.
    text: Vec<u8>,
    /// The first line is decided: fitting or not, it constrains nothing more.
    decided: bool,
}

impl LineStart {
    /// The answer's first line may be indented with `deepest` (spaces and tabs;
    /// empty: not at all) or a part of it, no more (`None`: as deep as it likes);
    /// with `not_blank` it has text. `None` when that asks for nothing.
    pub fn new(deepest: Option<&str>, not_blank: bool) -> Option<LineStart> {
        (deepest.is_some() || not_blank).then(|| LineStart {
            deepest: deepest.map(|want| want.as_bytes().to_vec()),
            not_blank,
            text: Vec::new(),
            decided: false,
        })
    }

    /// The first line is still open: tokens are checked with [`LineStart::fit`].
    pub fn is_open(&self) -> bool {
        !self.decided
    }

    /// Where the text would stand with `piece` after it (a piece with no bytes ends
    /// the answer).
    pub fn fit(&self, piece: &[u8]) -> Fit {
        if self.decided {
            return Fit::Yes;
        }
        if piece.is_empty() {
            return if self.not_blank { Fit::No } else { Fit::Yes };
        }
        for (at, &b) in self.text.iter().chain(piece).enumerate() {
            match b {
                b' ' | b'\t' => match &self.deepest {
                    Some(want) if want.get(at) != Some(&b) => return Fit::No,
                    _ => {}
                },
                b'\n' | b'\r' if self.not_blank => return Fit::No,
                _ => return Fit::Yes,
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

    fn at_most(want: &str) -> LineStart {
        LineStart::new(Some(want), false).unwrap()
    }

    fn after(want: &str, pieces: &[&str]) -> LineStart {
        let mut indent = at_most(want);
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
        assert_eq!(at_most("").fit(b" }"), Fit::No);
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

    #[test]
    fn a_first_line_that_must_have_text_may_not_end_before_it() {
        let mut start = LineStart::new(None, true).unwrap();
        assert_eq!(start.fit(b"\n"), Fit::No);
        assert_eq!(start.fit(b"  \r\n"), Fit::No);
        assert_eq!(start.fit(b""), Fit::No);
        assert_eq!(start.fit(b"            deep"), Fit::Yes);
        start.push(b"  ");
        assert_eq!(start.fit(b"\n"), Fit::No);
        assert_eq!(start.fit(b"x\n"), Fit::Yes);
        start.push(b"x\n");
        assert!(!start.is_open());
        assert_eq!(start.fit(b"\n"), Fit::Yes);
        assert_eq!(start.fit(b""), Fit::Yes);

        let both = LineStart::new(Some("    "), true).unwrap();
        assert_eq!(both.fit(b"\n"), Fit::No);
        assert_eq!(both.fit(b"      x"), Fit::No);
        assert_eq!(both.fit(b"  x"), Fit::Yes);
    }

    #[test]
    fn nothing_asked_is_nothing_to_keep() {
        assert!(LineStart::new(None, false).is_none());
    }
}

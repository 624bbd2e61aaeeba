//! Keeps an answer's first line off lines the client rejects: the lines next to the
//! cursor, which small fill-in-the-middle models copy instead of writing the missing
//! one (docs/benchmarks.md, "Completion quality").
//!
//! While the text generated so far could still become a rejected line, its tokens are
//! held back from the client, and each step notes the likeliest token that would have
//! left every rejected line behind. When the first line comes out equal to a rejected
//! one, decoding backs up to the step whose way out makes the likeliest text (the kept
//! tokens and that token together) and takes it there; the client never saw the
//! rejected line.
//! One back-up per answer: after it, or once the text has left every rejected line
//! behind, the guard is done.
//!
//! Generic over the token type so that the logic is tested without a model.

/// A token the model ranked, with its log-probability and text.
#[derive(Debug, Clone)]
pub struct Candidate<T> {
    pub token: T,
    pub logprob: f32,
    pub piece: Vec<u8>,
}

/// What to do with a sampled token.
#[derive(Debug, PartialEq)]
pub enum Verdict<T> {
    /// It may still spell a rejected line: send nothing yet, decode it.
    Hold,
    /// The text has left every rejected line behind: send these bytes (everything
    /// held, this token's piece included), decode the token, and drop the guard.
    Release(Vec<u8>),
    /// The first line came out rejected: keep the first `keep` generated tokens,
    /// decode `token` after them instead, and send `text` (the kept tokens' bytes and
    /// `token`'s). The guard is done.
    BackUp {
        keep: usize,
        token: T,
        text: Vec<u8>,
    },
}

struct Step<T> {
    /// Bytes of the held text before this step's token.
    at: usize,
    way_out: Option<WayOut<T>>,
}

/// The likeliest token that would have left every rejected line behind at a step.
struct WayOut<T> {
    token: T,
    /// The log-probability of the text up to and with it.
    logprob: f32,
    piece: Vec<u8>,
}

pub struct FirstLineGuard<T> {
    rejected: Vec<Vec<u8>>,
    text: Vec<u8>,
    steps: Vec<Step<T>>,
    /// The log-probability of the tokens held so far.
    logprob: f32,
}

/// Where a text stands against a rejected line; against several, the nearest of them
/// counts (the largest).
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord, Clone, Copy)]
enum Match {
    /// It cannot become it.
    Left,
    /// The text may still become it.
    Open,
    /// The first line is finished and equals it.
    Equal,
}

impl<T: Copy + PartialEq> FirstLineGuard<T> {
    /// `None` when no line is worth guarding against (all blank).
    pub fn new(rejected: &[String]) -> Option<FirstLineGuard<T>> {
        let rejected: Vec<Vec<u8>> = rejected
            .iter()
            .map(|line| line.trim_end().as_bytes().to_vec())
            .filter(|line| !line.iter().all(u8::is_ascii_whitespace))
            .collect();
        (!rejected.is_empty()).then(|| FirstLineGuard {
            rejected,
            text: Vec::new(),
            steps: Vec::new(),
            logprob: 0.0,
        })
    }

    /// The model sampled `token` (`piece` its bytes, `logprob` its log-probability;
    /// `end` when it ends the answer) where `candidates` were its likeliest tokens,
    /// the sampled one among them or not.
    pub fn push(
        &mut self,
        token: T,
        piece: &[u8],
        end: bool,
        candidates: &[Candidate<T>],
        logprob: f32,
    ) -> Verdict<T> {
        let way_out = candidates
            .iter()
            .filter(|c| c.token != token && !c.piece.is_empty())
            .filter(|c| self.standing(&c.piece, false) == Match::Left)
            .max_by(|a, b| a.logprob.total_cmp(&b.logprob))
            .map(|c| WayOut {
                token: c.token,
                logprob: self.logprob + c.logprob,
                piece: c.piece.clone(),
            });
        self.steps.push(Step {
            at: self.text.len(),
            way_out,
        });
        self.logprob += logprob;
        let standing = self.standing(piece, end);
        self.text.extend_from_slice(piece);
        match standing {
            Match::Equal => self.back_up(),
            Match::Open => Verdict::Hold,
            Match::Left => Verdict::Release(std::mem::take(&mut self.text)),
        }
    }

    /// The text held so far (the answer ends while it is held).
    pub fn take_text(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.text)
    }

    /// The first line is a rejected one: back up to the step whose way out makes the
    /// likeliest text, or, when no step had one, let the line through.
    fn back_up(&mut self) -> Verdict<T> {
        let best = self
            .steps
            .iter()
            .enumerate()
            .filter_map(|(k, step)| step.way_out.as_ref().map(|w| (k, step.at, w)))
            .max_by(|a, b| a.2.logprob.total_cmp(&b.2.logprob));
        match best {
            Some((keep, at, way_out)) => {
                let mut text = self.text[..at].to_vec();
                text.extend_from_slice(&way_out.piece);
                Verdict::BackUp {
                    keep,
                    token: way_out.token,
                    text,
                }
            }
            None => Verdict::Release(std::mem::take(&mut self.text)),
        }
    }

    /// Where the held text followed by `piece` stands against the rejected lines.
    fn standing(&self, piece: &[u8], end: bool) -> Match {
        let mut joined = self.text.clone();
        joined.extend_from_slice(piece);
        self.rejected
            .iter()
            .map(|line| match_line(&joined, line, end))
            .max()
            .unwrap_or(Match::Left)
    }
}

/// Where `text` stands against `line`; `end`: the answer ends with `text`.
fn match_line(text: &[u8], line: &[u8], end: bool) -> Match {
    let (first, finished) = match text.iter().position(|&b| b == b'\n') {
        Some(n) => (&text[..n], true),
        None => (text, end),
    };
    let trimmed = first.trim_ascii_end();
    if finished {
        return if trimmed == line {
            Match::Equal
        } else {
            Match::Left
        };
    }
    // Trailing spaces may still be followed by a line break.
    if line.starts_with(first) || trimmed == line {
        Match::Open
    } else {
        Match::Left
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(token: u32, logprob: f32, piece: &str) -> Candidate<u32> {
        Candidate {
            token,
            logprob,
            piece: piece.as_bytes().to_vec(),
        }
    }

    fn back_up(keep: usize, token: u32, text: &str) -> Verdict<u32> {
        Verdict::BackUp {
            keep,
            token,
            text: text.as_bytes().to_vec(),
        }
    }

    fn release(text: &str) -> Verdict<u32> {
        Verdict::Release(text.as_bytes().to_vec())
    }

    fn guard(lines: &[&str]) -> FirstLineGuard<u32> {
        let lines: Vec<String> = lines.iter().map(|s| s.to_string()).collect();
        FirstLineGuard::new(&lines).unwrap()
    }

    #[test]
    fn blank_lines_are_not_guarded() {
        assert!(FirstLineGuard::<u32>::new(&["  ".into(), String::new()]).is_none());
    }

    #[test]
    fn text_that_leaves_every_line_is_released_whole() {
        let mut g = guard(&["    return None"]);
        let v = g.push(1, b"    return", false, &[c(2, -3.0, "    pass")], -0.1);
        assert_eq!(v, Verdict::Hold);
        let v = g.push(3, b" self", false, &[c(4, -1.0, " None")], -0.5);
        assert_eq!(v, release("    return self"));
    }

    #[test]
    fn a_rejected_line_backs_up_to_the_likeliest_way_out() {
        let mut g = guard(&["use crate::connect::BoxedConnectorService;"]);
        // Sure of the start, unsure between `Boxed` and `uds`.
        let v = g.push(
            1,
            b"use crate::connect::",
            false,
            &[c(9, -9.0, "pub")],
            -0.01,
        );
        assert_eq!(v, Verdict::Hold);
        let v = g.push(2, b"Boxed", false, &[c(5, -1.0, "uds")], -0.7);
        assert_eq!(v, Verdict::Hold);
        // `Conn` is no way out: the line goes on with it.
        let v = g.push(3, b"ConnectorService;", false, &[c(6, -3.0, "Conn")], -0.05);
        assert_eq!(v, Verdict::Hold);
        // A way out at the end is less likely than `uds` after all the kept tokens.
        let v = g.push(4, b"\n", true, &[c(7, -0.5, " //")], -0.1);
        assert_eq!(v, back_up(1, 5, "use crate::connect::uds"));
    }

    #[test]
    fn the_line_break_itself_can_be_the_way_out() {
        // `err = err` is the next line; the right one goes on: `err = err.extend(`.
        let mut g = guard(&["err = err"]);
        assert_eq!(
            g.push(1, b"err", false, &[c(8, -8.0, "let")], -0.1),
            Verdict::Hold
        );
        assert_eq!(g.push(2, b" = err", false, &[], -0.1), Verdict::Hold);
        let v = g.push(3, b"\n", false, &[c(4, -0.5, ".extend")], -1.2);
        assert_eq!(v, back_up(2, 4, "err = err.extend"));
    }

    #[test]
    fn the_end_of_the_answer_finishes_the_line() {
        let mut g = guard(&["pass"]);
        let v = g.push(1, b"pass", false, &[c(2, -2.0, "return")], -0.5);
        assert_eq!(v, Verdict::Hold);
        assert_eq!(g.push(3, b"", true, &[], -0.1), back_up(0, 2, "return"));
    }

    #[test]
    fn with_no_way_out_the_rejected_line_goes_through() {
        let mut g = guard(&["}"]);
        assert_eq!(g.push(1, b"}", false, &[], -0.1), Verdict::Hold);
        assert_eq!(g.push(2, b"\n", false, &[], -0.1), release("}\n"));
    }

    #[test]
    fn trailing_spaces_and_other_lines_are_compared_fairly() {
        let mut g = guard(&["x = 1", "y = 2  "]);
        assert_eq!(g.push(1, b"y = 2 ", false, &[], -0.1), Verdict::Hold);
        let v = g.push(2, b"\n", false, &[c(3, -2.0, "+")], -0.1);
        assert!(matches!(v, Verdict::BackUp { keep: 1, .. }), "{v:?}");
        let mut g = guard(&["x = 1"]);
        let v = g.push(1, b"x = 12", false, &[], -0.1);
        assert_eq!(v, release("x = 12"));
        // A longer first line is not the rejected one.
        let mut g = guard(&["x"]);
        assert_eq!(g.push(1, b"x", false, &[], -0.1), Verdict::Hold);
        assert_eq!(g.push(2, b"y\n", false, &[], -0.1), release("xy\n"));
    }

    #[test]
    fn a_way_out_must_leave_every_rejected_line() {
        // `    if` is not a way out while `    if x:` is rejected too.
        let mut g = guard(&["    return x", "    if x:"]);
        let candidates = [c(2, -1.0, "    if"), c(3, -3.0, "    for")];
        assert_eq!(
            g.push(1, b"    return", false, &candidates, -0.5),
            Verdict::Hold
        );
        assert_eq!(g.push(4, b" x", false, &[], -0.1), Verdict::Hold);
        let v = g.push(5, b"\n", false, &[], -0.1);
        assert_eq!(v, back_up(0, 3, "    for"));
    }
}

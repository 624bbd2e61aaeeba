//! Turning token bytes into text the client may see: whole UTF-8 characters only, and
//! nothing that could turn out to be the start of a stop string.

/// Joins token pieces into valid UTF-8. A token may end in the middle of a multi-byte
/// character (emoji, CJK); those bytes wait for the next piece.
#[derive(Default)]
pub struct Utf8Stream {
    pending: Vec<u8>,
}

impl Utf8Stream {
    /// Adds `bytes` and returns the text that is now complete.
    pub fn push(&mut self, bytes: &[u8]) -> String {
        self.pending.extend_from_slice(bytes);
        let mut out = String::new();
        loop {
            match std::str::from_utf8(&self.pending) {
                Ok(s) => {
                    out.push_str(s);
                    self.pending.clear();
                    return out;
                }
                Err(e) => {
                    let valid = e.valid_up_to();
                    // SAFETY-free: the prefix up to `valid` is checked UTF-8.
                    out.push_str(&String::from_utf8_lossy(&self.pending[..valid]));
                    match e.error_len() {
                        // Incomplete character at the end: keep it for the next piece.
                        None => {
                            self.pending.drain(..valid);
                            return out;
                        }
                        // Invalid bytes: replace them and go on.
                        Some(len) => {
                            out.push(char::REPLACEMENT_CHARACTER);
                            self.pending.drain(..valid + len);
                        }
                    }
                }
            }
        }
    }

    /// Whatever is left at the end of the stream (an incomplete character).
    pub fn finish(&mut self) -> String {
        let rest = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        rest
    }
}

/// Holds back text that may be the beginning of a stop string, and cuts the output
/// where a stop string appears.
pub struct StopMatcher {
    stops: Vec<String>,
    text: String,
    emitted: usize,
}

/// What a piece of text released.
#[derive(Debug, PartialEq, Eq)]
pub struct Released {
    pub text: String,
    pub stopped: bool,
}

impl StopMatcher {
    pub fn new(stops: &[String]) -> StopMatcher {
        StopMatcher {
            stops: stops.iter().filter(|s| !s.is_empty()).cloned().collect(),
            text: String::new(),
            emitted: 0,
        }
    }

    pub fn push(&mut self, piece: &str) -> Released {
        self.text.push_str(piece);
        // A stop string may start in text already held back, so search from the
        // earliest byte that is not yet emitted.
        let unsent = &self.text[self.emitted..];
        let hit = self
            .stops
            .iter()
            .filter_map(|s| unsent.find(s.as_str()))
            .min();
        if let Some(at) = hit {
            let text = unsent[..at].to_string();
            self.text.truncate(self.emitted + at);
            self.emitted = self.text.len();
            return Released {
                text,
                stopped: true,
            };
        }
        let hold = self
            .stops
            .iter()
            .map(|s| longest_suffix_that_prefixes(unsent, s))
            .max()
            .unwrap_or(0);
        let end = self.text.len() - hold;
        let text = self.text[self.emitted..end].to_string();
        self.emitted = end;
        Released {
            text,
            stopped: false,
        }
    }

    /// The text held back when generation ends for another reason.
    pub fn finish(&mut self) -> String {
        let rest = self.text[self.emitted..].to_string();
        self.emitted = self.text.len();
        rest
    }

    /// All the text released so far.
    pub fn text(&self) -> &str {
        &self.text[..self.emitted]
    }
}

/// Length of the longest suffix of `text` that is a proper prefix of `stop`, cut at a
/// character boundary.
fn longest_suffix_that_prefixes(text: &str, stop: &str) -> usize {
    let max = stop.len().saturating_sub(1).min(text.len());
    (1..=max)
        .rev()
        .find(|&n| {
            let start = text.len() - n;
            text.is_char_boundary(start) && stop.starts_with(&text[start..])
        })
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utf8_split_across_tokens_is_joined() {
        let crab = "🦀".as_bytes();
        let mut s = Utf8Stream::default();
        assert_eq!(s.push(&[b'a', crab[0], crab[1]]), "a");
        assert_eq!(s.push(&crab[2..]), "🦀");
        assert_eq!(s.push("日本".as_bytes()), "日本");
        assert_eq!(s.finish(), "");
    }

    #[test]
    fn invalid_bytes_become_replacement_characters() {
        let mut s = Utf8Stream::default();
        assert_eq!(s.push(&[b'x', 0xff, b'y']), "x\u{fffd}y");
        assert_eq!(s.push(&[0xe6]), "");
        assert_eq!(s.finish(), "\u{fffd}");
    }

    fn run(stops: &[&str], pieces: &[&str]) -> (Vec<String>, bool, String) {
        let stops: Vec<String> = stops.iter().map(|s| s.to_string()).collect();
        let mut m = StopMatcher::new(&stops);
        let mut out = Vec::new();
        for p in pieces {
            let r = m.push(p);
            out.push(r.text);
            if r.stopped {
                return (out, true, m.text().to_string());
            }
        }
        out.push(m.finish());
        (out, false, m.text().to_string())
    }

    #[test]
    fn stop_string_split_over_pieces_is_never_sent() {
        let (out, stopped, all) = run(&["\n\n"], &["def f", "():\n", "\n", "x"]);
        assert!(stopped);
        assert_eq!(out, ["def f", "():", ""]);
        assert_eq!(all, "def f():");
    }

    #[test]
    fn held_back_text_is_released_when_it_is_not_a_stop() {
        let (out, stopped, all) = run(&["</s>"], &["a<", "/b", "c"]);
        assert!(!stopped);
        assert_eq!(out.concat(), "a</bc");
        assert_eq!(out[0], "a");
        assert_eq!(all, "a</bc");
    }

    #[test]
    fn earliest_of_several_stops_wins() {
        let (_, stopped, all) = run(&["END", "x"], &["abcxyzEND"]);
        assert!(stopped);
        assert_eq!(all, "abc");
    }

    #[test]
    fn hold_back_respects_char_boundaries() {
        let (out, stopped, _) = run(&["é!"], &["café", "?"]);
        assert!(!stopped);
        assert_eq!(out.concat(), "café?");
    }
}

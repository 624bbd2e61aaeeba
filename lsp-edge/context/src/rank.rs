//! Relevance ranking: BM25 over identifiers split at `snake_case` and `camelCase`.
//!
//! Terms are the lower-cased sub-words of identifiers (`fetchUserData` and
//! `fetch_user_data` both give `fetch`, `user`, `data`), hashed to 64 bits so that
//! ranking allocates no strings. A handful of words that every chunk has (`self`,
//! `def`, `return`, English glue words) carry no signal and are dropped.

/// Words too common in code or instructions to tell chunks apart.
const STOP_WORDS: &[&str] = &[
    "a", "an", "and", "are", "as", "be", "by", "def", "fn", "for", "from", "if", "in", "into",
    "is", "it", "let", "mut", "none", "of", "on", "or", "pub", "return", "self", "so", "that",
    "the", "this", "to", "use", "with",
];

/// A term: the hash of a lower-cased identifier sub-word.
pub type Term = u64;

fn is_ident_char(c: char) -> bool {
    c == '_' || c.is_alphanumeric()
}

/// The identifiers in `text`: runs of letters, digits and `_` that do not start
/// with a digit.
pub fn identifiers(text: &str) -> impl Iterator<Item = &str> {
    text.split(|c: char| !is_ident_char(c))
        .filter(|word| word.chars().next().is_some_and(|c| !c.is_numeric()))
}

/// Splits an identifier into its sub-words: at `_`, at a lower-to-upper change
/// (`fetchUser`), and before the last capital of a capital run (`HTTPServer`).
pub fn split_identifier(ident: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    for_each_subword(ident, |part| parts.push(part));
    parts
}

fn for_each_subword<'a>(ident: &'a str, mut f: impl FnMut(&'a str)) {
    for piece in ident.split('_').filter(|piece| !piece.is_empty()) {
        let mut start = 0;
        let mut chars = piece.char_indices().peekable();
        let mut prev: Option<char> = None;
        while let Some((i, c)) = chars.next() {
            if let Some(p) = prev {
                let next_lower = chars.peek().is_some_and(|&(_, n)| n.is_lowercase());
                let boundary = c.is_uppercase()
                    && (p.is_lowercase() || p.is_numeric() || (p.is_uppercase() && next_lower));
                if boundary && i > start {
                    f(&piece[start..i]);
                    start = i;
                }
            }
            prev = Some(c);
        }
        f(&piece[start..]);
    }
}

/// Appends the terms of every identifier in `text` to `out`.
///
/// Scans bytes: ASCII identifiers, nearly all of them in code, are split and
/// hashed in place; identifiers with other characters take the general path.
pub fn terms(text: &str, out: &mut Vec<Term>) {
    let bytes = text.as_bytes();
    let is_word_byte = |b: u8| b.is_ascii_alphanumeric() || b == b'_' || b >= 0x80;
    let mut i = 0;
    while i < bytes.len() {
        if !is_word_byte(bytes[i]) {
            i += 1;
            continue;
        }
        // Runs end at an ASCII byte, so both ends are character boundaries.
        let start = i;
        while i < bytes.len() && is_word_byte(bytes[i]) {
            i += 1;
        }
        let word = &text[start..i];
        if word.is_ascii() {
            if !bytes[start].is_ascii_digit() {
                ascii_subwords(word.as_bytes(), |part| out.extend(ascii_term(part)));
            }
        } else {
            for ident in identifiers(word) {
                for_each_subword(ident, |part| out.extend(term(part)));
            }
        }
    }
}

/// [`for_each_subword`] for ASCII identifiers, on bytes.
fn ascii_subwords(ident: &[u8], mut f: impl FnMut(&[u8])) {
    let mut start = 0;
    for i in 0..ident.len() {
        let c = ident[i];
        if c == b'_' {
            if i > start {
                f(&ident[start..i]);
            }
            start = i + 1;
            continue;
        }
        if i > start && c.is_ascii_uppercase() {
            let p = ident[i - 1];
            let next_lower = ident.get(i + 1).is_some_and(|n| n.is_ascii_lowercase());
            if p.is_ascii_lowercase()
                || p.is_ascii_digit()
                || (p.is_ascii_uppercase() && next_lower)
            {
                f(&ident[start..i]);
                start = i;
            }
        }
    }
    if ident.len() > start {
        f(&ident[start..]);
    }
}

fn ascii_term(word: &[u8]) -> Option<Term> {
    if word.len() < 2
        || (word.len() <= 6
            && STOP_WORDS
                .iter()
                .any(|stop| stop.as_bytes().eq_ignore_ascii_case(word)))
    {
        return None;
    }
    Some(word.iter().fold(FNV_OFFSET, |hash, b| {
        (hash ^ u64::from(b.to_ascii_lowercase())).wrapping_mul(FNV_PRIME)
    }))
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// The term for one sub-word, or `None` for stop words and single letters.
fn term(word: &str) -> Option<Term> {
    if word.is_ascii() {
        return ascii_term(word.as_bytes());
    }
    // Single letters carry no meaning.
    word.chars().nth(1)?;
    let mut hash = FNV_OFFSET;
    let mut utf8 = [0u8; 4];
    for c in word.chars().flat_map(char::to_lowercase) {
        for &b in c.encode_utf8(&mut utf8).as_bytes() {
            hash = (hash ^ u64::from(b)).wrapping_mul(FNV_PRIME);
        }
    }
    Some(hash)
}

/// BM25 over a fixed set of documents (chunks).
#[derive(Debug)]
pub struct Bm25 {
    /// Per document: (term, frequency), sorted by term.
    docs: Vec<Vec<(Term, u32)>>,
    lengths: Vec<u32>,
    average_length: f32,
}

impl Bm25 {
    const K1: f32 = 1.2;
    const B: f32 = 0.75;

    pub fn new<'t>(docs: impl IntoIterator<Item = &'t str>) -> Bm25 {
        let mut buffer = Vec::new();
        let mut index = Vec::new();
        let mut lengths = Vec::new();
        for doc in docs {
            buffer.clear();
            terms(doc, &mut buffer);
            buffer.sort_unstable();
            lengths.push(buffer.len() as u32);
            let mut counted: Vec<(Term, u32)> = Vec::new();
            for &term in &buffer {
                match counted.last_mut() {
                    Some((last, count)) if *last == term => *count += 1,
                    _ => counted.push((term, 1)),
                }
            }
            index.push(counted);
        }
        let total: u64 = lengths.iter().map(|&n| u64::from(n)).sum();
        let average_length = if lengths.is_empty() {
            0.0
        } else {
            total as f32 / lengths.len() as f32
        };
        Bm25 {
            docs: index,
            lengths,
            average_length,
        }
    }

    /// One score per document for `query` (its terms in any order, repeats
    /// counted once).
    pub fn scores(&self, query: &[Term]) -> Vec<f32> {
        let mut query = query.to_vec();
        query.sort_unstable();
        query.dedup();
        let n = self.docs.len() as f32;
        let mut scores = vec![0.0; self.docs.len()];
        if self.average_length == 0.0 {
            return scores;
        }
        for &term in &query {
            let frequency = |doc: &Vec<(Term, u32)>| {
                doc.binary_search_by_key(&term, |&(t, _)| t)
                    .map_or(0, |i| doc[i].1)
            };
            let df = self.docs.iter().filter(|doc| frequency(doc) > 0).count() as f32;
            if df == 0.0 {
                continue;
            }
            let idf = (1.0 + (n - df + 0.5) / (df + 0.5)).ln();
            for (i, doc) in self.docs.iter().enumerate() {
                let tf = frequency(doc) as f32;
                if tf > 0.0 {
                    let norm =
                        1.0 - Self::B + Self::B * self.lengths[i] as f32 / self.average_length;
                    scores[i] += idf * tf * (Self::K1 + 1.0) / (tf + Self::K1 * norm);
                }
            }
        }
        scores
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use expect_test::{expect, Expect};

    fn check_split(input: &str, expect: Expect) {
        let parts: Vec<String> = identifiers(input)
            .map(|ident| split_identifier(ident).join(" "))
            .collect();
        expect.assert_eq(&parts.join(" | "));
    }

    #[test]
    fn identifiers_split_at_case_and_underscores() {
        check_split(
            "fetch_user_data fetchUserData HTTPServer parse_URL2json __init__ Vec<u8> x1 9lives",
            expect!["fetch user data | fetch User Data | HTTP Server | parse URL2json | init | Vec | u8 | x1"],
        );
        check_split(
            "grüßeWelt 변수_이름 émoji😀ok",
            expect!["grüße Welt | 변수 이름 | émoji | ok"],
        );
    }

    /// The byte scanner and the general path agree on every identifier.
    #[test]
    fn ascii_fast_path_matches_the_general_path() {
        let text = "fetch_user_data fetchUserData HTTPServer parse_URL2json __init__ x1 9lives \
                    a_b_c ABC AbcDEF self.the_client MAX_RETRIES utf8Decoder";
        let mut fast = Vec::new();
        terms(text, &mut fast);
        let mut slow = Vec::new();
        for ident in identifiers(text) {
            for_each_subword(ident, |part| {
                if part.chars().nth(1).is_some()
                    && !STOP_WORDS.iter().any(|s| s.eq_ignore_ascii_case(part))
                {
                    let mut hash = FNV_OFFSET;
                    for b in part.to_lowercase().bytes() {
                        hash = (hash ^ u64::from(b)).wrapping_mul(FNV_PRIME);
                    }
                    slow.push(hash);
                }
            });
        }
        assert_eq!(fast, slow);
        assert_eq!(fast.len(), 19);
    }

    #[test]
    fn snake_and_camel_case_give_the_same_terms() {
        let (mut a, mut b) = (Vec::new(), Vec::new());
        terms("fetch_user_data(self)", &mut a);
        terms("fetchUserData(this)", &mut b);
        assert_eq!(a, b);
        assert_eq!(a.len(), 3);
    }

    #[test]
    fn bm25_prefers_the_chunk_that_matches() {
        let index = Bm25::new([
            "def load_config(path):\n    return toml.load(path)\n",
            "def send_request(url):\n    return http.get(url)\n",
            "def parse_request_body(request):\n    return json.loads(request.body)\n",
        ]);
        let mut query = Vec::new();
        terms("send the request again", &mut query);
        let scores = index.scores(&query);
        assert_eq!(scores[0], 0.0);
        assert!(scores[1] > 0.0 && scores[2] > 0.0);
        assert!(scores[1] > scores[2], "{scores:?}");
    }
}

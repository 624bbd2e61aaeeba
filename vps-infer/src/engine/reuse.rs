//! KV-cache reuse past the first difference: which cached tokens a new prompt can keep,
//! and where they move.
//!
//! A keystroke, an Enter or a context window that slid by a line changes the prompt in
//! one or two places; everything after the first change is still in the cache, only at
//! other positions. Like llama.cpp's server (`--cache-reuse`), we keep long runs of
//! cached tokens that reappear later in the new prompt and shift their positions
//! (`llama_memory_seq_add`) instead of evaluating them again. Unlike it, runs may move
//! right as well as left, so text *inserted* before the suffix (typing) keeps the
//! suffix too, not only text removed (a window that slid).
//!
//! The keys and values of a shifted run were computed with the old text before it, so
//! the result is an approximation of a cold evaluation; runs shorter than a minimum are
//! not worth that and are evaluated again. How far each cached token has drifted from a
//! cold evaluation is tracked: the tokens inserted and removed before it since it was
//! evaluated, summed over every reuse. A run is reused only while that stays within a
//! bound, so a suffix shifted at every keystroke is evaluated afresh now and then, and
//! a run computed in an unrelated context (another file, other chunks) never is.

use std::collections::HashMap;
use std::hash::Hash;

/// `len` cached tokens at cache positions `from..` that the new prompt holds at
/// positions `to..`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Run {
    pub from: usize,
    pub to: usize,
    pub len: usize,
    /// Tokens inserted and removed before the run by this prompt: added to each of its
    /// tokens' drift.
    pub edit: u32,
}

/// The tokens in the cache, in position order, with each one's drift.
#[derive(Debug, Clone)]
pub struct Cached<T> {
    tokens: Vec<T>,
    drift: Vec<u32>,
}

impl<T> Default for Cached<T> {
    fn default() -> Self {
        Cached {
            tokens: Vec::new(),
            drift: Vec::new(),
        }
    }
}

impl<T: Copy> Cached<T> {
    pub fn tokens(&self) -> &[T] {
        &self.tokens
    }

    pub fn drift(&self) -> &[u32] {
        &self.drift
    }

    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    pub fn truncate(&mut self, len: usize) {
        self.tokens.truncate(len);
        self.drift.truncate(len);
    }

    pub fn clear(&mut self) {
        self.truncate(0);
    }

    /// Tokens just evaluated: no drift.
    pub fn extend_evaluated(&mut self, tokens: &[T]) {
        self.tokens.extend_from_slice(tokens);
        self.drift.extend(std::iter::repeat_n(0, tokens.len()));
    }

    /// A run moved in from `from`: its tokens were `old`'s there, now further off.
    pub fn extend_moved(&mut self, old: &Cached<T>, run: &Run) {
        let range = run.from..run.from + run.len;
        self.tokens.extend_from_slice(&old.tokens[range.clone()]);
        self.drift
            .extend(old.drift[range].iter().map(|d| d.saturating_add(run.edit)));
    }
}

impl Run {
    pub fn delta(&self) -> i64 {
        self.to as i64 - self.from as i64
    }
}

/// How a new prompt reuses the cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// Prompt tokens `0..prefix` are the cache's own first tokens and stay in place.
    pub prefix: usize,
    /// Later runs, increasing in both `from` and `to`, none overlapping the prefix or
    /// each other, none covering the prompt's last token (its logits are needed, so it
    /// is always evaluated).
    pub runs: Vec<Run>,
}

impl Plan {
    /// Prompt tokens that need no evaluation.
    pub fn reused(&self) -> usize {
        self.prefix + self.runs.iter().map(|r| r.len).sum::<usize>()
    }

    /// Reused tokens whose position changed.
    pub fn shifted(&self) -> usize {
        self.runs
            .iter()
            .filter(|r| r.from != r.to)
            .map(|r| r.len)
            .sum()
    }

    /// The prompt's ranges that must be evaluated, in order: the gaps before each run,
    /// then the tail after the last one (never empty).
    pub fn gaps(&self, prompt_len: usize) -> Vec<std::ops::Range<usize>> {
        let mut gaps = Vec::with_capacity(self.runs.len() + 1);
        let mut at = self.prefix;
        for run in &self.runs {
            gaps.push(at..run.to);
            at = run.to + run.len;
        }
        gaps.push(at..prompt_len);
        gaps
    }
}

/// What a prompt may reuse past the first difference from the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// Shortest run worth shifting; 0 keeps only the common prefix.
    pub min_run: usize,
    /// Most drift a reused token may reach.
    pub max_drift: u32,
    /// Tokens right after each edit that are evaluated afresh although the cache holds
    /// them: the text next to an edit (the start of the suffix after a keystroke) is
    /// what the model reads most closely, and its cached keys and values still
    /// describe the text before the edit.
    pub fresh: usize,
}

/// At most this many earlier occurrences of a k-gram are tried at each position, so
/// repetitive text (indentation, blank lines) cannot make planning quadratic.
const MAX_CANDIDATES: usize = 32;

/// Plans the reuse of `cache` for `prompt`: the common prefix, then, when
/// `policy.min_run` is not 0, each later run of at least `min_run` tokens that appears
/// in the cache after the previous one (greedy, longest first), whose tokens' drift
/// stays within `max_drift`, less its first `fresh` tokens.
pub fn plan<T: Copy + Eq + Hash>(cache: &Cached<T>, prompt: &[T], policy: &Policy) -> Plan {
    let Policy {
        min_run,
        max_drift,
        fresh,
    } = *policy;
    let cached = cache.tokens();
    let drift = cache.drift();
    let mut prefix = cached
        .iter()
        .zip(prompt)
        .take_while(|(a, b)| a == b)
        .count();
    // At least one token must be evaluated to get logits for the next one.
    if prefix == prompt.len() {
        prefix = prompt.len().saturating_sub(1);
    }
    let mut plan = Plan {
        prefix,
        runs: Vec::new(),
    };
    // The last prompt token is never part of a run.
    let end = prompt.len().saturating_sub(1);
    if min_run == 0 || prefix >= end || prefix >= cached.len() {
        return plan;
    }
    let k = min_run.min(8);
    let mut index: HashMap<&[T], Vec<usize>> = HashMap::new();
    for c in prefix..cached.len().saturating_sub(k - 1) {
        index.entry(&cached[c..c + k]).or_default().push(c);
    }

    let mut next_free = prefix;
    let mut reused = prefix;
    let mut p = prefix;
    while p + min_run <= end {
        let mut best: Option<Run> = None;
        // The fresh tokens of earlier runs are neither inserted nor removed: they
        // were evaluated again.
        let refreshed = plan.runs.len() * fresh;
        if let Some(starts) = index.get(&prompt[p..p + k]) {
            let first = starts.partition_point(|&c| c < next_free);
            for &c in starts[first..].iter().take(MAX_CANDIDATES) {
                // Inserted before the run (prompt tokens not reused) plus removed
                // before it (cached tokens skipped), counted from the prefix.
                let edit = u32::try_from((p - reused - refreshed) + (c - reused - refreshed))
                    .unwrap_or(u32::MAX);
                let len = cached[c..]
                    .iter()
                    .zip(&drift[c..])
                    .zip(&prompt[p..end])
                    .take_while(|((a, d), b)| a == b && d.saturating_add(edit) <= max_drift)
                    .count();
                if best.is_none_or(|b| len > b.len) {
                    best = Some(Run {
                        from: c,
                        to: p,
                        len,
                        edit,
                    });
                }
            }
        }
        match best {
            Some(mut run) if run.len >= min_run + fresh => {
                // Every run follows an edit: its first tokens are evaluated again. The
                // edit before the rest is still what it was.
                run.from += fresh;
                run.to += fresh;
                run.len -= fresh;
                plan.runs.push(run);
                p = run.to + run.len;
                next_free = run.from + run.len;
                reused += run.len;
            }
            _ => p += 1,
        }
    }
    plan
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chars(s: &str) -> Vec<char> {
        s.chars().collect()
    }

    fn runs(min_run: usize, max_drift: u32) -> Policy {
        Policy {
            min_run,
            max_drift,
            fresh: 0,
        }
    }

    fn fresh(tokens: &[char]) -> Cached<char> {
        let mut cached = Cached::default();
        cached.extend_evaluated(tokens);
        cached
    }

    /// Applies a plan as the engine does and checks that every reused token is the
    /// prompt's token at its new position.
    fn check_consistent(cached: &[char], prompt: &[char], plan: &Plan) {
        assert_eq!(cached[..plan.prefix], prompt[..plan.prefix]);
        let mut last_from = plan.prefix;
        let mut last_to = plan.prefix;
        for run in &plan.runs {
            assert!(run.from >= last_from && run.to >= last_to, "{plan:?}");
            assert_eq!(
                cached[run.from..run.from + run.len],
                prompt[run.to..run.to + run.len]
            );
            last_from = run.from + run.len;
            last_to = run.to + run.len;
        }
        assert!(last_to < prompt.len(), "the last token is always evaluated");
        let gaps: usize = plan.gaps(prompt.len()).iter().map(|g| g.len()).sum();
        assert_eq!(gaps + plan.reused(), prompt.len());
    }

    #[test]
    fn typing_before_the_suffix_keeps_the_suffix_shifted_right() {
        let cached = chars("PRE def f(x):\n    return x SUF\n\ndef g():\n    pass\nMID");
        let prompt = chars("PRE def f(x):\n    return x + SUF\n\ndef g():\n    pass\nMID");
        let plan = plan(&fresh(&cached), &prompt, &runs(8, u32::MAX));
        check_consistent(&cached, &prompt, &plan);
        assert_eq!(plan.prefix, 27);
        assert_eq!(plan.runs.len(), 1);
        assert_eq!(plan.runs[0].delta(), 2);
        // Evaluated: the two typed characters and the final marker's last token.
        assert_eq!(prompt.len() - plan.reused(), 3);
    }

    #[test]
    fn a_window_that_slid_by_a_line_keeps_the_rest_shifted_left() {
        let cached = chars("<ctx>line one\nline two\nline three\nline four\n|suffix text here|");
        let prompt = chars("<ctx>line two\nline three\nline four\nline five\n|suffix text here|");
        let plan = plan(&fresh(&cached), &prompt, &runs(8, u32::MAX));
        check_consistent(&cached, &prompt, &plan);
        assert!(plan.runs.iter().any(|r| r.delta() < 0), "{plan:?}");
        assert!(plan.runs.iter().any(|r| r.delta() > 0), "{plan:?}");
        // "line five\n" and the final token are new.
        assert_eq!(prompt.len() - plan.reused(), "line five\n".len() + 1);
    }

    #[test]
    fn drift_adds_up_until_a_run_is_evaluated_again() {
        // Type characters before a long suffix, one at a time, as the engine would.
        let suffix = "|the suffix after the cursor, long enough|";
        let mut cache = fresh(&chars(&format!("def f():{suffix}")));
        let mut reevaluated = Vec::new();
        for n in 1..=12 {
            let prompt = chars(&format!("def f():{}{suffix}", "x".repeat(n)));
            let plan = plan(&cache, &prompt, &runs(8, 6));
            let mut next = Cached::default();
            next.extend_evaluated(&prompt[..plan.prefix]);
            let mut at = plan.prefix;
            for run in &plan.runs {
                next.extend_evaluated(&prompt[at..run.to]);
                next.extend_moved(&cache, run);
                at = run.to + run.len;
            }
            next.extend_evaluated(&prompt[at..]);
            if plan.runs.is_empty() {
                reevaluated.push(n);
            }
            cache = next;
        }
        // Each keystroke inserts one token before the suffix: at most 6 in a row.
        assert_eq!(reevaluated, [7]);
    }

    #[test]
    fn a_run_from_an_unrelated_context_is_not_reused() {
        let block = "0123456789abcdefghijklmnopqrstuv";
        let cached = chars(&format!("{}{block}", "other file ".repeat(8)));
        let prompt = chars(&format!("mine{block}!"));
        assert!(plan(&fresh(&cached), &prompt, &runs(8, 32)).runs.is_empty());
        assert_eq!(
            plan(&fresh(&cached), &prompt, &runs(8, u32::MAX))
                .runs
                .len(),
            1
        );
    }

    #[test]
    fn an_identical_prompt_evaluates_only_its_last_token() {
        let cached = chars("the same prompt twice");
        let plan = plan(&fresh(&cached), &cached, &runs(8, u32::MAX));
        assert_eq!(plan.prefix, cached.len() - 1);
        assert!(plan.runs.is_empty());
    }

    #[test]
    fn min_run_zero_is_the_plain_common_prefix() {
        let cached = chars("abcdefgh 0123456789abcdef");
        let prompt = chars("abcdefgh X0123456789abcdef");
        let plan = plan(&fresh(&cached), &prompt, &runs(0, u32::MAX));
        assert_eq!(plan.prefix, 9);
        assert!(plan.runs.is_empty());
    }

    #[test]
    fn short_runs_are_evaluated_again() {
        let cached = chars("head:abc|tail");
        let prompt = chars("head:XYZabc|tail!");
        let plan = plan(&fresh(&cached), &prompt, &runs(16, u32::MAX));
        assert!(plan.runs.is_empty());
        assert_eq!(plan.reused(), 5);
    }

    #[test]
    fn runs_never_reuse_a_cached_token_twice() {
        // The same block appears twice in the prompt but once in the cache.
        let block = "0123456789abcdefghij";
        let cached = chars(&format!("S{block}E"));
        let prompt = chars(&format!("T{block}{block}E"));
        let plan = plan(&fresh(&cached), &prompt, &runs(8, u32::MAX));
        check_consistent(&cached, &prompt, &plan);
        assert_eq!(plan.runs.len(), 1);
    }

    #[test]
    fn repetitive_text_plans_quickly_and_consistently() {
        let cached: Vec<char> = " ".repeat(5000).chars().chain("x".chars()).collect();
        let prompt: Vec<char> = "y".chars().chain(" ".repeat(5000).chars()).collect();
        let plan = plan(&fresh(&cached), &prompt, &runs(32, u32::MAX));
        check_consistent(&cached, &prompt, &plan);
        assert_eq!(plan.reused(), 4999);
    }

    #[test]
    fn the_tokens_next_to_an_edit_are_evaluated_afresh() {
        let cached = chars("PRE def f(x):\n    return x SUF\n\ndef g():\n    pass\nMID");
        let prompt = chars("PRE def f(x):\n    return x + SUF\n\ndef g():\n    pass\nMID");
        let policy = Policy {
            fresh: 6,
            ..runs(8, 4)
        };
        let typed = plan(&fresh(&cached), &prompt, &policy);
        check_consistent(&cached, &prompt, &typed);
        assert_eq!(typed.runs.len(), 1);
        // "+ " typed, then "SUF\n\n" evaluated again next to it.
        assert_eq!(typed.runs[0].to, 27 + 2 + 6);
        assert_eq!(typed.runs[0].delta(), 2);
        // The re-evaluated tokens are no edit: the run's drift is the two typed.
        assert_eq!(typed.runs[0].edit, 2);
        assert_eq!(prompt.len() - typed.reused(), 2 + 6 + 1);
        // Nothing to shift past the window: the prefix alone.
        let short = chars("PRE def f(x):\n    return x + SUF\n\nMID");
        let cached = chars("PRE def f(x):\n    return x SUF\n\nMID");
        let policy = Policy {
            fresh: 8,
            ..runs(4, 4)
        };
        assert!(plan(&fresh(&cached), &short, &policy).runs.is_empty());
    }
}

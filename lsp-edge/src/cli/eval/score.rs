//! Scoring answers against their holes, and the totals and table of a run.

use std::collections::{BTreeMap, HashSet};

use serde::Serialize;

use super::Case;

/// The first line of an answer, trailing whitespace trimmed.
pub fn first_line(text: &str) -> &str {
    text.split('\n').next().unwrap_or("").trim_end()
}

/// `1 - levenshtein(a, b) / max(chars)`, over characters; 1 for two empty strings.
pub fn edit_similarity(a: &str, b: &str) -> f64 {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let longest = a.len().max(b.len());
    if longest == 0 {
        return 1.0;
    }
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.iter().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = (above + 1)
                .min(row[j] + 1)
                .min(diagonal + usize::from(ca != cb));
            diagonal = above;
        }
    }
    1.0 - row[b.len()] as f64 / longest as f64
}

/// What one configuration made of one case.
#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    /// The first generated line.
    pub text: String,
    pub exact: bool,
    pub similarity: f64,
    pub prompt_tokens: u64,
    /// Not known for an answer cut where its block ends (no final event came).
    pub cached_tokens: Option<u64>,
    /// From the request to the last token, context engine included.
    pub ms: f64,
    /// Extra chunks sent (engine only).
    pub chunks: usize,
    /// With `--block-holes`, the whole answer against the hole's lines.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub block: Option<BlockOutcome>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// A whole answer against a block hole's lines.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BlockOutcome {
    /// The answer as an editor would show it, trailing whitespace trimmed per line.
    pub text: String,
    /// Every line right, and no more lines.
    pub exact: bool,
    /// Lines in the answer and in the hole.
    pub lines: usize,
    pub expected_lines: usize,
    /// The answer's leading lines that are right.
    pub right_lines: usize,
    /// Why the answer ends there: a trimming rule (`block_end`, `next_item`, `suffix`,
    /// `lines`) or the model (`eos`, `stop`, `length`: the token cap).
    pub stop: String,
}

impl BlockOutcome {
    /// Compares lines with trailing whitespace trimmed; blank lines at the end of the
    /// answer do not count.
    pub fn new(answer: &str, expected: &str, stop: &str) -> BlockOutcome {
        let mut lines: Vec<&str> = answer.split('\n').map(str::trim_end).collect();
        while lines.last().is_some_and(|line| line.is_empty()) {
            lines.pop();
        }
        let expected: Vec<&str> = expected.split('\n').collect();
        let right_lines = lines
            .iter()
            .zip(&expected)
            .take_while(|(a, b)| a == b)
            .count();
        BlockOutcome {
            text: lines.join("\n"),
            exact: lines == expected,
            lines: lines.len(),
            expected_lines: expected.len(),
            right_lines,
            stop: stop.to_owned(),
        }
    }
}

/// Totals for one configuration.
#[derive(Debug, Clone, Serialize)]
pub struct Score {
    pub name: String,
    pub cases: usize,
    pub errors: usize,
    pub exact_match: f64,
    pub edit_similarity: f64,
    pub mean_prompt_tokens: f64,
    /// `None` when no answer said (every answer was cut where its block ends).
    pub mean_cached_tokens: Option<f64>,
    pub mean_ms: f64,
    pub mean_chunks: f64,
    /// The same figures per language.
    pub by_language: BTreeMap<String, LanguageScore>,
    /// With `--block-holes`, the whole answers.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub block: Option<BlockScore>,
    /// Against the run's first configuration, case by case (`None` for the first).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub versus_first: Option<Versus>,
}

/// One configuration's first lines against another's on the same cases: how many
/// it got right that the other missed, and the other way round. Greedy answers
/// make these exact; the difference of two scores hides how many answers moved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Versus {
    pub won: usize,
    pub lost: usize,
}

/// Whole answers against block holes, each a share of the cases (an error is in none
/// of them, and no line of it is right).
#[derive(Debug, Clone, Serialize)]
pub struct BlockScore {
    /// Every line right, and no more.
    pub exact_match: f64,
    /// As many lines as the hole: stopped where the block ends.
    pub stopped_right: f64,
    pub too_short: f64,
    pub too_long: f64,
    /// The mean share of a hole's lines that the answer's leading lines got right.
    pub lines_right: f64,
    pub mean_expected_lines: f64,
    /// How many answers end for each reason ([`BlockOutcome::stop`]).
    pub stops: BTreeMap<String, usize>,
}

#[derive(Debug, Clone, Serialize)]
pub struct LanguageScore {
    pub cases: usize,
    pub exact_match: f64,
    pub edit_similarity: f64,
    pub mean_prompt_tokens: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct CaseResult {
    #[serde(flatten)]
    pub case: Case,
    pub outcomes: BTreeMap<String, Outcome>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub seed: u64,
    pub count: usize,
    /// Lines each hole takes out (`--hole-lines`).
    pub hole_lines: u16,
    /// With `--block-holes`, the most lines a hole takes out.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub block_max_lines: Option<usize>,
    /// With `--whole-line`, holes are whole lines and the cursor is at column 0.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub whole_line: bool,
    pub sources: Vec<String>,
    pub model: Option<String>,
    pub scores: Vec<Score>,
    pub cases: Vec<CaseResult>,
}

fn mean(values: impl Iterator<Item = f64>) -> f64 {
    let (sum, n) = values.fold((0.0, 0usize), |(s, n), v| (s + v, n + 1));
    if n == 0 {
        0.0
    } else {
        sum / n as f64
    }
}

/// Scores each variant, the later ones also against the first.
pub(super) fn scores(names: &[&str], results: &[CaseResult]) -> Vec<Score> {
    let mut scores: Vec<Score> = names.iter().map(|name| score(name, results)).collect();
    if let Some((first, rest)) = names.split_first() {
        for (score, name) in scores.iter_mut().skip(1).zip(rest) {
            score.versus_first = Some(versus(name, first, results));
        }
    }
    scores
}

/// `name`'s exact matches against `other`'s, over the cases both ran (an error is
/// a miss).
fn versus(name: &str, other: &str, results: &[CaseResult]) -> Versus {
    let exact = |result: &CaseResult, variant: &str| result.outcomes.get(variant).map(|o| o.exact);
    let pairs = results
        .iter()
        .filter_map(|r| Some((exact(r, name)?, exact(r, other)?)));
    let (won, lost) = pairs.fold((0, 0), |(won, lost), pair| match pair {
        (true, false) => (won + 1, lost),
        (false, true) => (won, lost + 1),
        _ => (won, lost),
    });
    Versus { won, lost }
}

/// Scores one variant. Exact match and similarity count an error as a miss; the
/// means of tokens and time are over the cases that ran.
fn score(name: &str, results: &[CaseResult]) -> Score {
    let outcomes: Vec<(&Case, &Outcome)> = results
        .iter()
        .filter_map(|r| r.outcomes.get(name).map(|o| (&r.case, o)))
        .collect();
    let ok = || outcomes.iter().filter(|(_, o)| o.error.is_none());
    let mut by_language = BTreeMap::new();
    let languages: HashSet<&str> = outcomes.iter().map(|(c, _)| c.language).collect();
    for language in languages {
        let these: Vec<&Outcome> = outcomes
            .iter()
            .filter(|(c, _)| c.language == language)
            .map(|(_, o)| *o)
            .collect();
        by_language.insert(
            language.to_owned(),
            LanguageScore {
                cases: these.len(),
                exact_match: mean(these.iter().map(|o| f64::from(u8::from(o.exact)))),
                edit_similarity: mean(these.iter().map(|o| o.similarity)),
                mean_prompt_tokens: mean(
                    these
                        .iter()
                        .filter(|o| o.error.is_none())
                        .map(|o| o.prompt_tokens as f64),
                ),
            },
        );
    }
    Score {
        name: name.to_owned(),
        cases: outcomes.len(),
        errors: outcomes.iter().filter(|(_, o)| o.error.is_some()).count(),
        exact_match: mean(outcomes.iter().map(|(_, o)| f64::from(u8::from(o.exact)))),
        edit_similarity: mean(outcomes.iter().map(|(_, o)| o.similarity)),
        mean_prompt_tokens: mean(ok().map(|(_, o)| o.prompt_tokens as f64)),
        mean_cached_tokens: ok()
            .any(|(_, o)| o.cached_tokens.is_some())
            .then(|| mean(ok().filter_map(|(_, o)| o.cached_tokens).map(|t| t as f64))),
        mean_ms: mean(ok().map(|(_, o)| o.ms)),
        mean_chunks: mean(ok().map(|(_, o)| o.chunks as f64)),
        by_language,
        block: block_score(&outcomes),
        versus_first: None,
    }
}

/// `None` unless the cases are block holes.
fn block_score(outcomes: &[(&Case, &Outcome)]) -> Option<BlockScore> {
    let expected_lines: Vec<f64> = outcomes
        .iter()
        .map(|(c, _)| Some(c.expected_block.as_ref()?.split('\n').count() as f64))
        .collect::<Option<_>>()?;
    let blocks: Vec<Option<&BlockOutcome>> =
        outcomes.iter().map(|(_, o)| o.block.as_ref()).collect();
    let share = |test: fn(&BlockOutcome) -> bool| {
        mean(
            blocks
                .iter()
                .map(|b| f64::from(u8::from(b.is_some_and(test)))),
        )
    };
    Some(BlockScore {
        exact_match: share(|b| b.exact),
        stopped_right: share(|b| b.lines == b.expected_lines),
        too_short: share(|b| b.lines < b.expected_lines),
        too_long: share(|b| b.lines > b.expected_lines),
        lines_right: mean(
            blocks
                .iter()
                .zip(&expected_lines)
                .map(|(b, lines)| b.map_or(0.0, |b| b.right_lines as f64 / lines)),
        ),
        mean_expected_lines: mean(expected_lines.iter().copied()),
        stops: blocks
            .iter()
            .flatten()
            .fold(BTreeMap::new(), |mut stops, b| {
                *stops.entry(b.stop.clone()).or_default() += 1;
                stops
            }),
    })
}

/// The table `lsp-edge eval` prints without `--json`.
pub fn render_table(report: &Report) -> String {
    let holes = match (report.block_max_lines, report.hole_lines) {
        (Some(max), _) => format!(", holes to the end of their block, at most {max} lines"),
        (None, 1) if report.whole_line => ", whole lines, the cursor at column 0".to_owned(),
        (None, 1) => String::new(),
        (None, n) => format!(", holes of {n} lines"),
    };
    let mut out = format!(
        "{} cases (seed {}{holes}), model {}\n{:<24} {:>6} {:>9} {:>9} {:>10} {:>9} {:>8} {:>7} {:>6}\n",
        report.count,
        report.seed,
        report.model.as_deref().unwrap_or("(vps-infer's default)"),
        "variant",
        "EM",
        "won/lost",
        "edit sim",
        "prompt tok",
        "cached",
        "mean ms",
        "chunks",
        "errors",
    );
    for s in &report.scores {
        let cached = s
            .mean_cached_tokens
            .map_or_else(|| "-".to_owned(), |t| format!("{t:.0}"));
        let versus = s
            .versus_first
            .map_or_else(|| "-".to_owned(), |v| format!("+{}/-{}", v.won, v.lost));
        out.push_str(&format!(
            "{:<24} {:>6.3} {:>9} {:>9.3} {:>10.0} {:>9} {:>8.0} {:>7.2} {:>6}\n",
            s.name,
            s.exact_match,
            versus,
            s.edit_similarity,
            s.mean_prompt_tokens,
            cached,
            s.mean_ms,
            s.mean_chunks,
            s.errors
        ));
    }
    for s in &report.scores {
        for (language, l) in &s.by_language {
            out.push_str(&format!(
                "  {:<22} {:>6.3} {:>9.3} {:>10.0}   ({} {} cases)\n",
                s.name, l.exact_match, l.edit_similarity, l.mean_prompt_tokens, language, l.cases
            ));
        }
    }
    let blocks: Vec<(&str, &BlockScore)> = report
        .scores
        .iter()
        .filter_map(|s| Some((s.name.as_str(), s.block.as_ref()?)))
        .collect();
    if let Some((_, first)) = blocks.first() {
        out.push_str(&format!(
            "whole answers (holes of {:.1} lines on average)\n{:<24} {:>6} {:>13} {:>9} {:>8} {:>11}\n",
            first.mean_expected_lines,
            "variant",
            "EM",
            "stopped right",
            "too short",
            "too long",
            "lines right",
        ));
        for (name, b) in blocks {
            out.push_str(&format!(
                "{:<24} {:>6.3} {:>13.3} {:>9.3} {:>8.3} {:>11.3}\n",
                name, b.exact_match, b.stopped_right, b.too_short, b.too_long, b.lines_right
            ));
            let stops: Vec<String> = b
                .stops
                .iter()
                .map(|(why, n)| format!("{why} {n}"))
                .collect();
            out.push_str(&format!("  {:<22} ended by: {}\n", name, stops.join(", ")));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::super::ask::failed;
    use super::*;

    #[test]
    fn edit_similarity_counts_characters() {
        assert_eq!(edit_similarity("", ""), 1.0);
        assert_eq!(edit_similarity("abc", "abc"), 1.0);
        assert_eq!(edit_similarity("abc", ""), 0.0);
        assert!((edit_similarity("kitten", "sitting") - (1.0 - 3.0 / 7.0)).abs() < 1e-9);
        assert!((edit_similarity("é", "e") - 0.0).abs() < 1e-9);
    }

    #[test]
    fn the_first_line_is_trimmed_at_the_end_only() {
        assert_eq!(first_line("  x = 1  \ny = 2"), "  x = 1");
        assert_eq!(first_line("\nx"), "");
        assert_eq!(first_line(""), "");
    }

    #[test]
    fn whole_answers_are_scored_line_by_line() {
        let expected = "x = 1\n    if a:\n        y = 2";
        let right = BlockOutcome::new("x = 1\n    if a:  \n        y = 2\n\n", expected, "eos");
        assert_eq!(
            (
                right.exact,
                right.lines,
                right.expected_lines,
                right.right_lines
            ),
            (true, 3, 3, 3)
        );
        assert_eq!(right.text, "x = 1\n    if a:\n        y = 2");
        let short = BlockOutcome::new("x = 1\n    if a:", expected, "eos");
        assert_eq!((short.exact, short.lines, short.right_lines), (false, 2, 2));
        let long = BlockOutcome::new(
            "x = 1\n    if b:\n        y = 2\n    z = 3",
            expected,
            "block_end",
        );
        assert_eq!((long.exact, long.lines, long.right_lines), (false, 4, 1));
        assert_eq!(BlockOutcome::new("", expected, "eos").lines, 0);
    }

    #[test]
    fn later_variants_are_counted_against_the_first_case_by_case() {
        let outcome = |exact: bool| Outcome {
            text: String::new(),
            exact,
            similarity: 0.0,
            prompt_tokens: 1,
            cached_tokens: None,
            ms: 1.0,
            chunks: 0,
            block: None,
            error: None,
        };
        // Both score 2 of 4, but "b" moved one answer each way.
        let answers = [(true, false), (true, true), (false, true), (false, false)];
        let results: Vec<CaseResult> = answers
            .iter()
            .enumerate()
            .map(|(id, &(a, b))| CaseResult {
                case: Case {
                    id,
                    path: format!("p{id}.py"),
                    language: "python",
                    line: 1,
                    expected: "x".into(),
                    expected_block: None,
                    prompt: String::new(),
                    suffix: String::new(),
                },
                outcomes: BTreeMap::from([
                    ("a".to_owned(), outcome(a)),
                    ("b".to_owned(), outcome(b)),
                ]),
            })
            .collect();
        let both = scores(&["a", "b"], &results);
        assert_eq!(both[0].versus_first, None);
        assert_eq!(both[1].versus_first, Some(Versus { won: 1, lost: 1 }));
        assert_eq!(both[0].exact_match, both[1].exact_match);
        // One more right for "b" alone: a win, so the count has a direction.
        let mut changed = results.clone();
        changed[3].outcomes.insert("b".to_owned(), outcome(true));
        let table = render_table(&Report {
            seed: 1,
            count: 4,
            hole_lines: 1,
            block_max_lines: None,
            whole_line: false,
            sources: Vec::new(),
            model: None,
            scores: scores(&["a", "b"], &changed),
            cases: changed,
        });
        assert!(table.contains("+2/-1"), "{table}");
    }

    #[test]
    fn scores_count_errors_as_misses_and_the_table_names_every_variant() {
        let case = |id: usize, language: &'static str| Case {
            id,
            path: format!("p{id}.py"),
            language,
            line: 1,
            expected: "x = 1".into(),
            expected_block: None,
            prompt: String::new(),
            suffix: String::new(),
        };
        let outcome = |exact: bool, tokens: u64| Outcome {
            text: if exact { "x = 1".into() } else { "y".into() },
            exact,
            similarity: if exact { 1.0 } else { 0.0 },
            prompt_tokens: tokens,
            cached_tokens: Some(0),
            ms: 10.0,
            chunks: 1,
            block: None,
            error: None,
        };
        let results = vec![
            CaseResult {
                case: case(0, "python"),
                outcomes: BTreeMap::from([("a".to_owned(), outcome(true, 100))]),
            },
            CaseResult {
                case: case(1, "rust"),
                outcomes: BTreeMap::from([(
                    "a".to_owned(),
                    failed(&anyhow::anyhow!("backend down")),
                )]),
            },
        ];
        let score = score("a", &results);
        assert_eq!((score.cases, score.errors), (2, 1));
        assert_eq!(score.exact_match, 0.5);
        // Tokens and time average over the cases that ran.
        assert_eq!(score.mean_prompt_tokens, 100.0);
        assert_eq!(score.by_language["python"].exact_match, 1.0);
        assert_eq!(score.by_language["rust"].exact_match, 0.0);
        let report = Report {
            seed: 1,
            count: 2,
            hole_lines: 1,
            block_max_lines: None,
            whole_line: false,
            sources: Vec::new(),
            model: None,
            scores: vec![score],
            cases: results,
        };
        let table = render_table(&report);
        assert!(table.starts_with("2 cases (seed 1), model"), "{table}");
        assert!(table.contains("\na "), "{table}");
        assert!(table.contains("0.500"), "{table}");
        let wide = Report {
            hole_lines: 4,
            ..report
        };
        let table = render_table(&wide);
        assert!(
            table.starts_with("2 cases (seed 1, holes of 4 lines)"),
            "{table}"
        );
        assert!(!table.contains("whole answers"), "{table}");
        let table = render_table(&Report {
            hole_lines: 1,
            whole_line: true,
            ..wide.clone()
        });
        assert!(
            table.starts_with("2 cases (seed 1, whole lines, the cursor at column 0)"),
            "{table}"
        );

        // Block holes: one answer stops a line short, the other case failed.
        let mut results = wide.cases;
        for result in &mut results {
            result.case.expected_block = Some("x = 1\ny = 2".into());
        }
        if let Some(outcome) = results[0].outcomes.get_mut("a") {
            outcome.block = Some(BlockOutcome::new("x = 1", "x = 1\ny = 2", "eos"));
        }
        let block = super::score("a", &results).block.unwrap();
        assert_eq!((block.exact_match, block.stopped_right), (0.0, 0.0));
        assert_eq!((block.too_short, block.too_long), (0.5, 0.0));
        assert_eq!((block.lines_right, block.mean_expected_lines), (0.25, 2.0));
        assert_eq!(block.stops, BTreeMap::from([("eos".to_owned(), 1)]));
        let report = Report {
            hole_lines: 1,
            block_max_lines: Some(12),
            scores: vec![super::score("a", &results)],
            cases: results,
            ..wide
        };
        let table = render_table(&report);
        assert!(
            table
                .starts_with("2 cases (seed 1, holes to the end of their block, at most 12 lines)"),
            "{table}"
        );
        assert!(
            table.contains("whole answers (holes of 2.0 lines on average)"),
            "{table}"
        );
        assert!(table.contains("0.250"), "{table}");
        assert!(
            table.contains("a                      ended by: eos 1\n"),
            "{table}"
        );
    }
}

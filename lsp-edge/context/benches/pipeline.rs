//! Criterion benchmarks of the context pipeline on 8 KB Python and Rust files: the
//! whole pipeline from text (parse, chunk, dedup, rank, assemble), cold and for a
//! repeated file with a one-character edit; the pipeline on a kept document; the
//! full parse; and the incremental re-parse after a one-character edit.

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};

use cerebrum_context::{ContextEngine, ContextOptions, EngineConfig, Language};

const PYTHON: &str = include_str!("data/inventory.py");
const RUST: &str = include_str!("data/rate_limiter.rs");
const OLD_BENCHMARK: &str = include_str!("../tests/data/old_benchmark.py");

struct Case {
    name: &'static str,
    language: Language,
    text: &'static str,
    /// The cursor goes right after the first occurrence of this.
    cursor_after: &'static str,
}

const CASES: [Case; 2] = [
    Case {
        name: "python_8k",
        language: Language::Python,
        text: PYTHON,
        cursor_after: "wanted = int(self.daily_rate(",
    },
    Case {
        name: "rust_8k",
        language: Language::Rust,
        text: RUST,
        cursor_after: "let quota = state.quotas.get(",
    },
];

fn pipeline(c: &mut Criterion) {
    let engine = ContextEngine::new(EngineConfig::default()).expect("built-in queries compile");
    let cold = ContextOptions::default();
    // With a path the engine keeps the document and re-parses incrementally.
    let kept = ContextOptions {
        path: Some("bench".into()),
        ..ContextOptions::default()
    };
    for case in &CASES {
        let cursor =
            case.text.find(case.cursor_after).expect("cursor marker") + case.cursor_after.len();
        let mut group = c.benchmark_group(case.name);
        group.bench_function("whole_pipeline_cold", |b| {
            b.iter(|| engine.context_for_text(case.language, case.text, cursor, &cold))
        });
        // A request per keystroke: the same file with one character more or less.
        let typed = format!("{}x{}", &case.text[..cursor], &case.text[cursor..]);
        let texts = [case.text, typed.as_str()];
        let mut turn = 0;
        group.bench_function("whole_pipeline_one_char_edit", |b| {
            b.iter(|| {
                turn ^= 1;
                engine.context_for_text(case.language, texts[turn], cursor + turn, &kept)
            })
        });
        let doc = engine.parse(case.language, case.text.to_owned());
        group.bench_function("context_on_kept_document", |b| {
            b.iter(|| engine.context(&doc, cursor, &kept))
        });
        group.bench_function("full_parse", |b| {
            b.iter(|| engine.parse(case.language, case.text.to_owned()))
        });
        group.bench_function("incremental_reparse_one_char", |b| {
            b.iter_batched_ref(
                || doc.clone(),
                |doc| doc.apply_edit(&engine, cursor..cursor, "x"),
                BatchSize::SmallInput,
            )
        });
        group.finish();
    }
    let mut group = c.benchmark_group("old_benchmark_case");
    group.bench_function("instruction_prompt_from_text", |b| {
        b.iter(|| engine.context_for_text(Language::Python, OLD_BENCHMARK, 0, &cold))
    });
    group.finish();
}

criterion_group!(benches, pipeline);
criterion_main!(benches);

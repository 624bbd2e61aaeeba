//! The old system's benchmark case: the same synchronous code five times over,
//! with a refactoring instruction on top (about 8,300 characters).

use cerebrum_context::{ContextEngine, ContextOptions, EngineConfig, Language, Mode};

const CASE: &str = include_str!("data/old_benchmark.py");
const INSTRUCTION: &str = "Refactor to use async/await";

fn run(config: EngineConfig) -> cerebrum_context::Context {
    let engine = ContextEngine::new(config).unwrap();
    let opts = ContextOptions {
        path: Some("old_benchmark.py".into()),
        ..ContextOptions::default()
    };
    engine.context_for_text(Language::Python, CASE, 0, &opts)
}

#[test]
fn the_case_is_the_old_systems_size() {
    let chars = CASE.chars().count();
    assert!((8_000..8_600).contains(&chars), "{chars}");
    assert!(CASE.starts_with(&format!("# INSTRUCTION: {INSTRUCTION}\n")));
}

#[test]
fn duplicates_collapse_and_the_instruction_comes_first() {
    let ctx = run(EngineConfig::default());
    let prompt = ctx.prompt.as_deref().unwrap();
    assert_eq!(ctx.mode, Mode::Instruction);
    assert_eq!(ctx.instruction.as_deref(), Some(INSTRUCTION));
    assert!(prompt.starts_with(&format!(
        "# INSTRUCTION: {INSTRUCTION}\n\nHere is the code:\n```python\n"
    )));
    assert!(prompt.ends_with("Refactored code:\n```python\n"));
    // Five copies of each chunk, one of each left.
    assert_eq!(ctx.stats.chunks_total, 5 * ctx.stats.chunks_unique);
    assert_eq!(ctx.stats.chunks_selected, 3);
    assert!(ctx.stats.reduction_percent >= 62.0, "{:?}", ctx.stats);
    // The extracted instruction line is not part of the code.
    assert_eq!(prompt.matches(INSTRUCTION).count(), 1);
}

#[test]
fn with_room_for_every_chunk_each_appears_once() {
    let ctx = run(EngineConfig {
        instruction_max_chunks: 100,
        budget_chars: 100_000,
        ..EngineConfig::default()
    });
    let prompt = ctx.prompt.as_deref().unwrap();
    assert_eq!(ctx.stats.chunks_selected, ctx.stats.chunks_unique);
    for def in [
        "fetch_json",
        "fetch_user",
        "fetch_orders",
        "save_report",
        "notify",
        "build_report",
    ] {
        assert_eq!(prompt.matches(&format!("def {def}(")).count(), 1, "{def}");
    }
    assert_eq!(prompt.matches("import requests").count(), 1);
    assert!(ctx.stats.reduction_percent >= 62.0, "{:?}", ctx.stats);
}

//! Scheduling decisions of the engine thread, as pure functions: which sequence a new
//! request takes, which running job gives its sequence up, in what order the running
//! jobs are served, and how much of a prompt goes into one micro-batch.
//!
//! The engine keeps one cached prompt per sequence. A request goes to the free
//! sequence whose cache shares the longest prefix with its prompt, so one editor's
//! document stays warm while another editor types elsewhere; with no prefix in common
//! anywhere it takes the sequence used least recently.

use super::Priority;

/// A sequence as the scheduler sees it.
#[derive(Debug, Clone, Copy)]
pub struct Candidate<'a, T> {
    /// The tokens its cache holds.
    pub cached: &'a [T],
    /// When it last finished a job (a counter: larger is more recent).
    pub last_used: u64,
}

/// Tokens `a` and `b` share at their start.
pub fn common_prefix<T: Eq>(a: &[T], b: &[T]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

/// The index of the free sequence for `prompt`: the longest common prefix with its
/// cache, then the one used least recently (its cache is the least likely to be asked
/// for again). `None` when `free` is empty.
pub fn pick_sequence<T: Eq>(free: &[(usize, Candidate<'_, T>)], prompt: &[T]) -> Option<usize> {
    free.iter()
        .max_by(|(_, a), (_, b)| {
            common_prefix(a.cached, prompt)
                .cmp(&common_prefix(b.cached, prompt))
                // Older is better: reverse the recency order.
                .then(b.last_used.cmp(&a.last_used))
        })
        .map(|(index, _)| *index)
}

/// A running job as the scheduler sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Running {
    pub priority: Priority,
    /// Order of arrival: smaller came first.
    pub arrival: u64,
    /// Generating tokens (as opposed to evaluating its prompt).
    pub generating: bool,
}

/// The order in which running jobs are put into the batch: most urgent first, then
/// first come. Returns indices into `running`.
pub fn service_order(running: &[Running]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..running.len()).collect();
    order.sort_by(|&a, &b| {
        running[b]
            .priority
            .cmp(&running[a].priority)
            .then(running[a].arrival.cmp(&running[b].arrival))
    });
    order
}

/// Whether a job waits this step: background work yields at once to anything more
/// urgent that runs.
pub fn paused(job: &Running, running: &[Running]) -> bool {
    job.priority == Priority::Background && running.iter().any(|r| r.priority > job.priority)
}

/// The running job to stop so that a waiting one of `priority` gets a sequence: the
/// latest background job, if `priority` is above background. Indices into `running`.
pub fn preempt(priority: Priority, running: &[Running]) -> Option<usize> {
    if priority == Priority::Background {
        return None;
    }
    running
        .iter()
        .enumerate()
        .filter(|(_, r)| r.priority == Priority::Background)
        .max_by_key(|(_, r)| r.arrival)
        .map(|(i, _)| i)
}

/// Prompt tokens of a job of `priority` to put into this step's batch, out of
/// `remaining`: as many as the batch has `room` for, but only `micro_batch` while a
/// more urgent job is generating, so that its next token is never held up by more
/// than a micro-batch of someone else's prompt.
pub fn prompt_chunk(
    priority: Priority,
    remaining: usize,
    room: usize,
    micro_batch: usize,
    running: &[Running],
) -> usize {
    let urgent_generating = running
        .iter()
        .any(|r| r.generating && r.priority > priority);
    let limit = if urgent_generating {
        micro_batch.min(room)
    } else {
        room
    };
    remaining.min(limit)
}

#[cfg(test)]
mod tests {
    use super::*;
    use Priority::*;

    fn running(priority: Priority, arrival: u64, generating: bool) -> Running {
        Running {
            priority,
            arrival,
            generating,
        }
    }

    #[test]
    fn a_request_goes_to_the_sequence_that_holds_its_document() {
        let editor_a = "fn a() { let x = 1; }".as_bytes();
        let editor_b = "struct B { field: u32 }".as_bytes();
        let free = [
            (
                0,
                Candidate {
                    cached: editor_a,
                    last_used: 1,
                },
            ),
            (
                1,
                Candidate {
                    cached: editor_b,
                    last_used: 2,
                },
            ),
        ];
        assert_eq!(pick_sequence(&free, b"struct B { field: u64 }"), Some(1));
        assert_eq!(pick_sequence(&free, b"fn a() { let x = 2; }"), Some(0));
    }

    #[test]
    fn with_nothing_in_common_the_least_recently_used_sequence_is_taken() {
        let free = [
            (
                3,
                Candidate {
                    cached: b"recent".as_slice(),
                    last_used: 9,
                },
            ),
            (
                5,
                Candidate {
                    cached: b"old".as_slice(),
                    last_used: 4,
                },
            ),
        ];
        assert_eq!(pick_sequence(&free, b"unrelated"), Some(5));
        assert_eq!(pick_sequence::<u8>(&[], b"x"), None);
    }

    #[test]
    fn the_most_urgent_job_is_served_first_then_the_oldest() {
        let jobs = [
            running(Instruction, 1, true),
            running(Interactive, 3, false),
            running(Background, 0, true),
            running(Interactive, 2, true),
        ];
        assert_eq!(service_order(&jobs), [3, 1, 0, 2]);
    }

    #[test]
    fn background_work_yields_to_anything_more_urgent() {
        let background = running(Background, 0, true);
        assert!(!paused(&background, &[background]));
        let jobs = [background, running(Instruction, 1, false)];
        assert!(paused(&background, &jobs));
        assert!(!paused(&jobs[1], &jobs));
    }

    #[test]
    fn only_background_work_gives_its_sequence_up() {
        let jobs = [
            running(Background, 0, true),
            running(Instruction, 1, true),
            running(Background, 2, false),
        ];
        assert_eq!(preempt(Interactive, &jobs), Some(2));
        assert_eq!(preempt(Background, &jobs), None);
        assert_eq!(preempt(Interactive, &jobs[1..2]), None);
    }

    #[test]
    fn requests_without_a_priority_get_one_from_their_shape() {
        use crate::engine::prompt::{ChatRequest, PromptParts};
        let plain = PromptParts {
            prompt: "def f():".into(),
            ..PromptParts::default()
        };
        let fim = PromptParts {
            suffix: Some("\n".into()),
            ..plain.clone()
        };
        let chat = PromptParts {
            chat: Some(ChatRequest::default()),
            ..plain.clone()
        };
        assert_eq!(Priority::default_for(&plain, 128), Interactive);
        assert_eq!(Priority::default_for(&fim, 1024), Interactive);
        assert_eq!(Priority::default_for(&plain, 1024), Instruction);
        assert_eq!(Priority::default_for(&chat, 16), Instruction);
    }

    #[test]
    fn a_prompt_is_cut_into_micro_batches_only_while_more_urgent_work_generates() {
        let refactor = running(Instruction, 0, true);
        // A completion arriving during a refactor takes the whole batch.
        assert_eq!(prompt_chunk(Interactive, 1500, 511, 64, &[refactor]), 511);
        // A refactor arriving during a completion takes a micro-batch at a time.
        let completion = running(Interactive, 0, true);
        assert_eq!(prompt_chunk(Instruction, 1500, 511, 64, &[completion]), 64);
        assert_eq!(prompt_chunk(Instruction, 20, 511, 64, &[completion]), 20);
        assert_eq!(prompt_chunk(Instruction, 1500, 30, 64, &[completion]), 30);
    }
}

//! The stack classification runs on: deep enough for the deepest parse tree
//! pg_query hands over, so that long expressions classify instead of being
//! refused, and no text from the wire overflows a thread's stack.
//!
//! # The bound
//!
//! Generated reports, long `||` concatenations and `+` chains parse into
//! trees as deep as they are long (`a || b || c` is `(a || b) || c`).
//! PostgreSQL itself (max_stack_depth 2MB, its default) accepts, for
//! example, a `||` chain of 4,092 terms, 4,091 nested function calls, 9,993
//! nested parentheses (where its bison parser says "memory exhausted") and
//! 2,111 nested scalar sub-queries.
//!
//! libpg_query bounds what it hands to Rust, whatever the text: its bison
//! parser stops at 10,000 states, its C code checks its own stack (at most
//! 2 MiB, PostgreSQL's `check_stack_depth`), and it refuses to serialise a
//! tree more than 10,000 protobuf messages deep (`PG_QUERY_PROTOBUF_MAX_DEPTH`,
//! "parse tree is nested too deeply to serialize to protobuf"). That last
//! limit is the one met first by chains: 4,996 `||` terms, 4,995 nested calls
//! or `NOT`s, 1,665 nested scalar sub-queries. So PostgreSQL's own limit is
//! reached before it for chains and calls, and after it for `NOT` chains
//! (PostgreSQL: 7,703) and nested scalar sub-queries; those fail closed.
//!
//! Three things then recurse once per level of that tree, in Rust:
//! prost's decoding (its own limit of 100 levels, about 50 expression
//! levels, is lifted by its `no-recursion-limit` feature: libpg_query's
//! limit is the one that counts), the classifier's walk, and dropping the
//! tree. They run one after another, decoding needs the most, and a level
//! costs most where every other message is a `Node` (nested calls, `NOT`,
//! `ARRAY[]`, `ROW()`, `greatest()`, aggregates with `FILTER` or `OVER`;
//! some twenty shapes were tried). Measured on x86_64, the smallest thread
//! stack on which the whole classification of the deepest such tree
//! (4,995 nested calls) succeeds, and the walk's share per level:
//!
//! | | release (thin LTO) | debug (this workspace's dev profile) |
//! |---|---|---|
//! | deepest tree, whole classification | 68 MiB (6.8 KiB a level) | 181 MiB (18 KiB a level) |
//! | the walk alone, per level | under 0.5 KiB | 4 KiB |
//!
//! [`CLASSIFY_STACK_BYTES`] is more than three times the release figure and
//! more than twice the debug one. A test classifies the deepest trees on
//! half of it, so a change that makes a level cost more fails there first
//! (in whichever profile the tests run); and the walk checks the stack it
//! has left ([`running_low`]), so it fails closed rather than overflowing.
//!
//! # Where
//!
//! Classification runs on the calling thread when that has
//! [`CLASSIFY_STACK_BYTES`] left: the proxy builds its runtime's threads
//! with [`THREAD_STACK_BYTES`] for that. Such a stack is only reserved
//! address space; a page of memory is used when a statement that deep
//! reaches it. Any other caller (tests, a small thread) gets a thread of
//! that size for the one classification. That thread costs about 100 µs
//! (libpg_query sets itself up on every new thread), ten times a short
//! statement's parse, which is why the runtime's threads are made big
//! rather than every classification moved to a thread of its own.
//!
//! `stacker::grow`, which runs a closure on a stack segment of its own, does
//! not fit: libpg_query sizes its stack check from the thread's own stack
//! bounds, which such a segment is outside of, so its limit would depend on
//! where the segment happens to be mapped.

use super::ClassifyError;

/// The stack a classification needs: the deepest tree's decode, walk or
/// drop, with the margin above (which also covers libpg_query's 2 MiB, used
/// before them). Unoptimised frames are larger, hence the debug figure.
pub const CLASSIFY_STACK_BYTES: usize = if cfg!(debug_assertions) {
    512 << 20
} else {
    256 << 20
};

/// The stack size for the proxy runtime's threads: what a classification
/// needs, plus what the async call chain above it uses.
pub const THREAD_STACK_BYTES: usize = CLASSIFY_STACK_BYTES + (8 << 20);

/// The walk fails closed when less stack than this is left.
const WALK_RESERVE_BYTES: usize = 256 << 10;

/// Runs `work` where [`CLASSIFY_STACK_BYTES`] of stack are free: here when
/// the current thread has that much left, on a thread of its own
/// otherwise. A panic in `work` is resumed in the caller.
pub(crate) fn on_classifier_stack<T: Send>(work: impl FnOnce() -> T + Send) -> Result<T, ClassifyError> {
    if stacker::remaining_stack().is_some_and(|left| left >= CLASSIFY_STACK_BYTES) {
        return Ok(work());
    }
    std::thread::scope(|scope| {
        let thread = std::thread::Builder::new()
            .name("gatehouse-classify".to_owned())
            .stack_size(CLASSIFY_STACK_BYTES)
            .spawn_scoped(scope, work)
            .map_err(|e| {
                ClassifyError::Refused(format!(
                    "Gatehouse could not start a thread to classify this: {e}"
                ))
            })?;
        Ok(thread
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic)))
    })
}

/// Whether the current thread has too little stack left to walk one more
/// level of a tree.
pub(crate) fn running_low() -> bool {
    stacker::remaining_stack().is_some_and(|left| left < WALK_RESERVE_BYTES)
}

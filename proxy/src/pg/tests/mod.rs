//! Tests across the whole codec: property tests that no input panics a
//! decoder and that framing does not depend on how bytes arrive, and a
//! replay of the fuzzing corpus kept in the repository.

mod corpus;
mod properties;
mod real_session;

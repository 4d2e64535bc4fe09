//! Replays the fuzzing corpus committed under `proxy/fuzz/corpus`, so every
//! input the fuzzer ever found interesting is checked by `cargo test`.

use std::fs;
use std::path::PathBuf;

use crate::pg::fuzz;

fn inputs(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut inputs: Vec<_> = fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| {
            let path = entry.unwrap().path();
            let data = fs::read(&path).unwrap();
            (path, data)
        })
        .collect();
    inputs.sort();
    assert!(!inputs.is_empty(), "no corpus in {}", dir.display());
    inputs
}

#[test]
fn frame_decoder_corpus() {
    for (path, data) in inputs("frame_decoder") {
        let result = std::panic::catch_unwind(|| fuzz::frame_decoder(&data));
        assert!(result.is_ok(), "{} panics", path.display());
    }
}

#[test]
fn startup_packet_corpus() {
    for (path, data) in inputs("startup_packet") {
        let result = std::panic::catch_unwind(|| fuzz::startup_packet(&data));
        assert!(result.is_ok(), "{} panics", path.display());
    }
}

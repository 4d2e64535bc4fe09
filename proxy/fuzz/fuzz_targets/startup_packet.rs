//! Any bytes as a startup-phase packet, whole and as a split stream; see
//! `gatehouse_proxy::pg::fuzz::startup_packet`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| gatehouse_proxy::pg::fuzz::startup_packet(data));

//! Any byte stream, in either direction, through the frame codec and every
//! message decoder; see `gatehouse_proxy::pg::fuzz::frame_decoder`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| gatehouse_proxy::pg::fuzz::frame_decoder(data));

//! The bodies of the cargo-fuzz targets in `proxy/fuzz`. They live here so
//! the unit tests replay the corpus committed there through exactly the
//! code the fuzzer runs, on stable Rust and in CI.
//!
//! Beyond "never panics", they check that decoding is exact: a message that
//! decodes re-encodes to the very bytes it came from. A decoder that skipped
//! or invented a byte would read a message differently than the peer does,
//! and the proxy's decisions would be about a message nobody sent.

use bytes::{Bytes, BytesMut};
use tokio_util::codec::Decoder;

use super::FrameCodec;
use super::frame::Frame;
use super::limits::FrameLimits;
use super::messages::{
    BackendMessage, FrontendMessage, Message, PasswordMessage, SaslInitialResponse, SaslResponse,
};
use super::startup::{StartupCodec, StartupPacket};

/// The large-message limit while fuzzing: small, so that the limit checks
/// are reached by inputs of a size a fuzzer produces.
const FUZZ_MAX_MESSAGE_LEN: u32 = 1 << 16;

/// Target `frame_decoder`. The first byte picks the direction (low bit) and
/// the size of the chunks the rest arrives in, so partial reads are covered.
pub fn frame_decoder(data: &[u8]) {
    let Some((&selector, stream)) = data.split_first() else {
        return;
    };
    let frontend = selector & 1 == 0;
    let limits = if frontend {
        FrameLimits::frontend(FUZZ_MAX_MESSAGE_LEN)
    } else {
        FrameLimits::backend(FUZZ_MAX_MESSAGE_LEN)
    };
    let mut codec = FrameCodec::new(limits);
    let chunk = usize::from(selector >> 1) + 1;
    let mut buf = BytesMut::new();
    for piece in stream.chunks(chunk) {
        buf.extend_from_slice(piece);
        loop {
            match codec.decode(&mut buf) {
                Ok(Some(frame)) => check_frame(&frame, frontend),
                Ok(None) => break,
                Err(_) => return,
            }
        }
    }
    if let Ok(Some(frame)) = codec.decode_eof(&mut buf) {
        check_frame(&frame, frontend);
    }
}

fn check_frame(frame: &Frame, frontend: bool) {
    let header_len = frame.raw().len() - frame.payload().len();
    assert_eq!(header_len, 5, "a frame is its header and payload");
    assert!(
        Frame::from_raw(frame.raw().clone()).is_ok(),
        "a decoded frame is well formed"
    );
    let mut out = BytesMut::new();
    if frontend {
        if let Ok(message) = FrontendMessage::decode(frame) {
            assert!(message.encode(&mut out).is_ok(), "a decoded message re-encodes");
            assert_eq!(&out[..], frame.raw().as_ref(), "and to the same bytes");
        }
        if frame.tag() == PasswordMessage::TAG {
            round_trip::<PasswordMessage>(frame);
            round_trip::<SaslInitialResponse>(frame);
            round_trip::<SaslResponse>(frame);
        }
    } else if let Ok(message) = BackendMessage::decode(frame) {
        assert!(message.encode(&mut out).is_ok(), "a decoded message re-encodes");
        assert_eq!(&out[..], frame.raw().as_ref(), "and to the same bytes");
    }
}

fn round_trip<M: Message>(frame: &Frame) {
    if let Ok(message) = M::decode(frame) {
        let mut out = BytesMut::new();
        assert!(
            message.encode(&mut out).is_ok(),
            "a decoded {} re-encodes",
            M::NAME
        );
        assert_eq!(
            &out[..],
            frame.raw().as_ref(),
            "a decoded {} re-encodes to the same bytes",
            M::NAME
        );
    }
}

/// Target `startup_packet`: the input as one packet, then as a stream of
/// packets arriving in chunks (of a size the input's length picks, so a
/// captured packet is a seed for both).
pub fn startup_packet(data: &[u8]) {
    if let Ok(packet) = StartupPacket::decode(Bytes::copy_from_slice(data)) {
        let mut out = BytesMut::new();
        assert!(packet.encode(&mut out).is_ok(), "a decoded packet re-encodes");
        assert_eq!(&out[..], data, "and to the same bytes");
    }
    let chunk = data.len() % 7 + 1;
    let mut buf = BytesMut::new();
    for piece in data.chunks(chunk) {
        buf.extend_from_slice(piece);
        loop {
            match StartupCodec.decode(&mut buf) {
                Ok(Some(_)) => {}
                Ok(None) => break,
                Err(_) => return,
            }
        }
    }
    let _ = StartupCodec.decode_eof(&mut buf);
}

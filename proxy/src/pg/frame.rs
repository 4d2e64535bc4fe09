//! A tagged protocol frame and the codec that cuts a byte stream into them.

use std::fmt;

use bytes::{BufMut, Bytes, BytesMut};
use tokio_util::codec::{Decoder, Encoder};

use super::error::{ProtocolError, Result};
use super::limits::{DEFAULT_MAX_BACKEND_MESSAGE_LEN, DEFAULT_MAX_FRONTEND_MESSAGE_LEN, FrameLimits};
use super::tag;

/// The type byte and the length word.
pub const HEADER_LEN: usize = 5;

/// How much more buffer the decoder asks for at once while a frame is
/// incomplete. Reserving the whole announced length up front would let a
/// peer that announces 64 MiB and sends nothing pin 64 MiB of memory; growing
/// as bytes arrive keeps memory in line with what was actually received.
const READ_AHEAD: usize = 64 << 10;

/// One message after the startup packet: a type byte, a length word and the
/// payload, kept as the exact bytes that were read. Forwarding writes
/// [`Frame::raw`] as it is, so the proxy never re-encodes what passes
/// through; [`tag`](Frame::tag) and [`payload`](Frame::payload) are views.
///
/// `Debug` shows the tag and length only: payloads hold statements,
/// passwords and rows, which do not belong in logs.
#[derive(Clone, PartialEq, Eq)]
pub struct Frame {
    /// Header and payload; always at least [`HEADER_LEN`] bytes with a
    /// length word that matches.
    raw: Bytes,
}

impl Frame {
    /// Checks that `raw` is exactly one frame (its length word matches its
    /// size) and wraps it without copying.
    pub fn from_raw(raw: Bytes) -> Result<Self> {
        let (tag, len) = header(&raw).ok_or(ProtocolError::Truncated {
            message: "frame header",
        })?;
        let body = usize::try_from(len)
            .ok()
            .filter(|&n| n >= 4)
            .ok_or(ProtocolError::InvalidLength { tag, len })?;
        match (raw.len() - 1).cmp(&body) {
            std::cmp::Ordering::Less => Err(ProtocolError::Truncated { message: "frame" }),
            std::cmp::Ordering::Greater => Err(ProtocolError::TrailingBytes {
                message: "frame",
                extra: raw.len() - 1 - body,
            }),
            std::cmp::Ordering::Equal => Ok(Self { raw }),
        }
    }

    /// Builds a frame from a type byte and a payload.
    pub fn new(tag: u8, payload: &[u8]) -> Result<Self> {
        let mut raw = BytesMut::with_capacity(HEADER_LEN + payload.len());
        super::wire::put_message(&mut raw, Some(tag), "frame", |dst| {
            dst.put_slice(payload);
            Ok(())
        })?;
        Ok(Self { raw: raw.freeze() })
    }

    /// Wraps bytes that an encoder of this module has just written.
    pub(crate) fn from_encoded(raw: Bytes) -> Self {
        Self { raw }
    }

    /// The message type byte.
    pub fn tag(&self) -> u8 {
        self.raw.first().copied().unwrap_or_default()
    }

    /// The payload: everything after the length word.
    pub fn payload(&self) -> &[u8] {
        self.raw.get(HEADER_LEN..).unwrap_or_default()
    }

    /// The payload as a view that shares the frame's buffer, for decoders
    /// that hand out parts of it (DataRow cells, Bind values) without copying.
    pub fn payload_bytes(&self) -> Bytes {
        self.raw.slice(HEADER_LEN.min(self.raw.len())..)
    }

    /// The whole frame, header included, exactly as it was read: what the
    /// relay forwards.
    pub fn raw(&self) -> &Bytes {
        &self.raw
    }

    /// The whole frame, consumed.
    pub fn into_raw(self) -> Bytes {
        self.raw
    }

    /// Size of the whole frame on the wire, header included.
    pub fn wire_len(&self) -> usize {
        self.raw.len()
    }
}

impl fmt::Debug for Frame {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Frame")
            .field("tag", &tag::display(self.tag()))
            .field("len", &self.wire_len())
            .finish()
    }
}

impl AsRef<[u8]> for Frame {
    fn as_ref(&self) -> &[u8] {
        &self.raw
    }
}

/// The type byte and length word at the start of `buf`, if it holds them.
fn header(buf: &[u8]) -> Option<(u8, i32)> {
    match buf {
        [tag, a, b, c, d, ..] => Some((*tag, i32::from_be_bytes([*a, *b, *c, *d]))),
        _ => None,
    }
}

/// Cuts a byte stream into [`Frame`]s, refusing any frame whose type is
/// unknown in its direction or whose length is out of bounds for its type,
/// before waiting for its payload.
///
/// Use it with `tokio_util::codec::FramedRead`, or call
/// [`Decoder::decode`] on a buffer the session fills itself. Encoding a
/// frame writes its raw bytes unchanged.
#[derive(Debug, Clone)]
pub struct FrameCodec {
    limits: FrameLimits,
}

impl FrameCodec {
    /// A codec with the given limits.
    pub fn new(limits: FrameLimits) -> Self {
        Self { limits }
    }

    /// A codec for what clients send, with the default limits.
    pub fn frontend() -> Self {
        Self::new(FrameLimits::frontend(DEFAULT_MAX_FRONTEND_MESSAGE_LEN))
    }

    /// A codec for what servers send, with the default limits.
    pub fn backend() -> Self {
        Self::new(FrameLimits::backend(DEFAULT_MAX_BACKEND_MESSAGE_LEN))
    }

    /// The limits this codec enforces.
    pub fn limits(&self) -> &FrameLimits {
        &self.limits
    }
}

impl Decoder for FrameCodec {
    type Item = Frame;
    type Error = ProtocolError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Frame>> {
        let Some((tag, len)) = header(src) else {
            return Ok(None);
        };
        let max = self
            .limits
            .max_len(tag)
            .ok_or(ProtocolError::UnknownMessageType {
                direction: self.limits.direction(),
                tag,
            })?;
        let len = u32::try_from(len)
            .ok()
            .filter(|&n| n >= 4)
            .ok_or(ProtocolError::InvalidLength { tag, len })?;
        if len > max {
            return Err(ProtocolError::MessageTooLarge { tag, len, max });
        }
        // `len` fits an i32, so this neither overflows nor truncates.
        let total = len as usize + 1;
        if src.len() < total {
            src.reserve((total - src.len()).min(READ_AHEAD));
            return Ok(None);
        }
        Ok(Some(Frame {
            raw: src.split_to(total).freeze(),
        }))
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<Frame>> {
        match self.decode(src)? {
            Some(frame) => Ok(Some(frame)),
            None if src.is_empty() => Ok(None),
            None => Err(ProtocolError::UnexpectedEof),
        }
    }
}

impl Encoder<Frame> for FrameCodec {
    type Error = ProtocolError;

    fn encode(&mut self, frame: Frame, dst: &mut BytesMut) -> Result<()> {
        dst.extend_from_slice(&frame.raw);
        Ok(())
    }
}

impl Encoder<&Frame> for FrameCodec {
    type Error = ProtocolError;

    fn encode(&mut self, frame: &Frame, dst: &mut BytesMut) -> Result<()> {
        dst.extend_from_slice(&frame.raw);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pg::limits::Direction;

    fn decode_all(codec: &mut FrameCodec, bytes: &[u8]) -> Result<Vec<Frame>> {
        let mut buf = BytesMut::from(bytes);
        let mut out = Vec::new();
        while let Some(frame) = codec.decode(&mut buf)? {
            out.push(frame);
        }
        Ok(out)
    }

    #[test]
    fn decodes_a_query_and_keeps_its_bytes() {
        let wire = b"Q\x00\x00\x00\x0dSELECT 1\x00S\x00\x00\x00\x04";
        let frames = decode_all(&mut FrameCodec::frontend(), wire).unwrap();
        assert_eq!(frames.len(), 2);
        assert_eq!(frames[0].tag(), b'Q');
        assert_eq!(frames[0].payload(), b"SELECT 1\0");
        assert_eq!(frames[0].raw().as_ref(), &wire[..14]);
        assert_eq!(frames[1].tag(), b'S');
        assert_eq!(frames[1].payload(), b"");
    }

    #[test]
    fn waits_for_a_whole_header_and_payload() {
        let mut codec = FrameCodec::frontend();
        let wire = b"Q\x00\x00\x00\x0dSELECT 1\x00";
        for cut in 0..wire.len() {
            let mut buf = BytesMut::from(&wire[..cut]);
            assert!(codec.decode(&mut buf).unwrap().is_none(), "cut at {cut}");
            assert_eq!(buf.len(), cut, "an incomplete frame is left in the buffer");
        }
    }

    #[test]
    fn lengths_below_four_are_refused() {
        for len in [-1i32, i32::MIN, 0, 1, 2, 3] {
            let mut wire = vec![b'Q'];
            wire.extend_from_slice(&len.to_be_bytes());
            let err = decode_all(&mut FrameCodec::frontend(), &wire).unwrap_err();
            assert!(
                matches!(err, ProtocolError::InvalidLength { tag: b'Q', len: l } if l == len),
                "{err}"
            );
            assert!(err.is_fatal());
        }
    }

    #[test]
    fn length_four_is_an_empty_payload() {
        let frames = decode_all(&mut FrameCodec::frontend(), b"H\x00\x00\x00\x04").unwrap();
        assert_eq!(frames[0].payload(), b"");
    }

    #[test]
    fn fixed_size_messages_cannot_be_longer() {
        for tag in [b'S', b'H', b'X', b'c'] {
            let wire = [tag, 0, 0, 0, 5, 0];
            let err = decode_all(&mut FrameCodec::frontend(), &wire).unwrap_err();
            assert!(
                matches!(err, ProtocolError::MessageTooLarge { len: 5, max: 4, .. }),
                "{err}"
            );
        }
        let err = decode_all(&mut FrameCodec::backend(), b"Z\x00\x00\x00\x06II").unwrap_err();
        assert!(matches!(
            err,
            ProtocolError::MessageTooLarge {
                tag: b'Z',
                len: 6,
                max: 5
            }
        ));
    }

    #[test]
    fn huge_lengths_are_refused_before_any_payload_arrives() {
        let mut codec = FrameCodec::frontend();
        let mut buf = BytesMut::from(&b"Q\x7f\xff\xff\xff"[..]);
        let err = codec.decode(&mut buf).unwrap_err();
        assert!(matches!(
            err,
            ProtocolError::MessageTooLarge {
                tag: b'Q',
                len: 0x7fff_ffff,
                ..
            }
        ));
        assert_eq!(err.sqlstate(), "08P01");

        let mut buf = BytesMut::from(&b"E\x00\x01\x00\x00"[..]);
        let err = codec.decode(&mut buf).unwrap_err();
        assert!(matches!(
            err,
            ProtocolError::MessageTooLarge {
                tag: b'E',
                max: 10_000,
                ..
            }
        ));
    }

    #[test]
    fn an_announced_length_does_not_reserve_memory_up_front() {
        let mut codec = FrameCodec::frontend();
        let mut buf = BytesMut::from(&b"Q\x03\x00\x00\x00"[..]);
        assert!(codec.decode(&mut buf).unwrap().is_none());
        assert!(
            buf.capacity() <= READ_AHEAD + HEADER_LEN,
            "capacity {}",
            buf.capacity()
        );
    }

    #[test]
    fn the_large_limit_is_configurable() {
        let mut codec = FrameCodec::new(FrameLimits::frontend(20_000));
        let mut wire = vec![b'Q'];
        wire.extend_from_slice(&20_001i32.to_be_bytes());
        let err = decode_all(&mut codec, &wire).unwrap_err();
        assert!(matches!(err, ProtocolError::MessageTooLarge { max: 20_000, .. }));
        // Limits below the small-message limit are raised to it.
        assert_eq!(FrameLimits::frontend(1).max_len(b'Q'), Some(10_000));
    }

    #[test]
    fn unknown_types_are_refused_per_direction() {
        let err = decode_all(&mut FrameCodec::frontend(), b"Z\x00\x00\x00\x05I").unwrap_err();
        assert!(matches!(
            err,
            ProtocolError::UnknownMessageType {
                direction: Direction::Frontend,
                tag: b'Z'
            }
        ));
        assert_eq!(err.to_string(), "invalid frontend message type 'Z'");
        let err = decode_all(&mut FrameCodec::backend(), b"Q\x00\x00\x00\x04").unwrap_err();
        assert!(matches!(
            err,
            ProtocolError::UnknownMessageType {
                direction: Direction::Backend,
                tag: b'Q'
            }
        ));
        let err = decode_all(&mut FrameCodec::backend(), b"\x00\x00\x00\x00\x04").unwrap_err();
        assert_eq!(err.to_string(), "invalid backend message type 0x00");
    }

    #[test]
    fn eof_inside_a_frame_is_an_error() {
        let mut codec = FrameCodec::frontend();
        let mut buf = BytesMut::from(&b"Q\x00\x00"[..]);
        assert!(matches!(
            codec.decode_eof(&mut buf),
            Err(ProtocolError::UnexpectedEof)
        ));
        assert!(codec.decode_eof(&mut BytesMut::new()).unwrap().is_none());
    }

    #[test]
    fn from_raw_checks_the_length_word() {
        let frame = Frame::from_raw(Bytes::from_static(b"S\x00\x00\x00\x04")).unwrap();
        assert_eq!(frame.tag(), b'S');
        assert!(Frame::from_raw(Bytes::from_static(b"S\x00\x00\x00")).is_err());
        assert!(Frame::from_raw(Bytes::from_static(b"S\x00\x00\x00\x05")).is_err());
        assert!(Frame::from_raw(Bytes::from_static(b"S\x00\x00\x00\x04x")).is_err());
        assert!(Frame::from_raw(Bytes::from_static(b"S\x00\x00\x00\x03")).is_err());
        assert!(Frame::from_raw(Bytes::from_static(b"S\xff\xff\xff\xff")).is_err());
    }

    #[test]
    fn new_and_encode_write_the_raw_bytes() {
        let frame = Frame::new(b'Q', b"SELECT 1\0").unwrap();
        assert_eq!(frame.raw().as_ref(), b"Q\x00\x00\x00\x0dSELECT 1\x00");
        let mut out = BytesMut::new();
        FrameCodec::frontend().encode(&frame, &mut out).unwrap();
        FrameCodec::frontend().encode(frame, &mut out).unwrap();
        assert_eq!(&out[..14], &out[14..]);
    }

    #[test]
    fn debug_shows_no_payload() {
        let frame = Frame::new(b'p', b"hunter2\0").unwrap();
        let shown = format!("{frame:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert_eq!(shown, "Frame { tag: \"'p'\", len: 13 }");
    }
}

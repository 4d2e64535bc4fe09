//! Property tests: no input panics a decoder, framing does not depend on how
//! the bytes arrive, and what the proxy encodes decodes to itself.

use bytes::{Bytes, BytesMut};
use proptest::collection::vec;
use proptest::prelude::*;
use tokio_util::codec::Decoder;

use crate::pg::messages::*;
use crate::pg::startup::{CancelRequest, StartupCodec, StartupMessage, StartupPacket};
use crate::pg::{Frame, FrameCodec, FrameLimits, ProtocolVersion, fuzz};

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 512,
        ..ProptestConfig::default()
    }
}

/// Runs every message decoder on a payload, for "never panics".
fn decode_with_every_decoder(payload: &[u8]) {
    let p = || Bytes::copy_from_slice(payload);
    let _ = Query::decode_payload(p());
    let _ = Parse::decode_payload(p());
    let _ = Bind::decode_payload(p());
    let _ = Execute::decode_payload(p());
    let _ = Describe::decode_payload(p());
    let _ = Close::decode_payload(p());
    let _ = Sync::decode_payload(p());
    let _ = FunctionCall::decode_payload(p());
    let _ = CopyData::decode_payload(p());
    let _ = CopyFail::decode_payload(p());
    let _ = PasswordMessage::decode_payload(p());
    let _ = SaslInitialResponse::decode_payload(p());
    let _ = SaslResponse::decode_payload(p());
    let _ = Authentication::decode_payload(p());
    let _ = BackendKeyData::decode_payload(p());
    let _ = ParameterStatus::decode_payload(p());
    let _ = ReadyForQuery::decode_payload(p());
    let _ = ErrorResponse::decode_payload(p());
    let _ = NoticeResponse::decode_payload(p());
    let _ = RowDescription::decode_payload(p());
    if let Ok(row) = DataRow::decode_payload(p()) {
        assert_eq!(row.cells().count(), row.len());
    }
    let _ = CommandComplete::decode_payload(p());
    let _ = NotificationResponse::decode_payload(p());
    let _ = CopyInResponse::decode_payload(p());
    let _ = ParameterDescription::decode_payload(p());
    let _ = NegotiateProtocolVersion::decode_payload(p());
    let _ = StartupPacket::decode(p());
}

/// A payload that starts like real messages do (small counts, short
/// strings) more often than uniform bytes would.
fn payload() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        vec(any::<u8>(), 0..64),
        vec(
            prop_oneof![Just(0u8), Just(1), Just(0xff), Just(b'S'), any::<u8>()],
            0..64
        ),
    ]
}

/// A frame a client may send: a known tag with a payload within its limit.
fn frontend_frame() -> impl Strategy<Value = Frame> {
    let empty = prop::sample::select(vec![b'S', b'H', b'X', b'c']).prop_map(|tag| (tag, Vec::new()));
    let small = (
        prop::sample::select(vec![b'E', b'D', b'C', b'f', b'p']),
        vec(any::<u8>(), 0..40),
    );
    let large = (
        prop::sample::select(vec![b'Q', b'P', b'B', b'F', b'd']),
        vec(any::<u8>(), 0..300),
    );
    prop_oneof![empty, small, large].prop_map(|(tag, payload)| Frame::new(tag, &payload).unwrap())
}

/// Text without NUL, which the protocol's strings cannot hold.
fn text() -> impl Strategy<Value = String> {
    "[^\u{0}]{0,40}"
}

fn value() -> impl Strategy<Value = Option<Bytes>> {
    proptest::option::of(vec(any::<u8>(), 0..40).prop_map(Bytes::from))
}

fn format() -> impl Strategy<Value = Format> {
    prop_oneof![Just(Format::Text), Just(Format::Binary)]
}

/// Encodes a message, reads it back through the codec and decodes it.
fn through_the_wire<M: Message>(message: &M, limits: FrameLimits) -> M {
    let mut wire = BytesMut::new();
    message.encode(&mut wire).unwrap();
    let frame = FrameCodec::new(limits).decode(&mut wire).unwrap().unwrap();
    assert!(wire.is_empty());
    M::decode(&frame).unwrap()
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn arbitrary_bytes_never_panic_the_frame_decoders(data in vec(any::<u8>(), 0..2048)) {
        fuzz::frame_decoder(&data);
        for mut codec in [FrameCodec::frontend(), FrameCodec::backend()] {
            let mut buf = BytesMut::from(&data[..]);
            while let Ok(Some(frame)) = codec.decode(&mut buf) {
                decode_with_every_decoder(frame.payload());
            }
        }
    }

    #[test]
    fn arbitrary_payloads_never_panic_a_message_decoder(data in payload()) {
        decode_with_every_decoder(&data);
    }

    #[test]
    fn arbitrary_bytes_never_panic_the_startup_decoders(data in vec(any::<u8>(), 0..512)) {
        fuzz::startup_packet(&data);
        let mut framed = (data.len() as i32 + 4).to_be_bytes().to_vec();
        framed.extend_from_slice(&data);
        fuzz::startup_packet(&framed);
    }

    #[test]
    fn mutated_valid_frames_never_panic(
        frames in vec(frontend_frame(), 1..8),
        flips in vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
        backend in any::<bool>(),
    ) {
        let mut wire: Vec<u8> = frames.iter().flat_map(|f| f.raw().to_vec()).collect();
        for (at, byte) in flips {
            let i = at.index(wire.len());
            wire[i] = byte;
        }
        wire.insert(0, u8::from(backend));
        fuzz::frame_decoder(&wire);
    }

    #[test]
    fn a_frame_stream_split_anywhere_decodes_to_the_same_frames(
        frames in vec(frontend_frame(), 0..16),
        cuts in vec(any::<prop::sample::Index>(), 0..16),
    ) {
        let wire: Vec<u8> = frames.iter().flat_map(|f| f.raw().to_vec()).collect();
        let mut cuts: Vec<usize> = cuts.iter().map(|c| c.index(wire.len() + 1)).collect();
        cuts.push(wire.len());
        cuts.sort_unstable();

        let mut codec = FrameCodec::frontend();
        let mut buf = BytesMut::new();
        let mut decoded = Vec::new();
        let mut from = 0;
        for to in cuts {
            buf.extend_from_slice(&wire[from..to]);
            from = to;
            while let Some(frame) = codec.decode(&mut buf).unwrap() {
                decoded.push(frame);
            }
        }
        prop_assert!(codec.decode_eof(&mut buf).unwrap().is_none());
        prop_assert_eq!(decoded, frames);
    }

    #[test]
    fn a_startup_stream_split_anywhere_decodes_to_the_same_packets(
        params in vec(("[a-z_]{1,12}", text()), 0..6),
        cut in any::<prop::sample::Index>(),
    ) {
        let mut unique = params;
        unique.sort();
        unique.dedup_by(|a, b| a.0 == b.0);
        let packets = [
            StartupPacket::SslRequest,
            StartupPacket::Startup(StartupMessage::new(unique)),
            StartupPacket::Cancel(CancelRequest { process_id: 42, secret_key: Bytes::from_static(b"key!") }),
        ];
        let mut wire = BytesMut::new();
        for packet in &packets {
            packet.encode(&mut wire).unwrap();
        }
        let cut = cut.index(wire.len() + 1);
        let mut buf = BytesMut::from(&wire[..cut]);
        let mut decoded = Vec::new();
        while let Some(packet) = StartupCodec.decode(&mut buf).unwrap() {
            decoded.push(packet);
        }
        buf.extend_from_slice(&wire[cut..]);
        while let Some(packet) = StartupCodec.decode(&mut buf).unwrap() {
            decoded.push(packet);
        }
        prop_assert_eq!(&decoded[..], &packets[..]);
    }

    #[test]
    fn frontend_messages_round_trip(
        statement in text(), sql in text(), portal in text(),
        param_types in vec(any::<u32>(), 0..8),
        params in vec(value(), 0..8),
        one_format in proptest::option::of(format()),
        result_formats in vec(format(), 0..4),
        max_rows in any::<i32>(),
    ) {
        let limits = || FrameLimits::frontend(1 << 20);
        let q = Query::new(sql.clone());
        prop_assert_eq!(through_the_wire(&q, limits()), q);
        let p = Parse { statement: statement.clone(), sql, param_types };
        prop_assert_eq!(through_the_wire(&p, limits()), p);
        let b = Bind {
            portal: portal.clone(),
            statement,
            param_formats: one_format.into_iter().collect(),
            params,
            result_formats,
        };
        prop_assert_eq!(through_the_wire(&b, limits()), b);
        let e = Execute { portal, max_rows };
        prop_assert_eq!(through_the_wire(&e, limits()), e);
    }

    #[test]
    fn backend_messages_round_trip(
        cells in vec(value(), 0..12),
        names in vec(text(), 0..6),
        message in text(), detail in text(), hint in text(),
        code in "[0-9A-Z]{5}",
        salt in any::<[u8; 4]>(),
        key in vec(any::<u8>(), 4..=256),
        pid in any::<i32>(),
    ) {
        let limits = || FrameLimits::backend(1 << 20);
        let row = DataRow::from_cells(cells.iter().map(|c| c.as_deref())).unwrap();
        let decoded = through_the_wire(&row, limits());
        prop_assert_eq!(decoded.cells().collect::<Vec<_>>(), cells);
        let t = RowDescription {
            fields: names
                .into_iter()
                .enumerate()
                .map(|(i, name)| FieldDescription {
                    name,
                    table_oid: 16_385,
                    column_id: i as i16,
                    type_oid: 25,
                    type_size: -1,
                    type_modifier: -1,
                    format: Format::Text,
                })
                .collect(),
        };
        prop_assert_eq!(through_the_wire(&t, limits()), t);
        let e = ErrorResponse::error(&code, message.clone()).with_detail(detail).with_hint(hint);
        prop_assert_eq!(through_the_wire(&e, limits()), e);
        let n = NoticeResponse::notice(message);
        prop_assert_eq!(through_the_wire(&n, limits()), n);
        let a = Authentication::Md5Password { salt };
        prop_assert_eq!(through_the_wire(&a, limits()), a);
        let k = BackendKeyData { process_id: pid, secret_key: key.into() };
        prop_assert_eq!(through_the_wire(&k, limits()), k);
    }

    #[test]
    fn startup_messages_round_trip(params in vec(("[a-z_.]{1,16}", text()), 0..8), minor in 0u16..4) {
        let mut unique = params;
        unique.sort();
        unique.dedup_by(|a, b| a.0 == b.0);
        let startup = StartupMessage { version: ProtocolVersion { major: 3, minor }, params: unique };
        let mut wire = BytesMut::new();
        startup.encode(&mut wire).unwrap();
        prop_assert_eq!(StartupPacket::decode(wire.freeze()).unwrap(), StartupPacket::Startup(startup));
    }
}

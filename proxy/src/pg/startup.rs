//! The untagged packets a connection opens with.
//!
//! Before the first tagged frame a client sends one packet made of a length
//! word and a 32-bit code: a StartupMessage (the code is the protocol
//! version), or one of three requests that use reserved version numbers:
//! SSLRequest, GSSENCRequest and CancelRequest. After an SSLRequest or a
//! refused GSSENCRequest another startup packet follows.

use std::fmt;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio_util::codec::Decoder;

use super::error::{ProtocolError, Result};
use super::wire::{Reader, put_cstr, put_message};

/// PostgreSQL's `MAX_STARTUP_PACKET_LENGTH`: the most a startup packet may
/// hold after its length word. A client cannot make the proxy buffer more
/// than this before it is authenticated.
pub const MAX_STARTUP_PACKET_LEN: usize = 10_000;

/// The code of a CancelRequest (1234.5678).
pub const CANCEL_REQUEST_CODE: u32 = 80_877_102;
/// The code of an SSLRequest (1234.5679).
pub const SSL_REQUEST_CODE: u32 = 80_877_103;
/// The code of a GSSENCRequest (1234.5680).
pub const GSSENC_REQUEST_CODE: u32 = 80_877_104;

/// The one byte a server answers an SSLRequest or GSSENCRequest with when it
/// goes ahead with the handshake.
pub const ENCRYPTION_ACCEPTED: u8 = b'S';
/// The one byte a server answers an SSLRequest or GSSENCRequest with when it
/// does not; the client may then go on in plaintext or hang up.
pub const ENCRYPTION_REFUSED: u8 = b'N';

/// Shortest and longest cancel key. Protocol 3.0 keys are 4 bytes; 3.2
/// (PostgreSQL 18) allows up to 256.
pub const CANCEL_KEY_LEN: std::ops::RangeInclusive<usize> = 4..=256;

/// A protocol version as a StartupMessage carries it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ProtocolVersion {
    /// Major version; only 3 is spoken.
    pub major: u16,
    /// Minor version.
    pub minor: u16,
}

impl ProtocolVersion {
    /// Protocol 3.0, which every PostgreSQL since 7.4 speaks.
    pub const V3_0: Self = Self { major: 3, minor: 0 };
    /// Protocol 3.2 (PostgreSQL 18): longer cancel keys.
    pub const V3_2: Self = Self { major: 3, minor: 2 };
    /// The newest version this codec decodes messages of. A client asking
    /// for a newer 3.x minor version is accepted, as PostgreSQL does, and is
    /// answered with NegotiateProtocolVersion by the session.
    pub const LATEST: Self = Self::V3_2;

    /// The 32-bit code on the wire.
    pub fn code(self) -> u32 {
        (u32::from(self.major) << 16) | u32::from(self.minor)
    }

    /// Splits a 32-bit code.
    pub fn from_code(code: u32) -> Self {
        // Both halves fit a u16 by construction.
        Self {
            major: (code >> 16) as u16,
            minor: (code & 0xffff) as u16,
        }
    }
}

impl fmt::Display for ProtocolVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

/// A StartupMessage: the protocol version and the connection parameters
/// (`user`, `database`, `application_name`, `options`, `_pq_.*`, ...).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StartupMessage {
    /// The requested protocol version; the major version is always 3.
    pub version: ProtocolVersion,
    /// Parameters in the order the client sent them; names are unique.
    pub params: Vec<(String, String)>,
}

impl StartupMessage {
    /// A protocol 3.0 StartupMessage, as the proxy sends upstream.
    pub fn new<K: Into<String>, V: Into<String>>(params: impl IntoIterator<Item = (K, V)>) -> Self {
        Self {
            version: ProtocolVersion::V3_0,
            params: params.into_iter().map(|(k, v)| (k.into(), v.into())).collect(),
        }
    }

    /// The value of a parameter.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The role the client asks for. PostgreSQL refuses a startup without one
    /// (28000); the decoder leaves that decision to the session.
    pub fn user(&self) -> Option<&str> {
        self.get("user")
    }

    /// The database the client asks for; PostgreSQL defaults it to the user.
    pub fn database(&self) -> Option<&str> {
        self.get("database")
    }

    fn decode_body(version: ProtocolVersion, body: &mut Reader) -> Result<Self> {
        let mut params: Vec<(String, String)> = Vec::new();
        loop {
            let name = body.cstring()?;
            if name.is_empty() {
                break;
            }
            let value = body.cstring()?;
            if params.iter().any(|(n, _)| *n == name) {
                return Err(ProtocolError::DuplicateStartupParameter { name });
            }
            params.push((name, value));
        }
        Ok(Self { version, params })
    }

    /// Writes the packet. Fails when a name or value holds a NUL or the
    /// packet is longer than a server accepts.
    pub fn encode(&self, dst: &mut BytesMut) -> Result<()> {
        let start = dst.len();
        put_message(dst, None, "StartupMessage", |dst| {
            dst.put_u32(self.version.code());
            for (name, value) in &self.params {
                put_cstr(dst, name.as_bytes(), "StartupMessage")?;
                put_cstr(dst, value.as_bytes(), "StartupMessage")?;
            }
            dst.put_u8(0);
            Ok(())
        })?;
        if dst.len() - start - 4 > MAX_STARTUP_PACKET_LEN {
            dst.truncate(start);
            return Err(ProtocolError::CannotEncode {
                message: "StartupMessage",
                reason: "over the 10000-byte startup packet limit",
            });
        }
        Ok(())
    }
}

/// A CancelRequest: which backend to interrupt and the key that proves the
/// right to. The proxy hands clients its own key and maps it to the
/// upstream's, so neither a client nor a log ever sees an upstream key.
#[derive(Clone, PartialEq, Eq)]
pub struct CancelRequest {
    /// The process id from BackendKeyData.
    pub process_id: i32,
    /// The secret key from BackendKeyData, 4 to 256 bytes.
    pub secret_key: Bytes,
}

impl CancelRequest {
    /// Writes the packet.
    pub fn encode(&self, dst: &mut BytesMut) -> Result<()> {
        if !CANCEL_KEY_LEN.contains(&self.secret_key.len()) {
            return Err(ProtocolError::InvalidCancelKeyLength {
                len: self.secret_key.len(),
            });
        }
        put_message(dst, None, "CancelRequest", |dst| {
            dst.put_u32(CANCEL_REQUEST_CODE);
            dst.put_i32(self.process_id);
            dst.put_slice(&self.secret_key);
            Ok(())
        })
    }
}

impl fmt::Debug for CancelRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CancelRequest")
            .field("process_id", &self.process_id)
            .field("secret_key", &format_args!("<{} bytes>", self.secret_key.len()))
            .finish()
    }
}

/// Any packet of the startup phase.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartupPacket {
    /// Open a session.
    Startup(StartupMessage),
    /// Ask for TLS; answered with one byte, then the TLS handshake.
    SslRequest,
    /// Ask for GSSAPI encryption; the proxy refuses it with `N`.
    GssEncRequest,
    /// Interrupt a running query of another connection.
    Cancel(CancelRequest),
}

impl StartupPacket {
    /// Decodes one whole packet, length word included; bytes after the
    /// packet are an error.
    pub fn decode(packet: Bytes) -> Result<Self> {
        let mut reader = Reader::new(packet, "startup packet");
        let len = check_len(reader.i32()?)?;
        let body = reader.rest();
        match (body.len() + 4).cmp(&len) {
            std::cmp::Ordering::Less => Err(ProtocolError::Truncated {
                message: "startup packet",
            }),
            std::cmp::Ordering::Greater => Err(ProtocolError::TrailingBytes {
                message: "startup packet",
                extra: body.len() + 4 - len,
            }),
            std::cmp::Ordering::Equal => Self::decode_body(body),
        }
    }

    /// Decodes the part after the length word.
    fn decode_body(body: Bytes) -> Result<Self> {
        let code = body
            .as_ref()
            .get(..4)
            .map(|mut c| c.get_u32())
            .unwrap_or_default();
        let message = match code {
            CANCEL_REQUEST_CODE => "CancelRequest",
            SSL_REQUEST_CODE => "SSLRequest",
            GSSENC_REQUEST_CODE => "GSSENCRequest",
            _ => "StartupMessage",
        };
        let mut r = Reader::new(body, message);
        let code = r.u32()?;
        let packet = match code {
            SSL_REQUEST_CODE => Self::SslRequest,
            GSSENC_REQUEST_CODE => Self::GssEncRequest,
            CANCEL_REQUEST_CODE => {
                let process_id = r.i32()?;
                let secret_key = r.rest();
                if !CANCEL_KEY_LEN.contains(&secret_key.len()) {
                    return Err(ProtocolError::InvalidCancelKeyLength {
                        len: secret_key.len(),
                    });
                }
                Self::Cancel(CancelRequest {
                    process_id,
                    secret_key,
                })
            }
            code => {
                let version = ProtocolVersion::from_code(code);
                if version.major != 3 {
                    return Err(ProtocolError::UnsupportedProtocolVersion {
                        major: version.major,
                        minor: version.minor,
                    });
                }
                Self::Startup(StartupMessage::decode_body(version, &mut r)?)
            }
        };
        r.finish()?;
        Ok(packet)
    }

    /// Writes the packet.
    pub fn encode(&self, dst: &mut BytesMut) -> Result<()> {
        let code = match self {
            Self::Startup(startup) => return startup.encode(dst),
            Self::Cancel(cancel) => return cancel.encode(dst),
            Self::SslRequest => SSL_REQUEST_CODE,
            Self::GssEncRequest => GSSENC_REQUEST_CODE,
        };
        dst.put_i32(8);
        dst.put_u32(code);
        Ok(())
    }
}

/// Checks a startup packet's length word: at least the length and a code,
/// at most [`MAX_STARTUP_PACKET_LEN`] after the length word.
fn check_len(len: i32) -> Result<usize> {
    usize::try_from(len)
        .ok()
        .filter(|n| (8..=MAX_STARTUP_PACKET_LEN + 4).contains(n))
        .ok_or(ProtocolError::InvalidStartupLength { len })
}

/// Reads exactly one startup packet from `reader`, never a byte more.
///
/// Reading no further than the packet matters for the SSLRequest: bytes a
/// client (or an attacker in the path) sends after it and before the TLS
/// handshake must reach the TLS layer, where they fail the handshake,
/// rather than sit in a buffer and be read later as if they had come over
/// TLS (CVE-2021-23214). Returns `None` when the peer closes before sending
/// anything, which port probes and health checks do.
///
/// The caller bounds the time this may take (`tokio::time::timeout`): a
/// client that sends nothing must not hold a task forever.
pub async fn read_startup_packet<R: AsyncRead + Unpin>(reader: &mut R) -> Result<Option<StartupPacket>> {
    let mut len = [0u8; 4];
    let mut got = 0;
    while got < len.len() {
        let n = reader.read(&mut len[got..]).await?;
        if n == 0 {
            return if got == 0 {
                Ok(None)
            } else {
                Err(ProtocolError::UnexpectedEof)
            };
        }
        got += n;
    }
    let len = check_len(i32::from_be_bytes(len))?;
    let mut body = vec![0u8; len - 4];
    reader.read_exact(&mut body).await.map_err(|e| match e.kind() {
        std::io::ErrorKind::UnexpectedEof => ProtocolError::UnexpectedEof,
        _ => ProtocolError::Io(e),
    })?;
    StartupPacket::decode_body(body.into()).map(Some)
}

/// A [`Decoder`] of startup packets, for tests and fuzzing over split
/// input. A session should prefer [`read_startup_packet`], which never reads
/// past the packet (see there why).
#[derive(Debug, Clone, Copy, Default)]
pub struct StartupCodec;

impl Decoder for StartupCodec {
    type Item = StartupPacket;
    type Error = ProtocolError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<StartupPacket>> {
        let Some(&[a, b, c, d]) = src.get(..4) else {
            return Ok(None);
        };
        let len = check_len(i32::from_be_bytes([a, b, c, d]))?;
        if src.len() < len {
            src.reserve(len - src.len());
            return Ok(None);
        }
        let mut packet = src.split_to(len).freeze();
        packet.advance(4);
        StartupPacket::decode_body(packet).map(Some)
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<StartupPacket>> {
        match self.decode(src)? {
            Some(packet) => Ok(Some(packet)),
            None if src.is_empty() => Ok(None),
            None => Err(ProtocolError::UnexpectedEof),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What psql 15 sends with `psql "host=... user=alice dbname=orders"`.
    const PSQL_STARTUP: &[u8] = b"\x00\x00\x00\x4f\x00\x03\x00\x00user\x00alice\x00database\x00orders\x00\
application_name\x00psql\x00client_encoding\x00UTF8\x00\x00";

    fn decode(bytes: &[u8]) -> Result<StartupPacket> {
        StartupPacket::decode(Bytes::copy_from_slice(bytes))
    }

    #[test]
    fn decodes_a_startup_message() {
        let StartupPacket::Startup(startup) = decode(PSQL_STARTUP).unwrap() else {
            panic!("not a startup")
        };
        assert_eq!(startup.version, ProtocolVersion::V3_0);
        assert_eq!(startup.user(), Some("alice"));
        assert_eq!(startup.database(), Some("orders"));
        assert_eq!(startup.get("application_name"), Some("psql"));
        assert_eq!(startup.params.len(), 4);
    }

    #[test]
    fn startup_round_trips() {
        let startup = StartupMessage::new([("user", "gatehouse"), ("database", "orders"), ("options", "")]);
        let mut buf = BytesMut::new();
        startup.encode(&mut buf).unwrap();
        assert_eq!(&buf[4..8], &[0, 3, 0, 0]);
        assert_eq!(decode(&buf).unwrap(), StartupPacket::Startup(startup));
    }

    #[test]
    fn startup_must_end_with_its_terminator() {
        // No terminator.
        let mut bytes = PSQL_STARTUP[..PSQL_STARTUP.len() - 1].to_vec();
        bytes[3] -= 1;
        assert!(matches!(decode(&bytes), Err(ProtocolError::Truncated { .. })));
        // A name without a value.
        let bytes = b"\x00\x00\x00\x0e\x00\x03\x00\x00user\x00\x00";
        assert!(matches!(decode(bytes), Err(ProtocolError::Truncated { .. })));
        // Bytes after the terminator.
        let bytes = b"\x00\x00\x00\x0a\x00\x03\x00\x00\x00x";
        assert!(matches!(
            decode(bytes),
            Err(ProtocolError::TrailingBytes { extra: 1, .. })
        ));
        // The shortest valid one: no parameters.
        let bytes = b"\x00\x00\x00\x09\x00\x03\x00\x00\x00";
        assert!(matches!(decode(bytes), Ok(StartupPacket::Startup(s)) if s.params.is_empty()));
    }

    #[test]
    fn duplicate_parameters_are_refused() {
        let bytes = b"\x00\x00\x00\x17\x00\x03\x00\x00user\x00a\x00user\x00b\x00\x00";
        assert!(
            matches!(decode(bytes), Err(ProtocolError::DuplicateStartupParameter { name }) if name == "user")
        );
    }

    #[test]
    fn non_utf8_parameters_are_refused() {
        let bytes = b"\x00\x00\x00\x10\x00\x03\x00\x00user\x00\xff\x00\x00";
        assert!(matches!(decode(bytes), Err(ProtocolError::InvalidUtf8 { .. })));
    }

    #[test]
    fn decodes_the_encryption_requests() {
        assert_eq!(
            decode(b"\x00\x00\x00\x08\x04\xd2\x16\x2f").unwrap(),
            StartupPacket::SslRequest
        );
        assert_eq!(
            decode(b"\x00\x00\x00\x08\x04\xd2\x16\x30").unwrap(),
            StartupPacket::GssEncRequest
        );
        assert!(matches!(
            decode(b"\x00\x00\x00\x09\x04\xd2\x16\x2f\x00"),
            Err(ProtocolError::TrailingBytes { .. })
        ));
        for packet in [StartupPacket::SslRequest, StartupPacket::GssEncRequest] {
            let mut buf = BytesMut::new();
            packet.encode(&mut buf).unwrap();
            assert_eq!(decode(&buf).unwrap(), packet);
        }
    }

    #[test]
    fn decodes_cancel_requests_with_3_0_and_3_2_keys() {
        let bytes = b"\x00\x00\x00\x10\x04\xd2\x16\x2e\x00\x00\x30\x39\xde\xad\xbe\xef";
        let StartupPacket::Cancel(cancel) = decode(bytes).unwrap() else {
            panic!("not a cancel")
        };
        assert_eq!(cancel.process_id, 12345);
        assert_eq!(cancel.secret_key.as_ref(), b"\xde\xad\xbe\xef");

        for key_len in [4usize, 32, 256] {
            let cancel = CancelRequest {
                process_id: 7,
                secret_key: vec![0xa5; key_len].into(),
            };
            let mut buf = BytesMut::new();
            cancel.encode(&mut buf).unwrap();
            assert_eq!(decode(&buf).unwrap(), StartupPacket::Cancel(cancel));
        }
    }

    #[test]
    fn cancel_keys_outside_4_to_256_bytes_are_refused() {
        for key_len in [0usize, 1, 3, 257] {
            let mut bytes = BytesMut::new();
            bytes.put_i32(12 + key_len as i32);
            bytes.put_u32(CANCEL_REQUEST_CODE);
            bytes.put_i32(1);
            bytes.put_slice(&vec![1; key_len]);
            let err = decode(&bytes).unwrap_err();
            assert!(
                matches!(err, ProtocolError::InvalidCancelKeyLength { len } if len == key_len),
                "{err}"
            );
            let cancel = CancelRequest {
                process_id: 1,
                secret_key: vec![1; key_len].into(),
            };
            assert!(cancel.encode(&mut BytesMut::new()).is_err());
        }
        // Too short to hold a process id.
        assert!(matches!(
            decode(b"\x00\x00\x00\x0a\x04\xd2\x16\x2e\x00\x00"),
            Err(ProtocolError::Truncated { .. })
        ));
    }

    #[test]
    fn cancel_keys_are_not_shown_by_debug() {
        let cancel = CancelRequest {
            process_id: 1,
            secret_key: Bytes::from_static(b"s3cr"),
        };
        assert_eq!(
            format!("{cancel:?}"),
            "CancelRequest { process_id: 1, secret_key: <4 bytes> }"
        );
    }

    #[test]
    fn other_versions_are_refused() {
        let err = decode(b"\x00\x00\x00\x09\x00\x02\x00\x00\x00").unwrap_err();
        assert!(matches!(
            err,
            ProtocolError::UnsupportedProtocolVersion { major: 2, minor: 0 }
        ));
        assert_eq!(err.sqlstate(), "0A000");
        assert_eq!(
            err.to_string(),
            "unsupported frontend protocol 2.0: server supports 3.0 to 3.2"
        );
        // An unknown 1234.x request code.
        let err = decode(b"\x00\x00\x00\x08\x04\xd2\x16\x31").unwrap_err();
        assert!(matches!(
            err,
            ProtocolError::UnsupportedProtocolVersion {
                major: 1234,
                minor: 5681
            }
        ));
        // Newer 3.x minor versions are the session's to negotiate.
        let StartupPacket::Startup(s) = decode(b"\x00\x00\x00\x09\x00\x03\x00\x07\x00").unwrap() else {
            panic!("not a startup")
        };
        assert_eq!(s.version, ProtocolVersion { major: 3, minor: 7 });
    }

    #[test]
    fn lengths_out_of_bounds_are_refused() {
        for len in [i32::MIN, -1, 0, 3, 4, 7, 10_005, i32::MAX] {
            let mut bytes = len.to_be_bytes().to_vec();
            bytes.extend_from_slice(&[0, 3, 0, 0]);
            let err = decode(&bytes).unwrap_err();
            assert!(
                matches!(err, ProtocolError::InvalidStartupLength { len: l } if l == len),
                "{len}: {err}"
            );
            assert!(StartupCodec.decode(&mut BytesMut::from(&bytes[..])).is_err());
        }
        // The longest allowed.
        let mut bytes = BytesMut::new();
        bytes.put_i32(10_004);
        bytes.put_u32(ProtocolVersion::V3_0.code());
        bytes.put_slice(b"application_name\0");
        bytes.put_slice(&vec![b'x'; 10_004 - 8 - 17 - 2]);
        bytes.put_slice(b"\0\0");
        assert!(decode(&bytes).is_ok());
    }

    #[test]
    fn encoding_refuses_a_packet_a_server_would_not_take() {
        let startup = StartupMessage::new([("options", "x".repeat(MAX_STARTUP_PACKET_LEN))]);
        let mut buf = BytesMut::from(&b"keep"[..]);
        assert!(matches!(
            startup.encode(&mut buf),
            Err(ProtocolError::CannotEncode { .. })
        ));
        assert_eq!(&buf[..], b"keep", "a failed encode leaves the buffer as it was");
        let startup = StartupMessage::new([("user", "a\0b")]);
        assert!(matches!(
            startup.encode(&mut buf),
            Err(ProtocolError::InteriorNul { .. })
        ));
        assert_eq!(&buf[..], b"keep");
    }

    #[test]
    fn the_codec_waits_for_the_whole_packet() {
        let mut buf = BytesMut::new();
        for (i, b) in PSQL_STARTUP.iter().enumerate() {
            assert!(StartupCodec.decode(&mut buf).unwrap().is_none(), "at {i}");
            buf.put_u8(*b);
        }
        assert!(StartupCodec.decode(&mut buf).unwrap().is_some());
        assert!(buf.is_empty());
        assert!(matches!(
            StartupCodec.decode_eof(&mut BytesMut::from(&b"\0\0"[..])),
            Err(ProtocolError::UnexpectedEof)
        ));
    }

    #[tokio::test]
    async fn read_startup_packet_reads_no_further_than_the_packet() {
        let mut input: &[u8] = b"\x00\x00\x00\x08\x04\xd2\x16\x2f\x16\x03\x01";
        assert_eq!(
            read_startup_packet(&mut input).await.unwrap(),
            Some(StartupPacket::SslRequest)
        );
        assert_eq!(input, b"\x16\x03\x01", "the TLS handshake bytes stay unread");

        let mut input: &[u8] = PSQL_STARTUP;
        assert!(matches!(
            read_startup_packet(&mut input).await,
            Ok(Some(StartupPacket::Startup(_)))
        ));
    }

    #[tokio::test]
    async fn read_startup_packet_handles_eof() {
        let mut empty: &[u8] = b"";
        assert!(read_startup_packet(&mut empty).await.unwrap().is_none());
        let mut short: &[u8] = b"\x00\x00";
        assert!(matches!(
            read_startup_packet(&mut short).await,
            Err(ProtocolError::UnexpectedEof)
        ));
        let mut short: &[u8] = b"\x00\x00\x00\x08\x04";
        assert!(matches!(
            read_startup_packet(&mut short).await,
            Err(ProtocolError::UnexpectedEof)
        ));
        // A TLS ClientHello sent without SSLRequest is refused by its length.
        let mut hello: &[u8] = b"\x16\x03\x01\x02\x00\x01";
        assert!(matches!(
            read_startup_packet(&mut hello).await,
            Err(ProtocolError::InvalidStartupLength { .. })
        ));
    }
}

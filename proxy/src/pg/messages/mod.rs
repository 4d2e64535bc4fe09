//! One small file per protocol message the proxy inspects or builds.
//!
//! Every message implements [`Message`]: `decode` reads a copy out of a
//! [`Frame`] (the frame itself is forwarded untouched), `encode` writes a
//! message the proxy sends itself. Decoding never panics, never trusts a
//! count or length beyond the bytes the frame holds, and refuses bytes after
//! the last field, so a message reads the same to the proxy as to the peer.
//!
//! Strings the proxy reasons about (statements, names, command tags) are
//! decoded as UTF-8 and refused otherwise, failing closed; a session should
//! keep `client_encoding` at UTF8. Error and notice fields stay bytes, since
//! a server reports errors during startup in its own encoding.

use bytes::{Bytes, BytesMut};

use super::error::{ProtocolError, Result};
use super::frame::Frame;
use super::wire::put_message;

// Frontend.
mod bind;
mod close;
mod describe;
mod execute;
mod flush;
mod function_call;
mod parse;
mod password_message;
mod query;
mod sasl_initial_response;
mod sasl_response;
mod sync;
mod terminate;

// Both directions.
mod copy_data;
mod copy_done;
mod copy_fail;

// Backend.
mod authentication;
mod backend_key_data;
mod bind_complete;
mod close_complete;
mod command_complete;
mod copy_response;
mod data_row;
mod empty_query_response;
mod error_fields;
mod error_response;
mod negotiate_protocol_version;
mod no_data;
mod notice_response;
mod notification_response;
mod parameter_description;
mod parameter_status;
mod parse_complete;
mod portal_suspended;
mod ready_for_query;
mod row_description;

mod backend;
mod format;
mod frontend;
mod target;

pub use authentication::{Authentication, SCRAM_SHA_256};
pub use backend::BackendMessage;
pub use backend_key_data::BackendKeyData;
pub use bind::Bind;
pub use bind_complete::BindComplete;
pub use close::Close;
pub use close_complete::CloseComplete;
pub use command_complete::CommandComplete;
pub use copy_data::CopyData;
pub use copy_done::CopyDone;
pub use copy_fail::CopyFail;
pub use copy_response::{CopyBothResponse, CopyInResponse, CopyOutResponse};
pub use data_row::{Cells, DataRow};
pub use describe::Describe;
pub use empty_query_response::EmptyQueryResponse;
pub use error_fields::{ErrorFields, Severity, field};
pub use error_response::ErrorResponse;
pub use execute::Execute;
pub use flush::Flush;
pub use format::Format;
pub use frontend::FrontendMessage;
pub use function_call::FunctionCall;
pub use negotiate_protocol_version::NegotiateProtocolVersion;
pub use no_data::NoData;
pub use notice_response::NoticeResponse;
pub use notification_response::NotificationResponse;
pub use parameter_description::ParameterDescription;
pub use parameter_status::ParameterStatus;
pub use parse::Parse;
pub use parse_complete::ParseComplete;
pub use password_message::PasswordMessage;
pub use portal_suspended::PortalSuspended;
pub use query::Query;
pub use ready_for_query::{ReadyForQuery, TransactionStatus};
pub use row_description::{FieldDescription, RowDescription};
pub use sasl_initial_response::SaslInitialResponse;
pub use sasl_response::SaslResponse;
pub use sync::Sync;
pub use target::Target;
pub use terminate::Terminate;

/// A tagged protocol message.
pub trait Message: Sized {
    /// The type byte. Several messages share one (`p` is a password, a SASL
    /// initial response or a SASL response); the session's state says which
    /// decoder applies.
    const TAG: u8;

    /// The protocol documentation's name, used in errors.
    const NAME: &'static str;

    /// Decodes a payload (the bytes after the length word). Views into
    /// `payload` are kept rather than copied where the message has data.
    fn decode_payload(payload: Bytes) -> Result<Self>;

    /// Writes the payload.
    fn encode_payload(&self, dst: &mut BytesMut) -> Result<()>;

    /// Decodes a frame, checking first that it is this message's type.
    fn decode(frame: &Frame) -> Result<Self> {
        if frame.tag() != Self::TAG {
            return Err(ProtocolError::UnexpectedMessage {
                expected: Self::NAME,
                found: frame.tag(),
            });
        }
        Self::decode_payload(frame.payload_bytes())
    }

    /// Appends the whole message, header included, to `dst`. On error `dst`
    /// is left as it was.
    fn encode(&self, dst: &mut BytesMut) -> Result<()> {
        put_message(dst, Some(Self::TAG), Self::NAME, |dst| self.encode_payload(dst))
    }

    /// The message as a frame of its own.
    fn to_frame(&self) -> Result<Frame> {
        let mut dst = BytesMut::new();
        self.encode(&mut dst)?;
        Ok(Frame::from_encoded(dst.freeze()))
    }
}

/// Defines a message that is nothing but its type byte and length word.
macro_rules! empty_message {
    ($(#[$doc:meta])* $name:ident, $tag:expr, $wire_name:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
        pub struct $name;

        impl $crate::pg::messages::Message for $name {
            const TAG: u8 = $tag;
            const NAME: &'static str = $wire_name;

            fn decode_payload(payload: ::bytes::Bytes) -> $crate::pg::Result<Self> {
                $crate::pg::wire::Reader::new(payload, Self::NAME).finish()?;
                Ok(Self)
            }

            fn encode_payload(&self, _dst: &mut ::bytes::BytesMut) -> $crate::pg::Result<()> {
                Ok(())
            }
        }

        #[cfg(test)]
        mod tests {
            use super::*;
            use $crate::pg::messages::Message as _;

            #[test]
            fn round_trips() {
                let frame = $name.to_frame().unwrap();
                assert_eq!(frame.raw().as_ref(), &[$tag, 0, 0, 0, 4]);
                assert_eq!($name::decode(&frame).unwrap(), $name);
                assert!($name::decode_payload(::bytes::Bytes::from_static(b"x")).is_err());
            }
        }
    };
}
pub(crate) use empty_message;

#[cfg(test)]
pub(crate) mod test_support {
    //! Helpers the message tests share.

    use bytes::Bytes;

    use super::Message;
    use crate::pg::Frame;

    /// Decodes `wire` (one whole frame) as `M`.
    pub(crate) fn decode<M: Message>(wire: &[u8]) -> crate::pg::Result<M> {
        M::decode(&Frame::from_raw(Bytes::copy_from_slice(wire))?)
    }

    /// Encodes `message`, checks it decodes to itself and returns the bytes.
    pub(crate) fn round_trip<M: Message + PartialEq + std::fmt::Debug>(message: &M) -> Vec<u8> {
        let frame = message.to_frame().unwrap();
        assert_eq!(frame.tag(), M::TAG);
        assert_eq!(&M::decode(&frame).unwrap(), message);
        frame.raw().to_vec()
    }

    /// Checks that every strict prefix of `payload` fails to decode and that
    /// a trailing byte does too.
    pub(crate) fn rejects_truncation_and_trailing<M: Message>(payload: &[u8]) {
        for cut in 0..payload.len() {
            assert!(
                M::decode_payload(Bytes::copy_from_slice(&payload[..cut])).is_err(),
                "prefix of {cut} bytes"
            );
        }
        let mut longer = payload.to_vec();
        longer.push(0);
        assert!(M::decode_payload(longer.into()).is_err(), "trailing byte");
    }
}

//! Any message a client sends, chosen by its tag.

use bytes::{Bytes, BytesMut};

use super::{
    Bind, Close, CopyData, CopyDone, CopyFail, Describe, Execute, Flush, FunctionCall, Message, Parse, Query,
    Sync, Terminate,
};
use crate::pg::frame::Frame;
use crate::pg::limits::Direction;
use crate::pg::tag::frontend as tag;
use crate::pg::wire::put_message;
use crate::pg::{ProtocolError, Result};

/// A decoded client message. The relay usually matches on
/// [`Frame::tag`] and decodes only what it inspects; this is for the places
/// that want all of them (recording, tests, fuzzing).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrontendMessage {
    Query(Query),
    Parse(Parse),
    Bind(Bind),
    Execute(Execute),
    Describe(Describe),
    Close(Close),
    Sync(Sync),
    Flush(Flush),
    Terminate(Terminate),
    FunctionCall(FunctionCall),
    CopyData(CopyData),
    CopyDone(CopyDone),
    CopyFail(CopyFail),
    /// PasswordMessage, SASLInitialResponse, SASLResponse or GSSResponse:
    /// which one only the authentication exchange knows, so the payload is
    /// left for [`PasswordMessage`](super::PasswordMessage),
    /// [`SaslInitialResponse`](super::SaslInitialResponse) or
    /// [`SaslResponse`](super::SaslResponse) to decode.
    AuthenticationResponse(Bytes),
}

impl FrontendMessage {
    /// Decodes a frame read from a client.
    pub fn decode(frame: &Frame) -> Result<Self> {
        Ok(match frame.tag() {
            tag::QUERY => Self::Query(Query::decode(frame)?),
            tag::PARSE => Self::Parse(Parse::decode(frame)?),
            tag::BIND => Self::Bind(Bind::decode(frame)?),
            tag::EXECUTE => Self::Execute(Execute::decode(frame)?),
            tag::DESCRIBE => Self::Describe(Describe::decode(frame)?),
            tag::CLOSE => Self::Close(Close::decode(frame)?),
            tag::SYNC => Self::Sync(Sync::decode(frame)?),
            tag::FLUSH => Self::Flush(Flush::decode(frame)?),
            tag::TERMINATE => Self::Terminate(Terminate::decode(frame)?),
            tag::FUNCTION_CALL => Self::FunctionCall(FunctionCall::decode(frame)?),
            tag::COPY_DATA => Self::CopyData(CopyData::decode(frame)?),
            tag::COPY_DONE => Self::CopyDone(CopyDone::decode(frame)?),
            tag::COPY_FAIL => Self::CopyFail(CopyFail::decode(frame)?),
            tag::PASSWORD => Self::AuthenticationResponse(frame.payload_bytes()),
            tag => {
                return Err(ProtocolError::UnknownMessageType {
                    direction: Direction::Frontend,
                    tag,
                });
            }
        })
    }

    /// Appends the message to `dst`.
    pub fn encode(&self, dst: &mut BytesMut) -> Result<()> {
        match self {
            Self::Query(m) => m.encode(dst),
            Self::Parse(m) => m.encode(dst),
            Self::Bind(m) => m.encode(dst),
            Self::Execute(m) => m.encode(dst),
            Self::Describe(m) => m.encode(dst),
            Self::Close(m) => m.encode(dst),
            Self::Sync(m) => m.encode(dst),
            Self::Flush(m) => m.encode(dst),
            Self::Terminate(m) => m.encode(dst),
            Self::FunctionCall(m) => m.encode(dst),
            Self::CopyData(m) => m.encode(dst),
            Self::CopyDone(m) => m.encode(dst),
            Self::CopyFail(m) => m.encode(dst),
            Self::AuthenticationResponse(payload) => {
                put_message(dst, Some(tag::PASSWORD), "authentication response", |dst| {
                    dst.extend_from_slice(payload);
                    Ok(())
                })
            }
        }
    }
}

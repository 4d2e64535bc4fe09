//! Any message a server sends, chosen by its tag.

use bytes::BytesMut;

use super::{
    Authentication, BackendKeyData, BindComplete, CloseComplete, CommandComplete, CopyBothResponse, CopyData,
    CopyDone, CopyInResponse, CopyOutResponse, DataRow, EmptyQueryResponse, ErrorResponse, Message,
    NegotiateProtocolVersion, NoData, NoticeResponse, NotificationResponse, ParameterDescription,
    ParameterStatus, ParseComplete, PortalSuspended, ReadyForQuery, RowDescription,
};
use crate::pg::frame::Frame;
use crate::pg::limits::Direction;
use crate::pg::tag::backend as tag;
use crate::pg::wire::put_message;
use crate::pg::{ProtocolError, Result};

/// A decoded server message. As with [`FrontendMessage`](super::FrontendMessage),
/// the relay's hot path decodes only what it inspects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackendMessage {
    Authentication(Authentication),
    BackendKeyData(BackendKeyData),
    ParameterStatus(ParameterStatus),
    ReadyForQuery(ReadyForQuery),
    ErrorResponse(ErrorResponse),
    NoticeResponse(NoticeResponse),
    RowDescription(RowDescription),
    DataRow(DataRow),
    CommandComplete(CommandComplete),
    EmptyQueryResponse(EmptyQueryResponse),
    NotificationResponse(NotificationResponse),
    ParseComplete(ParseComplete),
    BindComplete(BindComplete),
    CloseComplete(CloseComplete),
    NoData(NoData),
    PortalSuspended(PortalSuspended),
    CopyInResponse(CopyInResponse),
    CopyOutResponse(CopyOutResponse),
    CopyBothResponse(CopyBothResponse),
    CopyData(CopyData),
    CopyDone(CopyDone),
    ParameterDescription(ParameterDescription),
    NegotiateProtocolVersion(NegotiateProtocolVersion),
    /// The result of a fast-path call: an Int32 length (-1 for NULL) and the
    /// value, kept as the raw payload.
    FunctionCallResponse(bytes::Bytes),
}

impl BackendMessage {
    /// Decodes a frame read from a server.
    pub fn decode(frame: &Frame) -> Result<Self> {
        Ok(match frame.tag() {
            tag::AUTHENTICATION => Self::Authentication(Authentication::decode(frame)?),
            tag::BACKEND_KEY_DATA => Self::BackendKeyData(BackendKeyData::decode(frame)?),
            tag::PARAMETER_STATUS => Self::ParameterStatus(ParameterStatus::decode(frame)?),
            tag::READY_FOR_QUERY => Self::ReadyForQuery(ReadyForQuery::decode(frame)?),
            tag::ERROR_RESPONSE => Self::ErrorResponse(ErrorResponse::decode(frame)?),
            tag::NOTICE_RESPONSE => Self::NoticeResponse(NoticeResponse::decode(frame)?),
            tag::ROW_DESCRIPTION => Self::RowDescription(RowDescription::decode(frame)?),
            tag::DATA_ROW => Self::DataRow(DataRow::decode(frame)?),
            tag::COMMAND_COMPLETE => Self::CommandComplete(CommandComplete::decode(frame)?),
            tag::EMPTY_QUERY_RESPONSE => Self::EmptyQueryResponse(EmptyQueryResponse::decode(frame)?),
            tag::NOTIFICATION_RESPONSE => Self::NotificationResponse(NotificationResponse::decode(frame)?),
            tag::PARSE_COMPLETE => Self::ParseComplete(ParseComplete::decode(frame)?),
            tag::BIND_COMPLETE => Self::BindComplete(BindComplete::decode(frame)?),
            tag::CLOSE_COMPLETE => Self::CloseComplete(CloseComplete::decode(frame)?),
            tag::NO_DATA => Self::NoData(NoData::decode(frame)?),
            tag::PORTAL_SUSPENDED => Self::PortalSuspended(PortalSuspended::decode(frame)?),
            tag::COPY_IN_RESPONSE => Self::CopyInResponse(CopyInResponse::decode(frame)?),
            tag::COPY_OUT_RESPONSE => Self::CopyOutResponse(CopyOutResponse::decode(frame)?),
            tag::COPY_BOTH_RESPONSE => Self::CopyBothResponse(CopyBothResponse::decode(frame)?),
            tag::COPY_DATA => Self::CopyData(CopyData::decode(frame)?),
            tag::COPY_DONE => Self::CopyDone(CopyDone::decode(frame)?),
            tag::PARAMETER_DESCRIPTION => Self::ParameterDescription(ParameterDescription::decode(frame)?),
            tag::NEGOTIATE_PROTOCOL_VERSION => {
                Self::NegotiateProtocolVersion(NegotiateProtocolVersion::decode(frame)?)
            }
            tag::FUNCTION_CALL_RESPONSE => Self::FunctionCallResponse(frame.payload_bytes()),
            tag => {
                return Err(ProtocolError::UnknownMessageType {
                    direction: Direction::Backend,
                    tag,
                });
            }
        })
    }

    /// Appends the message to `dst`.
    pub fn encode(&self, dst: &mut BytesMut) -> Result<()> {
        match self {
            Self::Authentication(m) => m.encode(dst),
            Self::BackendKeyData(m) => m.encode(dst),
            Self::ParameterStatus(m) => m.encode(dst),
            Self::ReadyForQuery(m) => m.encode(dst),
            Self::ErrorResponse(m) => m.encode(dst),
            Self::NoticeResponse(m) => m.encode(dst),
            Self::RowDescription(m) => m.encode(dst),
            Self::DataRow(m) => m.encode(dst),
            Self::CommandComplete(m) => m.encode(dst),
            Self::EmptyQueryResponse(m) => m.encode(dst),
            Self::NotificationResponse(m) => m.encode(dst),
            Self::ParseComplete(m) => m.encode(dst),
            Self::BindComplete(m) => m.encode(dst),
            Self::CloseComplete(m) => m.encode(dst),
            Self::NoData(m) => m.encode(dst),
            Self::PortalSuspended(m) => m.encode(dst),
            Self::CopyInResponse(m) => m.encode(dst),
            Self::CopyOutResponse(m) => m.encode(dst),
            Self::CopyBothResponse(m) => m.encode(dst),
            Self::CopyData(m) => m.encode(dst),
            Self::CopyDone(m) => m.encode(dst),
            Self::ParameterDescription(m) => m.encode(dst),
            Self::NegotiateProtocolVersion(m) => m.encode(dst),
            Self::FunctionCallResponse(payload) => put_message(
                dst,
                Some(tag::FUNCTION_CALL_RESPONSE),
                "FunctionCallResponse",
                |dst| {
                    dst.extend_from_slice(payload);
                    Ok(())
                },
            ),
        }
    }
}

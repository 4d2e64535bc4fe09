//! ParameterStatus (`S`): the current value of a run-time parameter.

use bytes::{Bytes, BytesMut};

use super::Message;
use crate::pg::Result;
use crate::pg::tag::backend;
use crate::pg::wire::{Reader, put_cstr};

/// A ParameterStatus message (`server_version`, `client_encoding`,
/// `TimeZone`, ...). The server sends them after authentication and
/// whenever a reported setting changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParameterStatus {
    /// The parameter's name.
    pub name: String,
    /// Its value.
    pub value: String,
}

impl ParameterStatus {
    /// A message for `name = value`.
    pub fn new(name: impl Into<String>, value: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            value: value.into(),
        }
    }
}

impl Message for ParameterStatus {
    const TAG: u8 = backend::PARAMETER_STATUS;
    const NAME: &'static str = "ParameterStatus";

    fn decode_payload(payload: Bytes) -> Result<Self> {
        let mut r = Reader::new(payload, Self::NAME);
        let name = r.cstring()?;
        let value = r.cstring()?;
        r.finish()?;
        Ok(Self { name, value })
    }

    fn encode_payload(&self, dst: &mut BytesMut) -> Result<()> {
        put_cstr(dst, self.name.as_bytes(), Self::NAME)?;
        put_cstr(dst, self.value.as_bytes(), Self::NAME)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pg::messages::test_support::*;

    #[test]
    fn decodes_and_round_trips() {
        const WIRE: &[u8] = b"S\x00\x00\x00\x19client_encoding\x00UTF8\x00";
        let p: ParameterStatus = decode(WIRE).unwrap();
        assert_eq!(p, ParameterStatus::new("client_encoding", "UTF8"));
        assert_eq!(round_trip(&p), WIRE);
        rejects_truncation_and_trailing::<ParameterStatus>(&WIRE[5..]);
    }
}

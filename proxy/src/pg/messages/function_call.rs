//! FunctionCall (`F`): the fast-path interface, calling a function by OID.

use bytes::{BufMut, Bytes, BytesMut};

use super::{Format, Message};
use crate::pg::Result;
use crate::pg::tag::frontend;
use crate::pg::wire::{Reader, put_formats, put_values};

/// A FunctionCall. It bypasses the SQL parser entirely (large objects use
/// it), so the proxy denies it unless a rule allows the function.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FunctionCall {
    /// The function's OID.
    pub function_oid: u32,
    /// Argument formats: none (all text), one (for all) or one per argument.
    pub arg_formats: Vec<Format>,
    /// Argument values; `None` is SQL NULL.
    pub args: Vec<Option<Bytes>>,
    /// The result's format.
    pub result_format: Format,
}

impl Message for FunctionCall {
    const TAG: u8 = frontend::FUNCTION_CALL;
    const NAME: &'static str = "FunctionCall";

    fn decode_payload(payload: Bytes) -> Result<Self> {
        let mut r = Reader::new(payload, Self::NAME);
        let function_oid = r.u32()?;
        let arg_formats = r.formats("argument format code")?;
        let args = r.values("argument value")?;
        if arg_formats.len() > 1 && arg_formats.len() != args.len() {
            return Err(r.invalid("number of argument format codes"));
        }
        let result_format = r.format("result format code")?;
        r.finish()?;
        Ok(Self {
            function_oid,
            arg_formats,
            args,
            result_format,
        })
    }

    fn encode_payload(&self, dst: &mut BytesMut) -> Result<()> {
        dst.put_u32(self.function_oid);
        put_formats(dst, &self.arg_formats, Self::NAME)?;
        put_values(dst, &self.args, Self::NAME)?;
        dst.put_i16(self.result_format.code());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pg::messages::test_support::*;

    /// libpq's `lo_open(16393, INV_READ)` through the fast path (oid 952).
    const WIRE: &[u8] = b"F\x00\x00\x00\x20\x00\x00\x03\xb8\x00\x01\x00\x01\x00\x02\
\x00\x00\x00\x04\x00\x00\x40\x09\x00\x00\x00\x04\x00\x04\x00\x00\x00\x01";

    #[test]
    fn decodes_and_round_trips() {
        let f: FunctionCall = decode(WIRE).unwrap();
        assert_eq!(f.function_oid, 952);
        assert_eq!(f.arg_formats, [Format::Binary]);
        assert_eq!(f.args.len(), 2);
        assert_eq!(f.result_format, Format::Binary);
        assert_eq!(round_trip(&f), WIRE);
        rejects_truncation_and_trailing::<FunctionCall>(&WIRE[5..]);
    }
}

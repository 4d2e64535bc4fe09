//! Bind (`B`): bind parameter values to a prepared statement, making a portal.

use bytes::{Bytes, BytesMut};

use super::{Format, Message};
use crate::pg::Result;
use crate::pg::tag::frontend;
use crate::pg::wire::{Reader, put_cstr, put_formats, put_values};

/// A Bind message. Its values are what an approval covers, so they are kept
/// exactly as sent (views into the frame, not copies).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bind {
    /// The portal to create; empty for the unnamed portal.
    pub portal: String,
    /// The prepared statement; empty for the unnamed statement.
    pub statement: String,
    /// Parameter formats: none (all text), one (for all) or one per value.
    pub param_formats: Vec<Format>,
    /// Parameter values; `None` is SQL NULL.
    pub params: Vec<Option<Bytes>>,
    /// Result column formats, by the same rule as `param_formats`.
    pub result_formats: Vec<Format>,
}

impl Bind {
    /// The format of parameter `index`.
    pub fn param_format(&self, index: usize) -> Format {
        Format::for_index(&self.param_formats, index)
    }

    /// The format of result column `index`.
    pub fn result_format(&self, index: usize) -> Format {
        Format::for_index(&self.result_formats, index)
    }
}

impl Message for Bind {
    const TAG: u8 = frontend::BIND;
    const NAME: &'static str = "Bind";

    fn decode_payload(payload: Bytes) -> Result<Self> {
        let mut r = Reader::new(payload, Self::NAME);
        let portal = r.cstring()?;
        let statement = r.cstring()?;
        let param_formats = r.formats("parameter format code")?;
        let params = r.values("parameter value")?;
        // PostgreSQL refuses any other count ("bind message has N parameter
        // formats but M parameters"); refusing it here too means the proxy
        // never reads a value in another format than the server will.
        if param_formats.len() > 1 && param_formats.len() != params.len() {
            return Err(r.invalid("number of parameter format codes"));
        }
        let result_formats = r.formats("result format code")?;
        r.finish()?;
        Ok(Self {
            portal,
            statement,
            param_formats,
            params,
            result_formats,
        })
    }

    fn encode_payload(&self, dst: &mut BytesMut) -> Result<()> {
        put_cstr(dst, self.portal.as_bytes(), Self::NAME)?;
        put_cstr(dst, self.statement.as_bytes(), Self::NAME)?;
        put_formats(dst, &self.param_formats, Self::NAME)?;
        put_values(dst, &self.params, Self::NAME)?;
        put_formats(dst, &self.result_formats, Self::NAME)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pg::messages::test_support::*;

    /// tokio-postgres binding 42 (binary int4) and NULL to `s0`, binary results.
    const WIRE: &[u8] = b"B\x00\x00\x00\x1e\x00s0\x00\x00\x01\x00\x01\x00\x02\
\x00\x00\x00\x04\x00\x00\x00\x2a\xff\xff\xff\xff\x00\x01\x00\x01";

    #[test]
    fn decodes_values_and_formats() {
        let b: Bind = decode(WIRE).unwrap();
        assert_eq!(b.portal, "");
        assert_eq!(b.statement, "s0");
        assert_eq!(b.param_formats, [Format::Binary]);
        assert_eq!(b.params, [Some(Bytes::from_static(&[0, 0, 0, 42])), None]);
        assert_eq!(b.result_formats, [Format::Binary]);
        assert_eq!(b.param_format(1), Format::Binary);
        assert_eq!(b.result_format(5), Format::Binary);
    }

    #[test]
    fn round_trips() {
        assert_eq!(round_trip(&decode::<Bind>(WIRE).unwrap()), WIRE);
        round_trip(&Bind {
            portal: "p1".into(),
            statement: String::new(),
            param_formats: vec![Format::Text, Format::Binary],
            params: vec![Some(Bytes::from_static(b"")), Some(Bytes::from_static(b"\x01"))],
            result_formats: vec![],
        });
    }

    #[test]
    fn refuses_bad_input() {
        rejects_truncation_and_trailing::<Bind>(&WIRE[5..]);
        // Two formats for one parameter.
        let wire = b"\0\0\x00\x02\x00\x00\x00\x00\x00\x01\x00\x00\x00\x00\x00\x00";
        assert!(Bind::decode_payload(Bytes::from_static(wire)).is_err());
        // Format code 2.
        assert!(Bind::decode_payload(Bytes::from_static(b"\0\0\x00\x01\x00\x02\x00\x00\x00\x00")).is_err());
        // A value length of -2, and one past the end.
        assert!(
            Bind::decode_payload(Bytes::from_static(
                b"\0\0\x00\x00\x00\x01\xff\xff\xff\xfe\x00\x00"
            ))
            .is_err()
        );
        assert!(
            Bind::decode_payload(Bytes::from_static(
                b"\0\0\x00\x00\x00\x01\x00\x00\x00\x09ab\x00\x00"
            ))
            .is_err()
        );
    }
}

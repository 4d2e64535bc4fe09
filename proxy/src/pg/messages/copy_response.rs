//! CopyInResponse (`G`), CopyOutResponse (`H`) and CopyBothResponse (`W`):
//! the server starts a COPY. The three share one layout.

use bytes::{BufMut, Bytes, BytesMut};

use super::{Format, Message};
use crate::pg::Result;
use crate::pg::tag::backend;
use crate::pg::wire::{Reader, put_formats};

/// Reads the shared layout: an Int8 overall format and Int16 column formats.
fn read(payload: Bytes, message: &'static str) -> Result<(Format, Vec<Format>)> {
    let mut r = Reader::new(payload, message);
    let format = Format::from_code(i16::from(r.u8()?)).ok_or_else(|| r.invalid("overall format"))?;
    let column_formats = r.formats("column format code")?;
    r.finish()?;
    Ok((format, column_formats))
}

fn write(dst: &mut BytesMut, format: Format, column_formats: &[Format], message: &'static str) -> Result<()> {
    // Format codes are 0 or 1, so the Int8 cannot overflow.
    dst.put_u8(format.code() as u8);
    put_formats(dst, column_formats, message)
}

macro_rules! copy_response {
    ($(#[$doc:meta])* $name:ident, $tag:expr, $wire_name:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq)]
        pub struct $name {
            /// Text (rows as lines) or binary (COPY's binary format).
            pub format: Format,
            /// The format of each column; all text when `format` is text.
            pub column_formats: Vec<Format>,
        }

        impl Message for $name {
            const TAG: u8 = $tag;
            const NAME: &'static str = $wire_name;

            fn decode_payload(payload: Bytes) -> Result<Self> {
                let (format, column_formats) = read(payload, Self::NAME)?;
                Ok(Self { format, column_formats })
            }

            fn encode_payload(&self, dst: &mut BytesMut) -> Result<()> {
                write(dst, self.format, &self.column_formats, Self::NAME)
            }
        }
    };
}

copy_response!(
    /// A CopyInResponse: the server now takes CopyData from the client
    /// (COPY ... FROM STDIN).
    CopyInResponse,
    backend::COPY_IN_RESPONSE,
    "CopyInResponse"
);

copy_response!(
    /// A CopyOutResponse: CopyData from the server follows (COPY ... TO STDOUT).
    CopyOutResponse,
    backend::COPY_OUT_RESPONSE,
    "CopyOutResponse"
);

copy_response!(
    /// A CopyBothResponse: streaming replication. A relay for agents has no
    /// use for it; it is decoded so the session can refuse it by name.
    CopyBothResponse,
    backend::COPY_BOTH_RESPONSE,
    "CopyBothResponse"
);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pg::messages::test_support::*;

    #[test]
    fn decodes_and_round_trips() {
        // `COPY t (a, b) FROM STDIN` and `COPY t TO STDOUT (FORMAT binary)`.
        const IN: &[u8] = b"G\x00\x00\x00\x0b\x00\x00\x02\x00\x00\x00\x00";
        const OUT: &[u8] = b"H\x00\x00\x00\x09\x01\x00\x01\x00\x01";
        let i: CopyInResponse = decode(IN).unwrap();
        assert_eq!(i.format, Format::Text);
        assert_eq!(i.column_formats, [Format::Text, Format::Text]);
        assert_eq!(round_trip(&i), IN);
        let o: CopyOutResponse = decode(OUT).unwrap();
        assert_eq!(o.format, Format::Binary);
        assert_eq!(round_trip(&o), OUT);
        round_trip(&CopyBothResponse {
            format: Format::Binary,
            column_formats: vec![],
        });
        rejects_truncation_and_trailing::<CopyInResponse>(&IN[5..]);
        assert!(CopyOutResponse::decode_payload(Bytes::from_static(b"\x02\x00\x00")).is_err());
    }
}

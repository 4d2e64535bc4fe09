//! RowDescription (`T`): the columns of the rows that follow.

use bytes::{BufMut, Bytes, BytesMut};

use super::{Format, Message};
use crate::pg::Result;
use crate::pg::tag::backend;
use crate::pg::wire::{Reader, put_count, put_cstr};

/// Bytes of one field description after its name.
const FIELD_FIXED_LEN: usize = 4 + 2 + 4 + 2 + 4 + 2;

/// One column. Masking decides from its name, table and type which cells of
/// every DataRow to rewrite.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldDescription {
    /// The column's name (its alias, if the query gave one).
    pub name: String,
    /// The OID of the table it comes from, 0 for a computed column.
    pub table_oid: u32,
    /// Its attribute number in that table, 0 for a computed column.
    pub column_id: i16,
    /// The OID of its data type.
    pub type_oid: u32,
    /// The type's size (`pg_type.typlen`); negative for variable length.
    pub type_size: i16,
    /// The type modifier (`pg_attribute.atttypmod`).
    pub type_modifier: i32,
    /// The format its values come in.
    pub format: Format,
}

/// A RowDescription message.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RowDescription {
    /// The columns, in order.
    pub fields: Vec<FieldDescription>,
}

impl Message for RowDescription {
    const TAG: u8 = backend::ROW_DESCRIPTION;
    const NAME: &'static str = "RowDescription";

    fn decode_payload(payload: Bytes) -> Result<Self> {
        let mut r = Reader::new(payload, Self::NAME);
        let n = r.count()?;
        let mut fields = Vec::with_capacity(r.capacity(n, 1 + FIELD_FIXED_LEN));
        for _ in 0..n {
            fields.push(FieldDescription {
                name: r.cstring()?,
                table_oid: r.u32()?,
                column_id: r.i16()?,
                type_oid: r.u32()?,
                type_size: r.i16()?,
                type_modifier: r.i32()?,
                format: r.format("format code")?,
            });
        }
        r.finish()?;
        Ok(Self { fields })
    }

    fn encode_payload(&self, dst: &mut BytesMut) -> Result<()> {
        put_count(dst, self.fields.len(), Self::NAME, "more than 65535 fields")?;
        for f in &self.fields {
            put_cstr(dst, f.name.as_bytes(), Self::NAME)?;
            dst.put_u32(f.table_oid);
            dst.put_i16(f.column_id);
            dst.put_u32(f.type_oid);
            dst.put_i16(f.type_size);
            dst.put_i32(f.type_modifier);
            dst.put_i16(f.format.code());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pg::messages::test_support::*;

    /// PostgreSQL 15 describing `SELECT id, password FROM users` (users is OID
    /// 16385; int4 and text).
    const WIRE: &[u8] = b"T\x00\x00\x00\x36\x00\x02\
id\x00\x00\x00\x40\x01\x00\x01\x00\x00\x00\x17\x00\x04\xff\xff\xff\xff\x00\x00\
password\x00\x00\x00\x40\x01\x00\x02\x00\x00\x00\x19\xff\xff\xff\xff\xff\xff\x00\x00";

    #[test]
    fn decodes_and_round_trips() {
        let t: RowDescription = decode(WIRE).unwrap();
        assert_eq!(t.fields.len(), 2);
        assert_eq!(t.fields[0].name, "id");
        assert_eq!(t.fields[0].type_oid, 23);
        assert_eq!(t.fields[0].type_size, 4);
        assert_eq!(t.fields[1].name, "password");
        assert_eq!(t.fields[1].table_oid, 16385);
        assert_eq!(t.fields[1].column_id, 2);
        assert_eq!(t.fields[1].type_oid, 25);
        assert_eq!(t.fields[1].type_size, -1);
        assert_eq!(t.fields[1].format, Format::Text);
        assert_eq!(round_trip(&t), WIRE);
        round_trip(&RowDescription::default());
        rejects_truncation_and_trailing::<RowDescription>(&WIRE[5..]);
    }

    #[test]
    fn a_huge_count_does_not_allocate_for_it() {
        let t = RowDescription::decode_payload(Bytes::from_static(b"\x7f\xff"));
        assert!(t.is_err());
        assert!(RowDescription::decode_payload(Bytes::from_static(b"\xff\xff")).is_err());
    }
}

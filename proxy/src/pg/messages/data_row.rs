//! DataRow (`D`): one row of a result.

use bytes::{BufMut, Bytes, BytesMut};

use super::Message;
use crate::pg::tag::backend;
use crate::pg::wire::{Reader, put_message, put_value};
use crate::pg::{ProtocolError, Result};

/// A DataRow message, kept as its payload: decoding checks every cell's
/// bounds once and allocates nothing, and [`cells`](Self::cells) hands out
/// views into the frame. Results stream through masking row by row without
/// memory growing with the result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataRow {
    /// The payload: column count, then each cell as length and bytes.
    payload: Bytes,
    columns: u16,
}

impl DataRow {
    /// A row of `cells`, where `None` is SQL NULL.
    pub fn from_cells<T: AsRef<[u8]>>(cells: impl IntoIterator<Item = Option<T>>) -> Result<Self> {
        let mut payload = BytesMut::new();
        let columns = write_cells(&mut payload, cells)?;
        Ok(Self {
            payload: payload.freeze(),
            columns,
        })
    }

    /// Appends a whole DataRow frame of `cells` to `dst`, without building a
    /// `DataRow` first: how masking writes a rewritten row.
    pub fn encode_cells<T: AsRef<[u8]>>(
        dst: &mut BytesMut,
        cells: impl IntoIterator<Item = Option<T>>,
    ) -> Result<()> {
        put_message(dst, Some(Self::TAG), Self::NAME, |dst| {
            write_cells(dst, cells).map(drop)
        })
    }

    /// The number of columns.
    pub fn len(&self) -> usize {
        usize::from(self.columns)
    }

    /// Whether the row has no columns (`SELECT;`).
    pub fn is_empty(&self) -> bool {
        self.columns == 0
    }

    /// The cells in column order: `None` for NULL, otherwise a view of the
    /// value's bytes.
    pub fn cells(&self) -> Cells<'_> {
        Cells {
            payload: &self.payload,
            pos: 2,
            left: self.columns,
        }
    }

    /// One cell: `None` past the last column, `Some(None)` for NULL.
    pub fn cell(&self, index: usize) -> Option<Option<Bytes>> {
        self.cells().nth(index)
    }
}

/// Writes the column count and the cells, returning the count.
fn write_cells<T: AsRef<[u8]>>(
    dst: &mut BytesMut,
    cells: impl IntoIterator<Item = Option<T>>,
) -> Result<u16> {
    let count_at = dst.len();
    dst.put_i16(0);
    let mut columns: u16 = 0;
    for cell in cells {
        columns = columns.checked_add(1).ok_or(ProtocolError::CannotEncode {
            message: DataRow::NAME,
            reason: "more than 65535 columns",
        })?;
        put_value(dst, cell.as_ref().map(AsRef::as_ref), DataRow::NAME)?;
    }
    if let Some(word) = dst.get_mut(count_at..count_at + 2) {
        word.copy_from_slice(&columns.to_be_bytes());
    }
    Ok(columns)
}

impl Message for DataRow {
    const TAG: u8 = backend::DATA_ROW;
    const NAME: &'static str = "DataRow";

    fn decode_payload(payload: Bytes) -> Result<Self> {
        let mut r = Reader::new(payload.clone(), Self::NAME);
        let n = r.count()?;
        let columns = u16::try_from(n).map_err(|_| r.invalid("column count"))?;
        for _ in 0..n {
            match r.i32()? {
                -1 => {}
                len => {
                    let len = usize::try_from(len).map_err(|_| r.invalid("value length"))?;
                    r.bytes(len)?;
                }
            }
        }
        r.finish()?;
        Ok(Self { payload, columns })
    }

    fn encode_payload(&self, dst: &mut BytesMut) -> Result<()> {
        dst.put_slice(&self.payload);
        Ok(())
    }
}

/// The cells of a [`DataRow`], in column order.
#[derive(Debug, Clone)]
pub struct Cells<'a> {
    payload: &'a Bytes,
    pos: usize,
    left: u16,
}

impl Iterator for Cells<'_> {
    type Item = Option<Bytes>;

    fn next(&mut self) -> Option<Option<Bytes>> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        // The row was validated when decoded; the checks below only keep a
        // broken invariant from turning into a panic.
        let len = self.payload.get(self.pos..self.pos + 4)?;
        let len = i32::from_be_bytes([len[0], len[1], len[2], len[3]]);
        self.pos += 4;
        if len < 0 {
            return Some(None);
        }
        let start = self.pos;
        let end = start
            .checked_add(len as usize)
            .filter(|&end| end <= self.payload.len())?;
        self.pos = end;
        Some(Some(self.payload.slice(start..end)))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (0, Some(usize::from(self.left)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pg::messages::test_support::*;

    /// PostgreSQL 15 sending the row `(1, 'hunter2', NULL)` in text.
    const WIRE: &[u8] = b"D\x00\x00\x00\x1a\x00\x03\x00\x00\x00\x011\x00\x00\x00\x07hunter2\xff\xff\xff\xff";

    #[test]
    fn decodes_cells_as_views() {
        let row: DataRow = decode(WIRE).unwrap();
        assert_eq!(row.len(), 3);
        let cells: Vec<_> = row.cells().collect();
        assert_eq!(
            cells,
            [
                Some(Bytes::from_static(b"1")),
                Some(Bytes::from_static(b"hunter2")),
                None
            ]
        );
        assert_eq!(row.cell(1), Some(Some(Bytes::from_static(b"hunter2"))));
        assert_eq!(row.cell(2), Some(None));
        assert_eq!(row.cell(3), None);
        assert_eq!(round_trip(&row), WIRE);
    }

    #[test]
    fn builds_rows() {
        let row = DataRow::from_cells([Some(&b"1"[..]), Some(b"hunter2"), None]).unwrap();
        assert_eq!(row.to_frame().unwrap().raw().as_ref(), WIRE);
        let mut out = BytesMut::new();
        DataRow::encode_cells(&mut out, [Some("1"), Some("hunter2"), None]).unwrap();
        assert_eq!(&out[..], WIRE);
        let empty = DataRow::from_cells(Vec::<Option<&[u8]>>::new()).unwrap();
        assert!(empty.is_empty());
        round_trip(&empty);
        let too_many = std::iter::repeat_n(None::<&[u8]>, 65_536);
        assert!(DataRow::from_cells(too_many).is_err());
    }

    #[test]
    fn refuses_bad_input() {
        rejects_truncation_and_trailing::<DataRow>(&WIRE[5..]);
        // A count past the end, a length of -2, a length past the end.
        assert!(DataRow::decode_payload(Bytes::from_static(b"\xff\xff")).is_err());
        assert!(DataRow::decode_payload(Bytes::from_static(b"\x00\x01\xff\xff\xff\xfe")).is_err());
        assert!(DataRow::decode_payload(Bytes::from_static(b"\x00\x01\x7f\xff\xff\xffab")).is_err());
    }
}

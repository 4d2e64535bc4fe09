//! Bounds-checked reading and writing of the protocol's primitive types.
//!
//! Every read checks the remaining length first and every count is bounded
//! by the bytes left, so a hostile length can neither index past the end nor
//! make the proxy allocate more than the frame it already holds.

use bytes::{BufMut, Bytes, BytesMut};

use super::error::{ProtocolError, Result};
use super::messages::Format;

/// A cursor over one message payload. Slices it returns are views of the
/// payload (`Bytes::slice`), not copies.
pub(crate) struct Reader {
    buf: Bytes,
    pos: usize,
    message: &'static str,
}

impl Reader {
    /// Reads `buf`, naming `message` in every error.
    pub(crate) fn new(buf: Bytes, message: &'static str) -> Self {
        Self { buf, pos: 0, message }
    }

    pub(crate) fn remaining(&self) -> usize {
        self.buf.len().saturating_sub(self.pos)
    }

    fn truncated(&self) -> ProtocolError {
        ProtocolError::Truncated {
            message: self.message,
        }
    }

    pub(crate) fn invalid(&self, field: &'static str) -> ProtocolError {
        ProtocolError::InvalidField {
            message: self.message,
            field,
        }
    }

    /// The next `n` bytes as a view.
    pub(crate) fn bytes(&mut self, n: usize) -> Result<Bytes> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&end| end <= self.buf.len())
            .ok_or_else(|| self.truncated())?;
        let out = self.buf.slice(self.pos..end);
        self.pos = end;
        Ok(out)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N]> {
        let end = self.pos.checked_add(N).ok_or_else(|| self.truncated())?;
        let slice = self.buf.get(self.pos..end).ok_or_else(|| self.truncated())?;
        let out = <[u8; N]>::try_from(slice).map_err(|_| self.truncated())?;
        self.pos = end;
        Ok(out)
    }

    pub(crate) fn u8(&mut self) -> Result<u8> {
        Ok(self.array::<1>()?[0])
    }

    pub(crate) fn i16(&mut self) -> Result<i16> {
        self.array().map(i16::from_be_bytes)
    }

    pub(crate) fn i32(&mut self) -> Result<i32> {
        self.array().map(i32::from_be_bytes)
    }

    pub(crate) fn u32(&mut self) -> Result<u32> {
        self.array().map(u32::from_be_bytes)
    }

    /// A NUL-terminated string as raw bytes, without the NUL.
    pub(crate) fn cstr_bytes(&mut self) -> Result<Bytes> {
        let rest = self.buf.get(self.pos..).unwrap_or_default();
        let len = rest
            .iter()
            .position(|&b| b == 0)
            .ok_or_else(|| self.truncated())?;
        let out = self.bytes(len)?;
        self.pos += 1; // the NUL, known to be there
        Ok(out)
    }

    /// A NUL-terminated UTF-8 string.
    pub(crate) fn cstring(&mut self) -> Result<String> {
        let raw = self.cstr_bytes()?;
        String::from_utf8(raw.to_vec()).map_err(|_| ProtocolError::InvalidUtf8 {
            message: self.message,
        })
    }

    /// Everything left, as a view.
    pub(crate) fn rest(&mut self) -> Bytes {
        let out = self.buf.slice(self.pos.min(self.buf.len())..);
        self.pos = self.buf.len();
        out
    }

    /// An Int16 item count. PostgreSQL reads these unsigned (a statement
    /// may have up to 65535 parameters), and so does the proxy.
    pub(crate) fn count(&mut self) -> Result<usize> {
        self.array().map(u16::from_be_bytes).map(usize::from)
    }

    /// How many items to preallocate for `count` items of at least
    /// `min_size` bytes each: never more than the bytes left could hold.
    pub(crate) fn capacity(&self, count: usize, min_size: usize) -> usize {
        count.min(self.remaining() / min_size.max(1))
    }

    /// An Int16 format code.
    pub(crate) fn format(&mut self, field: &'static str) -> Result<Format> {
        let code = self.i16()?;
        Format::from_code(code).ok_or_else(|| self.invalid(field))
    }

    /// An Int16 count followed by that many format codes.
    pub(crate) fn formats(&mut self, field: &'static str) -> Result<Vec<Format>> {
        let n = self.count()?;
        let mut out = Vec::with_capacity(self.capacity(n, 2));
        for _ in 0..n {
            out.push(self.format(field)?);
        }
        Ok(out)
    }

    /// A value with an Int32 length prefix, where -1 means NULL.
    pub(crate) fn value(&mut self, field: &'static str) -> Result<Option<Bytes>> {
        match self.i32()? {
            -1 => Ok(None),
            len => {
                let len = usize::try_from(len).map_err(|_| self.invalid(field))?;
                self.bytes(len).map(Some)
            }
        }
    }

    /// An Int16 count followed by that many length-prefixed values.
    pub(crate) fn values(&mut self, field: &'static str) -> Result<Vec<Option<Bytes>>> {
        let n = self.count()?;
        let mut out = Vec::with_capacity(self.capacity(n, 4));
        for _ in 0..n {
            out.push(self.value(field)?);
        }
        Ok(out)
    }

    /// Ends the read: a message must not go on after its last field.
    pub(crate) fn finish(self) -> Result<()> {
        match self.remaining() {
            0 => Ok(()),
            extra => Err(ProtocolError::TrailingBytes {
                message: self.message,
                extra,
            }),
        }
    }
}

/// A NUL-terminated string. A NUL inside would end the string early on the
/// wire and shift every field after it, so it is refused.
pub(crate) fn put_cstr(dst: &mut BytesMut, s: &[u8], message: &'static str) -> Result<()> {
    if s.contains(&0) {
        return Err(ProtocolError::InteriorNul { message });
    }
    dst.put_slice(s);
    dst.put_u8(0);
    Ok(())
}

/// An Int16 item count, unsigned as PostgreSQL reads it.
pub(crate) fn put_count(
    dst: &mut BytesMut,
    n: usize,
    message: &'static str,
    reason: &'static str,
) -> Result<()> {
    let n = u16::try_from(n).map_err(|_| ProtocolError::CannotEncode { message, reason })?;
    dst.put_u16(n);
    Ok(())
}

/// An Int16 count followed by that many format codes.
pub(crate) fn put_formats(dst: &mut BytesMut, formats: &[Format], message: &'static str) -> Result<()> {
    put_count(dst, formats.len(), message, "more than 65535 format codes")?;
    for format in formats {
        dst.put_i16(format.code());
    }
    Ok(())
}

/// A value with an Int32 length prefix, -1 for NULL.
pub(crate) fn put_value(dst: &mut BytesMut, value: Option<&[u8]>, message: &'static str) -> Result<()> {
    match value {
        None => dst.put_i32(-1),
        Some(v) => {
            let len = i32::try_from(v.len()).map_err(|_| ProtocolError::CannotEncode {
                message,
                reason: "a value is over 2 GiB",
            })?;
            dst.put_i32(len);
            dst.put_slice(v);
        }
    }
    Ok(())
}

/// An Int16 count followed by that many length-prefixed values.
pub(crate) fn put_values(dst: &mut BytesMut, values: &[Option<Bytes>], message: &'static str) -> Result<()> {
    put_count(dst, values.len(), message, "more than 65535 values")?;
    for value in values {
        put_value(dst, value.as_deref(), message)?;
    }
    Ok(())
}

/// Writes one message: `tag` (if any), a length word patched in at the end,
/// and whatever `body` writes. On error `dst` is left as it was, so a failed
/// encode never leaves half a message in an output buffer.
pub(crate) fn put_message(
    dst: &mut BytesMut,
    tag: Option<u8>,
    message: &'static str,
    body: impl FnOnce(&mut BytesMut) -> Result<()>,
) -> Result<()> {
    let start = dst.len();
    if let Some(tag) = tag {
        dst.put_u8(tag);
    }
    let len_at = dst.len();
    dst.put_i32(0);
    let len = body(dst).and_then(|()| {
        i32::try_from(dst.len() - len_at).map_err(|_| ProtocolError::CannotEncode {
            message,
            reason: "the message is over 2 GiB",
        })
    });
    match len {
        Ok(len) => {
            if let Some(word) = dst.get_mut(len_at..len_at + 4) {
                word.copy_from_slice(&len.to_be_bytes());
            }
            Ok(())
        }
        Err(e) => {
            dst.truncate(start);
            Err(e)
        }
    }
}

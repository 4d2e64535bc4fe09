//! CommandComplete (`C`): a statement finished.

use bytes::{Bytes, BytesMut};

use super::Message;
use crate::pg::Result;
use crate::pg::tag::backend;
use crate::pg::wire::{Reader, put_cstr};

/// A CommandComplete message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandComplete {
    /// The command tag: `SELECT 3`, `INSERT 0 1`, `BEGIN`, ...
    pub tag: String,
}

impl CommandComplete {
    /// A message with `tag`.
    pub fn new(tag: impl Into<String>) -> Self {
        Self { tag: tag.into() }
    }

    /// The rows the statement returned or changed, for the tags that count
    /// them (SELECT, INSERT, UPDATE, DELETE, MERGE, COPY, FETCH, MOVE): the
    /// tag's last word. Recording logs it per statement.
    pub fn rows(&self) -> Option<u64> {
        let (command, rest) = self.tag.split_once(' ')?;
        let counts = matches!(
            command,
            "SELECT" | "INSERT" | "UPDATE" | "DELETE" | "MERGE" | "COPY" | "FETCH" | "MOVE"
        );
        if !counts {
            return None;
        }
        rest.rsplit(' ').next()?.parse().ok()
    }
}

impl Message for CommandComplete {
    const TAG: u8 = backend::COMMAND_COMPLETE;
    const NAME: &'static str = "CommandComplete";

    fn decode_payload(payload: Bytes) -> Result<Self> {
        let mut r = Reader::new(payload, Self::NAME);
        let tag = r.cstring()?;
        r.finish()?;
        Ok(Self { tag })
    }

    fn encode_payload(&self, dst: &mut BytesMut) -> Result<()> {
        put_cstr(dst, self.tag.as_bytes(), Self::NAME)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pg::messages::test_support::*;

    #[test]
    fn decodes_and_round_trips() {
        const WIRE: &[u8] = b"C\x00\x00\x00\x0dSELECT 1\x00";
        let c: CommandComplete = decode(WIRE).unwrap();
        assert_eq!(c.tag, "SELECT 1");
        assert_eq!(round_trip(&c), WIRE);
        rejects_truncation_and_trailing::<CommandComplete>(&WIRE[5..]);
    }

    #[test]
    fn counts_rows() {
        assert_eq!(CommandComplete::new("SELECT 3").rows(), Some(3));
        assert_eq!(CommandComplete::new("INSERT 0 5").rows(), Some(5));
        assert_eq!(CommandComplete::new("UPDATE 0").rows(), Some(0));
        assert_eq!(CommandComplete::new("COPY 1000000").rows(), Some(1_000_000));
        assert_eq!(CommandComplete::new("BEGIN").rows(), None);
        assert_eq!(CommandComplete::new("CREATE TABLE").rows(), None);
        assert_eq!(CommandComplete::new("SELECT x").rows(), None);
    }
}

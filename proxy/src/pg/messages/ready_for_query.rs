//! ReadyForQuery (`Z`): the server waits for the next query.

use bytes::{BufMut, Bytes, BytesMut};

use super::Message;
use crate::pg::Result;
use crate::pg::tag::backend;
use crate::pg::wire::Reader;

/// Where the session stands with respect to transactions. The proxy tracks
/// it so that a refusal inside a transaction block leaves client and server
/// agreeing that the block failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TransactionStatus {
    /// Not in a transaction block (`I`).
    Idle,
    /// In a transaction block (`T`).
    InTransaction,
    /// In a failed transaction block; statements are refused until it ends (`E`).
    Failed,
}

impl TransactionStatus {
    /// The wire byte.
    pub fn code(self) -> u8 {
        match self {
            Self::Idle => b'I',
            Self::InTransaction => b'T',
            Self::Failed => b'E',
        }
    }
}

/// A ReadyForQuery message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ReadyForQuery {
    /// The transaction status.
    pub status: TransactionStatus,
}

impl ReadyForQuery {
    /// A message with `status`.
    pub fn new(status: TransactionStatus) -> Self {
        Self { status }
    }
}

impl Message for ReadyForQuery {
    const TAG: u8 = backend::READY_FOR_QUERY;
    const NAME: &'static str = "ReadyForQuery";

    fn decode_payload(payload: Bytes) -> Result<Self> {
        let mut r = Reader::new(payload, Self::NAME);
        let status = match r.u8()? {
            b'I' => TransactionStatus::Idle,
            b'T' => TransactionStatus::InTransaction,
            b'E' => TransactionStatus::Failed,
            _ => return Err(r.invalid("transaction status")),
        };
        r.finish()?;
        Ok(Self { status })
    }

    fn encode_payload(&self, dst: &mut BytesMut) -> Result<()> {
        dst.put_u8(self.status.code());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pg::messages::test_support::*;

    #[test]
    fn decodes_and_round_trips() {
        for (byte, status) in [
            (b'I', TransactionStatus::Idle),
            (b'T', TransactionStatus::InTransaction),
            (b'E', TransactionStatus::Failed),
        ] {
            let wire = [b'Z', 0, 0, 0, 5, byte];
            assert_eq!(decode::<ReadyForQuery>(&wire).unwrap().status, status);
            assert_eq!(round_trip(&ReadyForQuery::new(status)), wire);
        }
        rejects_truncation_and_trailing::<ReadyForQuery>(b"I");
        assert!(decode::<ReadyForQuery>(b"Z\x00\x00\x00\x05X").is_err());
    }
}

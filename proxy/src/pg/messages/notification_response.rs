//! NotificationResponse (`A`): a NOTIFY on a channel the session listens to.

use bytes::{BufMut, Bytes, BytesMut};

use super::Message;
use crate::pg::Result;
use crate::pg::tag::backend;
use crate::pg::wire::{Reader, put_cstr};

/// A NotificationResponse. It can arrive at any time, even between the
/// messages of a query's result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotificationResponse {
    /// The notifying backend's process id.
    pub process_id: i32,
    /// The channel.
    pub channel: String,
    /// The payload, empty when NOTIFY gave none.
    pub payload: String,
}

impl Message for NotificationResponse {
    const TAG: u8 = backend::NOTIFICATION_RESPONSE;
    const NAME: &'static str = "NotificationResponse";

    fn decode_payload(payload: Bytes) -> Result<Self> {
        let mut r = Reader::new(payload, Self::NAME);
        let process_id = r.i32()?;
        let channel = r.cstring()?;
        let payload = r.cstring()?;
        r.finish()?;
        Ok(Self {
            process_id,
            channel,
            payload,
        })
    }

    fn encode_payload(&self, dst: &mut BytesMut) -> Result<()> {
        dst.put_i32(self.process_id);
        put_cstr(dst, self.channel.as_bytes(), Self::NAME)?;
        put_cstr(dst, self.payload.as_bytes(), Self::NAME)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pg::messages::test_support::*;

    #[test]
    fn decodes_and_round_trips() {
        const WIRE: &[u8] = b"A\x00\x00\x00\x16\x00\x00\x30\x39orders\x00new 42\x00";
        let n: NotificationResponse = decode(WIRE).unwrap();
        assert_eq!(n.process_id, 12345);
        assert_eq!(n.channel, "orders");
        assert_eq!(n.payload, "new 42");
        assert_eq!(round_trip(&n), WIRE);
        rejects_truncation_and_trailing::<NotificationResponse>(&WIRE[5..]);
    }
}

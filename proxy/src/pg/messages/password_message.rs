//! PasswordMessage (`p`): a password, here the caller's bearer token.

use std::fmt;

use bytes::{Bytes, BytesMut};

use super::Message;
use crate::pg::Result;
use crate::pg::tag::frontend;
use crate::pg::wire::{Reader, put_cstr};

/// A PasswordMessage, answering AuthenticationCleartextPassword (the client
/// presents its token) or AuthenticationMD5Password (the proxy upstream).
///
/// `Debug` never shows the password.
#[derive(Clone, PartialEq, Eq)]
pub struct PasswordMessage {
    /// The password as sent, without its terminator.
    pub password: Bytes,
}

impl PasswordMessage {
    /// A message carrying `password`.
    pub fn new(password: impl Into<Bytes>) -> Self {
        Self {
            password: password.into(),
        }
    }

    /// The password as text, when it is UTF-8 (tokens always are).
    pub fn as_str(&self) -> Option<&str> {
        std::str::from_utf8(&self.password).ok()
    }
}

impl fmt::Debug for PasswordMessage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PasswordMessage")
            .field("password", &"<redacted>")
            .finish()
    }
}

impl Message for PasswordMessage {
    const TAG: u8 = frontend::PASSWORD;
    const NAME: &'static str = "PasswordMessage";

    fn decode_payload(payload: Bytes) -> Result<Self> {
        let mut r = Reader::new(payload, Self::NAME);
        let password = r.cstr_bytes()?;
        r.finish()?;
        Ok(Self { password })
    }

    fn encode_payload(&self, dst: &mut BytesMut) -> Result<()> {
        put_cstr(dst, &self.password, Self::NAME)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pg::messages::test_support::*;

    #[test]
    fn decodes_and_round_trips() {
        const WIRE: &[u8] = b"p\x00\x00\x00\x0deyJhbGci\x00";
        let p: PasswordMessage = decode(WIRE).unwrap();
        assert_eq!(p.as_str(), Some("eyJhbGci"));
        assert_eq!(round_trip(&p), WIRE);
        rejects_truncation_and_trailing::<PasswordMessage>(&WIRE[5..]);
    }

    #[test]
    fn debug_hides_the_password() {
        let shown = format!("{:?}", PasswordMessage::new("hunter2"));
        assert!(!shown.contains("hunter2"), "{shown}");
    }
}

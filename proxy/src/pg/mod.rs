//! The PostgreSQL v3 wire protocol, as the relay needs it.
//!
//! Gatehouse forwards the client's bytes, not a re-encoding of them: a
//! [`Frame`] keeps the bytes it was read as, and the relay writes exactly
//! those bytes on. Messages are decoded from a frame only to inspect them
//! (a copy for policy, masking and recording), and encoded only for what the
//! proxy says itself: refusals, notices, the startup and authentication it
//! performs upstream with the credential only it holds.
//!
//! - [`frame`]: the tagged frame and its codec, with a maximum length per
//!   message type ([`limits`]), so no length prefix is trusted unbounded.
//! - [`startup`]: the untagged packets a connection opens with
//!   (StartupMessage, SSLRequest, GSSENCRequest, CancelRequest).
//! - [`messages`]: one small file per message the proxy inspects or builds.
//! - [`error`]: one typed error for every decoding failure, which becomes an
//!   ErrorResponse (SQLSTATE 08P01) for the client.
//! - `fuzz` (tests and the `fuzzing` feature): the bodies of the cargo-fuzz
//!   targets in `proxy/fuzz`, whose committed corpus the tests replay.
//!
//! The codec is our own rather than `pgwire`'s: that crate's server answers
//! queries itself, while a relay must pass every frame through untouched.

pub mod error;
pub mod frame;
#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzz;
pub mod limits;
pub mod messages;
pub mod sqlstate;
pub mod startup;
pub mod tag;
mod wire;

#[cfg(test)]
mod tests;

pub use error::{ProtocolError, Result};
pub use frame::{Frame, FrameCodec};
pub use limits::{Direction, FrameLimits};
pub use messages::{BackendMessage, FrontendMessage, Message};
pub use startup::{
    CancelRequest, ProtocolVersion, StartupCodec, StartupMessage, StartupPacket, read_startup_packet,
};

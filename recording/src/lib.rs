//! Gatehouse session recordings: what a session did, as a chain of events in
//! signed chunks, written by the proxy and read by `kubectl gatehouse`.
//!
//! - [`format`]: the events, the manifest, hashing and signing (the format
//!   is documented for other tools in `docs/recording-format.md`);
//! - [`chunk`]: gzip-compressed JSON lines;
//! - [`verify`]: signature, digests and chain, with the place of a failure;
//! - [`store`]: where recordings live, S3 or a local folder;
//! - [`spool`] and [`uploader`]: the proxy's side, events to local disk
//!   first, then to the store.

pub mod chunk;
pub mod format;
pub mod spool;
pub mod store;
pub mod uploader;
pub mod verify;

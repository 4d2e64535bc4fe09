//! `verify`: whether a session is exactly what the gateway recorded and
//! signed, checked as `docs/recording-format.md` describes, plus its place:
//! the folder must be the one the signed manifest names.

use std::{collections::BTreeMap, io::Write, path::Path};

use ed25519_dalek::VerifyingKey;
use gatehouse_recording::{format::read_verifying_key, verify::Verified};

use crate::{
    Error, Result,
    recordings::{Folder, Recordings},
    text,
};

/// Verifies a session (its id or folder key) against the gateway's public
/// key (SPKI PEM) and says so on `out`.
pub async fn run(
    recordings: &Recordings,
    session: &str,
    public_key: &Path,
    out: &mut dyn Write,
) -> Result<()> {
    // The key first: a wrong path is a usage error, whatever the store holds.
    let key = read_verifying_key(public_key)?;
    let folder = recordings.find(session).await?;
    let objects = recordings.objects(&folder).await?;
    let verified = check(recordings.prefix(), &folder, &objects, &key)?;
    writeln!(
        out,
        "verified: {} — {} events in {} chunks, signed by key {}",
        text::line(&verified.manifest.session),
        verified.events.len(),
        verified.manifest.chunks.len(),
        verified.manifest.key_id
    )?;
    Ok(())
}

/// Verifies a folder's objects, and that the folder is where the signed
/// manifest says the session belongs.
pub fn check(
    prefix: &str,
    folder: &Folder,
    objects: &BTreeMap<String, Vec<u8>>,
    key: &VerifyingKey,
) -> Result<Verified> {
    let verified = gatehouse_recording::verify::verify(objects, key)?;
    match folder.misplaced(prefix, &verified.manifest) {
        Some(signed) => Err(Error::Misfiled {
            folder: folder.key.clone(),
            signed,
        }),
        None => Ok(verified),
    }
}

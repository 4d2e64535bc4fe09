//! The sessions a store holds, found by their folders
//! (`<prefix>/<namespace>/<connection>/<yyyy>/<mm>/<dd>/<session>/<object>`),
//! and the objects of one session.

use std::collections::BTreeMap;

use futures::{StreamExt as _, TryStreamExt as _};
use gatehouse_recording::{
    format::{Manifest, session_folder},
    store::Store,
};

use crate::{Error, Result};

/// How many objects are fetched at once (S3 round trips overlap).
const CONCURRENT_GETS: usize = 16;

/// A store of recordings and the key prefix they are under.
#[derive(Debug, Clone)]
pub struct Recordings {
    store: Store,
    prefix: String,
    description: String,
}

/// A session's folder, as the store lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Folder {
    /// The folder's key, prefix included, without a trailing `/`.
    pub key: String,
    /// The Connection's namespace, from the key.
    pub namespace: String,
    /// The Connection's name, from the key.
    pub connection: String,
    /// The session id, from the key.
    pub session: String,
    /// The objects in the folder (`manifest.json`, `chunk-000001.jsonl.gz`,
    /// ...), by name within the folder, sorted.
    pub objects: Vec<String>,
}

impl Folder {
    /// Whether the folder holds an object of that name.
    pub fn has(&self, name: &str) -> bool {
        self.objects.iter().any(|o| o == name)
    }

    /// The chunks in the folder, in order (their names sort by number).
    pub fn chunks(&self) -> impl Iterator<Item = &str> {
        self.objects
            .iter()
            .map(String::as_str)
            .filter(|name| is_chunk(name))
    }

    /// Where a manifest says its session belongs, when that is not this
    /// folder: a signed session copied into another session's place still
    /// verifies, so the place is checked against what was signed.
    pub fn misplaced(&self, prefix: &str, manifest: &Manifest) -> Option<String> {
        let signed = session_folder(prefix, &manifest.connection, &manifest.session);
        (signed != self.key).then_some(signed)
    }
}

/// Whether an object name is a chunk's.
pub fn is_chunk(name: &str) -> bool {
    name.starts_with("chunk-") && name.ends_with(".jsonl.gz") && !name.contains('/')
}

impl Recordings {
    /// The recordings in `store` under `prefix`; `description` names the
    /// store in messages (`folder /var/recordings`, `bucket b`).
    pub fn new(store: Store, prefix: &str, description: String) -> Recordings {
        Recordings {
            store,
            prefix: prefix.trim_matches('/').to_owned(),
            description,
        }
    }

    /// The key prefix, without leading or trailing `/`.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Every session folder under the prefix, sorted by key.
    pub async fn folders(&self) -> Result<Vec<Folder>> {
        Ok(group(&self.prefix, self.store.list(&self.prefix).await?))
    }

    /// The folder of a session, given its id or its folder's key.
    pub async fn find(&self, session: &str) -> Result<Folder> {
        let not_found = || Error::NotFound {
            session: session.to_owned(),
            store: self.description.clone(),
        };
        let wanted = session.trim_matches('/');
        if wanted.is_empty() {
            return Err(not_found());
        }
        if wanted.contains('/') {
            // A folder key, with or without the prefix.
            let mut candidates = vec![wanted.to_owned()];
            if !self.prefix.is_empty() {
                candidates.push(format!("{}/{wanted}", self.prefix));
            }
            for key in candidates {
                let listed = self.store.list(&key).await?;
                if let Some(folder) = group(&self.prefix, listed).into_iter().find(|f| f.key == key) {
                    return Ok(folder);
                }
            }
            return Err(not_found());
        }
        let mut matches: Vec<Folder> = self
            .folders()
            .await?
            .into_iter()
            .filter(|f| f.session == wanted)
            .collect();
        match matches.len() {
            0 => Err(not_found()),
            1 => Ok(matches.remove(0)),
            _ => Err(Error::Ambiguous {
                session: wanted.to_owned(),
                folders: matches.into_iter().map(|f| f.key).collect(),
            }),
        }
    }

    /// One object of a folder, or `None` when it is gone.
    pub async fn get(&self, folder: &Folder, name: &str) -> Result<Option<Vec<u8>>> {
        Ok(self.store.get(&format!("{}/{name}", folder.key)).await?)
    }

    /// Every object of a folder, by name within the folder, as
    /// [`gatehouse_recording::verify::verify`] takes them. An object removed
    /// since the listing is left out.
    pub async fn objects(&self, folder: &Folder) -> Result<BTreeMap<String, Vec<u8>>> {
        let fetched: Vec<(String, Option<Vec<u8>>)> = futures::stream::iter(&folder.objects)
            .map(|name| async move { Ok::<_, Error>((name.clone(), self.get(folder, name).await?)) })
            .buffered(CONCURRENT_GETS)
            .try_collect()
            .await?;
        Ok(fetched
            .into_iter()
            .filter_map(|(name, bytes)| Some((name, bytes?)))
            .collect())
    }
}

/// Groups keys into session folders. Keys that are not in a session folder
/// under `prefix` (other files, a folder that is not a date) are left out.
pub fn group(prefix: &str, keys: impl IntoIterator<Item = String>) -> Vec<Folder> {
    let prefix = prefix.trim_matches('/');
    let mut folders: BTreeMap<String, Folder> = BTreeMap::new();
    for key in keys {
        let relative = if prefix.is_empty() {
            Some(key.as_str())
        } else {
            key.strip_prefix(prefix).and_then(|rest| rest.strip_prefix('/'))
        };
        let Some(relative) = relative else { continue };
        let parts: Vec<&str> = relative.splitn(7, '/').collect();
        let [namespace, connection, year, month, day, session, name] = parts[..] else {
            continue;
        };
        let dated = digits(year, 4) && digits(month, 2) && digits(day, 2);
        if !dated || [namespace, connection, session, name].contains(&"") {
            continue;
        }
        let folder_key = &key[..key.len() - name.len() - 1];
        folders
            .entry(folder_key.to_owned())
            .or_insert_with(|| Folder {
                key: folder_key.to_owned(),
                namespace: namespace.to_owned(),
                connection: connection.to_owned(),
                session: session.to_owned(),
                objects: Vec::new(),
            })
            .objects
            .push(name.to_owned());
    }
    let mut folders: Vec<Folder> = folders.into_values().collect();
    for folder in &mut folders {
        folder.objects.sort();
    }
    folders
}

fn digits(part: &str, len: usize) -> bool {
    part.len() == len && part.bytes().all(|b| b.is_ascii_digit())
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "20261128T175300Z-0011223344556677";

    fn keys(list: &[&str]) -> Vec<String> {
        list.iter().map(|k| (*k).to_owned()).collect()
    }

    #[test]
    fn keys_group_into_session_folders() {
        let folders = group(
            "rec/",
            keys(&[
                &format!("rec/shop/orders-db/2026/11/28/{ID}/manifest.json"),
                &format!("rec/shop/orders-db/2026/11/28/{ID}/chunk-000002.jsonl.gz"),
                &format!("rec/shop/orders-db/2026/11/28/{ID}/chunk-000001.jsonl.gz"),
                "rec/shop/orders-db/2026/11/29/other/chunk-000001.jsonl.gz",
                // Not session folders: elsewhere, too shallow, not a date.
                &format!("other/shop/orders-db/2026/11/28/{ID}/manifest.json"),
                "rec/README.txt",
                &format!("rec/shop/orders-db/2026/xx/28/{ID}/manifest.json"),
                "recordings/shop/orders-db/2026/11/28/x/manifest.json",
            ]),
        );
        assert_eq!(folders.len(), 2, "{folders:#?}");
        let first = &folders[0];
        assert_eq!(first.key, format!("rec/shop/orders-db/2026/11/28/{ID}"));
        assert_eq!(
            (first.namespace.as_str(), first.connection.as_str()),
            ("shop", "orders-db")
        );
        assert_eq!(first.session, ID);
        assert_eq!(
            first.objects,
            ["chunk-000001.jsonl.gz", "chunk-000002.jsonl.gz", "manifest.json"]
        );
        assert_eq!(first.chunks().count(), 2);
        assert!(first.has("manifest.json"));
        assert!(!folders[1].has("manifest.json"));
    }

    #[test]
    fn without_a_prefix_every_key_is_relative() {
        let folders = group("", keys(&[&format!("a/b/2026/11/28/{ID}/x/y")]));
        assert_eq!(folders.len(), 1);
        // An object below the folder keeps its path: verify reports it.
        assert_eq!(folders[0].objects, ["x/y"]);
    }
}

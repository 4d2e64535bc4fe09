//! Where recordings live: an S3-compatible bucket (aws-sdk-s3, with an
//! endpoint override and path-style addressing for servers other than AWS)
//! or a local folder. Keys are `/`-separated paths; in a folder they are
//! files under it.

use std::path::{Path, PathBuf};

use aws_sdk_s3::{
    config::{BehaviorVersion, Credentials, Region},
    primitives::ByteStream,
    types::{CompletedMultipartUpload, CompletedPart},
};

/// Objects larger than this go up in parts of this size.
pub const MULTIPART_PART: usize = 8 << 20;

/// How to reach a bucket.
#[derive(Debug, Clone)]
pub struct S3Settings {
    /// `https://...`; `None` for AWS itself.
    pub endpoint: Option<String>,
    /// The region.
    pub region: String,
    /// The bucket.
    pub bucket: String,
    /// Path-style addressing (`endpoint/bucket/key`), which most
    /// S3-compatible servers want.
    pub path_style: bool,
    /// Access key id and secret key.
    pub access_key_id: String,
    /// The secret key.
    pub secret_access_key: String,
}

/// A recording store.
#[derive(Debug, Clone)]
pub enum Store {
    /// Files under a folder.
    Local(PathBuf),
    /// Objects in a bucket.
    S3 {
        /// The client.
        client: aws_sdk_s3::Client,
        /// The bucket.
        bucket: String,
    },
}

/// Why the store failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A local file operation failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// An S3 request failed.
    #[error("S3 {operation} {key}: {message}")]
    S3 {
        /// What was asked.
        operation: &'static str,
        /// The key.
        key: String,
        /// What the client said.
        message: String,
    },
    /// A key that would leave the folder.
    #[error("key {0:?} is not a plain relative path")]
    BadKey(String),
}

fn s3_error(operation: &'static str, key: &str, e: impl std::error::Error) -> StoreError {
    StoreError::S3 {
        operation,
        key: key.to_owned(),
        message: aws_sdk_s3::error::DisplayErrorContext(e).to_string(),
    }
}

impl Store {
    /// A store in a bucket.
    pub fn s3(settings: &S3Settings) -> Store {
        let mut config = aws_sdk_s3::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new(settings.region.clone()))
            .credentials_provider(Credentials::new(
                &settings.access_key_id,
                &settings.secret_access_key,
                None,
                None,
                "gatehouse",
            ))
            .force_path_style(settings.path_style);
        if let Some(endpoint) = &settings.endpoint {
            config = config.endpoint_url(endpoint);
        }
        Store::S3 {
            client: aws_sdk_s3::Client::from_conf(config.build()),
            bucket: settings.bucket.clone(),
        }
    }

    fn path(root: &Path, key: &str) -> Result<PathBuf, StoreError> {
        let clean = key
            .split('/')
            .all(|part| !part.is_empty() && part != "." && part != "..");
        if !clean {
            return Err(StoreError::BadKey(key.to_owned()));
        }
        Ok(root.join(key))
    }

    /// Stores `bytes` under `key`, replacing what was there.
    pub async fn put(&self, key: &str, bytes: Vec<u8>) -> Result<(), StoreError> {
        match self {
            Store::Local(root) => {
                let path = Self::path(root, key)?;
                let io = |source| StoreError::Io {
                    path: path.display().to_string(),
                    source,
                };
                if let Some(parent) = path.parent() {
                    tokio::fs::create_dir_all(parent).await.map_err(io)?;
                }
                // Written aside and renamed: a reader never sees half an object.
                let partial = path.with_extension("partial");
                tokio::fs::write(&partial, &bytes).await.map_err(io)?;
                tokio::fs::rename(&partial, &path).await.map_err(io)
            }
            Store::S3 { client, bucket } if bytes.len() > MULTIPART_PART => {
                put_multipart(client, bucket, key, bytes).await
            }
            Store::S3 { client, bucket } => client
                .put_object()
                .bucket(bucket)
                .key(key)
                .body(ByteStream::from(bytes))
                .send()
                .await
                .map(drop)
                .map_err(|e| s3_error("PutObject", key, e)),
        }
    }

    /// The object under `key`, or `None` when there is none.
    pub async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        match self {
            Store::Local(root) => {
                let path = Self::path(root, key)?;
                match tokio::fs::read(&path).await {
                    Ok(bytes) => Ok(Some(bytes)),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                    Err(source) => Err(StoreError::Io {
                        path: path.display().to_string(),
                        source,
                    }),
                }
            }
            Store::S3 { client, bucket } => {
                let response = match client.get_object().bucket(bucket).key(key).send().await {
                    Ok(response) => response,
                    Err(e) if e.as_service_error().is_some_and(|s| s.is_no_such_key()) => return Ok(None),
                    Err(e) => return Err(s3_error("GetObject", key, e)),
                };
                let body = response
                    .body
                    .collect()
                    .await
                    .map_err(|e| s3_error("GetObject", key, e))?;
                Ok(Some(body.into_bytes().to_vec()))
            }
        }
    }

    /// Every key under `prefix` (a folder: `a/b` lists `a/b/...`), sorted.
    pub async fn list(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        let prefix = prefix.trim_matches('/');
        let mut keys = Vec::new();
        match self {
            Store::Local(root) => {
                let start = if prefix.is_empty() {
                    root.clone()
                } else {
                    Self::path(root, prefix)?
                };
                let mut folders = vec![start];
                while let Some(folder) = folders.pop() {
                    let mut entries = match tokio::fs::read_dir(&folder).await {
                        Ok(entries) => entries,
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                        Err(source) => {
                            return Err(StoreError::Io {
                                path: folder.display().to_string(),
                                source,
                            });
                        }
                    };
                    let io = |source| StoreError::Io {
                        path: folder.display().to_string(),
                        source,
                    };
                    while let Some(entry) = entries.next_entry().await.map_err(io)? {
                        let path = entry.path();
                        if entry.file_type().await.map_err(io)?.is_dir() {
                            folders.push(path);
                        } else if path.extension().is_none_or(|e| e != "partial")
                            && let Ok(relative) = path.strip_prefix(root)
                        {
                            keys.push(relative.to_string_lossy().replace('\\', "/"));
                        }
                    }
                }
            }
            Store::S3 { client, bucket } => {
                let folder = if prefix.is_empty() {
                    String::new()
                } else {
                    format!("{prefix}/")
                };
                let mut pages = client
                    .list_objects_v2()
                    .bucket(bucket)
                    .prefix(&folder)
                    .into_paginator()
                    .send();
                while let Some(page) = pages.next().await {
                    let page = page.map_err(|e| s3_error("ListObjectsV2", &folder, e))?;
                    keys.extend(page.contents().iter().filter_map(|o| o.key().map(str::to_owned)));
                }
            }
        }
        keys.sort();
        Ok(keys)
    }
}

async fn put_multipart(
    client: &aws_sdk_s3::Client,
    bucket: &str,
    key: &str,
    bytes: Vec<u8>,
) -> Result<(), StoreError> {
    let upload = client
        .create_multipart_upload()
        .bucket(bucket)
        .key(key)
        .send()
        .await
        .map_err(|e| s3_error("CreateMultipartUpload", key, e))?;
    let id = upload.upload_id().unwrap_or_default().to_owned();
    let mut parts = Vec::new();
    for (i, part) in bytes.chunks(MULTIPART_PART).enumerate() {
        let number = i32::try_from(i + 1).unwrap_or(i32::MAX);
        let sent = client
            .upload_part()
            .bucket(bucket)
            .key(key)
            .upload_id(&id)
            .part_number(number)
            .body(ByteStream::from(part.to_vec()))
            .send()
            .await;
        match sent {
            Ok(done) => parts.push(
                CompletedPart::builder()
                    .part_number(number)
                    .set_e_tag(done.e_tag().map(str::to_owned))
                    .build(),
            ),
            Err(e) => {
                let _ = client
                    .abort_multipart_upload()
                    .bucket(bucket)
                    .key(key)
                    .upload_id(&id)
                    .send()
                    .await;
                return Err(s3_error("UploadPart", key, e));
            }
        }
    }
    client
        .complete_multipart_upload()
        .bucket(bucket)
        .key(key)
        .upload_id(&id)
        .multipart_upload(CompletedMultipartUpload::builder().set_parts(Some(parts)).build())
        .send()
        .await
        .map(drop)
        .map_err(|e| s3_error("CompleteMultipartUpload", key, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_local_store_puts_gets_and_lists() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::Local(dir.path().to_owned());
        store.put("a/b/one", b"1".to_vec()).await.unwrap();
        store.put("a/b/two", b"2".to_vec()).await.unwrap();
        store.put("a/c/three", b"3".to_vec()).await.unwrap();
        assert_eq!(store.get("a/b/one").await.unwrap(), Some(b"1".to_vec()));
        assert_eq!(store.get("a/b/none").await.unwrap(), None);
        assert_eq!(store.list("a/b").await.unwrap(), ["a/b/one", "a/b/two"]);
        assert_eq!(store.list("").await.unwrap().len(), 3);
        assert!(store.list("nothing/here").await.unwrap().is_empty());
        assert!(matches!(
            store.put("../escape", vec![]).await,
            Err(StoreError::BadKey(_))
        ));
    }
}

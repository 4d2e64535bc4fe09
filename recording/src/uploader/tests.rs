use std::collections::BTreeMap;

use super::*;
use crate::{
    format::{Body, ConnectionRef, session_folder},
    spool::{SessionWriter, SpoolSettings},
    verify::{Verified, verify},
};

fn key() -> Arc<SigningKey> {
    Arc::new(SigningKey::from_bytes(&[5u8; 32]))
}

struct Setup {
    _dir: tempfile::TempDir,
    spool: Arc<Spool>,
    store_dir: PathBuf,
    uploader: Uploader,
}

fn setup(chunk_bytes: u64, max_bytes: u64) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let store_dir = dir.path().join("store");
    let spool = Spool::open(SpoolSettings {
        dir: dir.path().join("spool"),
        max_bytes,
        chunk_bytes,
        chunk_interval: Duration::from_secs(3600),
    })
    .unwrap();
    let uploader = Uploader::new(
        spool.clone(),
        Store::Local(store_dir.clone()),
        key(),
        UploadMetrics::new(),
    );
    Setup {
        _dir: dir,
        spool,
        store_dir,
        uploader,
    }
}

fn start(spool: &Arc<Spool>, session: &str) -> (SessionWriter, String) {
    let connection = ConnectionRef {
        namespace: "shop".into(),
        name: "orders-db".into(),
    };
    let folder = session_folder("rec", &connection, session);
    let writer = spool
        .start(
            SessionInfo {
                session: session.into(),
                folder: folder.clone(),
                connection: connection.clone(),
                user: "planner".into(),
            },
            Body::Connect {
                session: session.into(),
                connection,
                user: "planner".into(),
                groups: vec!["agents".into()],
                client: "127.0.0.1:5000".into(),
                tls: false,
            },
        )
        .unwrap();
    (writer, folder)
}

fn statement(id: u64) -> Body {
    Body::Statement {
        id,
        text: format!("SELECT {id} /* {} */", "x".repeat(100)),
        decision: "allow".into(),
        reason: None,
    }
}

async fn verified(store_dir: &Path, folder: &str) -> Verified {
    let store = Store::Local(store_dir.to_owned());
    let mut objects = BTreeMap::new();
    for key in store.list(folder).await.unwrap() {
        let name = key.rsplit('/').next().unwrap().to_owned();
        objects.insert(name, store.get(&key).await.unwrap().unwrap());
    }
    verify(&objects, &key().verifying_key()).unwrap()
}

#[tokio::test]
async fn a_session_is_uploaded_chunk_by_chunk_and_closed_with_a_signed_manifest() {
    let s = setup(1000, 1 << 30);
    let (mut writer, folder) = start(&s.spool, "20261128T175300Z-0000000000000001");
    for id in 1..=30 {
        writer.record(statement(id));
    }
    writer.flush();
    // Chunks go up while the session is open.
    s.uploader.pass().await.unwrap();
    let store = Store::Local(s.store_dir.clone());
    let early = store.list(&folder).await.unwrap();
    assert!(early.len() >= 3, "{early:?}");
    assert!(!early.iter().any(|k| k.ends_with(MANIFEST)));
    writer.finish("client_closed");
    s.uploader.pass().await.unwrap();
    let session = verified(&s.store_dir, &folder).await;
    assert_eq!(session.events.len(), 32, "connect, 30 statements, disconnect");
    assert_eq!(session.manifest.end, "client_closed");
    assert!(matches!(
        session.events.last().unwrap().body,
        Body::Disconnect { .. }
    ));
    assert_eq!(s.spool.used(), 0, "the spool is empty once uploaded");
    assert!(std::fs::read_dir(s.spool.dir()).unwrap().next().is_none());
}

#[tokio::test]
async fn a_failing_store_keeps_everything_in_the_spool_until_it_returns() {
    let s = setup(1000, 1 << 30);
    // A file where the store's folder should be: every put fails.
    std::fs::write(&s.store_dir, b"not a folder").unwrap();
    let (mut writer, folder) = start(&s.spool, "20261128T175300Z-0000000000000002");
    for id in 1..=10 {
        writer.record(statement(id));
    }
    writer.finish("client_closed");
    assert!(s.uploader.pass().await.is_err());
    assert!(s.uploader.pass().await.is_err());
    assert!(s.spool.used() > 0);
    std::fs::remove_file(&s.store_dir).unwrap();
    s.uploader.pass().await.unwrap();
    assert_eq!(verified(&s.store_dir, &folder).await.events.len(), 12);
}

#[tokio::test]
async fn what_a_killed_proxy_left_is_recovered_and_verifies() {
    let s = setup(1000, 1 << 30);
    let (mut writer, folder) = start(&s.spool, "20261128T175300Z-0000000000000003");
    for id in 1..=20 {
        writer.record(statement(id));
    }
    writer.flush();
    s.uploader.pass().await.unwrap();
    // Killed: the writer never finishes, and its last write was cut short.
    let spool_folder = s.spool.dir().join(folder.replace('/', "~"));
    let part = std::fs::read_dir(&spool_folder)
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "part"))
        .expect("an open chunk");
    std::fs::OpenOptions::new()
        .append(true)
        .open(&part)
        .unwrap()
        .write_all(b"{\"seq\":99,\"half")
        .unwrap();
    std::mem::forget(writer);
    // A new proxy starts on the same spool.
    let spool = Spool::open(SpoolSettings {
        dir: s.spool.dir().to_owned(),
        max_bytes: 1 << 30,
        chunk_bytes: 1000,
        chunk_interval: Duration::from_secs(3600),
    })
    .unwrap();
    let uploader = Uploader::new(
        spool,
        Store::Local(s.store_dir.clone()),
        key(),
        UploadMetrics::new(),
    );
    assert_eq!(uploader.recover().unwrap(), 1);
    uploader.pass().await.unwrap();
    let session = verified(&s.store_dir, &folder).await;
    assert_eq!(session.manifest.end, "recovered");
    assert_eq!(
        session.events.len(),
        21,
        "connect and every statement written before the kill"
    );
}

#[tokio::test]
async fn best_effort_drops_while_the_spool_is_full_and_says_so() {
    let s = setup(1 << 20, 400);
    let (mut writer, folder) = start(&s.spool, "20261128T175300Z-0000000000000004");
    writer.set_best_effort(true);
    for id in 1..=10 {
        writer.record(statement(id));
    }
    assert!(writer.dropped() > 0);
    let dropped = writer.dropped();
    assert!(writer.finish("client_closed") >= dropped);
    // The spool is still full while the session closes: the disconnect is
    // dropped too, and the uploader frees the space.
    s.uploader.pass().await.unwrap();
    let session = verified(&s.store_dir, &folder).await;
    assert!(session.events.len() < 12);
    assert!(dropped >= 1);
}

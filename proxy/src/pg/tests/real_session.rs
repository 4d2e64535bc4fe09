//! Decodes sessions captured from real clients talking to PostgreSQL 15
//! (psql with SCRAM, MD5 and cleartext passwords; pgbench with the extended
//! and prepared protocols). The captures double as the fuzzing seed corpus
//! under `proxy/fuzz/corpus/frame_decoder`; their first byte is the fuzz
//! target's selector and is skipped here.

use std::path::PathBuf;

use bytes::{Bytes, BytesMut};
use tokio_util::codec::Decoder;

use crate::pg::messages::*;
use crate::pg::startup::{StartupCodec, StartupPacket};
use crate::pg::{Frame, FrameCodec};

fn capture(name: &str) -> Vec<u8> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn frames(name: &str, mut codec: FrameCodec) -> Vec<Frame> {
    let data = capture(&format!("frame_decoder/{name}"));
    let mut buf = BytesMut::from(&data[1..]);
    let mut out = Vec::new();
    while let Some(frame) = codec.decode_eof(&mut buf).unwrap() {
        out.push(frame);
    }
    out
}

fn frontend(name: &str) -> Vec<FrontendMessage> {
    frames(&format!("{name}-frontend"), FrameCodec::frontend())
        .iter()
        .map(|f| FrontendMessage::decode(f).unwrap())
        .collect()
}

fn backend(name: &str) -> Vec<BackendMessage> {
    frames(&format!("{name}-backend"), FrameCodec::backend())
        .iter()
        .map(|f| BackendMessage::decode(f).unwrap())
        .collect()
}

fn auth_payload(message: &FrontendMessage) -> Bytes {
    match message {
        FrontendMessage::AuthenticationResponse(payload) => payload.clone(),
        other => panic!("expected an authentication response, got {other:?}"),
    }
}

#[test]
fn psql_startup() {
    let data = capture("startup_packet/psql-startup");
    let StartupPacket::Startup(startup) = StartupPacket::decode(data.into()).unwrap() else {
        panic!("not a StartupMessage")
    };
    assert_eq!(startup.user(), Some("alice"));
    assert_eq!(startup.database(), Some("orders"));
    assert_eq!(startup.get("application_name"), Some("psql"));
}

#[test]
fn ssl_request_then_startup() {
    let data = capture("startup_packet/ssl-request-then-startup");
    let mut buf = BytesMut::from(&data[..]);
    assert_eq!(
        StartupCodec.decode(&mut buf).unwrap(),
        Some(StartupPacket::SslRequest)
    );
    assert!(matches!(
        StartupCodec.decode(&mut buf).unwrap(),
        Some(StartupPacket::Startup(_))
    ));
    assert!(buf.is_empty());
}

#[test]
fn cancel_request_from_psql() {
    let data = capture("startup_packet/cancel-request");
    let StartupPacket::Cancel(cancel) = StartupPacket::decode(data.into()).unwrap() else {
        panic!("not a CancelRequest")
    };
    assert_eq!(cancel.secret_key.len(), 4);
}

#[test]
fn scram_session_from_psql() {
    let fe = frontend("psql-session");
    // SCRAM: SASLInitialResponse, then SASLResponse.
    let initial = SaslInitialResponse::decode_payload(auth_payload(&fe[0])).unwrap();
    assert_eq!(initial.mechanism, SCRAM_SHA_256);
    assert!(initial.data.unwrap().starts_with(b"n,,n=,r="));
    let last = SaslResponse::decode_payload(auth_payload(&fe[1])).unwrap();
    assert!(last.data.starts_with(b"c=biws,r="));
    let FrontendMessage::Query(q) = &fe[2] else {
        panic!("{:?}", fe[2])
    };
    assert!(q.sql.starts_with("CREATE TABLE users"));
    assert!(
        fe.iter()
            .any(|m| matches!(m, FrontendMessage::CopyData(d) if d.data.starts_with(b"3\tCarol\ts3cret\n")))
    );
    assert!(fe.iter().any(|m| matches!(m, FrontendMessage::CopyDone(_))));
    assert!(matches!(fe.last(), Some(FrontendMessage::Terminate(_))));

    let be = backend("psql-session");
    assert!(
        matches!(&be[0], BackendMessage::Authentication(Authentication::Sasl { mechanisms })
        if mechanisms.iter().any(|m| m == SCRAM_SHA_256))
    );
    assert!(matches!(
        &be[1],
        BackendMessage::Authentication(Authentication::SaslContinue { .. })
    ));
    assert!(matches!(
        &be[2],
        BackendMessage::Authentication(Authentication::SaslFinal { .. })
    ));
    assert!(matches!(
        &be[3],
        BackendMessage::Authentication(Authentication::Ok)
    ));
    assert!(be.iter().any(|m| matches!(m, BackendMessage::ParameterStatus(p)
        if p.name == "client_encoding" && p.value == "UTF8")));
    assert!(
        be.iter()
            .any(|m| matches!(m, BackendMessage::BackendKeyData(k) if k.secret_key.len() == 4))
    );

    // The users table: RowDescription, then rows with a NULL password.
    let users = be
        .iter()
        .find_map(|m| match m {
            BackendMessage::RowDescription(t) if t.fields.len() == 3 => Some(t),
            _ => None,
        })
        .unwrap();
    assert_eq!(users.fields[2].name, "password");
    assert_eq!(users.fields[2].type_oid, 25);
    let rows: Vec<Vec<Option<Bytes>>> = be
        .iter()
        .filter_map(|m| match m {
            BackendMessage::DataRow(r) if r.len() == 3 => Some(r.cells().collect()),
            _ => None,
        })
        .collect();
    assert_eq!(
        rows[0],
        [Some("1".into()), Some("Alice".into()), Some("hunter2".into())]
    );
    assert_eq!(rows[1], [Some("2".into()), Some("Bob".into()), None]);

    let errors: Vec<_> = be
        .iter()
        .filter_map(|m| match m {
            BackendMessage::ErrorResponse(e) => e.fields.code().map(|c| c.into_owned()),
            _ => None,
        })
        .collect();
    assert_eq!(
        errors,
        ["42P01", "22012", "25P02"],
        "missing table, division by zero, failed transaction"
    );
    assert!(be.iter().any(|m| matches!(m, BackendMessage::ReadyForQuery(r)
        if r.status == TransactionStatus::Failed)));
    assert!(be.iter().any(|m| matches!(m, BackendMessage::NoticeResponse(n)
        if n.fields.code().as_deref() == Some("00000"))));
    assert!(
        be.iter()
            .any(|m| matches!(m, BackendMessage::NotificationResponse(n)
        if n.channel == "orders" && n.payload == "new 42"))
    );
    assert!(
        be.iter()
            .any(|m| matches!(m, BackendMessage::CopyInResponse(c) if c.column_formats.len() == 3))
    );
    assert!(
        be.iter()
            .any(|m| matches!(m, BackendMessage::CopyOutResponse(c) if c.format == Format::Binary))
    );
    assert!(
        be.iter()
            .any(|m| matches!(m, BackendMessage::CommandComplete(c) if c.rows() == Some(2)))
    );
}

#[test]
fn md5_and_cleartext_auth() {
    let be = backend("md5-auth");
    assert!(matches!(
        &be[0],
        BackendMessage::Authentication(Authentication::Md5Password { .. })
    ));
    let fe = frontend("md5-auth");
    let password = PasswordMessage::decode_payload(auth_payload(&fe[0])).unwrap();
    assert!(password.as_str().unwrap().starts_with("md5"));

    let be = backend("cleartext-auth");
    assert!(matches!(
        &be[0],
        BackendMessage::Authentication(Authentication::CleartextPassword)
    ));
    let fe = frontend("cleartext-auth");
    let password = PasswordMessage::decode_payload(auth_payload(&fe[0])).unwrap();
    assert_eq!(password.as_str(), Some("clearpw"));
}

#[test]
fn empty_query() {
    assert!(
        backend("empty-query")
            .iter()
            .any(|m| matches!(m, BackendMessage::EmptyQueryResponse(_)))
    );
}

#[test]
fn cancelled_query() {
    let be = backend("cancelled-query");
    assert!(be.iter().any(|m| matches!(m, BackendMessage::ErrorResponse(e)
        if e.fields.code().as_deref() == Some("57014"))));
}

#[test]
fn pgbench_extended_protocol() {
    let fe = frontend("pgbench-extended");
    let parse = fe
        .iter()
        .find_map(|m| match m {
            FrontendMessage::Parse(p) => Some(p),
            _ => None,
        })
        .unwrap();
    assert_eq!(
        parse.statement, "",
        "the extended protocol uses the unnamed statement"
    );
    assert!(parse.sql.contains("$1"));
    let bind = fe
        .iter()
        .find_map(|m| match m {
            FrontendMessage::Bind(b) => Some(b),
            _ => None,
        })
        .unwrap();
    assert_eq!(bind.params.len(), 1);
    assert!(
        fe.iter()
            .any(|m| matches!(m, FrontendMessage::Describe(d) if d.target == Target::Portal))
    );
    assert!(fe.iter().any(|m| matches!(m, FrontendMessage::Sync(_))));
    let be = backend("pgbench-extended");
    assert!(be.iter().any(|m| matches!(m, BackendMessage::ParseComplete(_))));
    assert!(be.iter().any(|m| matches!(m, BackendMessage::BindComplete(_))));
    assert!(be.iter().any(|m| matches!(m, BackendMessage::NoData(_))));
}

#[test]
fn pgbench_prepared_protocol() {
    let fe = frontend("pgbench-prepared");
    let named: Vec<_> = fe
        .iter()
        .filter_map(|m| match m {
            FrontendMessage::Parse(p) => Some(p.statement.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(named.len(), 2);
    assert!(
        named.iter().all(|n| !n.is_empty()),
        "prepared mode names its statements: {named:?}"
    );
    let binds = fe
        .iter()
        .filter(|m| matches!(m, FrontendMessage::Bind(b) if named.contains(&b.statement)));
    assert_eq!(binds.count(), 4);
}

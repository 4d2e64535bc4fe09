//! The second wall: a caller no Policy lets write gets a read-only database
//! session (`default_transaction_read_only=on`, set by the proxy), so that
//! PostgreSQL itself refuses the writes the classifier cannot see, and the
//! proxy refuses every statement that could turn that off.
//!
//! The write the classifier cannot see: a view and a STABLE function over a
//! VOLATILE function that deletes rows, made by the database owner. To the
//! classifier, selecting from them is a read.

use std::sync::Arc;

use anyhow::{Context as _, bail, ensure};
use gatehouse_e2e::{
    TestEnv,
    postgres::{APP_USER, DATABASE},
};
use sha2::{Digest, Sha256};
use tokio::sync::OnceCell;
use tokio_postgres::{NoTls, error::SqlState};

use crate::proxy::start_proxy;

/// The token of the reader: group `readers`, whose Policy allows only the
/// operations that write nothing.
const READER_TOKEN: &str = "e2e-wall-reader-5b9e";
/// The token of the writer: user `writer`, whose Policy also allows inserts
/// into `wall.notes`.
const WRITER_TOKEN: &str = "e2e-wall-writer-03fa";

/// How many rows `wall.victims` starts with.
const VICTIMS: i64 = 10;

const POLICIES: &str = r#"policies:
  - name: readers-read
    spec:
      connectionSelector: {}
      subjects: [{kind: Group, name: readers}]
      rules:
        - {name: reads, match: {operations: [select, explain, session, transaction, prepare, copyTo]}, action: allow}
        - {name: no-ddl, match: {operations: [ddl, truncate, copyProgram, privilege, role]}, action: deny}
  - name: writer-notes
    spec:
      connectionSelector: {}
      subjects: [{kind: User, name: writer}]
      rules:
        - {name: reads, match: {operations: [select, transaction, session]}, action: allow}
        - {name: notes, match: {operations: [insert], tables: [wall.notes]}, action: allow}
"#;

/// The owner's objects: rows to lose, a VOLATILE function that deletes them,
/// and two ways to call it that the classifier reads as reads. The app role
/// (the proxy's credential) may delete the rows, so only the read-only
/// session stands between a reader and their loss.
const SCHEMA: &str = "
CREATE SCHEMA wall;
CREATE TABLE wall.victims (id int PRIMARY KEY);
CREATE TABLE wall.notes (id int PRIMARY KEY);
CREATE FUNCTION wall.purge() RETURNS bigint LANGUAGE plpgsql VOLATILE AS $$
DECLARE n bigint;
BEGIN
  DELETE FROM wall.victims;
  GET DIAGNOSTICS n = ROW_COUNT;
  RETURN n;
END $$;
CREATE FUNCTION wall.tally() RETURNS bigint LANGUAGE sql STABLE AS $$ SELECT wall.purge() $$;
CREATE VIEW wall.report AS SELECT wall.purge() AS purged;
-- STABLE, so the catalog vouches for the call (set_config changes no data).
CREATE FUNCTION wall.switch_off() RETURNS text LANGUAGE plpgsql STABLE AS $$
BEGIN
  RETURN set_config('default_transaction_read_only', 'off', false);
END $$;
";

static GATE: OnceCell<u16> = OnceCell::const_new();
/// Held by the tests that count `wall.victims`: one of them deletes and
/// refills it on purpose.
static VICTIMS_TABLE: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The schema (once), and a proxy whose callers are the reader and the writer.
async fn gate(env: &TestEnv) -> anyhow::Result<u16> {
    GATE.get_or_try_init(|| async {
        let owner = env.postgres.superuser(DATABASE).await?;
        owner
            .batch_execute(&format!(
                "{SCHEMA}
                 GRANT USAGE ON SCHEMA wall TO {APP_USER};
                 GRANT SELECT, DELETE ON wall.victims TO {APP_USER};
                 GRANT SELECT, INSERT ON wall.notes TO {APP_USER};
                 GRANT SELECT ON wall.report TO {APP_USER};"
            ))
            .await
            .context("create the wall schema as the owner")?;
        refill(env).await?;
        let proxy = start_proxy(env, "proxy-wall", |port, creds| {
            let hash = |token: &str| hex::encode(Sha256::digest(token.as_bytes()));
            Ok(format!(
                r#"connection: {{namespace: e2e, name: wall}}
listen: {{address: "127.0.0.1:{port}", allowPlaintext: true}}
admin: {{address: "127.0.0.1:0"}}
upstream:
  host: 127.0.0.1
  port: {pg}
  database: {DATABASE}
  tls: {{mode: disable}}
  credentials: {{usernameFile: {creds}/username, passwordFile: {creds}/password}}
auth:
  staticTokens:
    - {{sha256: {reader}, username: reader, groups: [readers]}}
    - {{sha256: {writer}, username: writer, groups: []}}
{POLICIES}"#,
                pg = env.postgres.port,
                creds = creds.display(),
                reader = hash(READER_TOKEN),
                writer = hash(WRITER_TOKEN),
            ))
        })
        .await?;
        anyhow::Ok(proxy.port)
    })
    .await
    .copied()
}

/// `wall.victims` back to its rows.
async fn refill(env: &TestEnv) -> anyhow::Result<()> {
    env.postgres
        .superuser(DATABASE)
        .await?
        .batch_execute(&format!(
            "DELETE FROM wall.victims; INSERT INTO wall.victims SELECT generate_series(1, {VICTIMS})"
        ))
        .await?;
    Ok(())
}

async fn victims(env: &TestEnv) -> anyhow::Result<i64> {
    Ok(env
        .postgres
        .superuser(DATABASE)
        .await?
        .query_one("SELECT count(*) FROM wall.victims", &[])
        .await?
        .get(0))
}

/// A client through the proxy on `port` with `token`.
async fn through(port: u16, token: &str) -> anyhow::Result<tokio_postgres::Client> {
    Ok(crate::proxy::agent(port, token).await?)
}

/// The session's value of setting `name`, by SHOW.
async fn show(client: &tokio_postgres::Client, name: &str) -> anyhow::Result<String> {
    let rows = client.simple_query(&format!("SHOW {name}")).await?;
    rows.iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(row) => row.get(0).map(str::to_owned),
            _ => None,
        })
        .with_context(|| format!("SHOW {name} returned no row"))
}

fn code_and_message(err: &tokio_postgres::Error) -> (String, String) {
    match err.as_db_error() {
        Some(db) => (db.code().code().to_owned(), db.message().to_owned()),
        None => (String::new(), err.to_string()),
    }
}

/// Asserts that `result` is the proxy's read-only refusal.
fn ensure_kept_read_only<T>(result: Result<T, tokio_postgres::Error>, what: &str) -> anyhow::Result<()> {
    let Err(err) = result else {
        bail!("{what}: ran through the proxy");
    };
    let db = err
        .as_db_error()
        .with_context(|| format!("{what}: not a server error: {err}"))?;
    ensure!(
        db.code() == &SqlState::INSUFFICIENT_PRIVILEGE
            && db.message().contains("Gatehouse")
            && db
                .message()
                .contains("this session is read-only because no Policy lets you write"),
        "{what}: expected Gatehouse's read-only 42501, got {} {}",
        db.code().code(),
        db.message()
    );
    let hint = db.hint().unwrap_or_default();
    ensure!(
        hint.contains("reader") && hint.contains("reconnect"),
        "{what}: the hint says whom and what to do: {hint}"
    );
    Ok(())
}

pub async fn a_write_the_classifier_cannot_see_is_refused_by_postgresql(
    env: Arc<TestEnv>,
) -> anyhow::Result<()> {
    let port = gate(&env).await?;
    let _victims = VICTIMS_TABLE.lock().await;
    let reader = through(port, READER_TOKEN).await?;
    ensure!(
        show(&reader, "default_transaction_read_only").await? == "on"
            && show(&reader, "transaction_read_only").await? == "on",
        "the reader's session is not read-only"
    );
    for sql in ["SELECT * FROM wall.report", "SELECT wall.tally()"] {
        // Both protocols: the classifier allows them, the server refuses.
        let simple = reader.simple_query(sql).await;
        let extended = reader.query(sql, &[]).await;
        for (protocol, result) in [("simple", simple.map(drop)), ("extended", extended.map(drop))] {
            let err = result
                .err()
                .with_context(|| format!("{sql} ({protocol}) ran in the reader's session"))?;
            let (code, message) = code_and_message(&err);
            ensure!(
                code == SqlState::READ_ONLY_SQL_TRANSACTION.code()
                    && message.contains("cannot execute DELETE in a read-only transaction"),
                "{sql} ({protocol}): expected PostgreSQL's 25006, got {code} {message}"
            );
        }
        ensure!(victims(&env).await? == VICTIMS, "{sql}: rows were lost");
    }
    // Also inside an explicit transaction, which starts read-only as well.
    reader.batch_execute("BEGIN").await?;
    let err = reader.simple_query("SELECT * FROM wall.report").await.err();
    reader.batch_execute("ROLLBACK").await?;
    ensure!(
        err.as_ref().and_then(|e| e.code()) == Some(&SqlState::READ_ONLY_SQL_TRANSACTION),
        "inside BEGIN: {err:?}"
    );
    ensure!(victims(&env).await? == VICTIMS, "rows were lost");

    // The premise: the proxy allows the statement, only the read-only
    // session stopped it. Through a read-write session it deletes.
    let writer = through(port, WRITER_TOKEN).await?;
    let purged: i64 = writer
        .query_one("SELECT * FROM wall.report", &[])
        .await
        .context("the writer's select of the view")?
        .get(0);
    let left = victims(&env).await?;
    refill(&env).await?;
    ensure!(
        purged == VICTIMS && left == 0,
        "premise: in a read-write session the view deletes (purged {purged}, left {left})"
    );
    Ok(())
}

/// Every statement that would turn the read-only session read-write.
const TURN_OFFS: &[&str] = &[
    "SET default_transaction_read_only = off",
    "SET default_transaction_read_only TO DEFAULT",
    "SET SESSION default_transaction_read_only = 'false'",
    "SET LOCAL default_transaction_read_only = off",
    "RESET default_transaction_read_only",
    "SET \"DEFAULT_TRANSACTION_READ_ONLY\" = off",
    "SET Default_Transaction_Read_Only = off",
    "SET transaction_read_only = off",
    "SET LOCAL transaction_read_only TO off",
    "SET transaction_read_only TO DEFAULT",
    "RESET transaction_read_only",
    "SET \"Transaction_Read_Only\" = 0",
    "BEGIN READ WRITE",
    "BEGIN ISOLATION LEVEL READ COMMITTED, READ WRITE",
    "START TRANSACTION READ WRITE",
    "SET TRANSACTION READ WRITE",
    "SET SESSION CHARACTERISTICS AS TRANSACTION READ WRITE",
    "SELECT set_config('default_transaction_read_only', 'off', false)",
    "SELECT set_config('transaction_read_only', 'off', true)",
    "SELECT pg_catalog.set_config('DEFAULT_TRANSACTION_READ_ONLY', 'off', false)",
    "SELECT set_config(E'default\\x5ftransaction_read_only', 'off', false)",
    "SELECT set_config(U&'transaction\\005fread\\005fonly', 'off', false)",
    "SELECT set_config($$default_transaction_read_only$$, 'off', false)",
    "SELECT set_config(name, 'off', false) FROM pg_settings WHERE name LIKE '%read_only'",
    "SELECT set_config(lower('DEFAULT_TRANSACTION_READ_ONLY'), 'off', false)",
    "SELECT id FROM wall.victims WHERE set_config('default_transaction_read_only', 'off', false) = 'off'",
    "SELECT upper(coalesce(NULL, set_config('default_transaction_read_only', 'off', false)))",
    "WITH s AS (SELECT set_config('default_transaction_read_only', 'off', false)) SELECT * FROM s",
    "PREPARE wall_off AS SELECT set_config('default_transaction_read_only', 'off', false)",
    "EXPLAIN ANALYZE SELECT set_config('default_transaction_read_only', 'off', false)",
    "COPY (SELECT set_config('default_transaction_read_only', 'off', false)) TO STDOUT",
    "UPDATE pg_settings SET setting = 'off' WHERE name = 'default_transaction_read_only'",
];

pub async fn every_way_to_turn_the_read_only_session_off_is_refused(env: Arc<TestEnv>) -> anyhow::Result<()> {
    let port = gate(&env).await?;
    let _victims = VICTIMS_TABLE.lock().await;
    let reader = through(port, READER_TOKEN).await?;
    for sql in TURN_OFFS {
        ensure_kept_read_only(reader.batch_execute(sql).await, &format!("simple {sql}"))?;
        let wrapped = format!("SELECT 1; {sql}");
        ensure_kept_read_only(reader.batch_execute(&wrapped).await, &format!("simple {wrapped}"))?;
        ensure_kept_read_only(reader.prepare(sql).await, &format!("prepare {sql}"))?;
    }
    // The harmless neighbours run.
    for sql in [
        "BEGIN READ ONLY",
        "SET TRANSACTION ISOLATION LEVEL REPEATABLE READ",
        "COMMIT",
        "START TRANSACTION ISOLATION LEVEL SERIALIZABLE, READ ONLY",
        "ROLLBACK",
        "SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY",
        "SET search_path = public",
    ] {
        reader
            .batch_execute(sql)
            .await
            .with_context(|| format!("{sql} was refused"))?;
    }
    // set_config of another setting is not the wall's business; it is a
    // side-effect function no rule of the reader's allows.
    let err = reader
        .batch_execute("SELECT set_config('search_path', 'public', false)")
        .await
        .err()
        .context("set_config ran")?;
    let (code, message) = code_and_message(&err);
    ensure!(
        code == "42501" && message.contains("default deny") && !message.contains("read-only"),
        "set_config('search_path', ...): {code} {message}"
    );
    // RESET ALL goes back to the values the session started with, and the
    // proxy's startup parameter is one of them.
    reader.batch_execute("RESET ALL").await.context("RESET ALL")?;
    ensure!(
        show(&reader, "default_transaction_read_only").await? == "on"
            && show(&reader, "transaction_read_only").await? == "on",
        "RESET ALL made the session read-write"
    );
    ensure!(
        reader
            .simple_query("SELECT * FROM wall.report")
            .await
            .err()
            .and_then(|e| e.code().cloned())
            == Some(SqlState::READ_ONLY_SQL_TRANSACTION),
        "after RESET ALL the view deletes"
    );
    // DISCARD ALL also resets the role, which the reader may not do (a
    // caller whose rules allowed it would have a read-write session); on
    // the server it keeps a startup setting too. Checked directly, with the
    // setting given at startup as the proxy gives it.
    let (direct, connection) = tokio_postgres::Config::new()
        .host("127.0.0.1")
        .port(env.postgres.port)
        .user(APP_USER)
        .password(&env.postgres.app_password)
        .dbname(DATABASE)
        .options("-c default_transaction_read_only=on")
        .connect(NoTls)
        .await?;
    tokio::spawn(connection);
    for reset in ["RESET ALL", "DISCARD ALL"] {
        direct.batch_execute(reset).await?;
        ensure!(
            show(&direct, "default_transaction_read_only").await? == "on",
            "{reset} reset a startup setting on the server"
        );
    }
    ensure!(victims(&env).await? == VICTIMS, "rows were lost");
    // Still read-only, and the session goes on.
    ensure!(show(&reader, "default_transaction_read_only").await? == "on");
    let n: i64 = reader
        .query_one("SELECT count(*) FROM wall.victims", &[])
        .await?
        .get(0);
    ensure!(n == VICTIMS, "{n}");
    Ok(())
}

/// What no statement shows: a function of the database that calls
/// set_config. PostgreSQL reports the change when the statement ends, and
/// the proxy closes the session before another statement reaches it.
pub async fn a_function_that_turns_the_session_read_write_ends_it(env: Arc<TestEnv>) -> anyhow::Result<()> {
    let port = gate(&env).await?;
    let _victims = VICTIMS_TABLE.lock().await;
    let reader = through(port, READER_TOKEN).await?;
    let err = reader
        .simple_query("SELECT wall.switch_off()")
        .await
        .err()
        .context("the session survived a function that turned read-only off")?;
    let (code, message) = code_and_message(&err);
    ensure!(
        code == SqlState::FEATURE_NOT_SUPPORTED.code() && message.contains("keeps read-only"),
        "expected Gatehouse's FATAL 0A000, got {code} {message}"
    );
    // The view that deletes, on the same client: nothing reaches the server.
    ensure!(
        reader.simple_query("SELECT * FROM wall.report").await.is_err(),
        "the session went on after it turned read-write"
    );
    ensure!(victims(&env).await? == VICTIMS, "rows were lost");
    // A new session starts read-only again.
    let reader = through(port, READER_TOKEN).await?;
    ensure!(show(&reader, "default_transaction_read_only").await? == "on");
    Ok(())
}

pub async fn a_caller_whose_policy_allows_a_write_gets_a_read_write_session(
    env: Arc<TestEnv>,
) -> anyhow::Result<()> {
    let port = gate(&env).await?;
    let writer = through(port, WRITER_TOKEN).await?;
    ensure!(
        show(&writer, "default_transaction_read_only").await? == "off",
        "the writer's session is read-only"
    );
    writer
        .execute("INSERT INTO wall.notes VALUES ($1)", &[&7i32])
        .await
        .context("the writer's allowed insert")?;
    writer
        .batch_execute("BEGIN; INSERT INTO wall.notes VALUES (8); COMMIT")
        .await
        .context("the writer's allowed insert in a transaction")?;
    let n: i64 = env
        .postgres
        .superuser(DATABASE)
        .await?
        .query_one("SELECT count(*) FROM wall.notes WHERE id IN (7, 8)", &[])
        .await?
        .get(0);
    ensure!(n == 2, "the writer's inserts did not arrive: {n}");
    // Its other writes are still the Policy's to refuse.
    let err = writer
        .batch_execute("DELETE FROM wall.notes")
        .await
        .err()
        .context("a delete no rule allows ran")?;
    ensure!(err.code() == Some(&SqlState::INSUFFICIENT_PRIVILEGE), "{err}");
    Ok(())
}

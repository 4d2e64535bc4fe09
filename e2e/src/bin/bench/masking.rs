//! The masking part of `make bench`: the in-process throughput, then a table
//! of corpus rows read whole directly, through a proxy without masking and
//! through one whose policy masks with every detector, and a 1 GB result
//! streamed through the masking proxy while its memory is watched.

use std::{
    path::Path,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use futures::TryStreamExt as _;
use gatehouse_e2e::{
    bench::{
        DIRECT, Endpoint, corpus,
        masking::{
            CREATE_TABLE, INSERT_ROWS, MASKED, MaskingReport, QueryFigures, STREAM_QUERY, StreamFigures,
            TABLE, TimedRuns, UNMASKED, in_process_throughput, read_status, thousands,
        },
    },
    postgres::Postgres,
};
use gatehouse_proxy::{config::ProxyConfig, mask::rows::Masker, policy::Identity, server::Runtime};
use tokio_postgres::{Client, NoTls, SimpleQueryMessage, SimpleQueryRow};

/// How long each in-process figure is measured, after [`WARM_UP`].
const MEASURE: Duration = Duration::from_secs(2);
const WARM_UP: Duration = Duration::from_millis(500);
/// Rows of the in-process corpus (about 2 MB of cells).
const CORPUS_ROWS: u64 = 10_000;
/// Measured runs of the large query per target; the median is reported.
const RUNS: usize = 5;
/// Rows per INSERT while the table is filled.
const BATCH: u64 = 50_000;

/// Measures everything; `rows` is the size of the bench table.
pub(crate) async fn run(
    dir: &Path,
    proxy_binary: &Path,
    postgres: &Postgres,
    direct: &Endpoint,
    rows: u64,
) -> anyhow::Result<MaskingReport> {
    println!("Starting gatehouse-proxy twice, without and with masking");
    let dir = dir.join("masking");
    let (unmasked, _unmasked_process) = crate::start_gatehouse(
        proxy_binary,
        &dir.join(UNMASKED),
        postgres,
        crate::Settings::POLICY,
    )
    .await?;
    let (masked, masked_process) = crate::start_gatehouse(
        proxy_binary,
        &dir.join(MASKED),
        postgres,
        crate::Settings::MASKING,
    )
    .await?;
    let pid = masked_process.pid().context("the masking proxy has no pid")?;

    println!(
        "Masking throughput in process, {} s per figure",
        MEASURE.as_secs_f64()
    );
    let masker = proxy_masker(&dir.join(MASKED).join(crate::CONFIG_FILE))?;
    let throughput =
        tokio::task::spawn_blocking(move || in_process_throughput(&masker, CORPUS_ROWS, MEASURE, WARM_UP))
            .await??;

    println!("Filling {TABLE} ({} rows)", thousands(rows));
    fill(&connect(direct).await?, rows).await?;

    println!("  1 GB through {MASKED}");
    let stream = stream_figures(&masked, pid, proxy_binary).await?;
    println!("  SELECT * FROM {TABLE}: direct, {UNMASKED}, {MASKED}, {RUNS} runs each");
    let query = query_figures(direct, &unmasked, &masked, rows).await?;
    Ok(MaskingReport::new(throughput, query, stream))
}

/// The masker the proxy running with `config` gives the bench's caller: the
/// same code path, from the same file.
fn proxy_masker(config: &Path) -> anyhow::Result<Arc<Masker>> {
    let config = ProxyConfig::from_file(config)?;
    let runtime = Runtime::new(config)?;
    let caller = Identity {
        username: crate::AGENT.to_owned(),
        groups: vec![crate::GROUP.to_owned()],
    };
    runtime
        .masker_for(&caller)
        .context("the masking proxy's configuration masks nothing for the bench's caller")
}

async fn connect(endpoint: &Endpoint) -> anyhow::Result<Client> {
    let (client, connection) = tokio_postgres::Config::new()
        .host("127.0.0.1")
        .port(endpoint.port)
        .user(&endpoint.user)
        .password(&endpoint.password)
        .dbname(&endpoint.database)
        .connect(NoTls)
        .await
        .with_context(|| format!("connect to {endpoint:?}"))?;
    tokio::spawn(connection);
    Ok(client)
}

/// Creates the bench table and loads corpus rows `1..=rows` into it.
async fn fill(client: &Client, rows: u64) -> anyhow::Result<()> {
    client
        .batch_execute(CREATE_TABLE)
        .await
        .context("create the masking bench table")?;
    let insert = client.prepare(INSERT_ROWS).await?;
    let secrets = corpus::secrets();
    let mut first = 1;
    while first <= rows {
        let last = (first + BATCH - 1).min(rows);
        let batch = corpus::rows(first, last, &secrets);
        let ids = (first..=last)
            .map(i64::try_from)
            .collect::<Result<Vec<i64>, _>>()?;
        let column = |cell: fn(&corpus::CorpusRow) -> &str| batch.iter().map(cell).collect::<Vec<&str>>();
        let (references, notes, docs) = (column(|r| &r.reference), column(|r| &r.note), column(|r| &r.doc));
        client
            .execute(&insert, &[&ids, &references, &notes, &docs])
            .await
            .with_context(|| format!("insert rows {first} to {last} into {TABLE}"))?;
        first = last + 1;
    }
    // Sets the hint bits now, so that no measured run pays for them.
    client
        .batch_execute(&format!("VACUUM (ANALYZE) {TABLE}"))
        .await
        .context("vacuum the masking bench table")?;
    Ok(())
}

/// Runs `sql` with the simple protocol (text format, as psql and most
/// drivers read results), hands each row to `each` as it arrives and drops
/// it; the number of rows.
async fn stream(client: &Client, sql: &str, mut each: impl FnMut(&SimpleQueryRow)) -> anyhow::Result<u64> {
    let messages = client.simple_query_raw(sql).await?;
    let mut messages = std::pin::pin!(messages);
    let mut rows = 0;
    while let Some(message) = messages.try_next().await? {
        if let SimpleQueryMessage::Row(row) = message {
            rows += 1;
            each(&row);
        }
    }
    Ok(rows)
}

/// Bytes of a row's cells.
fn cell_bytes(row: &SimpleQueryRow) -> u64 {
    (0..row.len())
        .filter_map(|i| row.get(i))
        .map(|cell| cell.len() as u64)
        .sum()
}

/// Streams [`STREAM_QUERY`] through the masking proxy (process `pid`) and
/// reads its memory before and after.
async fn stream_figures(masked: &Endpoint, pid: u32, proxy_binary: &Path) -> anyhow::Result<StreamFigures> {
    let client = connect(masked).await?;
    let before = read_status(pid)?;
    // The kernel keeps 15 bytes of the name: make sure the pid is the proxy's
    // own, not a wrapper's.
    let binary = proxy_binary
        .file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_default();
    anyhow::ensure!(
        !before.name.is_empty() && binary.starts_with(&before.name),
        "process {pid} is {:?}, not {binary:?}",
        before.name
    );
    let started = Instant::now();
    let mut bytes = 0;
    let rows = stream(&client, STREAM_QUERY, |row| bytes += cell_bytes(row))
        .await
        .with_context(|| format!("stream `{STREAM_QUERY}` through {MASKED}"))?;
    let seconds = started.elapsed().as_secs_f64();
    let after = read_status(pid)?;
    Ok(StreamFigures {
        query: STREAM_QUERY.to_owned(),
        rows,
        result_mb: bytes as f64 / 1e6,
        seconds,
        rss_before_kib: before.rss_kib,
        peak_kib: after.peak_kib,
        rss_after_kib: after.rss_kib,
    })
}

/// Times `SELECT * FROM` the table on each target, the targets taking turns
/// (each round starting with the next) so that drift on the shared machine
/// hits all of them, and checks that the masking proxy masked the secret rows.
async fn query_figures(
    direct: &Endpoint,
    unmasked: &Endpoint,
    masked: &Endpoint,
    rows: u64,
) -> anyhow::Result<QueryFigures> {
    let sql = format!("SELECT * FROM {TABLE}");
    let mut clients = Vec::new();
    for (name, endpoint) in [(DIRECT, direct), (UNMASKED, unmasked), (MASKED, masked)] {
        clients.push((name, connect(endpoint).await?));
    }
    // One run each that is not measured: the table in the page cache, the
    // connections warm. The measured runs leave the rows unread, so that the
    // client costs little.
    let mut result_bytes = 0;
    for (name, client) in &clients {
        let mut bytes = 0;
        read_all(client, &sql, name, rows, |row| bytes += cell_bytes(row)).await?;
        if *name == DIRECT {
            result_bytes = bytes;
        }
    }
    let mut targets: Vec<TimedRuns> = clients
        .iter()
        .map(|(name, _)| TimedRuns {
            target: (*name).to_owned(),
            runs_s: Vec::new(),
        })
        .collect();
    for round in 0..RUNS {
        for turn in 0..clients.len() {
            let target = (round + turn) % clients.len();
            let (name, client) = &clients[target];
            let started = Instant::now();
            read_all(client, &sql, name, rows, |_| {}).await?;
            targets[target].runs_s.push(started.elapsed().as_secs_f64());
        }
    }
    let (secret_rows, secret_rows_masked) = masked_secrets(&clients[2].1).await?;
    Ok(QueryFigures {
        rows,
        result_mb: result_bytes as f64 / 1e6,
        targets,
        secret_rows,
        secret_rows_masked,
    })
}

/// Streams the whole result of `sql` through `name`, which must have `rows` rows.
async fn read_all(
    client: &Client,
    sql: &str,
    name: &str,
    rows: u64,
    each: impl FnMut(&SimpleQueryRow),
) -> anyhow::Result<()> {
    let got = stream(client, sql, each)
        .await
        .with_context(|| format!("{sql} through {name}"))?;
    anyhow::ensure!(got == rows, "{sql} through {name} gave {got} rows, not {rows}");
    Ok(())
}

/// Reads the notes that hold a secret through `client` and counts those that
/// differ from the corpus: the rows that came back masked.
async fn masked_secrets(client: &Client) -> anyhow::Result<(u64, u64)> {
    let secrets = corpus::secrets();
    let sql = format!(
        "SELECT id, note FROM {TABLE} WHERE id % {} = 0",
        corpus::SECRET_EVERY
    );
    let (mut rows, mut masked) = (0, 0);
    for message in client.simple_query(&sql).await.with_context(|| sql.clone())? {
        if let SimpleQueryMessage::Row(row) = message {
            let id: u64 = row
                .get(0)
                .and_then(|id| id.parse().ok())
                .with_context(|| format!("{sql}: a row without an id"))?;
            rows += 1;
            if row.get(1) != Some(corpus::row(id, &secrets).note.as_str()) {
                masked += 1;
            }
        }
    }
    Ok((rows, masked))
}

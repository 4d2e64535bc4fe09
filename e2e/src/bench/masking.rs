//! The masking figures of `make bench`: the detectors' throughput on one core
//! (in process, on the [`corpus`](super::corpus)), a large result's time
//! through the proxy with masking on and off and directly, and the proxy's
//! peak memory while it streams a 1 GB result; with the report lines and the
//! budget verdicts. `src/bin/bench/masking.rs` starts the servers and runs
//! the queries.

use std::{
    fmt::Write as _,
    time::{Duration, Instant},
};

use gatehouse_proxy::{
    mask::{
        Found, Scanner,
        rows::{MaskStats, Masked, Masker, Plan},
    },
    pg::{
        Frame, Message as _,
        messages::{DataRow, FieldDescription, Format},
    },
};
use serde::Serialize;

use super::{BudgetCheck, corpus};
use crate::error::{Error, Result, StepExt};

/// Masking may make a large result at most this much slower than without.
pub const BUDGET_MAX_MASKED_RATIO: f64 = 1.25;
/// The proxy's resident memory may peak at this while it streams 1 GB.
pub const BUDGET_MAX_PEAK_RSS_MIB: f64 = 64.0;
/// The proxy with the same policy as [`MASKED`] but no masking.
pub const UNMASKED: &str = "gatehouse";
/// The proxy whose policy masks with every detector.
pub const MASKED: &str = "gatehouse-masked";
/// The bench table: the corpus rows, loaded by [`INSERT_ROWS`].
pub const TABLE: &str = "mask_bench";
/// Unlogged: the table is loaded once per run and only read.
pub const CREATE_TABLE: &str =
    "CREATE UNLOGGED TABLE mask_bench (id bigint, reference uuid, note text, doc json)";
/// Loads a batch of corpus rows, one array per column.
pub const INSERT_ROWS: &str = "INSERT INTO mask_bench \
     SELECT id, reference::uuid, note, doc::json \
     FROM unnest($1::int8[], $2::text[], $3::text[], $4::text[]) AS r(id, reference, note, doc)";
/// A result of about 1 GB the proxy streams while its memory is watched
/// (a million rows of 960 bytes).
pub const STREAM_QUERY: &str = "SELECT repeat(md5(i::text), 30) AS filler FROM generate_series(1, 1000000) i";

/// The bench table's columns as a RowDescription gives them (text format).
pub fn fields() -> Vec<FieldDescription> {
    // bigint, uuid, text, json (pg_type.dat).
    [("id", 20), ("reference", 2950), ("note", 25), ("doc", 114)]
        .into_iter()
        .map(|(name, type_oid)| FieldDescription {
            name: name.to_owned(),
            table_oid: 0,
            column_id: 0,
            type_oid,
            type_size: -1,
            type_modifier: -1,
            format: Format::Text,
        })
        .collect()
}

/// One in-process throughput figure.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Throughput {
    /// `scanner` (`Scanner::find` on every cell) or `masker` (`Masker::mask_row`
    /// on every DataRow, as the relay calls it).
    pub stage: &'static str,
    /// `clean` or `mixed` (one row in [`corpus::SECRET_EVERY`] holds a secret).
    pub corpus: &'static str,
    /// Cell bytes per second on one core, in MB (10⁶ bytes).
    pub mb_per_s: f64,
    /// Cells (scanner) or rows (masker) in one pass over the corpus.
    pub items: u64,
    /// Of those, how many held a secret that was found.
    pub masked: u64,
}

/// The windows an in-process figure is measured in.
const WINDOWS: u32 = 8;

/// Runs `pass` over and over for `duration` and gives the bytes per second,
/// where one pass handles `bytes`: the median of [`WINDOWS`] windows, so that
/// a burst of other work on the shared machine moves the figure little.
pub fn rate(duration: Duration, bytes: usize, mut pass: impl FnMut() -> Result<u64>) -> Result<f64> {
    let window = duration / WINDOWS;
    let mut rates = Vec::new();
    for _ in 0..WINDOWS {
        let started = Instant::now();
        let mut passes = 0u64;
        while passes == 0 || started.elapsed() < window {
            std::hint::black_box(pass()?);
            passes += 1;
        }
        rates.push(passes as f64 * bytes as f64 / started.elapsed().as_secs_f64());
    }
    Ok(median(&rates).unwrap_or_default())
}

/// Scans every cell of `rows` once; the cells in which something was found.
fn scan_pass(scanner: &Scanner, rows: &[corpus::CorpusRow], found: &mut Vec<Found>) -> u64 {
    let mut hits = 0;
    for row in rows {
        for cell in row.cells() {
            scanner.find(cell.as_bytes(), found);
            hits += u64::from(!found.is_empty());
        }
    }
    hits
}

/// Masks every frame once, counting as the relay does; the rows that were
/// rewritten.
fn mask_pass(masker: &Masker, plan: &Plan, frames: &[Frame]) -> Result<u64> {
    let mut stats = MaskStats::default();
    let mut rewritten = 0;
    for frame in frames {
        match masker
            .mask_row(plan, frame, &mut stats)
            .step("mask a corpus row")?
        {
            Masked::Unchanged => {}
            Masked::Rewritten(frame) => {
                std::hint::black_box(frame);
                rewritten += 1;
            }
        }
    }
    std::hint::black_box(stats);
    Ok(rewritten)
}

/// The throughput of `masker` on this thread: its scanner alone and the
/// whole row masker, on `rows` clean corpus rows and on as many mixed ones,
/// each measured for `duration` after `warm_up`.
pub fn in_process_throughput(
    masker: &Masker,
    rows: u64,
    duration: Duration,
    warm_up: Duration,
) -> Result<Vec<Throughput>> {
    let step = "measure masking throughput";
    let scanner = masker.scanner();
    let plan = masker.plan(&fields(), &[]);
    let secrets = corpus::secrets();
    let corpora: [(&'static str, &[&str]); 2] = [("clean", &[]), ("mixed", &secrets)];
    let mut figures = Vec::new();
    let mut found = Vec::new();
    for (name, secrets) in corpora {
        let rows = corpus::rows(1, rows, secrets);
        let bytes = rows.iter().map(corpus::CorpusRow::len).sum();
        rate(warm_up, bytes, || Ok(scan_pass(scanner, &rows, &mut found)))?;
        let scanned = rate(duration, bytes, || Ok(scan_pass(scanner, &rows, &mut found)))?;
        figures.push(Throughput {
            stage: "scanner",
            corpus: name,
            mb_per_s: scanned / 1e6,
            items: rows.len() as u64 * 4,
            masked: scan_pass(scanner, &rows, &mut found),
        });

        let frames = rows
            .iter()
            .map(|row| DataRow::from_cells(row.cells().map(Some))?.to_frame())
            .collect::<std::result::Result<Vec<Frame>, _>>()
            .step(step)?;
        rate(warm_up, bytes, || mask_pass(masker, &plan, &frames))?;
        let masked = rate(duration, bytes, || mask_pass(masker, &plan, &frames))?;
        figures.push(Throughput {
            stage: "masker",
            corpus: name,
            mb_per_s: masked / 1e6,
            items: frames.len() as u64,
            masked: mask_pass(masker, &plan, &frames)?,
        });
    }
    // The scanner's figures first.
    figures.sort_by_key(|f| f.stage == "masker");
    Ok(figures)
}

/// A process's memory, from `/proc/<pid>/status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcMemory {
    /// `Name:` (the executable's name, at most 15 bytes).
    pub name: String,
    /// `VmRSS:`, resident now, KiB.
    pub rss_kib: u64,
    /// `VmHWM:`, the most it has been resident, KiB.
    pub peak_kib: u64,
}

/// Reads the lines of `/proc/<pid>/status` that [`ProcMemory`] holds.
pub fn parse_status(text: &str) -> std::result::Result<ProcMemory, String> {
    let field = |key: &str| {
        text.lines()
            .find_map(|line| line.strip_prefix(key)?.strip_prefix(':'))
            .map(str::trim)
    };
    let kib = |key: &str| {
        field(key)
            .and_then(|value| value.strip_suffix("kB"))
            .and_then(|value| value.trim().parse::<u64>().ok())
            .ok_or_else(|| format!("no `{key}: <n> kB` line"))
    };
    Ok(ProcMemory {
        name: field("Name").ok_or("no `Name:` line")?.to_owned(),
        rss_kib: kib("VmRSS")?,
        peak_kib: kib("VmHWM")?,
    })
}

/// The memory of process `pid`.
pub fn read_status(pid: u32) -> Result<ProcMemory> {
    let path = format!("/proc/{pid}/status");
    let step = format!("read {path}");
    let text = std::fs::read_to_string(&path).step(&step)?;
    parse_status(&text).map_err(|e| Error::step(&step, e))
}

/// The median of `values` (the mean of the middle two for an even count).
pub fn median(values: &[f64]) -> Option<f64> {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(sorted[n / 2]),
        _ => Some((sorted[n / 2 - 1] + sorted[n / 2]) / 2.0),
    }
}

/// `n` with thousands separators: `1,000,000`.
pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// One target's runs of the timed query.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TimedRuns {
    /// `direct`, [`UNMASKED`] or [`MASKED`].
    pub target: String,
    /// Seconds of each run, in run order.
    pub runs_s: Vec<f64>,
}

impl TimedRuns {
    /// The median run.
    pub fn median_s(&self) -> Option<f64> {
        median(&self.runs_s)
    }
}

/// `SELECT * FROM` [`TABLE`] directly and through both proxies.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct QueryFigures {
    /// Rows in the result.
    pub rows: u64,
    /// Cell bytes in the result, MB.
    pub result_mb: f64,
    /// Every target's runs; targets took turns.
    pub targets: Vec<TimedRuns>,
    /// Rows holding a secret in their note.
    pub secret_rows: u64,
    /// Of those, how many came back masked through [`MASKED`]: whether
    /// masking ran at all.
    pub secret_rows_masked: u64,
}

impl QueryFigures {
    fn median_s(&self, target: &str) -> Option<f64> {
        self.targets
            .iter()
            .find(|t| t.target == target)
            .and_then(TimedRuns::median_s)
    }

    /// Masked time over unmasked time (medians).
    pub fn masked_ratio(&self) -> Option<f64> {
        Some(self.median_s(MASKED)? / self.median_s(UNMASKED)?)
    }

    /// Unmasked proxy time over direct time (medians).
    pub fn unmasked_ratio(&self) -> Option<f64> {
        Some(self.median_s(UNMASKED)? / self.median_s(super::DIRECT)?)
    }

    /// Whether every secret row came back masked.
    pub fn masking_observed(&self) -> bool {
        self.secret_rows > 0 && self.secret_rows_masked == self.secret_rows
    }
}

/// [`STREAM_QUERY`] through [`MASKED`] with the proxy's memory watched.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StreamFigures {
    /// The query.
    pub query: String,
    /// Rows streamed.
    pub rows: u64,
    /// Cell bytes streamed, MB.
    pub result_mb: f64,
    /// How long the stream took.
    pub seconds: f64,
    /// The proxy's resident memory before the query, KiB.
    pub rss_before_kib: u64,
    /// Its peak resident memory after the query (`VmHWM`, since it started), KiB.
    pub peak_kib: u64,
    /// Its resident memory after the query, KiB.
    pub rss_after_kib: u64,
}

/// The masking part of the report.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MaskingReport {
    /// Whether this bench was built with optimisations; without, the
    /// in-process figures and the client's speed say little.
    pub optimised_build: bool,
    /// How many detectors `[all]` enables.
    pub detectors: usize,
    /// The in-process figures.
    pub throughput: Vec<Throughput>,
    /// The large query's times.
    pub query: QueryFigures,
    /// The 1 GB stream.
    pub stream: StreamFigures,
    /// The budget checks.
    pub budget: Vec<BudgetCheck>,
}

impl MaskingReport {
    /// The report, with the budget judged.
    pub fn new(throughput: Vec<Throughput>, query: QueryFigures, stream: StreamFigures) -> MaskingReport {
        let budget = budget_checks(&query, &stream);
        MaskingReport {
            optimised_build: !cfg!(debug_assertions),
            detectors: Scanner::new(&["all"]).map_or(0, |s| s.len()),
            throughput,
            query,
            stream,
            budget,
        }
    }

    /// The figures as plain text with the budget lines.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let build = if self.optimised_build {
            "release build"
        } else {
            "DEBUG BUILD: run the bench with --release for meaningful figures"
        };
        let _ = writeln!(
            out,
            "Masking with detectors [all] ({} detectors) on one core, in process ({build}), on \
             the bench table's rows (id, uuid, note, json); MB = 10⁶ bytes of cells:",
            self.detectors
        );
        let _ = writeln!(
            out,
            "\n{:<10} {:<8} {:>9}   secrets found",
            "stage", "corpus", "MB/s"
        );
        for figure in &self.throughput {
            let unit = if figure.stage == "scanner" {
                "cells"
            } else {
                "rows"
            };
            let _ = writeln!(
                out,
                "{:<10} {:<8} {:>9.1}   {} of {} {unit}",
                figure.stage,
                figure.corpus,
                figure.mb_per_s,
                thousands(figure.masked),
                thousands(figure.items)
            );
        }

        let query = &self.query;
        let _ = writeln!(
            out,
            "\nSELECT * FROM {TABLE}: {} rows, {:.0} MB of cells, median of {} runs:",
            thousands(query.rows),
            query.result_mb,
            query.targets.first().map_or(0, |t| t.runs_s.len())
        );
        for target in &query.targets {
            let ratio = match target.target.as_str() {
                MASKED => query.masked_ratio().map(|r| format!("{r:.3}× {UNMASKED}")),
                UNMASKED => query.unmasked_ratio().map(|r| format!("{r:.3}× direct")),
                _ => None,
            };
            let _ = writeln!(
                out,
                "  {:<18} {:>8.3} s   {}",
                target.target,
                target.median_s().unwrap_or(f64::NAN),
                ratio.unwrap_or_default()
            );
        }
        let _ = writeln!(
            out,
            "  {MASKED} masked {} of {} secret notes",
            thousands(query.secret_rows_masked),
            thousands(query.secret_rows)
        );

        let stream = &self.stream;
        let _ = writeln!(
            out,
            "\n{MASKED} streamed {} rows, {:.0} MB of cells, in {:.1} s: resident {:.1} MiB before, peak {:.1} MiB, {:.1} MiB after",
            thousands(stream.rows),
            stream.result_mb,
            stream.seconds,
            mib(stream.rss_before_kib),
            mib(stream.peak_kib),
            mib(stream.rss_after_kib)
        );

        let _ = writeln!(out, "\nBudget (DESIGN.md) for masking:");
        for check in &self.budget {
            let verdict = if check.met { "met" } else { "NOT MET" };
            let _ = writeln!(out, "  {:<7} {}: {}", verdict, check.item, check.measured);
        }
        out
    }
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

fn budget_checks(query: &QueryFigures, stream: &StreamFigures) -> Vec<BudgetCheck> {
    let mut checks = Vec::new();
    if let (Some(ratio), Some(masked), Some(unmasked)) = (
        query.masked_ratio(),
        query.median_s(MASKED),
        query.median_s(UNMASKED),
    ) {
        let mut measured = format!("{ratio:.3}× ({masked:.2} s vs {unmasked:.2} s)");
        if !query.masking_observed() {
            let _ = write!(
                measured,
                ", but the proxy masked {} of {} secret notes: masking did not run",
                thousands(query.secret_rows_masked),
                thousands(query.secret_rows)
            );
        }
        checks.push(BudgetCheck {
            item: format!(
                "masking a {}-row result ≤ {BUDGET_MAX_MASKED_RATIO:.2}× the unmasked time",
                thousands(query.rows)
            ),
            met: query.masking_observed() && ratio <= BUDGET_MAX_MASKED_RATIO,
            measured,
        });
    }
    let peak = mib(stream.peak_kib);
    checks.push(BudgetCheck {
        item: format!(
            "≤ {BUDGET_MAX_PEAK_RSS_MIB:.0} MiB resident streaming a {:.0} MB result",
            stream.result_mb
        ),
        met: peak <= BUDGET_MAX_PEAK_RSS_MIB,
        measured: format!("peak {peak:.1} MiB"),
    });
    checks
}

#[cfg(test)]
mod tests {
    use gatehouse_proxy::{api::policy::FailureMode, mask::DETECTORS};

    use super::*;

    const STATUS: &str = "Name:\tgatehouse-proxy
Umask:\t0022
State:\tS (sleeping)
VmPeak:\t  812344 kB
VmSize:\t  745320 kB
VmHWM:\t   23456 kB
VmRSS:\t   18432 kB
Threads:\t3
";

    #[test]
    fn status_gives_name_resident_and_peak() {
        assert_eq!(
            parse_status(STATUS).unwrap(),
            ProcMemory {
                name: "gatehouse-proxy".into(),
                rss_kib: 18_432,
                peak_kib: 23_456,
            }
        );
    }

    #[test]
    fn status_without_memory_lines_is_an_error() {
        // A kernel thread, or a process that has exited (a zombie).
        let err = parse_status("Name:\tkthreadd\nState:\tS (sleeping)\n").unwrap_err();
        assert!(err.contains("VmRSS"), "{err}");
        assert!(parse_status("VmRSS:\t12 MB\nVmHWM:\t1 kB\nName:\tx\n").is_err());
        assert!(parse_status("").is_err());
    }

    #[test]
    fn medians_of_odd_and_even_counts() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), Some(2.5));
        assert_eq!(median(&[7.5]), Some(7.5));
        assert_eq!(median(&[]), None);
    }

    #[test]
    fn thousands_are_separated() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1,000");
        assert_eq!(thousands(1_000_000), "1,000,000");
        assert_eq!(thousands(12_345_678), "12,345,678");
    }

    fn all_detectors() -> Masker {
        Masker::new(
            Scanner::new(&["all"]).unwrap(),
            Vec::new(),
            Vec::new(),
            16 << 20,
            FailureMode::Strict,
        )
    }

    #[test]
    fn the_table_columns_are_planned_like_the_proxy_reads_them() {
        assert!(!all_detectors().plan(&fields(), &[]).is_passthrough());
    }

    #[test]
    fn in_process_figures_find_exactly_the_secret_rows() {
        let figures = in_process_throughput(&all_detectors(), 300, Duration::ZERO, Duration::ZERO).unwrap();
        let summary: Vec<(&str, &str, u64, u64)> = figures
            .iter()
            .map(|f| (f.stage, f.corpus, f.masked, f.items))
            .collect();
        assert_eq!(
            summary,
            [
                ("scanner", "clean", 0, 1200),
                ("scanner", "mixed", 3, 1200),
                ("masker", "clean", 0, 300),
                ("masker", "mixed", 3, 300),
            ]
        );
        assert!(figures.iter().all(|f| f.mb_per_s > 0.0), "{figures:?}");
    }

    fn figures(masked_s: f64, secret_rows_masked: u64, peak_kib: u64) -> (QueryFigures, StreamFigures) {
        let runs = |target: &str, runs_s: Vec<f64>| TimedRuns {
            target: target.to_owned(),
            runs_s,
        };
        let query = QueryFigures {
            rows: 1_000_000,
            result_mb: 190.0,
            targets: vec![
                runs(super::super::DIRECT, vec![1.0, 1.2, 1.1]),
                runs(UNMASKED, vec![2.0, 2.1, 1.9]),
                runs(MASKED, vec![masked_s, masked_s, 9.9]),
            ],
            secret_rows: 10_000,
            secret_rows_masked,
        };
        let stream = StreamFigures {
            query: STREAM_QUERY.to_owned(),
            rows: 1_000_000,
            result_mb: 960.0,
            seconds: 4.0,
            rss_before_kib: 10_240,
            peak_kib,
            rss_after_kib: 12_288,
        };
        (query, stream)
    }

    #[test]
    fn the_budget_wants_masking_seen_and_within_its_ratio() {
        let (query, stream) = figures(2.4, 10_000, 30 * 1024);
        assert!((query.unmasked_ratio().unwrap() - 2.0 / 1.1).abs() < 1e-9);
        let report = MaskingReport::new(Vec::new(), query, stream);
        let verdicts: Vec<(bool, &str)> = report
            .budget
            .iter()
            .map(|c| (c.met, c.measured.as_str()))
            .collect();
        assert_eq!(
            verdicts,
            [(true, "1.200× (2.40 s vs 2.00 s)"), (true, "peak 30.0 MiB")]
        );
        let text = report.render();
        assert!(
            text.contains("gatehouse-masked      2.400 s   1.200× gatehouse"),
            "{text}"
        );
        assert!(text.contains("masked 10,000 of 10,000 secret notes"), "{text}");
        let enabled = DETECTORS.iter().filter(|d| !d.opt_in).count();
        assert!(enabled > 10);
        assert!(text.contains(&format!("[all] ({enabled} detectors)")), "{text}");

        let (query, stream) = figures(2.0, 0, 65 * 1024);
        let report = MaskingReport::new(Vec::new(), query, stream);
        assert!(report.budget.iter().all(|c| !c.met), "{:?}", report.budget);
        assert!(
            report.budget[0]
                .measured
                .ends_with("masked 0 of 10,000 secret notes: masking did not run"),
            "{:?}",
            report.budget[0]
        );
        assert!(report.render().contains("NOT MET"));
    }
}

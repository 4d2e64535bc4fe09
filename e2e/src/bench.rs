//! `make bench`: pgbench `-S` against PostgreSQL directly and through proxies
//! in the same run, the masking figures ([`masking`], on the rows of
//! [`corpus`]), and the report that compares them with the performance
//! budget in DESIGN.md.
//!
//! The runs are a list of targets × scenarios; a new proxy setting (masking,
//! recording) is one more target, a new workload one more scenario. This
//! module holds what does not need a running server — running pgbench,
//! reading its output and latency logs, percentiles, the report — so that it
//! is unit-tested; `src/bin/bench.rs` starts the servers and drives it.

pub mod corpus;
pub mod masking;
pub mod operator;

use std::{
    fmt::Write as _,
    path::{Path, PathBuf},
};

use serde::Serialize;

use crate::{
    error::{Error, Result, StepExt},
    process::Spawn,
};

/// The target every other is compared with.
pub const DIRECT: &str = "direct";
/// Throughput a proxy must keep at [`BUDGET_CLIENTS`] clients, as a share of direct.
pub const BUDGET_MIN_RATIO: f64 = 0.80;
/// Clients at which the throughput budget applies.
pub const BUDGET_CLIENTS: u32 = 10;
/// Latency a proxy may add at p50 with one client.
pub const BUDGET_ADDED_P50_US: f64 = 50.0;

/// How pgbench sends its statements (`-M`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// One Query message per statement.
    Simple,
    /// Parse once, then Bind/Execute per statement.
    Prepared,
}

impl Protocol {
    /// The value of pgbench's `-M`.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Simple => "simple",
            Protocol::Prepared => "prepared",
        }
    }
}

/// One workload: pgbench `-S` with a number of clients and a protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Scenario {
    /// Concurrent connections (`-c`).
    pub clients: u32,
    /// Query protocol (`-M`).
    pub protocol: Protocol,
}

impl Scenario {
    /// pgbench threads (`-j`): at most two, the machine's cores are shared with the servers.
    pub fn threads(self) -> u32 {
        self.clients.clamp(1, 2)
    }

    /// A short name, e.g. `10 clients, prepared`.
    pub fn name(self) -> String {
        let noun = if self.clients == 1 { "client" } else { "clients" };
        format!("{} {noun}, {}", self.clients, self.protocol.as_str())
    }
}

/// The scenarios `make bench` runs: 1 and 10 clients, simple and prepared.
pub fn default_scenarios() -> Vec<Scenario> {
    [1, BUDGET_CLIENTS]
        .into_iter()
        .flat_map(|clients| {
            [Protocol::Simple, Protocol::Prepared].map(|protocol| Scenario { clients, protocol })
        })
        .collect()
}

/// Where and as whom pgbench connects.
#[derive(Clone)]
pub struct Endpoint {
    /// Loopback port.
    pub port: u16,
    /// Login role (a proxy's caller name).
    pub user: String,
    /// Password or token, handed to pgbench in `PGPASSWORD`, never on its command line.
    pub password: String,
    /// Database name.
    pub database: String,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint")
            .field("port", &self.port)
            .field("user", &self.user)
            .field("database", &self.database)
            .finish_non_exhaustive()
    }
}

/// What one measured pgbench run gave.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Measurement {
    /// Transactions per second, as pgbench reports it (without connection time).
    pub tps: f64,
    /// Transactions completed.
    pub transactions: u64,
    /// Median latency, µs.
    pub p50_us: u64,
    /// 99th percentile latency, µs.
    pub p99_us: u64,
}

/// Runs pgbench, each run with its own output folder.
#[derive(Debug, Clone)]
pub struct Pgbench {
    program: PathBuf,
    dir: PathBuf,
}

impl Pgbench {
    /// pgbench at `program`, writing logs under `dir`.
    pub fn new(program: PathBuf, dir: PathBuf) -> Self {
        Pgbench { program, dir }
    }

    fn spawn(&self, endpoint: &Endpoint, label: &str) -> Spawn {
        Spawn::new("pgbench", &self.program, self.dir.join(format!("{label}.log")))
            .env("PGPASSWORD", &endpoint.password)
            .env("PGSSLMODE", "disable")
            .args(["-h", "127.0.0.1", "-p"])
            .args([endpoint.port.to_string(), "-U".into(), endpoint.user.clone()])
    }

    /// `pgbench -i -s scale` directly on the server.
    pub fn initialise(&self, endpoint: &Endpoint, scale: u32) -> Result<()> {
        self.spawn(endpoint, "init")
            .args(["-i", "-q", "-s"])
            .args([scale.to_string(), endpoint.database.clone()])
            .run("initialise the pgbench tables (pgbench -i)")
    }

    /// A run that is not measured, so that caches and connections are warm.
    pub fn warm_up(&self, endpoint: &Endpoint, scenario: Scenario, seconds: u32, label: &str) -> Result<()> {
        let label = format!("{label}-warm-up");
        self.select_only(endpoint, scenario, seconds, &label)
            .run(&format!("warm up {label}"))
    }

    /// A measured `pgbench -S` run; latencies come from its per-transaction log.
    pub fn measure(
        &self,
        endpoint: &Endpoint,
        scenario: Scenario,
        seconds: u32,
        label: &str,
    ) -> Result<Measurement> {
        let step = format!("run pgbench {label}");
        let logs = self.dir.join(label);
        std::fs::create_dir_all(&logs).step(&step)?;
        let spawn = self
            .select_only(endpoint, scenario, seconds, label)
            .args(["-l", "--log-prefix"])
            .args([logs.join("tx")]);
        let output_file = self.dir.join(format!("{label}.log"));
        spawn.run(&step)?;
        let output = std::fs::read_to_string(&output_file).step(&step)?;
        let summary = parse_summary(&output).map_err(|e| Error::step(&step, e))?;
        let mut latencies = read_latency_logs(&logs).map_err(|e| Error::step(&step, e))?;
        // The logs are large; the percentiles are what is kept.
        let _ = std::fs::remove_dir_all(&logs);
        let p50_us =
            percentile(&mut latencies, 50.0).ok_or_else(|| Error::step(&step, "no transaction logged"))?;
        let p99_us = percentile(&mut latencies, 99.0).unwrap_or(p50_us);
        Ok(Measurement {
            tps: summary.tps,
            transactions: summary.transactions,
            p50_us,
            p99_us,
        })
    }

    fn select_only(&self, endpoint: &Endpoint, scenario: Scenario, seconds: u32, label: &str) -> Spawn {
        self.spawn(endpoint, label).args(["-S", "-n", "-T"]).args([
            seconds.to_string(),
            "-c".into(),
            scenario.clients.to_string(),
            "-j".into(),
            scenario.threads().to_string(),
            "-M".into(),
            scenario.protocol.as_str().into(),
            endpoint.database.clone(),
        ])
    }
}

/// The lines of pgbench's summary the report uses.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Summary {
    /// `tps = …`
    pub tps: f64,
    /// `number of transactions actually processed: …`
    pub transactions: u64,
}

/// Reads pgbench's summary; a run with failed transactions is an error.
pub fn parse_summary(output: &str) -> std::result::Result<Summary, String> {
    let field = |prefix: &str| {
        output
            .lines()
            .find_map(|line| line.trim().strip_prefix(prefix))
            .and_then(|rest| rest.split_whitespace().next())
            .map(|s| s.trim_end_matches(|c: char| !c.is_ascii_digit()))
    };
    if let Some(failed) = field("number of failed transactions:")
        && failed != "0"
    {
        return Err(format!("{failed} transactions failed"));
    }
    let tps = field("tps =")
        .and_then(|s| s.parse::<f64>().ok())
        .ok_or("pgbench printed no `tps = ` line")?;
    let transactions = field("number of transactions actually processed:")
        .and_then(|s| s.split('/').next()?.parse::<u64>().ok())
        .ok_or("pgbench printed no transaction count")?;
    Ok(Summary { tps, transactions })
}

/// Latencies (µs, the third field) from every per-transaction log in `dir`
/// (pgbench writes one file per thread).
pub fn read_latency_logs(dir: &Path) -> std::result::Result<Vec<u64>, String> {
    let mut latencies = Vec::new();
    let entries = std::fs::read_dir(dir).map_err(|e| format!("cannot list {}: {e}", dir.display()))?;
    for entry in entries {
        let path = entry.map_err(|e| e.to_string())?.path();
        let text =
            std::fs::read_to_string(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        parse_latency_log(&text, &mut latencies).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    Ok(latencies)
}

/// Appends the latencies of one pgbench log (`client tx latency_us script epoch epoch_us`).
pub fn parse_latency_log(text: &str, into: &mut Vec<u64>) -> std::result::Result<(), String> {
    for (number, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let latency = line
            .split_whitespace()
            .nth(2)
            .ok_or_else(|| format!("line {}: fewer than three fields", number + 1))?;
        // A failed transaction logs a word ("failed", "serialization") instead of a time.
        let latency = latency
            .parse::<u64>()
            .map_err(|_| format!("line {}: transaction not completed: {line}", number + 1))?;
        into.push(latency);
    }
    Ok(())
}

/// The nearest-rank percentile `p` (0–100) of `values`, sorting them in place.
pub fn percentile(values: &mut [u64], p: f64) -> Option<u64> {
    if values.is_empty() {
        return None;
    }
    values.sort_unstable();
    let rank = (p / 100.0 * values.len() as f64).ceil() as usize;
    Some(values[rank.clamp(1, values.len()) - 1])
}

/// One line of the report: a target under a scenario.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Row {
    /// The workload.
    pub scenario: Scenario,
    /// Which server pgbench talked to (`direct`, `gatehouse`, `pgbouncer`, …).
    pub target: String,
    /// What it measured.
    #[serde(flatten)]
    pub measurement: Measurement,
    /// TPS as a share of [`DIRECT`] in the same scenario.
    pub ratio_to_direct: Option<f64>,
}

/// One line of DESIGN.md's performance budget, judged on this run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BudgetCheck {
    /// What the budget asks.
    pub item: String,
    /// Whether this run meets it.
    pub met: bool,
    /// The measured value.
    pub measured: String,
}

/// The whole run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    /// Seconds of each measured run.
    pub seconds: u32,
    /// pgbench scale factor.
    pub scale: u32,
    /// Cores the servers and pgbench share.
    pub cores: usize,
    /// The PostgreSQL server's version.
    pub server_version: String,
    /// Every target under every scenario, in run order.
    pub rows: Vec<Row>,
    /// The budget checks for [`Report::judged`].
    pub budget: Vec<BudgetCheck>,
    /// The target the budget is checked for.
    pub judged: String,
    /// What one proxy setting costs: a target with it against one without
    /// ([`Report::compare`]).
    pub costs: Vec<BudgetCheck>,
}

impl Report {
    /// A report over `rows`, filling in ratios and checking the budget for `judged`
    /// (compared with direct and with `rival`).
    pub fn new(
        mut rows: Vec<Row>,
        judged: &str,
        rival: &str,
        seconds: u32,
        scale: u32,
        server_version: String,
    ) -> Report {
        let direct: Vec<(Scenario, f64)> = rows
            .iter()
            .filter(|r| r.target == DIRECT)
            .map(|r| (r.scenario, r.measurement.tps))
            .collect();
        for row in &mut rows {
            row.ratio_to_direct = direct
                .iter()
                .find(|(s, _)| *s == row.scenario)
                .filter(|(_, tps)| *tps > 0.0)
                .map(|(_, tps)| row.measurement.tps / tps);
        }
        let budget = budget_checks(&rows, judged, rival);
        Report {
            seconds,
            scale,
            cores: std::thread::available_parallelism().map_or(1, usize::from),
            server_version,
            rows,
            budget,
            judged: judged.to_owned(),
            costs: Vec::new(),
        }
    }

    /// Checks that `with` (a proxy with `setting` on) keeps at least
    /// `1 - max_loss` of the TPS of `without` (the same proxy with it off) at
    /// [`BUDGET_CLIENTS`] clients, in every protocol.
    pub fn compare(&mut self, setting: &str, with: &str, without: &str, max_loss: f64) {
        for row in self.rows.iter().filter(|r| r.target == with) {
            if row.scenario.clients != BUDGET_CLIENTS {
                continue;
            }
            let Some(base) = find(&self.rows, row.scenario, without) else {
                continue;
            };
            let (on, off) = (row.measurement.tps, base.measurement.tps);
            let loss = 1.0 - on / off.max(f64::MIN_POSITIVE);
            self.costs.push(BudgetCheck {
                item: format!(
                    "{setting}: at most {:.0}% fewer TPS, {with} vs {without} ({})",
                    max_loss * 100.0,
                    row.scenario.name()
                ),
                met: loss <= max_loss,
                measured: format!("{on:.0} vs {off:.0} TPS ({:+.1}%)", -loss * 100.0),
            });
        }
    }

    fn row(&self, scenario: Scenario, target: &str) -> Option<&Row> {
        find(&self.rows, scenario, target)
    }

    /// The report as a plain-text table with the budget lines.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "pgbench -S, scale {}, {} s per run, {} cores shared by pgbench and the servers, PostgreSQL {}",
            self.scale, self.seconds, self.cores, self.server_version
        );
        let _ = writeln!(
            out,
            "\n{:<22} {:<14} {:>10} {:>9} {:>8} {:>8}",
            "scenario", "target", "TPS", "×direct", "p50 µs", "p99 µs"
        );
        let mut last = None;
        for row in &self.rows {
            if last.is_some_and(|s| s != row.scenario) {
                out.push('\n');
            }
            last = Some(row.scenario);
            let ratio = row.ratio_to_direct.map_or("-".to_owned(), |r| format!("{r:.3}"));
            let _ = writeln!(
                out,
                "{:<22} {:<14} {:>10.1} {:>9} {:>8} {:>8}",
                row.scenario.name(),
                row.target,
                row.measurement.tps,
                ratio,
                row.measurement.p50_us,
                row.measurement.p99_us
            );
        }
        let _ = writeln!(out, "\nAdded p50 latency vs direct at 1 client:");
        let one_client = self
            .rows
            .iter()
            .filter(|r| r.scenario.clients == 1 && r.target != DIRECT);
        for row in one_client {
            if let Some(direct) = self.row(row.scenario, DIRECT) {
                let added = row.measurement.p50_us as i64 - direct.measurement.p50_us as i64;
                let _ = writeln!(
                    out,
                    "  {:<22} {:<14} {added:+} µs",
                    row.scenario.name(),
                    row.target
                );
            }
        }
        let _ = writeln!(out, "\nBudget (DESIGN.md) for {}:", self.judged);
        for check in &self.budget {
            let verdict = if check.met { "met" } else { "NOT MET" };
            let _ = writeln!(out, "  {:<7} {}: {}", verdict, check.item, check.measured);
        }
        if !self.costs.is_empty() {
            let _ = writeln!(out, "\nWhat one setting costs:");
        }
        for check in &self.costs {
            let verdict = if check.met { "met" } else { "NOT MET" };
            let _ = writeln!(out, "  {:<7} {}: {}", verdict, check.item, check.measured);
        }
        out
    }
}

fn find<'a>(rows: &'a [Row], scenario: Scenario, target: &str) -> Option<&'a Row> {
    rows.iter().find(|r| r.scenario == scenario && r.target == target)
}

fn budget_checks(rows: &[Row], judged: &str, rival: &str) -> Vec<BudgetCheck> {
    let mut checks = Vec::new();
    for row in rows.iter().filter(|r| r.target == judged) {
        let scenario = row.scenario;
        let tps = row.measurement.tps;
        if scenario.clients == BUDGET_CLIENTS {
            if let Some(ratio) = row.ratio_to_direct {
                checks.push(BudgetCheck {
                    item: format!("≥ {BUDGET_MIN_RATIO:.2}× direct TPS ({})", scenario.name()),
                    met: ratio >= BUDGET_MIN_RATIO,
                    measured: format!("{ratio:.3}×"),
                });
            }
            if let Some(other) = find(rows, scenario, rival) {
                let theirs = other.measurement.tps;
                checks.push(BudgetCheck {
                    item: format!("ahead of {rival} ({})", scenario.name()),
                    met: tps > theirs,
                    measured: format!(
                        "{tps:.0} vs {theirs:.0} TPS ({:.3}×)",
                        tps / theirs.max(f64::MIN_POSITIVE)
                    ),
                });
            }
        }
        if scenario.clients == 1
            && let Some(direct) = find(rows, scenario, DIRECT)
        {
            let added = row.measurement.p50_us as f64 - direct.measurement.p50_us as f64;
            checks.push(BudgetCheck {
                item: format!("≤ {BUDGET_ADDED_P50_US:.0} µs added at p50 ({})", scenario.name()),
                met: added <= BUDGET_ADDED_P50_US,
                measured: format!("{added:+.0} µs"),
            });
        }
    }
    checks
}

#[cfg(test)]
mod tests {
    use super::*;

    const PGBENCH_15: &str = "pgbench (15.18 (Debian 15.18-0+deb12u1))
transaction type: <builtin: select only>
scaling factor: 10
query mode: prepared
number of clients: 10
number of threads: 2
maximum number of tries: 1
duration: 10 s
number of transactions actually processed: 183456
number of failed transactions: 0 (0.000%)
latency average = 0.545 ms
initial connection time = 12.345 ms
tps = 18345.612345 (without initial connection time)
";

    #[test]
    fn the_summary_gives_tps_and_transactions() {
        let summary = parse_summary(PGBENCH_15).unwrap();
        assert_eq!(summary.transactions, 183_456);
        assert!((summary.tps - 18_345.612_345).abs() < 1e-9, "{summary:?}");
    }

    #[test]
    fn failed_transactions_are_an_error() {
        let output = PGBENCH_15.replace(
            "failed transactions: 0 (0.000%)",
            "failed transactions: 3 (0.002%)",
        );
        assert_eq!(parse_summary(&output).unwrap_err(), "3 transactions failed");
    }

    #[test]
    fn output_without_tps_is_an_error() {
        assert!(parse_summary("pgbench: error: connection refused\n").is_err());
    }

    #[test]
    fn latency_is_the_third_field() {
        let mut latencies = Vec::new();
        parse_latency_log(
            "0 0 123 0 1764330000 123456\n1 0 98 0 1764330000 123999\n\n",
            &mut latencies,
        )
        .unwrap();
        assert_eq!(latencies, [123, 98]);
    }

    #[test]
    fn a_failed_transaction_in_the_log_is_an_error() {
        let mut latencies = Vec::new();
        let err = parse_latency_log("0 0 123 0 1 2\n0 1 failed 0 1 3\n", &mut latencies).unwrap_err();
        assert!(err.contains("line 2"), "{err}");
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let mut values: Vec<u64> = (1..=100).rev().collect();
        assert_eq!(percentile(&mut values, 50.0), Some(50));
        assert_eq!(percentile(&mut values, 99.0), Some(99));
        assert_eq!(percentile(&mut values, 100.0), Some(100));
        assert_eq!(percentile(&mut [7], 99.0), Some(7));
        assert_eq!(percentile(&mut [], 50.0), None);
    }

    #[test]
    fn scenarios_cover_one_and_ten_clients_in_both_protocols() {
        let names: Vec<String> = default_scenarios().into_iter().map(Scenario::name).collect();
        assert_eq!(
            names,
            [
                "1 client, simple",
                "1 client, prepared",
                "10 clients, simple",
                "10 clients, prepared"
            ]
        );
        assert_eq!(default_scenarios()[0].threads(), 1);
        assert_eq!(default_scenarios()[2].threads(), 2);
    }

    fn row(clients: u32, target: &str, tps: f64, p50_us: u64) -> Row {
        Row {
            scenario: Scenario {
                clients,
                protocol: Protocol::Simple,
            },
            target: target.to_owned(),
            measurement: Measurement {
                tps,
                transactions: 1,
                p50_us,
                p99_us: p50_us * 2,
            },
            ratio_to_direct: None,
        }
    }

    #[test]
    fn the_report_judges_the_budget_against_direct_and_the_rival() {
        let rows = vec![
            row(1, DIRECT, 5000.0, 100),
            row(1, "gatehouse", 4500.0, 140),
            row(1, "pgbouncer", 4000.0, 170),
            row(10, DIRECT, 20000.0, 400),
            row(10, "gatehouse", 15000.0, 600),
            row(10, "pgbouncer", 17000.0, 500),
        ];
        let report = Report::new(rows, "gatehouse", "pgbouncer", 10, 10, "15".into());
        let ratio = report.rows[4].ratio_to_direct.unwrap();
        assert!((ratio - 0.75).abs() < 1e-9, "{ratio}");
        let verdicts: Vec<(bool, &str)> = report
            .budget
            .iter()
            .map(|c| (c.met, c.measured.as_str()))
            .collect();
        assert_eq!(
            verdicts,
            [
                (true, "+40 µs"),
                (false, "0.750×"),
                (false, "15000 vs 17000 TPS (0.882×)")
            ]
        );
        let text = report.render();
        assert!(text.contains("NOT MET"), "{text}");
        assert!(text.contains("pgbouncer      +70 µs"), "{text}");
    }

    #[test]
    fn a_setting_is_judged_by_the_tps_it_costs_at_ten_clients() {
        let rows = vec![
            row(1, "gatehouse", 4500.0, 140),
            row(1, "gatehouse+rec", 3000.0, 200),
            row(10, "gatehouse", 10000.0, 600),
            row(10, "gatehouse+rec", 9600.0, 620),
        ];
        let mut report = Report::new(rows, "gatehouse", "pgbouncer", 10, 10, "15".into());
        report.compare("recording", "gatehouse+rec", "gatehouse", 0.05);
        let verdicts: Vec<(bool, &str)> = report
            .costs
            .iter()
            .map(|c| (c.met, c.measured.as_str()))
            .collect();
        assert_eq!(verdicts, [(true, "9600 vs 10000 TPS (-4.0%)")]);
        report.rows[3].measurement.tps = 9400.0;
        report.costs.clear();
        report.compare("recording", "gatehouse+rec", "gatehouse", 0.05);
        assert!(!report.costs[0].met, "{:?}", report.costs);
        assert!(report.render().contains("What one setting costs"));
    }
}

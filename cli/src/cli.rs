//! The command line: the store to read, the commands, and [`run`].

use std::{io::Write, path::PathBuf, time::SystemTime};

use clap::{Args, Parser, Subcommand, ValueEnum};
use gatehouse_crds::Decision;
use gatehouse_recording::store::{S3Settings, Store};
use k8s_openapi::jiff::Timestamp;

use crate::{
    Error, Result,
    approvals::{self, Scope},
    recordings::Recordings,
    replay, sessions, time, verify,
};

/// Gatehouse for approvers and security teams: review held statements;
/// list, replay and verify what AI agents did through the gateway.
#[derive(Debug, Parser)]
#[command(
    name = "kubectl-gatehouse",
    bin_name = "kubectl gatehouse",
    version,
    about,
    long_about = "Gatehouse for approvers and security teams: review held statements; list, replay and verify \
what AI agents did through the gateway.

Approvals (pending, approve, deny) talk to the Kubernetes API as you: your kubeconfig \
(KUBECONFIG honoured) and its context's namespace unless -n is given. A review is added under \
the username the API server knows you by; whether you may add it is the API server's decision, \
and its refusal is printed as it gives it.

Recordings are read from a local folder (--dir) or an S3 bucket (--s3-bucket), the store the \
proxies write to (recording.* in their configuration). S3 credentials come from \
AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, never from the command line.

Recordings are evidence only once verified: `verify` (or `replay --public-key`) checks the \
gateway's signature, every chunk's digest and the chain of events, with the gateway's public key \
(SPKI PEM: `openssl pkey -in signing-key.pem -pubout`).

Exit codes: 0 success; 1 a session did not verify, or the API server refused a review or has no \
such request; 2 usage errors, unreadable keys, unreachable stores or API server, sessions not found."
)]
pub struct Cli {
    /// Where the recordings are (the recording commands).
    #[command(flatten)]
    pub store: StoreArgs,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The recordings store: a folder or a bucket, exactly one.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Recordings store (exactly one of --dir, --s3-bucket)")]
pub struct StoreArgs {
    /// A local folder of recordings, the one holding NAMESPACE/CONNECTION/YYYY/MM/DD/SESSION folders.
    #[arg(long, global = true, env = "GATEHOUSE_RECORDINGS_DIR", value_name = "PATH")]
    pub dir: Option<PathBuf>,
    /// An S3 bucket of recordings; credentials from AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY.
    #[arg(long, global = true, env = "GATEHOUSE_S3_BUCKET", value_name = "BUCKET")]
    pub s3_bucket: Option<String>,
    /// The S3 endpoint URL, for servers other than AWS.
    #[arg(long, global = true, env = "GATEHOUSE_S3_ENDPOINT", value_name = "URL")]
    pub s3_endpoint: Option<String>,
    /// The bucket's region.
    #[arg(
        long,
        global = true,
        env = "GATEHOUSE_S3_REGION",
        value_name = "REGION",
        default_value = "us-east-1"
    )]
    pub s3_region: String,
    /// Path-style addressing (endpoint/bucket/key), which most S3-compatible servers want.
    #[arg(long, global = true, env = "GATEHOUSE_S3_PATH_STYLE")]
    pub s3_path_style: bool,
    /// The key prefix the recordings are under in the bucket (the proxies' recording prefix).
    #[arg(
        long,
        global = true,
        env = "GATEHOUSE_S3_PREFIX",
        value_name = "PREFIX",
        default_value = ""
    )]
    pub s3_prefix: String,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// List the ApprovalRequests waiting for reviews, newest first: name,
    /// connection, requester, statement (secrets masked, on one line),
    /// approvals so far of those required, and time left before it expires.
    Pending(PendingArgs),
    /// Approve a held statement: add your review, decision Approved, to the
    /// ApprovalRequest NAME.
    ///
    /// The review names you as the API server authenticates you (a
    /// SelfSubjectReview), with the request's approver groups you belong
    /// to, and is added with a JSON patch appending to
    /// /spec/reviews, as the README's `kubectl patch` does. The API server
    /// decides whether you may: its refusal (you sent the statement, you are
    /// not among the approvers, the request is already decided) is printed as
    /// it gives it, with exit code 1.
    Approve(ApproveArgs),
    /// Deny a held statement: add your review, decision Denied, to the
    /// ApprovalRequest NAME, with a reason the requester is shown.
    ///
    /// One denial decides the request. Like `approve`, the API server decides
    /// whether you may, and its refusal is printed with exit code 1.
    Deny(DenyArgs),
    /// List recorded sessions, oldest first: id, start, connection, user,
    /// how it ended (`open` without a manifest yet), events, chunks.
    ///
    /// The listing reads the store as it is and is not verified; use
    /// `verify` on a session before relying on it.
    Sessions(SessionsArgs),
    /// Print a session's timeline: who connected from where, each statement
    /// with its decision, what came back (rows, errors, notices), and the
    /// disconnect.
    ///
    /// With --public-key the session is verified first and nothing is shown
    /// when it does not verify (exit 1) unless --unverified is given.
    /// Without a key the timeline is shown under a warning that it is NOT
    /// verified.
    Replay(ReplayArgs),
    /// Check that a session is exactly what the gateway recorded and signed:
    /// the manifest's signature, every chunk's SHA-256, the chain of events,
    /// and the session's place in the store.
    ///
    /// Prints `verified: ...` and exits 0, or `NOT VERIFIED: ...` naming the
    /// chunk, line and event that failed and exits 1.
    Verify(VerifyArgs),
}

/// The namespace of the approval commands.
#[derive(Debug, Clone, Args)]
pub struct NamespaceArgs {
    /// The namespace of the requests; the kubeconfig context's namespace by default.
    #[arg(short, long, value_name = "NAMESPACE")]
    pub namespace: Option<String>,
}

impl NamespaceArgs {
    /// The namespace given, or the client's default (its kubeconfig context's).
    pub fn or_default(&self, client: &kube::Client) -> String {
        self.namespace
            .clone()
            .unwrap_or_else(|| client.default_namespace().to_owned())
    }
}

/// How `pending` prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// Aligned columns for people.
    Table,
    /// The requests as a Kubernetes List, as `kubectl get -o json` prints it.
    Json,
}

/// `pending` options.
#[derive(Debug, Clone, Args)]
pub struct PendingArgs {
    /// Where to look.
    #[command(flatten)]
    pub namespace: NamespaceArgs,
    /// Every namespace you may list, with a NAMESPACE column.
    #[arg(short = 'A', long, conflicts_with = "namespace")]
    pub all_namespaces: bool,
    /// The output format.
    #[arg(short, long, value_enum, default_value_t = Output::Table)]
    pub output: Output,
}

/// `approve` options.
#[derive(Debug, Clone, Args)]
pub struct ApproveArgs {
    /// The ApprovalRequest's name.
    pub name: String,
    /// Where it is.
    #[command(flatten)]
    pub namespace: NamespaceArgs,
    /// Why, for the record (a ticket, a change number).
    #[arg(long, value_name = "TEXT")]
    pub reason: Option<String>,
}

/// `deny` options.
#[derive(Debug, Clone, Args)]
pub struct DenyArgs {
    /// The ApprovalRequest's name.
    pub name: String,
    /// Where it is.
    #[command(flatten)]
    pub namespace: NamespaceArgs,
    /// Why; the requester is shown it.
    #[arg(long, value_name = "TEXT")]
    pub reason: String,
}

/// `sessions` options.
#[derive(Debug, Clone, Args)]
pub struct SessionsArgs {
    /// Only sessions through this Connection: NAMESPACE/NAME, or NAME in any namespace.
    #[arg(long, value_name = "NS/NAME")]
    pub connection: Option<String>,
    /// Only sessions of this user (the caller's username).
    #[arg(long)]
    pub user: Option<String>,
    /// Only sessions still going at or after TIME: RFC 3339 UTC (2026-11-28T17:00:00Z) or a
    /// duration ago (2h, 30m, 1day).
    #[arg(long, value_name = "TIME", value_parser = time::parse_arg)]
    pub since: Option<SystemTime>,
    /// Only sessions that started at or before TIME (same forms as --since).
    #[arg(long, value_name = "TIME", value_parser = time::parse_arg)]
    pub until: Option<SystemTime>,
}

/// `replay` options.
#[derive(Debug, Clone, Args)]
pub struct ReplayArgs {
    /// The session id (20261128T175300Z-3f9a1c2b0d4e5f60) or its folder's key.
    pub session: String,
    /// Verify the session with the gateway's public key (SPKI PEM) before showing it.
    #[arg(long, value_name = "FILE", env = "GATEHOUSE_RECORDING_PUBLIC_KEY")]
    pub public_key: Option<PathBuf>,
    /// Show the timeline even when it does not verify (under a warning; exit code 0).
    #[arg(long)]
    pub unverified: bool,
}

/// `verify` options.
#[derive(Debug, Clone, Args)]
pub struct VerifyArgs {
    /// The session id (20261128T175300Z-3f9a1c2b0d4e5f60) or its folder's key.
    pub session: String,
    /// The gateway's public key (SPKI PEM), the pair of the proxies' recording.signingKeyFile.
    #[arg(long, value_name = "FILE", env = "GATEHOUSE_RECORDING_PUBLIC_KEY")]
    pub public_key: PathBuf,
}

impl StoreArgs {
    /// The store these arguments name; `env` reads the S3 credentials.
    pub fn recordings(&self, env: impl Fn(&str) -> Option<String>) -> Result<Recordings> {
        match (&self.dir, &self.s3_bucket) {
            (Some(dir), None) => Ok(Recordings::new(
                Store::Local(dir.clone()),
                "",
                format!("folder {}", dir.display()),
            )),
            (None, Some(bucket)) => {
                let credential = |name: &str| {
                    env(name).filter(|v| !v.is_empty()).ok_or_else(|| {
                        Error::Usage(format!(
                            "--s3-bucket needs S3 credentials in the environment: {name} is not set \
                             (both AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY are needed)"
                        ))
                    })
                };
                let settings = S3Settings {
                    endpoint: self.s3_endpoint.clone(),
                    region: self.s3_region.clone(),
                    bucket: bucket.clone(),
                    path_style: self.s3_path_style,
                    access_key_id: credential("AWS_ACCESS_KEY_ID")?,
                    secret_access_key: credential("AWS_SECRET_ACCESS_KEY")?,
                };
                let mut description = format!("bucket {bucket}");
                if !self.s3_prefix.trim_matches('/').is_empty() {
                    description.push_str(&format!(" under {}", self.s3_prefix));
                }
                Ok(Recordings::new(
                    Store::s3(&settings),
                    &self.s3_prefix,
                    description,
                ))
            }
            (Some(_), Some(_)) => Err(Error::Usage(
                "both --dir (or GATEHOUSE_RECORDINGS_DIR) and --s3-bucket (or GATEHOUSE_S3_BUCKET) are set: \
                 choose one store"
                    .into(),
            )),
            (None, None) => Err(Error::Usage(
                "no recordings store: pass --dir PATH (or set GATEHOUSE_RECORDINGS_DIR) for a folder, \
                 or --s3-bucket BUCKET (or set GATEHOUSE_S3_BUCKET) for S3"
                    .into(),
            )),
        }
    }
}

/// Runs a command, writing what it shows to `out`. Errors are for the
/// caller to print; [`Error::exit_code`] says how to exit.
pub async fn run(cli: Cli, out: &mut dyn Write) -> Result<()> {
    let env = |name: &str| std::env::var(name).ok();
    match cli.command {
        Command::Pending(args) => {
            let client = approvals::connect().await?;
            let scope = if args.all_namespaces {
                Scope::All
            } else {
                Scope::Namespace(args.namespace.or_default(&client))
            };
            let requests = approvals::pending(&client, &scope).await?;
            match args.output {
                Output::Table => approvals::print_table(&requests, &scope, Timestamp::now(), out)?,
                Output::Json => approvals::print_json(&requests, out)?,
            }
        }
        Command::Approve(args) => {
            let reason = args.reason.as_deref().filter(|r| !r.trim().is_empty());
            review(&args.name, &args.namespace, Decision::Approved, reason, out).await?;
        }
        Command::Deny(args) => {
            if args.reason.trim().is_empty() {
                return Err(Error::Usage(
                    "deny needs a --reason: the requester is shown why".into(),
                ));
            }
            review(
                &args.name,
                &args.namespace,
                Decision::Denied,
                Some(&args.reason),
                out,
            )
            .await?;
        }
        Command::Sessions(args) => {
            let recordings = cli.store.recordings(env)?;
            let filter = sessions::Filter {
                connection: args.connection,
                user: args.user,
                since: args.since,
                until: args.until,
            };
            let found = sessions::find(&recordings, &filter).await?;
            sessions::print(&found, out)?;
        }
        Command::Replay(args) => {
            let recordings = cli.store.recordings(env)?;
            replay::run(
                &recordings,
                &args.session,
                args.public_key.as_deref(),
                args.unverified,
                out,
            )
            .await?;
        }
        Command::Verify(args) => {
            let recordings = cli.store.recordings(env)?;
            verify::run(&recordings, &args.session, &args.public_key, out).await?;
        }
    }
    out.flush()?;
    Ok(())
}

/// `approve` and `deny`: adds the caller's review and says what happened.
async fn review(
    name: &str,
    namespace: &NamespaceArgs,
    decision: Decision,
    reason: Option<&str>,
    out: &mut dyn Write,
) -> Result<()> {
    let client = approvals::connect().await?;
    let namespace = namespace.or_default(&client);
    let reviewed = approvals::review(&client, &namespace, name, decision, reason).await?;
    writeln!(out, "{reviewed}")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Cli {
        Cli::try_parse_from(std::iter::once("kubectl-gatehouse").chain(args.iter().copied())).unwrap()
    }

    fn no_env(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn the_command_line_is_consistent() {
        use clap::CommandFactory as _;
        Cli::command().debug_assert();
    }

    #[test]
    fn exactly_one_store() {
        let e = parse(&["sessions"]).store.recordings(no_env).unwrap_err();
        assert!(e.to_string().contains("no recordings store: pass --dir"), "{e}");
        assert_eq!(e.exit_code(), 2);
        let both = parse(&["sessions", "--dir", "/tmp", "--s3-bucket", "b"]);
        let e = both.store.recordings(no_env).unwrap_err();
        assert!(e.to_string().contains("choose one store"), "{e}");
        assert!(
            parse(&["--dir", "/tmp", "sessions"])
                .store
                .recordings(no_env)
                .is_ok()
        );
    }

    #[test]
    fn s3_credentials_come_from_the_environment_only() {
        let cli = parse(&["sessions", "--s3-bucket", "recordings", "--s3-prefix", "rec/"]);
        let e = cli.store.recordings(no_env).unwrap_err();
        assert!(e.to_string().contains("AWS_ACCESS_KEY_ID is not set"), "{e}");
        let env = |name: &str| Some(format!("value of {name}"));
        let recordings = cli.store.recordings(env).unwrap();
        assert_eq!(recordings.prefix(), "rec");
        // No flag takes a secret.
        use clap::CommandFactory as _;
        let flags: Vec<String> = Cli::command()
            .get_arguments()
            .filter_map(|a| a.get_long().map(str::to_owned))
            .collect();
        assert!(
            flags
                .iter()
                .all(|f| !f.contains("secret") && !f.contains("key-id")),
            "{flags:?}"
        );
    }

    #[test]
    fn approvals_take_a_namespace_and_deny_needs_a_reason() {
        let cli = parse(&["approve", "orders-db-x7k2p", "-n", "team-a"]);
        let Command::Approve(args) = cli.command else {
            panic!("not approve")
        };
        assert_eq!(args.namespace.namespace.as_deref(), Some("team-a"));
        assert_eq!(args.reason, None);
        let cli = parse(&["deny", "orders-db-x7k2p", "--reason", "not during the freeze"]);
        let Command::Deny(args) = cli.command else {
            panic!("not deny")
        };
        assert_eq!(args.namespace.namespace, None);
        assert_eq!(args.reason, "not during the freeze");
        let e = Cli::try_parse_from(["kubectl-gatehouse", "deny", "orders-db-x7k2p"]).unwrap_err();
        assert!(e.to_string().contains("--reason <TEXT>"), "{e}");
        assert_eq!(e.exit_code(), 2);
        let cli = parse(&["pending", "-A", "-o", "json"]);
        let Command::Pending(args) = cli.command else {
            panic!("not pending")
        };
        assert!(args.all_namespaces);
        assert_eq!(args.output, Output::Json);
        let e = Cli::try_parse_from(["kubectl-gatehouse", "pending", "-A", "-n", "team-a"]).unwrap_err();
        assert_eq!(e.kind(), clap::error::ErrorKind::ArgumentConflict, "{e}");
    }

    #[tokio::test]
    async fn an_empty_denial_reason_is_a_usage_error_before_any_connection() {
        // Checked before the API server is asked anything (none is reachable here).
        let cli = parse(&["deny", "orders-db-x7k2p", "--reason", "  "]);
        let mut out = Vec::new();
        let e = run(cli, &mut out).await.unwrap_err();
        assert!(matches!(e, Error::Usage(_)), "{e}");
        assert_eq!(e.exit_code(), 2);
        assert!(out.is_empty());
    }

    #[test]
    fn times_parse_on_the_command_line() {
        let cli = parse(&["sessions", "--since", "2h", "--until", "2026-11-28T17:00:00Z"]);
        let Command::Sessions(args) = cli.command else {
            panic!("not sessions")
        };
        assert!(args.since.is_some());
        assert_eq!(args.until, humantime::parse_rfc3339("2026-11-28T17:00:00Z").ok());
        let e = Cli::try_parse_from(["kubectl-gatehouse", "sessions", "--since", "soon"]).unwrap_err();
        assert!(e.to_string().contains("neither an RFC 3339"), "{e}");
    }
}

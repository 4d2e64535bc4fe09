//! `kubectl-gatehouse`: found on PATH by kubectl as `kubectl gatehouse`.
//! Parses the command line, runs the command, and exits 0 (success), 1 (a
//! session did not verify; the API server refused a review or has no such
//! request) or 2 (anything else, clap's usage errors too).

use std::process::ExitCode;

use clap::Parser as _;
use kubectl_gatehouse::{
    Error,
    cli::{self, Cli},
    text,
};

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let args = Cli::parse();
    // The Kubernetes client's TLS: ring, the provider the rest of the build
    // uses (the S3 client brings another, so rustls cannot pick one itself).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut out = std::io::stdout().lock();
    match cli::run(args, &mut out).await {
        Ok(()) => ExitCode::SUCCESS,
        // The reader went away (`| head`): nothing left to say.
        Err(Error::Output(e)) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(e) => {
            // Messages quote what the store holds (object names, manifest
            // fields): shown escaped, like everything recorded.
            let message = text::block(&e.to_string());
            let code = e.exit_code();
            if code == 2 {
                eprintln!("error: {message}");
            } else {
                eprintln!("{message}");
            }
            ExitCode::from(code)
        }
    }
}

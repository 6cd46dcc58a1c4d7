//! The `jobpass` binary: parses the command line ([`jobpass::cli::Cli`]) and hands over to
//! [`jobpass::cli::run`].

use clap::Parser;

#[tokio::main]
async fn main() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("JOBPASS_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .json()
        .init();
    let cli = jobpass::cli::Cli::parse();
    let code = jobpass::cli::run(cli).await;
    std::process::exit(code);
}

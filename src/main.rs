mod cli;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("FORESHARD_LOG")
                .unwrap_or_else(|_| "warn,foreshard=info,foreshard_cluster=info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();
    match cli::run(cli) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("foreshard: error: {e:#}");
            ExitCode::from(2)
        }
    }
}

//! The `rampart` command. It parses arguments, loads configuration and wires
//! the planes together; plane logic lives in the library crates.
#![forbid(unsafe_code)]
#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing
    )
)]

mod api;
mod audit_cmd;
mod bootstrap;
mod cli;
mod client;
mod cpu;
mod drift;
mod edge;
mod errors;
mod files;
mod init;
mod node;
mod planes;
mod tls;
mod up;
mod waf_cmd;

use clap::Parser;

use crate::cli::{BenchCommand, Cli, Command, ConfigCommand};
use crate::errors::CliError;

/// mimalloc: the edge allocates and frees small buffers on every request,
/// and glibc's allocator showed up at about a tenth of its profile.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    cpu::check();
    let cli = Cli::parse();
    let result = run(cli);
    match result {
        Ok(code) => std::process::ExitCode::from(code),
        Err(e) => {
            e.print();
            std::process::ExitCode::from(e.exit_code())
        }
    }
}

fn run(cli: Cli) -> Result<u8, CliError> {
    let cli = match cli.command {
        Command::Run(args) => return client::run(args),
        Command::Status {
            client,
            check_drift,
        } => return client::status(&client, check_drift),
        Command::Waf { command } => return waf_cmd::run(command),
        _ => cli,
    };
    dispatch(cli).map(|()| 0)
}

fn dispatch(cli: Cli) -> Result<(), CliError> {
    match cli.command {
        Command::Config {
            command: ConfigCommand::Check { file },
        } => config_check(&file),
        Command::Init(args) => {
            init_logging(&cli.log_level);
            runtime()?.block_on(init::run(args))
        }
        Command::Up(args) => {
            init_logging(&cli.log_level);
            runtime()?.block_on(up::run(args))
        }
        Command::Audit { command } => {
            init_logging(&cli.log_level);
            runtime()?.block_on(audit_cmd::run(command))
        }
        Command::Keys { client, command } => client::keys(&client, command),
        Command::Secrets { client, command } => client::secrets(&client, command),
        Command::Users { client, command } => client::users(&client, command),
        Command::Apikeys { client, command } => client::apikeys(&client, command),
        Command::Elevate { client, command } => client::elevate(&client, command),
        Command::Login(args) => client::login(&args),
        Command::Bench {
            command: BenchCommand::Audit { dir },
        } => audit_cmd::bench(dir.as_deref()),
        Command::Run(_) | Command::Waf { .. } | Command::Status { .. } => Err(CliError::Runtime(
            "unreachable: run, waf and status are handled first".into(),
        )),
    }
}

/// Validates the file, then reads the files it names as `up` will.
fn config_check(file: &std::path::Path) -> Result<(), CliError> {
    let config = rampart_config::Config::load(file).map_err(CliError::Config)?;
    let clock = rampart_core::SystemClock::shared();
    let now = i64::try_from(clock.unix_secs()).unwrap_or(i64::MAX);
    let problems = files::problems(&config, now);
    if problems.is_empty() {
        println!("ok");
        return Ok(());
    }
    Err(CliError::Input(format!(
        "{}: files it names:\n  {}",
        file.display(),
        problems.join("\n  ")
    )))
}

fn runtime() -> Result<tokio::runtime::Runtime, CliError> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::Runtime(format!("cannot start the async runtime: {e}")))
}

/// Structured JSON logs on standard error; standard output is for people.
fn init_logging(level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("RAMPART_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    let _ = tracing_subscriber::fmt()
        .json()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_current_span(false)
        .try_init();
}

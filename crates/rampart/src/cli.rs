//! The command line, as clap reads it.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// Rampart: the security platform your trust page describes, in one binary.
#[derive(Debug, Parser)]
#[command(name = "rampart", version, propagate_version = true)]
pub struct Cli {
    /// Log level for the JSON logs on standard error (RAMPART_LOG overrides).
    #[arg(long, global = true, default_value = "info")]
    pub log_level: String,

    #[command(subcommand)]
    pub command: Command,
}

/// The verbs.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create a data directory: root key, store, development CA, bootstrap admin credential.
    Init(InitArgs),
    /// Start every plane the configuration names and serve until SIGTERM or SIGINT.
    Up(UpArgs),
    /// Work with rampart.toml.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
}

/// `rampart config …`
#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Validate a configuration file: prints `ok`, or every error as file:line:column and exits 2.
    Check {
        /// The file to check.
        file: PathBuf,
    },
}

/// Where the root key comes from and where the data lives; shared by init and up.
#[derive(Debug, Args, Clone)]
pub struct DataArgs {
    /// The data directory [default: data_dir from the config, else ./rampart-data].
    #[arg(long, env = "RAMPART_DATA_DIR")]
    pub data_dir: Option<PathBuf>,

    /// Derive the root key from the passphrase in this environment variable (Argon2id).
    /// Without it, the key comes from RAMPART_ROOT_KEY (base64) if set, else from the
    /// key file root.key (mode 0600) in the data directory.
    #[arg(long, value_name = "VAR")]
    pub passphrase_env: Option<String>,
}

/// `rampart init`
#[derive(Debug, Args)]
pub struct InitArgs {
    #[command(flatten)]
    pub data: DataArgs,

    /// Configuration file whose data_dir and control address to use.
    #[arg(long, short)]
    pub config: Option<PathBuf>,
}

/// `rampart up`
#[derive(Debug, Args)]
pub struct UpArgs {
    #[command(flatten)]
    pub data: DataArgs,

    /// Configuration file [default: ./rampart.toml].
    #[arg(long, short)]
    pub config: Option<PathBuf>,

    /// Development mode: without --config, use a generated development config, and
    /// initialise the data directory if it is new.
    #[arg(long)]
    pub dev: bool,

    /// Override the control API address (port 0 picks a free port).
    #[arg(long, value_name = "ADDR")]
    pub control_listen: Option<SocketAddr>,

    /// Seconds to let in-flight requests finish on shutdown.
    #[arg(long, default_value_t = 10)]
    pub drain_seconds: u64,
}

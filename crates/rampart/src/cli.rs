//! The command line, as clap reads it.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// Rampart: the security platform your trust page describes, in one binary.
#[derive(Debug, Parser)]
#[command(name = "rampart", version)]
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
    /// Verify, search, export and prove the audit log.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Manage keys and encrypt with them (through the control API).
    Keys {
        #[command(flatten)]
        client: ClientArgs,
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Manage secrets (through the control API).
    Secrets {
        #[command(flatten)]
        client: ClientArgs,
        #[command(subcommand)]
        command: SecretsCommand,
    },
    /// Manage users and service principals (through the control API).
    Users {
        #[command(flatten)]
        client: ClientArgs,
        #[command(subcommand)]
        command: UsersCommand,
    },
    /// Create, list and revoke identity API keys (through the control API).
    Apikeys {
        #[command(flatten)]
        client: ClientArgs,
        #[command(subcommand)]
        command: ApikeysCommand,
    },
    /// Ask for, approve, deny and list time-bound role elevations.
    Elevate {
        #[command(flatten)]
        client: ClientArgs,
        #[command(subcommand)]
        command: ElevateCommand,
    },
    /// Show a running node's status (through the control API); for admins
    /// also the config file's drift from what the node runs.
    Status {
        #[command(flatten)]
        client: ClientArgs,
        /// Exit 1 unless the node's config file says what it runs (for a
        /// deploy pipeline: the node runs what git holds).
        #[arg(long)]
        check_drift: bool,
    },
    /// Log in with a password; prints the access and refresh tokens.
    Login(LoginArgs),
    /// Start a command with a service's secrets as environment variables; nothing is written to disk.
    Run(RunArgs),
    /// Work with the web application firewall's rule sets.
    Waf {
        #[command(subcommand)]
        command: WafCommand,
    },
    /// Measure Rampart against named baselines.
    Bench {
        #[command(subcommand)]
        command: BenchCommand,
    },
}

/// How a client command reaches the control API.
#[derive(Debug, Args, Clone)]
pub struct ClientArgs {
    /// The control API.
    #[arg(
        long,
        env = "RAMPART_ADDR",
        default_value = "https://127.0.0.1:7443",
        global = true
    )]
    pub addr: String,
    /// CA certificate to trust [default: DATA_DIR/tls/ca.pem].
    #[arg(long, env = "RAMPART_CA", global = true)]
    pub ca: Option<PathBuf>,
    /// Client certificate (PEM, the chain from the leaf) to present, for a
    /// control API with `[control] client_ca`.
    #[arg(
        long,
        env = "RAMPART_CLIENT_CERT",
        global = true,
        requires = "client_key"
    )]
    pub client_cert: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    #[arg(
        long,
        env = "RAMPART_CLIENT_KEY",
        global = true,
        requires = "client_cert"
    )]
    pub client_key: Option<PathBuf>,
    /// Data directory whose tls/ca.pem to trust.
    #[arg(
        long,
        env = "RAMPART_DATA_DIR",
        default_value = "rampart-data",
        global = true
    )]
    pub data_dir: PathBuf,
    /// Credential: the admin credential, an identity API key (a service
    /// principal's, for services) or an access token (read from RAMPART_TOKEN).
    #[arg(
        long = "token-env",
        default_value = "RAMPART_TOKEN",
        value_name = "VAR",
        global = true
    )]
    pub token_env: String,
}

/// `rampart audit …`
#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Check chains, Merkle roots and checkpoint signatures, and that every denial recorded in
    /// api-access has its security copy; exit 1 naming the first problem.
    Verify {
        #[command(flatten)]
        data: DataArgs,
        /// Also check against checkpoint copies kept here.
        #[arg(long)]
        checkpoint_dir: Option<PathBuf>,
    },
    /// Search decrypted events.
    Search {
        #[command(flatten)]
        data: DataArgs,
        #[command(flatten)]
        filter: AuditFilter,
    },
    /// Write decrypted events for a SIEM.
    Export {
        #[command(flatten)]
        data: DataArgs,
        #[command(flatten)]
        filter: AuditFilter,
        /// Output format.
        #[arg(long, default_value = "jsonl", value_parser = ["jsonl"])]
        format: String,
        /// Write here instead of standard output.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Print an inclusion proof (JSON) for one record.
    Prove {
        #[command(flatten)]
        data: DataArgs,
        /// The tier: security, processing, application, network, api-access.
        #[arg(long)]
        tier: String,
        /// The record's sequence number.
        #[arg(long)]
        seq: u64,
    },
    /// Check an inclusion proof made by `prove`.
    VerifyProof {
        #[command(flatten)]
        data: DataArgs,
        /// The proof file (JSON).
        file: PathBuf,
    },
}

/// Filters for search and export.
#[derive(Debug, Args, Clone)]
pub struct AuditFilter {
    /// Tier.
    #[arg(long)]
    pub tier: Option<String>,
    /// Principal.
    #[arg(long)]
    pub actor: Option<String>,
    /// Action.
    #[arg(long)]
    pub action: Option<String>,
    /// allowed, denied or error.
    #[arg(long)]
    pub outcome: Option<String>,
    /// From (RFC 3339).
    #[arg(long)]
    pub from: Option<String>,
    /// To (RFC 3339).
    #[arg(long)]
    pub to: Option<String>,
    /// At most this many events.
    #[arg(long)]
    pub limit: Option<usize>,
}

/// `rampart keys …`
#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Create a key.
    Create {
        /// The environment.
        #[arg(long)]
        env: String,
        /// The key's name.
        name: String,
        /// Days between automatic rotations [default 365].
        #[arg(long)]
        rotation_days: Option<u32>,
    },
    /// List keys.
    List {
        /// The environment.
        #[arg(long)]
        env: String,
    },
    /// Show a key and its versions.
    Describe {
        /// The environment.
        #[arg(long)]
        env: String,
        /// The key's name.
        name: String,
    },
    /// Make a new version the one that encrypts.
    Rotate {
        /// The environment.
        #[arg(long)]
        env: String,
        /// The key's name.
        name: String,
    },
    /// Encrypt bytes read from an environment variable, a file or standard
    /// input (never the command line); prints the ciphertext (base64).
    Encrypt {
        /// The environment.
        #[arg(long)]
        env: String,
        /// The key's name.
        name: String,
        /// Read the plaintext from this environment variable.
        #[arg(long, value_name = "VAR", conflicts_with = "from_file")]
        plaintext_env: Option<String>,
        /// Read the plaintext from this file (any bytes). Without this or
        /// --plaintext-env, standard input is read to its end.
        #[arg(long)]
        from_file: Option<PathBuf>,
        /// Encryption context, KEY=VALUE (repeat).
        #[arg(long, value_parser = parse_kv)]
        context: Vec<(String, String)>,
    },
    /// Decrypt a ciphertext (base64); writes the plaintext's bytes to
    /// standard output as they are (a newline after them on a terminal).
    Decrypt {
        /// The environment.
        #[arg(long)]
        env: String,
        /// The ciphertext, base64.
        #[arg(long)]
        ciphertext: String,
        /// Encryption context, KEY=VALUE (repeat).
        #[arg(long, value_parser = parse_kv)]
        context: Vec<(String, String)>,
    },
    /// Schedule the key's destruction after 7 to 30 days.
    ScheduleDeletion {
        /// The environment.
        #[arg(long)]
        env: String,
        /// The key's name.
        name: String,
        /// Days until the material is destroyed (7 to 30).
        #[arg(long, default_value_t = 7)]
        days: u32,
    },
    /// Cancel a scheduled destruction.
    CancelDeletion {
        /// The environment.
        #[arg(long)]
        env: String,
        /// The key's name.
        name: String,
    },
}

/// `rampart secrets …`
#[derive(Debug, Subcommand)]
pub enum SecretsCommand {
    /// Store a new version of a secret, read from an environment variable or a file.
    Put {
        /// The environment.
        #[arg(long)]
        env: String,
        /// The service.
        #[arg(long)]
        service: String,
        /// The secret's name.
        name: String,
        /// Read the value from this environment variable.
        #[arg(long, value_name = "VAR", conflicts_with = "from_file")]
        value_env: Option<String>,
        /// Read the value from this file.
        #[arg(long)]
        from_file: Option<PathBuf>,
        /// generic, or postgres (JSON connection details, rotatable).
        #[arg(long, default_value = "generic", value_parser = ["generic", "postgres"])]
        kind: String,
    },
    /// Print a secret (latest or --version).
    Get {
        /// The environment.
        #[arg(long)]
        env: String,
        /// The service.
        #[arg(long)]
        service: String,
        /// The secret's name.
        name: String,
        /// A version number instead of the latest.
        #[arg(long)]
        version: Option<u32>,
    },
    /// List a service's secrets (names and versions, never values).
    List {
        /// The environment.
        #[arg(long)]
        env: String,
        /// The service.
        #[arg(long)]
        service: String,
    },
    /// Delete a secret, recoverable for 7 to 30 days.
    Delete {
        /// The environment.
        #[arg(long)]
        env: String,
        /// The service.
        #[arg(long)]
        service: String,
        /// The secret's name.
        name: String,
        /// Days it stays recoverable (7 to 30) [default 7].
        #[arg(long)]
        recovery_days: Option<u32>,
    },
    /// Rotate a secret now (PostgreSQL passwords: ALTER ROLE, check, store).
    Rotate {
        /// The environment.
        #[arg(long)]
        env: String,
        /// The service.
        #[arg(long)]
        service: String,
        /// The secret's name.
        name: String,
    },
}

/// `rampart users …`
#[derive(Debug, Subcommand)]
pub enum UsersCommand {
    /// Create a user (or, with --service, a service principal).
    Create {
        /// The name it logs in with.
        name: String,
        /// A role: admin, team_admin, team_member, individual (repeat; a
        /// service may have none: keys policies name it as service:NAME).
        #[arg(long = "role", required_unless_present = "service")]
        roles: Vec<String>,
        /// An environment it may act in (repeat); `platform` for identity management.
        #[arg(long = "env", required = true)]
        environments: Vec<String>,
        /// A team it belongs to (repeat; the team must exist).
        #[arg(long = "team")]
        teams: Vec<String>,
        /// Read the initial password from this environment variable.
        #[arg(long, value_name = "VAR")]
        password_env: Option<String>,
        /// A service principal: no password; it authenticates with API keys
        /// (`rampart apikeys create --owner NAME --env E`) and reaches keys
        /// and secrets as service:NAME.
        #[arg(long, conflicts_with = "password_env")]
        service: bool,
    },
    /// List users and service principals.
    List,
    /// Show one by id or name.
    Show { user: String },
    /// Replace a user's roles (removing one revokes its sessions at once).
    SetRoles {
        user: String,
        #[arg(long = "role", required = true)]
        roles: Vec<String>,
    },
    /// Set a user's password, read from an environment variable.
    SetPassword {
        user: String,
        #[arg(long, value_name = "VAR")]
        password_env: String,
        /// The current password, from this environment variable: needed
        /// when users change their own.
        #[arg(long, value_name = "VAR")]
        current_password_env: Option<String>,
    },
    /// Disable a principal and revoke its sessions.
    Disable { user: String },
    /// Re-enable a principal.
    Enable { user: String },
    /// Revoke every session of a principal.
    RevokeSessions { user: String },
    /// Start TOTP enrolment: prints the secret, otpauth URI and recovery codes once.
    TotpEnrol {
        user: String,
        /// Also write the QR code (SVG) here.
        #[arg(long)]
        qr_out: Option<PathBuf>,
        /// A current code (or recovery code): needed when users restart
        /// their own confirmed enrolment.
        #[arg(long)]
        code: Option<String>,
    },
    /// Confirm TOTP enrolment with a first code.
    TotpConfirm {
        user: String,
        #[arg(long)]
        code: String,
    },
}

/// `rampart apikeys …`
#[derive(Debug, Subcommand)]
pub enum ApikeysCommand {
    /// Create a key; it is printed once and never again.
    Create {
        /// The environment the key acts in.
        #[arg(long)]
        env: String,
        /// A label for listings.
        #[arg(long, default_value = "")]
        name: String,
        /// The owner (id or name) [default: the caller].
        #[arg(long)]
        owner: Option<String>,
    },
    /// List keys (prefix, owner, created, last used; never the key).
    List {
        /// One owner's keys (id or name).
        #[arg(long)]
        owner: Option<String>,
        /// Everyone's keys.
        #[arg(long, conflicts_with = "owner")]
        all: bool,
    },
    /// Revoke a key by id; it is refused from that moment.
    Revoke { id: String },
}

/// `rampart elevate …`
#[derive(Debug, Subcommand)]
pub enum ElevateCommand {
    /// Ask for a role for a while, with a reason.
    Request {
        #[arg(long)]
        role: String,
        /// How long, in minutes.
        #[arg(long)]
        minutes: u64,
        #[arg(long)]
        reason: String,
    },
    /// Approve a pending request (an unelevated admin other than the requester).
    Approve { id: String },
    /// Deny a pending request.
    Deny { id: String },
    /// List requests: all for approvers, else your own.
    List,
}

/// `rampart login`
#[derive(Debug, Args)]
pub struct LoginArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// The account name.
    #[arg(long)]
    pub username: String,
    /// Read the password from this environment variable.
    #[arg(long, value_name = "VAR", default_value = "RAMPART_PASSWORD")]
    pub password_env: String,
    /// A TOTP or recovery code.
    #[arg(long)]
    pub totp: Option<String>,
}

/// `rampart run`
#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// The service whose secrets to inject.
    #[arg(long)]
    pub service: String,
    /// Its environment.
    #[arg(long)]
    pub env: String,
    /// Configuration naming the variables (services[].secrets); without it every
    /// secret is injected as its name in upper case.
    #[arg(long, short)]
    pub config: Option<PathBuf>,
    /// Restart the command when a secret changes.
    #[arg(long)]
    pub watch: bool,
    /// Seconds between checks with --watch.
    #[arg(long, default_value_t = 10)]
    pub interval: u64,
    /// The command and its arguments.
    #[arg(trailing_var_arg = true, required = true, num_args = 1..)]
    pub command: Vec<String>,
}

/// `rampart bench …`
#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Durable audit appends/s with 1, 8 and 64 writers against one fsync per record, verify MB/s and the copies check's.
    Audit {
        /// Directory on the disk to measure; the run works in a fresh subdirectory of it, removed afterwards [default: a temporary directory].
        #[arg(long)]
        dir: Option<PathBuf>,
    },
}

/// `rampart waf …`
#[derive(Debug, Subcommand)]
pub enum WafCommand {
    /// Run go-ftw regression tests (the OWASP CRS suite's format) through the engine, or
    /// through a running edge with --via; prints each failure and `N passed, N failed, N skipped`.
    Test(WafTestArgs),
}

/// `rampart waf test`
#[derive(Debug, Args)]
pub struct WafTestArgs {
    /// A rule file or directory, loaded in order (repeat). A CRS directory loads
    /// crs-setup.conf (or .example) then rules/*.conf; another directory its *.conf.
    /// CRS's test setup (detection only, --paranoia) goes after crs-setup.conf.
    #[arg(long = "rules", value_name = "PATH", required_unless_present = "via")]
    pub rules: Vec<PathBuf>,
    /// A directory of go-ftw YAML tests (searched for *.yaml) or one file.
    #[arg(long, value_name = "DIR")]
    pub tests: PathBuf,
    /// Send each request to a running edge (http:// or https://HOST:PORT) instead; judged by
    /// status only, since rule ids are not visible from outside: 403 is blocked.
    #[arg(long, value_name = "URL", conflicts_with = "rules")]
    pub via: Option<String>,
    /// Paranoia level for the engine, 1 to 4 (CRS's suite expects 4).
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u8).range(1..=4))]
    pub paranoia: u8,
    /// Only test files whose name starts with this (e.g. 942 or 942100).
    #[arg(long, value_name = "PREFIX")]
    pub only: Option<String>,
    /// CA certificate (PEM) to trust for an https --via URL.
    #[arg(long, requires = "via")]
    pub ca: Option<PathBuf>,
    /// Accept any certificate from an https --via URL (a local edge).
    #[arg(long, requires = "via", conflicts_with = "ca")]
    pub insecure: bool,
}

fn parse_kv(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("expected KEY=VALUE, got {s:?}"))
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

    /// Configuration file: its data_dir, its [store] (SQLite in the data directory,
    /// or a shared PostgreSQL database) and, for `init`, its control address.
    /// `up` reads ./rampart.toml without it.
    #[arg(long, short)]
    pub config: Option<PathBuf>,
}

/// `rampart init`
#[derive(Debug, Args)]
pub struct InitArgs {
    #[command(flatten)]
    pub data: DataArgs,
}

/// `rampart up`
#[derive(Debug, Args)]
pub struct UpArgs {
    #[command(flatten)]
    pub data: DataArgs,

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

    /// Override the edge's plain HTTP address (port 0 picks a free port).
    #[arg(long, value_name = "ADDR")]
    pub edge_http_listen: Option<SocketAddr>,

    /// Override the edge's HTTPS address (port 0 picks a free port).
    #[arg(long, value_name = "ADDR")]
    pub edge_https_listen: Option<SocketAddr>,
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    #[test]
    fn command_line_is_consistent() {
        super::Cli::command().debug_assert();
    }
}

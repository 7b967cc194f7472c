//! `rampart up`: start every plane the configuration names, say what listens
//! where, and stop gracefully on SIGTERM or SIGINT.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use rampart_config::Config;
use rampart_core::SystemClock;

use crate::api::{self, AppState, Metrics};
use crate::bootstrap::Verifier;
use crate::cli::UpArgs;
use crate::errors::CliError;
use crate::{edge, init, node, planes, tls};

const DEFAULT_CONFIG: &str = "rampart.toml";

fn load_config(args: &UpArgs) -> Result<(Config, Option<PathBuf>), CliError> {
    if let Some(path) = &args.data.config {
        return Ok((
            Config::load(path).map_err(CliError::Config)?,
            Some(path.clone()),
        ));
    }
    if args.dev {
        return Ok((Config::dev().map_err(CliError::Config)?, None));
    }
    let default = PathBuf::from(DEFAULT_CONFIG);
    if default.is_file() {
        return Ok((
            Config::load(&default).map_err(CliError::Config)?,
            Some(default),
        ));
    }
    Err(CliError::Input(
        "no configuration: pass --config FILE, keep a rampart.toml here, or use --dev".into(),
    ))
}

pub async fn run(args: UpArgs) -> Result<(), CliError> {
    let clock = SystemClock::shared();
    let (config, config_path) = load_config(&args)?;
    let dir = node::data_dir(&args.data, Some(&config));

    if args.dev && !node::is_initialised(&dir, Some(&config)) {
        let done = init::initialise(&dir, &args.data, Some(&config), clock.clone()).await?;
        init::print_initialised(&done);
    }
    let node = node::open(&dir, &args.data, Some(&config), clock.clone()).await?;
    if config_path.is_none() {
        // Show the operator the file they are running, to copy and edit.
        let dev_path = dir.join(DEFAULT_CONFIG);
        if !dev_path.exists() {
            std::fs::write(&dev_path, rampart_config::DEV_CONFIG)
                .map_err(|e| CliError::Input(format!("{}: {e}", dev_path.display())))?;
        }
        println!("development config: {} (built in)", dev_path.display());
    }
    let listen = args.control_listen.unwrap_or(config.control.listen);
    let tls_config = tls::control_server_config(
        &node.keyring,
        listen.ip(),
        &config.control.client_ca,
        clock.as_ref(),
    )
    .await?;
    let verifier = Verifier::new(&node.keyring, clock.clone()).await?;
    let (audit, audit_report) =
        planes::open_audit(&node.keyring, &dir, &config, clock.clone()).await?;
    let (identity, login_throttle) =
        planes::open_identity(node.keyring.clone(), audit.clone(), &config, clock.clone()).await?;
    let running =
        planes::start(node.keyring.clone(), audit.clone(), &config, clock.clone()).await?;
    let metrics = Arc::new(Metrics::new(clock.unix_secs()));
    metrics.set_audit(audit.clone(), &audit_report);
    if let Some(t) = login_throttle {
        metrics.set_login_throttle(t);
    }
    let edge = edge::start(
        &config,
        metrics.clone(),
        &node.keyring,
        identity.clone(),
        audit.clone(),
        clock.clone(),
        args.edge_http_listen,
        args.edge_https_listen,
    )
    .await?;
    let edge_assertion_key = match &edge {
        Some(_) => Some(edge::assertion_public_key(&node.keyring).await?),
        None => None,
    };
    let reloads = edge.is_some() && config_path.is_some();
    let drift = Arc::new(crate::drift::Running::new(
        config_path.clone(),
        config.clone(),
        reloads,
    ));
    let edge_reload = match (&edge, &config_path) {
        (Some(e), Some(path)) => Some(
            edge::EdgeReload::new(path.clone(), e.handle(), config.edge.clone())
                .reporting_to(drift.clone()),
        ),
        _ => None,
    };
    let state = Arc::new(AppState {
        edge_reload: edge_reload.clone(),
        running: Some(drift),
        edge_assertion_key,
        node_name: config.node.name.clone(),
        planes: Some(running),
        identity: Some(identity.clone()),
        audit: Some(audit.clone()),
        store: node.store.clone(),
        verifier,
        metrics: metrics.clone(),
        clock: clock.clone(),
        allow: config.control.allow.clone(),
        environments: config.environments.iter().map(|e| e.name.clone()).collect(),
        services: config.services.len(),
    });

    let listener = std::net::TcpListener::bind(listen)
        .and_then(|l| l.set_nonblocking(true).map(|_| l))
        .map_err(|e| CliError::Input(format!("cannot listen on {listen}: {e}")))?;
    let addr = listener
        .local_addr()
        .map_err(|e| CliError::Runtime(format!("listener address: {e}")))?;
    let router = api::router(state.clone());
    let state_for_jobs = state;

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let edge_task = edge.map(|e| {
        let addrs = e.local_addrs();
        if let Some(a) = addrs.http {
            println!("edge http: http://{a} (301 to https)");
        }
        if let Some(a) = addrs.https {
            println!("edge https: https://{a}");
        }
        if let Some(r) = edge_reload.clone() {
            spawn_reloader(r);
        }
        metrics.set_edge(e.handle());
        let mut rx = stop_rx.clone();
        tokio::spawn(e.serve(async move {
            let _ = rx.wait_for(|stop| *stop).await;
        }))
    });
    println!("data directory: {}", dir.display());
    if let rampart_config::StoreBackend::Postgres(pg) = &config.store {
        println!(
            "store: PostgreSQL, shared with the other nodes (identity changes from them apply within {} ms)",
            pg.reload_interval_ms
        );
        spawn_identity_reload(
            identity,
            Duration::from_millis(u64::from(pg.reload_interval_ms)),
        );
    }
    println!("audit log: {}", dir.join(planes::AUDIT_DIR).display());
    println!(
        "control API: https://{addr} (trust {}/tls/ca.pem)",
        dir.display()
    );
    println!("rampart is up; SIGTERM or Ctrl-C stops it");
    tracing::info!(%addr, node = %config.node.name, "control API listening");

    planes::spawn_scheduler(state_for_jobs, audit.clone(), Duration::from_secs(60));
    let drain = Duration::from_secs(args.drain_seconds);
    let stop = async move {
        wait_for_signal().await;
        println!(
            "shutting down: finishing in-flight requests (up to {}s)",
            drain.as_secs()
        );
        tracing::info!("shutdown requested");
        let _ = stop_tx.send(true);
    };
    api::serve::serve(
        listener,
        tls_config,
        router,
        stop,
        drain,
        api::serve::TIMEOUTS,
    )
    .await?;
    if let Some(task) = edge_task {
        match task.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!(error = %e, "edge"),
            Err(e) => tracing::error!(error = %e, "edge task"),
        }
    }
    let a = audit.clone();
    match tokio::task::spawn_blocking(move || a.close()).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::error!(error = %e, "closing the audit log"),
        Err(e) => tracing::error!(error = %e, "closing the audit log"),
    }
    println!("rampart stopped");
    Ok(())
}

/// Every `every`, checks whether other nodes sharing the store changed
/// principals, API keys, elevations or revocations (one read of the
/// identity generation) and re-reads them if so, or if the last full read is
/// a minute old, so their changes apply here too. A failed read keeps the
/// records it had.
fn spawn_identity_reload(identity: Arc<rampart_identity::Identity>, every: Duration) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tick.tick().await;
            if let Err(e) = identity.reload_if_changed().await {
                tracing::warn!(error = %e, "reloading identities from the shared store");
            }
        }
    });
}

/// On SIGHUP, re-reads the configuration and swaps the edge's routing to it
/// atomically; an invalid file is refused and the running one keeps serving.
fn spawn_reloader(reload: edge::EdgeReload) {
    #[cfg(unix)]
    tokio::spawn(async move {
        use tokio::signal::unix::{signal, SignalKind};
        let Ok(mut hup) = signal(SignalKind::hangup()) else {
            return;
        };
        while hup.recv().await.is_some() {
            let path = reload.path().display().to_string();
            match reload.reload() {
                Ok(done) => {
                    println!("reloaded {path}");
                    tracing::info!(config = %path, "configuration reloaded");
                    if !done.needs_restart.is_empty() {
                        let names = done.needs_restart.join(", ");
                        println!("reload: kept as started until a restart: {names}");
                        tracing::warn!(config = %path, settings = %names, "changed edge settings take effect at the next start");
                    }
                }
                Err(e) => {
                    println!(
                        "reload refused, still serving the previous configuration: {}",
                        e.replace('\n', "; ")
                    );
                    tracing::error!(config = %path, error = %e, "reload refused");
                }
            }
        }
    });
    #[cfg(not(unix))]
    let _ = reload;
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

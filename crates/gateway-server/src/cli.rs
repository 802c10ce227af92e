//! The `ws-gateway` binary: flags, the layered configuration, logging, signals (SIGINT and
//! SIGTERM stop it, SIGHUP reloads the configuration).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use tokio::sync::watch;
use tracing::{error, info, warn};

use crate::config::{AuthConfig, Layers, Loaded, MemoryConfig, needs_restart};
use crate::logging::LogFormat;
use crate::server::Gateway;
use crate::shared::{LiveSettings, Reloader};

/// A WebSocket push gateway: clients subscribe to apps, backends push with `POST /push`.
#[derive(Debug, Parser)]
#[command(name = "ws-gateway", version)]
pub struct Args {
    #[command(subcommand)]
    pub command: Option<Command>,
    /// TOML configuration file (see the README for every key).
    #[arg(long, value_name = "FILE", env = "WS_GATEWAY_CONFIG", global = true)]
    pub config: Option<PathBuf>,
    /// WebSocket and push listener [default: 0.0.0.0:5000]; overrides `listen`.
    #[arg(long, value_name = "ADDR:PORT", global = true)]
    pub listen: Option<String>,
    /// Stat listener [default: 127.0.0.1:6000]; overrides `stat_listen`.
    #[arg(long, value_name = "ADDR:PORT", global = true)]
    pub stat_listen: Option<String>,
    /// Log lines as human-readable text or as one JSON object per line.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, env = "WS_GATEWAY_LOG_FORMAT")]
    pub log_format: LogFormat,
}

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Mints an HMAC token (`[auth] kind = "hmac"`) for tests and demos; prints it on stdout.
    /// Signs with the first secret of the configuration (`--config`).
    Token {
        /// The member the token authenticates.
        #[arg(long)]
        member: i64,
        /// How long the token is valid: `90s`, `15m`, `1h`, `7d`.
        #[arg(long, default_value = "1h")]
        ttl: humantime::Duration,
    },
    /// Validates the configuration (file, `WS_GATEWAY_*` variables, flags) and prints every
    /// key's effective value, secrets redacted, with where it came from. Exit code 0 when
    /// valid, 2 (and the error on stderr) when not.
    CheckConfig,
}

/// Runs the binary: parses `std::env::args`, serves until SIGINT/SIGTERM.
pub fn main() -> ExitCode {
    let args = Args::parse();
    let mut layers = Layers::default()
        .listen(args.listen.clone())
        .stat_listen(args.stat_listen.clone())
        .process_env();
    if let Some(path) = &args.config {
        layers = layers.file(path);
    }
    match args.command {
        Some(Command::Token { member, ttl }) => {
            return mint_token(member, ttl.into(), args.config.is_some(), &layers);
        }
        Some(Command::CheckConfig) => return check_config(&layers),
        None => {}
    }
    crate::logging::init(args.log_format);
    crate::admission::raise_open_file_limit();

    let loaded = match layers.load() {
        Ok(loaded) => loaded,
        Err(err) => {
            // Logging is set up, but a terminal user reads this better without its format.
            eprintln!("error: {err}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("error: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(serve(layers, loaded))
}

fn check_config(layers: &Layers) -> ExitCode {
    match layers.load() {
        Ok(loaded) => {
            println!(
                "# ws-gateway {}: the configuration is valid. Every key, its effective value \
                 (secrets redacted) and where it came from:",
                env!("CARGO_PKG_VERSION")
            );
            print!("{}", loaded.render());
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("error: {err}");
            ExitCode::from(2)
        }
    }
}

fn mint_token(member: i64, ttl: std::time::Duration, has_file: bool, layers: &Layers) -> ExitCode {
    let Some(member) = gateway_core::MemberId::new(member) else {
        eprintln!("error: --member must be a member id, an integer > 0");
        return ExitCode::from(2);
    };
    if !has_file {
        eprintln!("error: `ws-gateway token` needs --config FILE (or WS_GATEWAY_CONFIG)");
        return ExitCode::from(2);
    }
    match layers.load().map(|loaded| loaded.config.auth) {
        Ok(AuthConfig::Hmac(tokens)) => {
            println!("{}", tokens.mint(member, ttl.as_secs()));
            ExitCode::SUCCESS
        }
        Ok(_) => {
            eprintln!("error: key `auth.kind`: `ws-gateway token` needs kind = \"hmac\"");
            ExitCode::from(2)
        }
        Err(err) => {
            eprintln!("error: {err}");
            ExitCode::from(2)
        }
    }
}

async fn serve(layers: Layers, loaded: Loaded) -> ExitCode {
    // Listened for before anything else, so that a SIGHUP never finds its default action
    // (ending the process) once the gateway runs.
    #[cfg(unix)]
    let hangups = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(hangups) => Some(hangups),
        Err(err) => {
            error!(%err, "cannot listen for SIGHUP: no reloads");
            None
        }
    };
    let config = loaded.config.clone();
    let authenticator = config.auth.build();
    log_auth(&config.auth, &*authenticator);
    let mut private: Vec<&str> = config
        .server
        .hub
        .private_apps
        .iter()
        .map(|app| app.as_str())
        .collect();
    private.sort_unstable();
    info!("private apps: {private:?}");
    // The kind's Debug hides passwords in URLs.
    info!(prefix = %config.server.broker.settings.prefix, "broker: {:?}", config.server.broker.kind);
    log_access(&config.server.access);
    let scheme = if config.server.tls.is_some() {
        "wss"
    } else {
        "ws"
    };

    let gateway = match Gateway::bind(config.server, authenticator).await {
        Ok(gateway) => gateway,
        Err(err) => {
            // Once: the log goes to stderr.
            error!("{err}");
            return ExitCode::FAILURE;
        }
    };
    info!("websocket and push listener on {}", gateway.local_addr());
    info!(
        "clients connect to {}",
        client_urls(scheme, gateway.local_addr()).join(" or ")
    );
    info!("stat listener on {}", gateway.stat_addr());
    info!("node id in the cluster: {}", gateway.node_id());
    let (memory, memory_settings) = watch::channel(config.memory);
    crate::memory::grow_heap_in_larger_steps();
    tokio::spawn(crate::memory::return_freed_memory(
        gateway.counters(),
        memory_settings,
    ));
    #[cfg(unix)]
    if let Some(hangups) = hangups {
        tokio::spawn(reload_on_hangup(
            hangups,
            layers,
            loaded,
            gateway.reloader(),
            memory,
        ));
    }
    #[cfg(not(unix))]
    let _ = (layers, loaded, memory);
    gateway.run(shutdown_signal()).await;
    ExitCode::SUCCESS
}

fn log_auth(auth: &AuthConfig, authenticator: &dyn gateway_auth::Authenticator) {
    match auth {
        AuthConfig::Anonymous => warn!(
            "auth: anonymous only: no [auth] configured, so every member is refused (401) and \
             continues as anonymous; private apps are unreachable"
        ),
        _ => info!("auth: {}", authenticator.describe()),
    }
}

fn log_access(access: &crate::config::Access) {
    if access.push_api_keys.is_empty() {
        let networks: Vec<String> = access
            .push_allow_from
            .iter()
            .map(|n| n.to_string())
            .collect();
        info!(
            "push API: no push_api_keys configured; /push is accepted only from {networks:?} (403 otherwise)"
        );
    } else {
        info!(
            "push API: Authorization: Bearer <key> required ({} keys)",
            access.push_api_keys.len()
        );
    }
    if let Some(origins) = &access.allowed_origins {
        info!("websocket origins allowed: {origins:?}");
    }
}

/// URLs a client can use: a wildcard listener (`0.0.0.0`, `::`) is reached through loopback
/// or any of the machine's interface addresses, never through the wildcard itself.
fn client_urls(scheme: &str, addr: SocketAddr) -> Vec<String> {
    let url = |addr: SocketAddr| format!("{scheme}://{addr}/");
    if !addr.ip().is_unspecified() {
        return vec![url(addr)];
    }
    // `::` also takes IPv4 on Linux (dual stack); `0.0.0.0` only IPv4.
    let v4_only = addr.is_ipv4();
    let loopback = if v4_only {
        std::net::Ipv4Addr::LOCALHOST.into()
    } else {
        std::net::Ipv6Addr::LOCALHOST.into()
    };
    let mut urls = vec![url(SocketAddr::new(loopback, addr.port()))];
    let interfaces = if_addrs::get_if_addrs().unwrap_or_default();
    urls.extend(
        interfaces
            .iter()
            .map(if_addrs::Interface::ip)
            .filter(|ip| !ip.is_loopback() && (ip.is_ipv4() || !v4_only))
            .map(|ip| url(SocketAddr::new(ip, addr.port()))),
    );
    urls
}

/// On each SIGHUP, loads the configuration again (the file, the environment, the flags) and
/// puts in force what can change without dropping a connection; a key that needs a restart
/// is named at `warn`, and a configuration that does not load leaves the running one alone.
#[cfg(unix)]
async fn reload_on_hangup(
    mut hangups: tokio::signal::unix::Signal,
    layers: Layers,
    started: Loaded,
    reloader: Reloader,
    memory: watch::Sender<MemoryConfig>,
) {
    let mut current = started.clone();
    while hangups.recv().await.is_some() {
        info!("SIGHUP received: reloading the configuration");
        let load = tokio::task::spawn_blocking({
            let layers = layers.clone();
            move || layers.load()
        });
        let loaded = match load.await {
            Ok(Ok(loaded)) => loaded,
            Ok(Err(err)) => {
                error!("reload failed, the running configuration stays in force: {err}");
                continue;
            }
            Err(err) => {
                error!("reload failed, the running configuration stays in force: {err}");
                continue;
            }
        };
        for key in started.changed_keys(&loaded) {
            if needs_restart(&key) {
                warn!("reload: `{key}` changed, but it needs a restart to take effect");
            }
        }
        let applied: Vec<String> = current
            .changed_keys(&loaded)
            .into_iter()
            .filter(|key| !needs_restart(key))
            .collect();
        let config = &loaded.config;
        let authenticator = config.auth.build();
        log_auth(&config.auth, &*authenticator);
        if let Some(warning) = reloader.apply(LiveSettings::new(&config.server, authenticator)) {
            warn!("reload: {warning}");
        }
        memory.send_replace(config.memory);
        info!("configuration reloaded; keys changed and applied: {applied:?}");
        current = loaded;
    }
}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(err) = tokio::signal::ctrl_c().await {
            error!(%err, "cannot listen for SIGINT");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(err) => {
                error!(%err, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => info!("SIGINT received"),
        () = terminate => info!("SIGTERM received"),
    }
}

//! The `ws-gateway` binary: flags, configuration file, logging, signals.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use tracing::{error, info, warn};

use crate::config::{AuthConfig, Config};
use crate::logging::LogFormat;
use crate::server::Gateway;

/// A WebSocket push gateway: clients subscribe to apps, backends push with `POST /push`.
#[derive(Debug, Parser)]
#[command(name = "ws-gateway", version)]
pub struct Args {
    #[command(subcommand)]
    pub command: Option<Command>,
    /// TOML configuration file (see the README for every key).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// WebSocket and push listener [default: 0.0.0.0:5000]; overrides `listen` in the file.
    #[arg(long, value_name = "ADDR:PORT")]
    pub listen: Option<SocketAddr>,
    /// Stat listener [default: 127.0.0.1:6000]; overrides `stat_listen` in the file.
    #[arg(long, value_name = "ADDR:PORT")]
    pub stat_listen: Option<SocketAddr>,
    /// Log lines as human-readable text or as one JSON object per line.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Mints an HMAC token (`[auth] kind = "hmac"`) for tests and demos; prints it on stdout.
    Token {
        /// The member the token authenticates.
        #[arg(long)]
        member: i64,
        /// How long the token is valid: `90s`, `15m`, `1h`, `7d`.
        #[arg(long, default_value = "1h")]
        ttl: humantime::Duration,
        /// The gateway's configuration file (its first secret signs the token).
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
    },
}

/// Runs the binary: parses `std::env::args`, serves until SIGINT/SIGTERM.
pub fn main() -> ExitCode {
    let args = Args::parse();
    if let Some(Command::Token {
        member,
        ttl,
        config,
    }) = args.command
    {
        return mint_token(member, ttl.into(), &config);
    }
    crate::logging::init(args.log_format);
    crate::admission::raise_open_file_limit();

    let mut config = match &args.config {
        Some(path) => match Config::load(path) {
            Ok(config) => config,
            Err(err) => {
                // Also on stderr without the log formatting, for a terminal user.
                eprintln!("error: {err}");
                return ExitCode::from(2);
            }
        },
        None => Config::default(),
    };
    if let Some(listen) = args.listen {
        config.server.listen = listen;
    }
    if let Some(stat_listen) = args.stat_listen {
        config.server.stat_listen = stat_listen;
    }

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
    runtime.block_on(serve(config))
}

fn mint_token(member: i64, ttl: std::time::Duration, path: &std::path::Path) -> ExitCode {
    let Some(member) = gateway_core::MemberId::new(member) else {
        eprintln!("error: --member must be a member id, an integer > 0");
        return ExitCode::from(2);
    };
    match Config::load(path) {
        Ok(Config {
            auth: AuthConfig::Hmac(tokens),
            ..
        }) => {
            println!("{}", tokens.mint(member, ttl.as_secs()));
            ExitCode::SUCCESS
        }
        Ok(_) => {
            eprintln!(
                "error: config file `{}`: key `auth.kind`: `ws-gateway token` needs kind = \"hmac\"",
                path.display()
            );
            ExitCode::from(2)
        }
        Err(err) => {
            eprintln!("error: {err}");
            ExitCode::from(2)
        }
    }
}

async fn serve(config: Config) -> ExitCode {
    let authenticator = config.auth.build();
    match &config.auth {
        AuthConfig::Anonymous => warn!(
            "auth: anonymous only: no [auth] configured, so every member is refused (401) and \
             continues as anonymous; private apps are unreachable"
        ),
        _ => info!("auth: {}", authenticator.describe()),
    }
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
    let access = &config.server.access;
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
    let scheme = if config.server.tls.is_some() {
        "wss"
    } else {
        "ws"
    };

    let gateway = match Gateway::bind(config.server, authenticator).await {
        Ok(gateway) => gateway,
        Err(err) => {
            error!("{err}");
            eprintln!("error: {err}");
            return ExitCode::FAILURE;
        }
    };
    info!("websocket and push listener on {}", gateway.local_addr());
    info!("clients connect to {scheme}://{}/", gateway.local_addr());
    info!("stat listener on {}", gateway.stat_addr());
    info!("node id in the cluster: {}", gateway.node_id());
    memory::grow_heap_in_larger_steps();
    tokio::spawn(memory::return_freed_memory(gateway.counters()));
    gateway.run(shutdown_signal()).await;
    ExitCode::SUCCESS
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

/// Giving memory back to the operating system after connections leave.
mod memory {
    use std::sync::Arc;
    use std::time::Duration;

    use crate::Counters;

    /// glibc's allocator keeps the memory of freed connections (tens of MB after 10k leave);
    /// `malloc_trim` hands the free pages back. Trimming briefly holds the allocator's locks,
    /// so it runs only after the number of sockets (connections and handshakes, so a flood of
    /// half-open peers counts too) fell well below its recent peak.
    pub(super) async fn return_freed_memory(counters: Arc<Counters>) {
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        loop {
            tick.tick().await;
            let peak = counters.take_peak();
            let now = counters.open_sockets();
            if peak - now >= 256 && now < peak - peak / 4 {
                trim();
            }
        }
    }

    /// glibc grows a worker thread's heap a few pages at a time, one `mprotect` each: about
    /// one system call per new connection under a connection burst. Growing by 1 MiB steps
    /// touches no more memory (untouched pages are not resident).
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[allow(unsafe_code)] // one FFI call into glibc, below
    pub(super) fn grow_heap_in_larger_steps() {
        const M_TOP_PAD: std::ffi::c_int = -2;
        unsafe extern "C" {
            fn mallopt(param: std::ffi::c_int, value: std::ffi::c_int) -> std::ffi::c_int;
        }
        // SAFETY: mallopt takes two integers and only changes the allocator's tuning.
        unsafe {
            mallopt(M_TOP_PAD, 1 << 20);
        }
    }

    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    pub(super) fn grow_heap_in_larger_steps() {}

    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[allow(unsafe_code)] // one FFI call into glibc, below
    fn trim() {
        unsafe extern "C" {
            fn malloc_trim(pad: usize) -> std::ffi::c_int;
        }
        // SAFETY: malloc_trim takes no pointers and is thread-safe; 0 keeps no padding.
        unsafe {
            malloc_trim(0);
        }
    }

    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    fn trim() {}
}

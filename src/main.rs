//! The `causeway` binary: command line, logging, signals. All logic lives in the library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use causeway::app::App;
use causeway::config::{Config, LogFormat};
use causeway::session::context::LogLevelHook;
use causeway::settings::log_filter;

// jemalloc by default (feature `jemalloc`; glibc's malloc without it): fewer bytes per idle
// client, see docs/ARCHITECTURE.md. Set here, never in the library crate.
#[cfg(feature = "jemalloc")]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// A replication-aware PostgreSQL proxy.
#[derive(Parser)]
#[command(name = "causeway", version, about)]
struct Cli {
    /// Configuration file.
    #[arg(
        long,
        short,
        global = true,
        env = "CAUSEWAY_CONFIG",
        default_value = "proxy.toml"
    )]
    config: PathBuf,
    /// What to do (default: run the proxy).
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy (the default).
    Run,
    /// Validate the configuration and print every problem.
    Check,
    /// Start a throwaway local primary + 2 standbys and the proxy on 127.0.0.1:6432.
    Demo {
        /// Address the proxy listens on.
        #[arg(long, default_value = "127.0.0.1:6432")]
        listen: std::net::SocketAddr,
        /// Number of standbys.
        #[arg(long, default_value_t = 2)]
        standbys: usize,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command.unwrap_or(Command::Run) {
        Command::Check => {
            init_logging("info", LogFormat::Text);
            check(&cli.config)
        }
        Command::Run => run(&cli.config),
        Command::Demo { listen, standbys } => demo(listen, standbys),
    }
}

/// `causeway demo`: a throwaway cluster and the proxy in front of it.
fn demo(listen: std::net::SocketAddr, standbys: usize) -> ExitCode {
    init_logging("info", LogFormat::Text);
    match causeway::demo::run(listen, standbys) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("causeway demo: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Installs the log subscriber on stderr: the `level` filter (`RUST_LOG` wins when set), text
/// lines (coloured only when stderr is a terminal, so files and pipes get no escape codes) or
/// JSON lines. Returns how a reload changes the level, unless `RUST_LOG` decides it.
fn init_logging(level: &str, format: LogFormat) -> Option<LogLevelHook> {
    use std::io::IsTerminal;
    use tracing_subscriber::prelude::*;
    use tracing_subscriber::{fmt, EnvFilter};

    let from_env = EnvFilter::try_from_default_env().ok();
    let env_decides = from_env.is_some();
    // The level was checked with the configuration; "info" only if that check was skipped.
    let filter =
        from_env.unwrap_or_else(|| log_filter(level).unwrap_or_else(|_| EnvFilter::new("info")));
    let (filter, handle) = tracing_subscriber::reload::Layer::new(filter);
    let registry = tracing_subscriber::registry().with(filter);
    match format {
        LogFormat::Text => registry
            .with(
                fmt::layer()
                    .with_writer(std::io::stderr)
                    .with_ansi(std::io::stderr().is_terminal()),
            )
            .init(),
        LogFormat::Json => registry
            .with(fmt::layer().json().with_writer(std::io::stderr))
            .init(),
    }
    if env_decides {
        return None;
    }
    Some(Box::new(move |level: &str| {
        let filter = log_filter(level).map_err(|e| e.to_string())?;
        handle.reload(filter).map_err(|e| e.to_string())
    }))
}

/// `causeway check`: every problem, one per line; exit status 0 only for a usable file.
fn check(path: &PathBuf) -> ExitCode {
    match Config::load(path) {
        Ok(loaded) => {
            for n in &loaded.notices {
                println!("note: {n}");
            }
            match causeway::app::Settings::new(loaded.config) {
                Ok(_) => {
                    println!("{}: OK", path.display());
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    println!("{}: {e}", path.display());
                    ExitCode::from(2)
                }
            }
        }
        Err(e) => {
            println!("{e}");
            ExitCode::from(2)
        }
    }
}

/// `causeway --config proxy.toml`: run until SIGTERM or the console's SHUTDOWN (graceful) or
/// SIGINT (fast); SIGHUP reloads the file.
fn run(path: &PathBuf) -> ExitCode {
    let loaded = match Config::load(path) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let log_hook = init_logging(
        &loaded.config.proxy.log_level,
        loaded.config.proxy.log_format,
    );
    for n in &loaded.notices {
        tracing::warn!("{n}");
    }
    let runtime = match causeway::app::build_runtime(loaded.config.proxy.worker_threads) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        let app = match App::new(loaded.config) {
            Ok(a) => a,
            Err(e) => {
                eprintln!("{e}");
                return ExitCode::from(2);
            }
        };
        app.set_config_path(path.clone());
        if let Some(hook) = log_hook {
            app.set_log_level_hook(hook);
        }
        if let Err(e) = app.start().await {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
        let fast = causeway::app::wait_for_stop_signal(app.ctx()).await;
        // As the last reload left it.
        let grace = app.settings().config.proxy.shutdown_timeout;
        app.shutdown(if fast {
            std::time::Duration::ZERO
        } else {
            grace
        })
        .await;
        ExitCode::SUCCESS
    })
}

//! The `causeway` binary: command line, logging, signals. All logic lives in the library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use causeway::app::App;
use causeway::config::Config;

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
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    match cli.command.unwrap_or(Command::Run) {
        Command::Check => check(&cli.config),
        Command::Run => run(&cli.config),
        Command::Demo { listen, standbys } => match causeway::demo::run(listen, standbys) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("causeway demo: {e}");
                ExitCode::FAILURE
            }
        },
    }
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

//! The `--serve-proxy <config>` child that `loadbench` and `soak` start: the proxy from the
//! library, in a process of its own, so that its CPU and memory can be read from `/proc`.
//! Shared by the examples through `#[path]`.

use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

/// Runs the proxy from the library until SIGINT / SIGTERM, or until its stdin closes (`parent`,
/// the example that started it, is gone).
pub fn serve_proxy(path: &Path, parent: &str) -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let loaded = match causeway::config::Config::load(path) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let parent = parent.to_owned();
    std::thread::spawn(move || {
        let mut sink = Vec::new();
        let _ = std::io::Read::read_to_end(&mut std::io::stdin(), &mut sink);
        eprintln!("causeway child: the {parent} is gone (stdin closed); exiting");
        std::process::exit(0);
    });
    let runtime = match causeway::app::build_runtime(loaded.config.proxy.worker_threads) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        let app = match causeway::app::App::new(loaded.config) {
            Ok(a) => a,
            Err(e) => {
                eprintln!("{e}");
                return ExitCode::from(2);
            }
        };
        if let Err(e) = app.start().await {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
        causeway::app::wait_for_stop_signal(app.ctx()).await;
        app.shutdown(Duration::ZERO).await;
        ExitCode::SUCCESS
    })
}

//! # consistency: what read-your-writes costs, measured
//!
//! ```sh
//! cargo run --release --example consistency                  # 3 rounds of 8 s per setting
//! cargo run --release --example consistency -- --seconds 4 --rounds 1 --clients 8
//! ```
//!
//! Starts a throwaway primary + 2 streaming standbys (`causeway::cluster`), and in front of it
//! causeway (in this process) with `consistency = "session"` (`causal_wait` 0 ms and 20 ms) and
//! with `"eventual"`, one after the other, interleaved over the rounds. Each client runs a 10 %
//! write / 90 % read mix: the write inserts a row, every read looks up the client's latest row
//! and asks `inet_server_port()`. Reported per setting: operations per second, the share of
//! reads the standbys served, and reads that missed the client's own latest row.
//! Everything runs on loopback, every loop is bounded by the run's duration, and the cluster is
//! removed at the end (also on Ctrl-C, by the cluster's guardian).

use std::time::{Duration, Instant};

use causeway::app::App;
use causeway::cluster::{self, ClusterOptions, LocalCluster};
use causeway::config::Config;

struct Args {
    seconds: u64,
    rounds: usize,
    clients: usize,
}

fn args() -> Result<Args, String> {
    let mut a = Args {
        seconds: 8,
        rounds: 3,
        clients: 16,
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let mut num = |name: &str| -> Result<u64, String> {
            it.next()
                .and_then(|v| v.parse().ok())
                .ok_or(format!("{name} needs a number"))
        };
        match k.as_str() {
            "--seconds" => a.seconds = num("--seconds")?.clamp(1, 600),
            "--rounds" => a.rounds = num("--rounds")?.clamp(1, 20) as usize,
            "--clients" => a.clients = num("--clients")?.clamp(1, 200) as usize,
            "--help" | "-h" => {
                println!("consistency [--seconds N] [--rounds N] [--clients N]");
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other}")),
        }
    }
    Ok(a)
}

/// One setting under test.
struct Setting {
    name: &'static str,
    routing: &'static str,
}

const SETTINGS: [Setting; 3] = [
    Setting {
        name: "session, causal_wait 0ms",
        routing: "consistency = \"session\"\ncausal_wait = \"0ms\"",
    },
    Setting {
        name: "session, causal_wait 20ms",
        routing: "consistency = \"session\"\ncausal_wait = \"20ms\"",
    },
    Setting {
        name: "eventual",
        routing: "consistency = \"eventual\"",
    },
];

#[derive(Default, Clone, Copy)]
struct Counts {
    writes: u64,
    reads: u64,
    standby_reads: u64,
    misses: u64,
    errors: u64,
}

impl Counts {
    fn add(&mut self, o: &Counts) {
        self.writes += o.writes;
        self.reads += o.reads;
        self.standby_reads += o.standby_reads;
        self.misses += o.misses;
        self.errors += o.errors;
    }
}

fn config(c: &LocalCluster, routing: &str) -> String {
    let nodes = c.nodes_toml().expect("node ports");
    format!(
        r#"
[proxy]
listen = "127.0.0.1:0"

[pool]
pool_size = 40

[routing]
check_interval = "250ms"
{routing}

[monitor]
user = "{monitor}"
password = "{monitor_password}"

{nodes}
[[users]]
name = "{app}"
password = "{app_password}"
"#,
        monitor = cluster::MONITOR_USER,
        monitor_password = cluster::MONITOR_PASSWORD,
        app = cluster::APP_USER,
        app_password = cluster::APP_PASSWORD,
    )
}

/// One client's mix until `until`.
async fn client(conninfo: String, primary_port: i32, seed: u64, until: Instant) -> Counts {
    let mut n = Counts::default();
    let Ok((c, conn)) = tokio_postgres::connect(&conninfo, tokio_postgres::NoTls).await else {
        n.errors += 1;
        return n;
    };
    tokio::spawn(conn);
    let mut rng = seed | 1;
    let mut last: Option<i64> = None;
    while Instant::now() < until {
        // xorshift64: a cheap, deterministic 10 % draw per operation.
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let write = last.is_none() || rng % 10 == 0;
        if write {
            match c
                .query_one(
                    "insert into rw_mix (v) values ($1) returning id",
                    &[&((rng % 1000) as i32)],
                )
                .await
            {
                Ok(row) => {
                    last = Some(row.get(0));
                    n.writes += 1;
                }
                Err(_) => n.errors += 1,
            }
        } else {
            match c
                .query_opt(
                    "select inet_server_port() from rw_mix where id = $1",
                    &[&last.unwrap_or(0)],
                )
                .await
            {
                Ok(row) => {
                    n.reads += 1;
                    match row {
                        Some(r) => {
                            if r.get::<_, Option<i32>>(0) != Some(primary_port) {
                                n.standby_reads += 1;
                            }
                        }
                        None => {
                            n.misses += 1;
                            // A miss means a standby answered (the primary has every row).
                            n.standby_reads += 1;
                        }
                    }
                }
                Err(_) => n.errors += 1,
            }
        }
    }
    n
}

async fn run_one(
    c: &LocalCluster,
    s: &Setting,
    clients: usize,
    seconds: u64,
) -> Result<(Counts, f64), String> {
    let loaded = Config::from_toml(&config(c, s.routing), "consistency", &|_| None)
        .map_err(|e| e.to_string())?;
    let app = App::new(loaded.config).map_err(|e| e.to_string())?;
    let addr = app.start().await.map_err(|e| e.to_string())?;
    app.topology()
        .wait_for_primary(Duration::from_secs(10))
        .await
        .ok_or("no primary found")?;
    // Both standbys eligible before measuring.
    let deadline = Instant::now() + Duration::from_secs(10);
    while app.topology().load().eligible_standbys() < 2 {
        if Instant::now() > deadline {
            return Err("standbys did not become eligible".into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let primary_port = c.primary_port().map_err(|e| e.to_string())? as i32;
    let conninfo = format!(
        "host={} port={} user={} password={} dbname=postgres",
        addr.ip(),
        addr.port(),
        cluster::APP_USER,
        cluster::APP_PASSWORD
    );
    let started = Instant::now();
    let until = started + Duration::from_secs(seconds);
    let tasks: Vec<_> = (0..clients)
        .map(|i| {
            tokio::spawn(client(
                conninfo.clone(),
                primary_port,
                0x9e37_79b9_7f4a_7c15 ^ (i as u64 + 1).wrapping_mul(0x2545_f491_4f6c_dd1d),
                until,
            ))
        })
        .collect();
    let mut total = Counts::default();
    for t in tasks {
        if let Ok(n) = t.await {
            total.add(&n);
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    app.shutdown(Duration::from_secs(2)).await;
    Ok((total, elapsed))
}

fn main() {
    let a = match args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    eprintln!("starting a primary and 2 standbys...");
    let c = match LocalCluster::start(ClusterOptions::default()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("cannot start the cluster: {e}");
            std::process::exit(1);
        }
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let result: Result<Vec<(Counts, f64)>, String> = rt.block_on(async {
        let url = c
            .conninfo(
                c.primary().map_err(|e| e.to_string())?,
                cluster::SUPERUSER,
                Some(c.superuser_password()),
            )
            .map_err(|e| e.to_string())?;
        let (admin, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        admin
            .batch_execute(&format!(
                "create table rw_mix (id bigserial primary key, v int);
                 grant all on rw_mix to {app};
                 grant all on sequence rw_mix_id_seq to {app};",
                app = cluster::APP_USER
            ))
            .await
            .map_err(|e| e.to_string())?;
        c.wait_caught_up(Duration::from_secs(30))
            .map_err(|e| e.to_string())?;
        let mut sums = vec![(Counts::default(), 0.0); SETTINGS.len()];
        for round in 0..a.rounds {
            for (i, s) in SETTINGS.iter().enumerate() {
                eprintln!("round {}/{}: {}", round + 1, a.rounds, s.name);
                let (n, secs) = run_one(&c, s, a.clients, a.seconds).await?;
                sums[i].0.add(&n);
                sums[i].1 += secs;
            }
        }
        Ok(sums)
    });
    let code = match result {
        Ok(sums) => {
            println!(
                "\n{} clients, 10 % writes / 90 % reads, {} round(s) of {} s per setting, \
                 check_interval 250ms\n",
                a.clients, a.rounds, a.seconds
            );
            println!("| setting | ops/s | reads on standbys | misses of own write | errors |");
            println!("|---|---|---|---|---|");
            for (s, (n, secs)) in SETTINGS.iter().zip(sums) {
                let ops = (n.reads + n.writes) as f64 / secs.max(1e-9);
                let share = n.standby_reads as f64 / n.reads.max(1) as f64 * 100.0;
                println!(
                    "| {} | {:.0} | {:.1} % ({} of {}) | {} | {} |",
                    s.name, ops, share, n.standby_reads, n.reads, n.misses, n.errors
                );
            }
            0
        }
        Err(e) => {
            eprintln!("{e}");
            1
        }
    };
    if let Err(e) = c.shutdown() {
        eprintln!("cluster shutdown: {e}");
    }
    std::process::exit(code);
}

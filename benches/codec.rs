//! Micro-benchmarks of the sans-I/O wire layer (`causeway::protocol`): the work the proxy does
//! per message, without sockets.
//!
//! ```sh
//! cargo bench --bench codec                 # all of them (about a minute)
//! cargo bench --bench codec -- scanner      # only names containing "scanner"
//! ```
//!
//! Criterion prints the time per iteration; each benchmark's name says what one iteration is.
//! Groups with a `Throughput::Elements` also print elements (frames, messages) per second, so
//! "ns per frame" is 1e9 / that rate.
//!
//! The messages are built once, outside the timed loop, and look like what PostgreSQL 15 sends
//! for pgbench's queries. Routing and statement classification live in `benches/routing.rs`.

use std::hint::black_box;

use bytes::{BufMut, BytesMut};
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};

use causeway::protocol::backend::{tag as btag, ReplyScanner, Step, TxStatus};
use causeway::protocol::codec::{put_cstr, put_frame, put_frame_with};
use causeway::protocol::frontend;
use causeway::protocol::messages::{self, ProxyError};
use causeway::protocol::startup::{decode_startup, CancelKey, StartupMessage};
use causeway::protocol::{decode_frame, SqlState, DEFAULT_MAX_MESSAGE_LEN};

// === sample messages ===

/// A RowDescription for `columns` int4/text columns, as PostgreSQL writes it.
fn row_description(dst: &mut BytesMut, columns: &[(&str, u32, i16)]) {
    put_frame_with(dst, btag::ROW_DESCRIPTION, |b| {
        b.put_i16(columns.len() as i16);
        for (name, type_oid, type_len) in columns {
            put_cstr(b, name.as_bytes());
            b.put_u32(16_397); // table oid
            b.put_i16(1); // column number
            b.put_u32(*type_oid);
            b.put_i16(*type_len);
            b.put_i32(-1); // type modifier
            b.put_i16(0); // text format
        }
    });
}

/// A DataRow with the given text values.
fn data_row(dst: &mut BytesMut, values: &[&[u8]]) {
    put_frame_with(dst, btag::DATA_ROW, |b| {
        b.put_i16(values.len() as i16);
        for v in values {
            b.put_i32(v.len() as i32);
            b.put_slice(v);
        }
    });
}

/// A SELECT reply: RowDescription, `rows` DataRows (aid, bid, abalance, filler like
/// pgbench_accounts), CommandComplete, ReadyForQuery.
fn select_reply(rows: usize) -> Vec<u8> {
    let mut b = BytesMut::new();
    row_description(
        &mut b,
        &[
            ("aid", 23, 4),
            ("bid", 23, 4),
            ("abalance", 23, 4),
            ("filler", 1042, -1),
        ],
    );
    let filler = [b' '; 84];
    for i in 0..rows {
        let aid = (100_000 + i).to_string();
        data_row(&mut b, &[aid.as_bytes(), b"1", b"-4821", &filler]);
    }
    put_frame(
        &mut b,
        btag::COMMAND_COMPLETE,
        format!("SELECT {rows}\0").as_bytes(),
    );
    put_frame(&mut b, btag::READY_FOR_QUERY, b"I");
    b.to_vec()
}

/// pgbench `-S`'s reply: one row, one int4 column.
fn pgbench_select_reply() -> Vec<u8> {
    let mut b = BytesMut::new();
    row_description(&mut b, &[("abalance", 23, 4)]);
    data_row(&mut b, &[b"-4821"]);
    put_frame(&mut b, btag::COMMAND_COMPLETE, b"SELECT 1\0");
    put_frame(&mut b, btag::READY_FOR_QUERY, b"I");
    b.to_vec()
}

/// The frames pgbench `-M prepared` sends per `-S` transaction: Bind, Execute, Sync.
fn pgbench_prepared_request() -> Vec<u8> {
    let mut b = BytesMut::new();
    put_frame_with(&mut b, frontend::tag::BIND, |b| {
        put_cstr(b, b""); // portal
        put_cstr(b, b"P0_1"); // statement
        b.put_i16(0); // parameter formats
        b.put_i16(1); // parameters
        b.put_i32(6);
        b.put_slice(b"523178");
        b.put_i16(0); // result formats
    });
    put_frame_with(&mut b, frontend::tag::EXECUTE, |b| {
        put_cstr(b, b"");
        b.put_i32(0);
    });
    put_frame(&mut b, frontend::tag::SYNC, b"");
    b.to_vec()
}

/// The StartupMessage libpq 15 (psql, pgbench) sends.
fn libpq_startup() -> Vec<u8> {
    StartupMessage::encode([
        ("user", "app"),
        ("database", "postgres"),
        ("application_name", "pgbench"),
        ("client_encoding", "UTF8"),
        ("DateStyle", "ISO, MDY"),
        ("extra_float_digits", "2"),
    ])
    .to_vec()
}

/// The ParameterStatus values PostgreSQL 15 reports at login.
const SERVER_PARAMS: &[(&str, &str)] = &[
    ("application_name", "pgbench"),
    ("client_encoding", "UTF8"),
    ("DateStyle", "ISO, MDY"),
    ("default_transaction_read_only", "off"),
    ("in_hot_standby", "off"),
    ("integer_datetimes", "on"),
    ("IntervalStyle", "postgres"),
    ("is_superuser", "off"),
    ("server_encoding", "UTF8"),
    ("server_version", "15.18 (Debian 15.18-0+deb12u1)"),
    ("session_authorization", "app"),
    ("standard_conforming_strings", "on"),
    ("TimeZone", "Etc/UTC"),
];

/// Number of frames in a well-formed stream.
fn count_frames(stream: &[u8]) -> u64 {
    let mut buf = BytesMut::from(stream);
    let mut n = 0;
    while decode_frame(&mut buf, DEFAULT_MAX_MESSAGE_LEN)
        .unwrap()
        .is_some()
    {
        n += 1;
    }
    n
}

// === benchmarks ===

/// `decode_frame` cutting every frame of a reply out of a read buffer (zero-copy `split_to`).
fn bench_decode(c: &mut Criterion) {
    let mut g = c.benchmark_group("decode_frame");
    for (name, stream) in [
        ("pgbench_select_reply_4_frames", pgbench_select_reply()),
        ("select_reply_10_rows_13_frames", select_reply(10)),
        ("bind_execute_sync_3_frames", pgbench_prepared_request()),
    ] {
        g.throughput(Throughput::Elements(count_frames(&stream)));
        g.bench_function(name, |b| {
            b.iter_batched_ref(
                || BytesMut::from(&stream[..]),
                |buf| {
                    while let Some(f) = decode_frame(buf, DEFAULT_MAX_MESSAGE_LEN).unwrap() {
                        black_box(f.tag());
                    }
                },
                BatchSize::SmallInput,
            )
        });
    }
    g.finish();
}

/// The relay's inspect set (see `session/relay.rs`).
fn relay_inspects(t: u8) -> bool {
    matches!(
        t,
        btag::READY_FOR_QUERY
            | btag::PARAMETER_STATUS
            | btag::ERROR_RESPONSE
            | btag::COPY_IN_RESPONSE
            | btag::COPY_BOTH_RESPONSE
    )
}

/// Runs the scanner over `stream` delivered in reads of `chunk` bytes, as the relay does:
/// passthrough runs are skipped, inspected frames are read. Returns the passthrough byte count.
fn scan(stream: &[u8], chunk: usize) -> usize {
    let mut scanner = ReplyScanner::default();
    let mut passed = 0;
    let mut start = 0; // first unconsumed byte
    let mut end = 0; // bytes "read" so far
    loop {
        match scanner
            .step(&stream[start..end], DEFAULT_MAX_MESSAGE_LEN, relay_inspects)
            .unwrap()
        {
            Step::Passthrough(n) => {
                passed += n;
                start += n;
            }
            Step::Inspect(h) => {
                let frame = &stream[start..start + h.frame_len];
                if frame[0] == btag::READY_FOR_QUERY {
                    black_box(causeway::protocol::backend::ready_for_query(&frame[5..]).unwrap());
                }
                start += h.frame_len;
            }
            Step::NeedMore => {
                if end == stream.len() {
                    return passed;
                }
                end = (end + chunk).min(stream.len());
            }
        }
    }
}

/// `ReplyScanner` walking a 100-row reply (and pgbench's 1-row reply): the per-query hot path.
fn bench_scanner(c: &mut Criterion) {
    let mut g = c.benchmark_group("reply_scanner");
    let hundred = select_reply(100);
    let one = pgbench_select_reply();
    // Sanity: everything but ReadyForQuery passes through.
    assert_eq!(scan(&hundred, hundred.len()), hundred.len() - 6);
    assert_eq!(scan(&hundred, 1460), hundred.len() - 6);
    g.throughput(Throughput::Elements(count_frames(&hundred)));
    g.bench_function("reply_100_rows_one_read", |b| {
        b.iter(|| scan(black_box(&hundred), hundred.len()))
    });
    // TCP-segment-sized reads over loopback are bigger, but this is the worst realistic case.
    g.bench_function("reply_100_rows_1460_byte_reads", |b| {
        b.iter(|| scan(black_box(&hundred), 1460))
    });
    g.throughput(Throughput::Elements(count_frames(&one)));
    g.bench_function("pgbench_select_reply_one_read", |b| {
        b.iter(|| scan(black_box(&one), one.len()))
    });
    g.finish();
}

/// `decode_startup`: the StartupMessage libpq sends, and an SSLRequest.
fn bench_startup(c: &mut Criterion) {
    let mut g = c.benchmark_group("startup");
    let startup = libpq_startup();
    let ssl = 80_877_103i32;
    let mut ssl_request = Vec::new();
    ssl_request.extend_from_slice(&8i32.to_be_bytes());
    ssl_request.extend_from_slice(&ssl.to_be_bytes());
    g.throughput(Throughput::Elements(1));
    g.bench_function("decode_libpq_startup_message_6_params", |b| {
        b.iter_batched_ref(
            || BytesMut::from(&startup[..]),
            |buf| black_box(decode_startup(buf).unwrap().unwrap()),
            BatchSize::SmallInput,
        )
    });
    g.bench_function("decode_ssl_request", |b| {
        b.iter_batched_ref(
            || BytesMut::from(&ssl_request[..]),
            |buf| black_box(decode_startup(buf).unwrap().unwrap()),
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

/// The frontend views the session reads on every extended-protocol request.
fn bench_frontend(c: &mut Criterion) {
    let mut g = c.benchmark_group("frontend_views");
    let request = pgbench_prepared_request();
    g.throughput(Throughput::Elements(3));
    g.bench_function("bind_execute_sync_views", |b| {
        b.iter(|| {
            let mut rest = black_box(&request[..]);
            while !rest.is_empty() {
                let len = i32::from_be_bytes([rest[1], rest[2], rest[3], rest[4]]) as usize + 1;
                let (frame, after) = rest.split_at(len);
                match frame[0] {
                    frontend::tag::BIND => {
                        black_box(frontend::bind(&frame[5..]).unwrap());
                    }
                    frontend::tag::EXECUTE => {
                        black_box(frontend::execute(&frame[5..]).unwrap());
                    }
                    _ => {}
                }
                rest = after;
            }
        })
    });
    let query = b"SELECT abalance FROM pgbench_accounts WHERE aid = 523178;\0";
    g.throughput(Throughput::Elements(1));
    g.bench_function("query_text", |b| {
        b.iter(|| black_box(frontend::query_text(black_box(query)).unwrap()))
    });
    g.finish();
}

/// Messages the proxy writes itself: the welcome after login, errors, its own queries.
fn bench_encode(c: &mut Criterion) {
    let mut g = c.benchmark_group("encode");
    let key = CancelKey {
        pid: 4242,
        secret: 0x1234_5678,
    };
    let welcome_messages = SERVER_PARAMS.len() as u64 + 3;
    g.throughput(Throughput::Elements(welcome_messages));
    g.bench_function("welcome_auth_ok_13_params_key_rfq", |b| {
        let mut buf = BytesMut::with_capacity(1024);
        b.iter(|| {
            buf.clear();
            messages::authentication_ok(&mut buf);
            for (name, value) in SERVER_PARAMS {
                messages::parameter_status(&mut buf, name, value);
            }
            messages::backend_key_data(&mut buf, key);
            messages::ready_for_query(&mut buf, TxStatus::Idle);
            black_box(buf.len())
        })
    });
    g.throughput(Throughput::Elements(1));
    g.bench_function("ready_for_query", |b| {
        let mut buf = BytesMut::with_capacity(64);
        b.iter(|| {
            buf.clear();
            messages::ready_for_query(&mut buf, black_box(TxStatus::InTransaction));
            black_box(buf.len())
        })
    });
    let err = ProxyError::fatal(
        SqlState::CANNOT_CONNECT_NOW,
        "no primary server is available (waited 10s)",
    )
    .with_hint("retry later");
    g.bench_function("error_response", |b| {
        let mut buf = BytesMut::with_capacity(256);
        b.iter(|| {
            buf.clear();
            black_box(&err).encode(&mut buf);
            black_box(buf.len())
        })
    });
    g.bench_function("query_discard_all", |b| {
        let mut buf = BytesMut::with_capacity(64);
        b.iter(|| {
            buf.clear();
            messages::query(&mut buf, black_box("DISCARD ALL"));
            black_box(buf.len())
        })
    });
    g.finish();
}

criterion_group!(
    benches,
    bench_decode,
    bench_scanner,
    bench_startup,
    bench_frontend,
    bench_encode
);
criterion_main!(benches);

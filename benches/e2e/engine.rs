//! The sections of issue 13: (a) a sustained burst to one webhook, (b) the same to 10 and
//! 100 webhooks, (c) recovery after an outage, (d) a million due at restart, (e) fairness
//! while a 500k backlog drains, (f) latency at steady rates; plus durable ingest by clients
//! and webhooks. Every run exceeds the daemon's in-memory bounds (a window of 64 entries per
//! webhook, 200,000 in all, 1,024 attempts in flight, a 64 MiB body budget), and every rate
//! is sustained: from the first request to the last delivery.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use palo_webhooks::delivery::build_client;
use palo_webhooks::signature::sign;

use super::{
    create_webhooks, event_body, event_body_for, ingest_maker, load, percentile, post,
    raw_redb_records_per_second, start_bare_server, start_daemon_at, start_daemon_with,
    start_receiver, start_receiver_on, wait_for, Arrivals, Daemon, MakeRequest, SECRET, TOKEN,
};

/// The same-run baselines every ratio is taken against.
pub struct Baselines {
    /// Bare hyper server, 64 clients (req/s).
    pub server: f64,
    /// Bare hyper client, signed 1 KiB POSTs to the fast receiver, 64 in flight (req/s).
    pub client: f64,
}

/// The baselines: a bare hyper server, a bare hyper client, raw redb batched commits.
pub async fn baselines(add: &mut impl FnMut(&str, String)) -> Baselines {
    let n = 40_000;
    let bare = start_bare_server().await;
    let make_bare: MakeRequest = Arc::new(move |i| {
        (
            format!("http://{bare}/api/events"),
            super::event_body(i),
            vec![],
        )
    });
    let (server, _) = load(n, 64, make_bare, 202).await;
    add(
        "baseline: bare hyper server, 64 clients (req/s)",
        format!("{server:.0}"),
    );
    for batch in [1, 64] {
        let total = if batch == 1 { 2_000 } else { 64_000 };
        let rate = tokio::task::spawn_blocking(move || raw_redb_records_per_second(total, batch))
            .await
            .unwrap();
        add(
            &format!("baseline: raw redb durable commits, {batch} records/txn (records/s)"),
            format!("{rate:.0}"),
        );
    }
    let arrivals = Arc::new(Arrivals::default());
    let receiver = start_receiver(arrivals).await;
    let make_signed: MakeRequest = Arc::new(move |i| {
        let body = super::event_body(i);
        let signature = sign(SECRET, &body);
        (
            format!("http://{receiver}/hook"),
            body,
            vec![
                ("x-palo-signature", signature),
                ("x-palo-event-id", format!("base_{i}")),
            ],
        )
    });
    let (client, _) = load(n, 64, make_signed, 200).await;
    add(
        "baseline: bare hyper client, signed POSTs, 64 in flight (req/s)",
        format!("{client:.0}"),
    );
    Baselines { server, client }
}

/// The daemon's peak resident memory, sampled every 50 ms until dropped.
pub(super) struct RssWatch {
    peak_kib: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
}

impl RssWatch {
    pub(super) fn start(daemon: &Daemon) -> RssWatch {
        let (peak_kib, stop) = (
            Arc::new(AtomicU64::new(0)),
            Arc::new(AtomicBool::new(false)),
        );
        let (peak, halt, pid) = (Arc::clone(&peak_kib), Arc::clone(&stop), daemon.child.id());
        tokio::spawn(async move {
            while !halt.load(Ordering::Relaxed) {
                let status =
                    std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
                let kib = status
                    .lines()
                    .find(|l| l.starts_with("VmRSS:"))
                    .and_then(|l| l.split_whitespace().nth(1))
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
                peak.fetch_max(kib, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        });
        RssWatch { peak_kib, stop }
    }

    pub(super) fn peak_mib(&self) -> f64 {
        self.peak_kib.load(Ordering::Relaxed) as f64 / 1024.0
    }
}

impl Drop for RssWatch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Requests per second at the receiver from second `from` on (receiver's clock): the counts,
/// and the seconds between the first and the last arrival with none.
fn per_second(arrivals: &Arrivals, from: Instant) -> (String, usize) {
    let first = from.duration_since(arrivals.epoch).as_secs();
    let counts = arrivals.per_second.lock().unwrap();
    let seconds: Vec<u64> = counts.keys().copied().filter(|s| *s >= first).collect();
    let (Some(lo), Some(hi)) = (seconds.first().copied(), seconds.last().copied()) else {
        return ("none".to_owned(), 0);
    };
    let row: Vec<String> = (lo..=hi)
        .map(|s| counts.get(&s).copied().unwrap_or(0).to_string())
        .collect();
    let silent = (lo..=hi).filter(|s| !counts.contains_key(s)).count();
    (row.join(" "), silent)
}

/// Reports the seconds without a delivery from `from` to the last delivery and the peak RSS,
/// and prints the receiver's per-second counts.
fn report_stalls(
    name: &str,
    arrivals: &Arrivals,
    from: Instant,
    rss: &RssWatch,
    add: &mut impl FnMut(&str, String),
) {
    let (counts, silent) = per_second(arrivals, from);
    add(
        &format!("{name}: seconds without a delivery while due; peak RSS (MiB)"),
        format!("{silent}; {:.1}", rss.peak_mib()),
    );
    println!("  receiver per second: {counts}");
}

/// Sends requests made by `make` over `concurrency` connections for `duration`; returns how
/// many were answered `expect` and when each was answered, by index.
async fn load_for(
    duration: Duration,
    concurrency: usize,
    make: MakeRequest,
    expect: u16,
) -> Vec<Instant> {
    let client = build_client(Duration::from_secs(10));
    let next = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(Mutex::new(HashMap::new()));
    let deadline = Instant::now() + duration;
    let tasks: Vec<_> = (0..concurrency)
        .map(|_| {
            let (client, next, done, make) = (
                client.clone(),
                Arc::clone(&next),
                Arc::clone(&done),
                Arc::clone(&make),
            );
            tokio::spawn(async move {
                while Instant::now() < deadline {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let (url, body, headers) = make(i);
                    let (status, at) = post(&client, &url, body, &headers).await;
                    assert_eq!(status, expect, "request {i}");
                    done.lock().unwrap().insert(i, at);
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let done = std::mem::take(&mut *done.lock().unwrap());
    let mut out = vec![Instant::now(); done.len()];
    for (i, at) in done {
        if i < out.len() {
            out[i] = at;
        }
    }
    out
}

/// 202 → first delivery of each event `evt_bench_<i>`, sorted.
fn latencies(arrivals: &Arrivals, answered: &[Instant]) -> Vec<Duration> {
    let first = arrivals.first_byte.lock().unwrap();
    let mut out: Vec<Duration> = answered
        .iter()
        .enumerate()
        .filter_map(|(i, ok)| {
            first
                .get(&format!("evt_bench_{i}"))
                .map(|at| at.saturating_duration_since(*ok))
        })
        .collect();
    out.sort();
    out
}

pub(super) fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// (a)/(b): 64 clients for `seconds`, default settings, `webhooks` subscribed. Returns the
/// e2e deliveries/s.
pub async fn burst(
    base: &Baselines,
    webhooks: usize,
    seconds: u64,
    label: &str,
    add: &mut impl FnMut(&str, String),
) -> f64 {
    let daemon = start_daemon_with(&[]);
    let name =
        format!("{label} burst, 64 clients {seconds} s, {webhooks} webhook(s), default settings");
    burst_on(base, &[daemon], webhooks, seconds, &name, add).await
}

/// A burst of 64 clients for `seconds` spread over `daemons` (which share a store), with
/// `webhooks` subscribed, reported under `name`. Returns the e2e deliveries/s (first
/// request to last delivery).
pub async fn burst_on(
    base: &Baselines,
    daemons: &[Daemon],
    webhooks: usize,
    seconds: u64,
    name: &str,
    add: &mut impl FnMut(&str, String),
) -> f64 {
    let arrivals = Arc::new(Arrivals::default());
    let receiver = start_receiver(Arc::clone(&arrivals)).await;
    create_webhooks(&daemons[0], receiver, webhooks).await;
    // Every daemon must serve before the clock starts (PostgreSQL: leases are taken).
    tokio::time::sleep(Duration::from_secs(if daemons.len() > 1 { 3 } else { 1 })).await;
    let rss = RssWatch::start(&daemons[0]);
    let addrs: Vec<SocketAddr> = daemons.iter().map(|d| d.addr).collect();
    let make: MakeRequest = Arc::new(move |i| {
        (
            format!("http://{}/api/events", addrs[i % addrs.len()]),
            event_body(i),
            vec![("authorization", format!("Bearer {TOKEN}"))],
        )
    });
    let started = Instant::now();
    let answered = load_for(Duration::from_secs(seconds), 64, make, 202).await;
    let ingest_end = Instant::now();
    let accepted = answered.len();
    let last = wait_for(&arrivals, accepted * webhooks, Duration::from_secs(900)).await;
    let e2e = (accepted * webhooks) as f64 / last.duration_since(started).as_secs_f64();
    let ingest = accepted as f64 / ingest_end.duration_since(started).as_secs_f64();
    add(
        &format!("{name}: accepted events; ingest (events/s)"),
        format!("{accepted}; {ingest:.0}"),
    );
    add(
        &format!("{name}: e2e deliveries/s (ratio to bare server)"),
        format!("{e2e:.0} ({:.2})", e2e / base.server),
    );
    add(
        &format!("{name}: drain after ingest ended (s)"),
        format!("{:.1}", last.duration_since(ingest_end).as_secs_f64()),
    );
    let lat = latencies(&arrivals, &answered);
    add(
        &format!("{name}: 202 → first delivery p50 / p99 (ms)"),
        format!(
            "{:.1} / {:.1}",
            ms(percentile(&lat, 0.5)),
            ms(percentile(&lat, 0.99))
        ),
    );
    report_stalls(name, &arrivals, started, &rss, add);
    e2e
}

/// (c): the receiver refuses connections while `events` are accepted (retry step 5 s), then
/// comes up on the same port.
pub async fn outage(base: &Baselines, events: usize, add: &mut impl FnMut(&str, String)) {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr: SocketAddr = port.local_addr().unwrap();
    drop(port); // Nothing listens: connections are refused.
                // 64 in flight to the webhook, as the bare client baseline has.
    let daemon = start_daemon_with(&[
        "--retry-schedule",
        "5s,5s,5s,5s,5s,5s,5s,5s,5s,5s,5s,5s",
        "--max-in-flight-per-webhook",
        "64",
    ]);
    create_webhooks(&daemon, addr, 1).await;
    let rss = RssWatch::start(&daemon);
    let (_, answered) = load(events, 64, ingest_maker(daemon.addr, 0), 202).await;
    drop(answered);
    // Every first attempt is refused meanwhile; wait until they are all logged.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let arrivals = Arc::new(Arrivals::default());
    start_receiver_on(addr, Arc::clone(&arrivals)).await;
    let up = Instant::now();
    let last = wait_for(&arrivals, events, Duration::from_secs(900)).await;
    let first = *arrivals.first_byte.lock().unwrap().values().min().unwrap();
    let drain = events as f64 / last.duration_since(first).as_secs_f64();
    let name =
        format!("(c) outage: {events} events accepted while the receiver refused connections, 64 in flight to it");
    add(
        &format!("{name}: receiver up → zero due (s)"),
        format!("{:.1}", last.duration_since(up).as_secs_f64()),
    );
    add(
        &format!("{name}: drain, first to last delivery (deliveries/s; ratio to bare client)"),
        format!("{drain:.0} ({:.2})", drain / base.client),
    );
    report_stalls(&name, &arrivals, first, &rss, add);
}

/// (d): `pending` deliveries due at restart.
pub async fn restart_backlog(base: &Baselines, pending: usize, add: &mut impl FnMut(&str, String)) {
    let arrivals = Arc::new(Arrivals::default());
    let receiver = start_receiver(Arc::clone(&arrivals)).await;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("backlog.redb");
    let load_db = db.clone();
    let loading = Instant::now();
    let size = tokio::task::spawn_blocking(move || {
        super::backlog::load(&load_db, receiver, pending, 0, receiver)
    })
    .await
    .unwrap();
    let name = format!("(d) restart with {pending} due to one webhook, 64 in flight to it");
    add(
        &format!("{name}: bulk-load time (s); db size (MiB)"),
        format!(
            "{:.0}; {:.0}",
            loading.elapsed().as_secs_f64(),
            size as f64 / 1048576.0
        ),
    );
    let started = Instant::now();
    let daemon = start_daemon_at(&db, &["--max-in-flight-per-webhook", "64"]);
    let ready = wait_ready(&daemon).await;
    let rss = RssWatch::start(&daemon);
    add(
        &format!("{name}: restart-to-ready, process start → /healthz 200 (ms)"),
        format!("{:.0}", ms(ready.duration_since(started))),
    );
    let last = wait_for(&arrivals, pending, Duration::from_secs(900)).await;
    let drain = pending as f64 / last.duration_since(ready).as_secs_f64();
    add(
        &format!("{name}: drain, ready to last delivery (deliveries/s; ratio to bare client)"),
        format!("{drain:.0} ({:.2})", drain / base.client),
    );
    report_stalls(&name, &arrivals, ready, &rss, add);
}

/// (g): `webhooks` webhooks with `each` deliveries due at restart (memory must not grow with
/// the number of webhooks with work).
pub async fn many_webhooks(
    base: &Baselines,
    webhooks: usize,
    each: usize,
    add: &mut impl FnMut(&str, String),
) {
    let arrivals = Arc::new(Arrivals::default());
    let receiver = start_receiver(Arc::clone(&arrivals)).await;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("many.redb");
    let load_db = db.clone();
    let loading = Instant::now();
    tokio::task::spawn_blocking(move || {
        super::backlog::load_many(&load_db, receiver, webhooks, each)
    })
    .await
    .unwrap();
    let name = format!("(g) restart with {webhooks} webhooks × {each} due, default settings");
    add(
        &format!("{name}: bulk-load time (s)"),
        format!("{:.0}", loading.elapsed().as_secs_f64()),
    );
    let started = Instant::now();
    let daemon = start_daemon_at(&db, &[]);
    let ready = wait_ready(&daemon).await;
    let rss = RssWatch::start(&daemon);
    add(
        &format!("{name}: restart-to-ready (ms)"),
        format!("{:.0}", ms(ready.duration_since(started))),
    );
    let total = webhooks * each;
    let last = wait_for(&arrivals, total, Duration::from_secs(900)).await;
    let drain = total as f64 / last.duration_since(ready).as_secs_f64();
    add(
        &format!("{name}: drain (deliveries/s; ratio to bare client)"),
        format!("{drain:.0} ({:.2})", drain / base.client),
    );
    report_stalls(&name, &arrivals, ready, &rss, add);
}

pub(super) async fn wait_ready(daemon: &Daemon) -> Instant {
    let client = build_client(Duration::from_secs(5));
    loop {
        let request = hyper::Request::get(format!("http://{}/healthz", daemon.addr))
            .body(http_body_util::Full::new(bytes::Bytes::new()))
            .unwrap();
        if client
            .request(request)
            .await
            .is_ok_and(|r| r.status() == 200)
        {
            return Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// (e): one webhook draining `backlog` due deliveries while 10 other webhooks (one per
/// organization) get fresh events at 100/s each for 10 s.
pub async fn fairness(backlog: usize, add: &mut impl FnMut(&str, String)) {
    let drained = Arc::new(Arrivals::default());
    let busy = start_receiver(Arc::clone(&drained)).await;
    let fresh = Arc::new(Arrivals::default());
    let fresh_receiver = start_receiver(Arc::clone(&fresh)).await;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("fairness.redb");
    let load_db = db.clone();
    tokio::task::spawn_blocking(move || {
        super::backlog::load(&load_db, busy, backlog, 10, fresh_receiver)
    })
    .await
    .unwrap();
    let daemon = start_daemon_at(&db, &[]);
    wait_ready(&daemon).await;
    let rss = RssWatch::start(&daemon);
    // Let the drain get going first.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = drained.count.load(Ordering::Relaxed);
    let client = build_client(Duration::from_secs(10));
    let answered = Arc::new(Mutex::new(HashMap::new()));
    let started = Instant::now();
    let mut tasks = Vec::new();
    // 1,000 events/s in all, round-robin over the 10 organizations, for 10 s.
    for i in 0..10_000usize {
        tokio::time::sleep_until((started + Duration::from_millis(i as u64)).into()).await;
        let (client, answered) = (client.clone(), Arc::clone(&answered));
        let url = format!("http://{}/api/events", daemon.addr);
        tasks.push(tokio::spawn(async move {
            let id = format!("evt_fresh_{i}");
            let body = event_body_for(&format!("org_fresh_{}", i % 10), &id);
            let (status, at) = post(
                &client,
                &url,
                body,
                &[("authorization", format!("Bearer {TOKEN}"))],
            )
            .await;
            assert_eq!(status, 202);
            answered.lock().unwrap().insert(id, at);
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    wait_for(&fresh, 10_000, Duration::from_secs(120)).await;
    let during = drained.count.load(Ordering::Relaxed) - before;
    let answered = answered.lock().unwrap();
    let first = fresh.first_byte.lock().unwrap();
    let mut lat: Vec<Duration> = answered
        .iter()
        .filter_map(|(id, ok)| first.get(id).map(|at| at.saturating_duration_since(*ok)))
        .collect();
    lat.sort();
    let name =
        format!("(e) fairness: {backlog} due to one webhook, 10 webhooks × 100 events/s fresh");
    add(
        &format!("{name}: fresh 202 → delivery p50 / p99 / max (ms)"),
        format!(
            "{:.1} / {:.1} / {:.1}",
            ms(percentile(&lat, 0.5)),
            ms(percentile(&lat, 0.99)),
            ms(lat.last().copied().unwrap_or_default())
        ),
    );
    add(
        &format!("{name}: backlog delivered meanwhile (deliveries/s); left; peak RSS (MiB)"),
        format!(
            "{:.0}; {}; {:.1}",
            during as f64 / started.elapsed().as_secs_f64(),
            backlog.saturating_sub(drained.count.load(Ordering::Relaxed)),
            rss.peak_mib()
        ),
    );
}

/// (f): paced ingest at 1k events/s and at half of `max_rate`, 10 s each, one webhook.
pub async fn steady(max_rate: f64, add: &mut impl FnMut(&str, String)) {
    let arrivals = Arc::new(Arrivals::default());
    let receiver = start_receiver(Arc::clone(&arrivals)).await;
    let daemon = start_daemon_with(&[]);
    create_webhooks(&daemon, receiver, 1).await;
    let rss = RssWatch::start(&daemon);
    let half = (max_rate / 2.0).round();
    let mut offset = 0;
    for rate in [1_000.0, half] {
        let count = (rate as usize) * 10;
        let answered = super::paced_ingest(&daemon, rate, count, offset).await;
        offset += count;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let first = arrivals.first_byte.lock().unwrap();
        let mut lat: Vec<Duration> = answered
            .iter()
            .filter_map(|(id, ok)| first.get(id).map(|at| at.saturating_duration_since(*ok)))
            .collect();
        lat.sort();
        add(
            &format!(
                "(f) steady {rate:.0} events/s for 10 s: 202 → delivery p50 / p99 / p999 (ms)"
            ),
            format!(
                "{:.2} / {:.2} / {:.2} ({} of {count})",
                ms(percentile(&lat, 0.5)),
                ms(percentile(&lat, 0.99)),
                ms(percentile(&lat, 0.999)),
                lat.len()
            ),
        );
    }
    add("(f) peak RSS (MiB)", format!("{:.1}", rss.peak_mib()));
}

/// Durable ingest rates by clients and webhooks (the issue-3 rows), with the 0-webhook goal.
pub async fn ingest_rows(base: &Baselines, add: &mut impl FnMut(&str, String)) {
    let arrivals = Arc::new(Arrivals::default());
    let receiver = start_receiver(Arc::clone(&arrivals)).await;
    for webhooks in [0usize, 1, 10] {
        let daemon = start_daemon_with(&[]);
        create_webhooks(&daemon, receiver, webhooks).await;
        let rss = RssWatch::start(&daemon);
        let answered = load_for(
            Duration::from_secs(10),
            64,
            ingest_maker(daemon.addr, 0),
            202,
        )
        .await;
        let rate = answered.len() as f64 / 10.0;
        add(
            &format!("ingest: 64 clients 10 s, {webhooks} webhook(s) (events/s; ratio to bare server; peak RSS MiB)"),
            format!("{rate:.0}; {:.2}; {:.1}", rate / base.server, rss.peak_mib()),
        );
        drop(daemon);
    }
}

//! Section `recovery` (issue 15): a recovery job re-sends `n` failed deliveries of one
//! webhook while 10 other webhooks get fresh events at 100/s; prints the fresh deliveries'
//! latency (ingest 202 → first byte at the receiver) before the job and during it, and the
//! job's sustained rate (its creation to its last delivery).
//!
//! The failed deliveries are made for real: bulk-loaded due at once (`backlog::load`) to a
//! port where nothing listens, with one attempt per delivery (`--retry-schedule ""`), so each
//! fails on a refused connection; then a receiver opens on that port and the job starts.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use palo_webhooks::delivery::{build_client, HttpsClient};

use super::engine::{ms, wait_ready, RssWatch};
use super::{
    event_body_for, percentile, post, start_daemon_at, start_receiver, start_receiver_on, wait_for,
    Arrivals, Daemon, TOKEN,
};

/// One API call as the admin; the answer's JSON (`Null` when it is not JSON).
pub(super) async fn call(
    client: &HttpsClient,
    daemon: &Daemon,
    method: &str,
    path: &str,
    body: Option<String>,
) -> serde_json::Value {
    let request = Request::builder()
        .method(method)
        .uri(format!("http://{}{path}", daemon.addr))
        .header("authorization", format!("Bearer {TOKEN}"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.unwrap_or_default())))
        .unwrap();
    let response = client.request(request).await.expect("request");
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null)
}

/// Fresh events at 100/s for `seconds`, round-robin over the 10 `org_fresh_<k>`; returns
/// when each was answered 202, by event id.
async fn fresh_load(daemon: &Daemon, seconds: u64, tag: &str) -> HashMap<String, Instant> {
    let client = build_client(Duration::from_secs(10));
    let answered = Arc::new(Mutex::new(HashMap::new()));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..(seconds as usize * 100) {
        tokio::time::sleep_until((started + Duration::from_millis(i as u64 * 10)).into()).await;
        let (client, answered) = (client.clone(), Arc::clone(&answered));
        let url = format!("http://{}/api/events", daemon.addr);
        let id = format!("evt_{tag}_{i}");
        tasks.push(tokio::spawn(async move {
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
    let answered = std::mem::take(&mut *answered.lock().unwrap());
    answered
}

fn latencies(answered: &HashMap<String, Instant>, arrivals: &Arrivals) -> Vec<Duration> {
    let first = arrivals.first_byte.lock().unwrap();
    let mut lat: Vec<Duration> = answered
        .iter()
        .filter_map(|(id, ok)| first.get(id).map(|at| at.saturating_duration_since(*ok)))
        .collect();
    lat.sort();
    lat
}

pub async fn run(n: usize, add: &mut impl FnMut(&str, String)) {
    // A port where nothing listens yet.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let fresh = Arc::new(Arrivals::default());
    let fresh_receiver = start_receiver(Arc::clone(&fresh)).await;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("recovery.redb");
    let load_db = db.clone();
    tokio::task::spawn_blocking(move || {
        super::backlog::load(&load_db, port, n, 10, fresh_receiver)
    })
    .await
    .unwrap();
    let daemon = start_daemon_at(&db, &["--retry-schedule", ""]);
    wait_ready(&daemon).await;
    let client = build_client(Duration::from_secs(30));
    let failing = Instant::now();
    loop {
        let status = call(&client, &daemon, "GET", "/api/admin/status", None).await;
        if status["deliveries"]["failed"].as_u64() == Some(n as u64) {
            break;
        }
        assert!(
            failing.elapsed() < Duration::from_secs(600),
            "the deliveries did not fail: {status}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let name = format!("recovery: {n} failed deliveries of one webhook re-sent by a job");
    add(
        &format!("{name}: first failing ({n} refused attempts, s)"),
        format!("{:.1}", failing.elapsed().as_secs_f64()),
    );
    let recovered = Arc::new(Arrivals::default());
    start_receiver_on(port, Arc::clone(&recovered)).await;
    let rss = RssWatch::start(&daemon);

    // Baseline in the same run: the fresh load with no job running.
    let before = fresh_load(&daemon, 5, "before").await;
    wait_for(&fresh, before.len(), Duration::from_secs(60)).await;
    let base = latencies(&before, &fresh);

    let webhooks = call(
        &client,
        &daemon,
        "GET",
        "/api/webhooks?organization_id=org_backlog",
        None,
    )
    .await;
    let webhook = webhooks["data"][0]["id"].as_str().unwrap().to_owned();
    let since = palo_webhooks::clock::format_ms(palo_webhooks::clock::now_ms() - 3_600_000);
    let created = Instant::now();
    let job = call(
        &client,
        &daemon,
        "POST",
        &format!("/api/webhooks/{webhook}/recover"),
        Some(format!(r#"{{"since":"{since}"}}"#)),
    )
    .await;
    let job_id = job["id"].as_str().expect("a job").to_owned();
    // Fresh load during the job, in 5-second rounds until it is done.
    let mut during = HashMap::new();
    let mut round = 0;
    let finished = loop {
        let got = fresh_load(&daemon, 5, &format!("during{round}")).await;
        during.extend(got);
        round += 1;
        let state = call(
            &client,
            &daemon,
            "GET",
            &format!("/api/jobs/{job_id}"),
            None,
        )
        .await;
        if state["state"] == "finished" {
            break state;
        }
        assert!(
            created.elapsed() < Duration::from_secs(1_800),
            "job stuck: {state}"
        );
    };
    let last = recovered
        .first_byte
        .lock()
        .unwrap()
        .values()
        .max()
        .copied()
        .unwrap_or_else(Instant::now);
    wait_for(&fresh, before.len() + during.len(), Duration::from_secs(60)).await;
    let lat = latencies(&during, &fresh);
    let seconds = last.saturating_duration_since(created).as_secs_f64();
    add(
        &format!("{name}: job rate, creation → last delivery (deliveries/s); matched / succeeded"),
        format!(
            "{:.0}; {} / {}",
            n as f64 / seconds,
            finished["matched"],
            finished["succeeded"]
        ),
    );
    add(
        &format!("{name}: re-sent deliveries (distinct / requests)"),
        format!(
            "{} / {}",
            recovered.first_byte.lock().unwrap().len(),
            recovered.count.load(Ordering::Relaxed)
        ),
    );
    add(
        "recovery: 10 other webhooks × 10 events/s, 202 → delivery p50 / p99 / max (ms), no job (baseline)",
        format!(
            "{:.1} / {:.1} / {:.1}",
            ms(percentile(&base, 0.5)),
            ms(percentile(&base, 0.99)),
            ms(base.last().copied().unwrap_or_default())
        ),
    );
    add(
        "recovery: the same during the job (goal: p99 < 100 ms)",
        format!(
            "{:.1} / {:.1} / {:.1}; peak RSS {:.1} MiB",
            ms(percentile(&lat, 0.5)),
            ms(percentile(&lat, 0.99)),
            ms(lat.last().copied().unwrap_or_default()),
            rss.peak_mib()
        ),
    );
}

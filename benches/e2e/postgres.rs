//! Rows of issue 14: the burst of section (a) with the store on PostgreSQL, one daemon and
//! three daemons sharing one database, next to the same burst on redb, in the same run. The
//! PostgreSQL server is a throwaway cluster on 127.0.0.1 (Debian's binaries, durable
//! defaults: `fsync` and `synchronous_commit` on), sharing the machine's cores with the
//! daemons and the load generator: on two cores the three-daemon row shows the overhead and
//! that the work is shared, not scale.

#[allow(dead_code)]
#[path = "../../tests/it/support/postgres_cluster.rs"]
mod postgres_cluster;

use super::engine::{burst_on, Baselines};
use super::{start_daemon_on_postgres, start_daemon_with, Daemon};

/// Runs the rows: redb, PostgreSQL × 1 daemon, PostgreSQL × 3 daemons (3 webhooks, so each
/// daemon serves about one), each a 64-client burst for `seconds`.
pub async fn rows(base: &Baselines, seconds: u64, add: &mut impl FnMut(&str, String)) {
    for webhooks in [1, 3] {
        let name = format!("(pg) burst {seconds} s, {webhooks} webhook(s): redb, 1 daemon");
        let redb = burst_on(
            base,
            &[start_daemon_with(&[])],
            webhooks,
            seconds,
            &name,
            add,
        )
        .await;
        let dir = tempfile::tempdir().unwrap();
        let url = postgres_cluster::pg_database();
        let one = [start_daemon_on_postgres(dir.path(), &url, &[])];
        let name = format!("(pg) burst {seconds} s, {webhooks} webhook(s): PostgreSQL, 1 daemon");
        let pg1 = burst_on(base, &one, webhooks, seconds, &name, add).await;
        drop(one);
        add(
            &format!("(pg) {webhooks} webhook(s): PostgreSQL 1 daemon e2e / redb e2e (goal ≥ 0.3)"),
            format!("{:.2}", pg1 / redb),
        );
        if webhooks == 3 {
            let dirs: Vec<tempfile::TempDir> =
                (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
            let url = postgres_cluster::pg_database();
            let three: Vec<Daemon> = dirs
                .iter()
                .map(|d| start_daemon_on_postgres(d.path(), &url, &[]))
                .collect();
            let name =
                format!("(pg) burst {seconds} s, {webhooks} webhook(s): PostgreSQL, 3 daemons");
            let pg3 = burst_on(base, &three, webhooks, seconds, &name, add).await;
            add(
                &format!("(pg) {webhooks} webhooks: PostgreSQL 3 daemons e2e / redb e2e"),
                format!("{:.2}", pg3 / redb),
            );
        }
    }
}

//! Which webhooks this daemon serves when several daemons share a PostgreSQL store
//! (issue 14, item 3; docs/ARCHITECTURE.md, Cluster).
//!
//! Design: one daemon at a time serves a webhook, through a lease in the database
//! (`webhook_leases`, renewed every [`TICK`] for [`Cluster::lease_ttl`]). The daemon that
//! should serve a webhook is the live daemon with the highest hash of (webhook, daemon)
//! (rendezvous hashing): every daemon computes the same answer from the same list, webhooks
//! spread evenly, and a daemon joining or leaving moves only its share. A daemon takes a
//! lease only when it is free, expired or its own; it gives one up (for rebalancing) only
//! once its attempts to that webhook have ended. So a delivery is attempted by one daemon at
//! a time, per-webhook limits and fairness hold cluster-wide (they are one daemon's), and
//! ordering per webhook can be built on it.
//!
//! Safety when the database is out of reach: a daemon starts attempts only until its last
//! successful renewal + TTL − attempt timeout − 1 s (the *lease deadline*, on the monotonic
//! clock), so an attempt it started ends before another daemon can take the lease. A daemon
//! that dies (kill -9, lost network) has its leases taken over once they expire: within
//! TTL + one tick of its last renewal ([`Cluster::takeover_bound`]).
//!
//! Changes other daemons commit reach this one through the store's notifications; every
//! [`RESYNC_TICKS`] ticks the daemon also re-reads the due heads of the webhooks it serves,
//! which covers notifications missed while the listener reconnected.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use super::{lock, Scheduler};
use crate::ids::WebhookId;
use crate::store::postgres::PgStore;
use crate::store::{blocking, Store, StoreError};

/// How often a daemon renews its leases and rebalances (1 s).
pub const TICK: Duration = Duration::from_secs(1);

/// Ticks between two re-reads of the served webhooks' due heads (10 s).
const RESYNC_TICKS: u64 = 10;

/// Runs `f` on the PostgreSQL store on the blocking pool; `Ok(None)` on the file backend,
/// which has no cluster.
async fn on_postgres<T: Send + 'static>(
    store: &Arc<Store>,
    f: impl FnOnce(&PgStore) -> Result<T, StoreError> + Send + 'static,
) -> Result<Option<T>, StoreError> {
    blocking(store, move |s| s.as_postgres().map(f).transpose()).await
}

/// A daemon's place in the cluster.
#[derive(Debug, Clone)]
pub struct Cluster {
    /// This daemon's id (`dmn_<ULID>`, new at every start).
    pub node: String,
    /// The API address it listens on, shown to operators.
    pub address: String,
    /// The attempt timeout: no attempt outlives the lease it started under.
    pub attempt_timeout: Duration,
}

impl Cluster {
    /// How long a lease lasts without renewal: 14 s, or the attempt timeout + 4 s when that
    /// is longer, so the lease deadline is at least 3 s after each renewal.
    pub fn lease_ttl(&self) -> Duration {
        (self.attempt_timeout + Duration::from_secs(4)).max(Duration::from_secs(14))
    }

    /// The longest a dead daemon's webhooks wait for another daemon: a lease's TTL and one
    /// tick (15 s with the default 10 s attempt timeout).
    pub fn takeover_bound(&self) -> Duration {
        self.lease_ttl() + TICK
    }

    /// How long after a renewal was sent this daemon may still start attempts.
    fn deadline_after_renewal(&self) -> Duration {
        self.lease_ttl()
            .saturating_sub(self.attempt_timeout + Duration::from_secs(1))
    }
}

/// The live daemon that should serve `webhook`: the highest SHA-256 of (webhook, daemon).
pub fn preferred_owner(webhook: WebhookId, daemons: &[String]) -> Option<&str> {
    daemons
        .iter()
        .max_by_key(|daemon| {
            let digest = Sha256::new()
                .chain_update(webhook.0.to_be_bytes())
                .chain_update(daemon.as_bytes())
                .finalize();
            let mut first = [0u8; 8];
            first.copy_from_slice(&digest[..8]);
            (u64::from_be_bytes(first), daemon.as_str())
        })
        .map(String::as_str)
}

/// What this daemon serves, as the coordinator sees it (for status).
#[derive(Debug, Clone, Default)]
pub struct ClusterStatus {
    /// This daemon's id.
    pub node: String,
    /// Live daemons (id, API address).
    pub daemons: Vec<(String, String)>,
    /// Webhooks this daemon serves now.
    pub serving: Vec<WebhookId>,
}

impl Scheduler {
    /// Makes this scheduler serve only the webhooks it holds leases of, and runs the
    /// coordinator (renewal, claims, releases, resyncs) until shutdown. Call once, before
    /// `run`; after the drain, call [`Scheduler::leave_cluster`].
    pub fn join_cluster(&self, store: Arc<Store>, cluster: Cluster) {
        let inner = &self.inner;
        *inner.owned.write().unwrap_or_else(|e| e.into_inner()) = Some(HashSet::new());
        inner.lease_deadline_ms.store(0, Ordering::Relaxed);
        let me = self.clone();
        tokio::spawn(async move { me.coordinate(store, cluster).await });
    }

    /// The cluster as last seen, when this daemon is in one.
    pub fn cluster_status(&self) -> Option<ClusterStatus> {
        lock(&self.inner.cluster).clone()
    }

    async fn coordinate(self, store: Arc<Store>, cluster: Cluster) {
        let mut cluster = cluster;
        // This run's token: another token under our node id means a second process uses it.
        let instance = ulid::Ulid::generate().to_string();
        self.join(&store, &cluster, &instance).await;
        tracing::info!(node = %cluster.node, lease_ttl_s = cluster.lease_ttl().as_secs(), "serving webhooks as one daemon of a cluster");
        let mut ticks = 0u64;
        let mut releasing: HashSet<WebhookId> = HashSet::new();
        let mut last_renewal: Option<Instant> = None;
        loop {
            if ticks > 0 {
                tokio::select! {
                    () = tokio::time::sleep(TICK) => {}
                    () = self.inner.shutdown.cancelled() => break,
                }
            }
            ticks += 1;
            let sent = Instant::now();
            let (node, ttl, token) = (cluster.node.clone(), cluster.lease_ttl(), instance.clone());
            let view = on_postgres(&store, move |pg| pg.cluster_tick(&node, &token, ttl)).await;
            let view = match view {
                Ok(Some(view)) => view,
                Ok(None) => return,
                Err(e) => {
                    // The lease deadline stops new attempts in time; what this daemon holds
                    // is given up here too, to be claimed again once the database answers.
                    let lost = last_renewal
                        .is_none_or(|at| at.elapsed() >= cluster.deadline_after_renewal());
                    if lost {
                        let all = self.served();
                        if !all.is_empty() {
                            tracing::warn!(error = %e, webhooks = all.len(), "cannot renew the leases: no longer serving these webhooks");
                            self.lose(&store, &all);
                        }
                    }
                    continue;
                }
            };
            if view
                .previous_instance
                .as_ref()
                .is_some_and(|p| !p.is_empty() && *p != instance)
            {
                // Two processes under one node id (a copied state directory or image) would
                // both serve its webhooks: stop serving and take a new id for this run.
                let fresh = format!("dmn_{}", ulid::Ulid::generate());
                tracing::warn!(node = %cluster.node, new_node = %fresh, "another process uses this daemon's node id (a copied state directory?); taking a new id for this run");
                let all = self.served();
                self.lose(&store, &all);
                releasing.clear();
                last_renewal = None;
                self.inner.lease_deadline_ms.store(0, Ordering::Relaxed);
                cluster.node = fresh;
                self.join(&store, &cluster, &instance).await;
                continue;
            }
            last_renewal = Some(sent);
            let deadline = self.inner.monotonic_ms()
                + u64::try_from(cluster.deadline_after_renewal().as_millis()).unwrap_or(0)
                - u64::try_from(sent.elapsed().as_millis()).unwrap_or(0);
            self.inner
                .lease_deadline_ms
                .store(deadline, Ordering::Relaxed);
            let daemons: Vec<String> = view.daemons.iter().map(|(id, _)| id.clone()).collect();
            let renewed: HashSet<WebhookId> = view.renewed.iter().copied().collect();
            let served: HashSet<WebhookId> = self.served().into_iter().collect();
            // Expired under us (the database was slow to answer): stop serving them now.
            let expired: Vec<WebhookId> = served.difference(&renewed).copied().collect();
            if !expired.is_empty() {
                self.lose(&store, &expired);
            }
            let leases: HashMap<WebhookId, (&str, bool)> = view
                .leases
                .iter()
                .map(|(w, owner, valid)| (*w, (owner.as_str(), *valid)))
                .collect();
            let mut claims = Vec::new();
            let mut gains = Vec::new();
            for webhook in &view.webhooks {
                let preferred = preferred_owner(*webhook, &daemons) == Some(cluster.node.as_str());
                let held = renewed.contains(webhook);
                if held && !preferred {
                    // Rebalance: stop starting attempts; release once the last one ends.
                    if releasing.insert(*webhook) {
                        self.lose(&store, &[*webhook]);
                    }
                } else if held && !served.contains(webhook) && !releasing.contains(webhook) {
                    // Ours already (a restart after a crash keeps its node id).
                    gains.push(*webhook);
                } else if preferred && !held {
                    let free = leases
                        .get(webhook)
                        .is_none_or(|(owner, valid)| !valid || *owner == cluster.node);
                    if free {
                        claims.push(*webhook);
                    }
                }
            }
            self.gain(&store, &gains).await;
            let done: Vec<WebhookId> = releasing
                .iter()
                .copied()
                .filter(|w| lock(&self.inner.queues).in_flight_of(*w) == 0)
                .collect();
            if !done.is_empty() {
                let (node, done2) = (cluster.node.clone(), done.clone());
                let released =
                    on_postgres(&store, move |pg| pg.cluster_release(&node, &done2)).await;
                if released.is_ok() {
                    for w in &done {
                        releasing.remove(w);
                    }
                }
            }
            releasing.retain(|w| view.webhooks.contains(w));
            if !claims.is_empty() {
                let (node, ttl) = (cluster.node.clone(), cluster.lease_ttl());
                let claimed =
                    on_postgres(&store, move |pg| pg.cluster_claim(&node, &claims, ttl)).await;
                if let Ok(claimed) = claimed {
                    let claimed: Vec<WebhookId> = claimed
                        .into_iter()
                        .flatten()
                        .filter(|w| !releasing.contains(w))
                        .collect();
                    self.gain(&store, &claimed).await;
                }
            }
            if ticks.is_multiple_of(RESYNC_TICKS) {
                let all = self.served();
                self.seed_heads(&store, &all).await;
            }
            *lock(&self.inner.cluster) = Some(ClusterStatus {
                node: cluster.node.clone(),
                daemons: view.daemons.clone(),
                serving: {
                    let mut v = self.served();
                    v.sort_unstable();
                    v
                },
            });
        }
        // Leases are given up by the server once the attempts in flight have ended
        // (`leave_cluster`), not here: another daemon must not start one meanwhile.
    }

    /// Leaves the cluster after shutdown drained the attempts in flight: every lease of this
    /// daemon is given up and its registration removed, so the others take over at once
    /// instead of after the leases expire.
    pub async fn leave_cluster(&self, store: &Arc<Store>, node: &str) {
        let node = node.to_owned();
        let left = on_postgres(store, move |pg| pg.cluster_leave(&node)).await;
        match left {
            Ok(_) => tracing::info!("left the cluster: the other daemons take over at once"),
            Err(e) => tracing::warn!(error = %e, "could not leave the cluster; the leases expire"),
        }
    }

    /// Registers this daemon (and starts listening to the others' changes).
    async fn join(&self, store: &Arc<Store>, cluster: &Cluster, instance: &str) {
        let (node, address, token) = (
            cluster.node.clone(),
            cluster.address.clone(),
            instance.to_owned(),
        );
        let joined = on_postgres(store, move |pg| pg.cluster_join(&node, &token, &address)).await;
        if let Err(e) = joined {
            tracing::error!(error = %e, "could not join the cluster; retrying at every tick");
        }
    }

    /// The webhooks this daemon serves now.
    fn served(&self) -> Vec<WebhookId> {
        self.inner
            .owned
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map(|set| set.iter().copied().collect())
            .unwrap_or_default()
    }

    /// Starts serving `webhooks`: their changes apply from now on, then their due heads are
    /// read and seeded (a change that came between is kept: the queues deduplicate).
    async fn gain(&self, store: &Arc<Store>, webhooks: &[WebhookId]) {
        if webhooks.is_empty() {
            return;
        }
        {
            let mut owned = self.inner.owned.write().unwrap_or_else(|e| e.into_inner());
            if let Some(set) = owned.as_mut() {
                set.extend(webhooks.iter().copied());
            }
        }
        if let Some(pg) = store.as_postgres() {
            pg.set_serving(webhooks, true);
        }
        tracing::info!(webhooks = webhooks.len(), "now serving webhooks");
        self.seed_heads(store, webhooks).await;
    }

    /// Reads the due heads of `webhooks` and seeds the queues with them: every entry at or
    /// after a head is then read from the store as the window needs it.
    async fn seed_heads(&self, store: &Arc<Store>, webhooks: &[WebhookId]) {
        if webhooks.is_empty() {
            return;
        }
        let ids = webhooks.to_vec();
        let heads = on_postgres(store, move |pg| pg.due_heads_of(&ids)).await;
        match heads {
            Ok(heads) => {
                let owned = self.inner.owned.read().unwrap_or_else(|e| e.into_inner());
                let mut queues = lock(&self.inner.queues);
                for (webhook, due, id) in heads.into_iter().flatten() {
                    if owned.as_ref().is_none_or(|set| set.contains(&webhook)) {
                        queues.seed(webhook, (due, id));
                    }
                }
                drop(queues);
                drop(owned);
                self.inner.wake.notify_one();
            }
            Err(e) => {
                tracing::warn!(error = %e, "could not read the due heads of served webhooks; next resync retries")
            }
        }
    }

    /// Stops serving `webhooks`: their queues are dropped; attempts in flight finish.
    fn lose(&self, store: &Arc<Store>, webhooks: &[WebhookId]) {
        if let Some(pg) = store.as_postgres() {
            pg.set_serving(webhooks, false);
        }
        {
            let mut owned = self.inner.owned.write().unwrap_or_else(|e| e.into_inner());
            if let Some(set) = owned.as_mut() {
                for w in webhooks {
                    set.remove(w);
                }
            }
        }
        let mut queues = lock(&self.inner.queues);
        for w in webhooks {
            queues.forget(*w);
        }
    }
}

impl super::Inner {
    /// Whether an attempt to `webhook` may start now: `None` when this daemon of a cluster
    /// does not serve it, `Some(false)` past the lease deadline, else `Some(true)` (always
    /// alone).
    pub(super) fn may_start(&self, webhook: WebhookId) -> Option<bool> {
        let serves = self
            .owned
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .is_none_or(|set| set.contains(&webhook));
        serves.then(|| self.monotonic_ms() <= self.lease_deadline_ms.load(Ordering::Relaxed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_daemon_agrees_on_the_owner_and_the_work_spreads() {
        let daemons: Vec<String> = (0..3).map(|i| format!("dmn_{i}")).collect();
        let mut counts = HashMap::new();
        for i in 0..3000u128 {
            let owner = preferred_owner(WebhookId(i), &daemons).unwrap();
            let mut reversed = daemons.clone();
            reversed.reverse();
            assert_eq!(preferred_owner(WebhookId(i), &reversed), Some(owner));
            *counts.entry(owner.to_owned()).or_insert(0) += 1;
        }
        for daemon in &daemons {
            let n = counts[daemon];
            assert!((800..=1200).contains(&n), "{daemon} serves {n} of 3000");
        }
        // One daemon leaving moves only its own webhooks.
        let two = &daemons[..2];
        for i in 0..3000u128 {
            let before = preferred_owner(WebhookId(i), &daemons).unwrap();
            if before != daemons[2] {
                assert_eq!(preferred_owner(WebhookId(i), two), Some(before));
            }
        }
    }

    #[test]
    fn no_attempt_outlives_the_lease_it_started_under() {
        for timeout in [1u64, 10, 30] {
            let cluster = Cluster {
                node: "dmn_x".into(),
                address: String::new(),
                attempt_timeout: Duration::from_secs(timeout),
            };
            let last_start = cluster.deadline_after_renewal();
            assert!(last_start >= Duration::from_secs(3));
            assert!(last_start + cluster.attempt_timeout < cluster.lease_ttl());
        }
    }
}

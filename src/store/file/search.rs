//! The delivery search on the file backend (issue 15, item 6): the `delivery_search` index,
//! its upkeep, the query over it and its check.
//!
//! Owner's rule: one table, `delivery_search`, keyed `(organization, facet, created ms,
//! delivery id) → ()`. Each delivery has one entry per *facet* it shows: `*` (every
//! delivery), `s:<status>`, `t:<event type>`, `w:<webhook id>`, `o:<outcome>` once it has
//! an attempt, and one per pair of filters that are often disjoint by construction
//! (`ws:`, `wo:`, `wt:`, `so:`; [`PAIRS`]), so those pairs are one range, not an
//! intersection that finds nothing slowly ([`facets`]). Within one (organization, facet), entries are in the
//! search's order (creation time, then id), so a filter is a key range read backwards, and
//! several filters are the intersection of their ranges: a zig-zag over them, where each
//! range seeks to the greatest key at or below the others' current one. The work follows
//! the matching rows and the points where the ranges part, never the rows in between; the
//! result is exactly the matching rows, newest first.
//!
//! Every write that creates, changes or deletes a delivery calls [`reindex`] with the
//! delivery before and after, in the same transaction (`store_new_event`, `record_attempt`,
//! `delete_webhook`, retention, the first build at open). Only `status` and `last_outcome`
//! of a stored delivery ever change; `postpone`, `resume_held` and `clamp_far_due` move due
//! times only, so they leave the index alone.
//!
//! Architecture invariant (checked by [`check`]): the entries of `delivery_search` are
//! exactly the facets of the deliveries stored, at their organization and creation time.

use redb::{ReadTransaction, ReadableTable, ReadableTableMetadata, TableDefinition};

use super::check::CheckReport;
use super::deliveries::{load_delivery, load_event};
use super::records::{decode, encode, AttemptRecord, DeliveryRecord};
use super::writer::Txn;
use super::{FileStore, StoreError, ATTEMPTS, DELIVERIES, EVENTS, EVENT_IDS};
use crate::ids::{DeliveryId, EventKey};
use crate::model::{AttemptOutcome, Delivery};
use crate::store::search::{cursor_key, filter_sorted, DeliverySearch};

/// `(organization, facet, created ms since the epoch, delivery id) → ()`: see the module
/// docs.
pub(crate) const DELIVERY_SEARCH: TableDefinition<(&str, &str, u64, u128), ()> =
    TableDefinition::new("delivery_search");

/// The facet of every delivery: an organization's whole log in the search's order.
const EVERY: &str = "*";

/// The pairs of filters that also have a facet of their own: those whose rows are often
/// disjoint by construction (a webhook's subscriptions and health, a status and the outcome
/// that led to it), where intersecting the two single facets would walk every row of the
/// smaller one to find none.
const PAIRS: [(char, char); 4] = [('w', 's'), ('w', 'o'), ('w', 't'), ('s', 'o')];

/// A delivery's value on each filter it has one for: `w`ebhook, `s`tatus, event `t`ype,
/// `o`utcome (once attempted).
fn values_of(d: &Delivery) -> Vec<(char, String)> {
    let mut values = vec![
        ('w', d.webhook_id.to_string()),
        ('s', d.status.as_str().to_owned()),
        ('t', d.event_type.as_str().to_owned()),
    ];
    if let Some(outcome) = d.last_outcome {
        values.push(('o', outcome.as_str().to_owned()));
    }
    values
}

fn single(dimension: char, value: &str) -> String {
    format!("{dimension}:{value}")
}

fn pair((a, b): (char, char), value_a: &str, value_b: &str) -> String {
    format!("{a}{b}:{value_a}:{value_b}")
}

/// The facets a delivery shows, each an entry of `delivery_search`: `*`, one per value
/// (`s:failed`), one per pair of [`PAIRS`] (`so:failed:5xx`).
pub(super) fn facets(d: &Delivery) -> Vec<String> {
    let values = values_of(d);
    let value = |dimension: char| {
        values
            .iter()
            .find(|(k, _)| *k == dimension)
            .map(|(_, v)| v.as_str())
    };
    let mut out = vec![EVERY.to_owned()];
    out.extend(values.iter().map(|(k, v)| single(*k, v)));
    for (a, b) in PAIRS {
        if let (Some(va), Some(vb)) = (value(a), value(b)) {
            out.push(pair((a, b), va, vb));
        }
    }
    out
}

type SearchTable<'t> = redb::Table<'t, (&'static str, &'static str, u64, u128), ()>;

/// Brings `delivery_search` from the entries of `before` to those of `after` (`None`: the
/// delivery did not exist, or no longer does). Call it in the transaction that writes the
/// delivery.
///
/// # Errors
/// [`StoreError`] on a write failure (the caller's transaction then aborts).
pub(super) fn reindex(
    table: &mut SearchTable<'_>,
    before: Option<&Delivery>,
    after: Option<&Delivery>,
) -> Result<(), StoreError> {
    let entries = |d: Option<&Delivery>| -> Vec<(String, String, u64, u128)> {
        d.map(|d| {
            facets(d)
                .into_iter()
                .map(|f| (d.organization_id.clone(), f, d.created_at_ms, d.id.0))
                .collect()
        })
        .unwrap_or_default()
    };
    let (old, new) = (entries(before), entries(after));
    for (org, facet, created, id) in old.iter().filter(|e| !new.contains(e)) {
        table.remove((org.as_str(), facet.as_str(), *created, *id))?;
    }
    for (org, facet, created, id) in new.iter().filter(|e| !old.contains(e)) {
        table.insert((org.as_str(), facet.as_str(), *created, *id), ())?;
    }
    Ok(())
}

/// Builds `delivery_search` at the first open of a file written before it existed (it is
/// empty while deliveries exist), and fills in each delivery's last outcome from its attempt
/// log (records of the V1 layout have none). One transaction; logs what it did.
///
/// # Errors
/// [`StoreError`] on a read, decode or write failure (the open then fails, nothing written).
pub(super) fn build_delivery_search(txn: &Txn<'_>) -> Result<(), StoreError> {
    let mut search = txn.open_table(DELIVERY_SEARCH)?;
    let mut deliveries = txn.open_table(DELIVERIES)?;
    if !search.is_empty()? || deliveries.is_empty()? {
        return Ok(());
    }
    let attempts = txn.open_table(ATTEMPTS)?;
    let mut filled = Vec::new();
    let mut built = 0u64;
    for row in deliveries.iter()? {
        let (id, bytes) = row?;
        let id = DeliveryId(id.value());
        let mut delivery =
            decode::<DeliveryRecord>("deliveries", bytes.value())?.into_domain(id)?;
        if delivery.last_outcome.is_none() && delivery.attempt_count > 0 {
            if let Some(bytes) = attempts.get((id.0, delivery.attempt_count))? {
                let attempt = decode::<AttemptRecord>("attempts", bytes.value())?
                    .into_domain(delivery.attempt_count)?;
                delivery.last_outcome = Some(attempt.outcome());
                filled.push(delivery.clone());
            }
        }
        reindex(&mut search, None, Some(&delivery))?;
        built += 1;
    }
    for delivery in &filled {
        deliveries.insert(
            delivery.id.0,
            encode(&DeliveryRecord::from_domain(delivery)).as_slice(),
        )?;
    }
    tracing::info!(
        deliveries = built,
        outcomes_filled = filled.len(),
        "built the delivery search index"
    );
    Ok(())
}

/// The facet groups of a search: each group is the facets of one filter or pair of filters
/// (a delivery matches it when it shows one of them); a delivery matches when it is in every
/// group. Two filters of a pair of [`PAIRS`] are one group of pair facets.
fn groups(search: &DeliverySearch) -> Vec<Vec<String>> {
    let mut wanted: Vec<(char, Vec<String>)> = Vec::new();
    if let Some(w) = search.webhook_id {
        wanted.push(('w', vec![w.to_string()]));
    }
    if !search.statuses.is_empty() {
        let names = search.statuses.iter().map(|s| s.as_str().to_owned());
        wanted.push(('s', names.collect()));
    }
    if let Some(t) = search.event_type {
        wanted.push(('t', vec![t.as_str().to_owned()]));
    }
    if !search.outcomes.is_empty() {
        let names = search.outcomes.iter().map(|o| o.as_str().to_owned());
        wanted.push(('o', names.collect()));
    }
    let values = |dimension: char| wanted.iter().find(|(k, _)| *k == dimension).map(|(_, v)| v);
    let mut groups: Vec<Vec<String>> = Vec::new();
    let mut covered = Vec::new();
    for (a, b) in PAIRS {
        if let (Some(va), Some(vb)) = (values(a), values(b)) {
            groups.push(
                va.iter()
                    .flat_map(|x| vb.iter().map(move |y| pair((a, b), x, y)))
                    .collect(),
            );
            covered.extend([a, b]);
        }
    }
    for (dimension, vs) in &wanted {
        if !covered.contains(dimension) {
            groups.push(vs.iter().map(|v| single(*dimension, v)).collect());
        }
    }
    if groups.is_empty() {
        groups.push(vec![EVERY.to_owned()]);
    }
    for group in &mut groups {
        group.sort();
        group.dedup();
    }
    groups
}

/// The key just below `key` in the search's order, or `None` at the very start.
fn predecessor((created, id): (u64, u128)) -> Option<(u64, u128)> {
    match (created, id) {
        (_, 1..) => Some((created, id - 1)),
        (1.., 0) => Some((created - 1, u128::MAX)),
        (0, 0) => None,
    }
}

/// One read of the index for a search.
struct Ranges<'a, T> {
    table: &'a T,
    org: &'a str,
    low: u64,
}

impl<T> Ranges<'_, T>
where
    T: ReadableTable<(&'static str, &'static str, u64, u128), ()>,
{
    /// The greatest `(created, id)` of `facet` at or below `bound` and not before the
    /// search's start, if any: one seek.
    fn last_at_or_below(
        &self,
        facet: &str,
        bound: (u64, u128),
    ) -> Result<Option<(u64, u128)>, StoreError> {
        if bound.0 < self.low {
            return Ok(None);
        }
        let mut range = self
            .table
            .range((self.org, facet, self.low, 0)..=(self.org, facet, bound.0, bound.1))?;
        Ok(match range.next_back() {
            Some(row) => {
                let (_, _, created, id) = row?.0.value();
                Some((created, id))
            }
            None => None,
        })
    }

    /// The greatest key at or below `bound` that shows one of `group`'s facets.
    fn group_at_or_below(
        &self,
        group: &[String],
        bound: (u64, u128),
    ) -> Result<Option<(u64, u128)>, StoreError> {
        let mut best = None;
        for facet in group {
            best = best.max(self.last_at_or_below(facet, bound)?);
        }
        Ok(best)
    }

    /// The greatest key at or below `bound` that is in every group (the zig-zag): each group
    /// in turn lowers the candidate to its own greatest key at or below it, until a full
    /// round leaves it where it is.
    fn next_match(
        &self,
        groups: &[Vec<String>],
        bound: (u64, u128),
    ) -> Result<Option<(u64, u128)>, StoreError> {
        let mut candidate = bound;
        loop {
            let mut settled = true;
            for group in groups {
                match self.group_at_or_below(group, candidate)? {
                    None => return Ok(None),
                    Some(key) if key < candidate => {
                        candidate = key;
                        settled = false;
                    }
                    Some(_) => {}
                }
            }
            if settled {
                return Ok(Some(candidate));
            }
        }
    }
}

impl FileStore {
    /// See [`Store::search_deliveries`](crate::store::Store::search_deliveries).
    pub fn search_deliveries(
        &self,
        search: &DeliverySearch,
        before: Option<DeliveryId>,
        limit: usize,
    ) -> Result<Vec<Delivery>, StoreError> {
        let Some((low, high)) = search.time_range() else {
            return Ok(Vec::new());
        };
        self.read(|txn| {
            let deliveries = txn.open_table(DELIVERIES)?;
            let before = match before {
                Some(id) => Some(cursor_key(
                    id,
                    load_delivery(&deliveries, id)?.map(|d| d.created_at_ms),
                )),
                None => None,
            };
            if let Some(event_id) = &search.event_id {
                let candidates = event_deliveries(txn, &search.organization_id, event_id)?;
                return Ok(filter_sorted(search, candidates, before, limit));
            }
            let mut bound = match before {
                Some((created, id)) => predecessor((created, id.0)),
                None => Some((high, u128::MAX)),
            }
            .map(|(created, id)| {
                if created > high {
                    (high, u128::MAX)
                } else {
                    (created, id)
                }
            });
            let table = txn.open_table(DELIVERY_SEARCH)?;
            let ranges = Ranges {
                table: &table,
                org: &search.organization_id,
                low,
            };
            let groups = groups(search);
            let mut out = Vec::new();
            while out.len() < limit {
                let Some(key) = bound else { break };
                let Some(found) = ranges.next_match(&groups, key)? else {
                    break;
                };
                // The index and the record agree (checked by `check`); `matches` guards the
                // answer anyway, so an index fault can hide a row but never show a wrong one.
                if let Some(delivery) = load_delivery(&deliveries, DeliveryId(found.1))? {
                    if search.matches(&delivery) {
                        out.push(delivery);
                    }
                }
                bound = predecessor(found);
            }
            Ok(out)
        })
    }
}

/// The deliveries of the event `event_id` of `org` (none if it does not exist).
fn event_deliveries(
    txn: &ReadTransaction,
    org: &str,
    event_id: &str,
) -> Result<Vec<Delivery>, StoreError> {
    let Some(key) = txn
        .open_table(EVENT_IDS)?
        .get((event_id, org))?
        .map(|v| v.value())
    else {
        return Ok(Vec::new());
    };
    let Some(event) = load_event(&txn.open_table(EVENTS)?, EventKey(key))? else {
        return Ok(Vec::new());
    };
    let deliveries = txn.open_table(DELIVERIES)?;
    event
        .delivery_ids
        .iter()
        .filter_map(|id| load_delivery(&deliveries, *id).transpose())
        .collect()
}

/// The invariant of `delivery_search` (see the module docs) and each delivery's last outcome
/// against its attempt log, by point lookups: every entry names a stored delivery that
/// shows that facet at that organization and time, and the table holds as many entries as
/// the deliveries have facets, so the two sets are equal. A file whose index was never
/// built (read-only check of a file from before issue 15) has nothing to compare.
///
/// # Errors
/// [`StoreError`] when a table cannot be read.
pub(super) fn check(txn: &ReadTransaction, report: &mut CheckReport) -> Result<(), StoreError> {
    let table = match txn.open_table(DELIVERY_SEARCH) {
        Ok(table) => table,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(()),
        Err(e) => return Err(e.into()),
    };
    let deliveries = txn.open_table(DELIVERIES)?;
    if table.is_empty()? && !deliveries.is_empty()? {
        return Ok(());
    }
    let attempts = txn.open_table(ATTEMPTS)?;
    let mut expected = 0u64;
    for row in deliveries.iter()? {
        let (id, bytes) = row?;
        let id = DeliveryId(id.value());
        // A record that does not decode is reported by the deliveries' check.
        let Ok(delivery) =
            decode::<DeliveryRecord>("deliveries", bytes.value()).and_then(|r| r.into_domain(id))
        else {
            continue;
        };
        expected += facets(&delivery).len() as u64;
        let last = match attempts.get((id.0, delivery.attempt_count))? {
            Some(bytes) if delivery.attempt_count > 0 => {
                decode::<AttemptRecord>("attempts", bytes.value())
                    .and_then(|r| r.into_domain(delivery.attempt_count))
                    .ok()
                    .map(|a| a.outcome())
            }
            _ => None,
        };
        let never_attempted = delivery.attempt_count == 0 && delivery.last_outcome.is_some();
        if never_attempted || (last.is_some() && delivery.last_outcome != last) {
            report.violation(format!(
                "delivery {id}: last_outcome is {:?} but its last attempt came to {}",
                delivery.last_outcome.map(AttemptOutcome::as_str),
                last.map_or("nothing", AttemptOutcome::as_str)
            ));
        }
    }
    let mut entries = 0u64;
    for row in table.iter()? {
        let (key, _) = row?;
        entries += 1;
        let (org, facet, created, id) = key.value();
        let id = DeliveryId(id);
        let shown = match load_delivery(&deliveries, id) {
            Ok(Some(d)) => {
                d.organization_id == org
                    && d.created_at_ms == created
                    && facets(&d).iter().any(|f| f == facet)
            }
            Ok(None) => false,
            Err(StoreError::Corrupt { .. }) => continue,
            Err(e) => return Err(e),
        };
        if !shown {
            report.violation(format!(
                "delivery_search entry ({org}, {facet}, {created}, {id}) names no delivery that shows it"
            ));
        }
    }
    if entries != expected {
        report.violation(format!(
            "delivery_search has {entries} entries but the deliveries show {expected} facets"
        ));
    }
    Ok(())
}

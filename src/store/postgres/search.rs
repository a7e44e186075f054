//! The delivery search on PostgreSQL (issue 15, item 6).
//!
//! Owner's rule: one SQL statement per page, built from the filters given, so the planner
//! sees each filter as a plain equality it can match to an index of
//! `migrations/V4__delivery_search.sql` (all end in `(created_at_ms, id)`, the search's
//! order), and reads a page in index order. A filter with several values (statuses,
//! outcomes) becomes one ordered, limited branch per value, merged by `UNION ALL` and
//! limited again: every branch stays an ordered index range. The matching itself is
//! [`DeliverySearch::matches`]'s, in SQL.

use super::{rows, PgStore};
use crate::ids::DeliveryId;
use crate::model::Delivery;
use crate::store::search::DeliverySearch;
use crate::store::StoreError;

type Param = Box<dyn tokio_postgres::types::ToSql + Sync + Send>;

/// One statement's text and parameters, numbered as they are pushed.
#[derive(Default)]
struct Sql {
    params: Vec<Param>,
}

impl Sql {
    /// Adds a parameter and returns its placeholder (`$n`).
    fn param(&mut self, value: Param) -> String {
        self.params.push(value);
        format!("${}", self.params.len())
    }
}

impl PgStore {
    /// See [`crate::store::Store::search_deliveries`].
    pub fn search_deliveries(
        &self,
        search: &DeliverySearch,
        before: Option<DeliveryId>,
        limit: usize,
    ) -> Result<Vec<Delivery>, StoreError> {
        let Some((low, high)) = search.time_range() else {
            return Ok(Vec::new());
        };
        let mut sql = Sql::default();
        let mut common = vec![format!(
            "organization_id = {}",
            sql.param(Box::new(search.organization_id.clone()))
        )];
        if let Some(w) = search.webhook_id {
            common.push(format!(
                "webhook_id = {}",
                sql.param(Box::new(w.to_string()))
            ));
        }
        if let Some(t) = search.event_type {
            common.push(format!("event_type = {}", sql.param(Box::new(t.as_str()))));
        }
        if let Some(event_id) = &search.event_id {
            let id = sql.param(Box::new(event_id.clone()));
            common.push(format!(
                "event_key = (SELECT key FROM events WHERE event_id = {id} \
                 AND organization_id = {})",
                sql.param(Box::new(search.organization_id.clone()))
            ));
        }
        if low > 0 {
            common.push(format!(
                "created_at_ms >= {}",
                sql.param(Box::new(rows::ms(low)))
            ));
        }
        if high < u64::MAX {
            common.push(format!(
                "created_at_ms <= {}",
                sql.param(Box::new(rows::ms(high)))
            ));
        }
        if let Some(cursor) = before {
            let id = sql.param(Box::new(cursor.to_string()));
            let fallback = sql.param(Box::new(rows::ms(cursor.timestamp_ms())));
            common.push(format!(
                "(created_at_ms, id) < (coalesce((SELECT created_at_ms FROM deliveries \
                 WHERE id = {id}), {fallback}), {id})"
            ));
        }
        let limit = sql.param(Box::new(i64::try_from(limit).unwrap_or(i64::MAX)));
        // The branches: one per combination of the multi-valued filters' values.
        let mut branches: Vec<Vec<String>> = vec![Vec::new()];
        let statuses: Vec<&'static str> = search.statuses.iter().map(|s| s.as_str()).collect();
        let outcomes: Vec<&'static str> = search.outcomes.iter().map(|o| o.as_str()).collect();
        for (column, values) in [("status", statuses), ("last_outcome", outcomes)] {
            let mut values = values;
            values.sort_unstable();
            values.dedup();
            if values.is_empty() {
                continue;
            }
            let placeholders: Vec<String> =
                values.into_iter().map(|v| sql.param(Box::new(v))).collect();
            branches = branches
                .into_iter()
                .flat_map(|branch| {
                    placeholders.iter().map(move |p| {
                        let mut b = branch.clone();
                        b.push(format!("{column} = {p}"));
                        b
                    })
                })
                .collect();
        }
        let order = "ORDER BY created_at_ms DESC, id DESC";
        let select = |conditions: &[String]| {
            format!(
                "SELECT {} FROM deliveries WHERE {} {order} LIMIT {limit}",
                rows::DELIVERY_COLS,
                common
                    .iter()
                    .chain(conditions)
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(" AND ")
            )
        };
        let text = if branches.len() == 1 {
            select(&branches[0])
        } else {
            let parts: Vec<String> = branches
                .iter()
                .map(|b| format!("({})", select(b)))
                .collect();
            format!(
                "SELECT * FROM ({}) AS branches {order} LIMIT {limit}",
                parts.join(" UNION ALL ")
            )
        };
        self.query_built(text, sql.params, rows::delivery)
    }
}

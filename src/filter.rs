//! The webhook filter language (issue 16): a condition on an event's envelope, checked at
//! fan-out, so a webhook receives only the events it wants ("only p1 and p2 tickets").
//!
//! Owner's rule: pure. It parses a JSON document into a [`Filter`] (refusing anything it
//! would not evaluate the way a reader expects) and evaluates it against a parsed envelope;
//! no I/O, no store, no HTTP shapes.
//!
//! The language, a subset of MongoDB's query documents:
//!
//! - `{"data.priority": "p1"}`: the value at a dotted path equals a scalar (string, number,
//!   boolean or `null`). Paths start at the envelope: `event_type`, `organization_id`,
//!   `timestamp`, `data.…`.
//! - `{"data.priority": {"$in": ["p1", "p2"]}}`: equals one of the scalars.
//! - `{"data.assignee": {"$exists": true}}`: the path is present (any value, `null` too) or,
//!   with `false`, absent.
//! - `{"data.count": {"$gt": 3, "$lt": 10}}`: numeric comparison (`$gt`, `$gte`, `$lt`,
//!   `$lte`); a value that is not a number never matches.
//! - `{"$ne": …}` and `{"$eq": …}` are the negated and explicit forms of equality.
//! - Several keys in one object must all hold; `{"$and": [f, …]}` and `{"$or": [f, …]}`
//!   combine whole filters.
//!
//! Bounds: [`MAX_FILTER_BYTES`] of JSON, [`MAX_CONDITIONS`] conditions, [`MAX_DEPTH`] levels
//! of `$and`/`$or`, paths of at most [`MAX_PATH_SEGMENTS`] segments.

use serde_json::Value;

/// Longest filter, bytes of its compact JSON.
pub const MAX_FILTER_BYTES: usize = 4096;
/// Most conditions (path and operator pairs) in one filter.
pub const MAX_CONDITIONS: usize = 64;
/// Deepest nesting of `$and`/`$or`.
pub const MAX_DEPTH: usize = 8;
/// Most segments in a dotted path.
pub const MAX_PATH_SEGMENTS: usize = 16;

/// A parsed filter. Two filters are equal when their compact JSON is.
#[derive(Debug, Clone)]
pub struct Filter {
    source: String,
    root: Node,
}

impl PartialEq for Filter {
    fn eq(&self, other: &Filter) -> bool {
        self.source == other.source
    }
}

impl Eq for Filter {}

#[derive(Debug, Clone)]
enum Node {
    All(Vec<Node>),
    Any(Vec<Node>),
    Condition { path: Vec<String>, test: Test },
}

#[derive(Debug, Clone)]
enum Test {
    Eq(Value),
    Ne(Value),
    In(Vec<Value>),
    Exists(bool),
    Gt(f64),
    Gte(f64),
    Lt(f64),
    Lte(f64),
}

/// Why a filter was refused: a sentence naming the place (`data.priority`, `$or[1]`) and
/// what is expected there.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct FilterError(pub String);

fn refuse<T>(message: impl Into<String>) -> Result<T, FilterError> {
    Err(FilterError(message.into()))
}

impl Filter {
    /// Parses a filter document.
    ///
    /// # Errors
    /// [`FilterError`] for anything outside the language or its bounds: an unknown `$`
    /// operator, a non-scalar comparand, an empty `$in`/`$and`/`$or`, a bad path.
    pub fn parse(document: &Value) -> Result<Filter, FilterError> {
        let source = document.to_string();
        if source.len() > MAX_FILTER_BYTES {
            return refuse(format!("must be at most {MAX_FILTER_BYTES} bytes of JSON"));
        }
        let mut conditions = 0;
        let root = parse_object(document, "the filter", 0, &mut conditions)?;
        Ok(Filter { source, root })
    }

    /// Parses the compact JSON that [`Filter::source`] returns (the stored form).
    ///
    /// # Errors
    /// [`FilterError`] when the text is not JSON or not a valid filter.
    pub fn from_source(source: &str) -> Result<Filter, FilterError> {
        let document: Value =
            serde_json::from_str(source).map_err(|e| FilterError(format!("not JSON: {e}")))?;
        Filter::parse(&document)
    }

    /// The filter as compact JSON, keys in their original order.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Whether `envelope` (an event's delivery body, parsed) meets the filter.
    pub fn matches(&self, envelope: &Value) -> bool {
        self.root.matches(envelope)
    }
}

fn parse_object(
    value: &Value,
    place: &str,
    depth: usize,
    conditions: &mut usize,
) -> Result<Node, FilterError> {
    if depth > MAX_DEPTH {
        return refuse(format!("nests $and/$or more than {MAX_DEPTH} levels deep"));
    }
    let Value::Object(map) = value else {
        return refuse(format!("{place} must be a JSON object"));
    };
    if map.is_empty() {
        return refuse(format!("{place} must not be empty"));
    }
    let mut all = Vec::with_capacity(map.len());
    for (key, inner) in map {
        match key.as_str() {
            "$and" | "$or" => {
                let Value::Array(items) = inner else {
                    return refuse(format!("{key} must be an array of filters"));
                };
                if items.is_empty() {
                    return refuse(format!("{key} must list at least one filter"));
                }
                let nodes = items
                    .iter()
                    .enumerate()
                    .map(|(i, item)| {
                        parse_object(item, &format!("{key}[{i}]"), depth + 1, conditions)
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                all.push(if key == "$and" {
                    Node::All(nodes)
                } else {
                    Node::Any(nodes)
                });
            }
            op if op.starts_with('$') => {
                return refuse(format!(
                    "unknown operator {op:?} at the top of {place} (only $and and $or combine \
                     filters; comparisons go under a path, like {{\"data.priority\": \
                     {{\"$in\": [\"p1\"]}}}})"
                ));
            }
            path => {
                let path = parse_path(path)?;
                for test in parse_tests(&path.join("."), inner)? {
                    *conditions += 1;
                    if *conditions > MAX_CONDITIONS {
                        return refuse(format!("has more than {MAX_CONDITIONS} conditions"));
                    }
                    all.push(Node::Condition {
                        path: path.clone(),
                        test,
                    });
                }
            }
        }
    }
    Ok(if all.len() == 1 {
        all.pop().expect("one node")
    } else {
        Node::All(all)
    })
}

fn parse_path(path: &str) -> Result<Vec<String>, FilterError> {
    let segments: Vec<String> = path.split('.').map(str::to_owned).collect();
    if segments.iter().any(String::is_empty) {
        return refuse(format!(
            "path {path:?} must be dot-separated names, like data.priority"
        ));
    }
    if segments.len() > MAX_PATH_SEGMENTS {
        return refuse(format!(
            "path {path:?} has more than {MAX_PATH_SEGMENTS} segments"
        ));
    }
    Ok(segments)
}

fn scalar(value: &Value, path: &str, op: &str) -> Result<Value, FilterError> {
    match value {
        Value::Array(_) | Value::Object(_) => refuse(format!(
            "{op} under {path:?} must be a string, number, boolean or null"
        )),
        scalar => Ok(scalar.clone()),
    }
}

fn number(value: &Value, path: &str, op: &str) -> Result<f64, FilterError> {
    value.as_f64().map_or_else(
        || refuse(format!("{op} under {path:?} must be a number")),
        Ok,
    )
}

fn parse_tests(path: &str, value: &Value) -> Result<Vec<Test>, FilterError> {
    let Value::Object(ops) = value else {
        return Ok(vec![Test::Eq(scalar(value, path, "the value")?)]);
    };
    if ops.is_empty() {
        return refuse(format!("the operators under {path:?} must not be empty"));
    }
    ops.iter()
        .map(|(op, arg)| {
            Ok(match op.as_str() {
                "$eq" => Test::Eq(scalar(arg, path, op)?),
                "$ne" => Test::Ne(scalar(arg, path, op)?),
                "$in" => {
                    let Value::Array(items) = arg else {
                        return refuse(format!("$in under {path:?} must be an array"));
                    };
                    if items.is_empty() {
                        return refuse(format!("$in under {path:?} must not be empty"));
                    }
                    Test::In(
                        items
                            .iter()
                            .map(|item| scalar(item, path, "each $in value"))
                            .collect::<Result<_, _>>()?,
                    )
                }
                "$exists" => match arg {
                    Value::Bool(b) => Test::Exists(*b),
                    _ => return refuse(format!("$exists under {path:?} must be true or false")),
                },
                "$gt" => Test::Gt(number(arg, path, op)?),
                "$gte" => Test::Gte(number(arg, path, op)?),
                "$lt" => Test::Lt(number(arg, path, op)?),
                "$lte" => Test::Lte(number(arg, path, op)?),
                other => {
                    return refuse(format!(
                        "unknown operator {other:?} under {path:?} (known: $eq, $ne, $in, \
                         $exists, $gt, $gte, $lt, $lte)"
                    ))
                }
            })
        })
        .collect()
}

/// JSON equality where numbers compare by value (`1` equals `1.0`).
fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        _ => a == b,
    }
}

impl Node {
    fn matches(&self, envelope: &Value) -> bool {
        match self {
            Node::All(nodes) => nodes.iter().all(|n| n.matches(envelope)),
            Node::Any(nodes) => nodes.iter().any(|n| n.matches(envelope)),
            Node::Condition { path, test } => {
                let found = path
                    .iter()
                    .try_fold(envelope, |value, segment| value.get(segment.as_str()));
                let as_number = || found.and_then(Value::as_f64);
                match test {
                    Test::Eq(want) => found.is_some_and(|v| same(v, want)),
                    Test::Ne(want) => !found.is_some_and(|v| same(v, want)),
                    Test::In(wants) => found.is_some_and(|v| wants.iter().any(|w| same(v, w))),
                    Test::Exists(want) => found.is_some() == *want,
                    Test::Gt(n) => as_number().is_some_and(|v| v > *n),
                    Test::Gte(n) => as_number().is_some_and(|v| v >= *n),
                    Test::Lt(n) => as_number().is_some_and(|v| v < *n),
                    Test::Lte(n) => as_number().is_some_and(|v| v <= *n),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn envelope() -> Value {
        json!({
            "event_id": "evt_1",
            "event_type": "ticket.created",
            "organization_id": "org_1",
            "data": {"ticket_id": "t1", "priority": "p1", "count": 5, "assignee": null,
                     "tags": ["a"], "nested": {"level": 2}}
        })
    }

    fn check(filter: Value) -> bool {
        Filter::parse(&filter).unwrap().matches(&envelope())
    }

    #[test]
    fn each_operator_matches_as_documented() {
        let table = [
            (json!({"data.priority": "p1"}), true),
            (json!({"data.priority": "p2"}), false),
            (json!({"data.priority": {"$eq": "p1"}}), true),
            (json!({"data.priority": {"$ne": "p1"}}), false),
            (json!({"data.missing": {"$ne": "p1"}}), true),
            (json!({"data.priority": {"$in": ["p1", "p2"]}}), true),
            (json!({"data.priority": {"$in": ["p3"]}}), false),
            (json!({"data.assignee": {"$exists": true}}), true),
            (json!({"data.assignee": null}), true),
            (json!({"data.missing": {"$exists": false}}), true),
            (json!({"data.missing": {"$exists": true}}), false),
            (json!({"data.count": {"$gt": 3, "$lt": 10}}), true),
            (json!({"data.count": {"$gt": 5}}), false),
            (json!({"data.count": {"$gte": 5, "$lte": 5}}), true),
            (json!({"data.count": 5.0}), true),
            (json!({"data.priority": {"$gt": 1}}), false),
            (json!({"data.nested.level": 2}), true),
            (
                json!({"event_type": "ticket.created", "data.priority": "p1"}),
                true,
            ),
            (
                json!({"event_type": "ticket.created", "data.priority": "p2"}),
                false,
            ),
            (
                json!({"$or": [{"data.priority": "p2"}, {"data.count": {"$gt": 4}}]}),
                true,
            ),
            (
                json!({"$and": [{"data.priority": "p1"}, {"data.count": {"$lt": 4}}]}),
                false,
            ),
        ];
        for (filter, want) in table {
            assert_eq!(check(filter.clone()), want, "{filter}");
        }
    }

    #[test]
    fn invalid_filters_are_refused_with_the_place_named() {
        let table = [
            (json!([]), "must be a JSON object"),
            (json!({}), "must not be empty"),
            (json!({"$not": {}}), "unknown operator \"$not\""),
            (
                json!({"data.p": {"$regex": "x"}}),
                "unknown operator \"$regex\"",
            ),
            (json!({"data.p": {"$in": []}}), "must not be empty"),
            (json!({"data.p": {"$in": "p1"}}), "must be an array"),
            (json!({"data.p": {"$gt": "3"}}), "must be a number"),
            (json!({"data.p": {"$exists": 1}}), "true or false"),
            (json!({"data.p": ["a"]}), "string, number, boolean or null"),
            (json!({"data..p": 1}), "dot-separated"),
            (json!({"$or": []}), "at least one"),
            (json!({"$or": [1]}), "$or[0] must be a JSON object"),
        ];
        for (filter, want) in table {
            let err = Filter::parse(&filter).unwrap_err().0;
            assert!(err.contains(want), "{filter}: {err}");
        }
        let mut deep = json!({"data.p": 1});
        for _ in 0..=MAX_DEPTH {
            deep = json!({ "$and": [deep] });
        }
        assert!(Filter::parse(&deep).is_err());
        let many: serde_json::Map<String, Value> = (0..=MAX_CONDITIONS)
            .map(|i| (format!("data.f{i}"), json!(1)))
            .collect();
        assert!(Filter::parse(&Value::Object(many)).is_err());
    }

    #[test]
    fn the_stored_source_parses_back_to_the_same_filter() {
        let f = Filter::parse(&json!({"data.priority": {"$in": ["p1", "p2"]}})).unwrap();
        let again = Filter::from_source(f.source()).unwrap();
        assert_eq!(f, again);
        assert!(again.matches(&envelope()));
    }
}

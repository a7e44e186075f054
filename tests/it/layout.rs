//! The import rules of docs/ARCHITECTURE.md, checked on the source: only `store::file`
//! imports redb and only `store::postgres` the PostgreSQL client; `delivery` never touches
//! the store; the scheduler's pure part does no I/O and reads
//! no clock; no API handler tells the scheduler about writes by hand (issue 13, item 5).

use std::path::{Path, PathBuf};

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

fn all_sources() -> Vec<(String, String)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    sources(&root.join("src"), &mut files);
    files
        .into_iter()
        .map(|p| {
            let text = std::fs::read_to_string(&p).unwrap();
            let name = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
            (name, text)
        })
        .collect()
}

#[test]
fn only_the_file_backend_imports_redb() {
    for (name, text) in all_sources() {
        if !name.starts_with("src/store/file/") {
            assert!(!text.contains("redb::"), "{name} uses redb");
        }
    }
}

#[test]
fn only_the_postgres_backend_imports_the_postgresql_client() {
    for (name, text) in all_sources() {
        if !name.starts_with("src/store/postgres/") {
            for client in ["tokio_postgres", "deadpool_postgres", "refinery"] {
                assert!(!text.contains(client), "{name} uses {client}");
            }
        }
    }
}

#[test]
fn delivery_never_touches_the_store() {
    let mut seen = 0;
    for (name, text) in all_sources() {
        if name.starts_with("src/delivery/") || name == "src/address.rs" {
            seen += 1;
            assert!(!text.contains("crate::store"), "{name} uses the store");
        }
    }
    assert!(seen >= 5, "the delivery module's files were not found");
}

#[test]
fn the_scheduler_queues_are_pure() {
    let (_, text) = all_sources()
        .into_iter()
        .find(|(name, _)| name == "src/scheduler/queues.rs")
        .unwrap();
    for forbidden in [
        "tokio",
        "clock::",
        "SystemTime",
        "Instant",
        "std::fs",
        "crate::store",
    ] {
        assert!(!text.contains(forbidden), "queues.rs uses {forbidden}");
    }
}

#[test]
fn api_handlers_do_not_notify_the_scheduler_by_hand() {
    for (name, text) in all_sources() {
        if name.starts_with("src/api/") {
            for call in ["schedule_hint", "webhook_changed", "webhook_reactivated"] {
                assert!(!text.contains(call), "{name} calls {call}");
            }
        }
    }
}

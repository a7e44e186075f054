//! Stored-record bytes: `store::decode_record` for every record table, as a read of a
//! damaged or hostile database file would meet them.
//!
//! Property: any bytes decode to a record or to an error, never a panic (nor an allocation
//! that libFuzzer's memory limit catches, e.g. from a huge length prefix).
#![no_main]

use libfuzzer_sys::fuzz_target;
use palo_webhooks::store::decode_record;

const TABLES: [&str; 5] = ["webhooks", "events", "deliveries", "attempts", "api_keys"];

fuzz_target!(|bytes: &[u8]| {
    for table in TABLES {
        let _ = decode_record(table, bytes);
    }
});

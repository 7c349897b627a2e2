//! Where the store's time goes, for the parts without fsync: each operation timed alone, on the
//! files of the commit measurement.

use std::fs::{self, File};
use std::hint::black_box;
use std::io::Read;
use std::path::Path;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use codex_store::{AuthDotJson, IdTokenClaims, Store, Timestamp};
use sha2::{Digest, Sha256};

use crate::docs::Docs;
use crate::floor::{flock, floor_lock, floor_read_hash, FloorPaths};
use crate::measure::{time_n, Plan};

pub fn bench_breakdown(root: &Path, docs: &Docs, plan: &Plan) {
    let store = Store::open(root.join("commit-store")).expect("open the store");
    let floor = FloorPaths::new(&root.join("commit-floor"));
    let n = plan.breakdown_iters;
    let bytes = &docs.bytes[0];
    let tokens = docs.docs[0].tokens.as_ref().expect("tokens");
    let id_token = tokens.id_token.expose();
    let last_refresh = docs.docs[0].last_refresh.as_ref().expect("last_refresh");
    let last_refresh = last_refresh.as_str();
    let payload = URL_SAFE_NO_PAD
        .decode(id_token.split('.').nth(1).expect("payload"))
        .expect("base64");
    let parts = [
        (
            "store transaction() then drop (lock + sweep + load)",
            time_n(n, || {
                let tx = black_box(store.transaction().expect("transaction"));
                drop(tx);
            }),
        ),
        (
            "floor open lock file + flock + unlock + close",
            time_n(n, || {
                let l = floor_lock(&floor);
                flock(&l, rustix::fs::FlockOperation::Unlock);
            }),
        ),
        (
            "read_dir of the store directory (the temp sweep)",
            time_n(n, || {
                let names: Vec<_> = fs::read_dir(store.dir())
                    .expect("read_dir")
                    .filter_map(|e| e.ok())
                    .map(|e| e.file_name())
                    .collect();
                black_box(names);
            }),
        ),
        (
            "floor open + read",
            time_n(n, || {
                let mut buf = Vec::with_capacity(4096);
                File::open(&floor.auth)
                    .and_then(|mut f| f.read_to_end(&mut buf))
                    .expect("read");
                black_box(buf);
            }),
        ),
        (
            "SHA-256 of the 2 KiB",
            time_n(n, || {
                black_box(Sha256::digest(black_box(bytes)));
            }),
        ),
        (
            "floor open + read + SHA-256",
            time_n(n, || {
                black_box(floor_read_hash(&floor));
            }),
        ),
        (
            "store.generation() (open + read + SHA-256; the re-check before rename)",
            time_n(n, || {
                black_box(store.generation().expect("generation"));
            }),
        ),
        (
            "store.load() (open + read + parse + id-token check; the generation is hashed on demand)",
            time_n(n, || {
                black_box(store.load().expect("load"));
            }),
        ),
        (
            "serde_json::from_slice::<Value> of the file (parse only)",
            time_n(n, || {
                black_box(serde_json::from_slice::<serde_json::Value>(bytes).expect("parse"));
            }),
        ),
        (
            "AuthDotJson::from_json (parse + JWT decode + build the document)",
            time_n(n, || {
                black_box(AuthDotJson::from_json(bytes).expect("parse"));
            }),
        ),
        (
            "IdTokenClaims::decode(id_token) (base64 + JSON of the payload)",
            time_n(n, || {
                black_box(IdTokenClaims::decode(id_token).expect("claims"));
            }),
        ),
        (
            "  of which serde_json::from_slice::<Value> of its payload",
            time_n(n, || {
                black_box(serde_json::from_slice::<serde_json::Value>(&payload).expect("payload"));
            }),
        ),
        (
            "  (for comparison: validating the payload with serde::de::IgnoredAny)",
            time_n(n, || {
                black_box(
                    serde_json::from_slice::<serde::de::IgnoredAny>(&payload).expect("payload"),
                );
            }),
        ),
        (
            "Timestamp::parse(last_refresh)",
            time_n(n, || {
                black_box(Timestamp::parse(last_refresh).expect("timestamp"));
            }),
        ),
        (
            "AuthDotJson::to_json (serialize)",
            time_n(n, || {
                black_box(docs.docs[0].to_json());
            }),
        ),
        (
            "symlink_metadata (lstat)",
            time_n(n, || {
                black_box(fs::symlink_metadata(store.path()).expect("lstat"));
            }),
        ),
    ];
    println!("breakdown (single operations without fsync):");
    for (name, s) in parts {
        println!("  {name}: {}", s.describe());
    }
}

//! Benchmarks of the store against the physical floor: the same system calls, hand-written.
//!
//! `cargo bench -p codex-store` prints, in one run:
//! 1. `commit`: `transaction()` + `commit(Some(&doc))` on a 2 KiB ChatGPT-mode auth.json against
//!    the hand-written floor (open the sidecar lock file, flock, read, SHA-256, write a temp file
//!    in the same directory, fsync, rename, fsync the directory, unlock). Target ratio <= 1.25.
//! 2. `load`: `Store::load()` against open + read + `serde_json::from_slice::<Value>`.
//!    Target ratio <= 1.5.
//! 3. 8 processes committing in a loop: total transactions per second of the store against the
//!    floor transaction of 1 in 8 processes. Target ratio >= 0.8. The processes are this binary,
//!    re-executed with `CODEX_STORE_BENCH_CHILD=store|raw`.
//!
//! Store and floor run in alternating blocks so that the machine's noise (fsync stalls of tens of
//! milliseconds happen) hits both. A short run: `cargo bench -p codex-store --bench store --
//! --quick` (plain `cargo bench -p codex-store -- --quick` also passes `--quick` to the library's
//! test harness, which rejects it), or `CODEX_STORE_BENCH_QUICK=1 cargo bench -p codex-store`.
//! `--diagnose` (or `CODEX_STORE_BENCH_DIAGNOSE=1`) adds about 50 s: the floor with parts of the
//! store's behaviour added one at a time, to attribute the store's extra time.

use std::fs::{self, File, OpenOptions};
use std::hint::black_box;
use std::io::{self, BufRead, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use codex_store::IdTokenClaims;
use codex_store::{AuthDotJson, AuthMode, Expect, Secret, Store, Timestamp, TokenData};
use codex_store_tests::process::Process;
use sha2::{Digest, Sha256};

const CHILD_ENV: &str = "CODEX_STORE_BENCH_CHILD";
const DIR_ENV: &str = "CODEX_STORE_BENCH_DIR";
const DURATION_ENV: &str = "CODEX_STORE_BENCH_DURATION_MS";
/// Set (to anything but `0`) for a short run, like `-- --quick`.
const QUICK_ENV: &str = "CODEX_STORE_BENCH_QUICK";
/// Set (to anything but `0`) to also run the diagnostic throughput variants, like `--diagnose`.
const DIAGNOSE_ENV: &str = "CODEX_STORE_BENCH_DIAGNOSE";
const PROCESSES: usize = 8;
/// The size of the auth.json the benchmark writes (a real ChatGPT-mode file is about this).
const FILE_SIZE: usize = 2048;

const COMMIT_TARGET: f64 = 1.25;
const LOAD_TARGET: f64 = 1.5;
const THROUGHPUT_TARGET: f64 = 0.8;

struct Plan {
    commit_warmup: usize,
    commit_iters: usize,
    commit_block: usize,
    load_warmup: usize,
    load_iters: usize,
    load_block: usize,
    breakdown_iters: usize,
    /// Each of store and floor runs this many phases, alternating (ABBA order), each this long.
    mp_rounds: usize,
    mp_phase: Duration,
}

impl Plan {
    fn full() -> Plan {
        Plan {
            commit_warmup: 50,
            commit_iters: 1000,
            commit_block: 50,
            load_warmup: 2000,
            load_iters: 20_000,
            load_block: 1000,
            breakdown_iters: 5000,
            mp_rounds: 8,
            mp_phase: Duration::from_millis(750),
        }
    }

    fn quick() -> Plan {
        Plan {
            commit_warmup: 10,
            commit_iters: 100,
            commit_block: 20,
            load_warmup: 200,
            load_iters: 2000,
            load_block: 200,
            breakdown_iters: 500,
            mp_rounds: 2,
            mp_phase: Duration::from_millis(400),
        }
    }
}

fn main() {
    if let Ok(kind) = std::env::var(CHILD_ENV) {
        child_main(&kind);
        return;
    }
    // `cargo bench -p codex-store -- --quick` would also hand `--quick` to the library's test
    // harness, which refuses it: use `--bench store -- --quick`, or the environment variable.
    let quick = std::env::args().any(|a| a == "--quick")
        || std::env::var_os(QUICK_ENV).is_some_and(|v| !v.is_empty() && v != "0");
    let plan = if quick { Plan::quick() } else { Plan::full() };
    let root = TempRoot::new();
    println!(
        "codex-store benchmark ({}; 2 KiB ChatGPT-mode auth.json in {})",
        if quick { "quick" } else { "full" },
        root.0.display()
    );
    let docs = Docs::new();
    println!(
        "document: {} bytes (two alternating versions of equal size)",
        docs.bytes[0].len()
    );
    bench_commit(&root.0, &docs, &plan);
    bench_load(&root.0, &docs, &plan);
    bench_breakdown(&root.0, &docs, &plan);
    bench_processes(&root.0, &docs, &plan);
    let diagnose = std::env::args().any(|a| a == "--diagnose")
        || std::env::var_os(DIAGNOSE_ENV).is_some_and(|v| !v.is_empty() && v != "0");
    if diagnose {
        bench_diagnose(&root.0, &docs, &plan);
    }
}

/// The benchmark's directory, removed when dropped (also when a step panics).
struct TempRoot(PathBuf);

impl TempRoot {
    fn new() -> TempRoot {
        let dir = std::env::temp_dir().join(format!("codex-store-bench-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("create the benchmark directory");
        TempRoot(dir)
    }
}

impl Drop for TempRoot {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

// ---------------------------------------------------------------------------------------------
// The document: realistic fake JWTs (base64url header, payload, signature).

/// A deterministic byte stream (xorshift), so that every process builds the same documents.
struct Rng(u64);

impl Rng {
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n)
            .map(|_| {
                self.0 ^= self.0 << 13;
                self.0 ^= self.0 >> 7;
                self.0 ^= self.0 << 17;
                (self.0 >> 32) as u8
            })
            .collect()
    }

    fn hex(&mut self, n: usize) -> String {
        self.bytes(n).iter().map(|b| format!("{b:02x}")).collect()
    }
}

fn jwt(payload: &str, signature: &[u8]) -> String {
    let header = r#"{"alg":"RS256","typ":"JWT"}"#;
    format!(
        "{}.{}.{}",
        URL_SAFE_NO_PAD.encode(header),
        URL_SAFE_NO_PAD.encode(payload),
        URL_SAFE_NO_PAD.encode(signature)
    )
}

/// Two versions of one account's auth.json (a refresh apart), of exactly the same size.
struct Docs {
    docs: [AuthDotJson; 2],
    bytes: [Vec<u8>; 2],
}

impl Docs {
    fn new() -> Docs {
        // Find the signature length that makes the file FILE_SIZE bytes.
        let probe = Self::version(0, 0);
        let short = probe.to_json().len();
        assert!(
            short < FILE_SIZE,
            "the document without signatures is too large"
        );
        // Two signatures, each base64 (4 characters per 3 bytes); search nearby lengths.
        let mut sig = (FILE_SIZE - short) * 3 / 8;
        while Self::version(0, sig).to_json().len() > FILE_SIZE {
            sig -= 1;
        }
        while Self::version(0, sig + 1).to_json().len() <= FILE_SIZE {
            sig += 1;
        }
        let docs = [Self::version(0, sig), Self::version(1, sig)];
        let bytes = [docs[0].to_json(), docs[1].to_json()];
        assert_eq!(
            bytes[0].len(),
            bytes[1].len(),
            "the versions differ in size"
        );
        assert_ne!(bytes[0], bytes[1], "the versions are equal");
        for b in &bytes {
            let back = AuthDotJson::from_json(b).expect("the document does not load");
            assert_eq!(back.to_json(), *b, "the document does not round-trip");
        }
        Docs { docs, bytes }
    }

    fn version(v: u64, sig: usize) -> AuthDotJson {
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        let account = "2f0c9a7e-5b1d-4c8e-9f3a-6d2b1e0c7a54";
        let user = "user-Xq3bV9kLm2Tz8RwYp4NcJd6H";
        let iat = 1_760_000_000 + v * 864_000;
        let id_payload = format!(
            r#"{{"aud":["app_EMoamEEZ73f0CkXaXp7hrann"],"email":"ada.lovelace@example.com","email_verified":true,"exp":{exp},"https://api.openai.com/auth":{{"chatgpt_account_id":"{account}","chatgpt_plan_type":"plus","chatgpt_user_id":"{user}","user_id":"{user}"}},"iat":{iat},"iss":"https://auth.openai.com","jti":"{jti}","sid":"{sid}","sub":"google-oauth2|108374652910384756201"}}"#,
            exp = iat + 3600,
            jti = rng.hex(16),
            sid = rng.hex(16),
        );
        let id_sig = rng.bytes(sig);
        let access_payload = format!(
            r#"{{"aud":["https://api.openai.com/v1"],"client_id":"app_EMoamEEZ73f0CkXaXp7hrann","exp":{exp},"https://api.openai.com/auth":{{"chatgpt_account_id":"{account}","chatgpt_plan_type":"plus","chatgpt_user_id":"{user}","user_id":"{user}"}},"https://api.openai.com/profile":{{"email":"ada.lovelace@example.com","email_verified":true}},"iat":{iat},"iss":"https://auth.openai.com","jti":"{jti}","scp":["openid","profile","email","offline_access"],"session_id":"authsess_{sess}","sub":"google-oauth2|108374652910384756201"}}"#,
            exp = iat + 864_000,
            jti = Rng(0x2545_F491_4F6C_DD1D ^ (v + 1)).hex(16),
            sess = rng.hex(12),
        );
        let access_sig = Rng(0x5851_F42D_4C95_7F2D ^ (v + 7)).bytes(sig);
        AuthDotJson {
            auth_mode: Some(AuthMode::Chatgpt),
            openai_api_key: None,
            tokens: Some(TokenData {
                id_token: Secret::new(jwt(&id_payload, &id_sig)),
                access_token: Secret::new(jwt(&access_payload, &access_sig)),
                refresh_token: Secret::new(format!(
                    "rt_{}",
                    Rng(0x1405_7B7E_F767_814F ^ (v + 3)).hex(24)
                )),
                account_id: Some(account.to_owned()),
                ..Default::default()
            }),
            last_refresh: Some(
                Timestamp::parse(&format!("2025-10-{:02}T08:15:42.123456Z", 10 + v))
                    .expect("timestamp"),
            ),
            ..Default::default()
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The floor: the store's system calls, hand-written.

struct FloorPaths {
    dir: PathBuf,
    auth: PathBuf,
    lock: PathBuf,
}

impl FloorPaths {
    fn new(dir: &Path) -> FloorPaths {
        FloorPaths {
            dir: dir.to_path_buf(),
            auth: dir.join("auth.json"),
            lock: dir.join("auth.json.lock"),
        }
    }
}

fn flock(file: &File, op: libc::c_int) {
    // SAFETY: flock on a descriptor we own; no memory is involved.
    let rc = unsafe { libc::flock(file.as_raw_fd(), op) };
    assert_eq!(rc, 0, "flock failed: {}", io::Error::last_os_error());
}

/// Open the sidecar lock file and take the exclusive lock.
fn floor_lock(p: &FloorPaths) -> File {
    let lock = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .mode(0o600)
        .custom_flags(libc::O_CLOEXEC)
        .open(&p.lock)
        .expect("open the lock file");
    flock(&lock, libc::LOCK_EX);
    lock
}

/// Read and hash auth.json (the generation), under the lock.
fn floor_read_hash(p: &FloorPaths) -> [u8; 32] {
    let mut buf = Vec::with_capacity(4096);
    match File::open(&p.auth) {
        Ok(mut f) => {
            f.read_to_end(&mut buf).expect("read auth.json");
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => panic!("open auth.json: {e}"),
    }
    Sha256::digest(&buf).into()
}

/// Temp file in the same directory, write, fsync, rename, fsync the directory.
fn floor_replace(p: &FloorPaths, bytes: &[u8], counter: &mut u64) {
    *counter += 1;
    let tmp = p
        .dir
        .join(format!(".floor-tmp.{}.{}", std::process::id(), counter));
    let mut t = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_CLOEXEC)
        .open(&tmp)
        .expect("create the temp file");
    t.write_all(bytes).expect("write the temp file");
    t.sync_all().expect("fsync the temp file");
    drop(t);
    fs::rename(&tmp, &p.auth).expect("rename");
    File::open(&p.dir)
        .and_then(|d| d.sync_all())
        .expect("fsync the directory");
}

/// One floor transaction; returns the time to the end of the read+hash and the total.
fn floor_transaction(p: &FloorPaths, bytes: &[u8], counter: &mut u64) -> (Duration, Duration) {
    let start = Instant::now();
    let lock = floor_lock(p);
    black_box(floor_read_hash(p));
    let opened = start.elapsed();
    floor_replace(p, bytes, counter);
    flock(&lock, libc::LOCK_UN);
    drop(lock);
    (opened, start.elapsed())
}

/// Takes the lock as the store does: try without blocking, and when busy, wait in a helper
/// thread blocked in `flock(LOCK_EX)` that hands the descriptor back over a channel.
fn helper_lock(p: &FloorPaths) -> File {
    let lock = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .mode(0o600)
        .custom_flags(libc::O_CLOEXEC)
        .open(&p.lock)
        .expect("open the lock file");
    // SAFETY: flock on a descriptor we own.
    if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
        return lock;
    }
    let (tx, rx) = mpsc::sync_channel::<File>(1);
    std::thread::spawn(move || {
        flock(&lock, libc::LOCK_EX);
        let _ = tx.send(lock);
    });
    rx.recv_timeout(Duration::from_secs(10))
        .expect("the lock wait timed out")
}

/// Diagnostic variants of the floor transaction, to find where the store's time goes. Named
/// `raw` followed by `+helper`, `+sweep` or `+sweep-noatime`, and `+work`.
#[derive(Clone, Copy)]
struct Variant {
    /// Wait for the lock in a helper thread, as the store does.
    helper: bool,
    /// Read the directory under the lock, as the store's temp sweep does.
    sweep: bool,
    /// Read the directory opened with `O_NOATIME`, which does not update its access time.
    noatime: bool,
    /// Add the store's other work under the lock, without fsync: the lock file's lstat, parse,
    /// lstat, serialize, the re-read and re-hash before the rename.
    work: bool,
}

impl Variant {
    fn parse(kind: &str) -> Option<Variant> {
        let mut tokens = kind.split('+');
        if tokens.next() != Some("raw") {
            return None;
        }
        let mut v = Variant {
            helper: false,
            sweep: false,
            noatime: false,
            work: false,
        };
        for token in tokens {
            match token {
                "helper" => v.helper = true,
                "sweep" => v.sweep = true,
                "sweep-noatime" => (v.sweep, v.noatime) = (true, true),
                "work" => v.work = true,
                _ => return None,
            }
        }
        Some(v)
    }
}

/// The names in `dir`; with `noatime`, without updating the directory's access time.
fn read_dir_names(dir: &Path, noatime: bool) -> Vec<Vec<u8>> {
    use std::os::unix::ffi::OsStrExt;
    if !noatime {
        return fs::read_dir(dir)
            .expect("read_dir")
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().as_bytes().to_vec())
            .collect();
    }
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes()).expect("a path without NUL");
    let flags = libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC | libc::O_NOATIME;
    let mut names = Vec::new();
    // SAFETY: a NUL-terminated path; the DIR stream is used only here and closed once; each
    // entry's name is a NUL-terminated string valid until the next readdir.
    unsafe {
        let fd = libc::open(path.as_ptr(), flags);
        assert!(
            fd >= 0,
            "open the directory: {}",
            io::Error::last_os_error()
        );
        let stream = libc::fdopendir(fd);
        assert!(!stream.is_null(), "fdopendir failed");
        loop {
            let entry = libc::readdir(stream);
            if entry.is_null() {
                break;
            }
            let name = std::ffi::CStr::from_ptr((*entry).d_name.as_ptr());
            names.push(name.to_bytes().to_vec());
        }
        libc::closedir(stream);
    }
    names
}

fn variant_transaction(
    p: &FloorPaths,
    doc: &AuthDotJson,
    bytes: &[u8],
    counter: &mut u64,
    v: Variant,
) -> (Duration, Duration) {
    let start = Instant::now();
    let lock = if v.helper {
        helper_lock(p)
    } else {
        floor_lock(p)
    };
    if v.sweep {
        black_box(read_dir_names(&p.dir, v.noatime));
    }
    if v.work {
        black_box(fs::symlink_metadata(&p.lock).expect("lstat"));
        let read = fs::read(&p.auth).expect("read");
        black_box(Sha256::digest(&read));
        black_box(AuthDotJson::from_json(&read).expect("parse"));
        black_box(fs::symlink_metadata(&p.auth).expect("lstat"));
        black_box(Sha256::digest(doc.to_json()));
    }
    black_box(floor_read_hash(p));
    let opened = start.elapsed();
    floor_replace(p, bytes, counter);
    flock(&lock, libc::LOCK_UN);
    drop(lock);
    (opened, start.elapsed())
}

/// One store transaction; returns the time `transaction()` took and the total.
fn store_transaction(store: &Store, doc: &AuthDotJson) -> (Duration, Duration) {
    let start = Instant::now();
    let tx = store.transaction().expect("transaction");
    let opened = start.elapsed();
    black_box(tx.commit(Some(doc)).expect("commit"));
    (opened, start.elapsed())
}

// ---------------------------------------------------------------------------------------------
// Statistics.

#[derive(Default)]
struct Samples(Vec<Duration>);

impl Samples {
    fn push(&mut self, d: Duration) {
        self.0.push(d);
    }

    fn quantile(&self, q: f64) -> f64 {
        let mut v: Vec<f64> = self.0.iter().map(|d| d.as_secs_f64() * 1e6).collect();
        v.sort_by(|a, b| a.total_cmp(b));
        if v.is_empty() {
            return f64::NAN;
        }
        let i = ((v.len() - 1) as f64 * q).round() as usize;
        v[i]
    }

    fn median(&self) -> f64 {
        self.quantile(0.5)
    }

    fn p99(&self) -> f64 {
        self.quantile(0.99)
    }

    fn describe(&self) -> String {
        format!("median {:.1} us p99 {:.1} us", self.median(), self.p99())
    }
}

fn verdict(ok: bool) -> &'static str {
    if ok {
        "PASS"
    } else {
        "FAIL"
    }
}

// ---------------------------------------------------------------------------------------------
// 1. commit

fn bench_commit(root: &Path, docs: &Docs, plan: &Plan) {
    let store = Store::open(root.join("commit-store")).expect("open the store");
    store
        .compare_and_swap(Expect::Any, Some(&docs.docs[0]))
        .expect("seed the store");
    let floor_dir = root.join("commit-floor");
    fs::create_dir_all(&floor_dir).expect("create the floor directory");
    let floor = FloorPaths::new(&floor_dir);
    let mut counter = 0;
    fs::write(&floor.auth, &docs.bytes[0]).expect("seed the floor");

    for i in 0..plan.commit_warmup {
        store_transaction(&store, &docs.docs[(i + 1) % 2]);
        floor_transaction(&floor, &docs.bytes[(i + 1) % 2], &mut counter);
    }
    let (mut s_total, mut s_open, mut s_commit) = Default::default();
    let (mut f_total, mut f_open, mut f_commit) = Default::default();
    let mut done = 0;
    let mut block = 0;
    while done < plan.commit_iters {
        let n = plan.commit_block.min(plan.commit_iters - done);
        // Alternate which side goes first, so that neither always follows the other.
        for side in [block % 2, (block + 1) % 2] {
            for i in 0..n {
                let v = (done + i) % 2;
                if side == 0 {
                    let (open, total) = store_transaction(&store, &docs.docs[v]);
                    record(&mut s_open, &mut s_commit, &mut s_total, open, total);
                } else {
                    let (open, total) = floor_transaction(&floor, &docs.bytes[v], &mut counter);
                    record(&mut f_open, &mut f_commit, &mut f_total, open, total);
                }
            }
        }
        done += n;
        block += 1;
    }
    let ratio = s_total.median() / f_total.median();
    println!(
        "commit: store {} | floor {} | ratio {:.2} (target <= {:.2}) {}",
        s_total.describe(),
        f_total.describe(),
        ratio,
        COMMIT_TARGET,
        verdict(ratio <= COMMIT_TARGET)
    );
    println!(
        "  commit parts: store transaction() {} + commit() {} | floor lock+read+hash {} + write+fsync+rename+fsync dir+unlock {}",
        s_open.describe(),
        s_commit.describe(),
        f_open.describe(),
        f_commit.describe()
    );
    // The last commit must have left a document the store reads.
    let last = store.load().expect("load after the commit benchmark");
    assert!(last.auth().is_some(), "the store lost its document");
}

fn record(open: &mut Samples, rest: &mut Samples, total: &mut Samples, o: Duration, t: Duration) {
    open.push(o);
    rest.push(t.saturating_sub(o));
    total.push(t);
}

// ---------------------------------------------------------------------------------------------
// 2. load

fn floor_load(path: &Path) -> serde_json::Value {
    let mut f = File::open(path).expect("open auth.json");
    let mut buf = Vec::with_capacity(4096);
    f.read_to_end(&mut buf).expect("read auth.json");
    serde_json::from_slice(&buf).expect("parse auth.json")
}

fn bench_load(root: &Path, docs: &Docs, plan: &Plan) {
    let store = Store::open(root.join("load-store")).expect("open the store");
    store
        .compare_and_swap(Expect::Any, Some(&docs.docs[0]))
        .expect("seed the store");
    let path = store.path().to_path_buf();
    // The floor reads the very same file.
    for _ in 0..plan.load_warmup {
        black_box(store.load().expect("load"));
        black_box(floor_load(&path));
    }
    let mut s = Samples::default();
    let mut f = Samples::default();
    let mut done = 0;
    let mut block = 0;
    while done < plan.load_iters {
        let n = plan.load_block.min(plan.load_iters - done);
        for side in [block % 2, (block + 1) % 2] {
            for _ in 0..n {
                let start = Instant::now();
                if side == 0 {
                    black_box(store.load().expect("load"));
                    s.push(start.elapsed());
                } else {
                    black_box(floor_load(&path));
                    f.push(start.elapsed());
                }
            }
        }
        done += n;
        block += 1;
    }
    let ratio = s.median() / f.median();
    println!(
        "load: store {} | floor {} | ratio {:.2} (target <= {:.2}) {}",
        s.describe(),
        f.describe(),
        ratio,
        LOAD_TARGET,
        verdict(ratio <= LOAD_TARGET)
    );
}

// ---------------------------------------------------------------------------------------------
// Where the store's time goes, for the parts without fsync (each timed alone, same files).

fn time_n(n: usize, mut op: impl FnMut()) -> Samples {
    for _ in 0..n / 10 {
        op();
    }
    let mut s = Samples::default();
    for _ in 0..n {
        let start = Instant::now();
        op();
        s.push(start.elapsed());
    }
    s
}

fn bench_breakdown(root: &Path, docs: &Docs, plan: &Plan) {
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
                flock(&l, libc::LOCK_UN);
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

// ---------------------------------------------------------------------------------------------
// 3. 8 processes

/// What the processes of one phase did together.
struct PhaseResult {
    tx_per_s: f64,
    count: u64,
    seconds: f64,
    worst_p99_us: f64,
    /// Mean time from holding the lock with the file read (store: `transaction()` returned) to
    /// the end of the transaction, over all transactions of the phase.
    mean_rest_us: f64,
    /// User + system CPU time of the processes, per transaction.
    cpu_us_per_tx: f64,
}

/// User + system CPU time of the waited-for children of this process so far.
fn children_cpu() -> Duration {
    // SAFETY: getrusage fills the struct we pass; zeroed is a valid rusage.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage) };
    assert_eq!(rc, 0, "getrusage failed");
    let tv = |t: libc::timeval| {
        Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64)
    };
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

fn run_phase(kind: &str, dir: &Path, duration: Duration) -> PhaseResult {
    let exe = std::env::current_exe().expect("current_exe");
    let cpu_before = children_cpu();
    let mut workers: Vec<Process> = (0..PROCESSES)
        .map(|n| {
            let mut command = Command::new(&exe);
            command
                .env(CHILD_ENV, kind)
                .env(DIR_ENV, dir)
                .env(DURATION_ENV, duration.as_millis().to_string());
            Process::spawn_command(format!("{kind} child #{n}"), command)
        })
        .collect();
    // Start them together: every child has printed `ready` before any is told to go.
    for w in &workers {
        w.expect_line("ready");
    }
    for w in &mut workers {
        w.go();
    }
    let mut count = 0u64;
    let mut longest = Duration::ZERO;
    let mut worst_p99_us: f64 = 0.0;
    let mut rest_sum_us = 0.0;
    for mut w in workers {
        let line = w.line("its count");
        let fields: Vec<&str> = line.split_whitespace().collect();
        assert!(
            fields.len() == 5 && fields[0] == "count",
            "bad child report: {line:?}"
        );
        let n: u64 = fields[1].parse().expect("count");
        count += n;
        longest = longest.max(Duration::from_nanos(fields[2].parse().expect("elapsed")));
        worst_p99_us = worst_p99_us.max(fields[3].parse().expect("p99"));
        rest_sum_us += n as f64 * fields[4].parse::<f64>().expect("mean rest");
        w.exit_successfully();
    }
    let seconds = longest.as_secs_f64();
    PhaseResult {
        tx_per_s: count as f64 / seconds,
        count,
        seconds,
        worst_p99_us,
        mean_rest_us: rest_sum_us / count.max(1) as f64,
        cpu_us_per_tx: (children_cpu() - cpu_before).as_secs_f64() * 1e6 / count.max(1) as f64,
    }
}

/// The phases of each kind, run in rounds; the order within a round reverses every other
/// round (ABBA), so that drifting noise weighs on every kind alike.
fn run_rounds(kinds: &[&str], dirs: &[PathBuf], plan: &Plan) -> Vec<Vec<PhaseResult>> {
    let mut results: Vec<Vec<PhaseResult>> = kinds.iter().map(|_| Vec::new()).collect();
    for round in 0..plan.mp_rounds {
        for j in 0..kinds.len() {
            let k = if round % 2 == 0 {
                j
            } else {
                kinds.len() - 1 - j
            };
            results[k].push(run_phase(kinds[k], &dirs[k], plan.mp_phase));
        }
    }
    results
}

/// Total transactions per second over all phases of one kind.
fn total_rate(phases: &[PhaseResult]) -> f64 {
    let count: u64 = phases.iter().map(|r| r.count).sum();
    let seconds: f64 = phases.iter().map(|r| r.seconds).sum();
    count as f64 / seconds
}

fn describe_phases(phases: &[PhaseResult]) -> String {
    let rates: Vec<String> = phases
        .iter()
        .map(|r| format!("{:.0}", r.tx_per_s))
        .collect();
    let worst = phases.iter().map(|r| r.worst_p99_us).fold(0.0, f64::max);
    let count: u64 = phases.iter().map(|r| r.count).sum();
    let rest: f64 = phases
        .iter()
        .map(|r| r.mean_rest_us * r.count as f64)
        .sum::<f64>()
        / count.max(1) as f64;
    let cpu: f64 = phases
        .iter()
        .map(|r| r.cpu_us_per_tx * r.count as f64)
        .sum::<f64>()
        / count.max(1) as f64;
    format!(
        "phases [{}] tx/s, per-process p99 up to {:.1} ms, mean time after read {:.0} us, CPU {:.0} us/tx",
        rates.join(", "),
        worst / 1000.0,
        rest,
        cpu
    )
}

fn seed_dir(dir: &Path, docs: &Docs) {
    fs::create_dir_all(dir).expect("create a directory");
    fs::write(dir.join("auth.json"), &docs.bytes[0]).expect("seed");
}

fn bench_processes(root: &Path, docs: &Docs, plan: &Plan) {
    let kinds = ["raw", "store"];
    let dirs: Vec<PathBuf> = kinds.iter().map(|k| root.join(format!("mp-{k}"))).collect();
    for d in &dirs {
        seed_dir(d, docs);
    }
    let results = run_rounds(&kinds, &dirs, plan);
    let (f, s) = (&results[0], &results[1]);
    let (f_rate, s_rate) = (total_rate(f), total_rate(s));
    let ratio = s_rate / f_rate;
    println!(
        "{PROCESSES}-process commit throughput: store {:.0} tx/s | floor {:.0} tx/s | ratio {:.2} (target >= {:.2}) {}",
        s_rate,
        f_rate,
        ratio,
        THROUGHPUT_TARGET,
        verdict(ratio >= THROUGHPUT_TARGET)
    );
    let mut paired: Vec<f64> = f
        .iter()
        .zip(s)
        .map(|(f, s)| s.tx_per_s / f.tx_per_s)
        .collect();
    paired.sort_by(|a, b| a.total_cmp(b));
    println!(
        "  {} rounds of {:?} per side; median of the per-round ratios {:.2}",
        plan.mp_rounds,
        plan.mp_phase,
        paired[paired.len() / 2]
    );
    println!("  store: {}", describe_phases(s));
    println!("  floor: {}", describe_phases(f));
    // Nothing was torn or lost: the store loads, the floor file is one of the two versions.
    let store = Store::open(&dirs[1]).expect("open the store");
    let last = store.load().expect("load after the process benchmark");
    assert!(last.auth().is_some(), "the store lost its document");
    let raw = fs::read(dirs[0].join("auth.json")).expect("read the floor file");
    assert!(
        raw == docs.bytes[0] || raw == docs.bytes[1],
        "the floor file is torn"
    );
}

const DIAGNOSTIC_KINDS: [&str; 8] = [
    "raw",
    "raw+helper",
    "raw+sweep",
    "raw+sweep-noatime",
    "raw+work",
    "raw+helper+sweep+work",
    "raw+helper+sweep-noatime+work",
    "store",
];

/// The floor with parts of the store's behaviour added, to attribute the store's extra time:
/// commit latency in one process, then throughput in 8.
fn bench_diagnose(root: &Path, docs: &Docs, plan: &Plan) {
    println!(
        "diagnosis: raw = the floor; +helper = the store's lock wait in a helper thread; +sweep = \
         read_dir under the lock (the store's temp sweep); +sweep-noatime = the same with \
         O_NOATIME; +work = the store's other work under the lock without fsync"
    );
    let kinds = DIAGNOSTIC_KINDS;
    let dirs: Vec<PathBuf> = kinds
        .iter()
        .map(|k| root.join(format!("diag-{}", k.replace('+', "_"))))
        .collect();
    for d in &dirs {
        seed_dir(d, docs);
    }

    // One process: commit latency, interleaved blocks.
    let store = Store::open(&dirs[kinds.len() - 1]).expect("open the store");
    let floors: Vec<FloorPaths> = dirs.iter().map(|d| FloorPaths::new(d)).collect();
    let mut samples: Vec<Samples> = kinds.iter().map(|_| Samples::default()).collect();
    let mut counter = 0;
    let block = plan.commit_block / 2;
    let rounds = plan.commit_iters / 2 / block;
    for round in 0..rounds + 1 {
        for j in 0..kinds.len() {
            let k = if round % 2 == 0 {
                j
            } else {
                kinds.len() - 1 - j
            };
            for i in 0..block {
                let (doc, bytes) = (&docs.docs[i % 2], &docs.bytes[i % 2]);
                let (_, total) = match Variant::parse(kinds[k]) {
                    Some(v) => variant_transaction(&floors[k], doc, bytes, &mut counter, v),
                    None => store_transaction(&store, doc),
                };
                // The first round warms up.
                if round > 0 {
                    samples[k].push(total);
                }
            }
        }
    }
    println!(
        "  one process, commit latency ({} each, interleaved):",
        samples[0].0.len()
    );
    let base = samples[0].median();
    for (kind, s) in kinds.iter().zip(&samples) {
        println!(
            "    {kind}: {} ({:+.1} us vs raw)",
            s.describe(),
            s.median() - base
        );
    }

    let results = run_rounds(&kinds, &dirs, plan);
    println!(
        "  {PROCESSES} processes, throughput ({} rounds of {:?}):",
        plan.mp_rounds, plan.mp_phase
    );
    let base = total_rate(&results[0]);
    for (kind, phases) in kinds.iter().zip(&results) {
        let rate = total_rate(phases);
        println!(
            "    {kind}: {rate:.0} tx/s ({:.2} of raw); {}",
            rate / base,
            describe_phases(phases)
        );
    }
}

/// A child process: print `ready`, wait for a line on stdin, commit in a loop for the duration,
/// print `count <n> <elapsed ns> <p99 us> <mean time after the read, us>`.
fn child_main(kind: &str) {
    let dir = PathBuf::from(std::env::var(DIR_ENV).expect("CODEX_STORE_BENCH_DIR"));
    let duration = Duration::from_millis(
        std::env::var(DURATION_ENV)
            .expect("CODEX_STORE_BENCH_DURATION_MS")
            .parse()
            .expect("duration in ms"),
    );
    let docs = Docs::new();
    let store = Store::open(&dir).expect("open the store");
    let floor = FloorPaths::new(&dir);
    let mut counter = 0;
    let mut out = io::stdout().lock();
    writeln!(out, "ready").expect("write ready");
    out.flush().expect("flush ready");
    let mut line = String::new();
    io::stdin().lock().read_line(&mut line).expect("read go");
    if line.trim() != "go" {
        // The parent went away before the start.
        return;
    }

    let start = Instant::now();
    let deadline = start + duration;
    let mut latencies = Samples::default();
    let mut rest = Duration::ZERO;
    let mut n: u64 = 0;
    while Instant::now() < deadline {
        let v = (n % 2) as usize;
        let (opened, total) = match kind {
            "store" => store_transaction(&store, &docs.docs[v]),
            "raw" => floor_transaction(&floor, &docs.bytes[v], &mut counter),
            _ if Variant::parse(kind).is_some() => {
                let variant = Variant::parse(kind).expect("a variant");
                variant_transaction(&floor, &docs.docs[v], &docs.bytes[v], &mut counter, variant)
            }
            other => panic!("unknown child kind {other}"),
        };
        latencies.push(total);
        rest += total.saturating_sub(opened);
        n += 1;
    }
    let elapsed = start.elapsed();
    writeln!(
        out,
        "count {n} {} {:.1} {:.1}",
        elapsed.as_nanos(),
        latencies.p99(),
        rest.as_secs_f64() * 1e6 / n.max(1) as f64
    )
    .expect("write the count");
    out.flush().expect("flush the count");
}

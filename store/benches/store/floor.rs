//! The floor: the store's system calls, hand-written; the diagnostic variants that add parts of
//! the store's behaviour to it; and one store transaction, timed the same way.

use std::fs::{self, File, OpenOptions};
use std::hint::black_box;
use std::io::{self, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use codex_store::{AuthDotJson, Store};
use rustix::fs::{FlockOperation, OFlags};
use sha2::{Digest, Sha256};

/// The files of one floor directory.
pub struct FloorPaths {
    pub dir: PathBuf,
    pub auth: PathBuf,
    pub lock: PathBuf,
}

impl FloorPaths {
    pub fn new(dir: &Path) -> FloorPaths {
        FloorPaths {
            dir: dir.to_path_buf(),
            auth: dir.join("auth.json"),
            lock: dir.join("auth.json.lock"),
        }
    }
}

pub fn flock(file: &File, op: FlockOperation) {
    if let Err(e) = rustix::fs::flock(file, op) {
        panic!("flock failed: {}", io::Error::from(e));
    }
}

/// `O_CLOEXEC`, as `custom_flags` takes it.
fn cloexec() -> i32 {
    i32::try_from(OFlags::CLOEXEC.bits()).expect("O_CLOEXEC fits an int")
}

/// Open (or create) the sidecar lock file, as the store does.
fn open_lock_file(p: &FloorPaths) -> File {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .mode(0o600)
        .custom_flags(cloexec())
        .open(&p.lock)
        .expect("open the lock file")
}

/// Open the sidecar lock file and take the exclusive lock.
pub fn floor_lock(p: &FloorPaths) -> File {
    let lock = open_lock_file(p);
    flock(&lock, FlockOperation::LockExclusive);
    lock
}

/// Read and hash auth.json (the generation), under the lock.
pub fn floor_read_hash(p: &FloorPaths) -> [u8; 32] {
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
        .custom_flags(cloexec())
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
pub fn floor_transaction(p: &FloorPaths, bytes: &[u8], counter: &mut u64) -> (Duration, Duration) {
    let start = Instant::now();
    let lock = floor_lock(p);
    read_replace_unlock(p, lock, bytes, counter, start)
}

/// The rest of a floor transaction begun at `start` and holding `lock`: read and hash, replace
/// the file, unlock; returns the time to the end of the read+hash and the total.
fn read_replace_unlock(
    p: &FloorPaths,
    lock: File,
    bytes: &[u8],
    counter: &mut u64,
    start: Instant,
) -> (Duration, Duration) {
    black_box(floor_read_hash(p));
    let opened = start.elapsed();
    floor_replace(p, bytes, counter);
    flock(&lock, FlockOperation::Unlock);
    drop(lock);
    (opened, start.elapsed())
}

/// Takes the lock as the store does: try without blocking, and when busy, wait in a helper
/// thread blocked in `flock(LOCK_EX)` that hands the descriptor back over a channel.
fn helper_lock(p: &FloorPaths) -> File {
    let lock = open_lock_file(p);
    if rustix::fs::flock(&lock, FlockOperation::NonBlockingLockExclusive).is_ok() {
        return lock;
    }
    let (tx, rx) = mpsc::sync_channel::<File>(1);
    std::thread::spawn(move || {
        flock(&lock, FlockOperation::LockExclusive);
        let _ = tx.send(lock);
    });
    rx.recv_timeout(Duration::from_secs(10))
        .expect("the lock wait timed out")
}

/// Diagnostic variants of the floor transaction, to find where the store's time goes. Named
/// `raw` followed by `+helper`, `+sweep` or `+sweep-noatime`, and `+work`.
#[derive(Clone, Copy)]
pub struct Variant {
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
    pub fn parse(kind: &str) -> Option<Variant> {
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
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC | OFlags::NOATIME;
    let fd = rustix::fs::open(dir, flags, rustix::fs::Mode::empty())
        .unwrap_or_else(|e| panic!("open the directory: {}", io::Error::from(e)));
    let mut stream = rustix::fs::Dir::new(fd).expect("read the directory");
    let mut names = Vec::new();
    while let Some(entry) = stream.read() {
        let entry = entry.expect("read a directory entry");
        names.push(entry.file_name().to_bytes().to_vec());
    }
    names
}

pub fn variant_transaction(
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
    read_replace_unlock(p, lock, bytes, counter, start)
}

/// One store transaction; returns the time `transaction()` took and the total.
pub fn store_transaction(store: &Store, doc: &AuthDotJson) -> (Duration, Duration) {
    let start = Instant::now();
    let tx = store.transaction().expect("transaction");
    let opened = start.elapsed();
    black_box(tx.commit(Some(doc)).expect("commit"));
    (opened, start.elapsed())
}

/// The floor of `Store::load()`: open + read + `serde_json::from_slice::<Value>`.
pub fn floor_load(path: &Path) -> serde_json::Value {
    let mut f = File::open(path).expect("open auth.json");
    let mut buf = Vec::with_capacity(4096);
    f.read_to_end(&mut buf).expect("read auth.json");
    serde_json::from_slice(&buf).expect("parse auth.json")
}

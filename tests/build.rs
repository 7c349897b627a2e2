//! Builds the fault injector `faults/faults.c` (an LD_PRELOAD library, see that file) with the
//! system C compiler, `$CC` or else `cc`, into `$OUT_DIR/libcodex_store_faults.so`, and hands
//! its path to the package's code as `env!("CODEX_STORE_FAULTS_SHIM")`.
//!
//! A missing or failing compiler fails the build, naming the compiler: the save tests must never
//! be skipped silently.

use std::env;
use std::path::PathBuf;
use std::process::Command;

fn main() {
    let manifest = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR"));
    let source = manifest.join("faults").join("faults.c");
    let shim = out_dir.join("libcodex_store_faults.so");
    println!("cargo:rerun-if-changed={}", source.display());
    println!("cargo:rerun-if-env-changed=CC");

    let cc = env::var_os("CC")
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| "cc".into());
    let shown = cc.to_string_lossy().into_owned();
    let output = Command::new(&cc)
        .args(["-shared", "-fPIC", "-O2", "-std=gnu11", "-Wall", "-Wextra"])
        .args(["-U_FORTIFY_SOURCE", "-pthread", "-o"])
        .arg(&shim)
        .arg(&source)
        .arg("-ldl")
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run the C compiler `{shown}` ({e}) to build {}: install a C compiler \
                 (e.g. `apt-get install gcc`) or set CC to one",
                source.display()
            )
        });
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "the C compiler `{shown}` failed ({}) to build {}:\n{stderr}",
        output.status,
        source.display()
    );
    for line in stderr.lines().filter(|l| !l.trim().is_empty()) {
        println!("cargo:warning=faults.c: {line}");
    }
    println!("cargo:rustc-env=CODEX_STORE_FAULTS_SHIM={}", shim.display());
}

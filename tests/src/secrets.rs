//! The test kit's one secret scanner: every test that checks that a token does not show, in a
//! message, a `Debug`, a journal or the output of a process, checks it here.
//!
//! - [`fingerprint`]: how a message names a secret without showing it (the first 12 hex digits
//!   of its SHA-256, the same as `Secret::fingerprint`).
//! - [`needles`]: what betrays a secret: the value itself and, for a JWT, its payload part alone
//!   (a partial leak shows the claims).
//! - [`assert_hides`]: a given text shows none of the given secrets; the message names the
//!   secret by fingerprint and shows the text redacted. [`assert_error_hides`] does it for the
//!   `Display` and the `Debug` ([`debug_of`]) of an error.
//! - The registry: every secret a test makes or receives from the fake endpoint is registered
//!   ([`register_secret`], [`register_issued`], [`register_last_issued`]); [`redact`] replaces
//!   each by its fingerprint, so a message built from a process's output is safe to print, and
//!   [`assert_no_registered_secret`] checks one text against all of them.
//! - The record of every `codex-store` run (filled by [`crate::cli_support`]) and
//!   [`assert_no_secret_leaked`]: no registered secret appears in any recorded stdout or stderr,
//!   except the stdout of `token`, whose whole point is to print the bearer.

use std::sync::{Mutex, MutexGuard, PoisonError};

use sha2::{Digest, Sha256};

use crate::fake_idp::{FakeIdp, Issued};

/// The shortest JWT payload that counts as a secret of its own: a shorter one (`e30` is `{}`)
/// could match anywhere.
const MIN_PAYLOAD_LEN: usize = 16;

static SECRETS: Mutex<Vec<String>> = Mutex::new(Vec::new());
static RECORDS: Mutex<Vec<Recorded>> = Mutex::new(Vec::new());

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

// ---------------------------------------------------------------------------------------------
// Naming and finding a secret
// ---------------------------------------------------------------------------------------------

/// The first 12 hex characters of the SHA-256 of `value`: shows which secret it is without
/// showing it (the same as `Secret::fingerprint`, and what the helper binaries print).
pub fn fingerprint(value: &str) -> String {
    Sha256::digest(value.as_bytes())[..6]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The strings that betray `secret`: the secret itself and, for a JWT whose payload has at least
/// 16 characters, that payload alone.
pub fn needles(secret: &str) -> Vec<String> {
    let mut needles = Vec::new();
    if secret.is_empty() {
        return needles;
    }
    needles.push(secret.to_owned());
    let parts: Vec<&str> = secret.split('.').collect();
    if parts.len() == 3 && parts[1].len() >= MIN_PAYLOAD_LEN {
        needles.push(parts[1].to_owned());
    }
    needles
}

/// `text` with every one of `needles` replaced by `<secret fingerprint>`, longest first (so that
/// a JWT is replaced before its payload).
fn redact_with(text: &str, needles: &[String]) -> String {
    let mut sorted: Vec<&String> = needles.iter().collect();
    sorted.sort_by_key(|s| std::cmp::Reverse(s.len()));
    let mut out = text.to_owned();
    for needle in sorted {
        if !needle.is_empty() && out.contains(needle.as_str()) {
            out = out.replace(
                needle.as_str(),
                &format!("<secret {}>", fingerprint(needle)),
            );
        }
    }
    out
}

/// Every secret of `secrets` (or payload of a JWT among them) that `text` shows, as
/// `secret <fingerprint>` or `the payload of secret <fingerprint>`.
pub fn shown_in(text: &str, secrets: &[impl AsRef<str>]) -> Vec<String> {
    let mut shown = Vec::new();
    for secret in secrets {
        let secret = secret.as_ref();
        let mut needles = needles(secret).into_iter();
        if needles
            .next()
            .is_some_and(|whole| text.contains(whole.as_str()))
        {
            shown.push(format!("secret {}", fingerprint(secret)));
        } else if needles
            .next()
            .is_some_and(|payload| text.contains(payload.as_str()))
        {
            shown.push(format!("the payload of secret {}", fingerprint(secret)));
        }
    }
    shown
}

/// Panics unless `text` (what `what` shows) contains none of `secrets`, nor the payload of a JWT
/// among them. The message names each secret found by fingerprint and shows `text` with every
/// one of `secrets` redacted.
#[track_caller]
pub fn assert_hides(what: &str, text: &str, secrets: &[impl AsRef<str>]) {
    let shown = shown_in(text, secrets);
    if !shown.is_empty() {
        let all: Vec<String> = secrets.iter().flat_map(|s| needles(s.as_ref())).collect();
        panic!(
            "{what} shows {} (redacted here): {}",
            shown.join(", "),
            redact_with(text, &all)
        );
    }
}

/// `Debug` of `value` in both the compact and the pretty form, one after the other: what a
/// secret check of a `Debug` looks at.
pub fn debug_of(value: &impl std::fmt::Debug) -> String {
    format!("{value:?}\n{value:#?}")
}

/// [`assert_hides`] for the `Display` of `error` and its `Debug` ([`debug_of`]); `what` names
/// the error in the message.
#[track_caller]
pub fn assert_error_hides(
    what: &str,
    error: &(impl std::fmt::Display + std::fmt::Debug),
    secrets: &[impl AsRef<str>],
) {
    assert_hides(&format!("{what} (Display)"), &error.to_string(), secrets);
    assert_hides(&format!("{what} (Debug)"), &debug_of(error), secrets);
}

// ---------------------------------------------------------------------------------------------
// The registry
// ---------------------------------------------------------------------------------------------

/// Registers a secret for [`assert_no_secret_leaked`], [`assert_no_registered_secret`] and
/// [`redact`]. For a JWT its payload part is registered too ([`needles`]), so that a partial leak
/// is caught as well.
pub fn register_secret(value: &str) {
    let mut secrets = lock(&SECRETS);
    for needle in needles(value) {
        if !secrets.contains(&needle) {
            secrets.push(needle);
        }
    }
}

/// Registers the three tokens the fake endpoint handed out.
pub fn register_issued(issued: &Issued) {
    register_secret(&issued.access_token);
    register_secret(&issued.refresh_token);
    register_secret(&issued.id_token);
}

/// Registers whatever the fake endpoint issued last (call it after a run that may have
/// refreshed).
pub fn register_last_issued(idp: &FakeIdp) {
    if let Some(issued) = idp.last_issued() {
        register_issued(&issued);
    }
}

/// Every registered secret (JWT payloads included).
fn registered() -> Vec<String> {
    lock(&SECRETS).clone()
}

/// `text` with every registered secret replaced by `<secret fingerprint>`: safe to show.
pub fn redact(text: &str) -> String {
    redact_with(text, &registered())
}

/// Whether `text` contains any registered secret.
pub fn shows_a_registered_secret(text: &str) -> bool {
    registered().iter().any(|s| text.contains(s.as_str()))
}

/// Panics unless `text` (what `what` shows) contains no registered secret; the message names the
/// secrets found by fingerprint and shows `text` redacted.
#[track_caller]
pub fn assert_no_registered_secret(what: &str, text: &str) {
    let found: Vec<String> = registered()
        .iter()
        .filter(|s| text.contains(s.as_str()))
        .map(|s| format!("secret {}", fingerprint(s)))
        .collect();
    assert!(
        found.is_empty(),
        "{what} shows {} (redacted here): {}",
        found.join(", "),
        redact(text)
    );
}

// ---------------------------------------------------------------------------------------------
// The record of every run, and the leak scan over it
// ---------------------------------------------------------------------------------------------

/// One finished run of `codex-store`, as recorded.
#[derive(Clone, Debug)]
pub struct Recorded {
    /// The arguments after `--home DIR`.
    pub args: Vec<String>,
    /// The subcommand (`token`, `inspect`, ...), if one was named.
    pub subcommand: Option<String>,
    /// Everything written to stdout.
    pub stdout: String,
    /// Everything written to stderr.
    pub stderr: String,
}

impl Recorded {
    /// The record of a run of `codex-store ARGS` that printed `stdout` and `stderr`.
    pub fn new(args: &[String], stdout: &str, stderr: &str) -> Recorded {
        Recorded {
            args: args.to_vec(),
            subcommand: subcommand_of(args),
            stdout: stdout.to_owned(),
            stderr: stderr.to_owned(),
        }
    }
}

/// Every run recorded so far in this process.
pub fn recorded() -> Vec<Recorded> {
    lock(&RECORDS).clone()
}

/// Records a finished run of `codex-store ARGS` for [`assert_no_secret_leaked`].
pub fn record(args: &[String], stdout: &str, stderr: &str) {
    lock(&RECORDS).push(Recorded::new(args, stdout, stderr));
}

/// The subcommand named by `args`: the first argument that is neither a global option nor the
/// value of one.
pub fn subcommand_of(args: &[String]) -> Option<String> {
    let mut iter = args.iter();
    while let Some(arg) = iter.next() {
        match arg.as_str() {
            // The global options that take a value (as a separate argument).
            "--home" | "--lock-timeout" | "--reuse-wait" | "--http-timeout" | "--fleet"
            | "--fleet-prefix" | "--fleet-user" | "--fleet-ca" | "--fleet-cert" | "--fleet-key"
            | "--machine" | "--fleet-lock-ttl" => {
                iter.next();
            }
            a if a.starts_with('-') => {}
            a => return Some(a.to_owned()),
        }
    }
    None
}

/// Every place a secret of `secrets` appears in `records`, except the stdout of `token`, as
/// `secret <fingerprint> in the <stream> of \`codex-store ARGS\``.
pub fn find_leaks(records: &[Recorded], secrets: &[String]) -> Vec<String> {
    let mut leaks = Vec::new();
    for rec in records {
        for secret in secrets {
            let mut streams = Vec::new();
            if rec.stderr.contains(secret.as_str()) {
                streams.push("stderr");
            }
            if rec.subcommand.as_deref() != Some("token") && rec.stdout.contains(secret.as_str()) {
                streams.push("stdout");
            }
            for stream in streams {
                leaks.push(format!(
                    "secret {} in the {stream} of `codex-store {}`",
                    fingerprint(secret),
                    redact(&rec.args.join(" "))
                ));
            }
        }
    }
    leaks
}

/// Panics, naming each leak by fingerprint, run and stream, if any registered secret appears in
/// anything recorded, except in the stdout of `token`.
#[track_caller]
pub fn assert_no_secret_leaked() {
    let records = recorded();
    let leaks = find_leaks(&records, &registered());
    assert!(
        leaks.is_empty(),
        "{} secret leak(s) in {} recorded runs:\n  {}",
        leaks.len(),
        records.len(),
        leaks.join("\n  ")
    );
    assert!(
        !records.is_empty(),
        "the leak scan found no recorded run at all: runs are not being recorded"
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jwt;

    fn rec(args: &[&str], stdout: &str, stderr: &str) -> Recorded {
        let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
        Recorded::new(&args, stdout, stderr)
    }

    #[test]
    fn the_subcommand_is_the_first_argument_that_is_no_global_option_or_its_value() {
        let args = |a: &[&str]| a.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        assert_eq!(
            subcommand_of(&args(&["--lock-timeout", "token", "inspect"])),
            Some("inspect".to_owned()),
            "the value of --lock-timeout was taken for the subcommand"
        );
        assert_eq!(
            subcommand_of(&args(&["-v", "token"])),
            Some("token".to_owned()),
            "-v was not skipped"
        );
        assert_eq!(
            subcommand_of(&args(&["--help"])),
            None,
            "--help is no subcommand"
        );
    }

    #[test]
    fn the_leak_scan_allows_the_bearer_on_the_stdout_of_token_only() {
        let secret = "sk-unit-test-secret".to_owned();
        let secrets = vec![secret.clone()];
        let clean = [
            rec(&["token"], "sk-unit-test-secret\n", ""),
            rec(&["inspect"], "fingerprint only", ""),
        ];
        assert!(
            find_leaks(&clean, &secrets).is_empty(),
            "the stdout of token must be allowed to hold the bearer"
        );
        let leaky = [
            rec(&["token"], "", "error: sk-unit-test-secret"),
            rec(
                &["--lock-timeout", "token", "inspect"],
                "sk-unit-test-secret",
                "",
            ),
            rec(&["-v", "refresh"], "", "debug sk-unit-test-secret"),
        ];
        let leaks = find_leaks(&leaky, &secrets);
        assert_eq!(leaks.len(), 3, "every leak must be found: {leaks:?}");
        assert!(
            leaks
                .iter()
                .all(|l| !l.contains(&secret) && l.contains(&fingerprint(&secret))),
            "leak reports must name the fingerprint, never the secret"
        );
    }

    #[test]
    fn a_registered_jwt_is_redacted_whole_and_its_payload_alone_is_caught_too() {
        let token = jwt::access_token(1_000, "unit-test-redaction");
        register_secret(&token);
        let payload = token.split('.').nth(1).unwrap_or_default().to_owned();
        let shown = redact(&format!("a {token} b {payload} c"));
        assert!(
            !shown.contains(&payload),
            "redact left a registered JWT or its payload in place"
        );
        assert!(
            shown.contains(&fingerprint(&token)) && shown.contains(&fingerprint(&payload)),
            "redact should replace secrets by their fingerprints"
        );
    }

    #[test]
    fn fingerprints_are_the_first_12_hex_digits_of_the_sha256() {
        assert_eq!(
            fingerprint(""),
            "e3b0c44298fc",
            "fingerprint of the empty string"
        );
        assert_eq!(
            fingerprint("sk-unit-test-secret"),
            codex_store::Secret::new("sk-unit-test-secret").fingerprint(),
            "the kit's fingerprint differs from Secret::fingerprint"
        );
    }

    #[test]
    fn assert_hides_catches_a_secret_and_the_payload_of_a_jwt_and_never_shows_them() {
        let token = jwt::access_token(2_000, "unit-test-hides");
        let payload = token.split('.').nth(1).unwrap_or_default().to_owned();
        assert_hides("a clean text", "nothing here", &[token.as_str(), "sk-x"]);
        for text in [format!("a {token} b"), format!("a {payload} b")] {
            let caught = std::panic::catch_unwind(|| {
                assert_hides("the text", &text, &[token.as_str()]);
            });
            let message = match caught {
                Ok(()) => panic!("assert_hides let a token or its payload through"),
                Err(e) => e
                    .downcast_ref::<String>()
                    .cloned()
                    .unwrap_or_else(|| "<not a String panic>".to_owned()),
            };
            assert!(
                !message.contains(&payload) && message.contains(&fingerprint(&token)),
                "assert_hides must name the secret by fingerprint and never show it: {message}"
            );
        }
    }
}

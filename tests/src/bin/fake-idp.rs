//! A fake token endpoint in its own process, for multi-process tests.
//!
//! Usage: `fake-idp --account ACC --email E --plan P --refresh-token RT [--delay-ms N]`.
//! Prints the endpoint URL as the first line on stdout, serves until stdin reaches EOF, then
//! prints `requests=<n>` and exits 0.

use codex_store_tests::fake_idp::FakeIdp;
use std::io::{self, Write};
use std::process::ExitCode;
use std::time::Duration;

const USAGE: &str =
    "usage: fake-idp --account ACC --email E --plan P --refresh-token RT [--delay-ms N]";

struct Args {
    account: String,
    email: String,
    plan: String,
    refresh_token: String,
    delay_ms: u64,
}

fn parse_args(mut args: impl Iterator<Item = String>) -> Result<Args, String> {
    let (mut account, mut email, mut plan, mut refresh_token) = (None, None, None, None);
    let mut delay_ms = 0;
    while let Some(flag) = args.next() {
        let mut value = || args.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--account" => account = Some(value()?),
            "--email" => email = Some(value()?),
            "--plan" => plan = Some(value()?),
            "--refresh-token" => refresh_token = Some(value()?),
            "--delay-ms" => {
                let v = value()?;
                delay_ms = v
                    .parse()
                    .map_err(|_| format!("--delay-ms: not a number: {v}"))?;
            }
            other => return Err(format!("unknown argument: {other}")),
        }
    }
    Ok(Args {
        account: account.ok_or("--account is required")?,
        email: email.ok_or("--email is required")?,
        plan: plan.ok_or("--plan is required")?,
        refresh_token: refresh_token.ok_or("--refresh-token is required")?,
        delay_ms,
    })
}

fn main() -> ExitCode {
    let args = match parse_args(std::env::args().skip(1)) {
        Ok(args) => args,
        Err(e) => {
            eprintln!("fake-idp: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let idp = FakeIdp::start(&args.account, &args.email, &args.plan, &args.refresh_token);
    idp.set_delay(Duration::from_millis(args.delay_ms));

    let mut stdout = io::stdout();
    if writeln!(stdout, "{}", idp.url())
        .and_then(|()| stdout.flush())
        .is_err()
    {
        return ExitCode::FAILURE;
    }
    // Serve until whoever started us closes our stdin (or dies).
    let _ = io::copy(&mut io::stdin().lock(), &mut io::sink());
    let requests = idp.requests();
    drop(idp);
    if writeln!(stdout, "requests={requests}")
        .and_then(|()| stdout.flush())
        .is_err()
    {
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

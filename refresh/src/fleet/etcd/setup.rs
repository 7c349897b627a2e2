//! The client's construction: the endpoints checked, the TLS files checked and loaded.

use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use super::{tls, Etcd};
use crate::fleet::{FleetConfig, FleetError};

impl Etcd {
    /// A client for `config`'s endpoints, with its TLS files and credentials.
    ///
    /// # Errors
    /// [`FleetError::Setting`] for no endpoint, an endpoint that is not an http(s) URL, half a
    /// client certificate or a client that cannot be built; [`FleetError::Io`] and
    /// [`FleetError::Tls`] for the TLS files.
    pub(crate) fn new(config: &FleetConfig) -> Result<Etcd, FleetError> {
        let endpoints = endpoints(config)?;
        let builder = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(config.request_timeout)
            .connect_timeout(config.request_timeout.min(Duration::from_secs(5)))
            // etcd is reached directly, never through a proxy from the environment.
            .no_proxy();
        let http = with_tls(builder, config)?
            .build()
            .map_err(|e| build_error(config, &e))?;
        Ok(Etcd {
            http,
            endpoints,
            username: config.username.clone(),
            password: config.password.clone(),
            token: Mutex::new(None),
        })
    }
}

/// `config`'s endpoints, each an http:// or https:// URL, without a trailing `/`.
fn endpoints(config: &FleetConfig) -> Result<Vec<String>, FleetError> {
    if config.endpoints.is_empty() {
        return Err(FleetError::Setting {
            message: "no etcd endpoint given: pass --fleet http(s)://host:port[,...]".into(),
        });
    }
    for endpoint in &config.endpoints {
        if !(endpoint.starts_with("http://") || endpoint.starts_with("https://")) {
            return Err(FleetError::Setting {
                message: format!(
                    "the etcd endpoint `{}` is not an http:// or https:// URL",
                    endpoint.escape_debug()
                ),
            });
        }
    }
    Ok(config
        .endpoints
        .iter()
        .map(|e| e.trim_end_matches('/').to_owned())
        .collect())
}

/// `builder` with `config`'s CA certificate and client certificate, each checked first.
fn with_tls(
    mut builder: reqwest::ClientBuilder,
    config: &FleetConfig,
) -> Result<reqwest::ClientBuilder, FleetError> {
    if let Some(ca) = &config.ca_file {
        builder = builder.add_root_certificate(root_certificate(ca)?);
    }
    match (&config.cert_file, &config.key_file) {
        (Some(cert), Some(key)) => Ok(builder.identity(identity(cert, key)?)),
        (None, None) => Ok(builder),
        _ => Err(FleetError::Setting {
            message: "a client certificate needs both --fleet-cert and --fleet-key".into(),
        }),
    }
}

/// The CA certificate in `ca`.
fn root_certificate(ca: &Path) -> Result<reqwest::Certificate, FleetError> {
    let pem = read_file(ca)?;
    // Checked here, so that a file that is PEM but no certificate is named with what is wrong
    // with it (the TLS library only says "builder error", later).
    tls::certificates(ca, &pem, false)?;
    reqwest::Certificate::from_pem(&pem).map_err(|e| FleetError::Tls {
        path: ca.to_path_buf(),
        reason: e.to_string(),
    })
}

/// The client certificate in `cert` with its private key in `key`.
fn identity(cert: &Path, key: &Path) -> Result<reqwest::Identity, FleetError> {
    let mut pem = read_file(cert)?;
    tls::certificates(cert, &pem, true)?;
    let key_pem = read_file(key)?;
    tls::private_key(key, &key_pem)?;
    pem.extend_from_slice(b"\n");
    pem.extend_from_slice(&key_pem);
    reqwest::Identity::from_pem(&pem).map_err(|e| FleetError::Tls {
        path: cert.to_path_buf(),
        reason: e.to_string(),
    })
}

/// Why the client could not be built, naming the TLS files when there are any.
fn build_error(config: &FleetConfig, e: &reqwest::Error) -> FleetError {
    let files: Vec<String> = [&config.ca_file, &config.cert_file, &config.key_file]
        .into_iter()
        .flatten()
        .map(|p| p.display().to_string())
        .collect();
    FleetError::Setting {
        message: if files.is_empty() {
            format!("cannot build the etcd client: {}", error_chain(e))
        } else {
            format!(
                "cannot use the fleet's TLS files ({}): {}; give PEM certificates \
                 (--fleet-ca, --fleet-cert) and a PEM private key (--fleet-key)",
                files.join(", "),
                error_chain(e)
            )
        },
    }
}

/// The largest TLS file read: a CA bundle of every public root is well under it.
const MAX_TLS_FILE: u64 = 1 << 20;

/// Reads a TLS file the user named (`--fleet-ca`, `--fleet-cert`, `--fleet-key`) with
/// [`codex_store::side_file::read_named`]: links followed, but never a blocking open, only a
/// regular file, and at most [`MAX_TLS_FILE`] bytes.
///
/// # Errors
/// [`FleetError::Io`] naming the file: missing, unreadable, not a regular file, or larger.
fn read_file(path: &Path) -> Result<Vec<u8>, FleetError> {
    use codex_store::side_file::{read_named, SideBytes};
    let failed = |source| FleetError::Io {
        path: path.to_path_buf(),
        source,
    };
    let refused = |kind, what: &str| failed(std::io::Error::new(kind, what));
    match read_named(path, MAX_TLS_FILE).map_err(failed)? {
        SideBytes::Bytes(bytes) => Ok(bytes),
        SideBytes::Missing => Err(refused(std::io::ErrorKind::NotFound, "no such file")),
        SideBytes::NotRegular => Err(refused(
            std::io::ErrorKind::InvalidInput,
            "not a regular file (a FIFO, a device or a directory?)",
        )),
        SideBytes::TooLarge => Err(refused(
            std::io::ErrorKind::InvalidInput,
            "larger than 1 MiB: not a certificate or key file",
        )),
    }
}

/// An error with its sources, `: `-separated.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

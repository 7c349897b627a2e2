//! The TLS files, checked before the TLS library sees them: PEM blocks of the right kind whose
//! contents are DER of the right shape, so that a wrong file is named with what is wrong with it.
use std::path::Path;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;

use crate::fleet::FleetError;

fn bad(path: &Path, reason: impl Into<String>) -> FleetError {
    FleetError::Tls {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

/// The PEM blocks of `text`: their labels and decoded contents.
fn blocks(path: &Path, bytes: &[u8]) -> Result<Vec<(String, Vec<u8>)>, FleetError> {
    let text = std::str::from_utf8(bytes)
        .map_err(|_| bad(path, "it is not text (a DER file? give it in PEM)"))?;
    let mut found = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find("-----BEGIN ") {
        let after = &rest[start + "-----BEGIN ".len()..];
        let label_end = after
            .find("-----")
            .ok_or_else(|| bad(path, "a BEGIN line that is not closed"))?;
        let label = after[..label_end].to_owned();
        let body = &after[label_end + 5..];
        let end_line = format!("-----END {label}-----");
        let end = body.find(&end_line).ok_or_else(|| {
            bad(
                path,
                format!("a `{}` block without its END line", label.escape_debug()),
            )
        })?;
        let data: String = body[..end]
            .chars()
            .filter(|c| !c.is_ascii_whitespace())
            .collect();
        let der = STANDARD.decode(data.as_bytes()).map_err(|_| {
            bad(
                path,
                format!("its `{}` block is not base64", label.escape_debug()),
            )
        })?;
        found.push((label, der));
        rest = &body[end + end_line.len()..];
    }
    if found.is_empty() {
        return Err(bad(path, "it holds no PEM block (-----BEGIN ...-----)"));
    }
    Ok(found)
}

/// One DER element at the start of `der`: its tag, its contents, and what follows it.
fn element(der: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = der.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
        (len, &rest[n..])
    };
    (rest.len() >= len).then(|| (tag, &rest[..len], &rest[len..]))
}

/// Whether `der` is shaped like an X.509 certificate: one SEQUENCE of the to-be-signed
/// SEQUENCE, the algorithm SEQUENCE and the signature BIT STRING, and nothing after it.
fn is_certificate(der: &[u8]) -> bool {
    let Some((0x30, inner, [])) = element(der) else {
        return false;
    };
    let Some((0x30, _, rest)) = element(inner) else {
        return false;
    };
    let Some((0x30, _, rest)) = element(rest) else {
        return false;
    };
    matches!(element(rest), Some((0x03, _, [])))
}

/// Checks that `path` holds PEM certificates, each shaped like one, and nothing else (but a
/// private key, with `keys_too`: a client certificate's file may hold its key).
pub(super) fn certificates(path: &Path, bytes: &[u8], keys_too: bool) -> Result<(), FleetError> {
    let blocks = blocks(path, bytes)?;
    let mut any = false;
    for (label, der) in &blocks {
        if keys_too && label.ends_with("PRIVATE KEY") {
            continue;
        }
        any = true;
        if label != "CERTIFICATE" {
            return Err(bad(
                path,
                format!(
                    "it holds a `{}` block where a CERTIFICATE was expected",
                    label.escape_debug()
                ),
            ));
        }
        if !is_certificate(der) {
            return Err(bad(
                path,
                "its CERTIFICATE block does not hold a certificate (its contents are not an \
                 X.509 certificate's DER)",
            ));
        }
    }
    if !any {
        return Err(bad(path, "it holds no CERTIFICATE block"));
    }
    Ok(())
}

/// Checks that `path` holds a PEM private key (PKCS#8, PKCS#1 or SEC1).
pub(super) fn private_key(path: &Path, bytes: &[u8]) -> Result<(), FleetError> {
    let blocks = blocks(path, bytes)?;
    let key = blocks
        .iter()
        .find(|(label, _)| label.ends_with("PRIVATE KEY"))
        .ok_or_else(|| bad(path, "it holds no PRIVATE KEY block"))?;
    if label_is_encrypted(&key.0) {
        return Err(bad(
            path,
            "its private key is encrypted; give it unencrypted",
        ));
    }
    match element(&key.1) {
        Some((0x30, _, [])) => Ok(()),
        _ => Err(bad(
            path,
            "its PRIVATE KEY block does not hold a key (its contents are not DER)",
        )),
    }
}

fn label_is_encrypted(label: &str) -> bool {
    label.starts_with("ENCRYPTED")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pem(label: &str, der: &[u8]) -> String {
        format!(
            "-----BEGIN {label}-----\n{}\n-----END {label}-----\n",
            STANDARD.encode(der)
        )
    }

    #[test]
    fn a_pem_file_that_is_no_certificate_is_named_with_what_is_wrong() {
        let path = Path::new("/etc/ca.pem");
        let cases = [
            (pem("PRIVATE KEY", &[0x30, 0x00]), "PRIVATE KEY"),
            (pem("CERTIFICATE", b"hello"), "does not hold a certificate"),
            (
                "-----BEGIN CERTIFICATE-----\n!!!\n-----END CERTIFICATE-----\n".to_owned(),
                "not base64",
            ),
            ("just text".to_owned(), "no PEM block"),
        ];
        for (text, want) in cases {
            let e = certificates(path, text.as_bytes(), false)
                .expect_err(&text)
                .to_string();
            assert!(
                e.contains("/etc/ca.pem") && e.contains(want),
                "{text:?}: the error must name the file and say `{want}`: {e}"
            );
        }
    }

    #[test]
    fn a_certificates_outline_passes() {
        // SEQUENCE { SEQUENCE {}, SEQUENCE {}, BIT STRING {0} }
        let der = [0x30, 0x07, 0x30, 0x00, 0x30, 0x00, 0x03, 0x01, 0x00];
        assert!(certificates(Path::new("x"), pem("CERTIFICATE", &der).as_bytes(), false).is_ok());
    }
}

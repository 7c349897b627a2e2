//! Certificates for the fleet's TLS tests: a CA, a server certificate for 127.0.0.1 (etcd) and a
//! client certificate, made with rcgen and written as PEM files into a directory.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
};

/// The PEM files of a test PKI.
pub struct TlsFiles {
    /// The CA certificate.
    pub ca: PathBuf,
    /// etcd's certificate (for 127.0.0.1 and localhost) and key.
    pub server_cert: PathBuf,
    /// The server key.
    pub server_key: PathBuf,
    /// A client certificate signed by the CA.
    pub client_cert: PathBuf,
    /// Its key.
    pub client_key: PathBuf,
}

impl TlsFiles {
    /// Makes the CA and both certificates in `dir`.
    pub fn generate(dir: &Path) -> TlsFiles {
        let ca_key = KeyPair::generate().expect("a CA key");
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA parameters");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "codex-store test CA");
        let ca_cert = ca_params.self_signed(&ca_key).expect("the CA certificate");
        let issuer = Issuer::new(ca_params, ca_key);
        let leaf = |purposes: Vec<ExtendedKeyUsagePurpose>, name: &str| {
            let key = KeyPair::generate().expect("a key");
            let mut params =
                CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
                    .expect("certificate parameters");
            params.distinguished_name.push(DnType::CommonName, name);
            params.extended_key_usages = purposes;
            let cert = params
                .signed_by(&key, &issuer)
                .expect("a signed certificate");
            (cert.pem(), key.serialize_pem())
        };
        // etcd's gateway connects to its own gRPC server with the server certificate, so with
        // client certificate authentication that certificate must serve as a client one too.
        let (server_cert, server_key) = leaf(
            vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ],
            "etcd",
        );
        let (client_cert, client_key) =
            leaf(vec![ExtendedKeyUsagePurpose::ClientAuth], "codex-store");
        let write = |name: &str, pem: &str| {
            let path = dir.join(name);
            std::fs::write(&path, pem)
                .unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
            path
        };
        TlsFiles {
            ca: write("ca.pem", &ca_cert.pem()),
            server_cert: write("server.pem", &server_cert),
            server_key: write("server-key.pem", &server_key),
            client_cert: write("client.pem", &client_cert),
            client_key: write("client-key.pem", &client_key),
        }
    }
}

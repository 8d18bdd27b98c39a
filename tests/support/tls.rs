//! A certificate authority made in the test: its certificate for the client
//! side (`--ca-file`) and a server certificate for given IP addresses.

use std::path::{Path, PathBuf};

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};

/// The PEM files of a test CA and of one server certificate it signed.
pub struct TestCa {
    pub ca_pem: PathBuf,
    pub cert_pem: PathBuf,
    pub key_pem: PathBuf,
}

/// Writes `ca.pem`, `cert.pem` (for `names`: IP addresses or DNS names) and
/// `key.pem` into `dir`.
pub fn make_test_ca(dir: &Path, names: &[&str]) -> TestCa {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "punchscope test CA");
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_key = KeyPair::generate().unwrap();
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    let mut params = CertificateParams::new(names).unwrap();
    params
        .distinguished_name
        .push(DnType::CommonName, "punchscope test collector");
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &ca, &ca_key).unwrap();
    let files = TestCa {
        ca_pem: dir.join("ca.pem"),
        cert_pem: dir.join("cert.pem"),
        key_pem: dir.join("key.pem"),
    };
    std::fs::write(&files.ca_pem, ca.pem()).unwrap();
    std::fs::write(&files.cert_pem, cert.pem()).unwrap();
    std::fs::write(&files.key_pem, key.serialize_pem()).unwrap();
    files
}

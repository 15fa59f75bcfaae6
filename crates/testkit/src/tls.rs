//! A certificate authority made for one test, and a broker certificate it
//! signs, for `amqps://` against a private node.

use std::path::{Path, PathBuf};

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};

/// PEM files in a directory of the test's: the CA's certificate (what a
/// client trusts with `--ca-cert`), and the broker's certificate and key.
pub struct TestCa {
    pub ca_cert: PathBuf,
    pub broker_cert: PathBuf,
    pub broker_key: PathBuf,
}

impl TestCa {
    /// Makes a CA and a certificate for a broker at `localhost` and
    /// `127.0.0.1`, and writes them under `dir`.
    pub fn new(dir: &Path) -> TestCa {
        let mut ca = CertificateParams::new(Vec::new()).expect("CA parameters");
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(DnType::CommonName, "ytnotify test CA");
        let ca_key = KeyPair::generate().expect("a CA key");
        let ca_cert = ca.self_signed(&ca_key).expect("the CA certificate");
        let issuer = Issuer::new(ca, ca_key);

        let mut broker =
            CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
                .expect("broker parameters");
        broker
            .distinguished_name
            .push(DnType::CommonName, "localhost");
        let broker_key = KeyPair::generate().expect("a broker key");
        let broker_cert = broker
            .signed_by(&broker_key, &issuer)
            .expect("the broker certificate");

        let files = TestCa {
            ca_cert: dir.join("ca.pem"),
            broker_cert: dir.join("broker.pem"),
            broker_key: dir.join("broker.key"),
        };
        std::fs::write(&files.ca_cert, ca_cert.pem()).unwrap();
        std::fs::write(&files.broker_cert, broker_cert.pem()).unwrap();
        std::fs::write(&files.broker_key, broker_key.serialize_pem()).unwrap();
        files
    }
}

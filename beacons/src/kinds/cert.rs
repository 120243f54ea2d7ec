//! `beacon/cert`: days until a TLS certificate expires, read from a PEM file or from a server.
//!
//! `path = "/etc/ssl/certs/site.pem"` (the first certificate in the file: the leaf of a chain)
//! or `host = "example.org:443"` (`server_name` for SNI when it differs from the host;
//! `timeout`, 10 s). Reports `{source, subject, issuer, not_after, days_left}`; `days_left` is
//! negative once expired. The server's certificate is read whether or not it would verify —
//! an expired or self-signed one is exactly what this is for. A file that is missing or not a
//! certificate, or a server that does not answer, is a failure of the beacon. Default:
//! threshold on `days_left` below 14, clearing at 15; checked hourly.

use super::Defaults;
use crate::config::{ConfigError, Fields};
use crate::gate::Mode;
use crate::{obj, round2, Beacon, Out};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use std::net::{TcpStream, ToSocketAddrs};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// What `cert` does when its config says nothing.
pub const DEFAULTS: Defaults = Defaults {
    interval: Duration::from_secs(3600),
    mode: Mode::Threshold,
    field: Some("days_left"),
    fields: &["days_left"],
    above: None,
    below: Some(14.0),
    hysteresis: 1.0,
};

/// Where the certificate is read.
pub enum Source {
    /// A PEM file.
    File(PathBuf),
    /// A TLS server, through a handshake.
    Server {
        /// Where to connect.
        host: String,
        /// Its port.
        port: u16,
        /// The name sent in the handshake (SNI).
        server_name: String,
    },
}

/// The `cert` beacon: days until a certificate expires.
pub struct Cert {
    source: Source,
    timeout: Duration,
}

impl Cert {
    /// Build it from the fields of its `[[beacon]]` table.
    pub fn from_config(f: &mut Fields) -> Result<Cert, ConfigError> {
        let path = f.string("path")?;
        let host = f.string("host")?;
        let sni = f.string("server_name")?;
        let timeout = f.duration("timeout")?.unwrap_or(Duration::from_secs(10));
        let source = match (path, host) {
            (Some(p), None) => {
                if sni.is_some() {
                    return Err(f.error("server_name", "only means something with `host`"));
                }
                Source::File(PathBuf::from(p))
            }
            (None, Some(h)) => {
                let (name, port) = split_host_port(&h).ok_or_else(|| {
                    f.error(
                        "host",
                        format!("{h:?} is not host:port (e.g. \"example.org:443\")"),
                    )
                })?;
                let server_name = sni.unwrap_or_else(|| name.clone());
                if ServerName::try_from(server_name.clone()).is_err() {
                    return Err(f.error(
                        if f.has("server_name") {
                            "server_name"
                        } else {
                            "host"
                        },
                        format!("{server_name:?} is not a valid server name"),
                    ));
                }
                Source::Server {
                    host: name,
                    port,
                    server_name,
                }
            }
            (Some(_), Some(_)) => return Err(f.error("host", "give `path` or `host`, not both")),
            (None, None) => {
                return Err(f.missing("path", "a PEM `path` or a server `host` (host:port)"))
            }
        };
        Ok(Cert { source, timeout })
    }

    /// Read the certificate at `source`, giving up on a server after `timeout`.
    pub fn new(source: Source, timeout: Duration) -> Cert {
        Cert { source, timeout }
    }

    fn source_name(&self) -> String {
        match &self.source {
            Source::File(p) => p.display().to_string(),
            Source::Server { host, port, .. } => format!("{host}:{port}"),
        }
    }

    /// The DER of the certificate to judge.
    fn fetch(&self) -> Result<Vec<u8>, String> {
        match &self.source {
            Source::File(p) => {
                let bytes =
                    std::fs::read(p).map_err(|e| format!("cannot read {}: {e}", p.display()))?;
                for pem in x509_parser::pem::Pem::iter_from_buffer(&bytes) {
                    let pem = pem.map_err(|e| format!("{}: bad PEM: {e}", p.display()))?;
                    if pem.label == "CERTIFICATE" {
                        return Ok(pem.contents);
                    }
                }
                Err(format!("{}: no CERTIFICATE in the file", p.display()))
            }
            Source::Server {
                host,
                port,
                server_name,
            } => peer_certificate(host, *port, server_name, self.timeout),
        }
    }
}

/// "host:port" or "[v6]:port".
fn split_host_port(s: &str) -> Option<(String, u16)> {
    let (h, p) = s.rsplit_once(':')?;
    let h = h.trim_start_matches('[').trim_end_matches(']');
    if h.is_empty() {
        return None;
    }
    Some((h.to_string(), p.parse().ok()?))
}

/// Accepts any certificate: the beacon reads certificates, it does not trust them.
#[derive(Debug)]
struct ReadOnly(Arc<CryptoProvider>);

impl ServerCertVerifier for ReadOnly {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Handshake with a server and return its leaf certificate.
fn peer_certificate(
    host: &str,
    port: u16,
    server_name: &str,
    timeout: Duration,
) -> Result<Vec<u8>, String> {
    let what = format!("{host}:{port}");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup: {e}"))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(ReadOnly(provider)))
        .with_no_client_auth();
    let name = ServerName::try_from(server_name.to_string())
        .map_err(|e| format!("{server_name:?}: {e}"))?;
    let mut conn = rustls::ClientConnection::new(Arc::new(config), name)
        .map_err(|e| format!("{what}: {e}"))?;
    let addr = (host, port)
        .to_socket_addrs()
        .map_err(|e| format!("{what}: cannot resolve: {e}"))?
        .next()
        .ok_or_else(|| format!("{what}: no address"))?;
    let mut sock =
        TcpStream::connect_timeout(&addr, timeout).map_err(|e| format!("{what}: {e}"))?;
    sock.set_read_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    sock.set_write_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    while conn.is_handshaking() {
        conn.complete_io(&mut sock)
            .map_err(|e| format!("{what}: TLS handshake: {e}"))?;
    }
    conn.peer_certificates()
        .and_then(|c| c.first())
        .map(|c| c.as_ref().to_vec())
        .ok_or_else(|| format!("{what}: the server sent no certificate"))
}

impl Beacon for Cert {
    fn kind(&self) -> &'static str {
        "cert"
    }

    fn sample(&mut self, out: &mut Out) -> Result<(), String> {
        let source = self.source_name();
        let der = self.fetch()?;
        let (_, cert) = x509_parser::parse_x509_certificate(&der)
            .map_err(|e| format!("{source}: not an X.509 certificate: {e}"))?;
        let not_after = cert.validity().not_after.timestamp();
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0);
        out.measure(
            "",
            obj! {
                "source" => source,
                "subject" => cert.subject().to_string(),
                "issuer" => cert.issuer().to_string(),
                "not_after" => not_after,
                "days_left" => round2((not_after as f64 - now) / 86400.0),
            },
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A self-signed certificate for `localhost` valid until `not_after`, with its key.
    fn make(not_after: (i32, u8, u8)) -> (rcgen::Certificate, rcgen::KeyPair) {
        let mut params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        params.not_before = rcgen::date_time_ymd(2020, 1, 1);
        params.not_after = rcgen::date_time_ymd(not_after.0, not_after.1, not_after.2);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "reflex test");
        let key = rcgen::KeyPair::generate().unwrap();
        (params.self_signed(&key).unwrap(), key)
    }

    fn days_until(unix: i64) -> f64 {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        (unix as f64 - now) / 86400.0
    }

    fn sample(c: &mut Cert) -> Result<serde_json::Map<String, serde_json::Value>, String> {
        let mut out = Out::default();
        c.sample(&mut out)?;
        Ok(out.readings.remove(0).data)
    }

    // 2099-01-01 and 2021-01-01 as Unix time.
    const Y2099: i64 = 4_070_908_800;
    const Y2021: i64 = 1_609_459_200;

    #[test]
    fn days_left_from_a_pem_file_and_an_expired_one() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = make((2099, 1, 1));
        let path = dir.path().join("site.pem");
        // A chain file with the key first: the first CERTIFICATE is the one judged.
        std::fs::write(&path, format!("{}{}", key.serialize_pem(), cert.pem())).unwrap();
        let mut c = Cert::new(Source::File(path.clone()), Duration::from_secs(5));
        let d = sample(&mut c).unwrap();
        assert_eq!(d["not_after"], Y2099);
        assert!((d["days_left"].as_f64().unwrap() - days_until(Y2099)).abs() < 0.01);
        assert!(d["subject"].as_str().unwrap().contains("reflex test"));

        let (old, _) = make((2021, 1, 1));
        std::fs::write(&path, old.pem()).unwrap();
        let d = sample(&mut c).unwrap();
        assert_eq!(d["not_after"], Y2021);
        assert!(d["days_left"].as_f64().unwrap() < 0.0);

        std::fs::write(&path, "not a certificate").unwrap();
        assert!(sample(&mut c).unwrap_err().contains("no CERTIFICATE"));
        std::fs::remove_file(&path).unwrap();
        assert!(sample(&mut c).unwrap_err().contains("cannot read"));
    }

    #[test]
    fn days_left_from_a_local_tls_server() {
        let (cert, key) = make((2099, 1, 1));
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let server_config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![cert.der().clone()],
                rustls::pki_types::PrivateKeyDer::try_from(key.serialize_der()).unwrap(),
            )
            .unwrap();
        let server_config = Arc::new(server_config);
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        std::thread::spawn(move || {
            if let Some(Ok(mut s)) = l.incoming().next() {
                let mut conn = rustls::ServerConnection::new(server_config).unwrap();
                while conn.is_handshaking() {
                    if conn.complete_io(&mut s).is_err() {
                        break;
                    }
                }
            }
        });
        let mut c = Cert::new(
            Source::Server {
                host: "127.0.0.1".into(),
                port,
                server_name: "localhost".into(),
            },
            Duration::from_secs(10),
        );
        let d = sample(&mut c).unwrap();
        assert_eq!(d["not_after"], Y2099);
        assert_eq!(d["source"], format!("127.0.0.1:{port}"));

        // Nothing listens there any more: a failure, naming the server.
        let e = sample(&mut c).unwrap_err();
        assert!(e.contains(&format!("127.0.0.1:{port}")), "{e}");
    }

    #[test]
    fn host_port_forms() {
        assert_eq!(
            split_host_port("example.org:443"),
            Some(("example.org".into(), 443))
        );
        assert_eq!(split_host_port("[::1]:8443"), Some(("::1".into(), 8443)));
        assert_eq!(split_host_port("example.org"), None);
        assert_eq!(split_host_port(":443"), None);
    }
}

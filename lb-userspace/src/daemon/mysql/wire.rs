//! MySQL packets on the wire (3-byte length, sequence number) over the check's stream, which
//! becomes TLS when the login asks for it.
use std::{net::Ipv4Addr, sync::Arc};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio_rustls::rustls::{
    self, DigitallySignedStruct, SignatureScheme,
    client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    crypto::CryptoProvider,
    pki_types::{CertificateDer, ServerName, UnixTime},
};

/// The longest packet a check reads: a greeting is ~80 bytes, `SELECT 1`'s answer ~60, an RSA
/// public key ~450. A backend announcing more is broken or hostile; nothing larger is allocated.
pub const MAX_PACKET: usize = 16 * 1024;

pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

pub struct Wire {
    pub s: Box<dyn Io>,
    /// The sequence number of the next packet to send.
    pub seq: u8,
}

impl Wire {
    pub async fn read(&mut self, what: &str) -> Result<Vec<u8>, String> {
        let mut hdr = [0u8; 4];
        self.exact(&mut hdr, what).await?;
        let len = u32::from_le_bytes([hdr[0], hdr[1], hdr[2], 0]) as usize;
        if len > MAX_PACKET {
            return Err(format!(
                "mysql: {what}: a packet of {len} bytes (more than a check reads)"
            ));
        }
        let mut payload = vec![0u8; len];
        self.exact(&mut payload, what).await?;
        self.seq = hdr[3].wrapping_add(1);
        Ok(payload)
    }

    async fn exact(&mut self, buf: &mut [u8], what: &str) -> Result<(), String> {
        match self.s.read_exact(buf).await {
            Ok(_) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                Err(format!("mysql: {what}: connection closed by the server"))
            }
            Err(e) => Err(format!("mysql: {what}: reading: {e}")),
        }
    }

    pub async fn write(&mut self, payload: &[u8]) -> Result<(), String> {
        let mut buf = Vec::with_capacity(4 + payload.len());
        buf.extend_from_slice(&(payload.len() as u32).to_le_bytes()[..3]);
        buf.push(self.seq);
        buf.extend_from_slice(payload);
        self.seq = self.seq.wrapping_add(1);
        self.s
            .write_all(&buf)
            .await
            .map_err(|e| format!("mysql: writing: {e}"))
    }

    /// Upgrades the stream to TLS. As MySQL's `ssl-mode=REQUIRED`, the connection is
    /// encrypted but the server's certificate is not verified: the check proves the server
    /// answers a login, and keeps the password off the wire in clear.
    pub async fn start_tls(self, server: Ipv4Addr) -> Result<Wire, String> {
        let provider = Arc::new(provider());
        let config = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("mysql: TLS: {e}"))?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
            .with_no_client_auth();
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        let name = ServerName::IpAddress(std::net::IpAddr::V4(server).into());
        let tls = connector
            .connect(name, self.s)
            .await
            .map_err(|e| format!("mysql: TLS handshake: {e}"))?;
        Ok(Wire {
            s: Box::new(tls),
            seq: self.seq,
        })
    }
}

/// rustls on *ring*, which builds with the C compiler alone (aws-lc-rs needs cmake); rustls
/// deprecates it for lacking post-quantum key exchange, which a health check's session can do
/// without.
#[allow(deprecated)]
pub fn provider() -> CryptoProvider {
    rustls::crypto::ring::default_provider()
}

/// Accepts any certificate, checking only that the handshake's signatures are sound.
#[derive(Debug)]
struct AnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
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

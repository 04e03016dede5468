//! Protection of the web endpoints, as Prometheus's exporter-toolkit does it: TLS from cert and key files (re-read when they change), basic auth against bcrypt hashes, and a bearer token read from a file.
//!
//! Each part is optional and off by default. The `[web]` section:
//! ```toml
//! [web]
//! tls_cert_file = "/etc/creditwatch/tls.crt"   # PEM chain, leaf first
//! tls_key_file = "/etc/creditwatch/tls.key"    # PEM private key (PKCS#8, PKCS#1 or SEC1)
//! bearer_token_file = "/etc/creditwatch/token" # `Authorization: Bearer <token>`
//! [web.basic_auth_users]
//! prometheus = "$2y$10$..."                    # bcrypt hash (htpasswd -nBC 10 prometheus)
//! ```
//! With users or a token, every endpoint asks for credentials except `/-/healthy` and
//! `/-/ready`, which serve no data (readiness then names no accounts), so liveness and readiness
//! probes and load balancers need none.

use crate::config::{Parser, display_path, span_of};
use crate::secret::Secret;
use axum::http::{HeaderValue, header};
use base64::Engine as _;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use serde::Deserialize;
use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use toml::Spanned;
use toml::de::DeValue;

/// The validated `[web]` section. The default protects nothing.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct WebConfig {
    pub tls: Option<TlsFiles>,
    /// User name to bcrypt hash.
    pub basic_auth_users: BTreeMap<String, String>,
    /// The token `Authorization: Bearer` must carry, read from `bearer_token_file`.
    pub bearer_token: Option<Secret>,
    pub bearer_token_file: Option<PathBuf>,
}

impl WebConfig {
    /// Whether requests must carry credentials.
    pub fn requires_auth(&self) -> bool {
        !self.basic_auth_users.is_empty() || self.bearer_token.is_some()
    }
}

/// The certificate chain and key files of the HTTPS listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

#[derive(Deserialize)]
struct RawWeb {
    tls_cert_file: Option<Spanned<PathBuf>>,
    tls_key_file: Option<Spanned<PathBuf>>,
    basic_auth_users: Option<BTreeMap<String, Spanned<String>>>,
    bearer_token_file: Option<Spanned<PathBuf>>,
}

fn resolve(base_dir: &Path, p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        base_dir.join(p)
    }
}

/// Parses the `web` value of the config's root table, reporting every problem with its place.
pub(crate) fn parse(
    p: &mut Parser<'_>,
    key_span: std::ops::Range<usize>,
    value: Spanned<DeValue<'_>>,
    base_dir: &Path,
) -> WebConfig {
    let span = value.span();
    if !matches!(value.get_ref(), DeValue::Table(_)) {
        p.at(Some(key_span), "`web` must be a table: write it as [web]");
        return WebConfig::default();
    }
    let (raw, ignored) = crate::config::deserialize_tracking::<RawWeb>(value.clone());
    for segs in ignored {
        p.at(
            span_of(&value, &segs),
            format!("unknown key `web.{}`", display_path(&segs)),
        );
    }
    let raw = match raw {
        Ok(r) => r,
        Err(e) => {
            p.toml_error(&e);
            return WebConfig::default();
        }
    };
    let mut web = WebConfig::default();

    match (&raw.tls_cert_file, &raw.tls_key_file) {
        (None, None) => {}
        (Some(c), None) => p.at(
            Some(c.span()),
            "web.tls_cert_file needs web.tls_key_file too",
        ),
        (None, Some(k)) => p.at(
            Some(k.span()),
            "web.tls_key_file needs web.tls_cert_file too",
        ),
        (Some(c), Some(k)) => {
            let files = TlsFiles {
                cert_file: resolve(base_dir, c.get_ref()),
                key_file: resolve(base_dir, k.get_ref()),
            };
            match load_certified_key(&files) {
                Ok(_) => {
                    if crate::config::world_readable(&files.key_file) {
                        p.warn(format!(
                            "web.tls_key_file {} is readable by every user; chmod 600 it",
                            files.key_file.display()
                        ));
                    }
                    web.tls = Some(files);
                }
                Err(TlsLoadError::Cert(m)) => p.at(Some(c.span()), m),
                Err(TlsLoadError::Key(m)) => p.at(Some(k.span()), m),
            }
        }
    }

    for (name, hash) in raw.basic_auth_users.iter().flatten() {
        if name.is_empty() || name.contains(':') {
            p.at(
                Some(hash.span()),
                format!(
                    "web.basic_auth_users: user name {name:?} must be non-empty and without ':'"
                ),
            );
        } else if bcrypt::HashParts::from_str(hash.get_ref()).is_err() {
            // The value is not echoed: it may be a password pasted by mistake.
            p.at(
                Some(hash.span()),
                format!(
                    "web.basic_auth_users.{name} is not a bcrypt hash (\"$2y$10$\" and 53 more characters); make one with: htpasswd -nBC 10 {name}"
                ),
            );
        } else {
            web.basic_auth_users
                .insert(name.clone(), hash.get_ref().clone());
        }
    }

    if let Some(f) = &raw.bearer_token_file {
        let path = resolve(base_dir, f.get_ref());
        match std::fs::read_to_string(&path) {
            Ok(t) if !t.trim().is_empty() => {
                if crate::config::world_readable(&path) {
                    p.warn(format!(
                        "web.bearer_token_file {} is readable by every user; chmod 600 it",
                        path.display()
                    ));
                }
                web.bearer_token = Some(Secret::new(t.trim()));
                web.bearer_token_file = Some(path);
            }
            Ok(_) => p.at(
                Some(f.span()),
                format!("web.bearer_token_file {} is empty", path.display()),
            ),
            Err(e) => p.at(
                Some(f.span()),
                format!("cannot read web.bearer_token_file {}: {e}", path.display()),
            ),
        }
    }
    let _ = span;
    web
}

// ---------------------------------------------------------------------------------------------
// Authentication.

/// A bcrypt hash that matches no password, verified for unknown users so that a wrong user name
/// takes as long as a wrong password and names cannot be guessed from timing.
const DUMMY_HASH: &str = "$2b$10$9x.l5GdIOg3LkNI5n/C5KuCNcnNHvi0oTdZaFxgLI6xLPpdP1Xo.G";

/// How many verified credentials are remembered, so bcrypt (slow on purpose) runs once per
/// credential rather than once per scrape.
const VERIFIED_CACHE: usize = 256;

/// The credentials requests must carry; swapped as a whole on reload.
#[derive(Debug, Default)]
pub struct Auth {
    users: BTreeMap<String, String>,
    token: Option<Secret>,
    /// SHA-256 of (user, password, hash) of credentials bcrypt has accepted.
    verified: Mutex<HashSet<Vec<u8>>>,
}

impl Auth {
    pub fn new(config: &WebConfig) -> Auth {
        Auth {
            users: config.basic_auth_users.clone(),
            token: config.bearer_token.clone(),
            verified: Mutex::default(),
        }
    }

    /// Whether requests must carry credentials.
    pub fn required(&self) -> bool {
        !self.users.is_empty() || self.token.is_some()
    }

    /// Whether `authorization` (the header, if any) carries valid credentials.
    pub async fn check(&self, authorization: Option<&HeaderValue>) -> bool {
        let Some(value) = authorization.and_then(|v| v.to_str().ok()) else {
            return false;
        };
        let (scheme, rest) = value.trim().split_once(' ').unwrap_or((value, ""));
        if scheme.eq_ignore_ascii_case("bearer") {
            return match &self.token {
                Some(t) => aws_lc_rs::constant_time::verify_slices_are_equal(
                    rest.trim().as_bytes(),
                    t.expose().as_bytes(),
                )
                .is_ok(),
                None => false,
            };
        }
        if !scheme.eq_ignore_ascii_case("basic") || self.users.is_empty() {
            return false;
        }
        let Some((user, password)) = base64::engine::general_purpose::STANDARD
            .decode(rest.trim())
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
            .and_then(|s| {
                s.split_once(':')
                    .map(|(u, p)| (u.to_string(), p.to_string()))
            })
        else {
            return false;
        };
        let (hash, known) = match self.users.get(&user) {
            Some(h) => (h.clone(), true),
            None => (DUMMY_HASH.to_string(), false),
        };
        let digest = {
            let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
            for part in [user.as_bytes(), password.as_bytes(), hash.as_bytes()] {
                ctx.update(&(part.len() as u64).to_le_bytes());
                ctx.update(part);
            }
            ctx.finish().as_ref().to_vec()
        };
        if known && self.verified.lock().unwrap().contains(&digest) {
            return true;
        }
        // bcrypt costs tens of milliseconds of CPU by design: a flood of wrong passwords waits
        // its turn here instead of taking every core from the pollers.
        static BCRYPT_SLOTS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(2);
        let Ok(_slot) = BCRYPT_SLOTS.acquire().await else {
            return false;
        };
        let ok = tokio::task::spawn_blocking(move || {
            bcrypt::verify(password.as_bytes(), &hash).unwrap_or(false)
        })
        .await
        .unwrap_or(false);
        if ok && known {
            let mut v = self.verified.lock().unwrap();
            if v.len() >= VERIFIED_CACHE {
                v.clear();
            }
            v.insert(digest);
        }
        ok && known
    }

    /// The `WWW-Authenticate` challenge of a 401.
    pub fn challenge(&self) -> &'static str {
        if self.users.is_empty() {
            "Bearer realm=\"creditwatch\""
        } else {
            "Basic realm=\"creditwatch\", charset=\"UTF-8\""
        }
    }
}

/// The paths served without credentials: probes that carry no data.
pub fn is_open(path: &str) -> bool {
    matches!(path, "/-/healthy" | "/-/ready")
}

/// Middleware: answers 401 unless the request carries valid credentials (when any are
/// configured) or asks for an open path.
pub async fn require_auth(
    axum::extract::State(auth): axum::extract::State<Arc<RwLock<Arc<Auth>>>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let auth = auth.read().unwrap().clone();
    if !auth.required()
        || is_open(req.uri().path())
        || auth.check(req.headers().get(header::AUTHORIZATION)).await
    {
        return next.run(req).await;
    }
    tracing::debug!(
        path = req.uri().path(),
        "request without valid credentials refused"
    );
    (
        axum::http::StatusCode::UNAUTHORIZED,
        [(header::WWW_AUTHENTICATE, auth.challenge())],
        "Unauthorized\n",
    )
        .into_response()
}

// ---------------------------------------------------------------------------------------------
// TLS.

/// Why a certificate and key could not be loaded; says which file is at fault.
#[derive(Debug)]
pub enum TlsLoadError {
    Cert(String),
    Key(String),
}

impl std::fmt::Display for TlsLoadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TlsLoadError::Cert(m) | TlsLoadError::Key(m) => f.write_str(m),
        }
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// Reads and checks a certificate chain and its private key.
pub fn load_certified_key(files: &TlsFiles) -> Result<CertifiedKey, TlsLoadError> {
    let cert_path = files.cert_file.display();
    let key_path = files.key_file.display();
    let cert_pem = std::fs::read(&files.cert_file).map_err(|e| {
        TlsLoadError::Cert(format!("cannot read web.tls_cert_file {cert_path}: {e}"))
    })?;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| {
            TlsLoadError::Cert(format!(
                "web.tls_cert_file {cert_path} is not valid PEM: {e}"
            ))
        })?;
    if certs.is_empty() {
        return Err(TlsLoadError::Cert(format!(
            "web.tls_cert_file {cert_path} holds no PEM certificate"
        )));
    }
    let key_pem = std::fs::read(&files.key_file)
        .map_err(|e| TlsLoadError::Key(format!("cannot read web.tls_key_file {key_path}: {e}")))?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| {
        TlsLoadError::Key(format!(
            "web.tls_key_file {key_path} holds no usable PEM private key: {e}"
        ))
    })?;
    CertifiedKey::from_der(certs, key, &provider()).map_err(|e| {
        TlsLoadError::Key(format!(
            "web.tls_key_file {key_path} does not fit web.tls_cert_file {cert_path}: {e}"
        ))
    })
}

/// What a file looked like when it was last read: a change of either re-reads both.
type Stamp = Option<(SystemTime, u64)>;

fn stamp(p: &Path) -> Stamp {
    let m = std::fs::metadata(p).ok()?;
    Some((m.modified().ok()?, m.len()))
}

#[derive(Debug)]
struct Loaded {
    files: TlsFiles,
    /// The files' stamps when last tried, loaded or not: a bad file is not retried until it
    /// changes again.
    tried: (Stamp, Stamp),
    key: Arc<CertifiedKey>,
}

/// Serves the certificate from its files, re-reading them when they change (checked at every
/// handshake, two `stat` calls). A file that fails to load keeps the previous certificate in
/// service and is logged; renewal tools that write the two files one after the other are
/// handled, since a mismatched pair is simply tried again when the second file changes.
#[derive(Debug)]
pub struct CertResolver {
    loaded: RwLock<Loaded>,
}

impl CertResolver {
    pub fn new(files: &TlsFiles) -> Result<Arc<CertResolver>, TlsLoadError> {
        let tried = (stamp(&files.cert_file), stamp(&files.key_file));
        let key = Arc::new(load_certified_key(files)?);
        Ok(Arc::new(CertResolver {
            loaded: RwLock::new(Loaded {
                files: files.clone(),
                tried,
                key,
            }),
        }))
    }

    /// Points the resolver at new files (a reload); they are read at the next handshake.
    pub fn set_files(&self, files: &TlsFiles) {
        let mut l = self.loaded.write().unwrap();
        if l.files != *files {
            l.files = files.clone();
            l.tried = (None, None);
        }
    }

    fn refresh(&self) {
        let (files, tried) = {
            let l = self.loaded.read().unwrap();
            (l.files.clone(), l.tried)
        };
        let now = (stamp(&files.cert_file), stamp(&files.key_file));
        if now == tried {
            return;
        }
        let result = load_certified_key(&files);
        let mut l = self.loaded.write().unwrap();
        l.tried = now;
        match result {
            Ok(k) => {
                l.key = Arc::new(k);
                tracing::info!(cert = %files.cert_file.display(), "TLS certificate reloaded");
            }
            Err(e) => {
                tracing::error!(error = %e, "TLS certificate not reloaded; the previous one stays in use")
            }
        }
    }
}

impl ResolvesServerCert for CertResolver {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.refresh();
        Some(self.loaded.read().unwrap().key.clone())
    }
}

/// The rustls server config of the HTTPS listener.
pub fn server_config(resolver: Arc<CertResolver>) -> Arc<rustls::ServerConfig> {
    let mut c = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("the provider supports the default protocol versions")
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    c.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(c)
}

/// How long a client may take to complete the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// A listener that hands axum finished TLS connections. Handshakes run in their own tasks, so a
/// slow or silent client never holds up the others.
pub struct TlsListener {
    rx: mpsc::Receiver<(tokio_rustls::server::TlsStream<TcpStream>, SocketAddr)>,
    local: SocketAddr,
}

impl TlsListener {
    pub fn new(
        tcp: TcpListener,
        config: Arc<rustls::ServerConfig>,
        cancel: CancellationToken,
    ) -> std::io::Result<TlsListener> {
        let local = tcp.local_addr()?;
        let (tx, rx) = mpsc::channel(64);
        let acceptor = tokio_rustls::TlsAcceptor::from(config);
        tokio::spawn(async move {
            loop {
                let (stream, peer) = tokio::select! {
                    _ = cancel.cancelled() => return,
                    r = tcp.accept() => match r {
                        Ok(c) => c,
                        Err(e) => {
                            // Out of file descriptors and the like: wait rather than spin.
                            tracing::warn!(error = %e, "accept failed");
                            tokio::time::sleep(Duration::from_millis(100)).await;
                            continue;
                        }
                    },
                };
                // As for plain HTTP (see `app::start`): no 40 ms stalls on delayed ACKs.
                let _ = stream.set_nodelay(true);
                let acceptor = acceptor.clone();
                let tx = tx.clone();
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => {
                            let _ = tx.send((tls, peer)).await;
                        }
                        Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                });
            }
        });
        Ok(TlsListener { rx, local })
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.rx.recv().await {
            Some(c) => c,
            // The accept loop ended (shutdown): wait for the server to stop.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_web(src: &str, dir: &Path) -> Result<crate::config::Config, Vec<String>> {
        let full = format!(
            "{src}\n[[account]]\nname = \"a\"\nprovider = \"fluximage\"\napi_key = \"k\"\nbilling_anchor = \"2026-01-15\"\n"
        );
        crate::config::Config::parse(&full, Path::new("t.toml"), dir, &|_| None)
            .map(|(c, _)| c)
            .map_err(|e| e.problems.iter().map(|p| p.to_string()).collect())
    }

    #[test]
    fn bad_values_are_located() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("empty"), "").unwrap();
        std::fs::write(dir.path().join("garbage.pem"), "not a certificate").unwrap();
        let e = parse_web(
            "[web]\ntls_cert_file = \"missing.crt\"\ntls_key_file = \"missing.key\"\nbearer_token_file = \"empty\"\nport = 1\n[web.basic_auth_users]\nalice = \"hunter2\"\n",
            dir.path(),
        )
        .unwrap_err();
        let d = dir.path().display();
        assert_eq!(
            e,
            vec![
                "t.toml:5:1: unknown key `web.port`".to_string(),
                format!(
                    "t.toml:2:17: cannot read web.tls_cert_file {d}/missing.crt: No such file or directory (os error 2)"
                ),
                "t.toml:7:9: web.basic_auth_users.alice is not a bcrypt hash (\"$2y$10$\" and 53 more characters); make one with: htpasswd -nBC 10 alice".to_string(),
                format!("t.toml:4:21: web.bearer_token_file {d}/empty is empty"),
            ]
        );
        assert!(
            !e.iter().any(|m| m.contains("hunter2")),
            "a pasted password is not echoed"
        );
        let e = parse_web(
            "[web]\ntls_cert_file = \"garbage.pem\"\ntls_key_file = \"garbage.pem\"\n",
            dir.path(),
        )
        .unwrap_err();
        assert_eq!(
            e,
            vec![format!(
                "t.toml:2:17: web.tls_cert_file {d}/garbage.pem holds no PEM certificate"
            )]
        );
        let e = parse_web("[web]\ntls_key_file = \"x\"\n", dir.path()).unwrap_err();
        assert_eq!(
            e,
            vec!["t.toml:2:16: web.tls_key_file needs web.tls_cert_file too"]
        );
    }

    #[test]
    fn auth_turns_reload_on_by_default() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("token"), "t0ken-value\n").unwrap();
        let public: SocketAddr = "0.0.0.0:9477".parse().unwrap();
        let c = parse_web("listen = \"0.0.0.0:9477\"", dir.path()).unwrap();
        assert!(!c.reload_enabled(public));
        let c = parse_web(
            "listen = \"0.0.0.0:9477\"\n[web]\nbearer_token_file = \"token\"",
            dir.path(),
        )
        .unwrap();
        assert!(c.web.requires_auth());
        assert_eq!(c.web.bearer_token.as_ref().unwrap().expose(), "t0ken-value");
        assert!(c.reload_enabled(public));
        let c = parse_web(
            "listen = \"0.0.0.0:9477\"\nenable_reload = false\n[web]\nbearer_token_file = \"token\"",
            dir.path(),
        )
        .unwrap();
        assert!(!c.reload_enabled(public), "an explicit choice wins");
    }

    #[tokio::test]
    async fn credentials_are_checked_and_cached() {
        let hash = bcrypt::hash("s3cret", 4).unwrap();
        let auth = Auth::new(&WebConfig {
            basic_auth_users: [("prom".to_string(), hash)].into(),
            bearer_token: Some(Secret::new("tok-123456")),
            ..Default::default()
        });
        let basic = |u: &str, p: &str| {
            HeaderValue::from_str(&format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"))
            ))
            .unwrap()
        };
        assert!(auth.check(Some(&basic("prom", "s3cret"))).await);
        assert_eq!(auth.verified.lock().unwrap().len(), 1);
        assert!(auth.check(Some(&basic("prom", "s3cret"))).await);
        assert!(!auth.check(Some(&basic("prom", "wrong"))).await);
        assert!(!auth.check(Some(&basic("eve", "s3cret"))).await);
        assert!(
            !auth
                .check(Some(&HeaderValue::from_static("Basic !!!")))
                .await
        );
        assert!(
            auth.check(Some(&HeaderValue::from_static("Bearer tok-123456")))
                .await
        );
        assert!(
            auth.check(Some(&HeaderValue::from_static("bearer  tok-123456 ")))
                .await
        );
        assert!(
            !auth
                .check(Some(&HeaderValue::from_static("Bearer tok-12345")))
                .await
        );
        assert!(!auth.check(None).await);
        assert_eq!(auth.verified.lock().unwrap().len(), 1);
        assert!(bcrypt::HashParts::from_str(DUMMY_HASH).is_ok());
    }
}

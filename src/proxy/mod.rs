//! The fluxrouter metering reverse proxy: a transparent streaming forwarder to one upstream that books every response's cost.
//!
//! FluxRouter has no usage API; the only machine-readable spend is the `X-Flux-Cost-Usd` header
//! of each non-streaming response. Applications point their base URL at the proxy, which
//! forwards every request to the configured upstream only (never an open proxy), streams both
//! bodies without buffering, and books each cost in the account's ledger ([`meter`]) before the
//! response is released. The `fluxrouter` provider's poll reads the period's spend from the same
//! ledger, so pools and forecasts follow the usual path.

pub mod cost;
pub mod meter;
pub mod server;

pub use meter::{Counters, Meter};
pub use server::ProxyServer;

use crate::forecast::schedule::Schedule;
use axum::http::Uri;
use axum::http::uri::{Authority, PathAndQuery, Scheme};
use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

/// Where the proxy forwards: scheme, host and port, and an optional path prefix.
#[derive(Clone, PartialEq, Eq)]
pub struct Upstream {
    scheme: Scheme,
    authority: Authority,
    /// Prepended to every request path; empty or starting with `/`, never ending with one.
    prefix: String,
}

impl fmt::Debug for Upstream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self}")
    }
}

impl fmt::Display for Upstream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}{}", self.scheme, self.authority, self.prefix)
    }
}

impl Upstream {
    /// Parses an `http` or `https` URL without credentials, query or fragment.
    pub fn parse(text: &str) -> Result<Upstream, String> {
        let url = reqwest::Url::parse(text.trim())
            .map_err(|e| format!("invalid upstream URL {text:?}: {e}"))?;
        let scheme = match url.scheme() {
            "http" => Scheme::HTTP,
            "https" => Scheme::HTTPS,
            other => return Err(format!("upstream must be http or https, not {other:?}")),
        };
        if !url.username().is_empty() || url.password().is_some() {
            return Err(
                "upstream must not contain credentials: clients send their own Authorization"
                    .into(),
            );
        }
        if url.query().is_some() || url.fragment().is_some() {
            return Err("upstream must not have a query or fragment".into());
        }
        let host = url
            .host_str()
            .ok_or_else(|| format!("upstream {text:?} has no host"))?;
        let authority = match url.port() {
            Some(p) => format!("{host}:{p}"),
            None => host.to_string(),
        };
        let authority: Authority = authority
            .parse()
            .map_err(|e| format!("invalid upstream host {authority:?}: {e}"))?;
        Ok(Upstream {
            scheme,
            authority,
            prefix: url.path().trim_end_matches('/').to_string(),
        })
    }

    /// The upstream URI for a request's path and query. Only the path and query of the incoming
    /// request are used, so an absolute-form target naming another host still goes upstream.
    pub fn uri_for(&self, pq: Option<&PathAndQuery>) -> Result<Uri, String> {
        let pq = pq.map(PathAndQuery::as_str).unwrap_or("/");
        if !pq.starts_with('/') {
            return Err(format!("request target {pq:?} is not a path"));
        }
        Uri::builder()
            .scheme(self.scheme.clone())
            .authority(self.authority.clone())
            .path_and_query(format!("{}{pq}", self.prefix))
            .build()
            .map_err(|e| format!("cannot build the upstream URI: {e}"))
    }
}

/// What a running proxy needs; a reload swaps it in without restarting the listener unless
/// `listen` changed.
#[derive(Debug, Clone, PartialEq)]
pub struct ProxyConfig {
    pub account: String,
    pub listen: SocketAddr,
    pub upstream: Upstream,
    /// How long the upstream may take to send response headers (a body may stream for longer).
    pub upstream_timeout: Duration,
    /// The billing periods spend is booked into.
    pub schedule: Schedule,
    /// Per-key attribution: key hash → name. Empty turns attribution off.
    pub keys: BTreeMap<String, String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_urls() {
        let u = Upstream::parse("https://api.fluxrouter.ai").unwrap();
        assert_eq!(u.to_string(), "https://api.fluxrouter.ai");
        let pq: PathAndQuery = "/v1/chat/completions?x=1".parse().unwrap();
        assert_eq!(
            u.uri_for(Some(&pq)).unwrap().to_string(),
            "https://api.fluxrouter.ai/v1/chat/completions?x=1"
        );
        let u = Upstream::parse("http://127.0.0.1:8080/gw/flux/").unwrap();
        assert_eq!(
            u.uri_for(Some(&pq)).unwrap().to_string(),
            "http://127.0.0.1:8080/gw/flux/v1/chat/completions?x=1"
        );
        assert_eq!(
            u.uri_for(None).unwrap().to_string(),
            "http://127.0.0.1:8080/gw/flux/"
        );
        let u = Upstream::parse("http://[::1]:9/").unwrap();
        assert_eq!(u.to_string(), "http://[::1]:9");
        for (bad, why) in [
            ("ftp://x", "http or https"),
            ("https://user:pw@x", "credentials"),
            ("https://x/?a=1", "query"),
            ("not a url", "invalid upstream URL"),
        ] {
            let e = Upstream::parse(bad).unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
        }
    }
}

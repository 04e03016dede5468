//! The one shared HTTP client and the fetch helper every provider uses: size cap, error classes, Retry-After.

use crate::providers::PollError;
use bytes::{Bytes, BytesMut};
use reqwest::StatusCode;
use reqwest::header::{HeaderValue, RETRY_AFTER};
use std::time::Duration;

/// `User-Agent` sent upstream, so providers can see who is polling.
pub const USER_AGENT: &str = concat!("creditwatch/", env!("CARGO_PKG_VERSION"));

/// The shared client: rustls, connection pooling, no redirects followed across hosts.
#[derive(Debug, Clone)]
pub struct HttpClient {
    pub client: reqwest::Client,
}

impl HttpClient {
    pub fn new() -> Result<Self, reqwest::Error> {
        let client = reqwest::Client::builder()
            .user_agent(USER_AGENT)
            .connect_timeout(Duration::from_secs(10))
            // A usage endpoint that redirects is misconfigured; never carry a key to a new host.
            .redirect(reqwest::redirect::Policy::none())
            .pool_idle_timeout(Duration::from_secs(90))
            .build()?;
        Ok(HttpClient { client })
    }
}

/// A fully read upstream response.
#[derive(Debug)]
pub struct Fetched {
    pub status: StatusCode,
    /// The one header a poll reads. Kept alone rather than cloning the whole header map, which
    /// cost every poll an allocation per header.
    pub retry_after: Option<HeaderValue>,
    pub body: Bytes,
}

/// Sends a request and reads the body, refusing bodies over `max_bytes` so memory stays bounded
/// whatever the upstream sends. Transport failures become `connect`/`timeout`/`http` errors with
/// the URL stripped.
pub async fn fetch(req: reqwest::RequestBuilder, max_bytes: u64) -> Result<Fetched, PollError> {
    let mut resp = req.send().await.map_err(transport_error)?;
    let status = resp.status();
    let retry_after = resp.headers().get(RETRY_AFTER).cloned();
    if let Some(len) = resp.content_length()
        && len > max_bytes
    {
        return Err(PollError::parse(format!(
            "response body of {len} bytes is over the {max_bytes}-byte cap (max_response_bytes)"
        )));
    }
    // Sized once when the length is known: a 3 MB body grown by doubling is copied twice over.
    let mut body = BytesMut::with_capacity(resp.content_length().unwrap_or(0) as usize);
    while let Some(chunk) = resp.chunk().await.map_err(transport_error)? {
        if body.len() as u64 + chunk.len() as u64 > max_bytes {
            return Err(PollError::parse(format!(
                "response body is over the {max_bytes}-byte cap (max_response_bytes)"
            )));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(Fetched {
        status,
        retry_after,
        body: body.freeze(),
    })
}

fn transport_error(e: reqwest::Error) -> PollError {
    let e = e.without_url();
    if e.is_timeout() {
        PollError::Timeout(Duration::ZERO)
    } else if e.is_connect() {
        PollError::Connect(error_chain(&e))
    } else if e.is_body() || e.is_decode() {
        PollError::parse(format!("body could not be read: {}", error_chain(&e)))
    } else {
        PollError::Connect(error_chain(&e))
    }
}

/// The error and its sources on one line ("error sending request: connection refused").
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(src) = cur {
        let m = src.to_string();
        if !s.contains(&m) {
            s.push_str(": ");
            s.push_str(&m);
        }
        cur = src.source();
    }
    s
}

impl Fetched {
    /// The usual status mapping: 2xx passes, 401/403 are `auth`, 429 is `rate_limited` (with
    /// Retry-After), anything else `http`. `detail` extracts the provider's error message from the
    /// body, if it documents one.
    pub fn check_status(&self, detail: fn(&[u8]) -> Option<String>) -> Result<(), PollError> {
        if self.status.is_success() {
            return Ok(());
        }
        let detail = detail(&self.body).map(|d| sanitize(&d));
        let status = self.status.as_u16();
        Err(match status {
            401 | 403 => PollError::Auth { status, detail },
            429 => PollError::RateLimited {
                retry_after: retry_after(self.retry_after.as_ref(), chrono::Utc::now()),
                detail,
            },
            _ => PollError::Http { status, detail },
        })
    }
}

/// Reads a `Retry-After` value as delay-seconds or an HTTP date.
pub fn retry_after(
    value: Option<&HeaderValue>,
    now: chrono::DateTime<chrono::Utc>,
) -> Option<Duration> {
    let v = value?.to_str().ok()?.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let when = chrono::DateTime::parse_from_rfc2822(v).ok()?;
    let delta = when.with_timezone(&chrono::Utc) - now;
    Some(delta.to_std().unwrap_or(Duration::ZERO))
}

/// Keeps an upstream message printable and short before it reaches a log line.
pub fn sanitize(s: &str) -> String {
    let cleaned: String = s
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(200)
        .collect();
    cleaned.trim().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_in_seconds_and_as_a_date() {
        let now = chrono::DateTime::parse_from_rfc3339("2026-11-21T10:00:00Z")
            .unwrap()
            .with_timezone(&chrono::Utc);
        let v = |s: &str| Some(HeaderValue::from_str(s).unwrap());
        assert_eq!(
            retry_after(v("120").as_ref(), now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(
            retry_after(v("Sat, 21 Nov 2026 10:01:30 GMT").as_ref(), now),
            Some(Duration::from_secs(90))
        );
        assert_eq!(retry_after(v("soon").as_ref(), now), None);
        assert_eq!(retry_after(None, now), None);
    }

    #[test]
    fn sanitize_strips_control_characters_and_truncates() {
        assert_eq!(sanitize("bad\nkey\x1b[31m"), "bad key [31m");
        assert_eq!(sanitize(&"x".repeat(500)).len(), 200);
    }
}

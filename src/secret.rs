//! A wrapper for API keys and tokens that never prints its contents.

use std::fmt;

/// An API key or token. `Debug` and `Display` print `***`, so a secret that slips into a log line,
/// an error message or a `{:?}` dump of the config stays hidden. Read it with [`Secret::expose`].
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The secret itself, for the one place that must send it (an Authorization header).
    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Secrets (or parts of them) shorter than this are not scrubbed from text: a real key is
/// longer, and scrubbing a short string would garble unrelated words.
pub const MIN_REDACT_LEN: usize = 8;

impl Secret {
    /// `text` with every occurrence of any of `secrets` replaced by `***`: for messages that quote
    /// an upstream, which may echo the key it was sent ("invalid key sk-..."). A secret with a
    /// scheme (`Bearer sk-...`) is also scrubbed by its parts.
    pub fn redact(text: &str, secrets: &[&Secret]) -> String {
        let mut out = text.to_string();
        Secret::scrub(&mut out, secrets);
        out
    }

    /// [`Secret::redact`] in place: `text` is rewritten only when it holds a secret, so the
    /// label values of every poll (nearly always clean) cost a search, not a copy.
    pub fn scrub(text: &mut String, secrets: &[&Secret]) {
        for s in secrets {
            let whole = s.expose();
            let parts = std::iter::once(whole).chain(whole.split_whitespace());
            for p in parts {
                if p.len() >= MIN_REDACT_LEN && text.contains(p) {
                    *text = text.replace(p, "***");
                }
            }
        }
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_and_display_hide_the_value() {
        let s = Secret::new("flx_live_abc123");
        assert_eq!(format!("{s:?}"), "***");
        assert_eq!(format!("{s}"), "***");
        assert_eq!(format!("{:?}", Some(&s)), "Some(***)");
        assert_eq!(s.expose(), "flx_live_abc123");
    }

    #[test]
    fn redact_scrubs_whole_secrets_and_their_parts() {
        let key = Secret::new("flx_live_abc123");
        let header = Secret::new("Bearer sk-or-v1-0123456789");
        let short = Secret::new("k");
        let all = [&key, &header, &short];
        assert_eq!(
            Secret::redact("invalid key flx_live_abc123 (flx_live_abc123)", &all),
            "invalid key *** (***)"
        );
        assert_eq!(
            Secret::redact("token sk-or-v1-0123456789 revoked", &all),
            "token *** revoked"
        );
        assert_eq!(Secret::redact("keep this text", &all), "keep this text");
    }
}

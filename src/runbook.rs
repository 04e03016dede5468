//! The runbook (`docs/runbook.md`, built into the binary) rendered as a self-contained page for `/runbook`.
//!
//! Every alert's `runbook_url` points at a section of this page, so on-call reads the runbook of
//! the very version that raised the alert. Headings get the same ids GitHub gives them
//! (`## CreditsLow` → `#creditslow`), so the same anchors work on the Markdown file itself.

use pulldown_cmark::{CowStr, Event, Parser, Tag, TagEnd, html};
use std::sync::OnceLock;

/// The runbook's Markdown source.
pub const MARKDOWN: &str = include_str!("../docs/runbook.md");

/// GitHub's heading anchor: lower case, spaces to dashes, other punctuation dropped.
pub fn slug(text: &str) -> String {
    text.trim()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c.to_ascii_lowercase()),
            _ => None,
        })
        .collect()
}

/// The runbook as a complete HTML page (rendered once).
pub fn html_page() -> &'static str {
    static PAGE: OnceLock<String> = OnceLock::new();
    PAGE.get_or_init(|| {
        let events: Vec<Event> = Parser::new(MARKDOWN).collect();
        // Give each heading an id from its text.
        let mut out = Vec::with_capacity(events.len());
        let mut i = 0;
        while i < events.len() {
            if let Event::Start(Tag::Heading {
                level,
                id: None,
                classes,
                attrs,
            }) = &events[i]
            {
                let mut text = String::new();
                for e in &events[i + 1..] {
                    match e {
                        Event::End(TagEnd::Heading(_)) => break,
                        Event::Text(t) | Event::Code(t) => text.push_str(t),
                        _ => {}
                    }
                }
                out.push(Event::Start(Tag::Heading {
                    level: *level,
                    id: Some(CowStr::from(slug(&text))),
                    classes: classes.clone(),
                    attrs: attrs.clone(),
                }));
            } else {
                out.push(events[i].clone());
            }
            i += 1;
        }
        let mut body = String::new();
        html::push_html(&mut body, out.into_iter());
        format!(
            "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>creditwatch runbook</title>\n\
             <style>body{{font-family:sans-serif;max-width:52em;margin:2em auto;padding:0 1em;line-height:1.5}}\
             pre{{background:#f4f4f4;padding:.8em;overflow-x:auto}}code{{background:#f4f4f4}}h2{{border-top:1px solid #ddd;padding-top:1em}}</style>\n\
             </head><body>\n<p><a href=\"/\">creditwatch</a> {version}</p>\n{body}</body></html>\n",
            version = crate::metrics::VERSION
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_alert_section_has_its_anchor() {
        let page = html_page();
        for alert in [
            "CreditsExhaustionBeforeReset",
            "CreditsExhaustionImminent",
            "CreditsLow",
            "CreditsExhausted",
            "CreditwatchAccountDown",
            "ApiKeyExpiringSoon",
        ] {
            let id = format!("<h2 id=\"{}\">{alert}</h2>", alert.to_lowercase());
            assert!(page.contains(&id), "missing {id}");
        }
        assert_eq!(slug("The built-in alerter"), "the-built-in-alerter");
    }
}

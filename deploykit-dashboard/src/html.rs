//! HTML building blocks: escaping, the page frame, badges, the traffic bar.

use std::fmt::Write as _;

use deploykit_core::{Phase, Timestamp};

/// `text` with `&`, `<`, `>`, `"` and `'` escaped, for element content and quoted attributes.
pub(crate) fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// `text` percent-encoded for one path segment or query value.
pub(crate) fn url_part(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// The navigation entries: (path, label).
const NAV: [(&str, &str); 5] = [
    ("/", "Services"),
    ("/previews", "Previews"),
    ("/backups", "Backups"),
    ("/audit", "Audit log"),
    ("/logout", "Sign out"),
];

/// A whole page around `main` (which is also what a live refresh replaces).
pub(crate) fn page(title: &str, active: &str, actor: &str, main: &str) -> String {
    let mut nav = String::new();
    for (path, label) in NAV {
        let current = if path == active {
            " aria-current=\"page\""
        } else {
            ""
        };
        let _ = write!(nav, "<a href=\"{path}\"{current}>{label}</a>");
    }
    format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{title} · deploykit</title>\
         <link rel=\"stylesheet\" href=\"/assets/dashboard.css\">\
         <script src=\"/assets/dashboard.js\" defer></script></head>\
         <body><header><span class=\"brand\">deploykit</span><nav>{nav}</nav>\
         <span class=\"who\">signed in as <b>{actor}</b></span>\
         <span id=\"live\" class=\"live off\" title=\"live updates\">offline</span></header>\
         <div class=\"layout\"><main id=\"main\">{main}</main>\
         <aside><h2>Live events</h2><ol id=\"ticker\"></ol></aside></div></body></html>\n",
        title = esc(title),
        actor = esc(actor),
    )
}

/// A phase as a coloured badge.
pub(crate) fn phase_badge(phase: Phase) -> String {
    let class = match phase {
        Phase::Succeeded => "ok",
        Phase::RolledBack | Phase::Failed | Phase::Frozen => "bad",
        Phase::RollingBack => "warn",
        Phase::Paused => "wait",
        Phase::Pending | Phase::Progressing => "run",
    };
    format!(
        "<span class=\"badge {class}\" data-phase=\"{phase}\">{phase}</span>",
        phase = esc(&phase.to_string())
    )
}

/// `2026-12-06 01:20:57` (UTC), with the full timestamp as a tooltip.
pub(crate) fn time(t: Timestamp) -> String {
    let full = t.to_string();
    let short = full.get(..19).unwrap_or(&full).replace('T', " ");
    format!("<time datetime=\"{full}\">{short}</time>")
}

/// The colour class of the `i`-th revision in a split.
fn colour(i: usize) -> usize {
    i % 6
}

/// A horizontal bar of shares `(label, percent)` (SVG: no inline styles, so the page's
/// content security policy can forbid them), with a legend.
pub(crate) fn split_bar(shares: &[(String, u32)]) -> String {
    if shares.is_empty() {
        return "<span class=\"muted\">no traffic</span>".to_string();
    }
    let mut bar = String::from(
        "<svg class=\"split\" viewBox=\"0 0 100 6\" preserveAspectRatio=\"none\" role=\"img\">",
    );
    let mut legend = String::from("<span class=\"legend\">");
    let mut x = 0u32;
    for (i, (label, pct)) in shares.iter().enumerate() {
        let pct = (*pct).min(100 - x.min(100));
        let _ = write!(
            bar,
            "<rect class=\"c{c}\" x=\"{x}\" y=\"0\" width=\"{pct}\" height=\"6\">\
             <title>{l} {pct}%</title></rect>",
            c = colour(i),
            l = esc(label)
        );
        let _ = write!(
            legend,
            "<span class=\"key c{c}\" data-revision=\"{l}\" data-weight=\"{pct}\">{l} {pct}%</span>",
            c = colour(i),
            l = esc(label)
        );
        x += pct;
    }
    bar.push_str("</svg>");
    legend.push_str("</span>");
    format!("<span class=\"traffic\">{bar}{legend}</span>")
}

/// A form posting `action` to `path` with the session's form token, an optional reason
/// field, and a button.
pub(crate) fn action_form(
    path: &str,
    label: &str,
    class: &str,
    form_token: &str,
    reason: bool,
    extra: &str,
) -> String {
    let reason = if reason {
        "<input name=\"reason\" placeholder=\"reason (for the audit log)\" maxlength=\"500\">"
    } else {
        ""
    };
    format!(
        "<form method=\"post\" action=\"{path}\" class=\"action\">\
         <input type=\"hidden\" name=\"form_token\" value=\"{form_token}\">{extra}{reason}\
         <button type=\"submit\" class=\"{class}\" data-action=\"{label_attr}\">{label}</button></form>",
        path = esc(path),
        label_attr = esc(&label.to_lowercase()),
        label = esc(label),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_leaves_no_markup_and_urls_no_separators() {
        let hostile = "<script>alert('x')</script>\"&";
        let e = esc(hostile);
        assert!(!e.contains('<') && !e.contains('>') && !e.contains('"') && !e.contains('\''));
        assert_eq!(
            e,
            "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;&quot;&amp;"
        );
        assert_eq!(url_part("a/b c?d#é"), "a%2Fb%20c%3Fd%23%C3%A9");
    }

    #[test]
    fn a_split_never_draws_past_its_end() {
        let bar = split_bar(&[("v2".into(), 75), ("v3".into(), 25), ("v4".into(), 40)]);
        assert!(bar.contains("x=\"75\" y=\"0\" width=\"25\""), "{bar}");
        assert!(bar.contains("x=\"100\" y=\"0\" width=\"0\""), "{bar}");
        assert_eq!(split_bar(&[]), "<span class=\"muted\">no traffic</span>");
    }
}

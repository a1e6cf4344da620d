//! Log text → safe HTML: every character is HTML-escaped, SGR colour codes (`ESC [ … m`)
//! become `<span class="…">` with classes from a fixed set, and every other escape sequence
//! and control character is dropped. The output never contains a character that came from the
//! log unescaped, and never an attribute value that came from the log, so a build that prints
//! `<script>` shows `<script>` as text.

use std::fmt::Write as _;

/// The current SGR state: what the open `<span>` says.
#[derive(Clone, Copy, Default, PartialEq, Eq)]
struct Style {
    fg: Option<u8>,
    bg: Option<u8>,
    bold: bool,
    dim: bool,
    italic: bool,
    underline: bool,
}

impl Style {
    fn is_plain(&self) -> bool {
        *self == Style::default()
    }

    fn classes(&self) -> String {
        let mut out = String::new();
        let mut add = |c: &str| {
            if !out.is_empty() {
                out.push(' ');
            }
            out.push_str(c);
        };
        if let Some(fg) = self.fg {
            add(&format!("a-f{fg}"));
        }
        if let Some(bg) = self.bg {
            add(&format!("a-b{bg}"));
        }
        if self.bold {
            add("a-bold");
        }
        if self.dim {
            add("a-dim");
        }
        if self.italic {
            add("a-it");
        }
        if self.underline {
            add("a-ul");
        }
        out
    }

    /// Apply one SGR parameter list.
    fn apply(&mut self, params: &[u16]) {
        if params.is_empty() {
            *self = Style::default();
            return;
        }
        let mut i = 0;
        while i < params.len() {
            let p = params[i];
            match p {
                0 => *self = Style::default(),
                1 => self.bold = true,
                2 => self.dim = true,
                3 => self.italic = true,
                4 => self.underline = true,
                22 => {
                    self.bold = false;
                    self.dim = false;
                }
                23 => self.italic = false,
                24 => self.underline = false,
                30..=37 => self.fg = Some((p - 30) as u8),
                39 => self.fg = None,
                40..=47 => self.bg = Some((p - 40) as u8),
                49 => self.bg = None,
                90..=97 => self.fg = Some((p - 90 + 8) as u8),
                100..=107 => self.bg = Some((p - 100 + 8) as u8),
                38 | 48 => {
                    // 38;5;n (256 colours) or 38;2;r;g;b (true colour): mapped to the 16
                    // named colours, since the CSP allows no inline styles.
                    let colour = match params.get(i + 1) {
                        Some(5) => {
                            let c = params.get(i + 2).copied();
                            i += 2;
                            c.map(xterm256_to_16)
                        }
                        Some(2) => {
                            let rgb = (
                                params.get(i + 2).copied(),
                                params.get(i + 3).copied(),
                                params.get(i + 4).copied(),
                            );
                            i += 4;
                            match rgb {
                                (Some(r), Some(g), Some(b)) => Some(rgb_to_16(r, g, b)),
                                _ => None,
                            }
                        }
                        _ => {
                            i = params.len();
                            None
                        }
                    };
                    if let Some(c) = colour {
                        if p == 38 {
                            self.fg = Some(c);
                        } else {
                            self.bg = Some(c);
                        }
                    }
                }
                _ => {}
            }
            i += 1;
        }
    }
}

fn rgb_to_16(r: u16, g: u16, b: u16) -> u8 {
    let (r, g, b) = (r.min(255), g.min(255), b.min(255));
    let bright = r.max(g).max(b) > 170;
    let bit = |v: u16| u8::from(v > 95);
    let base = bit(r) | (bit(g) << 1) | (bit(b) << 2);
    if bright && base != 0 { base + 8 } else { base }
}

fn xterm256_to_16(c: u16) -> u8 {
    match c {
        0..=15 => c as u8,
        16..=231 => {
            let c = c - 16;
            let scale = |v: u16| if v == 0 { 0 } else { 55 + v * 40 };
            rgb_to_16(scale(c / 36), scale((c / 6) % 6), scale(c % 6))
        }
        _ => {
            // grey ramp
            if c >= 244 { 7 } else { 8 }
        }
    }
}

/// Escape `c` for HTML text and attribute context.
pub fn escape_char(out: &mut String, c: char) {
    match c {
        '<' => out.push_str("&lt;"),
        '>' => out.push_str("&gt;"),
        '&' => out.push_str("&amp;"),
        '"' => out.push_str("&quot;"),
        '\'' => out.push_str("&#39;"),
        _ => out.push(c),
    }
}

/// HTML-escape a string.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        escape_char(&mut out, c);
    }
    out
}

/// The visible part of a line that a terminal would show after carriage returns: the last
/// non-empty segment (progress bars rewrite the line with `\r`).
fn after_carriage_returns(line: &str) -> &str {
    line.rsplit('\r').find(|s| !s.is_empty()).unwrap_or("")
}

/// Render one log line as HTML.
pub fn line_to_html(line: &str) -> String {
    let line = after_carriage_returns(line);
    let mut out = String::with_capacity(line.len() + 16);
    let mut style = Style::default();
    let mut open = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\u{1b}' => match chars.peek() {
                Some('[') => {
                    chars.next();
                    // CSI: parameter bytes 0x30–0x3F, intermediates 0x20–0x2F, final 0x40–0x7E.
                    let mut params = String::new();
                    let mut fin = None;
                    for c in chars.by_ref() {
                        if ('\u{40}'..='\u{7e}').contains(&c) {
                            fin = Some(c);
                            break;
                        }
                        if params.len() < 64 {
                            params.push(c);
                        }
                    }
                    if fin == Some('m') && params.chars().all(|c| c.is_ascii_digit() || c == ';') {
                        let list: Vec<u16> = if params.is_empty() {
                            Vec::new()
                        } else {
                            params
                                .split(';')
                                .map(|p| p.parse::<u16>().unwrap_or(0))
                                .collect()
                        };
                        let before = style;
                        style.apply(&list);
                        if style != before {
                            if open {
                                out.push_str("</span>");
                                open = false;
                            }
                            if !style.is_plain() {
                                let _ = write!(out, "<span class=\"{}\">", style.classes());
                                open = true;
                            }
                        }
                    }
                }
                Some(']') => {
                    // OSC: until BEL or ESC \.
                    chars.next();
                    while let Some(c) = chars.next() {
                        if c == '\u{7}' {
                            break;
                        }
                        if c == '\u{1b}' {
                            if chars.peek() == Some(&'\\') {
                                chars.next();
                            }
                            break;
                        }
                    }
                }
                Some(_) => {
                    // A two-character escape (ESC 7, ESC =, ESC ( B …): drop both.
                    let next = chars.next();
                    if next == Some('(') || next == Some(')') {
                        chars.next();
                    }
                }
                None => {}
            },
            '\t' => out.push('\t'),
            c if c.is_control() => {}
            c => escape_char(&mut out, c),
        }
    }
    if open {
        out.push_str("</span>");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_html_and_colours() {
        assert_eq!(
            line_to_html("<script>alert(1)</script>"),
            "&lt;script&gt;alert(1)&lt;/script&gt;"
        );
        assert_eq!(
            line_to_html("\u{1b}[31mred <b>\u{1b}[0m plain"),
            "<span class=\"a-f1\">red &lt;b&gt;</span> plain"
        );
        assert_eq!(
            line_to_html("\u{1b}[1;92mok\u{1b}[39m bold"),
            "<span class=\"a-f10 a-bold\">ok</span><span class=\"a-bold\"> bold</span>"
        );
        assert_eq!(line_to_html("a\u{1b}[2Kb\u{1b}[?25lc"), "abc");
        assert_eq!(line_to_html("x\u{1b}]0;title\u{7}y"), "xy");
        assert_eq!(line_to_html("50%\r100%\r"), "100%");
        assert_eq!(
            line_to_html("\u{1b}[38;5;196mred"),
            "<span class=\"a-f9\">red</span>"
        );
        assert_eq!(
            line_to_html("\u{1b}[38;2;0;0;0;1mk"),
            "<span class=\"a-f0 a-bold\">k</span>"
        );
        assert_eq!(line_to_html("bell\u{7}\u{0}"), "bell");
        assert_eq!(line_to_html("q\"'&"), "q&quot;&#39;&amp;");
        // Truncated sequences never leak.
        assert_eq!(line_to_html("a\u{1b}["), "a");
        assert_eq!(line_to_html("a\u{1b}"), "a");
    }

    #[test]
    fn nothing_from_the_log_stays_unescaped() {
        for input in [
            "<img src=x onerror=alert(1)>",
            "\u{1b}[31m\"><svg onload=x>",
            "\u{1b}[<m>",
        ] {
            let html = line_to_html(input);
            let stripped = html
                .replace("<span class=\"", "")
                .replace("\">", "")
                .replace("</span>", "");
            assert!(!stripped.contains('<') && !stripped.contains('>'), "{html}");
        }
    }
}

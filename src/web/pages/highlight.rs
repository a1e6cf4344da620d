//! Small, safe syntax highlighting for the two file kinds the dashboard shows: spec YAML and
//! rendered Dockerfiles. Line-based (one `String` of HTML per source line), escape first,
//! spans with fixed classes only — no regex engine, no JavaScript.

use crate::web::ansi::escape;

/// Split at the first `#` that starts a comment (at line start or after whitespace, outside
/// quotes).
fn split_comment(line: &str) -> (&str, &str) {
    let mut quote: Option<char> = None;
    let mut prev_space = true;
    for (i, c) in line.char_indices() {
        match quote {
            Some(q) if c == q => quote = None,
            Some(_) => {}
            None => {
                if c == '#' && prev_space {
                    return (&line[..i], &line[i..]);
                }
                if (c == '"' || c == '\'') && prev_space {
                    quote = Some(c);
                }
            }
        }
        prev_space = c.is_whitespace() || c == '[' || c == ',' || c == '{';
    }
    (line, "")
}

fn span(class: &str, text: &str) -> String {
    if text.is_empty() {
        String::new()
    } else {
        format!("<span class=\"{class}\">{}</span>", escape(text))
    }
}

fn scalar(text: &str) -> String {
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return escape(text);
    }
    let lead = &text[..text.len() - text.trim_start().len()];
    let trail = &text[text.trim_end().len()..];
    let class = if trimmed.starts_with('"') || trimmed.starts_with('\'') {
        "y-str"
    } else if matches!(trimmed, "true" | "false" | "null" | "~" | "yes" | "no") {
        "y-bool"
    } else if trimmed.parse::<f64>().is_ok() {
        "y-num"
    } else if matches!(trimmed, "|" | ">" | "|-" | ">-" | "|+" | ">+") || trimmed.starts_with('[') {
        "y-pun"
    } else {
        "y-val"
    };
    format!("{}{}{}", escape(lead), span(class, trimmed), escape(trail))
}

/// Highlight YAML, one HTML string per line.
pub fn yaml(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut block_indent: Option<usize> = None;
    for raw in text.lines() {
        let indent = raw.len() - raw.trim_start().len();
        if let Some(b) = block_indent {
            if raw.trim().is_empty() || indent > b {
                // Inside a literal block: package lines, maybe comments.
                let (body, comment) = split_comment(raw);
                out.push(format!("{}{}", scalar(body), span("y-com", comment)));
                continue;
            }
            block_indent = None;
        }
        let (body, comment) = split_comment(raw);
        let mut html = String::new();
        let mut rest = body;
        let lead = &rest[..rest.len() - rest.trim_start().len()];
        html.push_str(lead);
        rest = &rest[lead.len()..];
        if let Some(after) = rest
            .strip_prefix("- ")
            .or_else(|| (rest == "-").then_some(""))
        {
            html.push_str(&span("y-dash", "-"));
            html.push(' ');
            rest = after;
        }
        // `key:` followed by space or end.
        let key_end = rest
            .find(": ")
            .or_else(|| rest.strip_suffix(':').map(|k| k.len()));
        match key_end {
            Some(k)
                if !rest.starts_with('"')
                    && !rest.starts_with('\'')
                    && !rest[..k].contains(' ') =>
            {
                html.push_str(&span("y-key", &rest[..k]));
                html.push_str(&span("y-pun", ":"));
                let value = &rest[k + 1..];
                if matches!(value.trim(), "|" | ">" | "|-" | ">-" | "|+" | ">+") {
                    block_indent = Some(indent);
                }
                html.push_str(&scalar(value));
            }
            _ => html.push_str(&scalar(rest)),
        }
        html.push_str(&span("y-com", comment));
        out.push(html);
    }
    out
}

/// Highlight a Dockerfile, one HTML string per line.
pub fn dockerfile(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for raw in text.lines() {
        let trimmed = raw.trim_start();
        let lead = &raw[..raw.len() - trimmed.len()];
        if trimmed.starts_with('#') {
            out.push(format!("{}{}", lead, span("y-com", trimmed)));
            continue;
        }
        let word_end = trimmed.find(' ').unwrap_or(trimmed.len());
        let word = &trimmed[..word_end];
        if !word.is_empty() && lead.is_empty() && word.chars().all(|c| c.is_ascii_uppercase()) {
            out.push(format!(
                "{}{}",
                span("d-kw", word),
                escape(&trimmed[word_end..])
            ));
        } else if let Some(rest) = trimmed.strip_prefix("&& ") {
            out.push(format!("{lead}{} {}", span("y-pun", "&&"), escape(rest)));
        } else {
            out.push(escape(raw));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yaml_keys_comments_blocks_and_escaping() {
        let lines = yaml(
            "name: demo # the name\npackages:\n  apt: |\n    curl\n    # note\n  pip:\n    - \"<x>\"\n",
        );
        assert_eq!(
            lines[0],
            "<span class=\"y-key\">name</span><span class=\"y-pun\">:</span> <span class=\"y-val\">demo</span> <span class=\"y-com\"># the name</span>"
        );
        assert!(lines[2].contains("y-pun\">|</span>"), "{}", lines[2]);
        assert_eq!(lines[3], "    <span class=\"y-val\">curl</span>");
        assert_eq!(lines[4], "    <span class=\"y-com\"># note</span>");
        assert!(lines[6].contains("y-dash") && lines[6].contains("&quot;&lt;x&gt;&quot;"));
    }

    #[test]
    fn dockerfile_instructions() {
        let lines = dockerfile("# c\nFROM a <b>\nRUN x \\\n && y\n");
        assert_eq!(lines[0], "<span class=\"y-com\"># c</span>");
        assert_eq!(lines[1], "<span class=\"d-kw\">FROM</span> a &lt;b&gt;");
        assert_eq!(lines[3], " <span class=\"y-pun\">&amp;&amp;</span> y");
    }
}

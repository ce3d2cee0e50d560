//! Text helpers shared by the stages and the printers: visible whitespace, counted nouns.

/// A piece of text with spaces, newlines and control characters visible: `" Helsinki"`, `"\n"`.
pub fn visible(text: &str) -> String {
    format!("{text:?}")
}

/// Like [`visible`], for the exact bytes of a token: bytes that are not (yet) a whole UTF-8
/// character, as when a token holds half of an emoji, show as `\xF0`.
pub fn visible_bytes(bytes: &[u8]) -> String {
    let mut out = String::from("\"");
    for chunk in bytes.utf8_chunks() {
        let valid = format!("{:?}", chunk.valid());
        out += &valid[1..valid.len() - 1];
        for b in chunk.invalid() {
            out += &format!("\\x{b:02X}");
        }
    }
    out + "\""
}

/// "1 new token", "2 new tokens".
pub fn count(n: usize, noun: &str) -> String {
    format!("{n} {noun}{}", if n == 1 { "" } else { "s" })
}

/// A setting as a person typed it: `0.7`, `40`, and `1e-38` rather than 38 zeros.
pub fn number(x: f64) -> String {
    if x == 0.0 || (1e-4..1e6).contains(&x.abs()) {
        format!("{x}")
    } else {
        format!("{x:e}")
    }
}

/// Prose wrapped at `width` columns on its spaces (a word longer than the width stands on a line
/// of its own): for the notes under a table, which a terminal would otherwise break mid-word.
pub fn wrap(text: &str, width: usize) -> String {
    let mut out = String::new();
    let mut line = 0;
    for word in text.split(' ').filter(|w| !w.is_empty()) {
        let len = word.chars().count();
        if line > 0 && line + 1 + len > width {
            out.push('\n');
            line = 0;
        } else if line > 0 {
            out.push(' ');
            line += 1;
        }
        out += word;
        line += len;
    }
    out.replace('\0', " ")
}

/// [`visible`] text as one word for [`wrap`], which never breaks it nor merges its runs of
/// spaces: its spaces become NULs (which `{:?}` never leaves in its output), and `wrap` turns
/// them back into spaces.
pub fn unbroken(visible: &str) -> String {
    visible.replace(' ', "\0")
}

#[cfg(test)]
mod tests {
    #[test]
    fn wrap_keeps_unbroken_text_whole() {
        let quoted = super::unbroken(&super::visible("a  b c"));
        let text = format!("scoring {quoted} after the prompt and more words here");
        let wrapped = super::wrap(&text, 20);
        assert_eq!(wrapped, "scoring \"a  b c\"\nafter the prompt and\nmore words here");
        // Nothing to keep: the words of prose, at most 20 columns a line.
        assert!(super::wrap("one two three four five six", 9).lines().all(|l| l.len() <= 9));
    }

    use super::number;

    #[test]
    fn prose_wraps_on_spaces_within_the_width() {
        use super::wrap;
        let text = "log-prob: natural log of p; bits: the surprisal -log2 p; rank 1 = the top";
        let wrapped = wrap(text, 30);
        assert!(wrapped.lines().all(|l| l.chars().count() <= 30), "{wrapped}");
        assert_eq!(wrapped.replace('\n', " "), text);
        assert_eq!(wrap("short", 30), "short");
        assert_eq!(wrap("a-very-long-word b", 5), "a-very-long-word\nb");
        assert_eq!(wrap("", 10), "");
    }

    #[test]
    fn numbers_as_typed() {
        assert_eq!(number(0.7), "0.7");
        assert_eq!(number(1.0), "1");
        assert_eq!(number(40.0), "40");
        assert_eq!(number(1e-38), "1e-38");
        assert_eq!(number(2.5e300), "2.5e300");
    }
}

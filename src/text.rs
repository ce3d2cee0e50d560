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

#[cfg(test)]
mod tests {
    use super::number;

    #[test]
    fn numbers_as_typed() {
        assert_eq!(number(0.7), "0.7");
        assert_eq!(number(1.0), "1");
        assert_eq!(number(40.0), "40");
        assert_eq!(number(1e-38), "1e-38");
        assert_eq!(number(2.5e300), "2.5e300");
    }
}

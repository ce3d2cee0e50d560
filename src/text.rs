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

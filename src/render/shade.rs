//! Probabilities as shades, for the heatmaps and grids of the inspection commands (`lens`,
//! `attention`): a grey background on a terminal that wants colour, otherwise one of the shade
//! characters ` ░▒▓█` in front of the cell. Both take the same width, so a table lines up the same
//! way with and without colour. Also the width helpers those hand-drawn tables need.

use std::ffi::OsStr;
use unicode_width::UnicodeWidthStr;

/// The shade characters, lightest first: one per fifth of [0, 1].
pub const SHADES: [char; 5] = [' ', '░', '▒', '▓', '█'];

/// The shade character of a probability: ` ` below 0.2, `░` below 0.4, `▒` below 0.6, `▓` below
/// 0.8, `█` from 0.8 on. Values outside [0, 1] (and NaN) are clamped.
pub fn shade_char(p: f64) -> char {
    let p = if p.is_nan() { 0.0 } else { p.clamp(0.0, 1.0) };
    SHADES[((p * 5.0) as usize).min(4)]
}

/// Whether to colour: `forced` is `--color always` (Some(true)) or `never` (Some(false));
/// `--color auto` (None) colours only a terminal, and not when `NO_COLOR` is set to a non-empty
/// value (<https://no-color.org>) or `TERM` is `dumb`. An explicit `--color always` wins over
/// `NO_COLOR`, as no-color.org asks of command-line flags.
pub fn use_color(
    forced: Option<bool>,
    is_terminal: bool,
    no_color: Option<&OsStr>,
    term: Option<&OsStr>,
) -> bool {
    match forced {
        Some(choice) => choice,
        None => {
            is_terminal && no_color.is_none_or(|v| v.is_empty()) && term.is_none_or(|t| t != "dumb")
        }
    }
}

/// How cells are shaded: colour or characters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Shade {
    color: bool,
}

impl Shade {
    /// Shade characters, no escape codes (files, pipes, `--color never`).
    pub fn plain() -> Self {
        Shade { color: false }
    }

    /// ANSI 256-colour backgrounds (a terminal, `--color always`).
    pub fn colored() -> Self {
        Shade { color: true }
    }

    pub fn new(color: bool) -> Self {
        Shade { color }
    }

    pub fn is_color(&self) -> bool {
        self.color
    }

    /// A cell holding `text` shaded by `p`, one column wider than `text`: the shade character and
    /// the text, or (in colour) a space and the text on a grey whose lightness is `p`.
    pub fn cell(&self, p: f64, text: &str) -> String {
        if !self.color {
            return format!("{}{text}", shade_char(p));
        }
        let p = if p.is_nan() { 0.0 } else { p.clamp(0.0, 1.0) };
        // The 24 greys of the 256-colour palette, 232 (near black) to 255 (near white), with
        // black text on the light half and white text on the dark half.
        let grey = 232 + (p * 23.0).round() as u8;
        let fg = if grey >= 244 { 16 } else { 255 };
        format!("\x1b[48;5;{grey}m\x1b[38;5;{fg}m {text}\x1b[0m")
    }

    /// A block of `width` columns shaded by `p` and holding nothing else (the compact heatmap).
    pub fn block(&self, p: f64, width: usize) -> String {
        if !self.color {
            return shade_char(p).to_string().repeat(width);
        }
        self.cell(p, &" ".repeat(width.saturating_sub(1)))
    }

    /// One line saying what the shades mean.
    pub fn legend(&self) -> String {
        if self.color {
            let samples: Vec<String> = [0.0, 0.25, 0.5, 0.75, 1.0]
                .iter()
                .map(|&p| self.cell(p, &format!("{p:.2} ")))
                .collect();
            format!("shade: probability {}", samples.join(""))
        } else {
            "shade: \" \" below 0.2, ░ below 0.4, ▒ below 0.6, ▓ below 0.8, █ 0.8 and above"
                .to_string()
        }
    }
}

/// The number of terminal columns a string takes (escape codes not counted).
pub fn width(s: &str) -> usize {
    let mut plain = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('\x1b') {
        plain.push_str(&rest[..i]);
        rest = &rest[i..];
        // An SGR sequence: ESC [ ... m
        rest = match rest.find('m') {
            Some(end) => &rest[end + 1..],
            None => "",
        };
    }
    plain.push_str(rest);
    UnicodeWidthStr::width(plain.as_str())
}

/// `s` cut to at most `max` columns, ending in `~` when something was cut.
pub fn clip(s: &str, max: usize) -> String {
    if width(s) <= max {
        return s.to_string();
    }
    let mut out = String::new();
    for ch in s.chars() {
        let next = format!("{out}{ch}");
        if width(&next) + 1 > max {
            break;
        }
        out = next;
    }
    out + "~"
}

/// `s` padded with spaces on the right to `w` columns.
pub fn pad(s: &str, w: usize) -> String {
    format!("{s}{}", " ".repeat(w.saturating_sub(width(s))))
}

/// `s` padded with spaces on the left to `w` columns.
pub fn pad_left(s: &str, w: usize) -> String {
    format!("{}{s}", " ".repeat(w.saturating_sub(width(s))))
}

/// A probability in three columns: `.82`, `1.0` for what rounds to 1, `.00` for what rounds to 0.
pub fn prob3(p: f64) -> String {
    let s = format!("{:.2}", p.clamp(0.0, 1.0));
    if s == "1.00" {
        "1.0".to_string()
    } else {
        s.trim_start_matches('0').to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shade_characters_cut_at_fifths() {
        let got: String = [0.0, 0.19, 0.2, 0.39, 0.4, 0.6, 0.79, 0.8, 1.0, 1.5, -1.0, f64::NAN]
            .iter()
            .map(|&p| shade_char(p))
            .collect();
        assert_eq!(got, "  ░░▒▓▓███  ");
    }

    #[test]
    fn colour_follows_the_flag_the_terminal_and_no_color() {
        let set = Some(OsStr::new("1"));
        let empty = Some(OsStr::new(""));
        let dumb = Some(OsStr::new("dumb"));
        assert!(use_color(None, true, None, None));
        assert!(!use_color(None, false, None, None), "a pipe gets no colour");
        assert!(!use_color(None, true, set, None), "NO_COLOR");
        assert!(use_color(None, true, empty, None), "an empty NO_COLOR does not count");
        assert!(!use_color(None, true, None, dumb));
        assert!(use_color(Some(true), false, set, None), "--color always wins");
        assert!(!use_color(Some(false), true, None, None));
    }

    #[test]
    fn plain_and_coloured_cells_take_the_same_width() {
        for p in [0.0, 0.3, 0.55, 1.0] {
            let (a, b) = (Shade::plain().cell(p, ".55"), Shade::colored().cell(p, ".55"));
            assert_eq!(width(&a), 4);
            assert_eq!(width(&b), 4, "{b:?}");
            assert_eq!(width(&Shade::plain().block(p, 2)), 2);
            assert_eq!(width(&Shade::colored().block(p, 2)), 2);
        }
        assert_eq!(Shade::plain().cell(0.9, "x"), "█x");
        assert!(!Shade::plain().legend().contains('\x1b'));
        assert!(Shade::colored().legend().contains("\x1b[48;5;255m"));
    }

    #[test]
    fn clipping_and_padding_count_columns() {
        assert_eq!(clip("ĠHelsinki", 9), "ĠHelsinki");
        assert_eq!(clip("ĠHelsinki", 6), "ĠHels~");
        assert_eq!(width(&clip("日本語テキスト", 6)), 5); // wide characters: 2 columns each
        assert_eq!(pad("ab", 4), "ab  ");
        assert_eq!(pad_left("ab", 4), "  ab");
        assert_eq!(pad("abcdef", 4), "abcdef");
        assert_eq!(prob3(0.823), ".82");
        assert_eq!(prob3(0.999), "1.0");
        assert_eq!(prob3(0.001), ".00");
    }
}

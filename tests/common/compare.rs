//! Comparing a command's output with the output a page or a golden file shows, where the last
//! printed digit of a float may depend on the CPU: numbers within a tolerance, words exact.

use super::{lmscope, repo_path};

/// A piece of output for the tolerant comparison: a number, or a run of other visible characters.
#[derive(Debug, PartialEq)]
pub enum Piece<'a> {
    Number(&'a str),
    Word(&'a str),
}

/// Splits output into numbers and words, dropping whitespace and table borders (whose widths
/// follow the numbers' widths).
pub fn pieces(text: &str) -> Vec<Piece<'_>> {
    let border = |c: char| c.is_whitespace() || ('\u{2500}'..='\u{257F}').contains(&c);
    let bytes = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < text.len() {
        let c = text[i..].chars().next().expect("inside the text");
        if border(c) {
            i += c.len_utf8();
            continue;
        }
        let digit_at = |j: usize| j < bytes.len() && bytes[j].is_ascii_digit();
        let starts_number = digit_at(i) || (c == '-' && digit_at(i + 1));
        let mut j = i + c.len_utf8();
        if starts_number {
            while digit_at(j) || (j < bytes.len() && bytes[j] == b'.' && digit_at(j + 1)) {
                j += 1;
            }
            if j < bytes.len() && (bytes[j] == b'e' || bytes[j] == b'E') {
                let k = if j + 1 < bytes.len() && bytes[j + 1] == b'-' { j + 2 } else { j + 1 };
                if digit_at(k) {
                    j = k;
                    while digit_at(j) {
                        j += 1;
                    }
                }
            }
            out.push(Piece::Number(&text[i..j]));
        } else {
            while j < text.len() {
                let d = text[j..].chars().next().expect("inside the text");
                let minus_digit = d == '-' && digit_at(j + 1);
                if border(d) || d.is_ascii_digit() || minus_digit {
                    break;
                }
                j += d.len_utf8();
            }
            out.push(Piece::Word(&text[i..j]));
        }
        i = j;
    }
    out
}

/// A float as printed (a dot or an exponent; a dotted run that does not parse, such as a version,
/// is no float).
fn float(p: &str) -> Option<f64> {
    if p.contains(['.', 'e', 'E']) {
        p.parse().ok()
    } else {
        None
    }
}

/// One unit in the last printed place of a float: 0.01 for `1331.51`, 1e-17 for `3.1814e-13`.
pub fn last_place(p: &str) -> f64 {
    let (mantissa, exponent) = match p.find(['e', 'E']) {
        Some(at) => (&p[..at], p[at + 1..].parse::<i32>().unwrap_or(0)),
        None => (p, 0),
    };
    let decimals = mantissa.find('.').map_or(0, |dot| mantissa.len() - dot - 1) as i32;
    10f64.powi(exponent - decimals)
}

/// Compares output with the page's, each float within `tolerance(printed)` (integers exactly,
/// but for deep ranks when the tolerance is not zero). Returns the largest difference of a
/// number, or the first difference that is too large.
pub fn within_by(
    expected: &str,
    got: &str,
    tolerance: impl Fn(&str) -> f64,
) -> Result<f64, String> {
    let (a, b) = (pieces(expected), pieces(got));
    let mut largest = 0.0f64;
    for (x, y) in a.iter().zip(&b) {
        let same = match (x, y) {
            (Piece::Number(p), Piece::Number(q)) if float(p).is_some() && float(q).is_some() => {
                let (pv, qv) = (float(p).expect("checked"), float(q).expect("checked"));
                largest = largest.max((pv - qv).abs());
                (pv - qv).abs() <= tolerance(p)
            }
            // A float field that was exact where the page was made prints as an integer there
            // (kv-check's max_abs_diff: 0): compared as a float, within the tolerance of the side
            // printed as one.
            (Piece::Number(p), Piece::Number(q)) if float(p).is_some() || float(q).is_some() => {
                let value = |x: &str| x.parse::<f64>().ok();
                match (value(p), value(q)) {
                    (Some(pv), Some(qv)) => {
                        largest = largest.max((pv - qv).abs());
                        (pv - qv).abs() <= tolerance(if float(p).is_some() { p } else { q })
                    }
                    _ => x == y,
                }
            }
            // A rank deep in the vocabulary (a token of probability 1e-23) moves by a place or two
            // with the rounding: integers of 1000 and more may differ by 0.1 %. Ids stay exact in
            // effect: the token string beside an id is a word.
            (Piece::Number(p), Piece::Number(q)) if tolerance(p) > 0.0 => {
                match (p.parse::<f64>(), q.parse::<f64>()) {
                    (Ok(p), Ok(q)) if p >= 1000.0 => (p - q).abs() <= p / 1000.0,
                    _ => x == y,
                }
            }
            _ => x == y,
        };
        if !same {
            return Err(format!("expected {x:?}, lmscope prints {y:?} (tolerance {})", {
                match x {
                    Piece::Number(p) => tolerance(p),
                    Piece::Word(_) => 0.0,
                }
            }));
        }
    }
    if a.len() != b.len() {
        return Err(format!("expected {} pieces, lmscope prints {}", a.len(), b.len()));
    }
    Ok(largest)
}

/// [`within_by`] with one tolerance for every float.
pub fn within(expected: &str, got: &str, tolerance: f64) -> Result<f64, String> {
    within_by(expected, got, |_| tolerance)
}

/// Output equal to a golden file's but for the last printed digit of a float, on the same lines.
/// A CPU whose sums run in another order moves f32 results by about 1e-6 of their size: a float
/// may differ by one unit and a half of its last printed place (1331.515 rounds to either side)
/// or by 2e-5 of its value (a perplexity of 47287.71 printed with more digits than f32 holds).
pub fn same_but_last_digits(expected: &str, got: &str) -> Result<(), String> {
    if expected.lines().count() != got.lines().count() {
        return Err(format!(
            "expected {} lines, lmscope prints {}",
            expected.lines().count(),
            got.lines().count()
        ));
    }
    for (n, (e, g)) in expected.lines().zip(got.lines()).enumerate() {
        within_by(e, g, golden_tolerance).map_err(|why| format!("line {}: {why}", n + 1))?;
    }
    Ok(())
}

/// How far a float of a golden file may move off the CPU that wrote it: see
/// [`same_but_last_digits`].
pub fn golden_tolerance(printed: &str) -> f64 {
    let value = float(printed).map_or(0.0, f64::abs);
    (1.5 * last_place(printed)).max(2e-5 * value)
}

/// Runs lmscope with `args` (and `env`) in the repository and compares its stdout with
/// tests/golden/NAME.txt: byte for byte on the CPU that wrote the file, and
/// [`same_but_last_digits`] elsewhere. `UPDATE_GOLDEN=1` rewrites the file. Returns the output.
pub fn golden(test: &str, name: &str, env: &[(&str, &str)], args: &[&str]) -> String {
    let out = lmscope()
        .current_dir(repo_path(""))
        .envs(env.iter().copied())
        .args(args)
        .output()
        .expect("lmscope runs");
    assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
    let actual = String::from_utf8(out.stdout).expect("UTF-8 output");
    let path = repo_path(&format!("tests/golden/{name}.txt"));
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, &actual).expect("golden file written");
        return actual;
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_else(|_| {
        panic!("{} is missing: run UPDATE_GOLDEN=1 cargo test --test {test}", path.display())
    });
    if actual != expected {
        if let Err(why) = same_but_last_digits(&expected, &actual) {
            panic!(
                "output of {args:?} differs from {}: {why}\n--- expected\n{expected}\n--- got\n{actual}",
                path.display()
            );
        }
    }
    actual
}

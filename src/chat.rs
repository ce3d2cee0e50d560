//! `--chat`: a text wrapped as a user message in the model's own chat template, the way
//! transformers' `tokenizer.apply_chat_template(messages, add_generation_prompt=True)` renders it.
//!
//! A chat model (SmolLM2-135M-Instruct) was trained on conversations written out with special
//! tokens (`<|im_start|>user\n...<|im_end|>\n<|im_start|>assistant\n`); the model ships the Jinja
//! template that writes them: in GGUF metadata as `tokenizer.chat_template`, beside a
//! `tokenizer.json` as `chat_template.jinja` or in `tokenizer_config.json`.
//!
//! The template comes from the model file, so it is untrusted code. It runs in minijinja, which
//! cannot read files or reach the network, with no loader (no `include`, `import` or `extends`),
//! a fuel limit (an endless loop or a huge string runs out of fuel), the engine's recursion limit
//! and a limit on the size of its output. Every failure is one clear error.
//!
//! transformers renders with jinja2's `ImmutableSandboxedEnvironment(trim_blocks=True,
//! lstrip_blocks=True)` plus loop controls, `raise_exception`, `strftime_now`, a `tojson` that
//! does not escape HTML, and passes `messages`, `tools=None`, `documents=None`,
//! `add_generation_prompt` and the tokenizer's named special tokens (`bos_token`, `eos_token`,
//! ...); [`ChatTemplate::render`] does the same.

use anyhow::{bail, Context, Result};
use minijinja::value::{Kwargs, Value, ValueKind};
use minijinja::{Environment, Error, ErrorKind, State};
use std::path::Path;
use std::sync::{Arc, Mutex};

/// Fuel for one render before the input is counted: SmolLM2's template on a short message uses
/// about 100; a template this many steps long is stuck in a loop.
const BASE_FUEL: u64 = 1_000_000;

/// The largest rendered prompt, before the input is counted (the input's own size is added).
const BASE_OUTPUT: usize = 1 << 20;

/// The longest template source: chat templates are a few KB (the largest known are about 20 KB);
/// minijinja's compile time grows faster than linearly for some long expressions (a chain of
/// 10,000 `~` takes seconds), so a longer source is refused rather than compiled.
const MAX_SOURCE: usize = 64 << 10;

/// The stack of the thread a template renders on.
const RENDER_STACK: usize = 512 << 20;

/// The named special tokens transformers passes to a template (`special_tokens_map`).
pub const SPECIAL_TOKEN_NAMES: [&str; 7] =
    ["bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token"];

/// A model's chat template and the special tokens it may use.
#[derive(Debug, Clone, PartialEq)]
pub struct ChatTemplate {
    source: String,
    /// Where the template was found (`tokenizer.chat_template in model.gguf`).
    origin: String,
    /// `(name, token)`, names from [`SPECIAL_TOKEN_NAMES`], in that order.
    special_tokens: Vec<(String, String)>,
}

/// One message of a conversation.
#[derive(Debug, Clone, PartialEq)]
pub struct Message<'a> {
    pub role: &'a str,
    pub content: &'a str,
}

impl ChatTemplate {
    /// A template from its Jinja source. `origin` names where it came from, for error messages;
    /// `special_tokens` pairs names of [`SPECIAL_TOKEN_NAMES`] with their tokens.
    pub fn new(
        source: impl Into<String>,
        origin: impl Into<String>,
        special_tokens: Vec<(String, String)>,
    ) -> Self {
        ChatTemplate { source: source.into(), origin: origin.into(), special_tokens }
    }

    /// The template of a GGUF file (`tokenizer.chat_template`), if it has one; `tokens` is the
    /// vocabulary, for the special tokens' strings.
    pub fn from_gguf(gguf: &crate::gguf::GgufFile, tokens: &[&str]) -> Result<Option<Self>> {
        let Some(value) = gguf.get("tokenizer.chat_template") else { return Ok(None) };
        let source = value
            .as_str()
            .context("GGUF metadata tokenizer.chat_template is not a string")?
            .to_string();
        // The ids transformers reads from a GGUF file (its integrations/ggml.py).
        let keys = [
            ("bos_token", "tokenizer.ggml.bos_token_id"),
            ("eos_token", "tokenizer.ggml.eos_token_id"),
            ("unk_token", "tokenizer.ggml.unknown_token_id"),
            ("pad_token", "tokenizer.ggml.padding_token_id"),
        ];
        let mut special_tokens = Vec::new();
        for (name, key) in keys {
            if let Some(id) = crate::config::token_id(gguf, key)? {
                let token = tokens.get(id as usize).with_context(|| {
                    format!("{key} = {id} is outside the vocabulary of {} tokens", tokens.len())
                })?;
                special_tokens.push((name.to_string(), token.to_string()));
            }
        }
        Ok(Some(Self::new(source, "tokenizer.chat_template in the GGUF metadata", special_tokens)))
    }

    /// The template beside a `tokenizer.json`: `chat_template.jinja` if there is one (as
    /// transformers prefers it), else `chat_template` in `tokenizer_config.json`; the special
    /// tokens from `tokenizer_config.json`.
    pub fn beside_tokenizer(tokenizer_json: &Path) -> Result<Option<Self>> {
        let dir = tokenizer_json.parent().unwrap_or(Path::new("."));
        let [config_name, jinja_name] = crate::source::CHAT_FILES;
        let config_path = dir.join(config_name);
        let config: Option<serde_json::Value> = if config_path.is_file() {
            let text = std::fs::read_to_string(&config_path)
                .with_context(|| format!("cannot read {}", config_path.display()))?;
            Some(
                serde_json::from_str(&text)
                    .with_context(|| format!("invalid JSON in {}", config_path.display()))?,
            )
        } else {
            None
        };
        let jinja_path = dir.join(jinja_name);
        let (source, origin) = if jinja_path.is_file() {
            let source = std::fs::read_to_string(&jinja_path)
                .with_context(|| format!("cannot read {}", jinja_path.display()))?;
            (source, jinja_path.display().to_string())
        } else {
            match config.as_ref().and_then(|c| c.get("chat_template")) {
                None | Some(serde_json::Value::Null) => return Ok(None),
                Some(t) => (
                    config_template(t).with_context(|| {
                        format!("chat_template in {} is not usable", config_path.display())
                    })?,
                    format!("chat_template in {}", config_path.display()),
                ),
            }
        };
        let mut special_tokens = Vec::new();
        for name in SPECIAL_TOKEN_NAMES {
            let token = match config.as_ref().and_then(|c| c.get(name)) {
                Some(serde_json::Value::String(s)) => Some(s.clone()),
                // An AddedToken written out: {"content": "<s>", "lstrip": false, ...}.
                Some(serde_json::Value::Object(o)) => {
                    o.get("content").and_then(|c| c.as_str()).map(str::to_string)
                }
                _ => None,
            };
            if let Some(token) = token {
                special_tokens.push((name.to_string(), token));
            }
        }
        Ok(Some(Self::new(source, origin, special_tokens)))
    }

    /// The Jinja source.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Where the template was found.
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// The special tokens passed to the template, `(name, token)`.
    pub fn special_tokens(&self) -> &[(String, String)] {
        &self.special_tokens
    }

    /// The prompt for one user message, with a system message before it if one is given (none:
    /// the template's own default, if it has one), and the assistant's turn opened
    /// (`add_generation_prompt=True`).
    pub fn render(&self, system: Option<&str>, user: &str) -> Result<String> {
        let mut messages = Vec::with_capacity(2);
        if let Some(system) = system {
            messages.push(Message { role: "system", content: system });
        }
        messages.push(Message { role: "user", content: user });
        self.render_messages(&messages, true)
    }

    /// Renders a conversation, as `apply_chat_template(messages, tokenize=False,
    /// add_generation_prompt=...)` does.
    pub fn render_messages(
        &self,
        messages: &[Message],
        add_generation_prompt: bool,
    ) -> Result<String> {
        // minijinja walks nested values recursively (to print, compare or drop them), and a
        // template can nest a list in itself once per loop step, cheaply in fuel: a value nested
        // 100,000 deep would overflow a thread's usual stack. The render runs on a thread whose
        // stack fits the deepest value the fuel allows (the memory is reserved, and only the
        // pages a render touches are used).
        std::thread::scope(|scope| {
            std::thread::Builder::new()
                .name("chat-template".into())
                .stack_size(RENDER_STACK)
                .spawn_scoped(scope, || self.render_here(messages, add_generation_prompt))
                .context("cannot start a thread to render the chat template")?
                .join()
                .map_err(|_| {
                    anyhow::anyhow!("the chat template ({}) crashed its renderer", self.origin)
                })?
        })
    }

    fn render_here(&self, messages: &[Message], add_generation_prompt: bool) -> Result<String> {
        if self.source.len() > MAX_SOURCE {
            bail!(
                "the chat template ({}) is {} KiB long, more than the {} KiB lmscope compiles \
                 (chat templates are a few KiB)",
                self.origin,
                self.source.len().div_ceil(1024),
                MAX_SOURCE >> 10
            );
        }
        let input: usize = messages.iter().map(|m| m.role.len() + m.content.len()).sum();
        let raised: Arc<Mutex<Option<String>>> = Arc::default();
        let env = environment(BASE_FUEL + input as u64, raised.clone())?;
        let template = env
            .template_from_named_str("chat_template", &self.source)
            .map_err(|e| self.error("is not a valid template", &e))?;
        let messages: Vec<Value> = messages
            .iter()
            .map(|m| {
                Value::from_pairs([
                    ("role", Value::from(m.role.to_string())),
                    ("content", Value::from(m.content.to_string())),
                ])
            })
            .collect();
        let mut context: Vec<(String, Value)> = self
            .special_tokens
            .iter()
            .map(|(name, token)| (name.clone(), Value::from(token.clone())))
            .collect();
        context.extend([
            ("messages".to_string(), Value::from(messages)),
            ("tools".to_string(), Value::from(())),
            ("documents".to_string(), Value::from(())),
            ("add_generation_prompt".to_string(), Value::from(add_generation_prompt)),
        ]);
        let limit = BASE_OUTPUT + 2 * input;
        let mut out = Limited { bytes: Vec::new(), limit, exceeded: false };
        let result = template.render_captured_to(Value::from_pairs(context), &mut out);
        if out.exceeded {
            bail!(
                "the chat template ({}) wrote more than {} KiB for this message: a template that \
                 writes without end?",
                self.origin,
                limit >> 10
            );
        }
        if let Err(e) = result {
            if let Some(message) = raised.lock().ok().and_then(|r| r.clone()) {
                bail!(
                    "the chat template ({}) refused the conversation: {}",
                    self.origin,
                    one_line(&message)
                );
            }
            if e.kind() == ErrorKind::OutOfFuel {
                bail!(
                    "the chat template ({}) ran out of fuel (more than {} steps): a template that \
                     never ends?",
                    self.origin,
                    BASE_FUEL + input as u64
                );
            }
            return Err(self.error("failed", &e));
        }
        String::from_utf8(out.bytes)
            .with_context(|| format!("the chat template ({}) wrote invalid UTF-8", self.origin))
    }

    fn error(&self, what: &str, e: &Error) -> anyhow::Error {
        anyhow::anyhow!("the chat template ({}) {what}: {}", self.origin, one_line(&e.to_string()))
    }
}

/// `chat_template` of a tokenizer_config.json: a string, or a list of named templates
/// (`[{"name": "default", "template": "..."}, ...]`) of which transformers uses "default".
fn config_template(value: &serde_json::Value) -> Result<String> {
    match value {
        serde_json::Value::String(s) => Ok(s.clone()),
        serde_json::Value::Array(items) => items
            .iter()
            .find(|t| t.get("name").and_then(|n| n.as_str()) == Some("default"))
            .and_then(|t| t.get("template"))
            .and_then(|t| t.as_str())
            .map(str::to_string)
            .context("a list of templates without one named \"default\""),
        _ => bail!("neither a string nor a list of named templates"),
    }
}

/// The environment transformers renders in, as far as a sandbox allows: jinja2's
/// trim_blocks and lstrip_blocks, loop controls, Python's string methods, `raise_exception`,
/// `strftime_now` and `tojson`; no loader, no auto-escaping, a fuel limit.
fn environment(fuel: u64, raised: Arc<Mutex<Option<String>>>) -> Result<Environment<'static>> {
    let mut env = Environment::new();
    env.set_syntax(
        minijinja::syntax::SyntaxConfig::builder()
            .trim_blocks(true)
            .lstrip_blocks(true)
            .build()
            .context("cannot configure the template syntax")?,
    );
    env.set_auto_escape_callback(|_| minijinja::AutoEscape::None);
    env.set_fuel(Some(fuel));
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    env.add_function("raise_exception", move |message: String| -> Result<Value, Error> {
        if let Ok(mut r) = raised.lock() {
            r.get_or_insert(message.clone());
        }
        Err(Error::new(ErrorKind::InvalidOperation, message))
    });
    env.add_function("strftime_now", |format: String| -> Result<Value, Error> {
        Ok(Value::from(strftime_now(&format)?))
    });
    env.add_filter("tojson", tojson);
    Ok(env)
}

/// A writer that refuses to grow past `limit` bytes.
struct Limited {
    bytes: Vec<u8>,
    limit: usize,
    exceeded: bool,
}

impl std::io::Write for Limited {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.bytes.len() + buf.len() > self.limit {
            self.exceeded = true;
            return Err(std::io::Error::other("the chat template's output is too large"));
        }
        self.bytes.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// transformers' `tojson`: Python's `json.dumps(x, ensure_ascii=False, indent=None,
/// separators=None, sort_keys=False)` (no HTML escaping, unlike jinja2's own filter).
fn tojson(state: &State, value: &Value, kwargs: Kwargs) -> Result<Value, Error> {
    let indent: Option<Value> = kwargs.get("indent")?;
    let sort_keys: Option<bool> = kwargs.get("sort_keys")?;
    let ensure_ascii: Option<bool> = kwargs.get("ensure_ascii")?;
    let separators: Option<Value> = kwargs.get("separators")?;
    kwargs.assert_all_used()?;
    let indent = match indent {
        None => None,
        Some(v) if v.is_none() => None,
        Some(v) => match v.as_str() {
            Some(s) => Some(s.to_string()),
            None => Some(" ".repeat(v.as_usize().filter(|&n| n <= 64).ok_or_else(|| {
                Error::new(ErrorKind::InvalidOperation, "tojson: indent must be 0..=64")
            })?)),
        },
    };
    let (item, key) = match separators {
        Some(s) if !s.is_none() => {
            let parts: Vec<Value> = s.try_iter()?.collect();
            match parts.as_slice() {
                [a, b] => match (a.as_str(), b.as_str()) {
                    (Some(a), Some(b)) => (a.to_string(), b.to_string()),
                    _ => return Err(bad_separators()),
                },
                _ => return Err(bad_separators()),
            }
        }
        _ => ((if indent.is_some() { "," } else { ", " }).to_string(), ": ".to_string()),
    };
    let style = JsonStyle {
        indent,
        item,
        key,
        sort_keys: sort_keys.unwrap_or(false),
        ensure_ascii: ensure_ascii.unwrap_or(false),
    };
    let mut out = String::new();
    write_json(state, &mut out, value, &style, 0)?;
    Ok(Value::from(out))
}

fn bad_separators() -> Error {
    Error::new(ErrorKind::InvalidOperation, "tojson: separators must be two strings")
}

struct JsonStyle {
    indent: Option<String>,
    item: String,
    key: String,
    sort_keys: bool,
    ensure_ascii: bool,
}

fn write_json(
    state: &State,
    out: &mut String,
    value: &Value,
    style: &JsonStyle,
    depth: usize,
) -> Result<(), Error> {
    if depth > 100 {
        return Err(Error::new(ErrorKind::InvalidOperation, "tojson: nested too deeply"));
    }
    // A little fuel per value written: a huge structure runs out.
    state.consume_fuel(1 + out.len() as u64 / 4096)?;
    let newline = |out: &mut String, depth: usize| {
        if let Some(indent) = &style.indent {
            out.push('\n');
            for _ in 0..depth {
                out.push_str(indent);
            }
        }
    };
    match value.kind() {
        ValueKind::None => out.push_str("null"),
        ValueKind::Bool => out.push_str(if value.is_true() { "true" } else { "false" }),
        ValueKind::Number => {
            if value.is_integer() {
                out.push_str(&value.to_string());
            } else {
                let f = f64::try_from(value.clone())?;
                out.push_str(&python_float(f));
            }
        }
        ValueKind::String => json_string(out, value.as_str().unwrap_or_default(), style),
        ValueKind::Seq | ValueKind::Iterable => {
            let items: Vec<Value> = value.try_iter()?.collect();
            if items.is_empty() {
                out.push_str("[]");
                return Ok(());
            }
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(&style.item);
                }
                newline(out, depth + 1);
                write_json(state, out, item, style, depth + 1)?;
            }
            newline(out, depth);
            out.push(']');
        }
        ValueKind::Map => {
            let mut keys: Vec<Value> = value.try_iter()?.collect();
            if keys.is_empty() {
                out.push_str("{}");
                return Ok(());
            }
            if style.sort_keys {
                keys.sort();
            }
            out.push('{');
            for (i, key) in keys.iter().enumerate() {
                if i > 0 {
                    out.push_str(&style.item);
                }
                newline(out, depth + 1);
                match key.as_str() {
                    Some(s) => json_string(out, s, style),
                    // Python writes a non-string key as the string of its JSON form.
                    None => {
                        let mut k = String::new();
                        write_json(state, &mut k, key, style, depth + 1)?;
                        json_string(out, &k, style);
                    }
                }
                out.push_str(&style.key);
                write_json(state, out, &value.get_item(key)?, style, depth + 1)?;
            }
            newline(out, depth);
            out.push('}');
        }
        kind => {
            return Err(Error::new(
                ErrorKind::InvalidOperation,
                format!("tojson: a value of type {kind} is not JSON serializable"),
            ))
        }
    }
    Ok(())
}

/// A JSON string as Python's json module writes it.
fn json_string(out: &mut String, s: &str, style: &JsonStyle) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 || (style.ensure_ascii && !c.is_ascii()) => {
                let mut units = [0u16; 2];
                for u in c.encode_utf16(&mut units) {
                    out.push_str(&format!("\\u{u:04x}"));
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// A float as Python's `repr` writes it: the shortest digits that read back, positional for
/// exponents -4..16, else `1e+20`.
fn python_float(f: f64) -> String {
    if f.is_nan() {
        return "NaN".into();
    }
    if f.is_infinite() {
        return if f > 0.0 { "Infinity".into() } else { "-Infinity".into() };
    }
    let sci = format!("{f:e}"); // shortest digits: "1.5e0", "-1e20"
    let (mantissa, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    if (-4..16).contains(&exp) {
        let s = format!("{f}");
        if s.contains('.') {
            s
        } else {
            s + ".0"
        }
    } else {
        let sign = if exp < 0 { '-' } else { '+' };
        format!("{mantissa}e{sign}{:02}", exp.abs())
    }
}

/// `strftime_now(format)`: the local time now (UTC here: lmscope keeps no time zone tables),
/// with the strftime codes chat templates use.
fn strftime_now(format: &str) -> Result<String, Error> {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    Ok(strftime(format, secs))
}

/// Formats a Unix time (UTC) with strftime's codes %Y %y %m %d %e %B %b %h %A %a %H %I %M %S %p
/// %j %%; other codes are kept as written.
fn strftime(format: &str, secs: i64) -> String {
    const MONTHS: [&str; 12] = [
        "January",
        "February",
        "March",
        "April",
        "May",
        "June",
        "July",
        "August",
        "September",
        "October",
        "November",
        "December",
    ];
    const DAYS: [&str; 7] =
        ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"];
    let days = secs.div_euclid(86_400);
    let second_of_day = secs.rem_euclid(86_400);
    let (year, month, day) = civil_from_days(days);
    let weekday = (days + 3).rem_euclid(7) as usize; // 1970-01-01 was a Thursday
    let day_of_year = days - days_from_civil(year, 1, 1) + 1;
    let (hour, minute, second) =
        (second_of_day / 3600, second_of_day / 60 % 60, second_of_day % 60);
    let mut out = String::new();
    let mut chars = format.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('Y') => out.push_str(&year.to_string()),
            Some('y') => out.push_str(&format!("{:02}", year.rem_euclid(100))),
            Some('m') => out.push_str(&format!("{month:02}")),
            Some('d') => out.push_str(&format!("{day:02}")),
            Some('e') => out.push_str(&format!("{day:2}")),
            Some('B') => out.push_str(MONTHS[month as usize - 1]),
            Some('b') | Some('h') => out.push_str(&MONTHS[month as usize - 1][..3]),
            Some('A') => out.push_str(DAYS[weekday]),
            Some('a') => out.push_str(&DAYS[weekday][..3]),
            Some('H') => out.push_str(&format!("{hour:02}")),
            Some('I') => out.push_str(&format!("{:02}", (hour + 11) % 12 + 1)),
            Some('M') => out.push_str(&format!("{minute:02}")),
            Some('S') => out.push_str(&format!("{second:02}")),
            Some('p') => out.push_str(if hour < 12 { "AM" } else { "PM" }),
            Some('j') => out.push_str(&format!("{day_of_year:03}")),
            Some('%') => out.push('%'),
            Some(other) => {
                out.push('%');
                out.push(other);
            }
            None => out.push('%'),
        }
    }
    out
}

/// Howard Hinnant's civil calendar algorithms: days since 1970-01-01 <-> (year, month, day).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let yoe = year.rem_euclid(400);
    let m = i64::from(month);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The prompt `--chat` runs the model on: `user` (and `system`) in the chat template of the
/// model's tokenizer. `model` names the model in the error when it has no template.
///
/// A tokenizer that puts a BOS token in front of every text by itself would, on a template that
/// writes `{{ bos_token }}`, give two; transformers tokenizes a rendered chat without adding
/// special tokens, so here the template's leading BOS is left to the tokenizer: the ids are the
/// same.
pub fn prompt(
    tokenizer: &crate::tokenizer::Tokenizer,
    model: &str,
    system: Option<&str>,
    user: &str,
) -> Result<String> {
    let Some(template) = tokenizer.chat_template()? else {
        bail!(
            "the model {model} has no chat template (no tokenizer.chat_template in its GGUF \
             metadata, no chat_template.jinja or chat_template in tokenizer_config.json): drop \
             --chat to run it on the text as it is"
        );
    };
    let rendered = template.render(system, user)?;
    if rendered.is_empty() {
        bail!(
            "the chat template ({}) of {model} rendered nothing for this message",
            template.origin()
        );
    }
    if let Some(bos) = tokenizer.added_bos()? {
        if let Some(rest) = rendered.strip_prefix(bos.as_str()) {
            return Ok(rest.to_string());
        }
    }
    Ok(rendered)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMOLLM2: &str = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

    fn template(source: &str) -> ChatTemplate {
        ChatTemplate::new(
            source,
            "a test",
            vec![("bos_token".into(), "<s>".into()), ("eos_token".into(), "</s>".into())],
        )
    }

    #[test]
    fn smollm2_default_and_given_system() {
        let t = template(SMOLLM2);
        assert_eq!(
            t.render(None, "Hi").unwrap(),
            "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging \
             Face<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
        );
        assert_eq!(
            t.render(Some(""), "Hi").unwrap(),
            "<|im_start|>system\n<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
        );
    }

    #[test]
    fn jinja2_whitespace_control_special_tokens_and_loop_controls() {
        // trim_blocks removes the newline after a tag, lstrip_blocks the indentation before one;
        // the template's last newline goes (keep_trailing_newline=False).
        let t = template(
            "{{ bos_token }}\n{% for m in messages %}\n  {% if m.role == 'system' %}{% continue %}{% endif %}\n[{{ m.content.strip() | upper }}]\n{% endfor %}\n{{ eos_token }}\n",
        );
        assert_eq!(t.render(Some("sys"), "  hi  ").unwrap(), "<s>\n[HI]\n</s>");
    }

    #[test]
    fn tojson_is_pythons() {
        let t = template(
            "{{ messages | tojson }}|{{ {'b': 1, 'a': [1.5, 1e20, none, true]} | tojson(sort_keys=true) }}|{{ 'é<&>' | tojson }}|{{ tools | tojson }}|{{ [1, {'x': 2}] | tojson(indent=2) }}",
        );
        assert_eq!(
            t.render(None, "é\n\"").unwrap(),
            "[{\"role\": \"user\", \"content\": \"é\\n\\\"\"}]|{\"a\": [1.5, 1e+20, null, true], \
             \"b\": 1}|\"é<&>\"|null|[\n  1,\n  {\n    \"x\": 2\n  }\n]"
        );
    }

    #[test]
    fn hostile_templates_fail_with_one_line() {
        let cases = [
            ("{% for i in range(100000) %}{{ messages[0].content }}{% endfor %}", "wrote more than 1024 KiB"),
            ("{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}", "ran out of fuel"),
            ("{% set ns = namespace(s='x') %}{% for i in range(64) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}", "ran out of fuel"),
            ("{{ raise_exception('Conversation roles must alternate\nuser/assistant') }}", "refused the conversation: Conversation roles must alternate user/assistant"),
            ("{% for m in messages %}", "is not a valid template"),
            ("{% include 'other' %}", "the chat template (a test)"),
            ("{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}", "the chat template (a test)"),
        ];
        for (source, expected) in cases {
            let err = template(source).render(None, &"x".repeat(100)).unwrap_err().to_string();
            assert!(err.contains(expected), "{source}: {err}");
            assert!(!err.contains('\n'), "{source}: {err}");
        }
    }

    #[test]
    fn strftime_codes() {
        // 2024-07-26 13:05:09 UTC, a Friday, day 208.
        let t = 1_722_000_000 - 1_722_000_000 % 86_400 + 13 * 3600 + 5 * 60 + 9;
        assert_eq!(
            strftime("%d %b %Y, %A %H:%M:%S %p %j %y %m %%", t),
            "26 Jul 2024, Friday 13:05:09 PM 208 24 07 %"
        );
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
    }

    #[test]
    fn python_floats() {
        assert_eq!(python_float(1.5), "1.5");
        assert_eq!(python_float(2.0), "2.0");
        assert_eq!(python_float(1e20), "1e+20");
        assert_eq!(python_float(1e-5), "1e-05");
        assert_eq!(python_float(0.0001), "0.0001");
        assert_eq!(python_float(-1.25e16), "-1.25e+16");
    }

    #[test]
    fn named_templates_in_a_config() {
        let list = serde_json::json!([{"name": "tool_use", "template": "T"}, {"name": "default", "template": "D"}]);
        assert_eq!(config_template(&list).unwrap(), "D");
        assert!(config_template(&serde_json::json!(3)).is_err());
    }
}

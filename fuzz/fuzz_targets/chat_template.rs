//! Arbitrary bytes as a model's chat template (the part before the first NUL byte) and a user
//! message (the rest): `ChatTemplate::render` must return `Ok` or one-line `Err`, never panic,
//! hang (libFuzzer's -timeout) or allocate without bound (-rss_limit_mb), and an `Ok` prompt
//! stays within the output limit. A template is untrusted code from the model file.
#![no_main]

use libfuzzer_sys::fuzz_target;
use lmscope::chat::ChatTemplate;

fuzz_target!(|data: &[u8]| {
    let (source, user) = match data.iter().position(|&b| b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &b"What is the capital of Finland?"[..]),
    };
    let (Ok(source), Ok(user)) = (std::str::from_utf8(source), std::str::from_utf8(user)) else {
        return;
    };
    let special = [
        ("bos_token", "<|im_start|>"),
        ("eos_token", "<|im_end|>"),
        ("unk_token", "<|endoftext|>"),
        ("pad_token", "<|im_end|>"),
    ];
    let template = ChatTemplate::new(
        source,
        "fuzz",
        special.iter().map(|(n, t)| (n.to_string(), t.to_string())).collect(),
    );
    for system in [None, Some(""), Some("You are a pirate.")] {
        match template.render(system, user) {
            Ok(prompt) => {
                let input = user.len() + system.map_or(0, str::len) + "system".len() + "user".len();
                assert!(prompt.len() <= (1 << 20) + 2 * input, "{} bytes", prompt.len());
            }
            Err(e) => {
                let message = format!("{e:#}");
                assert!(!message.contains('\n'), "a multi-line error: {message}");
                assert!(message.starts_with("the chat template (fuzz)"), "{message}");
            }
        }
    }
});

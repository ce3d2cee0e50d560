//! `lmscope generate` and `lmscope argmax`: append the chosen token and run the model again,
//! with the KV cache so each new token costs one position of work.

use crate::input::Prompt;
use crate::load::LoadedModel;
use crate::model::KvCache;
use crate::sampling::{argmax, probabilities_of, Pipeline, Rng, Strategy};
use crate::tokenizer::Tokenizer;
use anyhow::{ensure, Result};
use serde::Serialize;

/// One generated token and what the model thought of it.
#[derive(Debug, Clone, Serialize)]
pub struct Step {
    pub id: u32,
    pub token: String,
    /// The readable text of the token (` Helsinki`).
    pub text: String,
    /// The exact bytes of the token (`text` shows U+FFFD for part of a character).
    pub bytes: Vec<u8>,
    pub logit: f32,
    /// The model's probability for this token (softmax of the logits, temperature 1).
    pub prob: f64,
    /// The most likely token other than the chosen one.
    pub runner_up_id: u32,
    pub runner_up_token: String,
    pub runner_up_text: String,
    pub runner_up_prob: f64,
    /// When sampling: the probability the token was drawn with (after temperature/top-k/top-p).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sample_prob: Option<f64>,
}

pub struct GenerateRequest<'a> {
    pub prompt: &'a Prompt,
    pub max_new_tokens: usize,
    pub strategy: Strategy,
    /// Stop when the model produces an end-of-sequence token.
    pub stop_at_eos: bool,
    /// The option that sets `max_new_tokens`, for messages (`--max-new-tokens`, argmax's
    /// `--steps`).
    pub limit_flag: &'static str,
    /// Count the tokens on a progress line (where enabled; not when the text itself streams
    /// onto the terminal).
    pub progress: bool,
}

#[derive(Debug, Serialize)]
pub struct GenerateReport {
    pub prompt: String,
    pub prompt_ids: Vec<u32>,
    pub new_ids: Vec<u32>,
    /// The decoded new tokens only.
    pub generated: String,
    /// The prompt followed by the generated text, as the pipeline's `generated_text`.
    pub text: String,
    /// Why generation ended: "eos" or "max_new_tokens".
    pub stopped: &'static str,
    /// "greedy", or "sample" with its parameters.
    pub strategy: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    pub steps: Vec<Step>,
}

/// Generates up to `max_new_tokens`, calling `on_step` as each token is chosen (for streaming).
pub fn run(
    m: &LoadedModel,
    req: &GenerateRequest,
    on_step: &mut dyn FnMut(&Step) -> Result<()>,
) -> Result<GenerateReport> {
    ensure!(!req.prompt.is_empty(), "the text is empty: give a prompt to continue");
    let flag = req.limit_flag;
    ensure!(req.max_new_tokens > 0, "{flag} must be at least 1");
    let cfg = &m.model.cfg;
    req.strategy.validate(cfg.vocab_size)?;
    let prompt_ids = req.prompt.ids(&m.tokenizer)?;
    ensure!(!prompt_ids.is_empty(), "the text produced no tokens");
    check_room(prompt_ids.len(), req.max_new_tokens, cfg.max_position_embeddings, flag)?;

    let mut rng = match req.strategy {
        Strategy::Sample { seed, .. } => Some(Rng::new(seed)),
        Strategy::Greedy => None,
    };
    let mut cache = KvCache::new();
    let mut input = prompt_ids.clone();
    let mut steps = Vec::new();
    let mut stopped = "max_new_tokens";
    let mut counter = None;
    for _ in 0..req.max_new_tokens {
        // Ctrl-C in the repl stops between tokens.
        crate::interrupt::check()?;
        let started = std::time::Instant::now();
        let logits: Vec<f32> = m.model.next_logits(&input, &mut cache)?.to_vec1()?;
        if !steps.is_empty() {
            // One new token against the cache: a decoding step (`--timings` gives their rate).
            crate::timings::decode_step(started.elapsed());
        }
        let step = choose(m, &logits, &req.strategy, rng.as_mut())?;
        on_step(&step)?;
        let id = step.id;
        steps.push(step);
        // Counted from the first token on: the prompt's pass has its own line.
        if req.progress && counter.is_none() && req.max_new_tokens > 1 {
            counter = crate::progress::counter("generating".into(), req.max_new_tokens as u64);
        }
        if let Some(c) = &counter {
            c.set_position(steps.len() as u64);
        }
        if req.stop_at_eos && cfg.eos_token_ids.contains(&id) {
            stopped = "eos";
            break;
        }
        input = vec![id];
    }

    let new_ids: Vec<u32> = steps.iter().map(|s| s.id).collect();
    let all: Vec<u32> = prompt_ids.iter().chain(&new_ids).copied().collect();
    let (strategy, seed) = match &req.strategy {
        Strategy::Greedy => ("greedy".to_string(), None),
        Strategy::Sample { temperature, top_k, top_p, seed } => (
            format!(
                "sample (temperature {}, top-k {}, top-p {})",
                crate::text::number(*temperature),
                top_k.map_or("off".into(), |k| k.to_string()),
                top_p.map_or("off".into(), crate::text::number)
            ),
            Some(*seed),
        ),
    };
    Ok(GenerateReport {
        prompt: req.prompt.text(&m.tokenizer)?,
        generated: m.tokenizer.decode(&new_ids)?,
        text: m.tokenizer.decode(&all)?,
        prompt_ids,
        new_ids,
        stopped,
        strategy,
        seed,
        steps,
    })
}

/// Prompts of more tokens than this are echoed shortened by `argmax` and `generate`.
pub const ECHO_WHOLE: usize = 64;
/// How many tokens of a long prompt's start and end the echo keeps.
pub const ECHO_HEAD: usize = 16;
pub const ECHO_TAIL: usize = 32;

/// The prompt as `argmax` and `generate` echo it before what they add: whole up to
/// [`ECHO_WHOLE`] tokens, else its first [`ECHO_HEAD`] and last [`ECHO_TAIL`] tokens around a
/// marker that says how many were left out (the JSON always has the whole prompt).
pub fn echo(tokenizer: &Tokenizer, prompt: &Prompt) -> Result<String> {
    let ids = prompt.ids(tokenizer)?;
    if ids.len() <= ECHO_WHOLE {
        return prompt.text(tokenizer);
    }
    let bytes = |ids: &[u32]| -> Result<Vec<u8>> {
        let mut b = Vec::new();
        for &id in ids {
            b.extend(tokenizer.describe(id)?.bytes);
        }
        Ok(b)
    };
    let head = bytes(&ids[..ECHO_HEAD])?;
    let tail = bytes(&ids[ids.len() - ECHO_TAIL..])?;
    Ok(format!(
        "{}[... {} left out ...]{}",
        String::from_utf8_lossy(&head),
        crate::text::count(ids.len() - ECHO_HEAD - ECHO_TAIL, "token"),
        String::from_utf8_lossy(&tail)
    ))
}

/// Refuses a prompt that leaves no room in the model's context, or more new tokens than fit.
pub fn check_room(prompt: usize, new: usize, context: usize, flag: &str) -> Result<()> {
    use crate::text::count;
    ensure!(
        prompt < context,
        "the prompt is {} long, but the model's context is {context} positions: shorten it to at \
         most {} to leave room for a new one",
        count(prompt, "token"),
        count(context.saturating_sub(1), "token")
    );
    ensure!(
        new <= context - prompt,
        "{flag} {new} does not fit: the prompt has {} and the model's context is {context} \
         positions, so at most {} can follow",
        count(prompt, "token"),
        count(context - prompt, "new token")
    );
    Ok(())
}

/// Picks the next token from a logit row and describes the choice.
fn choose(
    m: &LoadedModel,
    logits: &[f32],
    strategy: &Strategy,
    rng: Option<&mut Rng>,
) -> Result<Step> {
    let (id, sample_prob) = match (strategy, rng) {
        (Strategy::Sample { temperature, top_k, top_p, .. }, Some(rng)) => {
            // The same pipeline and draw as `lmscope sample`, so a seed gives the same tokens.
            let settings = crate::sampling::Settings {
                temperature: *temperature,
                top_k: *top_k,
                top_p: *top_p,
            };
            let dist = Pipeline::new(logits, &settings).sampled;
            let id = rng.choose(&dist);
            (id, Some(dist[id]))
        }
        _ => (argmax(logits), None),
    };
    // The runner-up: the best token other than the chosen one.
    let runner_up = (0..logits.len())
        .filter(|&i| i != id)
        .max_by(|&a, &b| logits[a].total_cmp(&logits[b]).then(b.cmp(&a)))
        .unwrap_or(id);
    let [prob, runner_up_prob] = probabilities_of(logits, [id, runner_up]);
    let token = m.tokenizer.describe(id as u32)?;
    let runner = m.tokenizer.describe(runner_up as u32)?;
    Ok(Step {
        id: id as u32,
        token: token.token,
        text: token.text,
        bytes: token.bytes,
        logit: logits[id],
        prob,
        runner_up_id: runner_up as u32,
        runner_up_token: runner.token,
        runner_up_text: runner.text,
        runner_up_prob,
        sample_prob,
    })
}

/// `lmscope argmax`: the greedy next token, and optionally more steps of greedy decoding.
#[derive(Debug, Serialize)]
pub struct ArgmaxReport {
    /// The first predicted token, as `logits.argmax()` and `convert_ids_to_tokens` show it.
    pub id: u32,
    pub token: String,
    pub prob: f64,
    /// The prompt with the predicted token(s) appended.
    pub text: String,
    pub prompt_ids: Vec<u32>,
    pub steps: Vec<Step>,
    /// `text` as the table shows it: a long prompt shortened ([`echo`]).
    #[serde(skip)]
    pub shown: String,
}

pub fn argmax_steps(m: &LoadedModel, prompt: &Prompt, steps: usize) -> Result<ArgmaxReport> {
    ensure!(steps > 0, "--steps must be at least 1");
    let req = GenerateRequest {
        prompt,
        max_new_tokens: steps,
        strategy: Strategy::Greedy,
        stop_at_eos: false,
        limit_flag: "--steps",
        progress: true,
    };
    let r = run(m, &req, &mut |_| Ok(()))?;
    let first = &r.steps[0];
    let shown = if r.prompt_ids.len() <= ECHO_WHOLE {
        r.text.clone()
    } else {
        echo(&m.tokenizer, prompt)? + &r.generated
    };
    Ok(ArgmaxReport {
        shown,
        id: first.id,
        token: first.token.clone(),
        prob: first.prob,
        text: r.text,
        prompt_ids: r.prompt_ids,
        steps: r.steps,
    })
}

#[cfg(test)]
mod tests {
    use super::check_room;

    #[test]
    fn room_messages_name_the_flag_and_the_prompt() {
        assert!(check_room(5, 8187, 8192, "--steps").is_ok());
        let e = check_room(5, 10000, 8192, "--steps").unwrap_err().to_string();
        assert!(e.starts_with("--steps 10000 does not fit: the prompt has 5 tokens"), "{e}");
        assert!(e.contains("at most 8187 new tokens can follow"), "{e}");
        let e = check_room(1, 10000, 8192, "--max-new-tokens").unwrap_err().to_string();
        assert!(
            e.starts_with("--max-new-tokens 10000 does not fit: the prompt has 1 token "),
            "{e}"
        );
        // A prompt as long as the context or longer is the prompt's fault, whatever the flag.
        for prompt in [8192, 29715] {
            let e = check_room(prompt, 1, 8192, "--steps").unwrap_err().to_string();
            assert!(e.starts_with(&format!("the prompt is {prompt} tokens long")), "{e}");
            assert!(!e.contains("--steps") && !e.contains("--max-new-tokens"), "{e}");
        }
    }
}

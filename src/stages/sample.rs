//! `lmscope sample`: one sampling step taken apart. The logits go through transformers'
//! pipeline (temperature, top-k, top-p, renormalise) and a seeded uniform number picks a token;
//! every stage's distribution is kept. `--steps N` appends each drawn token and goes on, with the
//! same pipeline, generator and KV cache as `generate --sample`, so a seed gives the same tokens.

use crate::load::LoadedModel;
use crate::model::KvCache;
use crate::sampling::{draw, Pipeline, Rng, Settings};
use anyhow::{ensure, Result};
use serde::Serialize;

pub struct SampleRequest<'a> {
    pub prompt: &'a crate::input::Prompt,
    pub settings: Settings,
    pub seed: u64,
    /// How many tokens to draw, appending each.
    pub steps: usize,
    /// How many candidates (most likely first) each step lists; None: every kept token.
    pub rows: Option<usize>,
    /// Stop when an end-of-sequence token is drawn (as `generate` does by default).
    pub stop_at_eos: bool,
}

#[derive(Debug, Serialize)]
pub struct SampleReport {
    pub prompt: String,
    pub prompt_ids: Vec<u32>,
    pub temperature: f64,
    pub top_k: Option<usize>,
    pub top_p: Option<f64>,
    pub seed: u64,
    pub steps: Vec<SampleStep>,
    pub new_ids: Vec<u32>,
    /// The prompt followed by the drawn tokens.
    pub text: String,
    /// "eos" or "steps".
    pub stopped: &'static str,
    /// The prompt as the table echoes it: a long prompt shortened, as `argmax` and `generate`
    /// echo it (`generate::echo`; the JSON has the whole prompt).
    #[serde(skip)]
    pub prompt_shown: String,
}

#[derive(Debug, Serialize)]
pub struct SampleStep {
    /// 1-based.
    pub step: usize,
    /// The drawn token.
    pub id: u32,
    pub token: String,
    pub text: String,
    /// The exact bytes (for the table: part of a character shows as `\xF0`).
    #[serde(skip)]
    pub bytes: Vec<u8>,
    /// Its rank in the model's distribution (1 = most likely).
    pub rank: usize,
    /// The uniform number in [0, 1) drawn for this step.
    pub u: f64,
    /// The drawn token's interval [lo, hi) when the sampled distribution's tokens are laid end
    /// to end in id order (as torch.multinomial's cumulative sum lays them): u falls inside it.
    pub interval: [f64; 2],
    /// How many tokens the sampled distribution has (after every filter).
    pub kept: usize,
    pub stages: Vec<StageReport>,
    /// The sampled (renormalised) distribution: kept tokens, most likely first (the first
    /// `--rows` of them).
    #[serde(rename = "final")]
    pub final_dist: Vec<FinalToken>,
    /// The most likely tokens (kept or not) through every stage, and the drawn token if it is
    /// not among them.
    pub candidates: Vec<Candidate>,
}

#[derive(Debug, Serialize)]
pub struct StageReport {
    /// "temperature", "top-k" or "top-p".
    pub stage: &'static str,
    /// T, k or p; null when the filter is off.
    pub setting: Option<f64>,
    /// Tokens left after the stage.
    pub kept: usize,
    /// Probability mass the stage kept, in the distribution it was given.
    pub mass: f64,
    /// Probability mass the stage removed.
    pub cut: f64,
}

#[derive(Debug, Serialize)]
pub struct FinalToken {
    pub id: u32,
    pub token: String,
    pub prob: f64,
}

#[derive(Debug, Serialize)]
pub struct Candidate {
    pub rank: usize,
    pub id: u32,
    pub token: String,
    pub text: String,
    /// The exact bytes (for the table: part of a character shows as `\xF0`).
    #[serde(skip)]
    pub bytes: Vec<u8>,
    pub logit: f32,
    /// softmax(logits): temperature 1.
    pub prob: f64,
    /// softmax(logits / T).
    pub prob_temperature: f64,
    /// After top-k, renormalised; null when top-k removed the token.
    pub prob_top_k: Option<f64>,
    /// After top-p, renormalised (the sampled probability); null when removed.
    pub prob_final: Option<f64>,
    /// Σ prob_top_k of this token and every more likely one: what top-p compares with p (it
    /// keeps tokens down to the first whose cumulative mass reaches p).
    pub cumulative: f64,
    /// Whether this is the drawn token.
    pub drawn: bool,
}

pub fn run(m: &LoadedModel, req: &SampleRequest) -> Result<SampleReport> {
    ensure!(!req.prompt.is_empty(), "the text is empty: give a prompt to sample after");
    ensure!(req.steps > 0, "--steps must be at least 1");
    if let Some(rows) = req.rows {
        ensure!(rows > 0, "--rows must be at least 1 (or \"all\")");
    }
    let cfg = &m.model.cfg;
    req.settings.validate(cfg.vocab_size)?;
    let prompt_ids = req.prompt.ids(&m.tokenizer)?;
    ensure!(!prompt_ids.is_empty(), "the text produced no tokens");
    let room = cfg.max_position_embeddings.saturating_sub(prompt_ids.len());
    ensure!(
        req.steps <= room,
        "--steps {} does not fit: the prompt has {} and the model's context is {}",
        req.steps,
        crate::text::count(prompt_ids.len(), "token"),
        cfg.max_position_embeddings
    );

    let mut rng = Rng::new(req.seed);
    let mut cache = KvCache::new();
    let mut input = prompt_ids.clone();
    let mut steps = Vec::new();
    let mut stopped = "steps";
    let mut counter = None;
    for step in 1..=req.steps {
        // Ctrl-C in the repl stops between tokens.
        crate::interrupt::check()?;
        let logits: Vec<f32> = m.model.next_logits(&input, &mut cache)?.to_vec1()?;
        let p = Pipeline::new(&logits, &req.settings);
        let u = rng.next_f64();
        let (id, lo, hi) = draw(&p.sampled, u);
        steps.push(describe_step(m, step, &logits, &p, id, u, [lo, hi], req.rows)?);
        // Counted from the first draw on: the prompt's pass has its own line.
        if counter.is_none() && req.steps > 1 {
            counter = crate::progress::counter("sampling".into(), req.steps as u64);
        }
        if let Some(c) = &counter {
            c.set_position(step as u64);
        }
        if req.stop_at_eos && cfg.eos_token_ids.contains(&(id as u32)) {
            stopped = "eos";
            break;
        }
        input = vec![id as u32];
    }
    let new_ids: Vec<u32> = steps.iter().map(|s| s.id).collect();
    let all: Vec<u32> = prompt_ids.iter().chain(&new_ids).copied().collect();
    Ok(SampleReport {
        prompt: req.prompt.text(&m.tokenizer)?,
        prompt_shown: super::generate::echo(&m.tokenizer, req.prompt)?,
        text: m.tokenizer.decode(&all)?,
        prompt_ids,
        temperature: req.settings.temperature,
        top_k: req.settings.top_k,
        top_p: req.settings.top_p,
        seed: req.seed,
        steps,
        new_ids,
        stopped,
    })
}

#[allow(clippy::too_many_arguments)]
fn describe_step(
    m: &LoadedModel,
    step: usize,
    logits: &[f32],
    p: &Pipeline,
    id: usize,
    u: f64,
    interval: [f64; 2],
    rows: Option<usize>,
) -> Result<SampleStep> {
    let rank = p.order.iter().position(|&i| i == id).map_or(0, |r| r + 1);
    let kept = p.kept();
    let shown = rows.unwrap_or(kept);
    let final_dist = p
        .order
        .iter()
        .filter(|&&i| p.keep[i])
        .take(shown)
        .map(|&i| {
            Ok(FinalToken {
                id: i as u32,
                token: m.tokenizer.describe(i as u32)?.token,
                prob: p.sampled[i],
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let mut candidates = Vec::new();
    let mut cumulative = 0.0;
    for (r, &i) in p.order.iter().enumerate() {
        cumulative += p.after_top_k[i];
        if r >= shown && i != id {
            continue;
        }
        let t = m.tokenizer.describe(i as u32)?;
        candidates.push(Candidate {
            rank: r + 1,
            id: i as u32,
            token: t.token,
            text: t.text,
            bytes: t.bytes,
            logit: logits[i],
            prob: p.plain[i],
            prob_temperature: p.tempered[i],
            // Each filter keeps a prefix of the ranking (ties with its cut included).
            prob_top_k: (r < p.stages[1].kept).then_some(p.after_top_k[i]),
            prob_final: p.keep[i].then_some(p.sampled[i]),
            cumulative,
            drawn: i == id,
        });
        if r + 1 >= shown && r + 1 >= rank {
            break;
        }
    }
    let stages = p
        .stages
        .iter()
        .map(|s| StageReport {
            stage: s.stage,
            setting: s.setting,
            kept: s.kept,
            mass: s.mass,
            cut: s.cut,
        })
        .collect();
    let t = m.tokenizer.describe(id as u32)?;
    Ok(SampleStep {
        step,
        id: id as u32,
        token: t.token,
        text: t.text,
        bytes: t.bytes,
        rank,
        u,
        interval,
        kept,
        stages,
        final_dist,
        candidates,
    })
}

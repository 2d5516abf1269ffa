//! Text cleaning for `llava-pack build` (`--text-clean default|off|strict`): normalisations
//! applied to captions and to every conversation/messages turn, and reject rules, before the
//! sample is hashed for dedup and written. Deterministic: the result depends on the text and
//! the options only.
//!
//! Steps are named; `--text-rules` switches them on top of the mode (`-mojibake,+roles`):
//!
//! | name | kind | default | strict |
//! |---|---|---|---|
//! | `mojibake`, `html`, `controls`, `nfc`, `whitespace` | normalisation | on | on |
//! | `empty`, `url`, `filename`, `boilerplate`, `repetition`, `placeholders`, `roles` | reject | on | on |
//!
//! `strict` differs from `default` in thresholds: repetition rejects at 5 repeats instead of
//! 10, and `placeholders` also rejects a sample with images but no `<image>` marker (unless
//! `--fix-placeholders prepend` fixed it). `--max-text-tokens` adds the `too_long` rule,
//! `--dedup-text` exact caption dedup. The rules table with reasons is in `docs/format.md`.

pub mod normalize;
pub mod rules;
mod sample;
mod stats;

use std::path::PathBuf;

use serde::Serialize;
use serde_json::{json, Value};

use crate::error::{PackError, Result};

pub use sample::{Cleaned, Example, TextLog};
pub use stats::{finish, TextStats, REPORT_FILE};

/// `--text-clean`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CleanMode {
    Off,
    Default,
    Strict,
}

impl CleanMode {
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "off" => Ok(CleanMode::Off),
            "default" => Ok(CleanMode::Default),
            "strict" => Ok(CleanMode::Strict),
            _ => Err(PackError::InvalidOption(format!(
                "--text-clean must be default, off or strict, not {s:?}"
            ))),
        }
    }
}

/// Normalisations, in the order they run (bit = index).
pub const NORMALISATIONS: [&str; 5] = ["mojibake", "html", "controls", "nfc", "whitespace"];
/// Reject rules switchable by name (bit = 5 + index).
pub const RULES: [&str; 7] = [
    "empty",
    "url",
    "filename",
    "boilerplate",
    "repetition",
    "placeholders",
    "roles",
];
/// The change counted when `--fix-placeholders prepend` adds a marker (not a switch).
pub const PREPEND: &str = "placeholder_prepend";
/// The rule behind `--max-text-tokens` (on when the option is given).
pub const TOO_LONG: &str = "too_long";

pub(crate) fn bit(name: &str) -> Option<u32> {
    NORMALISATIONS
        .iter()
        .chain(RULES.iter())
        .position(|n| *n == name)
        .map(|i| i as u32)
}

pub(crate) const PREPEND_BIT: u32 = 12;
pub(crate) const TOO_LONG_BIT: u32 = 13;

/// Name of a step bit (normalisation, rule, prepend or too_long).
pub(crate) fn name_of(bit: u32) -> &'static str {
    match bit {
        0..=4 => NORMALISATIONS[bit as usize],
        5..=11 => RULES[bit as usize - 5],
        PREPEND_BIT => PREPEND,
        _ => TOO_LONG,
    }
}

/// The static name of a normalisation or rule from its text (scan metadata read back).
pub(crate) fn static_name(s: &str) -> Option<&'static str> {
    (0..=TOO_LONG_BIT).map(name_of).find(|n| *n == s)
}

/// Largest `--text-report`: examples are kept in the checkpoint until the job ends.
pub const MAX_REPORT: usize = 1000;

#[derive(Debug, Clone, PartialEq)]
pub struct TextOptions {
    pub mode: CleanMode,
    /// `--text-rules` entries (`+name`, `-name` or `name`, comma-separated), applied in order.
    pub rules: Vec<String>,
    /// Reject texts estimated above this many tokens (`too_long`).
    pub max_text_tokens: Option<u64>,
    /// Repeats of a 1-8 token unit that make `repetition` reject (mode default if `None`).
    pub max_repeats: Option<u32>,
    /// Boilerplate captions, one per line (`#` comments); replaces the built-in list.
    pub boilerplate: Option<PathBuf>,
    /// `--fix-placeholders prepend`: add `<image>\n` to the first human turn of a one-image
    /// LLaVA conversation that has no `<image>` marker.
    pub fix_placeholders: bool,
    /// `--dedup-text`: drop a caption sample whose cleaned caption repeats an earlier one.
    pub dedup_text: bool,
    /// `--text-report N`: before/after examples per step in `text_report.jsonl`.
    pub report: usize,
}

impl Default for TextOptions {
    fn default() -> Self {
        TextOptions {
            mode: CleanMode::Default,
            rules: Vec::new(),
            max_text_tokens: None,
            max_repeats: None,
            boilerplate: None,
            fix_placeholders: false,
            dedup_text: false,
            report: 0,
        }
    }
}

impl TextOptions {
    /// Bits of the steps that run: the mode's, then each `--text-rules` switch in order.
    pub fn enabled(&self) -> Result<u32> {
        let all = (1u32 << (NORMALISATIONS.len() + RULES.len())) - 1;
        let mut mask = if self.mode == CleanMode::Off { 0 } else { all };
        for entry in self.rules.iter().flat_map(|r| r.split(',')) {
            let e = entry.trim();
            if e.is_empty() {
                continue;
            }
            let (on, name) = match e.as_bytes()[0] {
                b'+' => (true, &e[1..]),
                b'-' => (false, &e[1..]),
                _ => (true, e),
            };
            let b = bit(name).ok_or_else(|| {
                PackError::InvalidOption(format!(
                    "--text-rules: unknown step {name:?}; known: {}",
                    NORMALISATIONS
                        .iter()
                        .chain(RULES.iter())
                        .copied()
                        .collect::<Vec<_>>()
                        .join(", ")
                ))
            })?;
            if on {
                mask |= 1 << b;
            } else {
                mask &= !(1 << b);
            }
        }
        Ok(mask)
    }

    pub fn repeats(&self) -> u32 {
        self.max_repeats.unwrap_or(match self.mode {
            CleanMode::Strict => 5,
            _ => 10,
        })
    }

    pub fn validate(&self) -> Result<()> {
        self.enabled()?;
        let bad = |m: String| Err(PackError::InvalidOption(m));
        if self.max_repeats.is_some_and(|n| n < 2) {
            return bad("--max-repeats must be at least 2".into());
        }
        if self.max_text_tokens == Some(0) {
            return bad("--max-text-tokens must be positive".into());
        }
        if self.report > MAX_REPORT {
            return bad(format!(
                "--text-report {} exceeds {MAX_REPORT}",
                self.report
            ));
        }
        self.boilerplate_phrases()?;
        Ok(())
    }

    /// The boilerplate list in use: the file's non-empty, non-`#` lines, or the built-in list.
    pub fn boilerplate_phrases(&self) -> Result<Vec<String>> {
        let Some(path) = &self.boilerplate else {
            return Ok(rules::DEFAULT_BOILERPLATE
                .iter()
                .map(|s| s.to_string())
                .collect());
        };
        let text = std::fs::read_to_string(path).map_err(|e| {
            PackError::InvalidOption(format!("--boilerplate {}: {e}", path.display()))
        })?;
        Ok(text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(str::to_string)
            .collect())
    }

    /// What the job fingerprint records: everything that changes the output. The boilerplate
    /// list is recorded by content hash, so editing the file refuses `--resume`.
    pub fn fingerprint(&self) -> Value {
        let mask = self.enabled().unwrap_or(0);
        let steps: Vec<&str> = (0..12)
            .filter(|b| mask & (1 << b) != 0)
            .map(name_of)
            .collect();
        let boilerplate = match &self.boilerplate {
            None => json!("builtin"),
            Some(_) => match self.boilerplate_phrases() {
                Ok(p) => json!(hex::encode(
                    &blake3::hash(p.join("\n").as_bytes()).as_bytes()[..16]
                )),
                Err(_) => Value::Null,
            },
        };
        json!({
            "mode": self.mode,
            "steps": steps,
            "max_text_tokens": self.max_text_tokens,
            "max_repeats": self.repeats(),
            "boilerplate": boilerplate,
            "fix_placeholders": if self.fix_placeholders { "prepend" } else { "off" },
            "dedup_text": self.dedup_text,
            "report": self.report,
        })
    }
}

/// A normalisation: the new text, or `None` when it leaves the text as it is.
type Step = fn(&str) -> Option<String>;

/// The resolved options the workers use.
pub struct Cleaner {
    mask: u32,
    strict: bool,
    max_repeats: u32,
    max_tokens: Option<u64>,
    boilerplate: rules::Boilerplate,
    prepend: bool,
    dedup_text: bool,
    report: usize,
}

impl Cleaner {
    pub fn new(o: &TextOptions) -> Result<Self> {
        let phrases = o.boilerplate_phrases()?;
        Ok(Cleaner {
            mask: o.enabled()?,
            strict: o.mode == CleanMode::Strict,
            max_repeats: o.repeats(),
            max_tokens: o.max_text_tokens,
            boilerplate: rules::Boilerplate::new(phrases.iter().map(String::as_str)),
            prepend: o.fix_placeholders,
            dedup_text: o.dedup_text,
            report: o.report,
        })
    }

    fn on(&self, name: &str) -> bool {
        bit(name).is_some_and(|b| self.mask & (1 << b) != 0)
    }

    /// Nothing to do at all (`--text-clean off` without other text options).
    pub fn is_noop(&self) -> bool {
        self.mask == 0 && self.max_tokens.is_none() && !self.prepend && !self.dedup_text
    }

    /// Apply the enabled normalisations to one string; returns the bits of those that changed
    /// it. `caption`: HTML is stripped and all whitespace collapsed (turns keep newlines).
    pub fn normalise(&self, s: &mut String, caption: bool) -> u32 {
        let mut changed = 0;
        let steps: [(u32, Step); 5] = [
            (0, normalize::mojibake),
            (1, normalize::html),
            (2, normalize::controls),
            (3, normalize::nfc),
            (
                4,
                if caption {
                    normalize::whitespace_caption
                } else {
                    normalize::whitespace_turn
                },
            ),
        ];
        for (b, f) in steps {
            if self.mask & (1 << b) == 0 || (b == 1 && !caption) {
                continue;
            }
            if let Some(new) = f(s) {
                *s = new;
                changed |= 1 << b;
            }
        }
        changed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_and_switches_resolve_to_steps() {
        let mut o = TextOptions::default();
        assert_eq!(o.enabled().unwrap(), (1 << 12) - 1);
        o.rules = vec!["-mojibake,+mojibake, -roles".into(), "-html".into()];
        let m = o.enabled().unwrap();
        assert!(m & 1 != 0 && m & (1 << bit("roles").unwrap()) == 0 && m & 2 == 0);
        o.mode = CleanMode::Off;
        o.rules = vec!["whitespace".into()];
        assert_eq!(o.enabled().unwrap(), 1 << 4);
        o.rules = vec!["+dedupe".into()];
        let e = o.validate().unwrap_err().to_string();
        assert!(e.contains("--text-rules") && e.contains("dedupe"), "{e}");
    }

    #[test]
    fn fingerprint_changes_with_every_option_that_changes_output() {
        let a = TextOptions::default();
        let fp = a.fingerprint();
        for change in [
            TextOptions {
                mode: CleanMode::Strict,
                ..a.clone()
            },
            TextOptions {
                rules: vec!["-html".into()],
                ..a.clone()
            },
            TextOptions {
                max_text_tokens: Some(10),
                ..a.clone()
            },
            TextOptions {
                max_repeats: Some(3),
                ..a.clone()
            },
            TextOptions {
                fix_placeholders: true,
                ..a.clone()
            },
            TextOptions {
                dedup_text: true,
                ..a.clone()
            },
            TextOptions {
                report: 3,
                ..a.clone()
            },
        ] {
            assert_ne!(change.fingerprint(), fp, "{change:?}");
        }
        assert_eq!(TextOptions::default().fingerprint(), fp);
    }

    #[test]
    fn bad_options_name_the_option() {
        let o = TextOptions {
            max_repeats: Some(1),
            ..Default::default()
        };
        assert!(o
            .validate()
            .unwrap_err()
            .to_string()
            .contains("--max-repeats"));
        let o = TextOptions {
            report: MAX_REPORT + 1,
            ..Default::default()
        };
        assert!(o
            .validate()
            .unwrap_err()
            .to_string()
            .contains("--text-report"));
        let o = TextOptions {
            boilerplate: Some("/nonexistent/list.txt".into()),
            ..Default::default()
        };
        assert!(o
            .validate()
            .unwrap_err()
            .to_string()
            .contains("--boilerplate"));
        assert!(CleanMode::parse("loose")
            .unwrap_err()
            .to_string()
            .contains("--text-clean"));
    }
}

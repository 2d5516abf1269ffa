//! Cleaning one sample: normalise every text in place (caption, each conversation `value`,
//! each message's string content or text part), then run the reject rules.

use serde_json::{Map, Value};

use super::{name_of, rules, Cleaner, PREPEND_BIT, TOO_LONG_BIT};
use crate::input::Sample;

/// Longest text kept in a report example (characters).
const EXAMPLE_CHARS: usize = 2000;
const MARKER: &str = "<image>";

/// A before/after example for `text_report.jsonl`.
#[derive(Debug, Clone)]
pub struct Example {
    pub step: &'static str,
    /// `caption`, `conversations[2].value`, `messages[0].content[1].text`, …
    pub field: String,
    pub before: String,
    pub after: Option<String>,
    pub reason: Option<String>,
}

/// What cleaning did to one sample, carried to the writer for `stats.json`.
#[derive(Debug, Clone, Default)]
pub struct TextLog {
    /// Bits of the normalisations that changed a text of the sample (and [`PREPEND_BIT`]).
    pub changed: u32,
    /// The rule that rejected the sample.
    pub rejected: Option<&'static str>,
    pub id: Option<String>,
    /// Report examples (only with `--text-report`): one per step that acted.
    pub examples: Vec<Example>,
    /// `--text-report` N, so the writer can cap examples per step.
    pub limit: usize,
}

/// The outcome of [`Cleaner::clean_sample`].
pub struct Cleaned {
    pub log: TextLog,
    /// `(reject category, reason)`.
    pub reject: Option<(&'static str, String)>,
    /// `--dedup-text` key of a caption sample.
    pub text_key: Option<[u8; 16]>,
}

/// One text of the sample, located for reasons and examples.
struct Slot {
    field: String,
    /// `user`, `assistant`, `system`; `None` for a caption.
    role: Option<&'static str>,
    /// Index of the turn (conversation/message) it belongs to.
    turn: usize,
}

fn role_of(r: &str) -> &'static str {
    match r {
        "human" | "user" => "user",
        "gpt" | "assistant" => "assistant",
        "system" => "system",
        _ => "other",
    }
}

fn clip(s: &str) -> String {
    match s.char_indices().nth(EXAMPLE_CHARS) {
        Some((cut, _)) => format!("{}…", &s[..cut]),
        None => s.to_string(),
    }
}

/// The sample shapes, told apart by their fields in the input's order of precedence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shape {
    Conversations,
    Messages,
    /// `instruction`/`response` (+ `system`): the template's two-turn conversation.
    Instruction,
    Caption,
    /// No text field found (a shape this module does not know): nothing is judged.
    Unknown,
}

/// Mutable references to every text of the sample, with their slots, and per turn its role
/// and image-part count (messages).
#[allow(clippy::type_complexity)]
fn texts(
    fields: &mut Map<String, Value>,
) -> (Vec<(&mut String, Slot)>, Vec<(&'static str, usize)>, Shape) {
    let mut out = Vec::new();
    let mut turns = Vec::new();
    if matches!(fields.get("conversations"), Some(Value::Array(_))) {
        let Some(Value::Array(conv)) = fields.get_mut("conversations") else {
            unreachable!()
        };
        for (i, t) in conv.iter_mut().enumerate() {
            let role = role_of(t.get("from").and_then(Value::as_str).unwrap_or(""));
            turns.push((role, 0));
            if let Some(Value::String(v)) = t.get_mut("value") {
                out.push((
                    v,
                    Slot {
                        field: format!("conversations[{i}].value"),
                        role: Some(role),
                        turn: i,
                    },
                ));
            }
        }
        return (out, turns, Shape::Conversations);
    }
    if matches!(fields.get("messages"), Some(Value::Array(_))) {
        let Some(Value::Array(msgs)) = fields.get_mut("messages") else {
            unreachable!()
        };
        for (i, m) in msgs.iter_mut().enumerate() {
            let role = role_of(m.get("role").and_then(Value::as_str).unwrap_or(""));
            let mut images = 0;
            match m.get_mut("content") {
                Some(Value::String(s)) => {
                    out.push((
                        s,
                        Slot {
                            field: format!("messages[{i}].content"),
                            role: Some(role),
                            turn: i,
                        },
                    ));
                }
                Some(Value::Array(parts)) => {
                    for (j, p) in parts.iter_mut().enumerate() {
                        if p.get("type").and_then(Value::as_str) == Some("image") {
                            images += 1;
                        } else if let Some(Value::String(s)) = p.get_mut("text") {
                            let field = format!("messages[{i}].content[{j}].text");
                            out.push((
                                s,
                                Slot {
                                    field,
                                    role: Some(role),
                                    turn: i,
                                },
                            ));
                        }
                    }
                }
                _ => {}
            }
            turns.push((role, images));
        }
        return (out, turns, Shape::Messages);
    }
    if matches!(fields.get("instruction"), Some(Value::String(_))) {
        // Several fields of one map at once: one pass over it, then the template's order.
        let mut found: [Option<&mut String>; 3] = [None, None, None];
        const KEYS: [(&str, &str); 3] = [
            ("system", "system"),
            ("instruction", "user"),
            ("response", "assistant"),
        ];
        for (k, v) in fields.iter_mut() {
            if let (Some(i), Value::String(s)) = (KEYS.iter().position(|(n, _)| n == k), v) {
                found[i] = Some(s);
            }
        }
        for (i, s) in found.into_iter().enumerate() {
            if let Some(s) = s {
                let (field, role) = KEYS[i];
                let slot = Slot {
                    field: field.to_string(),
                    role: Some(role),
                    turn: turns.len(),
                };
                turns.push((role, 0));
                out.push((s, slot));
            }
        }
        return (out, turns, Shape::Instruction);
    }
    if let Some(Value::String(c)) = fields.get_mut("caption") {
        out.push((
            c,
            Slot {
                field: "caption".into(),
                role: None,
                turn: 0,
            },
        ));
        return (out, turns, Shape::Caption);
    }
    (out, turns, Shape::Unknown)
}

impl Cleaner {
    /// Clean `sample` in place. On a reject the sample is left half-cleaned (it is not written).
    pub fn clean_sample(&self, sample: &mut Sample) -> Cleaned {
        let mut log = TextLog {
            limit: self.report,
            ..TextLog::default()
        };
        let mut cleaned = Cleaned {
            log: TextLog::default(),
            reject: None,
            text_key: None,
        };
        if self.is_noop() {
            cleaned.log = log;
            return cleaned;
        }
        let n_images = sample.images.len();
        let reporting = self.report > 0;
        if reporting {
            log.id = sample.id.clone();
        }
        let (mut texts, turns, shape) = texts(&mut sample.fields);
        let caption = shape == Shape::Caption;
        let mut originals = Vec::new();
        for (s, slot) in texts.iter_mut() {
            let before = reporting.then(|| s.to_string());
            let changed = self.normalise(s, caption);
            log.changed |= changed;
            if let Some(before) = before {
                for b in (0..5).filter(|b| changed & (1 << b) != 0) {
                    if !log.examples.iter().any(|e| e.step == name_of(b)) {
                        log.examples.push(Example {
                            step: name_of(b),
                            field: slot.field.clone(),
                            before: clip(&before),
                            after: Some(clip(s)),
                            reason: None,
                        });
                    }
                }
                originals.push(before);
            }
        }
        let verdict = match shape {
            Shape::Unknown => Ok(()),
            _ => self.judge(&mut texts, &turns, shape, n_images, &mut log),
        };
        if let Err((rule, reason, at)) = verdict {
            if reporting {
                let (field, before, after) = match at {
                    Some(k) => (
                        texts[k].1.field.clone(),
                        originals[k].clone(),
                        Some(clip(texts[k].0)),
                    ),
                    None => ("*".to_string(), String::new(), None),
                };
                log.examples.push(Example {
                    step: rule,
                    field,
                    before: clip(&before),
                    after,
                    reason: Some(reason.clone()),
                });
            }
            log.rejected = Some(rule);
            cleaned.reject = Some((category(rule), reason));
        } else if self.dedup_text && caption {
            let mut h = blake3::Hasher::new();
            h.update(b"llava-pack text v1\0");
            h.update(texts[0].0.as_bytes());
            let mut key = [0u8; 16];
            key.copy_from_slice(&h.finalize().as_bytes()[..16]);
            cleaned.text_key = Some(key);
        }
        cleaned.log = log;
        cleaned
    }

    /// Clean one caption the way [`Cleaner::clean_sample`] cleans a caption sample (the
    /// normalisations, then the caption rules); returns the rejecting rule, if any. For
    /// previews and the text-cleaning benchmark.
    pub fn clean_caption(&self, s: &mut String) -> Option<&'static str> {
        self.normalise(s, true);
        let slot = Slot {
            field: String::new(),
            role: None,
            turn: 0,
        };
        let mut texts = [(s, slot)];
        let mut log = TextLog::default();
        self.judge(&mut texts, &[], Shape::Caption, 1, &mut log)
            .err()
            .map(|e| e.0)
    }

    /// The reject rules, in order; `Err((rule, reason, index of the text at fault))`.
    #[allow(clippy::type_complexity)]
    fn judge(
        &self,
        texts: &mut [(&mut String, Slot)],
        turns: &[(&'static str, usize)],
        shape: Shape,
        n_images: usize,
        log: &mut TextLog,
    ) -> Result<(), (&'static str, String, Option<usize>)> {
        let caption = shape == Shape::Caption;
        if !caption {
            // Markers as the training template reads them: `<image>` in every conversation
            // value or in the instruction, `{"type": "image"}` parts in messages.
            let conv = matches!(shape, Shape::Conversations | Shape::Instruction);
            let markers: usize = match shape {
                Shape::Conversations => texts.iter().map(|(s, _)| s.matches(MARKER).count()).sum(),
                Shape::Instruction => texts
                    .iter()
                    .filter(|(_, slot)| slot.role == Some("user"))
                    .map(|(s, _)| s.matches(MARKER).count())
                    .sum(),
                _ => turns.iter().map(|t| t.1).sum(),
            };
            if self.on("placeholders") || self.prepend {
                self.placeholders(texts, conv, markers, n_images, log)?;
            }
            if self.on("roles") {
                rules::check_roles(turns.iter().map(|t| t.0)).map_err(|r| ("roles", r, None))?;
            }
            if self.on("empty") {
                let no_markers = markers == 0 && n_images > 0;
                let first_user = turns.iter().position(|t| t.0 == "user");
                for (k, (turn, (role, parts))) in turns.iter().enumerate().enumerate() {
                    let has_text = texts.iter().any(|(s, slot)| {
                        slot.turn == turn && !s.replace(MARKER, "").trim().is_empty()
                    });
                    let has_image = *parts > 0
                        || texts
                            .iter()
                            .any(|(s, slot)| slot.turn == turn && s.contains(MARKER))
                        || (no_markers && first_user == Some(turn));
                    // A user turn may be only images; any other turn needs text.
                    if !(has_text || has_image && *role == "user") {
                        let at = texts.iter().position(|t| t.1.turn == turn);
                        return Err(("empty", format!("turn {k} ({role}) has no text"), at));
                    }
                }
            }
        } else if self.on("empty") && texts[0].0.trim().is_empty() {
            return Err(("empty", "caption is empty after cleaning".into(), Some(0)));
        }
        if caption {
            let c: &str = texts[0].0;
            if self.on("url") && rules::is_url(c) {
                return Err(("url", "caption is only a URL".into(), Some(0)));
            }
            if self.on("filename") && rules::is_file_name(c) {
                return Err(("filename", "caption is only a file name".into(), Some(0)));
            }
            if self.on("boilerplate") && self.boilerplate.matches(c) {
                return Err(("boilerplate", "caption is boilerplate".into(), Some(0)));
            }
        }
        if self.on("repetition") {
            let mut toks = Vec::new();
            for (k, (s, slot)) in texts.iter().enumerate() {
                rules::tokens(s, &mut toks);
                if let Some((unit, n)) = rules::repetition(&toks, self.max_repeats) {
                    let what = if unit == 1 {
                        "a token".to_string()
                    } else {
                        format!("a {unit}-token unit")
                    };
                    let reason = format!("{}: {what} repeated {n} times", slot.field);
                    return Err(("repetition", reason, Some(k)));
                }
            }
        }
        if let Some(max) = self.max_tokens {
            let n: u64 = texts.iter().map(|(s, _)| rules::estimate_tokens(s)).sum();
            if n > max {
                let reason = format!("about {n} text tokens (estimate) > --max-text-tokens {max}");
                return Err((name_of(TOO_LONG_BIT), reason, None));
            }
        }
        Ok(())
    }

    fn placeholders(
        &self,
        texts: &mut [(&mut String, Slot)],
        conv: bool,
        markers: usize,
        n_images: usize,
        log: &mut TextLog,
    ) -> Result<(), (&'static str, String, Option<usize>)> {
        if markers == n_images {
            return Ok(());
        }
        if markers == 0 && n_images == 1 && conv && self.prepend {
            if let Some(k) = texts.iter().position(|t| t.1.role == Some("user")) {
                let before = texts[k].0.clone();
                texts[k].0.insert_str(0, "<image>\n");
                log.changed |= 1 << PREPEND_BIT;
                if log.limit > 0 {
                    log.examples.push(Example {
                        step: name_of(PREPEND_BIT),
                        field: texts[k].1.field.clone(),
                        before: clip(&before),
                        after: Some(clip(texts[k].0)),
                        reason: None,
                    });
                }
                return Ok(());
            }
        }
        // No marker at all is valid for the template (the images lead the first user turn);
        // only `strict` rejects it.
        let missing_ok = markers == 0 && !self.strict;
        if missing_ok || !self.on("placeholders") {
            return Ok(());
        }
        let reason = format!(
            "{markers} image placeholder{} but {n_images} image{}",
            if markers == 1 { "" } else { "s" },
            if n_images == 1 { "" } else { "s" }
        );
        Err(("placeholders", reason, None))
    }
}

/// The `rejects_by_reason` category of a rule.
pub fn category(rule: &str) -> &'static str {
    match rule {
        "empty" => "text_empty",
        "url" => "text_url",
        "filename" => "text_filename",
        "boilerplate" => "text_boilerplate",
        "repetition" => "text_repetition",
        "placeholders" => "text_placeholders",
        "roles" => "text_roles",
        _ => "text_too_long",
    }
}

#[cfg(test)]
mod tests {
    use super::super::{CleanMode, TextOptions};
    use super::*;
    use std::path::Path;

    fn sample(json: &str) -> Sample {
        crate::input::parse(json.as_bytes(), Path::new("/r")).unwrap()
    }

    fn cleaner(f: impl FnOnce(&mut TextOptions)) -> Cleaner {
        let mut o = TextOptions::default();
        f(&mut o);
        Cleaner::new(&o).unwrap()
    }

    fn run(c: &Cleaner, json: &str) -> (Sample, Cleaned) {
        let mut s = sample(json);
        let r = c.clean_sample(&mut s);
        (s, r)
    }

    fn rule(c: &Cleaner, json: &str) -> Option<&'static str> {
        run(c, json).1.log.rejected
    }

    #[test]
    fn captions_are_cleaned_in_place_and_other_fields_kept() {
        let c = cleaner(|_| {});
        let (s, r) = run(
            &c,
            r#"{"image":"a.jpg","caption":"  <b>A cat</b> &amp; a\u200b dog ","source":"web"}"#,
        );
        assert!(r.reject.is_none());
        assert_eq!(s.fields["caption"], "A cat & a dog");
        assert_eq!(s.fields["source"], "web");
        let names: Vec<_> = (0..5)
            .filter(|b| r.log.changed & (1 << b) != 0)
            .map(name_of)
            .collect();
        assert_eq!(names, ["html", "controls", "whitespace"]);
    }

    #[test]
    fn chinese_and_japanese_pass_unchanged() {
        let c = cleaner(|o| o.mode = CleanMode::Strict);
        for cap in [
            "一只橘猫趴在窗台上晒太阳，旁边有一盆绿萝。",
            "夕暮れの海辺で、犬が砂浜を走っている。",
            "東京タワーと青空（2019年撮影）",
            "写真　富士山と桜",
            "A bowl of 拉面 with ゆで卵 on top！",
        ] {
            let json = serde_json::json!({"image": "a.jpg", "caption": cap}).to_string();
            let (s, r) = run(&c, &json);
            assert!(r.reject.is_none(), "{cap}: {:?}", r.reject);
            assert_eq!(s.fields["caption"], cap);
            assert_eq!(r.log.changed, 0, "{cap}");
        }
        let conv = serde_json::json!({"image": "a.jpg", "conversations": [
            {"from": "human", "value": "<image>\n这张图片里有什么？"},
            {"from": "gpt", "value": "图片中有一只猫。\n它正在睡觉。"},
            {"from": "human", "value": "猫は何色ですか？"},
            {"from": "gpt", "value": "オレンジ色です。"}]})
        .to_string();
        let (s, r) = run(&c, &conv);
        assert!(r.reject.is_none() && r.log.changed == 0);
        assert_eq!(
            s.fields["conversations"][1]["value"],
            "图片中有一只猫。\n它正在睡觉。"
        );
    }

    #[test]
    fn caption_rules_reject_with_their_names() {
        let c = cleaner(|_| {});
        let cap = |t: &str| serde_json::json!({"image": "a.jpg", "caption": t}).to_string();
        assert_eq!(rule(&c, &cap("\u{200b} \u{feff}")), Some("empty"));
        assert_eq!(rule(&c, &cap("https://example.com/a.jpg")), Some("url"));
        assert_eq!(rule(&c, &cap("IMG_1234.JPG")), Some("filename"));
        assert_eq!(
            rule(&c, &cap("No description available.")),
            Some("boilerplate")
        );
        assert_eq!(rule(&c, &cap(&"cat ".repeat(20))), Some("repetition"));
        assert_eq!(rule(&c, &cap(&"猫猫".repeat(20))), Some("repetition"));
        assert_eq!(rule(&c, &cap("A cat on IMG_1234.JPG")), None);
        let off = cleaner(|o| o.rules = vec!["-url".into()]);
        assert_eq!(rule(&off, &cap("https://example.com/page")), None);
        let long = cleaner(|o| o.max_text_tokens = Some(5));
        assert_eq!(
            rule(&long, &cap("one two three four five six")),
            Some("too_long")
        );
        assert_eq!(rule(&long, &cap("one two")), None);
    }

    #[test]
    fn conversations_keep_newlines_and_roles_must_alternate() {
        let c = cleaner(|_| {});
        let conv = r#"{"image":"a.jpg","conversations":[{"from":"human","value":"<image>\nWhat is this?  \n"},{"from":"gpt","value":"A cat.\n\n\n\nIt sleeps."}]}"#;
        let (s, r) = run(&c, conv);
        assert!(r.reject.is_none());
        assert_eq!(
            s.fields["conversations"][0]["value"],
            "<image>\nWhat is this?"
        );
        assert_eq!(
            s.fields["conversations"][1]["value"],
            "A cat.\n\nIt sleeps."
        );
        let ends_on_user = r#"{"conversations":[{"from":"human","value":"hi"}]}"#;
        assert_eq!(rule(&c, ends_on_user), Some("roles"));
        let twice = r#"{"messages":[{"role":"user","content":"a"},{"role":"user","content":"b"},{"role":"assistant","content":"c"}]}"#;
        assert_eq!(rule(&c, twice), Some("roles"));
        let empty = r#"{"conversations":[{"from":"human","value":"hi"},{"from":"gpt","value":" \u200b "}]}"#;
        assert_eq!(rule(&c, empty), Some("empty"));
        // A user turn that is only the image is fine.
        let only_image = r#"{"image":"a.jpg","conversations":[{"from":"human","value":"<image>"},{"from":"gpt","value":"A cat."}]}"#;
        assert_eq!(rule(&c, only_image), None);
    }

    #[test]
    fn missing_placeholder_is_prepended_or_rejected_in_strict_mode() {
        let conv = r#"{"image":"a.jpg","conversations":[{"from":"human","value":"What is it?"},{"from":"gpt","value":"A cat."}]}"#;
        assert_eq!(rule(&cleaner(|_| {}), conv), None);
        let strict = cleaner(|o| o.mode = CleanMode::Strict);
        assert_eq!(rule(&strict, conv), Some("placeholders"));
        let fix = cleaner(|o| {
            o.mode = CleanMode::Strict;
            o.fix_placeholders = true;
        });
        let (s, r) = run(&fix, conv);
        assert!(r.reject.is_none());
        assert_eq!(
            s.fields["conversations"][0]["value"],
            "<image>\nWhat is it?"
        );
        assert_ne!(r.log.changed & (1 << PREPEND_BIT), 0);
        // Two images without markers: not a single-marker fix.
        let two = r#"{"image":["a.jpg","b.jpg"],"conversations":[{"from":"human","value":"Compare."},{"from":"gpt","value":"Same."}]}"#;
        assert_eq!(rule(&fix, two), Some("placeholders"));
    }

    #[test]
    fn text_keys_see_cleaned_captions_and_reports_hold_examples() {
        let c = cleaner(|o| {
            o.dedup_text = true;
            o.report = 2;
        });
        let a = run(&c, r#"{"image":"a.jpg","caption":"A  cat"}"#).1;
        let b = run(&c, r#"{"image":"b.jpg","caption":" A cat\u200b"}"#).1;
        assert!(a.text_key.is_some());
        assert_eq!(a.text_key, b.text_key);
        let ex = &b.log.examples;
        assert_eq!(
            ex.iter().map(|e| e.step).collect::<Vec<_>>(),
            ["controls", "whitespace"]
        );
        assert_eq!(ex[0].before, " A cat\u{200b}");
        assert_eq!(ex[0].after.as_deref(), Some("A cat"));
        let r = run(&c, r#"{"image":"a.jpg","caption":"IMG_0001.jpg"}"#).1;
        assert_eq!(r.reject.as_ref().unwrap().0, "text_filename");
        assert_eq!(
            r.log.examples[0].reason.as_deref(),
            Some("caption is only a file name")
        );
    }

    #[test]
    fn instruction_samples_are_cleaned_and_judged_as_two_turns() {
        let c = cleaner(|o| o.fix_placeholders = true);
        let (s, r) = run(
            &c,
            r#"{"image":"a.jpg","system":" Be brief. ","instruction":"What is it?\u200b","response":"A  cat.\n\n\n\nOrange."}"#,
        );
        assert!(r.reject.is_none(), "{:?}", r.reject);
        assert_eq!(s.fields["system"], "Be brief.");
        assert_eq!(s.fields["instruction"], "<image>\nWhat is it?");
        assert_eq!(s.fields["response"], "A  cat.\n\nOrange.");
        let rep = format!(
            r#"{{"instruction":"Hi","response":"{}"}}"#,
            "ok ".repeat(20)
        );
        assert_eq!(rule(&c, &rep), Some("repetition"));
    }

    #[test]
    fn off_changes_nothing() {
        let c = cleaner(|o| o.mode = CleanMode::Off);
        assert!(c.is_noop());
        let (s, r) = run(&c, r#"{"image":"a.jpg","caption":"  IMG_1234.JPG  "}"#);
        assert!(r.reject.is_none() && r.log.changed == 0);
        assert_eq!(s.fields["caption"], "  IMG_1234.JPG  ");
    }
}

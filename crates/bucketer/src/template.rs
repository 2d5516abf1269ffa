//! The training strings of samples, as structured turns and as token segments: the reference's
//! (LLaVA-OneVision-1.5's Qwen2-VL task encoder) by default.
//!
//! One implementation serves the packer's length computation and the loader's tokenisation.
//! Chat-form samples follow the Hugging Face Qwen2-VL template exactly, minus the final `\n`
//! (the reference drops it and trains on the `<|im_end|>` before it):
//!
//! ```text
//! <|im_start|>system\nYou are a helpful assistant.<|im_end|>\n     (unless a system turn leads)
//! <|im_start|>{role}\n{content}<|im_end|>\n                         (every turn; no final \n)
//! ```
//! where an image in the content is `<|vision_start|>` + N × `<|image_pad|>` + `<|vision_end|>`.
//! Caption samples in the default [`CaptionFormat::Pretrain`] form are the reference's
//! pretraining string instead: every image's vision tags and pads, then the caption, then the
//! tokenizer's eos token — no system prompt, no roles.
//!
//! Sample shapes (the per-sample JSON written by `llava-pack build`):
//! - `caption`: user = the sample's images (+ the optional caption prompt), assistant = caption;
//! - `conversations` (LLaVA): `human`→user, `gpt`→assistant; each `<image>` in a value becomes
//!   the next image, in place; with no `<image>` at all, images lead the first user turn;
//! - `messages`: roles as given, content a string or `[{"type":"image"}|{"type":"text"}…]`;
//! - `instruction`: `system` (if a string) = the system turn, user = the images + the
//!   instruction (each `<image>` in it becomes the next image, in place; with none the images
//!   lead), assistant = `response` — the same two-turn conversation as the equivalent
//!   `conversations` sample.

use serde_json::Value;
use thiserror::Error;

pub const DEFAULT_SYSTEM: &str = "You are a helpful assistant.";

#[derive(Debug, Error, PartialEq, Eq)]
pub enum TemplateError {
    #[error("sample has no recognised text (caption, conversations, messages or instruction)")]
    NoText,
    #[error("{0}")]
    Invalid(String),
    #[error("{placeholders} image placeholders but {images} images")]
    ImageCount { placeholders: usize, images: usize },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    System,
    User,
    Assistant,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::System => "system",
            Role::User => "user",
            Role::Assistant => "assistant",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Part {
    Text(String),
    /// The i-th image of the sample.
    Image(usize),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Turn {
    pub role: Role,
    pub parts: Vec<Part>,
}

/// A piece of the rendered sequence: text to tokenise, a special token, or an image's pads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Segment {
    /// Text between special tokens, tokenised as one string (as the HF tokenizer sees the
    /// rendered template). `trained_from` is the byte offset where assistant answer text
    /// starts inside it, if it holds any.
    Text {
        text: String,
        trained_from: Option<usize>,
    },
    /// A special token; `trained` for the `<|im_end|>` closing an assistant answer and the
    /// eos ending a pretraining caption.
    Special { token: Special, trained: bool },
    /// `<|image_pad|>` × n for the i-th image (n = its LLM token count).
    ImagePads { image: usize },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Special {
    ImStart,
    ImEnd,
    VisionStart,
    VisionEnd,
    /// The tokenizer's eos token ([`TemplateOptions::eos_token`]).
    Eos,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendered {
    pub segments: Vec<Segment>,
}

/// How caption samples are rendered (conversations and messages are always chat-form).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CaptionFormat {
    /// The reference's pretraining string: images' vision tags + caption + eos.
    #[default]
    Pretrain,
    /// A one-turn chat: user = the images (+ caption prompt), assistant = the caption.
    Chat,
}

impl CaptionFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            CaptionFormat::Pretrain => "pretrain",
            CaptionFormat::Chat => "chat",
        }
    }
}

impl std::str::FromStr for CaptionFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "pretrain" => Ok(CaptionFormat::Pretrain),
            "chat" => Ok(CaptionFormat::Chat),
            other => Err(format!(
                "caption format {other:?} is not one of: pretrain, chat"
            )),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TemplateOptions {
    /// System prompt inserted when a chat-form sample has no leading system turn (`None`:
    /// none).
    pub system: Option<String>,
    /// Text after the images of caption samples (empty by default; never trained).
    pub caption_prompt: String,
    pub caption_format: CaptionFormat,
    /// The token ending pretraining-form captions; `None` until the tokenizer resolves it
    /// (`LengthCounter::from_file` reads `tokenizer_config.json`, else `<|im_end|>`).
    pub eos_token: Option<String>,
}

impl Default for TemplateOptions {
    fn default() -> Self {
        TemplateOptions {
            system: Some(DEFAULT_SYSTEM.into()),
            caption_prompt: String::new(),
            caption_format: CaptionFormat::default(),
            eos_token: None,
        }
    }
}

fn str_field<'a>(v: &'a Value, name: &str, ctx: &str) -> Result<&'a str, TemplateError> {
    v.get(name)
        .and_then(Value::as_str)
        .ok_or_else(|| TemplateError::Invalid(format!("{ctx}.{name} is not a string")))
}

/// Split `text` on `<image>` into parts, numbering images from `*next`.
fn split_image_tags(text: &str, next: &mut usize, out: &mut Vec<Part>) {
    let mut rest = text;
    while let Some(pos) = rest.find("<image>") {
        if pos > 0 {
            out.push(Part::Text(rest[..pos].to_string()));
        }
        out.push(Part::Image(*next));
        *next += 1;
        rest = &rest[pos + "<image>".len()..];
    }
    if !rest.is_empty() {
        out.push(Part::Text(rest.to_string()));
    }
}

/// Structured turns of a per-sample JSON document with `n_images` images.
pub fn turns(
    sample: &Value,
    n_images: usize,
    opts: &TemplateOptions,
) -> Result<Vec<Turn>, TemplateError> {
    let mut next = 0usize;
    let mut turns = Vec::new();
    if let Some(conv) = sample.get("conversations").and_then(Value::as_array) {
        for (i, t) in conv.iter().enumerate() {
            let ctx = format!("conversations[{i}]");
            let role = match str_field(t, "from", &ctx)? {
                "human" | "user" => Role::User,
                "gpt" | "assistant" => Role::Assistant,
                "system" => Role::System,
                other => {
                    return Err(TemplateError::Invalid(format!(
                        "{ctx}.from {other:?} is unknown"
                    )))
                }
            };
            let mut parts = Vec::new();
            split_image_tags(str_field(t, "value", &ctx)?, &mut next, &mut parts);
            turns.push(Turn { role, parts });
        }
    } else if let Some(msgs) = sample.get("messages").and_then(Value::as_array) {
        for (i, m) in msgs.iter().enumerate() {
            let ctx = format!("messages[{i}]");
            let role = match str_field(m, "role", &ctx)? {
                "user" => Role::User,
                "assistant" => Role::Assistant,
                "system" => Role::System,
                other => {
                    return Err(TemplateError::Invalid(format!(
                        "{ctx}.role {other:?} is unknown"
                    )))
                }
            };
            let mut parts = Vec::new();
            match m.get("content") {
                Some(Value::String(s)) => parts.push(Part::Text(s.clone())),
                Some(Value::Array(items)) => {
                    for (j, p) in items.iter().enumerate() {
                        match p.get("type").and_then(Value::as_str) {
                            Some("image") => {
                                parts.push(Part::Image(next));
                                next += 1;
                            }
                            Some("text") => parts.push(Part::Text(
                                str_field(p, "text", &format!("{ctx}.content[{j}]"))?.to_string(),
                            )),
                            _ => {
                                return Err(TemplateError::Invalid(format!(
                                    "{ctx}.content[{j}] has no known type"
                                )))
                            }
                        }
                    }
                }
                _ => return Err(TemplateError::Invalid(format!("{ctx}.content is missing"))),
            }
            turns.push(Turn { role, parts });
        }
    } else if let Some(instruction) = sample.get("instruction").and_then(Value::as_str) {
        let response = str_field(sample, "response", "sample")?;
        match sample.get("system") {
            Some(Value::String(system)) => turns.push(Turn {
                role: Role::System,
                parts: vec![Part::Text(system.clone())],
            }),
            None | Some(Value::Null) => {}
            Some(_) => {
                return Err(TemplateError::Invalid(
                    "sample.system is not a string".into(),
                ))
            }
        }
        let mut user = Vec::new();
        split_image_tags(instruction, &mut next, &mut user);
        turns.push(Turn {
            role: Role::User,
            parts: user,
        });
        turns.push(Turn {
            role: Role::Assistant,
            parts: vec![Part::Text(response.to_string())],
        });
    } else if let Some(cap) = sample.get("caption").and_then(Value::as_str) {
        let mut user: Vec<Part> = (0..n_images).map(Part::Image).collect();
        next = n_images;
        if !opts.caption_prompt.is_empty() {
            user.push(Part::Text(opts.caption_prompt.clone()));
        }
        turns.push(Turn {
            role: Role::User,
            parts: user,
        });
        turns.push(Turn {
            role: Role::Assistant,
            parts: vec![Part::Text(cap.to_string())],
        });
    } else {
        return Err(TemplateError::NoText);
    }
    if next == 0 && n_images > 0 {
        // No placeholders: the images lead the first user turn (the template's order).
        let first = turns
            .iter_mut()
            .find(|t| t.role == Role::User)
            .ok_or_else(|| {
                TemplateError::Invalid("images but no user turn to put them in".into())
            })?;
        let imgs: Vec<Part> = (0..n_images).map(Part::Image).collect();
        first.parts.splice(0..0, imgs);
    } else if next != n_images {
        return Err(TemplateError::ImageCount {
            placeholders: next,
            images: n_images,
        });
    }
    Ok(turns)
}

/// Render turns to segments. Adjacent text is merged into one segment, because the tokenizer
/// sees the rendered template as one string between special tokens; answer text (assistant
/// turns) is marked by the offset where it starts, and the answer's closing `<|im_end|>` is
/// marked trained.
pub fn render(turns: &[Turn], opts: &TemplateOptions) -> Rendered {
    let mut segs: Vec<Segment> = Vec::new();
    fn push_text(segs: &mut Vec<Segment>, s: &str, train: bool) {
        if s.is_empty() {
            return;
        }
        if let Some(Segment::Text { text, trained_from }) = segs.last_mut() {
            if train && trained_from.is_none() {
                *trained_from = Some(text.len());
            }
            debug_assert!(
                train || trained_from.is_none(),
                "answer text is followed by <|im_end|>"
            );
            text.push_str(s);
            return;
        }
        segs.push(Segment::Text {
            text: s.to_string(),
            trained_from: train.then_some(0),
        });
    }
    let special = |token, trained| Segment::Special { token, trained };
    let lead_system = turns
        .first()
        .map(|t| t.role == Role::System)
        .unwrap_or(false);
    if let (false, Some(sys)) = (lead_system, &opts.system) {
        segs.push(special(Special::ImStart, false));
        push_text(&mut segs, &format!("system\n{sys}"), false);
        segs.push(special(Special::ImEnd, false));
        push_text(&mut segs, "\n", false);
    }
    for (k, t) in turns.iter().enumerate() {
        let train = t.role == Role::Assistant;
        segs.push(special(Special::ImStart, false));
        push_text(&mut segs, &format!("{}\n", t.role.as_str()), false);
        for p in &t.parts {
            match p {
                Part::Text(s) => push_text(&mut segs, s, train),
                Part::Image(i) => {
                    segs.push(special(Special::VisionStart, false));
                    segs.push(Segment::ImagePads { image: *i });
                    segs.push(special(Special::VisionEnd, false));
                }
            }
        }
        segs.push(special(Special::ImEnd, train));
        // The reference drops the template's final "\n": the sample ends on `<|im_end|>`.
        if k + 1 < turns.len() {
            push_text(&mut segs, "\n", false);
        }
    }
    Rendered { segments: segs }
}

/// The caption of a caption-shaped sample (no `conversations` / `messages` / `instruction`,
/// as [`turns`] decides).
fn caption_of(sample: &Value) -> Option<&str> {
    let chat = sample
        .get("conversations")
        .and_then(Value::as_array)
        .is_some()
        || sample.get("messages").and_then(Value::as_array).is_some()
        || sample.get("instruction").and_then(Value::as_str).is_some();
    (!chat).then(|| sample.get("caption").and_then(Value::as_str))?
}

/// The reference's pretraining string: every image's vision tags and pads, the caption prompt
/// (if any, untrained), the caption and the eos token (both trained).
fn render_pretrain(caption: &str, n_images: usize, opts: &TemplateOptions) -> Rendered {
    let mut segs = Vec::with_capacity(3 * n_images + 2);
    for i in 0..n_images {
        segs.push(Segment::Special {
            token: Special::VisionStart,
            trained: false,
        });
        segs.push(Segment::ImagePads { image: i });
        segs.push(Segment::Special {
            token: Special::VisionEnd,
            trained: false,
        });
    }
    let text = format!("{}{caption}", opts.caption_prompt);
    if !text.is_empty() {
        segs.push(Segment::Text {
            trained_from: Some(opts.caption_prompt.len()),
            text,
        });
    }
    segs.push(Segment::Special {
        token: Special::Eos,
        trained: true,
    });
    Rendered { segments: segs }
}

/// Segments of a per-sample JSON document with `n_images` images, in the training string
/// `opts` selects.
pub fn render_sample(
    sample: &Value,
    n_images: usize,
    opts: &TemplateOptions,
) -> Result<Rendered, TemplateError> {
    if opts.caption_format == CaptionFormat::Pretrain {
        if let Some(caption) = caption_of(sample) {
            return Ok(render_pretrain(caption, n_images, opts));
        }
    }
    Ok(render(&turns(sample, n_images, opts)?, opts))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn text(r: &Rendered) -> String {
        r.segments
            .iter()
            .map(|s| match s {
                Segment::Text { text, .. } => text.clone(),
                Segment::Special {
                    token: Special::ImStart,
                    ..
                } => "<|im_start|>".into(),
                Segment::Special {
                    token: Special::ImEnd,
                    ..
                } => "<|im_end|>".into(),
                Segment::Special {
                    token: Special::VisionStart,
                    ..
                } => "<|vision_start|>".into(),
                Segment::Special {
                    token: Special::VisionEnd,
                    ..
                } => "<|vision_end|>".into(),
                Segment::Special {
                    token: Special::Eos,
                    ..
                } => "<eos>".into(),
                Segment::ImagePads { image } => format!("<pads{image}>"),
            })
            .collect()
    }

    fn chat() -> TemplateOptions {
        TemplateOptions {
            caption_format: CaptionFormat::Chat,
            ..Default::default()
        }
    }

    #[test]
    fn chat_captions_render_like_the_hf_template_without_the_final_newline() {
        let o = chat();
        let r = render_sample(&json!({"caption": "A cat."}), 1, &o).unwrap();
        assert_eq!(
            text(&r),
            "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n\
             <|vision_start|><pads0><|vision_end|><|im_end|>\n<|im_start|>assistant\nA cat.<|im_end|>"
        );
        let n = r.segments.len();
        assert_eq!(
            r.segments[n - 2],
            Segment::Text {
                text: "assistant\nA cat.".into(),
                trained_from: Some("assistant\n".len())
            }
        );
        assert_eq!(
            r.segments[n - 1],
            Segment::Special {
                token: Special::ImEnd,
                trained: true
            }
        );
    }

    #[test]
    fn pretrain_captions_are_vision_tags_caption_and_eos() {
        let o = TemplateOptions::default();
        assert_eq!(o.caption_format, CaptionFormat::Pretrain);
        let r = render_sample(&json!({"caption": "A cat."}), 2, &o).unwrap();
        assert_eq!(
            text(&r),
            "<|vision_start|><pads0><|vision_end|><|vision_start|><pads1><|vision_end|>A cat.<eos>"
        );
        let n = r.segments.len();
        assert_eq!(
            r.segments[n - 2],
            Segment::Text {
                text: "A cat.".into(),
                trained_from: Some(0)
            }
        );
        assert_eq!(
            r.segments[n - 1],
            Segment::Special {
                token: Special::Eos,
                trained: true
            }
        );
        // A caption prompt sits between the images and the caption and is not trained.
        let o = TemplateOptions {
            caption_prompt: "Describe. ".into(),
            ..Default::default()
        };
        let r = render_sample(&json!({"caption": "A cat."}), 0, &o).unwrap();
        assert_eq!(
            r.segments[0],
            Segment::Text {
                text: "Describe. A cat.".into(),
                trained_from: Some("Describe. ".len())
            }
        );
        // Conversations stay chat-form under the pretrain caption format.
        let s = json!({"caption": "x", "conversations": [{"from": "human", "value": "Hi"}]});
        assert!(text(&render_sample(&s, 0, &o).unwrap()).starts_with("<|im_start|>system"));
        assert_eq!("chat".parse::<CaptionFormat>(), Ok(CaptionFormat::Chat));
        assert!("plain".parse::<CaptionFormat>().is_err());
    }

    #[test]
    fn llava_image_tags_are_replaced_in_place() {
        let o = TemplateOptions::default();
        let s = json!({"conversations": [
            {"from": "human", "value": "<image>\nWhat is it?"},
            {"from": "gpt", "value": "A dog."},
            {"from": "human", "value": "And <image> this?"},
            {"from": "gpt", "value": "A cat."}]});
        let t = text(&render(&turns(&s, 2, &o).unwrap(), &o));
        assert!(t.contains("user\n<|vision_start|><pads0><|vision_end|>\nWhat is it?<|im_end|>"));
        assert!(t.contains("user\nAnd <|vision_start|><pads1><|vision_end|> this?<|im_end|>"));
        assert!(matches!(
            turns(&s, 1, &o),
            Err(TemplateError::ImageCount {
                placeholders: 2,
                images: 1
            })
        ));
    }

    #[test]
    fn images_without_placeholders_lead_the_first_user_turn() {
        let o = TemplateOptions::default();
        let s = json!({"conversations": [{"from": "human", "value": "Describe."}, {"from": "gpt", "value": "Ok"}]});
        let t = text(&render(&turns(&s, 2, &o).unwrap(), &o));
        assert!(t.contains("user\n<|vision_start|><pads0><|vision_end|><|vision_start|><pads1><|vision_end|>Describe."));
    }

    #[test]
    fn a_leading_system_turn_replaces_the_default() {
        let o = TemplateOptions::default();
        let s = json!({"messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Hi"}]},
            {"role": "assistant", "content": "Hello"}]});
        let t = text(&render(&turns(&s, 1, &o).unwrap(), &o));
        assert!(t.starts_with(
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n<|vision_start|>"
        ));
        assert_eq!(t.matches("system").count(), 1);
    }

    #[test]
    fn instruction_samples_are_the_equivalent_two_turn_conversation() {
        let o = TemplateOptions::default();
        let conv = |human: &str| {
            json!({"conversations": [
                {"from": "human", "value": human}, {"from": "gpt", "value": "A cat."}]})
        };
        let same = |a: &Value, b: &Value, n: usize| {
            assert_eq!(
                render_sample(a, n, &o).unwrap(),
                render_sample(b, n, &o).unwrap()
            )
        };
        // Images lead the instruction unless it places them; the caption format is moot.
        let s = json!({"instruction": "What is it?", "response": "A cat.", "caption": "x"});
        same(&s, &conv("What is it?"), 1);
        let s = json!({"instruction": "<image> or <image>?", "response": "A cat."});
        same(&s, &conv("<image> or <image>?"), 2);
        assert!(matches!(
            turns(&s, 1, &o),
            Err(TemplateError::ImageCount { .. })
        ));
        // `system` replaces the default system prompt.
        let s = json!({"instruction": "Hi", "response": "A cat.", "system": "Be brief."});
        let t = text(&render_sample(&s, 0, &o).unwrap());
        assert_eq!(
            t,
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n\
             <|im_start|>assistant\nA cat.<|im_end|>"
        );
        let bad = json!({"instruction": "Hi"});
        assert!(matches!(turns(&bad, 0, &o), Err(TemplateError::Invalid(_))));
    }

    #[test]
    fn text_only_and_invalid_samples() {
        let o = TemplateOptions::default();
        let s = json!({"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Yo"}]});
        assert_eq!(turns(&s, 0, &o).unwrap().len(), 2);
        assert_eq!(turns(&json!({"id": 1}), 0, &o), Err(TemplateError::NoText));
        assert!(turns(
            &json!({"conversations": [{"from": "alien", "value": "x"}]}),
            0,
            &o
        )
        .is_err());
    }
}

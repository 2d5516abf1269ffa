//! Token lengths of samples: image tokens from the exact `smart_resize`, text tokens from an
//! HF `tokenizer.json` over the rendered chat template — the count the transformers processor
//! would produce, without decoding a single image.

use std::path::Path;

use serde_json::Value;
use thiserror::Error;
use tokenizers::Tokenizer;

use crate::resize::{smart_resize, ResizeError};
use crate::template::{self, Rendered, Segment, TemplateError, TemplateOptions};

/// Image-processor settings (REFERENCE §1: patch 14, merge 2, temporal patch 1).
#[derive(Debug, Clone, PartialEq)]
pub struct VisionConfig {
    pub patch_size: u32,
    pub merge_size: u32,
    pub min_pixels: u64,
    pub max_pixels: u64,
}

impl Default for VisionConfig {
    fn default() -> Self {
        VisionConfig {
            patch_size: 14,
            merge_size: 2,
            min_pixels: 3136,
            max_pixels: 2_560_000,
        }
    }
}

impl VisionConfig {
    /// Resized (height, width), vision-tower patches and LLM tokens for an image.
    pub fn image_grid(&self, width: u32, height: u32) -> Result<ImageGrid, ResizeError> {
        let factor = self.patch_size * self.merge_size;
        let (h, w) = smart_resize(height, width, factor, self.min_pixels, self.max_pixels)?;
        let patches = (h / self.patch_size) as u64 * (w / self.patch_size) as u64;
        let merge = (self.merge_size * self.merge_size) as u64;
        Ok(ImageGrid {
            height: h,
            width: w,
            patches,
            tokens: (patches / merge) as u32,
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageGrid {
    pub height: u32,
    pub width: u32,
    /// Vision-tower patches (h/14 · w/14), excluding the CLS token.
    pub patches: u64,
    /// LLM tokens (`<|image_pad|>` count) = patches / 4.
    pub tokens: u32,
}

#[derive(Debug, Error)]
pub enum LengthError {
    #[error("cannot load tokenizer {path}: {message}")]
    Tokenizer { path: String, message: String },
    #[error("tokenizer lacks special token {0}")]
    MissingSpecial(String),
    #[error("cannot read {path}: {message}")]
    TokenizerConfig { path: String, message: String },
    #[error("eos token {0} is not a special (added) token of the tokenizer")]
    EosNotSpecial(String),
    #[error(transparent)]
    Template(#[from] TemplateError),
    #[error("image {index}: {source}")]
    Image { index: usize, source: ResizeError },
    #[error("image {0} has no width/height")]
    NoSize(usize),
    #[error("tokenisation failed: {0}")]
    Encode(String),
}

/// Token count of one sample, split by kind.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SampleLength {
    /// Total sequence length (what packing and the loader use).
    pub total: u32,
    pub text_tokens: u32,
    pub special_tokens: u32,
    /// LLM tokens of each image.
    pub image_tokens: Vec<u32>,
    /// Vision-tower patches of each image (ViT cost).
    pub image_patches: Vec<u64>,
    /// `[height, width]` each image is resized to (upright, multiples of 28): the
    /// `image_grid_thw` of preprocessing is `[1, height/14, width/14]`.
    pub image_sizes: Vec<[u32; 2]>,
}

impl SampleLength {
    pub fn image_token_total(&self) -> u32 {
        self.image_tokens.iter().sum()
    }
}

/// Ids of the template's special tokens in a tokenizer.
#[derive(Debug, Clone, Copy)]
pub struct SpecialIds {
    pub im_start: u32,
    pub im_end: u32,
    pub vision_start: u32,
    pub vision_end: u32,
    pub image_pad: u32,
    /// The eos token ending pretraining-form captions ([`TemplateOptions::eos_token`]).
    pub eos: u32,
}

/// The eos token a Hugging Face tokenizer directory declares: `eos_token` of the
/// `tokenizer_config.json` next to `tokenizer.json` (a string or an `{"content": …}` object),
/// else `<|im_end|>` — Qwen2-VL / Qwen2.5-VL / LLaVA-OneVision-1.5's eos (REFERENCE §1).
pub fn tokenizer_eos(tokenizer: &Path) -> Result<String, LengthError> {
    let cfg = tokenizer.with_file_name("tokenizer_config.json");
    let err = |message: String| LengthError::TokenizerConfig {
        path: cfg.display().to_string(),
        message,
    };
    let bytes = match std::fs::read(&cfg) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(DEFAULT_EOS.into()),
        Err(e) => return Err(err(e.to_string())),
    };
    let v: Value = serde_json::from_slice(&bytes).map_err(|e| err(e.to_string()))?;
    let eos = v.get("eos_token");
    let named = eos
        .and_then(Value::as_str)
        .or_else(|| eos.and_then(|e| e.get("content")).and_then(Value::as_str));
    match (eos, named) {
        (None | Some(Value::Null), _) => Ok(DEFAULT_EOS.into()),
        (_, Some(t)) => Ok(t.to_string()),
        (Some(other), None) => Err(err(format!("eos_token {other} is not a token"))),
    }
}

/// Qwen's eos when the tokenizer directory does not name one.
pub const DEFAULT_EOS: &str = "<|im_end|>";

pub struct LengthCounter {
    tokenizer: Tokenizer,
    pub vision: VisionConfig,
    pub template: TemplateOptions,
    pub ids: SpecialIds,
    /// Token counts of the template's constant texts (`"\n"`, `"user\n"`, the default system
    /// turn …), when splitting them off is exact for this tokenizer (see [`Self::count_text`]).
    constant: Option<std::collections::HashMap<String, u32>>,
}

/// The Qwen2 pre-tokenizer regex isolates a `\n` that is followed by a non-space character,
/// and NFC never composes across it, so for such tokenizers
/// `tokens(header + rest) == tokens(header) + tokens(rest)` when `header` ends in `\n` and
/// `rest` starts with a non-whitespace character.
const QWEN_PRETOKENIZER_MARK: [&str; 2] = [r"\\s*[\\r\\n]+", r"[^\\r\\n\\p{L}\\p{N}]?\\p{L}+"];

impl LengthCounter {
    pub fn from_file(
        path: &Path,
        vision: VisionConfig,
        mut template: TemplateOptions,
    ) -> Result<Self, LengthError> {
        let eos = match template.eos_token.take() {
            Some(t) => t,
            None => tokenizer_eos(path)?,
        };
        let tokenizer = Tokenizer::from_file(path).map_err(|e| LengthError::Tokenizer {
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
        let id = |t: &str| {
            tokenizer
                .token_to_id(t)
                .ok_or_else(|| LengthError::MissingSpecial(t.to_string()))
        };
        let ids = SpecialIds {
            im_start: id("<|im_start|>")?,
            im_end: id("<|im_end|>")?,
            vision_start: id("<|vision_start|>")?,
            vision_end: id("<|vision_end|>")?,
            image_pad: id("<|image_pad|>")?,
            eos: id(&eos)?,
        };
        // The eos is emitted as one id; the HF tokenizer only keeps it whole in the text
        // (`caption + eos`) when it is an added token.
        if !tokenizer
            .get_added_tokens_decoder()
            .get(&ids.eos)
            .is_some_and(|t| t.content == eos)
        {
            return Err(LengthError::EosNotSpecial(eos));
        }
        template.eos_token = Some(eos);
        let pre = serde_json::to_string(&tokenizer.get_pre_tokenizer()).unwrap_or_default();
        let constant = QWEN_PRETOKENIZER_MARK
            .iter()
            .all(|m| pre.contains(m))
            .then(|| {
                let mut texts = vec!["\n".to_string()];
                for role in ["system", "user", "assistant"] {
                    texts.push(format!("{role}\n"));
                }
                if let Some(sys) = &template.system {
                    texts.push(format!("system\n{sys}"));
                }
                texts
                    .into_iter()
                    .filter_map(|t| {
                        Some((
                            t.clone(),
                            tokenizer.encode_fast(t.as_str(), false).ok()?.len() as u32,
                        ))
                    })
                    .collect()
            });
        Ok(LengthCounter {
            constant,
            tokenizer,
            vision,
            template,
            ids,
        })
    }

    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    /// Token ids of a text segment (added/special tokens inside it are honoured, as in HF).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, LengthError> {
        let enc = self
            .tokenizer
            .encode_fast(text, false)
            .map_err(|e| LengthError::Encode(e.to_string()))?;
        Ok(enc.get_ids().to_vec())
    }

    /// The resolved eos token (ends pretraining-form captions).
    pub fn eos_token(&self) -> &str {
        self.template.eos_token.as_deref().unwrap_or(DEFAULT_EOS)
    }

    /// Render a per-sample JSON document (as written by `llava-pack build`).
    pub fn render(&self, sample: &Value) -> Result<(Rendered, Vec<ImageGrid>), LengthError> {
        let grids = image_grids(sample, &self.vision)?;
        let rendered = template::render_sample(sample, grids.len(), &self.template)?;
        Ok((rendered, grids))
    }

    /// Tokens of one text segment. Fast path (Qwen2-style tokenizers only): the template's
    /// constant texts and `"{role}\n"` headers come from a table, so a typical sample costs
    /// one tokenizer call per turn instead of several; exact by [`QWEN_PRETOKENIZER_MARK`]'s
    /// argument and checked against transformers in `tests/test_lengths.py`.
    fn count_text(&self, t: &str) -> Result<u32, LengthError> {
        if let Some(table) = &self.constant {
            if let Some(&n) = table.get(t) {
                return Ok(n);
            }
            if let Some(nl) = t.find('\n') {
                let (head, rest) = t.split_at(nl + 1);
                let starts_solid = rest.chars().next().is_some_and(|c| !c.is_whitespace());
                if let (Some(&n), true) = (table.get(head), starts_solid) {
                    return Ok(n + self.encode_len(rest)?);
                }
            }
        }
        self.encode_len(t)
    }

    fn encode_len(&self, t: &str) -> Result<u32, LengthError> {
        let enc = self
            .tokenizer
            .encode_fast(t, false)
            .map_err(|e| LengthError::Encode(e.to_string()))?;
        Ok(enc.len() as u32)
    }

    /// Sequence length of a per-sample JSON document.
    pub fn sample_length(&self, sample: &Value) -> Result<SampleLength, LengthError> {
        let (rendered, grids) = self.render(sample)?;
        let (mut text, mut special, mut image) = (0u32, 0u32, 0u32);
        for seg in &rendered.segments {
            match seg {
                Segment::Text { text: t, .. } => text += self.count_text(t)?,
                Segment::Special { .. } => special += 1,
                Segment::ImagePads { image: i } => image += grids[*i].tokens,
            }
        }
        Ok(SampleLength {
            total: text + special + image,
            text_tokens: text,
            special_tokens: special,
            image_tokens: grids.iter().map(|g| g.tokens).collect(),
            image_patches: grids.iter().map(|g| g.patches).collect(),
            image_sizes: grids.iter().map(|g| [g.height, g.width]).collect(),
        })
    }
}

/// `(width, height)` of an image as seen upright: EXIF orientations 5–8 are transposes
/// (rotations by 90°/270°, with or without a flip), so the sides swap — as transformers sees an
/// `ImageOps.exif_transpose`d image, and as the loader's preprocessing decodes it.
pub fn upright_size(width: u64, height: u64, orientation: u64) -> (u64, u64) {
    if (5..=8).contains(&orientation) {
        (height, width)
    } else {
        (width, height)
    }
}

/// The resize grid of every image listed in the sample's `images` metadata (sizes as stored,
/// turned upright by the recorded EXIF `orientation`).
pub fn image_grids(sample: &Value, vision: &VisionConfig) -> Result<Vec<ImageGrid>, LengthError> {
    let empty = Vec::new();
    let images = sample
        .get("images")
        .and_then(Value::as_array)
        .unwrap_or(&empty);
    images
        .iter()
        .enumerate()
        .map(|(i, im)| {
            let w = im
                .get("width")
                .and_then(Value::as_u64)
                .ok_or(LengthError::NoSize(i))?;
            let h = im
                .get("height")
                .and_then(Value::as_u64)
                .ok_or(LengthError::NoSize(i))?;
            let orientation = im.get("orientation").and_then(Value::as_u64).unwrap_or(1);
            let (w, h) = upright_size(w, h, orientation);
            vision
                .image_grid(w as u32, h as u32)
                .map_err(|source| LengthError::Image { index: i, source })
        })
        .collect()
}

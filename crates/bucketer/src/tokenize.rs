//! Tokenisation of a sample for training: `input_ids` + `labels` from the same rendered
//! template segments [`LengthCounter::sample_length`] counts, so the loader's lengths and the
//! packer's can never disagree.
//!
//! Labels are `-100` everywhere except assistant answer tokens and each answer's closing
//! `<|im_end|>` (chat form), or the caption tokens and the eos (pretraining-form captions) —
//! the reference's targets. A text token is trained iff its first byte lies at or after the
//! segment's `trained_from` offset (the answer start); labels are unshifted (the model
//! shifts).

use serde_json::Value;

use crate::length::{LengthCounter, LengthError};
use crate::template::{Segment, Special};

/// Label value of positions that are not trained (PyTorch's `ignore_index`).
pub const IGNORE: i64 = -100;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tokenized {
    pub input_ids: Vec<u32>,
    pub labels: Vec<i64>,
    /// LLM tokens (`<|image_pad|>` count) of each image, in order.
    pub image_tokens: Vec<u32>,
}

impl LengthCounter {
    /// Token ids and labels of a per-sample JSON document.
    pub fn tokenize(&self, sample: &Value) -> Result<Tokenized, LengthError> {
        let (rendered, grids) = self.render(sample)?;
        let (mut ids, mut labels) = (Vec::new(), Vec::new());
        for seg in &rendered.segments {
            match seg {
                Segment::Text { text, trained_from } => {
                    let enc = self
                        .tokenizer()
                        .encode(text.as_str(), false)
                        .map_err(|e| LengthError::Encode(e.to_string()))?;
                    for (&id, &(start, _)) in enc.get_ids().iter().zip(enc.get_offsets()) {
                        ids.push(id);
                        let trained = trained_from.is_some_and(|from| start >= from);
                        labels.push(if trained { id as i64 } else { IGNORE });
                    }
                }
                Segment::Special { token, trained } => {
                    let id = match token {
                        Special::ImStart => self.ids.im_start,
                        Special::ImEnd => self.ids.im_end,
                        Special::VisionStart => self.ids.vision_start,
                        Special::VisionEnd => self.ids.vision_end,
                        Special::Eos => self.ids.eos,
                    };
                    ids.push(id);
                    labels.push(if *trained { id as i64 } else { IGNORE });
                }
                Segment::ImagePads { image } => {
                    let n = grids[*image].tokens as usize;
                    ids.resize(ids.len() + n, self.ids.image_pad);
                    labels.resize(labels.len() + n, IGNORE);
                }
            }
        }
        Ok(Tokenized {
            input_ids: ids,
            labels,
            image_tokens: grids.iter().map(|g| g.tokens).collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{TemplateOptions, VisionConfig};
    use serde_json::json;

    /// A tiny word-level tokenizer with the template's special tokens (ids 100..).
    fn counter() -> LengthCounter {
        counter_with(TemplateOptions::default())
    }

    fn counter_with(template: TemplateOptions) -> LengthCounter {
        let words = [
            "system",
            "user",
            "assistant",
            "You",
            "are",
            "a",
            "helpful",
            "assistant.",
            "A",
            "cat.",
            "Hi",
            "Yo",
            "[UNK]",
            "\n",
        ];
        let vocab: serde_json::Map<String, Value> = words
            .iter()
            .enumerate()
            .map(|(i, w)| (w.to_string(), json!(i)))
            .collect();
        let specials = [
            "<|im_start|>",
            "<|im_end|>",
            "<|vision_start|>",
            "<|vision_end|>",
            "<|image_pad|>",
            "<|vision_pad|>",
        ];
        let added: Vec<Value> = specials
            .iter()
            .enumerate()
            .map(|(i, t)| json!({"id": 100 + i, "content": t, "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true}))
            .collect();
        let mut vocab = vocab;
        for (i, t) in specials.iter().enumerate() {
            vocab.insert(t.to_string(), json!(100 + i));
        }
        let tok = json!({
            "version": "1.0", "truncation": null, "padding": null, "added_tokens": added,
            "normalizer": null,
            "pre_tokenizer": {"type": "Split", "pattern": {"Regex": "\\s+"}, "behavior": "Removed", "invert": false},
            "post_processor": null, "decoder": null,
            "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "[UNK]"}
        });
        let path =
            std::env::temp_dir().join(format!("bucketer-tokenize-{}.json", std::process::id()));
        std::fs::write(&path, serde_json::to_vec(&tok).unwrap()).unwrap();
        let c = LengthCounter::from_file(&path, VisionConfig::default(), template).unwrap();
        std::fs::remove_file(&path).ok();
        c
    }

    fn trained(t: &Tokenized) -> Vec<u32> {
        t.labels
            .iter()
            .filter(|&&l| l != IGNORE)
            .map(|&l| l as u32)
            .collect()
    }

    #[test]
    fn pretrain_captions_train_the_caption_and_eos() {
        let c = counter();
        assert_eq!(c.eos_token(), "<|im_end|>");
        let s = json!({"kind": "caption", "caption": "A cat.", "images": [{"width": 56, "height": 56}]});
        let t = c.tokenize(&s).unwrap();
        // <|vision_start|> 4 × <|image_pad|> <|vision_end|> "A" "cat." eos
        assert_eq!(t.input_ids, vec![102, 104, 104, 104, 104, 103, 8, 9, 101]);
        assert_eq!(t.input_ids.len() as u32, c.sample_length(&s).unwrap().total);
        assert_eq!(trained(&t), vec![8, 9, 101]);
        // An explicit eos token replaces the default.
        let c = counter_with(TemplateOptions {
            eos_token: Some("<|vision_pad|>".into()),
            ..Default::default()
        });
        assert_eq!(*c.tokenize(&s).unwrap().input_ids.last().unwrap(), 105);
    }

    #[test]
    fn exif_orientations_5_to_8_swap_the_image_grid() {
        let c = counter();
        for o in 1..=8u64 {
            let s =
                json!({"caption": "A", "images": [{"width": 112, "height": 56, "orientation": o}]});
            let g = crate::length::image_grids(&s, &c.vision).unwrap();
            let upright = if o >= 5 { (112, 56) } else { (56, 112) };
            assert_eq!((g[0].height, g[0].width), upright, "orientation {o}");
            // smart_resize is symmetric, so the token count does not depend on it.
            assert_eq!(c.sample_length(&s).unwrap().image_tokens, vec![8]);
        }
    }

    #[test]
    fn labels_cover_answers_and_closing_im_end_only() {
        let c = counter_with(TemplateOptions {
            caption_format: crate::CaptionFormat::Chat,
            ..Default::default()
        });
        let s = json!({"kind": "caption", "caption": "A cat.", "images": [{"width": 56, "height": 56}]});
        let t = c.tokenize(&s).unwrap();
        assert_eq!(t.input_ids.len() as u32, c.sample_length(&s).unwrap().total);
        // The chat form ends on the answer's <|im_end|> (no final "\n").
        assert_eq!(*t.input_ids.last().unwrap(), 101);
        assert_eq!(t.image_tokens, vec![4]);
        let trained: Vec<u32> = t
            .labels
            .iter()
            .filter(|&&l| l != IGNORE)
            .map(|&l| l as u32)
            .collect();
        // "A", "cat.", <|im_end|>
        assert_eq!(trained, vec![8, 9, 101]);
        assert_eq!(t.input_ids.iter().filter(|&&i| i == 104).count(), 4);
        // Every trained label equals its input id.
        for (i, l) in t.input_ids.iter().zip(&t.labels) {
            assert!(*l == IGNORE || *l == *i as i64);
        }
    }

    #[test]
    fn multi_turn_trains_every_answer() {
        let c = counter();
        let s = json!({"conversations": [
            {"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Yo"},
            {"from": "human", "value": "Hi"}, {"from": "gpt", "value": "A cat."}]});
        let t = c.tokenize(&s).unwrap();
        assert_eq!(t.input_ids.len() as u32, c.sample_length(&s).unwrap().total);
        let trained: Vec<u32> = t
            .labels
            .iter()
            .filter(|&&l| l != IGNORE)
            .map(|&l| l as u32)
            .collect();
        assert_eq!(trained, vec![11, 101, 8, 9, 101]);
    }
}

//! Exact-duplicate keys: what "the same sample" means for `--dedup exact` (the default) and
//! `--dedup image`.
//!
//! - `exact` (alias `sample`): the whole sample — the content hashes of all its images, in
//!   order, plus its normalised text. The same image asked three different questions is three
//!   samples; the same image with the same text is one. Text-only samples are deduplicated too.
//! - `image`: the images alone (caption corpora, where the same picture twice is one too many
//!   whatever its caption); text-only samples are never duplicates.
//!
//! Normalised text: the text a sample trains on, in order, each piece whitespace-collapsed
//! (every run of Unicode whitespace becomes one space) and trimmed; case, punctuation and
//! `<image>` placeholders are kept, fields other than the text (`source`, `license`, …) are
//! ignored. Pieces: a caption sample's `caption`; for `conversations` each turn's role and
//! `value`; for `messages` each message's role and its string content, or per part the text
//! of a text part and a marker for an image part. Roles are unified (`human` = `user`, `gpt` =
//! `assistant`) so a conversation and the same chat written as messages are the same sample;
//! a caption is never the same sample as a chat.

use serde_json::{Map, Value};

use crate::input::{Sample, SampleKind};

/// Bumped if the key's definition changes (the job fingerprint names the mode, not this).
const DOMAIN: &[u8] = b"llava-pack dedup sample v1\0";

/// The whole-sample key: image content hashes in order + normalised text.
pub fn sample_key<'a>(
    sample: &Sample,
    images: impl ExactSizeIterator<Item = &'a [u8; 16]>,
) -> [u8; 16] {
    let mut h = blake3::Hasher::new();
    h.update(DOMAIN);
    h.update(&(images.len() as u64).to_le_bytes());
    for img in images {
        h.update(img);
    }
    let mut put = |tag: u8, text: &str| {
        // Length-prefixed, so piece boundaries cannot be forged by the text itself.
        h.update(&[tag]);
        h.update(&(text.len() as u64).to_le_bytes());
        h.update(text.as_bytes());
    };
    let f = &sample.fields;
    match sample.kind {
        SampleKind::Caption => {
            put(b'c', &normalise(str_of(f, "caption")));
        }
        SampleKind::Conversations => {
            for turn in list_of(f, "conversations") {
                put(b'r', role(str_of_value(turn, "from")));
                put(b't', &normalise(str_of_value(turn, "value")));
            }
        }
        SampleKind::Instruction => {
            if let Some(system) = f.get("system").and_then(Value::as_str) {
                put(b'r', "system");
                put(b't', &normalise(system));
            }
            put(b'r', "user");
            put(b't', &normalise(str_of(f, "instruction")));
            put(b'r', "assistant");
            put(b't', &normalise(str_of(f, "response")));
        }
        SampleKind::Messages => {
            for msg in list_of(f, "messages") {
                put(b'r', role(str_of_value(msg, "role")));
                match msg.get("content") {
                    Some(Value::Array(parts)) => {
                        for part in parts {
                            match part.get("type").and_then(Value::as_str) {
                                Some("image") => put(b'i', ""),
                                _ => put(b't', &normalise(str_of_value(part, "text"))),
                            }
                        }
                    }
                    other => put(
                        b't',
                        &normalise(other.and_then(Value::as_str).unwrap_or("")),
                    ),
                }
            }
        }
    }
    let mut out = [0u8; 16];
    out.copy_from_slice(&h.finalize().as_bytes()[..16]);
    out
}

/// The images-only key: `None` for a text-only sample (never a duplicate in this mode).
pub fn image_key(images: &[[u8; 16]]) -> Option<[u8; 16]> {
    match images {
        [] => None,
        // One image: its content hash, as it always was (keeps `sha` and the key equal).
        [one] => Some(*one),
        many => {
            let mut h = blake3::Hasher::new();
            for img in many {
                h.update(img);
            }
            let mut out = [0u8; 16];
            out.copy_from_slice(&h.finalize().as_bytes()[..16]);
            Some(out)
        }
    }
}

/// Every run of whitespace becomes one space; leading and trailing whitespace goes.
pub fn normalise(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for word in text.split_whitespace() {
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(word);
    }
    out
}

fn role(r: &str) -> &str {
    match r {
        "human" => "user",
        "gpt" => "assistant",
        other => other,
    }
}

fn str_of<'a>(f: &'a Map<String, Value>, key: &str) -> &'a str {
    f.get(key).and_then(Value::as_str).unwrap_or("")
}

fn str_of_value<'a>(v: &'a Value, key: &str) -> &'a str {
    v.get(key).and_then(Value::as_str).unwrap_or("")
}

fn list_of<'a>(f: &'a Map<String, Value>, key: &str) -> &'a [Value] {
    f.get(key)
        .and_then(Value::as_array)
        .map_or(&[], Vec::as_slice)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn key(json: &str, images: &[[u8; 16]]) -> [u8; 16] {
        let s = crate::input::parse(json.as_bytes(), Path::new("/r")).unwrap();
        sample_key(&s, images.iter())
    }

    const A: [u8; 16] = [1; 16];
    const B: [u8; 16] = [2; 16];

    #[test]
    fn normalise_collapses_and_trims_whitespace_only() {
        assert_eq!(normalise("  A  cat\n\tsits. \u{3000}"), "A cat sits.");
        assert_eq!(
            normalise("Case Kept, <image> too"),
            "Case Kept, <image> too"
        );
        assert_eq!(normalise(" \n "), "");
    }

    #[test]
    fn same_image_with_different_text_is_a_different_sample() {
        let q = |q: &str| {
            format!(
                r#"{{"image":"x.jpg","conversations":[{{"from":"human","value":"<image>\n{q}"}},{{"from":"gpt","value":"a"}}]}}"#
            )
        };
        assert_ne!(key(&q("What colour?"), &[A]), key(&q("How many?"), &[A]));
        assert_eq!(key(&q("How  many?"), &[A]), key(&q("How many? "), &[A]));
        assert_ne!(key(&q("How many?"), &[A]), key(&q("How many?"), &[B]));
    }

    #[test]
    fn image_order_and_count_matter() {
        let j = r#"{"image":["a","b"],"caption":"c"}"#;
        assert_ne!(key(j, &[A, B]), key(j, &[B, A]));
        assert_ne!(image_key(&[A, B]), image_key(&[B, A]));
        assert_eq!(image_key(&[A]), Some(A));
        assert_eq!(image_key(&[]), None);
    }

    #[test]
    fn other_fields_and_ids_do_not_matter_but_roles_and_shapes_do() {
        let a = key(
            r#"{"id":"1","image":"x","caption":"c","source":"s1"}"#,
            &[A],
        );
        let b = key(
            r#"{"id":"2","image":"y","caption":" c","source":"s2"}"#,
            &[A],
        );
        assert_eq!(a, b);
        let conv = key(
            r#"{"conversations":[{"from":"human","value":"hi"},{"from":"gpt","value":"yo"}]}"#,
            &[],
        );
        let msgs = key(
            r#"{"messages":[{"role":"user","content":"hi"},{"role":"assistant","content":"yo"}]}"#,
            &[],
        );
        assert_eq!(conv, msgs);
        let swapped = key(
            r#"{"messages":[{"role":"assistant","content":"hi"},{"role":"user","content":"yo"}]}"#,
            &[],
        );
        assert_ne!(conv, swapped);
        // A caption is not a one-turn chat with the same words.
        let cap = key(r#"{"image":"x","caption":"hi"}"#, &[A]);
        let chat = key(
            r#"{"image":"x","messages":[{"role":"user","content":"hi"}]}"#,
            &[A],
        );
        assert_ne!(cap, chat);
        // Piece boundaries count: ["ab", ""] is not ["a", "b"].
        let p1 = key(
            r#"{"messages":[{"role":"user","content":[{"type":"text","text":"ab"},{"type":"text","text":""}]}]}"#,
            &[],
        );
        let p2 = key(
            r#"{"messages":[{"role":"user","content":[{"type":"text","text":"a"},{"type":"text","text":"b"}]}]}"#,
            &[],
        );
        assert_ne!(p1, p2);
    }
}

//! Sample normalisation: JSON decoding, shape detection, validation and image path
//! resolution. Everything here is pure (no I/O) and runs on worker threads.
//!
//! Rules (a violation is a reject reason, never a job error):
//! - The payload must be UTF-8 (a leading BOM is ignored) and one JSON object.
//!   Duplicate keys follow serde_json: the last occurrence wins.
//! - Shape: `conversations` (LLaVA), else `messages`, else `instruction`, else `caption`; a
//!   key whose value is non-null wins over an earlier key that is null.
//! - `id`: string or integer (integers become their decimal string); an empty string or
//!   `null` counts as missing.
//! - `image` / `images`: a string or a list of strings (either key, not both); relative
//!   paths are joined to the image root, absolute ones are kept; empty paths are rejected.
//! - Caption samples need a non-empty (after trim) caption and at least one image.
//! - Instruction samples need a string `instruction` (empty only with an image), a non-empty
//!   (after trim) string `response`, and `system`, if given and non-null, a string; `<image>`
//!   placeholders in the instruction count like those of a human turn.
//! - `<image>` placeholders in human/user string turns plus `{"type": "image"}` parts must
//!   equal the number of images when there is at least one placeholder.
//! - `fields` keeps every other key in input order.

use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use super::{ImageRef, Sample, SampleKind};

/// The text placeholder that marks where an image goes in a turn.
pub const IMAGE_PLACEHOLDER: &str = "<image>";

/// Parse one JSONL line into a [`Sample`]; `Err` is a short reject reason.
pub fn parse(payload: &[u8], image_root: &Path) -> Result<Sample, String> {
    let text = std::str::from_utf8(payload)
        .map_err(|e| format!("invalid UTF-8 at byte {}", e.valid_up_to()))?;
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let value: Value = serde_json::from_str(text).map_err(|e| format!("malformed JSON: {e}"))?;
    let Value::Object(map) = value else {
        return Err("not a JSON object".to_string());
    };
    normalise(map, image_root, None)
}

/// Validate a decoded record and turn it into a [`Sample`].
///
/// `embedded` carries images that were already extracted by the reader (Parquet); when it
/// is `None` the images come from the `image`/`images` keys of `map`.
pub(crate) fn normalise(
    mut map: Map<String, Value>,
    image_root: &Path,
    embedded: Option<Vec<ImageRef>>,
) -> Result<Sample, String> {
    let id = take_id(&mut map)?;
    let images = match embedded {
        Some(images) => images,
        None => take_images(&mut map, image_root)?,
    };
    let kind = detect_kind(&map)?;
    let placeholders = match kind {
        SampleKind::Caption => {
            check_caption(&map["caption"])?;
            if images.is_empty() {
                return Err("caption sample without image".to_string());
            }
            0
        }
        SampleKind::Conversations => check_conversations(&map["conversations"])?,
        SampleKind::Messages => check_messages(&map["messages"])?,
        SampleKind::Instruction => check_instruction(&map, images.len())?,
    };
    if placeholders > 0 && placeholders != images.len() {
        return Err(format!(
            "{placeholders} {IMAGE_PLACEHOLDER} placeholder{} but {} image{}",
            plural(placeholders),
            images.len(),
            plural(images.len())
        ));
    }
    Ok(Sample {
        id,
        kind,
        fields: map,
        images,
    })
}

fn plural(n: usize) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

fn take_id(map: &mut Map<String, Value>) -> Result<Option<String>, String> {
    match map.shift_remove("id") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(if s.is_empty() { None } else { Some(s) }),
        Some(Value::Number(n)) if n.is_i64() || n.is_u64() => Ok(Some(n.to_string())),
        Some(_) => Err("id must be a string or integer".to_string()),
    }
}

fn take_images(map: &mut Map<String, Value>, root: &Path) -> Result<Vec<ImageRef>, String> {
    let image = image_list("image", map.shift_remove("image"), root)?;
    let images = image_list("images", map.shift_remove("images"), root)?;
    match (image.is_empty(), images.is_empty()) {
        (false, false) => Err("both \"image\" and \"images\" are given".to_string()),
        (true, _) => Ok(images),
        (false, true) => Ok(image),
    }
}

fn image_list(key: &str, value: Option<Value>, root: &Path) -> Result<Vec<ImageRef>, String> {
    match value {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::String(s)) => Ok(vec![
            file_ref(s, root).ok_or_else(|| format!("{key} is an empty path"))?
        ]),
        Some(Value::Array(items)) => items
            .into_iter()
            .enumerate()
            .map(|(i, item)| match item {
                Value::String(s) => {
                    file_ref(s, root).ok_or_else(|| format!("{key}[{i}] is an empty path"))
                }
                _ => Err(format!("{key}[{i}] is not a string")),
            })
            .collect(),
        Some(_) => Err(format!("{key} must be a string or a list of strings")),
    }
}

/// A file image reference; `None` for an empty (or blank) path.
pub(crate) fn file_ref(given: String, root: &Path) -> Option<ImageRef> {
    if given.trim().is_empty() {
        return None;
    }
    let resolved = resolve(&given, root);
    Some(ImageRef::File { given, resolved })
}

/// `given` joined to `root` when relative; absolute paths are kept as they are.
pub(crate) fn resolve(given: &str, root: &Path) -> PathBuf {
    let path = Path::new(given);
    if path.is_absolute() {
        path.to_path_buf()
    } else {
        root.join(path)
    }
}

fn detect_kind(map: &Map<String, Value>) -> Result<SampleKind, String> {
    const SHAPES: [(&str, SampleKind); 4] = [
        ("conversations", SampleKind::Conversations),
        ("messages", SampleKind::Messages),
        ("instruction", SampleKind::Instruction),
        ("caption", SampleKind::Caption),
    ];
    let present = |non_null: bool| {
        SHAPES.iter().find(|(key, _)| match map.get(*key) {
            Some(Value::Null) => !non_null,
            Some(_) => true,
            None => false,
        })
    };
    present(true)
        .or_else(|| present(false))
        .map(|(_, kind)| *kind)
        .ok_or_else(|| {
            "unrecognised sample shape: expected caption, conversations, messages or \
             instruction/response"
                .to_string()
        })
}

fn check_caption(caption: &Value) -> Result<(), String> {
    match caption {
        Value::String(s) if s.trim().is_empty() => Err("empty caption".to_string()),
        Value::String(_) => Ok(()),
        Value::Null => Err("caption is null".to_string()),
        _ => Err("caption is not a string".to_string()),
    }
}

/// Validates an instruction sample; returns the number of `<image>` placeholders in its
/// instruction.
fn check_instruction(map: &Map<String, Value>, images: usize) -> Result<usize, String> {
    let instruction = match &map["instruction"] {
        Value::String(s) => s,
        Value::Null => return Err("instruction is null".to_string()),
        _ => return Err("instruction is not a string".to_string()),
    };
    if instruction.trim().is_empty() && images == 0 {
        return Err("empty instruction and no image".to_string());
    }
    match map.get("response") {
        Some(Value::String(s)) if s.trim().is_empty() => return Err("empty response".to_string()),
        Some(Value::String(_)) => {}
        None | Some(Value::Null) => {
            return Err("instruction sample without \"response\"".to_string())
        }
        Some(_) => return Err("response is not a string".to_string()),
    }
    if !matches!(
        map.get("system"),
        None | Some(Value::Null | Value::String(_))
    ) {
        return Err("system is not a string".to_string());
    }
    Ok(instruction.matches(IMAGE_PLACEHOLDER).count())
}

/// Validates LLaVA turns; returns the number of `<image>` placeholders in human turns.
fn check_conversations(turns: &Value) -> Result<usize, String> {
    let Value::Array(turns) = turns else {
        return Err("conversations is not a list".to_string());
    };
    if turns.is_empty() {
        return Err("empty conversations".to_string());
    }
    let mut placeholders = 0;
    for (i, turn) in turns.iter().enumerate() {
        let Value::Object(turn) = turn else {
            return Err(format!("conversations[{i}] is not an object"));
        };
        let from = match turn.get("from") {
            Some(Value::String(s)) => s.as_str(),
            None => return Err(format!("conversations[{i}] has no \"from\"")),
            Some(_) => return Err(format!("conversations[{i}].from is not a string")),
        };
        if !matches!(from, "human" | "gpt" | "system") {
            return Err(format!(
                "conversations[{i}].from {from:?} is not human, gpt or system"
            ));
        }
        let value = match turn.get("value") {
            Some(Value::String(s)) => s,
            None => return Err(format!("conversations[{i}] has no \"value\"")),
            Some(_) => return Err(format!("conversations[{i}].value is not a string")),
        };
        if from == "human" {
            placeholders += value.matches(IMAGE_PLACEHOLDER).count();
        }
    }
    Ok(placeholders)
}

/// Validates chat messages; returns the number of image placeholders (`<image>` in user
/// string content plus `{"type": "image"}` parts in any turn).
fn check_messages(messages: &Value) -> Result<usize, String> {
    let Value::Array(messages) = messages else {
        return Err("messages is not a list".to_string());
    };
    if messages.is_empty() {
        return Err("empty messages".to_string());
    }
    let mut placeholders = 0;
    for (i, message) in messages.iter().enumerate() {
        let Value::Object(message) = message else {
            return Err(format!("messages[{i}] is not an object"));
        };
        let role = match message.get("role") {
            Some(Value::String(s)) => s.as_str(),
            None => return Err(format!("messages[{i}] has no \"role\"")),
            Some(_) => return Err(format!("messages[{i}].role is not a string")),
        };
        if !matches!(role, "system" | "user" | "assistant") {
            return Err(format!(
                "messages[{i}].role {role:?} is not system, user or assistant"
            ));
        }
        match message.get("content") {
            Some(Value::String(s)) => {
                if role == "user" {
                    placeholders += s.matches(IMAGE_PLACEHOLDER).count();
                }
            }
            Some(Value::Array(parts)) => {
                for (j, part) in parts.iter().enumerate() {
                    let Value::Object(part) = part else {
                        return Err(format!("messages[{i}].content[{j}] is not an object"));
                    };
                    match part.get("type") {
                        Some(Value::String(t)) if t == "image" => placeholders += 1,
                        Some(Value::String(t)) if t == "text" => {
                            if !matches!(part.get("text"), Some(Value::String(_))) {
                                return Err(format!(
                                    "messages[{i}].content[{j}].text is not a string"
                                ));
                            }
                        }
                        Some(Value::String(t)) => {
                            return Err(format!(
                                "messages[{i}].content[{j}].type {t:?} is not image or text"
                            ))
                        }
                        _ => {
                            return Err(format!(
                                "messages[{i}].content[{j}].type is missing or not a string"
                            ))
                        }
                    }
                }
            }
            None => return Err(format!("messages[{i}] has no \"content\"")),
            Some(_) => {
                return Err(format!(
                    "messages[{i}].content is not a string or a list of parts"
                ))
            }
        }
    }
    Ok(placeholders)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn root() -> PathBuf {
        PathBuf::from("/data/root")
    }

    fn ok(json: &str) -> Sample {
        parse(json.as_bytes(), &root()).unwrap_or_else(|e| panic!("{json}: {e}"))
    }

    fn err(json: &[u8]) -> String {
        match parse(json, &root()) {
            Ok(s) => panic!("{}: accepted as {s:?}", String::from_utf8_lossy(json)),
            Err(e) => e,
        }
    }

    fn file(given: &str, resolved: &str) -> ImageRef {
        ImageRef::File {
            given: given.into(),
            resolved: resolved.into(),
        }
    }

    #[test]
    fn caption_shape() {
        let s = ok(r#"{"id":"a1","image":"img/x.jpg","caption":"A cat.","source":"laion"}"#);
        assert_eq!(s.kind, SampleKind::Caption);
        assert_eq!(s.id.as_deref(), Some("a1"));
        assert_eq!(s.images, vec![file("img/x.jpg", "/data/root/img/x.jpg")]);
        let keys: Vec<_> = s.fields.keys().map(String::as_str).collect();
        assert_eq!(keys, ["caption", "source"]);
    }

    #[test]
    fn instruction_shape_and_rules() {
        let s = ok(
            r#"{"image":"a.jpg","instruction":"What is it?","response":"A cat.","system":"Be brief."}"#,
        );
        assert_eq!(s.kind, SampleKind::Instruction);
        let keys: Vec<_> = s.fields.keys().map(String::as_str).collect();
        assert_eq!(keys, ["instruction", "response", "system"]);
        let s = ok(
            r#"{"images":["a.jpg","b.jpg"],"instruction":"<image> vs <image>?","response":"same"}"#,
        );
        assert_eq!(s.images.len(), 2);
        ok(r#"{"instruction":"Say hi.","response":"Hi."}"#);
        ok(r#"{"image":"a.jpg","instruction":"","response":"A cat."}"#);
        assert_eq!(
            err(br#"{"instruction":" ","response":"x"}"#),
            "empty instruction and no image"
        );
        assert_eq!(
            err(br#"{"image":"a.jpg","instruction":"q"}"#),
            "instruction sample without \"response\""
        );
        assert_eq!(
            err(br#"{"image":"a.jpg","instruction":"q","response":" "}"#),
            "empty response"
        );
        assert_eq!(
            err(br#"{"image":"a.jpg","instruction":1,"response":"r"}"#),
            "instruction is not a string"
        );
        assert_eq!(
            err(br#"{"image":"a.jpg","instruction":"q","response":"r","system":[]}"#),
            "system is not a string"
        );
        assert_eq!(
            err(br#"{"images":["a.jpg","b.jpg"],"instruction":"<image> only one","response":"r"}"#),
            "1 <image> placeholder but 2 images"
        );
    }

    #[test]
    fn caption_rules() {
        assert_eq!(
            err(br#"{"id":"a","image":"x.jpg","caption":"  \n"}"#),
            "empty caption"
        );
        assert_eq!(
            err(br#"{"id":"a","image":"x.jpg","caption":3}"#),
            "caption is not a string"
        );
        assert_eq!(
            err(br#"{"id":"a","image":"x.jpg","caption":null}"#),
            "caption is null"
        );
        assert_eq!(
            err(br#"{"id":"a","caption":"hi"}"#),
            "caption sample without image"
        );
        assert_eq!(
            err(br#"{"id":"a","image":[],"caption":"hi"}"#),
            "caption sample without image"
        );
    }

    #[test]
    fn conversations_shape() {
        let s = ok(r#"{"id":7,"image":"/abs/a.png","conversations":[
            {"from":"system","value":"be nice"},
            {"from":"human","value":"<image>\nWhat is it?"},
            {"from":"gpt","value":"A dog."}],"extra":{"k":1}}"#);
        assert_eq!(s.kind, SampleKind::Conversations);
        assert_eq!(s.id.as_deref(), Some("7"));
        assert_eq!(s.images, vec![file("/abs/a.png", "/abs/a.png")]);
        let keys: Vec<_> = s.fields.keys().map(String::as_str).collect();
        assert_eq!(keys, ["conversations", "extra"]);
    }

    #[test]
    fn conversations_rules() {
        assert_eq!(err(br#"{"conversations":[]}"#), "empty conversations");
        assert_eq!(
            err(br#"{"conversations":{}}"#),
            "conversations is not a list"
        );
        assert_eq!(
            err(br#"{"conversations":[1]}"#),
            "conversations[0] is not an object"
        );
        assert_eq!(
            err(br#"{"conversations":[{"from":"human","value":"q"},{"from":"gpt","value":5}]}"#),
            "conversations[1].value is not a string"
        );
        assert_eq!(
            err(br#"{"conversations":[{"from":"bot","value":"q"}]}"#),
            "conversations[0].from \"bot\" is not human, gpt or system"
        );
        assert_eq!(
            err(br#"{"conversations":[{"value":"q"}]}"#),
            "conversations[0] has no \"from\""
        );
        assert_eq!(
            err(br#"{"conversations":[{"from":"gpt"}]}"#),
            "conversations[0] has no \"value\""
        );
        // Text-only conversations are fine.
        let s =
            ok(r#"{"conversations":[{"from":"human","value":"hi"},{"from":"gpt","value":"yo"}]}"#);
        assert!(s.images.is_empty());
        assert_eq!(s.id, None);
    }

    #[test]
    fn messages_shape() {
        let s = ok(r#"{"messages":[
            {"role":"system","content":"sys"},
            {"role":"user","content":[{"type":"image"},{"type":"text","text":"what?"},{"type":"image"}]},
            {"role":"assistant","content":"two cats"}],
            "images":["a.jpg","b/c.jpg"],"meta":null}"#);
        assert_eq!(s.kind, SampleKind::Messages);
        assert_eq!(
            s.images,
            vec![
                file("a.jpg", "/data/root/a.jpg"),
                file("b/c.jpg", "/data/root/b/c.jpg")
            ]
        );
        let keys: Vec<_> = s.fields.keys().map(String::as_str).collect();
        assert_eq!(keys, ["messages", "meta"]);
        // String content with placeholders.
        ok(r#"{"messages":[{"role":"user","content":"<image> hi"}],"images":"x.jpg"}"#);
    }

    #[test]
    fn messages_rules() {
        assert_eq!(err(br#"{"messages":[]}"#), "empty messages");
        assert_eq!(err(br#"{"messages":"x"}"#), "messages is not a list");
        assert_eq!(
            err(br#"{"messages":[{"role":"bot","content":"x"}]}"#),
            "messages[0].role \"bot\" is not system, user or assistant"
        );
        assert_eq!(
            err(br#"{"messages":[{"role":"user","content":[{"type":"text","text":1}]}]}"#),
            "messages[0].content[0].text is not a string"
        );
        assert_eq!(
            err(br#"{"messages":[{"role":"user","content":[{"type":"video"}]}]}"#),
            "messages[0].content[0].type \"video\" is not image or text"
        );
        assert_eq!(
            err(br#"{"messages":[{"role":"user","content":5}]}"#),
            "messages[0].content is not a string or a list of parts"
        );
        assert_eq!(
            err(br#"{"messages":[{"role":"user"}]}"#),
            "messages[0] has no \"content\""
        );
        assert_eq!(
            err(br#"{"messages":[{"role":"user","content":[{"type":"image"}]}]}"#),
            "1 <image> placeholder but 0 images"
        );
    }

    #[test]
    fn placeholder_consistency() {
        assert_eq!(
            err(
                br#"{"image":"a.jpg","conversations":[{"from":"human","value":"<image><image>"}]}"#
            ),
            "2 <image> placeholders but 1 image"
        );
        // Placeholders in gpt turns are not counted.
        ok(
            r#"{"image":"a.jpg","conversations":[{"from":"human","value":"<image>"},{"from":"gpt","value":"<image>"}]}"#,
        );
        // No placeholder with images: allowed (images go first).
        ok(r#"{"image":["a.jpg","b.jpg"],"conversations":[{"from":"human","value":"compare"}]}"#);
        // Multi-image with matching placeholders.
        let s = ok(
            r#"{"image":["a.jpg","b.jpg"],"conversations":[{"from":"human","value":"<image> vs <image>"}]}"#,
        );
        assert_eq!(s.images.len(), 2);
        // Placeholders in user string content of messages.
        assert_eq!(
            err(br#"{"images":["a","b"],"messages":[{"role":"user","content":"<image>"}]}"#),
            "1 <image> placeholder but 2 images"
        );
    }

    #[test]
    fn decoding_errors() {
        assert_eq!(err(b"{\"id\":\"a\xff\"}"), "invalid UTF-8 at byte 8");
        let e = err(br#"{"id":"a","caption":"unterminated"#);
        assert!(
            e.starts_with("malformed JSON: EOF while parsing a string at line 1 column"),
            "{e}"
        );
        assert_eq!(err(b"[1,2]"), "not a JSON object");
        assert_eq!(err(b"\"str\""), "not a JSON object");
        assert_eq!(
            err(br#"{"id":"a","image":"x"}"#),
            "unrecognised sample shape: expected caption, conversations, messages or instruction/response"
        );
        // A BOM is tolerated.
        ok("\u{feff}{\"image\":\"x.jpg\",\"caption\":\"c\"}");
    }

    #[test]
    fn id_rules() {
        let cap = |id: &str| format!(r#"{{"id":{id},"image":"x.jpg","caption":"c"}}"#);
        assert_eq!(ok(&cap("\"\"")).id, None);
        assert_eq!(ok(&cap("null")).id, None);
        assert_eq!(ok(&cap("-12")).id.as_deref(), Some("-12"));
        assert_eq!(
            ok(&cap("18446744073709551615")).id.as_deref(),
            Some("18446744073709551615")
        );
        for bad in ["1.5", "true", "[1]", "{}"] {
            assert_eq!(
                err(cap(bad).as_bytes()),
                "id must be a string or integer",
                "{bad}"
            );
        }
    }

    #[test]
    fn image_rules() {
        assert_eq!(
            err(br#"{"image":"","caption":"c"}"#),
            "image is an empty path"
        );
        assert_eq!(
            err(br#"{"image":["a",""],"caption":"c"}"#),
            "image[1] is an empty path"
        );
        assert_eq!(
            err(br#"{"image":["a",3],"caption":"c"}"#),
            "image[1] is not a string"
        );
        assert_eq!(
            err(br#"{"image":5,"caption":"c"}"#),
            "image must be a string or a list of strings"
        );
        assert_eq!(
            err(br#"{"image":"a","images":["b"],"caption":"c"}"#),
            "both \"image\" and \"images\" are given"
        );
        // `images` works for any shape, `image` for messages too.
        let s = ok(r#"{"images":["a.jpg"],"caption":"c"}"#);
        assert_eq!(s.images, vec![file("a.jpg", "/data/root/a.jpg")]);
        let s = ok(r#"{"image":"a.jpg","messages":[{"role":"user","content":"hi"}]}"#);
        assert_eq!(s.images.len(), 1);
    }

    #[test]
    fn fields_keep_order_and_unknown_keys() {
        let s = ok(r#"{"z":1,"id":"i","caption":"c","a":[1],"image":"x.jpg","m":{"q":2}}"#);
        let keys: Vec<_> = s.fields.keys().map(String::as_str).collect();
        assert_eq!(keys, ["z", "caption", "a", "m"]);
        // Duplicate keys: serde_json keeps the last value.
        let s = ok(r#"{"image":"x.jpg","caption":"first","caption":"second"}"#);
        assert_eq!(s.fields["caption"], "second");
    }

    #[test]
    fn shape_precedence() {
        // conversations wins over caption; caption stays in fields.
        let s = ok(r#"{"caption":"c","conversations":[{"from":"human","value":"q"}]}"#);
        assert_eq!(s.kind, SampleKind::Conversations);
        assert!(s.fields.contains_key("caption"));
        // A null conversations column (Parquet with mixed shapes) falls back to caption.
        let s = ok(r#"{"image":"x.jpg","caption":"c","conversations":null}"#);
        assert_eq!(s.kind, SampleKind::Caption);
    }
}

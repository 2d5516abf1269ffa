//! Reject checks on cleaned text. None of them assumes that spaces separate words: text in
//! scripts written without spaces (Han, kana, Hangul, Thai, …) is split into characters.

use std::collections::HashSet;

/// Scripts written without spaces between words, and full-width forms: each such character is
/// a token of its own for [`tokens`] and counts as one token in [`estimate_tokens`].
pub fn is_unspaced(c: char) -> bool {
    matches!(c,
        '\u{0E00}'..='\u{0EFF}' // Thai, Lao
        | '\u{1000}'..='\u{109F}' // Myanmar
        | '\u{1780}'..='\u{17FF}' // Khmer
        | '\u{1100}'..='\u{11FF}' // Hangul jamo
        | '\u{2E80}'..='\u{2FDF}' // CJK radicals
        | '\u{3000}'..='\u{303F}' // CJK symbols and punctuation
        | '\u{3040}'..='\u{30FF}' // Hiragana, Katakana
        | '\u{3130}'..='\u{318F}' // Hangul compatibility jamo
        | '\u{31F0}'..='\u{31FF}' // Katakana extensions
        | '\u{3400}'..='\u{4DBF}' // CJK extension A
        | '\u{4E00}'..='\u{9FFF}' // CJK unified ideographs
        | '\u{AC00}'..='\u{D7AF}' // Hangul syllables
        | '\u{F900}'..='\u{FAFF}' // CJK compatibility ideographs
        | '\u{FF00}'..='\u{FFEF}' // full-width and half-width forms
        | '\u{20000}'..='\u{2FFFF}' // CJK extensions B+
    )
}

/// Whitespace-separated words longer than this are split into characters for the repetition
/// check, so `hahahahaha…` or `abcabcabc…` written without spaces is seen.
const LONG_WORD: usize = 32;

fn hash_str(s: &str) -> u64 {
    // FNV-1a: tokens are short; a cryptographic hash would dominate the cost.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in s.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x100_0000_01b3);
    }
    h
}

/// Token hashes: whitespace-separated words, except that characters of unspaced scripts and
/// words over [`LONG_WORD`] bytes are one token per character.
pub fn tokens(text: &str, out: &mut Vec<u64>) {
    out.clear();
    for word in text.split_whitespace() {
        if word.is_ascii() && word.len() <= LONG_WORD {
            out.push(hash_str(word));
            continue;
        }
        let per_char = word.len() > LONG_WORD;
        let mut start = None::<usize>;
        for (i, c) in word.char_indices() {
            if per_char || is_unspaced(c) {
                if let Some(s) = start.take() {
                    out.push(hash_str(&word[s..i]));
                }
                out.push(c as u64 | 1 << 40);
            } else if start.is_none() {
                start = Some(i);
            }
        }
        if let Some(s) = start {
            out.push(hash_str(&word[s..]));
        }
    }
}

/// Longest tokens a repeated unit may have (`a photo of a cat a photo of a cat …` is a
/// 5-token unit).
pub const MAX_UNIT: usize = 8;

/// A unit of 1..=[`MAX_UNIT`] tokens repeated back to back at least `max_repeats` times,
/// covering at least a quarter of the text's tokens (so a short run inside a long answer, such
/// as a row of zeros in a matrix, does not reject it): `(unit length, repeats)`.
pub fn repetition(toks: &[u64], max_repeats: u32) -> Option<(usize, usize)> {
    let n = toks.len();
    let need = max_repeats as usize;
    for unit in 1..=MAX_UNIT.min(n / 2) {
        let mut run = 0usize; // tokens equal to the one `unit` before them
        for i in unit..n {
            if toks[i] == toks[i - unit] {
                run += 1;
                let repeats = run / unit + 1;
                let covered = run + unit;
                if repeats >= need && covered * 4 >= n {
                    // Extend to the whole run for the reason.
                    let mut j = i + 1;
                    while j < n && toks[j] == toks[j - unit] {
                        run += 1;
                        j += 1;
                    }
                    return Some((unit, run / unit + 1));
                }
            } else {
                run = 0;
            }
        }
    }
    None
}

/// A cheap token count, meant to err on the high side for a Qwen2-style BPE tokenizer: one
/// per character of an unspaced script (Qwen merges common Chinese words, so about 1.4
/// characters make a token), one per four bytes of each ASCII word (rounded up), one per two
/// other characters.
pub fn estimate_tokens(text: &str) -> u64 {
    let mut n = 0u64;
    for word in text.split_whitespace() {
        if word.is_ascii() {
            n += word.len().div_ceil(4) as u64;
            continue;
        }
        let (mut ascii, mut other) = (0u64, 0u64);
        for c in word.chars() {
            if c.is_ascii() {
                ascii += 1;
            } else if is_unspaced(c) {
                n += 1;
            } else {
                other += 1;
            }
        }
        n += ascii.div_ceil(4) + other.div_ceil(2);
    }
    n
}

/// A caption that is nothing but a URL.
pub fn is_url(text: &str) -> bool {
    let t = text.trim_end_matches(['.', ',', ';', ')', '/']);
    if t.contains(char::is_whitespace) || t.is_empty() {
        return false;
    }
    let lower = t.to_ascii_lowercase();
    let rest = ["http://", "https://", "ftp://", "www."]
        .iter()
        .find_map(|p| lower.strip_prefix(p));
    // A host with a dot after the scheme (`http://x` alone is not worth the name).
    rest.is_some_and(|r| r.split('/').next().is_some_and(|host| host.contains('.')))
}

const FILE_EXTS: &[&str] = &[
    "jpg", "jpeg", "jpe", "png", "gif", "webp", "bmp", "tif", "tiff", "heic", "heif", "avif",
    "svg", "raw", "cr2", "nef", "arw", "dng", "mp4", "mov", "avi", "mkv", "webm", "pdf",
];

/// Camera and phone file-name stems, matched case-insensitively as `{prefix}[_-]?{digits}`
/// with at least four digits (a suffix such as `_edit` or `(1)` may follow).
const CAMERA_PREFIXES: &[&str] = &[
    "img",
    "dsc",
    "dscn",
    "dscf",
    "dji",
    "gopr",
    "gp",
    "pxl",
    "mvimg",
    "vid",
    "pict",
    "photo",
    "image",
    "screenshot",
    "sam",
    "p",
    "dcim",
    "mvc",
    "cimg",
    "sdc",
    "imag",
];

/// A caption that is nothing but a file name: one word with an image/video extension, or a
/// camera-style stem (`IMG_1234`, `DSC01234`, `20190614_153012`).
pub fn is_file_name(text: &str) -> bool {
    let t = text.trim();
    if t.is_empty() || t.contains(char::is_whitespace) {
        return false;
    }
    let name = t.rsplit(['/', '\\']).next().unwrap_or(t);
    if let Some((stem, ext)) = name.rsplit_once('.') {
        if !stem.is_empty() && FILE_EXTS.contains(&ext.to_ascii_lowercase().as_str()) {
            return true;
        }
    }
    let stem = name.split('.').next().unwrap_or(name).to_ascii_lowercase();
    let digits_only = stem.len() >= 8
        && stem
            .bytes()
            .all(|b| b.is_ascii_digit() || b == b'_' || b == b'-')
        && stem.bytes().filter(u8::is_ascii_digit).count() >= 8;
    if digits_only {
        return true;
    }
    CAMERA_PREFIXES.iter().any(|p| {
        stem.strip_prefix(p).is_some_and(|rest| {
            let rest = rest.trim_start_matches(['_', '-']);
            let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
            digits >= 4
                && rest[digits..]
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'(' | b')'))
        })
    })
}

/// The built-in boilerplate list (replaced by `--boilerplate FILE`): captions that say
/// nothing about the picture. Compared after [`boilerplate_form`].
pub const DEFAULT_BOILERPLATE: &[&str] = &[
    "image",
    "photo",
    "picture",
    "untitled",
    "untitled image",
    "no description",
    "no description available",
    "no caption",
    "image may contain",
    "stock photo",
    "stock image",
    "click to enlarge",
    "click here",
    "view larger image",
    "view image",
    "image not found",
    "image unavailable",
    "placeholder",
    "thumbnail",
    "alt text",
    "insert image here",
    "photo credit",
    "getty images",
    "shutterstock",
    "null",
    "none",
    "n/a",
    "na",
    "unknown",
    "default",
    "loading",
    "image description",
    "description",
    "caption",
    "图片",
    "图像",
    "照片",
    "无标题",
    "暂无图片",
    "画像",
    "写真",
    "無題",
    "画像なし",
];

/// Lower-cased, outer punctuation and whitespace removed (ASCII and full-width), so
/// `Photo.`, ` PHOTO ` and `照片。` match their list entries.
pub fn boilerplate_form(text: &str) -> String {
    text.trim_matches(|c: char| {
        c.is_whitespace()
            || c.is_ascii_punctuation()
            || "。、！？：；「」『』（）【】…・".contains(c)
    })
    .to_lowercase()
}

pub struct Boilerplate {
    phrases: HashSet<String>,
    /// Bytes of the longest phrase: longer captions (after trimming) cannot match.
    longest: usize,
}

impl Boilerplate {
    pub fn new<'a>(phrases: impl IntoIterator<Item = &'a str>) -> Self {
        let phrases: HashSet<String> = phrases
            .into_iter()
            .map(boilerplate_form)
            .filter(|p| !p.is_empty())
            .collect();
        // Lower-casing may change a text's length in bytes (a few letters); keep a margin.
        let longest = phrases.iter().map(String::len).max().unwrap_or(0) * 2 + 8;
        Boilerplate { phrases, longest }
    }

    pub fn matches(&self, text: &str) -> bool {
        // Length gate before lower-casing a copy: phrases are short, most captions are not.
        text.trim().len() <= self.longest + 64 && self.phrases.contains(&boilerplate_form(text))
    }
}

/// Roles of a conversation in order (`user`/`assistant`/`system`): an error when, after
/// leading system turns, they do not go user, assistant, user, … and end on an assistant turn.
pub fn check_roles<'a>(roles: impl Iterator<Item = &'a str>) -> Result<(), String> {
    let mut expect_user = true;
    let mut seen = 0usize;
    let mut leading = true;
    for (i, role) in roles.enumerate() {
        if role == "system" && leading {
            continue;
        }
        leading = false;
        seen += 1;
        let want = if expect_user { "user" } else { "assistant" };
        if role != want {
            return Err(format!("turn {i} is {role}, expected {want}"));
        }
        expect_user = !expect_user;
    }
    match (seen, expect_user) {
        (0, _) => Err("no user or assistant turn".into()),
        (_, false) => Err("ends on a user turn (no answer to train on)".into()),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rep(text: &str, max: u32) -> Option<(usize, usize)> {
        let mut t = Vec::new();
        tokens(text, &mut t);
        repetition(&t, max)
    }

    #[test]
    fn repeated_words_and_phrases_are_found() {
        assert_eq!(rep(&"the ".repeat(12), 10), Some((1, 12)));
        let loop5 = "a photo of a cat ".repeat(10);
        assert_eq!(rep(&loop5, 10), Some((5, 10)));
        assert_eq!(rep("a cat sits on a mat next to a cat", 10), None);
        assert_eq!(rep(&"ha".repeat(30), 10), Some((2, 30)));
    }

    #[test]
    fn repetition_works_without_spaces_and_spares_normal_cjk() {
        assert_eq!(rep(&"好的".repeat(12), 10), Some((2, 12)));
        assert_eq!(rep(&"猫がいます".repeat(10), 10), Some((5, 10)));
        for ok in [
            "一只橘色的猫躺在阳光下的窗台上，旁边放着一盆绿色的植物。",
            "桜の木の下で、子供たちが楽しそうに遊んでいる。",
            "哈哈哈，太好了！",
        ] {
            assert_eq!(rep(ok, 10), None, "{ok}");
        }
    }

    #[test]
    fn a_short_run_in_a_long_text_is_not_garbage() {
        let words: Vec<String> = (0..60).map(|i| format!("w{i}")).collect();
        let text = format!("{} [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]", words.join(" "));
        assert_eq!(rep(&text, 10), None);
        assert_eq!(
            rep("[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]", 10),
            Some((1, 10))
        );
    }

    #[test]
    fn token_estimates() {
        assert_eq!(estimate_tokens("a cat"), 2);
        assert_eq!(estimate_tokens("photograph"), 3);
        assert_eq!(estimate_tokens("一只猫。"), 4);
        assert_eq!(estimate_tokens("Привет"), 3);
        assert_eq!(estimate_tokens(""), 0);
    }

    #[test]
    fn urls_and_file_names() {
        for u in [
            "http://x.org/a.jpg",
            "https://www.example.com/",
            "www.example.com/page",
            "HTTPS://A.B/c?d=1",
        ] {
            assert!(is_url(u), "{u}");
        }
        for not in ["see http://x.org for more", "a cat", "http", "www"] {
            assert!(!is_url(not), "{not}");
        }
        for f in [
            "IMG_1234.JPG",
            "IMG_1234",
            "DSC01234",
            "dsc_0042.jpg",
            "20190614_153012",
            "photo.png",
            "PXL_20230101_123456789",
        ] {
            assert!(is_file_name(f), "{f}");
        }
        for not in [
            "A380",
            "cat",
            "2019",
            "IMG",
            "a cat.",
            "写真.",
            "Boeing 747",
            "my cat.jpg",
        ] {
            assert!(!is_file_name(not), "{not}");
        }
    }

    #[test]
    fn boilerplate_matches_whole_captions_in_any_case() {
        let b = Boilerplate::new(DEFAULT_BOILERPLATE.iter().copied());
        for yes in [
            "Photo.",
            "  IMAGE ",
            "No description available",
            "照片。",
            "画像",
        ] {
            assert!(b.matches(yes), "{yes}");
        }
        for no in ["A photo of a cat.", "写真を撮る猫", "image of a dog"] {
            assert!(!b.matches(no), "{no}");
        }
    }

    #[test]
    fn roles_must_alternate_and_end_on_an_answer() {
        assert!(check_roles(["user", "assistant"].into_iter()).is_ok());
        assert!(
            check_roles(["system", "user", "assistant", "user", "assistant"].into_iter()).is_ok()
        );
        assert!(check_roles(["user"].into_iter())
            .unwrap_err()
            .contains("ends on a user"));
        assert!(check_roles(["user", "user", "assistant"].into_iter()).is_err());
        assert!(check_roles(["assistant", "user"].into_iter()).is_err());
        assert!(check_roles(["user", "system", "assistant"].into_iter()).is_err());
        assert!(check_roles(["system"].into_iter()).is_err());
    }
}

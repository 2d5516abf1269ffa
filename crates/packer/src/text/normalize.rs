//! String normalisations, each a pure function returning `None` when the text is unchanged
//! (the common case, which costs one scan and no allocation).
//!
//! Order (see [`super::Cleaner::normalise`]): mojibake → HTML (captions) → controls → NFC →
//! whitespace. Mojibake runs first because its signature includes C1 controls that the
//! control pass would delete; HTML entities may decode to controls or to decomposed text, so
//! they run before those passes.

use unicode_normalization_alignments::{is_nfc_quick, IsNormalized, UnicodeNormalization};

/// Characters removed by the `controls` pass besides C0/C1 controls: zero-width and
/// invisible formatting characters and bidi marks/embeddings/isolates. ZWJ (U+200D) and ZWNJ
/// (U+200C) are kept: they carry meaning in emoji sequences and in Persian/Indic scripts.
fn is_invisible(c: char) -> bool {
    matches!(c,
        '\u{00AD}' // soft hyphen
        | '\u{061C}' // Arabic letter mark
        | '\u{180E}' // Mongolian vowel separator
        | '\u{200B}' // zero-width space
        | '\u{200E}' | '\u{200F}' // LRM, RLM
        | '\u{202A}'..='\u{202E}' // bidi embeddings and overrides
        | '\u{2060}'..='\u{2064}' // word joiner, invisible operators
        | '\u{2066}'..='\u{2069}' // bidi isolates
        | '\u{FEFF}' // BOM / zero-width no-break space
        | '\u{FFF9}'..='\u{FFFC}' // interlinear annotations, object replacement
    )
}

/// Removed: C0 controls except tab, newline and carriage return (whitespace handles them),
/// DEL, C1 controls, and [`is_invisible`].
fn is_removed_control(c: char) -> bool {
    (c.is_control() && !matches!(c, '\t' | '\n' | '\r')) || is_invisible(c)
}

pub fn controls(s: &str) -> Option<String> {
    // Fast path: printable ASCII (plus \t \n \r) has nothing to remove.
    let clean_ascii = s
        .bytes()
        .all(|b| (0x20..0x7f).contains(&b) || matches!(b, b'\t' | b'\n' | b'\r'));
    if clean_ascii || !s.chars().any(is_removed_control) {
        return None;
    }
    Some(s.chars().filter(|&c| !is_removed_control(c)).collect())
}

pub fn nfc(s: &str) -> Option<String> {
    if s.is_ascii() || is_nfc_quick(s.chars()) == IsNormalized::Yes {
        return None;
    }
    let out: String = s.nfc().map(|(c, _)| c).collect();
    (out != s).then_some(out)
}

/// Whitespace other than ASCII space, tab and newline that becomes a plain space; U+3000
/// (ideographic space) is handled by the callers, since a single one is kept in CJK text.
fn is_odd_space(c: char) -> bool {
    c.is_whitespace() && !matches!(c, ' ' | '\t' | '\n' | '\r' | '\u{3000}')
}

/// Captions: every run of whitespace becomes one space, trimmed at both ends. A lone
/// ideographic space (U+3000) is kept: in Japanese and Chinese text it is punctuation-like
/// spacing, not dirt.
pub fn whitespace_caption(s: &str) -> Option<String> {
    if s.is_ascii() && !ascii_caption_needs_fix(s.as_bytes()) {
        return None;
    }
    let mut out = String::with_capacity(s.len());
    let mut run: Option<(usize, char)> = None; // (length, first char) of the pending run
    for c in s.chars() {
        if c.is_whitespace() {
            run = Some(match run {
                Some((n, first)) => (n + 1, first),
                None => (1, c),
            });
            continue;
        }
        if let Some((n, first)) = run.take() {
            if !out.is_empty() {
                out.push(if n == 1 && first == '\u{3000}' {
                    first
                } else {
                    ' '
                });
            }
        }
        out.push(c);
    }
    (out != s).then_some(out)
}

/// Would [`whitespace_caption`] change this ASCII text? (Saves building a copy of every
/// caption that is already clean, the common case.)
fn ascii_caption_needs_fix(b: &[u8]) -> bool {
    let space = |c: u8| c.is_ascii_whitespace() || c == 0x0b;
    match (b.first(), b.last()) {
        (Some(&f), Some(&l)) if space(f) || space(l) => return true,
        _ => {}
    }
    b.windows(2)
        .any(|w| space(w[0]) && (w[0] != b' ' || space(w[1])))
}

/// Conversation turns: newlines carry structure (lists, code, paragraphs) and indentation is
/// kept. `\r\n`/`\r` and U+2028/U+2029 become `\n`, other odd spaces a plain space; trailing
/// spaces and tabs of each line go; three or more newlines become a blank line; leading blank
/// lines and trailing whitespace of the turn go, and so does leading whitespace of a one-line
/// turn (indentation only means something with lines below it).
pub fn whitespace_turn(s: &str) -> Option<String> {
    let simple = !s.bytes().any(|b| b == b'\r' || b >= 0x80);
    if simple && !needs_turn_fix(s) {
        return None;
    }
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\r' => {
                if chars.peek() == Some(&'\n') {
                    chars.next();
                }
                push_newline(&mut out);
            }
            '\n' | '\u{2028}' | '\u{2029}' => push_newline(&mut out),
            c if is_odd_space(c) => out.push(' '),
            c => out.push(c),
        }
    }
    // Trailing whitespace of the turn, then leading blank lines.
    let end = out.trim_end().len();
    out.truncate(end);
    let lead = if out.contains('\n') {
        leading_blank_lines(&out)
    } else {
        out.len() - out.trim_start().len()
    };
    if lead > 0 {
        out.drain(..lead);
    }
    (out != s).then_some(out)
}

/// Newline handling: trailing spaces/tabs of the finished line are dropped; at most one blank
/// line in a row.
fn push_newline(out: &mut String) {
    let trimmed = out.trim_end_matches([' ', '\t', '\u{3000}']).len();
    out.truncate(trimmed);
    if !out.ends_with("\n\n") {
        out.push('\n');
    }
}

/// Bytes of whitespace-only lines at the start (the line holding the first text stays whole,
/// so its indentation survives).
fn leading_blank_lines(s: &str) -> usize {
    let first_text = s.len() - s.trim_start().len();
    s[..first_text].rfind('\n').map_or(0, |i| i + 1)
}

/// Would [`whitespace_turn`] change an ASCII turn without `\r`?
fn needs_turn_fix(s: &str) -> bool {
    if s.ends_with(char::is_whitespace) || s.contains("\n\n\n") || leading_blank_lines(s) > 0 {
        return true;
    }
    if !s.contains('\n') && s.starts_with(char::is_whitespace) {
        return true;
    }
    s.contains(" \n") || s.contains("\t\n")
}

// ---------------------------------------------------------------------------------------
// Mojibake

/// Windows-1252 characters at bytes 0x80..=0x9F (`None`: byte undefined in cp1252; decoders
/// then fall back to Latin-1, giving the C1 control of the same value).
const CP1252_HIGH: [Option<char>; 32] = [
    Some('€'),
    None,
    Some('‚'),
    Some('ƒ'),
    Some('„'),
    Some('…'),
    Some('†'),
    Some('‡'),
    Some('ˆ'),
    Some('‰'),
    Some('Š'),
    Some('‹'),
    Some('Œ'),
    None,
    Some('Ž'),
    None,
    None,
    Some('‘'),
    Some('’'),
    Some('“'),
    Some('”'),
    Some('•'),
    Some('–'),
    Some('—'),
    Some('˜'),
    Some('™'),
    Some('š'),
    Some('›'),
    Some('œ'),
    None,
    Some('ž'),
    Some('Ÿ'),
];

/// The byte a cp1252 (or, for its holes, Latin-1) decoder turned into `c`.
fn cp1252_byte(c: char) -> Option<u8> {
    let u = c as u32;
    if u < 0x80 || (0xA0..0x100).contains(&u) {
        return Some(u as u8);
    }
    if (0x80..0xA0).contains(&u) {
        // A C1 control: only where cp1252 has a hole, as Latin-1 fallbacks produce.
        return CP1252_HIGH[(u - 0x80) as usize]
            .is_none()
            .then_some(u as u8);
    }
    CP1252_HIGH
        .iter()
        .position(|&h| h == Some(c))
        .map(|i| 0x80 + i as u8)
}

/// UTF-8 that was decoded as cp1252/Latin-1 (`cafÃ©`, `donâ€™t`) is fixed only when it is
/// unambiguous: every character of the text maps back to a cp1252 byte, those bytes are valid
/// UTF-8, and they hold at least one multi-byte sequence. Legitimate Latin-1 text (`café`)
/// fails the UTF-8 check, and any text mixing in characters outside cp1252 (real CJK, emoji) is
/// left alone, since it cannot have been decoded that way as a whole. Applied at most twice
/// (double-encoded text).
pub fn mojibake(s: &str) -> Option<String> {
    let mut cur: Option<String> = None;
    for _ in 0..2 {
        let text = cur.as_deref().unwrap_or(s);
        // Every mangled multi-byte sequence starts with a lead byte 0xC2..=0xF4, shown as
        // Â..ô; without one there is nothing to fix.
        if text.is_ascii() || !text.chars().any(|c| ('\u{C2}'..='\u{F4}').contains(&c)) {
            break;
        }
        let mut bytes = Vec::with_capacity(text.len());
        for c in text.chars() {
            match cp1252_byte(c) {
                Some(b) => bytes.push(b),
                None => return cur,
            }
        }
        match String::from_utf8(bytes) {
            Ok(fixed)
                if !fixed.is_ascii() && !fixed.chars().any(|c| c.is_control() && c > '\u{7f}') =>
            {
                cur = Some(fixed)
            }
            _ => break,
        }
    }
    cur
}

// ---------------------------------------------------------------------------------------
// HTML (captions only)

/// HTML element names whose tags are stripped from captions. A fixed list, so `<image>`
/// placeholders and text such as `x <y and z> w` survive.
const HTML_TAGS: &[&str] = &[
    "a",
    "abbr",
    "article",
    "aside",
    "b",
    "big",
    "blockquote",
    "body",
    "br",
    "caption",
    "center",
    "cite",
    "code",
    "dd",
    "del",
    "div",
    "dl",
    "dt",
    "em",
    "figcaption",
    "figure",
    "font",
    "footer",
    "h1",
    "h2",
    "h3",
    "h4",
    "h5",
    "h6",
    "head",
    "header",
    "hr",
    "html",
    "i",
    "img",
    "ins",
    "kbd",
    "label",
    "li",
    "link",
    "main",
    "mark",
    "meta",
    "nav",
    "nobr",
    "ol",
    "p",
    "picture",
    "pre",
    "q",
    "s",
    "section",
    "small",
    "source",
    "span",
    "strike",
    "strong",
    "sub",
    "sup",
    "table",
    "tbody",
    "td",
    "tfoot",
    "th",
    "thead",
    "time",
    "title",
    "tr",
    "tt",
    "u",
    "ul",
    "wbr",
];

/// Named entities decoded besides numeric ones: the Latin-1 set (U+00A0..=U+00FF, in order)
/// and the common typographic ones.
const LATIN1_ENTITIES: [&str; 96] = [
    "nbsp", "iexcl", "cent", "pound", "curren", "yen", "brvbar", "sect", "uml", "copy", "ordf",
    "laquo", "not", "shy", "reg", "macr", "deg", "plusmn", "sup2", "sup3", "acute", "micro",
    "para", "middot", "cedil", "sup1", "ordm", "raquo", "frac14", "frac12", "frac34", "iquest",
    "Agrave", "Aacute", "Acirc", "Atilde", "Auml", "Aring", "AElig", "Ccedil", "Egrave", "Eacute",
    "Ecirc", "Euml", "Igrave", "Iacute", "Icirc", "Iuml", "ETH", "Ntilde", "Ograve", "Oacute",
    "Ocirc", "Otilde", "Ouml", "times", "Oslash", "Ugrave", "Uacute", "Ucirc", "Uuml", "Yacute",
    "THORN", "szlig", "agrave", "aacute", "acirc", "atilde", "auml", "aring", "aelig", "ccedil",
    "egrave", "eacute", "ecirc", "euml", "igrave", "iacute", "icirc", "iuml", "eth", "ntilde",
    "ograve", "oacute", "ocirc", "otilde", "ouml", "divide", "oslash", "ugrave", "uacute", "ucirc",
    "uuml", "yacute", "thorn", "yuml",
];

const OTHER_ENTITIES: &[(&str, char)] = &[
    ("amp", '&'),
    ("lt", '<'),
    ("gt", '>'),
    ("quot", '"'),
    ("apos", '\''),
    ("ndash", '–'),
    ("mdash", '—'),
    ("hellip", '…'),
    ("lsquo", '‘'),
    ("rsquo", '’'),
    ("sbquo", '‚'),
    ("ldquo", '“'),
    ("rdquo", '”'),
    ("bdquo", '„'),
    ("bull", '•'),
    ("trade", '™'),
    ("euro", '€'),
    ("dagger", '†'),
    ("Dagger", '‡'),
    ("permil", '‰'),
    ("lsaquo", '‹'),
    ("rsaquo", '›'),
    ("ensp", '\u{2002}'),
    ("emsp", '\u{2003}'),
    ("thinsp", '\u{2009}'),
    ("zwnj", '\u{200C}'),
    ("zwj", '\u{200D}'),
    ("OElig", 'Œ'),
    ("oelig", 'œ'),
    ("Scaron", 'Š'),
    ("scaron", 'š'),
    ("Yuml", 'Ÿ'),
    ("fnof", 'ƒ'),
    ("circ", 'ˆ'),
    ("tilde", '˜'),
    ("larr", '←'),
    ("rarr", '→'),
    ("uarr", '↑'),
    ("darr", '↓'),
    ("hearts", '♥'),
    ("star", '☆'),
    ("prime", '′'),
    ("Prime", '″'),
    ("minus", '−'),
];

fn named_entity(name: &str) -> Option<char> {
    if let Some(i) = LATIN1_ENTITIES.iter().position(|&n| n == name) {
        return char::from_u32(0xA0 + i as u32);
    }
    OTHER_ENTITIES
        .iter()
        .find(|(n, _)| *n == name)
        .map(|&(_, c)| c)
}

/// `&name;`, `&#123;` or `&#x1F600;` at the start of `s`: (decoded char, bytes consumed).
fn entity_at(s: &str) -> Option<(char, usize)> {
    let end = s.as_bytes().iter().take(12).position(|&b| b == b';')?;
    let body = &s[1..end];
    let c = if let Some(num) = body.strip_prefix('#') {
        let v = match num.strip_prefix(['x', 'X']) {
            Some(hex) => u32::from_str_radix(hex, 16).ok()?,
            None => num.parse().ok()?,
        };
        char::from_u32(v).filter(|&c| c != '\0')?
    } else {
        named_entity(body)?
    };
    Some((c, end + 1))
}

/// `<tag …>`, `</tag>` or `<tag/>` of a known element at the start of `s`, or an HTML comment:
/// bytes consumed.
fn tag_at(s: &str) -> Option<usize> {
    if let Some(rest) = s.strip_prefix("<!--") {
        return rest.find("-->").map(|i| 4 + i + 3);
    }
    let close = s[1..].find(['<', '>'])? + 1;
    if s.as_bytes()[close] != b'>' {
        return None;
    }
    let inner = s[1..close].trim_start_matches('/');
    let name_len = inner
        .find(|c: char| !c.is_ascii_alphanumeric())
        .unwrap_or(inner.len());
    let name = inner[..name_len].to_ascii_lowercase();
    let after = &inner[name_len..];
    let ok_after = after.is_empty() || after.starts_with([' ', '/', '\t', '\n']);
    (ok_after && HTML_TAGS.contains(&name.as_str())).then_some(close + 1)
}

/// Strip tags of known HTML elements (each becomes a space, so `a<br>b` stays two words) and
/// decode character references once (`&amp;lt;` → `&lt;`).
pub fn html(s: &str) -> Option<String> {
    if !s.bytes().any(|b| b == b'<' || b == b'&') {
        return None;
    }
    let mut out = String::with_capacity(s.len());
    let mut i = 0;
    let mut changed = false;
    while let Some(off) = s[i..].find(['<', '&']) {
        let at = i + off;
        out.push_str(&s[i..at]);
        let rest = &s[at..];
        if rest.starts_with('<') {
            if let Some(n) = tag_at(rest) {
                out.push(' ');
                i = at + n;
                changed = true;
                continue;
            }
        } else if let Some((c, n)) = entity_at(rest) {
            out.push(c);
            i = at + n;
            changed = true;
            continue;
        }
        out.push_str(&rest[..1]);
        i = at + 1;
    }
    out.push_str(&s[i..]);
    changed.then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mojibake_is_fixed_only_when_unambiguous() {
        assert_eq!(mojibake("cafÃ© au lait").as_deref(), Some("café au lait"));
        assert_eq!(mojibake("donâ€™t stop").as_deref(), Some("don’t stop"));
        // "”" is E2 80 9D; 0x9D is a hole in cp1252, so decoders produced U+009D.
        assert_eq!(mojibake("â€œhiâ€\u{9d}").as_deref(), Some("“hi”"));
        assert_eq!(mojibake("æ—¥æœ¬èªž").as_deref(), Some("日本語"));
        // Double-encoded.
        assert_eq!(mojibake("cafÃƒÂ©").as_deref(), Some("café"));
        for ok in [
            "café",
            "naïve façade",
            "Ünïcödé",
            "日本語のテキスト",
            "plain",
            "Â",
            "cafÃ© 中文",
        ] {
            assert_eq!(mojibake(ok), None, "{ok}");
        }
    }

    #[test]
    fn controls_and_invisible_marks_go_but_zwj_stays() {
        assert_eq!(
            controls("a\u{200B}b\u{FEFF}c\u{7}d").as_deref(),
            Some("abcd")
        );
        assert_eq!(
            controls("\u{202E}abc\u{202C}\u{200F}").as_deref(),
            Some("abc")
        );
        assert_eq!(controls("a\u{85}b").as_deref(), Some("ab"));
        assert_eq!(controls("👨\u{200D}👩"), None);
        assert_eq!(controls("line\nnext\ttab"), None);
        assert_eq!(controls("猫が座っている。"), None);
    }

    #[test]
    fn nfc_composes() {
        assert_eq!(nfc("cafe\u{301}").as_deref(), Some("café"));
        assert_eq!(nfc("café"), None);
        // Hangul jamo compose to syllables.
        assert_eq!(nfc("\u{1100}\u{1161}").as_deref(), Some("가"));
        assert_eq!(nfc("一只猫。"), None);
    }

    #[test]
    fn caption_whitespace_collapses_but_keeps_a_lone_ideographic_space() {
        assert_eq!(
            whitespace_caption("  a \t cat\n\nsits\u{A0} ").as_deref(),
            Some("a cat sits")
        );
        assert_eq!(whitespace_caption("写真　富士山"), None);
        assert_eq!(whitespace_caption("a cat"), None);
        assert_eq!(whitespace_caption("a\tcat").as_deref(), Some("a cat"));
        assert_eq!(whitespace_caption("a\x0bcat").as_deref(), Some("a cat"));
        assert_eq!(whitespace_caption("a  cat").as_deref(), Some("a cat"));
        assert_eq!(whitespace_caption("a cat\n").as_deref(), Some("a cat"));
        assert_eq!(
            whitespace_caption("a\u{3000}\u{3000}b").as_deref(),
            Some("a b")
        );
    }

    #[test]
    fn turn_whitespace_keeps_structure() {
        let code = "<image>\nWrite code:\n```\ndef f():\n    return 1\n```";
        assert_eq!(whitespace_turn(code), None);
        assert_eq!(
            whitespace_turn("\n\n  a  \r\nb\t\n\n\n\nc \n").as_deref(),
            Some("  a\nb\n\nc")
        );
        assert_eq!(
            whitespace_turn("x\u{A0}y\u{2028}z").as_deref(),
            Some("x y\nz")
        );
        assert_eq!(whitespace_turn("一、概要\n二、詳細"), None);
        assert_eq!(whitespace_turn("  one line").as_deref(), Some("one line"));
    }

    #[test]
    fn html_strips_known_tags_and_decodes_entities_once() {
        assert_eq!(
            html("<p>A <b>cat</b> &amp; a dog</p>").as_deref(),
            Some(" A  cat  & a dog ")
        );
        assert_eq!(
            html("caf&eacute; &#169; &#x1F600; &amp;lt;").as_deref(),
            Some("café © 😀 &lt;")
        );
        assert_eq!(html("<!-- x -->hi").as_deref(), Some(" hi"));
        for keep in [
            "<image>\nA cat",
            "x <y and z> w",
            "AT&T",
            "a < b",
            "&bogus;",
            "&#0;",
        ] {
            assert_eq!(html(keep), None, "{keep}");
        }
        assert_eq!(html("a<br/>b").as_deref(), Some("a b"));
        assert_eq!(
            html("<img src=\"x.jpg\" alt=\"y\">cat").as_deref(),
            Some(" cat")
        );
    }
}

//! `--exclude drop.txt`: sample keys to leave out, with the reason each is left out.
//!
//! Format (what `llava-pack dedup` writes): one key per line, optionally followed by a tab and
//! the reason (`near-duplicate of KEY`, `contaminates BENCHMARK row N`). Blank lines and lines
//! starting with `#` are ignored, so a hand-written list of keys works too.

use std::collections::HashMap;
use std::path::Path;

use crate::error::{PackError, Result};

/// Key → reason (`excluded` when the line gives none).
pub fn read_exclude(path: &Path) -> Result<HashMap<String, String>> {
    let raw = std::fs::read(path).map_err(|e| PackError::input(path, format!("--exclude: {e}")))?;
    let text =
        String::from_utf8(raw).map_err(|_| PackError::input(path, "--exclude: not UTF-8 text"))?;
    let mut out = HashMap::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim_end_matches('\r');
        if line.trim().is_empty() || line.starts_with('#') {
            continue;
        }
        let (key, reason) = line.split_once('\t').unwrap_or((line, ""));
        let key = key.trim();
        if !key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'+')
        {
            return Err(PackError::input(
                path,
                format!("--exclude line {}: {key:?} is not a sample key", n + 1),
            ));
        }
        let reason = reason.trim();
        let reason = if reason.is_empty() {
            "excluded"
        } else {
            reason
        };
        out.insert(key.to_string(), reason.to_string());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_reasons_comments_and_bad_lines() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("drop.txt");
        std::fs::write(
            &p,
            "# header\na\tnear-duplicate of b\n\nc\r\nd+1\tcontaminates mme row 3\n",
        )
        .unwrap();
        let m = read_exclude(&p).unwrap();
        assert_eq!(m["a"], "near-duplicate of b");
        assert_eq!(m["c"], "excluded");
        assert_eq!(m["d+1"], "contaminates mme row 3");
        assert_eq!(m.len(), 3);
        std::fs::write(&p, "ok\nbad key\n").unwrap();
        let e = read_exclude(&p).unwrap_err().to_string();
        assert!(e.contains("line 2") && e.contains("bad key"), "{e}");
        assert!(read_exclude(&t.path().join("missing.txt")).is_err());
    }
}

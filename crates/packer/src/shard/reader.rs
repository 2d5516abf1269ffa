//! Reading shards back: `.tar.idx` offsets and samples grouped by key (for tests and loaders).

use std::fs::File;
use std::io::{self, BufReader, Read};
use std::path::Path;

/// One sample read back: its key and its members as `(suffix, bytes)` in tar order.
pub type Sample = (String, Vec<(String, Vec<u8>)>);

fn invalid_data(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

/// Read a `.tar.idx`: raw little-endian u64 byte offsets (each sample's first header, then
/// the end of the last sample).
pub fn read_index(path: impl AsRef<Path>) -> io::Result<Vec<u64>> {
    let path = path.as_ref();
    let raw = std::fs::read(path)?;
    if raw.len() % 8 != 0 {
        return Err(invalid_data(format!(
            "{}: size {} is not a multiple of 8",
            path.display(),
            raw.len()
        )));
    }
    Ok(raw
        .chunks_exact(8)
        .map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes")))
        .collect())
}

/// Split a member name the webdataset way: the key is everything up to the first `.` of the
/// basename (a directory part stays in the key), the suffix is the rest. `None` when the
/// basename has no `.` or nothing before it.
/// A numeric tar header field: octal text, or GNU base-256 (high bit set) for huge values.
pub(crate) fn header_number(field: &[u8]) -> Option<u64> {
    if field.first()? & 0x80 != 0 {
        return Some(field[1..].iter().fold(0u64, |a, &b| (a << 8) | b as u64));
    }
    let s = std::str::from_utf8(field).ok()?;
    let s = s.trim_matches(|c: char| c == '\0' || c == ' ');
    if s.is_empty() {
        return Some(0);
    }
    u64::from_str_radix(s, 8).ok()
}

/// A NUL-terminated tar header string field.
pub(crate) fn header_str(field: &[u8]) -> &[u8] {
    let end = field.iter().position(|&b| b == 0).unwrap_or(field.len());
    &field[..end]
}

pub(crate) fn split_member_name(name: &str) -> Option<(&str, &str)> {
    let base_start = name.rfind('/').map_or(0, |i| i + 1);
    let dot = base_start + name[base_start..].find('.')?;
    if dot == base_start {
        return None;
    }
    Some((&name[..dot], &name[dot + 1..]))
}

/// Reject member names that could escape an extraction directory.
pub(crate) fn check_safe_name(name: &str) -> io::Result<()> {
    if name.starts_with('/') || name.starts_with('\\') {
        return Err(invalid_data(format!("absolute member name {name:?}")));
    }
    if name.split(['/', '\\']).any(|c| c == "..") {
        return Err(invalid_data(format!("member name {name:?} contains '..'")));
    }
    Ok(())
}

/// Read all samples of a tar shard, grouping adjacent members by key (webdataset rule).
///
/// Non-regular members (directories, links) and names without a `.` in their basename are
/// skipped, as webdataset does. Absolute names or names with a `..` component are an error.
pub fn read_samples(tar_path: impl AsRef<Path>) -> io::Result<Vec<Sample>> {
    let file = File::open(tar_path.as_ref())?;
    let mut archive = tar::Archive::new(BufReader::with_capacity(1 << 20, file));
    let mut out: Vec<Sample> = Vec::new();
    for entry in archive.entries()? {
        let mut entry = entry?;
        let name = String::from_utf8(entry.path_bytes().into_owned())
            .map_err(|e| invalid_data(format!("member name is not UTF-8: {e}")))?;
        check_safe_name(&name)?;
        let kind = entry.header().entry_type();
        if !(kind.is_file() || kind == tar::EntryType::Continuous) {
            continue;
        }
        let Some((key, suffix)) = split_member_name(&name) else {
            continue;
        };
        let mut data = Vec::with_capacity(entry.size() as usize);
        entry.read_to_end(&mut data)?;
        match out.last_mut() {
            Some((last, members)) if last == key => members.push((suffix.to_string(), data)),
            _ => out.push((key.to_string(), vec![(suffix.to_string(), data)])),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_names() {
        assert_eq!(split_member_name("a.jpg"), Some(("a", "jpg")));
        assert_eq!(split_member_name("a.img0.jpg"), Some(("a", "img0.jpg")));
        assert_eq!(split_member_name("d.x/a.b.c"), Some(("d.x/a", "b.c")));
        assert_eq!(split_member_name("noext"), None);
        assert_eq!(split_member_name(".hidden"), None);
        assert_eq!(split_member_name("a."), Some(("a", "")));
    }

    #[test]
    fn safe_names() {
        assert!(check_safe_name("a.jpg").is_ok());
        assert!(check_safe_name("x/a..b.jpg").is_ok());
        assert!(check_safe_name("/etc/passwd.x").is_err());
        assert!(check_safe_name("../a.jpg").is_err());
        assert!(check_safe_name("x/../a.jpg").is_err());
    }
}

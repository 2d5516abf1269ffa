//! Deterministic ustar framing: header construction, padding and a counting writer.

use std::io::{self, Write};

/// Tar block size.
pub(crate) const BLOCK: u64 = 512;

/// Longest member name we write (the ustar `name` field; the `prefix` field is never used).
pub(crate) const MAX_NAME_LEN: usize = 100;

/// Fixed header values (documented in `docs/format.md`).
pub(crate) const MTIME: u64 = 0;
pub(crate) const MODE: u32 = 0o644;

const ZEROS: [u8; BLOCK as usize] = [0; BLOCK as usize];

fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, msg)
}

/// Check a sample key: non-empty, and no `.`, `/`, `\` or NUL, so that the webdataset
/// key/extension split at the first `.` of the basename recovers it.
pub(crate) fn check_key(key: &str) -> io::Result<()> {
    if key.is_empty() {
        return Err(invalid("empty sample key".into()));
    }
    if key.bytes().any(|b| matches!(b, b'.' | b'/' | b'\\' | 0)) {
        return Err(invalid(format!(
            "sample key {key:?} must not contain '.', '/', '\\' or NUL"
        )));
    }
    Ok(())
}

/// Check a member suffix (`jpg`, `img0.png`, …): non-empty, no `/`, `\` or NUL.
pub(crate) fn check_suffix(suffix: &str) -> io::Result<()> {
    if suffix.is_empty() {
        return Err(invalid("empty member suffix".into()));
    }
    if suffix.bytes().any(|b| matches!(b, b'/' | b'\\' | 0)) {
        return Err(invalid(format!(
            "member suffix {suffix:?} must not contain '/', '\\' or NUL"
        )));
    }
    Ok(())
}

/// Build the 512-byte ustar header of a regular file `name` of `size` bytes.
///
/// Every field is fixed except name, size and checksum: mode 0644, uid/gid 0, mtime 0, empty
/// uname/gname/linkname/prefix, devmajor/devminor 0, magic `ustar\0`, version `00`.
pub(crate) fn member_header(name: &str, size: u64) -> io::Result<tar::Header> {
    let bytes = name.as_bytes();
    if bytes.len() > MAX_NAME_LEN {
        return Err(invalid(format!(
            "tar member name {name:?} is {} bytes; at most {MAX_NAME_LEN} are allowed",
            bytes.len()
        )));
    }
    let mut header = tar::Header::new_ustar();
    {
        let ustar = header
            .as_ustar_mut()
            .expect("new_ustar gives a ustar header");
        ustar.name[..bytes.len()].copy_from_slice(bytes);
    }
    header.set_mode(MODE);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(MTIME);
    header.set_size(size);
    header.set_entry_type(tar::EntryType::Regular);
    header.set_device_major(0)?;
    header.set_device_minor(0)?;
    header.set_cksum();
    Ok(header)
}

/// Padding after `size` bytes of member data up to the next block boundary.
pub(crate) fn padding(size: u64) -> usize {
    ((BLOCK - size % BLOCK) % BLOCK) as usize
}

/// A writer that counts every byte it passes on (the shard's SHA-256 is taken by
/// `HashBehind`, off this thread).
pub(crate) struct CountingWriter<W: Write> {
    inner: W,
    written: u64,
}

impl<W: Write> CountingWriter<W> {
    pub(crate) fn new(inner: W) -> Self {
        CountingWriter { inner, written: 0 }
    }

    pub(crate) fn written(&self) -> u64 {
        self.written
    }

    pub(crate) fn get_ref(&self) -> &W {
        &self.inner
    }

    /// Write one member: header, data, zero padding.
    pub(crate) fn write_member(&mut self, name: &str, data: &[u8]) -> io::Result<()> {
        let header = member_header(name, data.len() as u64)?;
        self.write_all(header.as_bytes())?;
        self.write_all(data)?;
        self.write_all(&ZEROS[..padding(data.len() as u64)])
    }

    /// Write the end-of-archive marker (two zero blocks).
    pub(crate) fn write_end(&mut self) -> io::Result<()> {
        self.write_all(&ZEROS)?;
        self.write_all(&ZEROS)
    }

    pub(crate) fn into_inner(self) -> W {
        self.inner
    }
}

impl<W: Write> Write for CountingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_fields_are_fixed() {
        let h = member_header("abc.jpg", 1234).unwrap();
        let b = h.as_bytes();
        assert_eq!(&b[0..7], b"abc.jpg");
        assert!(b[7..100].iter().all(|&x| x == 0));
        assert_eq!(&b[100..108], b"0000644\0");
        assert_eq!(&b[108..116], b"0000000\0");
        assert_eq!(&b[116..124], b"0000000\0");
        assert_eq!(&b[124..136], b"00000002322\0");
        assert_eq!(&b[136..148], b"00000000000\0");
        assert_eq!(b[156], b'0');
        assert_eq!(&b[257..263], b"ustar\0");
        assert_eq!(&b[263..265], b"00");
        assert!(b[265..329].iter().all(|&x| x == 0), "uname/gname empty");
        assert_eq!(&b[329..337], b"0000000\0");
        assert_eq!(&b[337..345], b"0000000\0");
        assert!(b[345..].iter().all(|&x| x == 0));
        // checksum: sum of bytes with the checksum field as spaces
        let sum: u32 = b[..148]
            .iter()
            .chain([b' '; 8].iter())
            .chain(&b[156..])
            .map(|&x| x as u32)
            .sum();
        let field = std::str::from_utf8(&b[148..155]).unwrap();
        assert_eq!(u32::from_str_radix(field, 8).unwrap(), sum);
        assert_eq!(h.entry_size().unwrap(), 1234);
    }

    #[test]
    fn name_limits() {
        assert!(member_header(&"a".repeat(100), 0).is_ok());
        let e = member_header(&"a".repeat(101), 0).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
    }

    #[test]
    fn padding_values() {
        assert_eq!(padding(0), 0);
        assert_eq!(padding(1), 511);
        assert_eq!(padding(512), 0);
        assert_eq!(padding(513), 511);
    }
}

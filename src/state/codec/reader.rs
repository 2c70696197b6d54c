//! Reading a snapshot front to back, and the primitives both directions share.

use std::io::Read;

use xxhash_rust::xxh3::Xxh3;

use super::{CodecError, CHECKSUM_LEN, END_MAGIC, FORMAT_VERSION, HEADER_LEN, MAGIC, TRAILER_LEN};

pub(super) fn put_str(out: &mut Vec<u8>, s: &str) {
    let bytes = &s.as_bytes()[..s.len().min(usize::from(u16::MAX))];
    out.extend_from_slice(&(bytes.len() as u16).to_le_bytes());
    out.extend_from_slice(bytes);
}

pub(super) fn truncated(expected: u64, actual: u64) -> CodecError {
    CodecError::Truncated { expected, actual }
}

pub(super) fn malformed(what: String) -> CodecError {
    CodecError::Malformed(what)
}

/// Reads a snapshot front to back through a bounded buffer, hashing every byte before the
/// checksum as it arrives; running out of bytes is an error, never a panic.
pub(super) struct Reader<R> {
    input: R,
    /// `buffer[start..end]` is read but not yet taken.
    buffer: Box<[u8]>,
    start: usize,
    end: usize,
    /// Bytes of the body not yet read from the input.
    unread: u64,
    hasher: Xxh3,
    len: u64,
    /// The format version, once the header is read.
    version: u32,
}

/// Bytes read from the input at a time; more than any one field (at most 64 KiB).
const READ_BUFFER: usize = 1 << 20;

impl<R: Read> Reader<R> {
    pub(super) fn new(input: R, len: u64) -> Self {
        Self {
            input,
            buffer: vec![0; READ_BUFFER].into_boxed_slice(),
            start: 0,
            end: 0,
            unread: 0,
            hasher: Xxh3::new(),
            len,
            version: 0,
        }
    }

    /// Reads and checks magic, version and length; returns the version.
    pub(super) fn header(&mut self) -> Result<u32, CodecError> {
        if self.len < HEADER_LEN as u64 {
            return Err(truncated(HEADER_LEN as u64, self.len));
        }
        self.unread = HEADER_LEN as u64;
        if self.take(8)? != MAGIC {
            return Err(CodecError::Magic);
        }
        let version = self.u32()?;
        if !(1..=FORMAT_VERSION).contains(&version) {
            return Err(CodecError::Version(version));
        }
        let body_len = self.u64()?;
        self.unread = if version >= 4 {
            // The body is whatever lies between header and trailer; the trailer says how
            // long it should be (checked in `verify`).
            self.len
                .checked_sub((HEADER_LEN + TRAILER_LEN) as u64)
                .ok_or_else(|| truncated((HEADER_LEN + TRAILER_LEN) as u64, self.len))?
        } else {
            let expected = (HEADER_LEN as u64)
                .saturating_add(body_len)
                .saturating_add(CHECKSUM_LEN as u64);
            if self.len != expected {
                return Err(truncated(expected, self.len));
            }
            body_len
        };
        self.version = version;
        Ok(version)
    }

    /// Body bytes not yet taken.
    pub(super) fn remaining(&self) -> u64 {
        (self.end - self.start) as u64 + self.unread
    }

    #[inline]
    pub(super) fn take(&mut self, n: usize) -> Result<&[u8], CodecError> {
        if self.end - self.start < n {
            self.fill(n)?;
        }
        let taken = &self.buffer[self.start..self.start + n];
        self.start += n;
        Ok(taken)
    }

    /// Reads until at least `n` bytes are buffered, keeping those not yet taken. Once per
    /// megabyte: kept out of line so that [`Self::take`] inlines.
    #[cold]
    #[inline(never)]
    pub(super) fn fill(&mut self, n: usize) -> Result<(), CodecError> {
        let kept = self.end - self.start;
        if (n - kept) as u64 > self.unread {
            return Err(malformed(format!(
                "{n} bytes needed, {} left",
                self.remaining()
            )));
        }
        self.buffer.copy_within(self.start..self.end, 0);
        let end = (kept as u64 + self.unread).min(self.buffer.len() as u64) as usize;
        read_fully(&mut self.input, &mut self.buffer[kept..end])?;
        self.hasher.update(&self.buffer[kept..end]);
        self.unread -= (end - kept) as u64;
        (self.start, self.end) = (0, end);
        Ok(())
    }

    /// Reads whatever of the body is left, then the checksum, and compares.
    pub(super) fn verify(&mut self) -> Result<(), CodecError> {
        // What the buffer holds was hashed as it was read: it can take the rest.
        (self.start, self.end) = (0, 0);
        while self.unread > 0 {
            let n = self.buffer.len().min(self.unread as usize);
            read_fully(&mut self.input, &mut self.buffer[..n])?;
            self.hasher.update(&self.buffer[..n]);
            self.unread -= n as u64;
        }
        if self.version >= 4 {
            let mut trailer = [0; 8 + END_MAGIC.len()];
            read_fully(&mut self.input, &mut trailer)?;
            self.hasher.update(&trailer);
            let (body_len, end) = trailer.split_at(8);
            let body_len = u64::from_le_bytes(body_len.try_into().unwrap_or_default());
            let actual = self.len - (HEADER_LEN + TRAILER_LEN) as u64;
            if end != END_MAGIC {
                return Err(CodecError::NoEnd { actual: self.len });
            }
            if body_len != actual {
                let expected = body_len.saturating_add((HEADER_LEN + TRAILER_LEN) as u64);
                return Err(truncated(expected, self.len));
            }
        }
        let mut checksum = [0; CHECKSUM_LEN];
        read_fully(&mut self.input, &mut checksum)?;
        if self.hasher.digest().to_le_bytes() != checksum {
            return Err(CodecError::Checksum);
        }
        Ok(())
    }

    #[inline]
    pub(super) fn array<const N: usize>(&mut self) -> Result<[u8; N], CodecError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }

    #[inline]
    pub(super) fn u8(&mut self) -> Result<u8, CodecError> {
        Ok(self.take(1)?[0])
    }

    #[inline]
    pub(super) fn u32(&mut self) -> Result<u32, CodecError> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    #[inline]
    pub(super) fn u64(&mut self) -> Result<u64, CodecError> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    pub(super) fn str(&mut self) -> Result<&str, CodecError> {
        let len = u16::from_le_bytes(self.array()?);
        std::str::from_utf8(self.take(usize::from(len))?)
            .map_err(|_| malformed("a name is not UTF-8".into()))
    }
}

/// Fills `buffer` from `input`; the file ending first (it shrank since its length was
/// read) or failing is a read error.
pub(super) fn read_fully(input: &mut impl Read, buffer: &mut [u8]) -> Result<(), CodecError> {
    input
        .read_exact(buffer)
        .map_err(|e| CodecError::Read(e.to_string()))
}

//! Container logs in Docker's json-file shape, one `{"log","stream","time"}` object per
//! line, rotated by size (`container.log` → `container.log.1` → ...). The writer runs in
//! the shim; the reader (with tail, since and follow) in the library.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// One log record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogEntry {
    /// The line including its `\n` (absent on a last partial line).
    pub log: String,
    /// `stdout` or `stderr`.
    pub stream: String,
    /// RFC 3339 UTC with nanoseconds, fixed width, so strings sort by time.
    pub time: String,
}

/// A line longer than this is written in pieces (Docker splits at 16 KiB too).
pub const MAX_LINE: usize = 16 * 1024;

/// Formats a time as `2025-01-02T03:04:05.123456789Z`.
pub fn rfc3339(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, day) = civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{day:02}T{:02}:{:02}:{:02}.{:09}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60,
        d.subsec_nanos()
    )
}

/// Howard Hinnant's days-to-civil algorithm.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// Appends entries to the live file, rotating by size.
#[derive(Debug)]
pub struct LogWriter {
    path: PathBuf,
    file: File,
    size: u64,
    max_bytes: u64,
    max_files: u32,
}

impl LogWriter {
    pub fn open(path: &Path, max_bytes: u64, max_files: u32) -> std::io::Result<Self> {
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        let size = file.metadata()?.len();
        Ok(LogWriter {
            path: path.into(),
            file,
            size,
            max_bytes,
            max_files,
        })
    }

    /// Writes one record for `line` (which may end in `\n`).
    pub fn write(&mut self, stream: &str, line: &[u8]) -> std::io::Result<()> {
        let entry = LogEntry {
            log: String::from_utf8_lossy(line).into_owned(),
            stream: stream.into(),
            time: rfc3339(SystemTime::now()),
        };
        let mut bytes = serde_json::to_vec(&entry).map_err(std::io::Error::other)?;
        bytes.push(b'\n');
        if self.max_bytes > 0 && self.size > 0 && self.size + bytes.len() as u64 > self.max_bytes {
            self.rotate()?;
        }
        self.file.write_all(&bytes)?;
        self.size += bytes.len() as u64;
        Ok(())
    }

    fn rotate(&mut self) -> std::io::Result<()> {
        if self.max_files == 0 {
            self.file.set_len(0)?;
            self.size = 0;
            return Ok(());
        }
        for n in (1..self.max_files).rev() {
            let from = rotated(&self.path, n);
            if from.exists() {
                std::fs::rename(&from, rotated(&self.path, n + 1))?;
            }
        }
        std::fs::rename(&self.path, rotated(&self.path, 1))?;
        self.file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)?;
        self.size = 0;
        Ok(())
    }
}

/// `container.log.N`.
pub fn rotated(path: &Path, n: u32) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(format!(".{n}"));
    PathBuf::from(s)
}

/// Splits a stream's bytes into lines, holding back a partial line until it completes,
/// grows past [`MAX_LINE`], or the stream ends.
#[derive(Debug, Default)]
pub struct LineSplitter {
    buf: Vec<u8>,
}

impl LineSplitter {
    pub fn push(&mut self, data: &[u8], mut emit: impl FnMut(&[u8])) {
        self.buf.extend_from_slice(data);
        let mut start = 0;
        while let Some(pos) = self.buf[start..].iter().position(|&b| b == b'\n') {
            emit(&self.buf[start..start + pos + 1]);
            start += pos + 1;
        }
        while self.buf.len() - start >= MAX_LINE {
            emit(&self.buf[start..start + MAX_LINE]);
            start += MAX_LINE;
        }
        self.buf.drain(..start);
    }

    pub fn finish(&mut self, mut emit: impl FnMut(&[u8])) {
        if !self.buf.is_empty() {
            emit(&self.buf);
            self.buf.clear();
        }
    }
}

/// Reads every entry of the live file and its rotations, oldest first.
pub fn read_all(path: &Path, max_files: u32) -> std::io::Result<Vec<LogEntry>> {
    let mut out = Vec::new();
    for n in (1..=max_files.max(1)).rev() {
        read_file(&rotated(path, n), &mut out)?;
    }
    read_file(path, &mut out)?;
    Ok(out)
}

fn read_file(path: &Path, out: &mut Vec<LogEntry>) -> std::io::Result<()> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    for line in BufReader::new(file).lines() {
        let line = line?;
        if let Ok(entry) = serde_json::from_str(&line) {
            out.push(entry);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn rfc3339_matches_known_instants() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000000000Z");
        let t = UNIX_EPOCH + Duration::new(1_709_210_096, 5);
        assert_eq!(rfc3339(t), "2024-02-29T12:34:56.000000005Z");
    }

    #[test]
    fn splitter_emits_whole_lines_and_long_pieces() {
        let mut s = LineSplitter::default();
        let mut got: Vec<Vec<u8>> = Vec::new();
        s.push(b"a\nb", |l| got.push(l.to_vec()));
        s.push(b"c\n", |l| got.push(l.to_vec()));
        s.push(&vec![b'x'; MAX_LINE + 3], |l| got.push(l.to_vec()));
        s.finish(|l| got.push(l.to_vec()));
        assert_eq!(got[0], b"a\n");
        assert_eq!(got[1], b"bc\n");
        assert_eq!(got[2].len(), MAX_LINE);
        assert_eq!(got[3], b"xxx");
    }

    #[test]
    fn writer_rotates_by_size_and_reader_sees_order() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("container.log");
        let mut w = LogWriter::open(&path, 300, 2).expect("open");
        for i in 0..20 {
            w.write("stdout", format!("line {i}\n").as_bytes())
                .expect("write");
        }
        assert!(rotated(&path, 1).exists());
        assert!(rotated(&path, 2).exists());
        assert!(!rotated(&path, 3).exists());
        let all = read_all(&path, 2).expect("read");
        assert!(all.len() < 20, "oldest lines rotated away");
        assert_eq!(all.last().map(|e| e.log.as_str()), Some("line 19\n"));
        let nums: Vec<u32> = all
            .iter()
            .map(|e| e.log.trim().trim_start_matches("line ").parse().expect("n"))
            .collect();
        assert!(nums.windows(2).all(|w| w[0] + 1 == w[1]));
        for f in [&path, &rotated(&path, 1)] {
            assert!(std::fs::metadata(f).expect("meta").len() <= 300);
        }
    }
}

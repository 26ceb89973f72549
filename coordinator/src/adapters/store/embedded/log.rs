//! The file: framing (length, CRC-32, JSON payload), append with fsync, and replay that cuts a
//! torn tail but refuses a corrupt middle.

use std::{fs::File, io::Write, path::Path};

use crate::ports::store::StoreError;

use super::state::Record;

pub(super) const HEADER: usize = 8;
/// No record comes near this; a bigger length is a torn or corrupt header.
const MAX_RECORD: usize = 16 << 20;

/// The open log file. Writers hold it (one at a time) through their write and fsync; readers
/// never touch it.
#[derive(Debug)]
pub(super) struct FileLog {
    pub(super) file: File,
    /// Bytes of whole, acknowledged frames.
    pub(super) len: u64,
    /// Set when a failed write could not be undone (or fsync failed, leaving the page cache in
    /// an unknown state): every later write fails until the store is reopened.
    pub(super) broken: bool,
}

impl FileLog {
    pub(super) fn append(&mut self, path: &Path, record: &Record) -> Result<(), StoreError> {
        let write_err = |source| StoreError::Write {
            path: path.to_owned(),
            source,
        };
        if self.broken {
            return Err(write_err(std::io::Error::other(
                "an earlier write failed and could not be undone; reopen the store",
            )));
        }
        let bytes = frame(record).map_err(write_err)?;
        if let Err(error) = self.file.write_all(&bytes) {
            // Cut a partial frame so later writes don't follow garbage.
            if self.file.set_len(self.len).is_err() {
                self.broken = true;
            }
            return Err(write_err(error));
        }
        if let Err(error) = self.file.sync_data() {
            // After a failed fsync the kernel may have dropped the dirty pages: nothing written
            // since the last good fsync can be trusted.
            self.broken = true;
            return Err(write_err(error));
        }
        self.len += bytes.len() as u64;
        Ok(())
    }
}

pub(super) fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

pub(super) fn frame(record: &Record) -> std::io::Result<Vec<u8>> {
    let payload = serde_json::to_vec(record).map_err(std::io::Error::other)?;
    let len = u32::try_from(payload.len())
        .ok()
        .filter(|&l| (l as usize) <= MAX_RECORD)
        .ok_or_else(|| std::io::Error::other("record too large"))?;
    let mut bytes = Vec::with_capacity(HEADER + payload.len());
    bytes.extend_from_slice(&len.to_le_bytes());
    bytes.extend_from_slice(&crc32(&payload).to_le_bytes());
    bytes.extend_from_slice(&payload);
    Ok(bytes)
}

/// Every whole record, and the length of the prefix they fill.
pub(super) fn replay(path: &Path, bytes: &[u8]) -> Result<(Vec<Record>, u64), StoreError> {
    let mut records = Vec::new();
    let mut offset = 0usize;
    while offset < bytes.len() {
        let rest = &bytes[offset..];
        let corrupt = |reason: String| StoreError::Corrupt {
            path: path.to_owned(),
            offset: offset as u64,
            reason,
        };
        // Zero fill: the file grew but the data never reached the disk.
        if rest.iter().all(|&b| b == 0) {
            break;
        }
        let Some(header) = rest.get(..HEADER) else {
            break;
        };
        let (len_bytes, crc_bytes) = header.split_at(4);
        let len = u32::from_le_bytes(len_bytes.try_into().map_err(|_| corrupt("header".into()))?)
            as usize;
        let crc = u32::from_le_bytes(crc_bytes.try_into().map_err(|_| corrupt("header".into()))?);
        if len > MAX_RECORD {
            return Err(corrupt(format!("record length {len} is impossible")));
        }
        let Some(payload) = rest.get(HEADER..HEADER + len) else {
            // The payload runs past the end of the file: the last write was torn.
            break;
        };
        let is_last = rest.len() == HEADER + len;
        if crc32(payload) != crc {
            if is_last {
                break;
            }
            return Err(corrupt("checksum mismatch".into()));
        }
        let record = serde_json::from_slice(payload)
            .map_err(|e| corrupt(format!("record does not parse: {e}")))?;
        records.push(record);
        offset += HEADER + len;
    }
    Ok((records, offset as u64))
}

/// CRC-32 (IEEE 802.3, as in zlib and gzip).
fn crc32(bytes: &[u8]) -> u32 {
    crc32fast::hash(bytes)
}

//! WAL positions and file names, as PostgreSQL writes them: LSNs (`0/2000028`), segments
//! (`000000010000000000000002`), timeline history files (`00000002.history`), backup history
//! files (`000000010000000000000002.00000028.backup`) and partial segments (`….partial`).

use std::fmt;
use std::str::FromStr;

use deploykit_core::{Error, Result};

/// A position in the WAL (a log sequence number), written `X/Y` in hex as PostgreSQL does.
///
/// ```
/// use deploykit_postgres::Lsn;
/// let lsn: Lsn = "16/B374D848".parse()?;
/// assert_eq!(lsn.0, 0x16_B374_D848);
/// assert_eq!(lsn.to_string(), "16/B374D848");
/// # Ok::<(), deploykit_core::Error>(())
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Lsn(pub u64);

impl FromStr for Lsn {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let bad = || {
            Error::invalid(
                "lsn",
                format!("{s:?} is not an LSN (expected two hex numbers like 0/2000028)"),
            )
        };
        let (hi, lo) = s.trim().split_once('/').ok_or_else(bad)?;
        let part = |p: &str| {
            if p.is_empty() || p.len() > 8 {
                return Err(bad());
            }
            u32::from_str_radix(p, 16).map_err(|_| bad())
        };
        Ok(Lsn(u64::from(part(hi)?) << 32 | u64::from(part(lo)?)))
    }
}

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xFFFF_FFFF)
    }
}

/// Check a WAL segment size: a power of two from 1 MiB to 1 GiB, as `initdb` allows.
pub fn check_segment_size(size: u64) -> Result<()> {
    if size.is_power_of_two() && ((1 << 20)..=(1 << 30)).contains(&size) {
        Ok(())
    } else {
        Err(Error::invalid(
            "wal_segment_size",
            format!("{size} is not a power of two from 1 MiB to 1 GiB"),
        ))
    }
}

/// One WAL segment: a timeline and a segment number (the segment's first byte is at LSN
/// `number × segment size`). Ordered by timeline, then number.
///
/// ```
/// use deploykit_postgres::{Lsn, WalSegment};
/// let size = 16 * 1024 * 1024;
/// let seg = WalSegment::containing(1, "0/2000028".parse::<Lsn>()?, size);
/// assert_eq!(seg.file_name(size), "000000010000000000000002");
/// assert_eq!(WalSegment::parse("000000010000000100000003", size)?.number, 0x103);
/// # Ok::<(), deploykit_core::Error>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct WalSegment {
    /// The timeline.
    pub timeline: u32,
    /// The segment number.
    pub number: u64,
}

fn per_xlogid(segment_size: u64) -> u64 {
    0x1_0000_0000 / segment_size
}

impl WalSegment {
    /// The segment of `timeline` holding `lsn`.
    pub fn containing(timeline: u32, lsn: Lsn, segment_size: u64) -> Self {
        WalSegment {
            timeline,
            number: lsn.0 / segment_size,
        }
    }

    /// Its file name: 24 hex digits (timeline, then the number in two halves).
    pub fn file_name(&self, segment_size: u64) -> String {
        let per = per_xlogid(segment_size);
        format!(
            "{:08X}{:08X}{:08X}",
            self.timeline,
            self.number / per,
            self.number % per
        )
    }

    /// The segment named `name` (24 hex digits).
    pub fn parse(name: &str, segment_size: u64) -> Result<Self> {
        let bad = |why: &str| {
            Error::invalid(
                "wal.segment",
                format!("{name:?} is not a WAL segment name: {why}"),
            )
        };
        if name.len() != 24 || !name.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad("expected 24 hex digits"));
        }
        let field = |i: usize| u32::from_str_radix(&name[i..i + 8], 16).expect("hex checked");
        let (timeline, log, seg) = (field(0), u64::from(field(8)), u64::from(field(16)));
        let per = per_xlogid(segment_size);
        if seg >= per {
            return Err(bad(&format!(
                "its last 8 digits exceed {:X}, the last segment of a {segment_size}-byte WAL file",
                per - 1
            )));
        }
        Ok(WalSegment {
            timeline,
            number: log * per + seg,
        })
    }

    /// The LSN of its first byte.
    pub fn start(&self, segment_size: u64) -> Lsn {
        Lsn(self.number * segment_size)
    }
}

/// What kind of file of `pg_wal` a name is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WalFileKind {
    /// A segment: `000000010000000000000002`.
    Segment,
    /// A timeline history file: `00000002.history`.
    History,
    /// A backup history file: `000000010000000000000002.00000028.backup`.
    BackupHistory,
    /// A segment cut short by a timeline switch: `000000010000000000000005.partial`.
    Partial,
}

fn all_hex(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| b.is_ascii_hexdigit())
}

impl WalFileKind {
    /// The kind of the file named `name`, or `None` if PostgreSQL does not archive such a
    /// file.
    ///
    /// ```
    /// use deploykit_postgres::WalFileKind;
    /// assert_eq!(WalFileKind::of("00000002.history"), Some(WalFileKind::History));
    /// assert_eq!(WalFileKind::of("postgresql.conf"), None);
    /// ```
    pub fn of(name: &str) -> Option<Self> {
        if all_hex(name, 24) {
            return Some(WalFileKind::Segment);
        }
        if let Some(tli) = name.strip_suffix(".history") {
            return all_hex(tli, 8).then_some(WalFileKind::History);
        }
        if let Some(seg) = name.strip_suffix(".partial") {
            return all_hex(seg, 24).then_some(WalFileKind::Partial);
        }
        if let Some(rest) = name.strip_suffix(".backup") {
            let (seg, offset) = rest.split_once('.')?;
            return (all_hex(seg, 24) && all_hex(offset, 8)).then_some(WalFileKind::BackupHistory);
        }
        None
    }

    /// The segment a segment, partial segment or backup history file belongs to; `None` for a
    /// history file.
    pub fn segment_of(name: &str, segment_size: u64) -> Option<WalSegment> {
        match Self::of(name)? {
            WalFileKind::History => None,
            _ => WalSegment::parse(&name[..24], segment_size).ok(),
        }
    }
}

/// The part of a segment's first page that says whose WAL it is (PostgreSQL's
/// `XLogLongPageHeaderData`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SegmentHeader {
    /// The timeline of the first page.
    pub timeline: u32,
    /// The LSN of the first page: the segment's start.
    pub page_address: Lsn,
    /// The cluster's system identifier.
    pub system_identifier: u64,
    /// The segment size the cluster was initialised with.
    pub segment_size: u64,
}

impl SegmentHeader {
    /// Read the long page header at the start of a segment. Fails if `bytes` is too short to
    /// hold one or the header is not a long header of a plausible segment.
    pub fn parse(bytes: &[u8]) -> Result<Self> {
        const XLP_LONG_HEADER: u16 = 0x0002;
        let bad = |why: String| {
            Error::invalid(
                "wal.segment",
                format!("not a WAL segment's first page: {why}"),
            )
        };
        if bytes.len() < 40 {
            return Err(bad(format!(
                "{} bytes, a long page header needs 40",
                bytes.len()
            )));
        }
        let u16_at = |i: usize| u16::from_le_bytes(bytes[i..i + 2].try_into().expect("2 bytes"));
        let u32_at = |i: usize| u32::from_le_bytes(bytes[i..i + 4].try_into().expect("4 bytes"));
        let u64_at = |i: usize| u64::from_le_bytes(bytes[i..i + 8].try_into().expect("8 bytes"));
        if u16_at(2) & XLP_LONG_HEADER == 0 {
            return Err(bad("the first page has no long header".to_string()));
        }
        let header = SegmentHeader {
            timeline: u32_at(4),
            page_address: Lsn(u64_at(8)),
            system_identifier: u64_at(24),
            segment_size: u64::from(u32_at(32)),
        };
        check_segment_size(header.segment_size).map_err(|e| bad(e.to_string()))?;
        Ok(header)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB16: u64 = 16 * 1024 * 1024;

    #[test]
    fn lsns_parse_and_print_like_postgresql() {
        for (text, value) in [
            ("0/0", 0),
            ("0/2000028", 0x200_0028),
            ("16/B374D848", 0x16_B374_D848),
            ("FFFFFFFF/FFFFFFFF", u64::MAX),
        ] {
            let lsn: Lsn = text.parse().unwrap();
            assert_eq!(lsn, Lsn(value));
            assert_eq!(lsn.to_string(), text);
        }
        assert_eq!("0/a".parse::<Lsn>().unwrap(), Lsn(10), "lower case too");
        for bad in ["", "0", "/1", "1/", "x/1", "123456789/0", "0/1/2"] {
            let e = bad.parse::<Lsn>().unwrap_err();
            assert!(e.to_string().contains("not an LSN"), "{bad:?}: {e}");
        }
    }

    #[test]
    fn segment_names_follow_the_segment_size() {
        let seg = WalSegment::containing(1, "1/FF000000".parse().unwrap(), MIB16);
        assert_eq!(seg.file_name(MIB16), "0000000100000001000000FF");
        assert_eq!(
            WalSegment::parse("0000000100000001000000FF", MIB16).unwrap(),
            seg
        );
        assert_eq!(seg.start(MIB16), "1/FF000000".parse().unwrap());
        // With 1 GiB segments there are 4 per 4 GiB "log".
        let gib = 1 << 30;
        let seg = WalSegment::containing(3, "2/40000000".parse().unwrap(), gib);
        assert_eq!(seg.number, 9);
        assert_eq!(seg.file_name(gib), "000000030000000200000001");
        assert!(WalSegment::parse("000000030000000200000004", gib).is_err());
        assert!(WalSegment::parse("00000001000000000000000", MIB16).is_err());
        assert!(WalSegment::parse("00000001000000000000000G", MIB16).is_err());
        // Order: timeline first, then number.
        let a = WalSegment::parse("000000010000000000000009", MIB16).unwrap();
        let b = WalSegment::parse("00000001000000010000000A", MIB16).unwrap();
        let c = WalSegment::parse("000000020000000000000001", MIB16).unwrap();
        assert!(a < b && b < c);
        assert!(check_segment_size(MIB16).is_ok());
        assert!(check_segment_size(3 << 20).is_err());
    }

    #[test]
    fn wal_file_kinds() {
        use WalFileKind::*;
        for (name, kind) in [
            ("000000010000000000000002", Some(Segment)),
            ("00000002.history", Some(History)),
            (
                "000000010000000000000002.00000028.backup",
                Some(BackupHistory),
            ),
            ("000000010000000000000005.partial", Some(Partial)),
            ("00000001000000000000002", None),
            ("0000002.history", None),
            ("000000010000000000000002.backup", None),
            ("RECOVERYXLOG", None),
            ("../000000010000000000000002", None),
        ] {
            assert_eq!(WalFileKind::of(name), kind, "{name}");
        }
        assert_eq!(
            WalFileKind::segment_of("000000010000000000000002.00000028.backup", MIB16),
            Some(WalSegment {
                timeline: 1,
                number: 2
            })
        );
        assert_eq!(WalFileKind::segment_of("00000002.history", MIB16), None);
    }

    #[test]
    fn segment_headers_are_read_from_the_first_page() {
        let mut page = vec![0u8; 8192];
        page[0..2].copy_from_slice(&0xD110u16.to_le_bytes());
        page[2..4].copy_from_slice(&0x0002u16.to_le_bytes());
        page[4..8].copy_from_slice(&1u32.to_le_bytes());
        page[8..16].copy_from_slice(&0x300_0000u64.to_le_bytes());
        page[24..32].copy_from_slice(&7_312_345_678_901_234_567u64.to_le_bytes());
        page[32..36].copy_from_slice(&(MIB16 as u32).to_le_bytes());
        page[36..40].copy_from_slice(&8192u32.to_le_bytes());
        let h = SegmentHeader::parse(&page).unwrap();
        assert_eq!(h.timeline, 1);
        assert_eq!(h.page_address, Lsn(0x300_0000));
        assert_eq!(h.system_identifier, 7_312_345_678_901_234_567);
        assert_eq!(h.segment_size, MIB16);
        page[2] = 0;
        assert!(SegmentHeader::parse(&page).is_err());
        assert!(SegmentHeader::parse(&page[..20]).is_err());
    }
}

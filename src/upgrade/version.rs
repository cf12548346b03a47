//! Upstream Mosquitto version numbers (`MAJOR.MINOR.PATCH`, as in the `eclipse-mosquitto` image tags).

use std::fmt;
use std::str::FromStr;

/// An upstream Mosquitto release number, e.g. `2.0.22`.
///
/// Ordered numerically (`2.0.9 < 2.0.10 < 2.1.0`), which is upstream's release order within and
/// across lines. Parsing is strict so that [`Display`](fmt::Display) gives back the image tag:
/// exactly three dot-separated decimal numbers, no leading zeros, no prefix or suffix
/// (`v2.0.1`, `2.0`, `2.0.01` and `2.0.18a` are rejected).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MosquittoVersion {
    /// Major version.
    pub major: u32,
    /// Minor version.
    pub minor: u32,
    /// Patch version.
    pub patch: u32,
}

impl MosquittoVersion {
    /// Builds a version from its parts.
    pub const fn new(major: u32, minor: u32, patch: u32) -> Self {
        Self { major, minor, patch }
    }

    /// True when both versions belong to the same `MAJOR.MINOR` release line.
    pub fn same_line(&self, other: &MosquittoVersion) -> bool {
        self.major == other.major && self.minor == other.minor
    }
}

impl fmt::Display for MosquittoVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

/// Why a string is not a [`MosquittoVersion`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid Mosquitto version {input:?}: {reason}")]
pub struct VersionError {
    /// The rejected text.
    pub input: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

impl FromStr for MosquittoVersion {
    type Err = VersionError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |reason| VersionError { input: s.to_string(), reason };
        let parts: Vec<&str> = s.split('.').collect();
        if parts.len() != 3 {
            return Err(err("expected MAJOR.MINOR.PATCH, e.g. 2.0.22"));
        }
        let mut numbers = [0u32; 3];
        for (slot, part) in numbers.iter_mut().zip(&parts) {
            if part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit()) {
                return Err(err("each part must be a decimal number"));
            }
            if part.len() > 1 && part.starts_with('0') {
                return Err(err("numbers must not have leading zeros"));
            }
            *slot = part.parse().map_err(|_| err("number too large"))?;
        }
        Ok(Self::new(numbers[0], numbers[1], numbers[2]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> MosquittoVersion {
        s.parse().unwrap()
    }

    #[test]
    fn parses_and_displays_image_tags() {
        for tag in ["2.0.22", "2.1.0", "1.4.12", "0.0.0", "10.20.30"] {
            assert_eq!(v(tag).to_string(), tag);
        }
        assert_eq!(v("2.0.22"), MosquittoVersion::new(2, 0, 22));
    }

    #[test]
    fn rejects_anything_but_three_plain_numbers() {
        for bad in [
            "",
            "2",
            "2.0",
            "2.0.1.1",
            "v2.0.1",
            "2.0.01",
            "2.0.18a",
            " 2.0.1",
            "2.0.1 ",
            "2..1",
            "2.0.-1",
            "+2.0.1",
            "99999999999.0.0",
        ] {
            let e = bad.parse::<MosquittoVersion>().unwrap_err();
            assert_eq!(e.input, bad);
            assert!(e.to_string().contains("invalid Mosquitto version"), "{e}");
        }
    }

    #[test]
    fn orders_numerically() {
        assert!(v("2.0.9") < v("2.0.10"));
        assert!(v("2.0.22") < v("2.1.0"));
        assert!(v("1.6.12") < v("2.0.0"));
        assert!(v("2.0.10").same_line(&v("2.0.3")));
        assert!(!v("2.0.10").same_line(&v("2.1.0")));
    }
}

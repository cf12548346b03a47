//! The security-patch catalog: upstream Mosquitto releases and the vulnerabilities each one fixes.
//!
//! The built-in catalog is `catalog/mosquitto.yaml`, compiled into the binary
//! ([`Catalog::builtin`]). An operator can extend or correct it at run time with a document of the
//! same format (e.g. from a ConfigMap) through [`Catalog::merge_yaml`] / [`Catalog::merge`]; when
//! that document is invalid the caller keeps the built-in catalog and reports the
//! [`CatalogError`], whose text names every problem found.
//!
//! Versions are **upstream `eclipse-mosquitto` image tags**. Distribution builds carry backports
//! (Debian's `2.0.11-1.2+deb12u2` has every later CVE fix), so comparing their upstream number
//! with this catalog would report CVEs they do not have.

use std::collections::{BTreeSet, HashSet};
use std::fmt;
use std::str::FromStr;
use std::sync::OnceLock;

use serde::Deserialize;
use serde::de::{self, Deserializer, Visitor};

use super::version::MosquittoVersion;
use crate::crd::broker::KnownCve;

/// The catalog shipped with moat (`catalog/mosquitto.yaml`).
pub const BUILTIN_CATALOG_YAML: &str = include_str!("../../catalog/mosquitto.yaml");

/// Severity of a catalogued vulnerability: the NVD CVSS v3 base severity, or `Unknown` when NVD
/// gives none (e.g. upstream security fixes without a CVE id).
///
/// Ordered from most to least severe, so sorting ascending lists critical entries first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum CveSeverity {
    /// CVSS 9.0-10.0.
    Critical,
    /// CVSS 7.0-8.9.
    High,
    /// CVSS 4.0-6.9.
    Medium,
    /// CVSS 0.1-3.9.
    Low,
    /// No CVSS v3 base severity is known.
    Unknown,
}

impl CveSeverity {
    /// Every severity, most severe first.
    pub const ALL: [CveSeverity; 5] =
        [CveSeverity::Critical, CveSeverity::High, CveSeverity::Medium, CveSeverity::Low, CveSeverity::Unknown];

    /// Lower-case name as written in the catalog and in `status.version.knownCVEs`.
    pub fn as_str(self) -> &'static str {
        match self {
            CveSeverity::Critical => "critical",
            CveSeverity::High => "high",
            CveSeverity::Medium => "medium",
            CveSeverity::Low => "low",
            CveSeverity::Unknown => "unknown",
        }
    }
}

impl fmt::Display for CveSeverity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for CveSeverity {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        CveSeverity::ALL
            .into_iter()
            .find(|sev| sev.as_str() == s)
            .ok_or_else(|| format!("invalid severity {s:?} (expected one of critical, high, medium, low, unknown)"))
    }
}

/// One catalogued vulnerability.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cve {
    /// `CVE-YYYY-NNNN`, or `MOSQ-<year>-<SLUG>` for an upstream security fix without a CVE id.
    pub id: String,
    /// NVD CVSS v3 base severity, or unknown.
    pub severity: CveSeverity,
    /// First upstream release with the fix.
    pub fixed_in: MosquittoVersion,
    /// Releases of older minor lines that received a backport of the fix.
    pub fixed_also_in: Vec<MosquittoVersion>,
    /// First affected release (inclusive), when known. Without it every release before
    /// `fixed_in` counts as affected.
    pub introduced_in: Option<MosquittoVersion>,
    /// One-line description.
    pub summary: String,
}

impl Cve {
    /// True when `version` contains the fix: it is at or after `fixed_in`, or at or after a
    /// backport release of its own `MAJOR.MINOR` line.
    pub fn is_fixed_in(&self, version: &MosquittoVersion) -> bool {
        *version >= self.fixed_in || self.fixed_also_in.iter().any(|b| b.same_line(version) && version >= b)
    }

    /// True when `version` is affected: introduced at or before it (if known) and not fixed in it.
    pub fn affects(&self, version: &MosquittoVersion) -> bool {
        self.introduced_in.is_none_or(|first| first <= *version) && !self.is_fixed_in(version)
    }

    /// The entry as shown in `MqttBroker.status.version.knownCVEs`.
    pub fn to_known_cve(&self) -> KnownCve {
        KnownCve {
            id: self.id.clone(),
            severity: self.severity.as_str().to_string(),
            fixed_in: self.fixed_in.to_string(),
            summary: self.summary.clone(),
        }
    }
}

/// Why a catalog document was rejected. The text names every problem, with the entry it was
/// found in, so it can go into a status condition or Event as is.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CatalogError {
    /// Not YAML, or not the catalog's shape (unknown or missing field, wrong type).
    #[error("catalog document does not have the catalog format: {0}")]
    Format(String),
    /// Well-formed, but the content is inconsistent.
    #[error("invalid catalog ({} problem{}): {}", .0.len(), if .0.len() == 1 { "" } else { "s" }, .0.join("; "))]
    Invalid(Vec<String>),
}

/// The security-patch catalog: known upstream releases and catalogued vulnerabilities.
///
/// Invariants (checked by [`Catalog::parse`]): versions are unique and sorted ascending; CVE ids
/// are unique; every `fixed_in` and `fixed_also_in` is a listed version; `introduced_in` is before
/// `fixed_in`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Catalog {
    versions: Vec<MosquittoVersion>,
    cves: Vec<Cve>,
}

static BUILTIN: OnceLock<Catalog> = OnceLock::new();

impl Catalog {
    /// The catalog compiled into moat, parsed on first use. A unit test guarantees it parses.
    pub fn builtin() -> &'static Catalog {
        BUILTIN.get_or_init(|| {
            Catalog::parse(BUILTIN_CATALOG_YAML)
                .unwrap_or_else(|e| panic!("built-in catalog/mosquitto.yaml is invalid: {e}"))
        })
    }

    /// Parses and validates a self-contained catalog document (every version a CVE refers to is
    /// listed in the document itself). An empty document is an empty catalog.
    pub fn parse(yaml: &str) -> Result<Catalog, CatalogError> {
        Catalog::from_raw(parse_raw(yaml)?, &BTreeSet::new())
    }

    /// Parses an override document and merges it over `self` (see [`Catalog::merge`]). Unlike
    /// [`Catalog::parse`], the override's CVEs may refer to versions that only `self` lists.
    /// On error `self` is untouched and the caller keeps using it.
    pub fn merge_yaml(&self, overlay_yaml: &str) -> Result<Catalog, CatalogError> {
        let known: BTreeSet<MosquittoVersion> = self.versions.iter().copied().collect();
        let overlay = Catalog::from_raw(parse_raw(overlay_yaml)?, &known)?;
        Ok(self.merge(&overlay))
    }

    /// Returns `self` with `overlay` applied: versions are the union; a CVE of the overlay
    /// replaces the entry with the same id, or is added. Both catalogs are left unchanged.
    pub fn merge(&self, overlay: &Catalog) -> Catalog {
        let versions: BTreeSet<MosquittoVersion> = self.versions.iter().chain(&overlay.versions).copied().collect();
        let mut cves = self.cves.clone();
        for cve in &overlay.cves {
            match cves.iter_mut().find(|c| c.id == cve.id) {
                Some(existing) => *existing = cve.clone(),
                None => cves.push(cve.clone()),
            }
        }
        Catalog { versions: versions.into_iter().collect(), cves }
    }

    /// Known releases, ascending.
    pub fn versions(&self) -> &[MosquittoVersion] {
        &self.versions
    }

    /// Catalogued vulnerabilities, in document order (overlay additions last).
    pub fn cves(&self) -> &[Cve] {
        &self.cves
    }

    /// The entry with this id.
    pub fn cve(&self, id: &str) -> Option<&Cve> {
        self.cves.iter().find(|c| c.id == id)
    }

    /// True when `version` is a known release.
    pub fn contains(&self, version: &MosquittoVersion) -> bool {
        self.versions.binary_search(version).is_ok()
    }

    /// Vulnerabilities that affect `version`: fixed in a later release (and not backported to
    /// its line), and introduced at or before it when `introducedIn` is known. Works for any
    /// version, listed or not. Sorted most severe first, then by fixing release, then by id, so
    /// the result (and a status built from it) is stable.
    pub fn known_cves(&self, version: &MosquittoVersion) -> Vec<&Cve> {
        let mut found: Vec<&Cve> = self.cves.iter().filter(|c| c.affects(version)).collect();
        found.sort_by(|a, b| (a.severity, a.fixed_in, &a.id).cmp(&(b.severity, b.fixed_in, &b.id)));
        found
    }

    /// The AutoPatch target for `current`: the newest catalogued release of the same
    /// `MAJOR.MINOR` line that is newer than `current`, returned only when `current` has known
    /// vulnerabilities and that release fixes at least one of them. Never a downgrade, never
    /// another minor line; `None` means "stay".
    pub fn patch_target(&self, current: &MosquittoVersion) -> Option<MosquittoVersion> {
        let known = self.known_cves(current);
        if known.is_empty() {
            return None;
        }
        let newest = self.versions.iter().rev().find(|v| v.same_line(current) && *v > current).copied()?;
        known.iter().any(|cve| cve.is_fixed_in(&newest)).then_some(newest)
    }

    fn from_raw(raw: RawCatalog, extra_versions: &BTreeSet<MosquittoVersion>) -> Result<Catalog, CatalogError> {
        let mut problems = Vec::new();

        let mut versions = BTreeSet::new();
        for (i, text) in raw.versions.iter().enumerate() {
            match text.parse::<MosquittoVersion>() {
                Ok(v) => {
                    if !versions.insert(v) {
                        problems.push(format!("versions[{i}]: {v} is listed twice"));
                    }
                }
                Err(e) => problems.push(format!("versions[{i}]: {e}")),
            }
        }
        let listed = |v: &MosquittoVersion| versions.contains(v) || extra_versions.contains(v);

        let mut ids = HashSet::new();
        let mut cves = Vec::new();
        for (i, rc) in raw.cves.iter().enumerate() {
            let at = if rc.id.is_empty() { format!("cves[{i}]") } else { format!("cves[{i}] ({})", rc.id) };
            let before = problems.len();

            if rc.id.is_empty() || rc.id.len() > 64 || rc.id.chars().any(|c| c.is_whitespace() || c.is_control()) {
                problems.push(format!("{at}: id must be 1-64 characters without spaces"));
            } else if !ids.insert(rc.id.clone()) {
                problems.push(format!("{at}: id {} is used by more than one entry", rc.id));
            }
            let severity = rc.severity.parse::<CveSeverity>().map_err(|e| problems.push(format!("{at}: {e}"))).ok();
            let mut version_field = |field: &str, text: &str| match text.parse::<MosquittoVersion>() {
                Ok(v) if listed(&v) => Some(v),
                Ok(v) => {
                    problems.push(format!("{at}: {field} {v} is not listed under versions"));
                    None
                }
                Err(e) => {
                    problems.push(format!("{at}: {field}: {e}"));
                    None
                }
            };
            let fixed_in = version_field("fixedIn", &rc.fixed_in);
            let fixed_also_in: Vec<MosquittoVersion> =
                rc.fixed_also_in.iter().filter_map(|t| version_field("fixedAlsoIn", t)).collect();
            let introduced_in = match &rc.introduced_in {
                Some(text) => match text.parse::<MosquittoVersion>() {
                    Ok(v) => Some(v),
                    Err(e) => {
                        problems.push(format!("{at}: introducedIn: {e}"));
                        None
                    }
                },
                None => None,
            };
            if let (Some(first), Some(fix)) = (introduced_in, fixed_in)
                && first >= fix
            {
                problems.push(format!("{at}: introducedIn {first} must be before fixedIn {fix}"));
            }
            if let Some(fix) = fixed_in {
                for backport in &fixed_also_in {
                    if backport.same_line(&fix) || *backport > fix {
                        problems.push(format!(
                            "{at}: fixedAlsoIn {backport} must be a release of an older line than fixedIn {fix}"
                        ));
                    }
                }
            }
            if rc.summary.trim().is_empty() {
                problems.push(format!("{at}: summary must not be empty"));
            }

            if problems.len() == before
                && let (Some(severity), Some(fixed_in)) = (severity, fixed_in)
            {
                cves.push(Cve {
                    id: rc.id.clone(),
                    severity,
                    fixed_in,
                    fixed_also_in,
                    introduced_in,
                    summary: rc.summary.trim().to_string(),
                });
            }
        }

        if problems.is_empty() {
            Ok(Catalog { versions: versions.into_iter().collect(), cves })
        } else {
            Err(CatalogError::Invalid(problems))
        }
    }
}

fn parse_raw(yaml: &str) -> Result<RawCatalog, CatalogError> {
    let raw: Option<RawCatalog> = serde_norway::from_str(yaml).map_err(|e| CatalogError::Format(e.to_string()))?;
    Ok(raw.unwrap_or_default())
}

/// The document as written, before validation.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase", expecting = "a catalog: a mapping with `versions` and `cves`")]
struct RawCatalog {
    #[serde(default, deserialize_with = "scalar_strings")]
    versions: Vec<String>,
    #[serde(default)]
    cves: Vec<RawCve>,
}

#[derive(Deserialize)]
#[serde(
    deny_unknown_fields,
    rename_all = "camelCase",
    expecting = "a CVE entry: a mapping with id, severity, fixedIn, summary and optionally introducedIn, fixedAlsoIn"
)]
struct RawCve {
    #[serde(deserialize_with = "scalar_string")]
    id: String,
    #[serde(deserialize_with = "scalar_string")]
    severity: String,
    #[serde(deserialize_with = "scalar_string")]
    fixed_in: String,
    #[serde(default, deserialize_with = "scalar_strings")]
    fixed_also_in: Vec<String>,
    #[serde(default, deserialize_with = "optional_scalar_string")]
    introduced_in: Option<String>,
    #[serde(deserialize_with = "scalar_string")]
    summary: String,
}

/// A YAML scalar as text. Unquoted `2.1` is a float to YAML; taking it as text lets validation
/// say "expected MAJOR.MINOR.PATCH" instead of a type error.
struct Scalar(String);

impl<'de> Deserialize<'de> for Scalar {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ScalarVisitor;
        impl Visitor<'_> for ScalarVisitor {
            type Value = Scalar;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string or number")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Scalar, E> {
                Ok(Scalar(v.to_string()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Scalar, E> {
                Ok(Scalar(v.to_string()))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Scalar, E> {
                Ok(Scalar(v.to_string()))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Scalar, E> {
                Ok(Scalar(v.to_string()))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Scalar, E> {
                Ok(Scalar(v.to_string()))
            }
        }
        deserializer.deserialize_any(ScalarVisitor)
    }
}

fn scalar_string<'de, D: Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
    Scalar::deserialize(deserializer).map(|s| s.0)
}

fn optional_scalar_string<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<String>, D::Error> {
    Option::<Scalar>::deserialize(deserializer).map(|s| s.map(|s| s.0))
}

fn scalar_strings<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<String>, D::Error> {
    Vec::<Scalar>::deserialize(deserializer).map(|v| v.into_iter().map(|s| s.0).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> MosquittoVersion {
        s.parse().unwrap()
    }

    fn ids(cves: &[&Cve]) -> Vec<String> {
        let mut ids: Vec<String> = cves.iter().map(|c| c.id.clone()).collect();
        ids.sort();
        ids
    }

    #[test]
    fn builtin_catalog_parses() {
        let catalog = Catalog::parse(BUILTIN_CATALOG_YAML).expect("catalog/mosquitto.yaml must parse");
        assert_eq!(&catalog, Catalog::builtin());
        assert!(catalog.cves().len() >= 30, "{} entries", catalog.cves().len());
    }

    #[test]
    fn builtin_lists_every_2_0_and_2_1_tag_in_release_order() {
        let catalog = Catalog::builtin();
        assert!(catalog.versions().windows(2).all(|w| w[0] < w[1]), "versions sorted and unique");
        for patch in 0..=22 {
            assert!(catalog.contains(&MosquittoVersion::new(2, 0, patch)), "2.0.{patch}");
        }
        for patch in 0..=2 {
            assert!(catalog.contains(&MosquittoVersion::new(2, 1, patch)), "2.1.{patch}");
        }
        assert!(!catalog.contains(&v("2.0.23")), "2.0.23 is not tagged");
        let mut sorted = catalog.versions().to_vec();
        sorted.sort();
        assert_eq!(sorted, catalog.versions());
    }

    #[test]
    fn builtin_entries_are_consistent() {
        let catalog = Catalog::builtin();
        for cve in catalog.cves() {
            assert!(catalog.contains(&cve.fixed_in), "{}", cve.id);
            assert!(cve.id.starts_with("CVE-") || cve.id.starts_with("MOSQ-"), "{}", cve.id);
            if cve.id.starts_with("MOSQ-") {
                assert_eq!(cve.severity, CveSeverity::Unknown, "{}: no NVD score without a CVE", cve.id);
            } else {
                assert_ne!(cve.severity, CveSeverity::Unknown, "{}: every catalogued CVE has an NVD score", cve.id);
            }
            assert!(!cve.affects(&cve.fixed_in), "{}", cve.id);
        }
        assert_eq!(catalog.cve("CVE-2024-10525").unwrap().severity, CveSeverity::Critical);
        assert_eq!(catalog.cve("CVE-2024-8376").unwrap().severity, CveSeverity::High);
        assert_eq!(catalog.cve("CVE-2021-34434").unwrap().severity, CveSeverity::Medium);
    }

    #[test]
    fn known_cves_of_2_0_15_versus_2_0_22() {
        let catalog = Catalog::builtin();
        let old = catalog.known_cves(&v("2.0.15"));
        assert_eq!(
            ids(&old),
            [
                "CVE-2023-0809",
                "CVE-2023-28366",
                "CVE-2023-3592",
                "CVE-2024-10525",
                "CVE-2024-3935",
                "CVE-2024-8376",
                "MOSQ-2025-SUBSCRIBE-LEAK"
            ]
        );
        // Most severe first, then by fixing release.
        assert_eq!(old[0].id, "CVE-2024-10525");
        assert!(old.windows(2).all(|w| (w[0].severity, w[0].fixed_in) <= (w[1].severity, w[1].fixed_in)));
        // Fixed in 2.0.15 itself or earlier: not reported.
        assert!(old.iter().all(|c| c.id != "MOSQ-2022-DYNSEC-ANON-GROUP" && c.id != "CVE-2021-34434"));

        assert!(catalog.known_cves(&v("2.0.22")).is_empty());
        assert!(catalog.known_cves(&v("2.0.21")).is_empty(), "2.0.21 is the first 2.0 release with no entry");
        assert_eq!(ids(&catalog.known_cves(&v("2.0.20"))), ["CVE-2023-28366", "MOSQ-2025-SUBSCRIBE-LEAK"]);
        assert!(catalog.known_cves(&v("2.1.0")).is_empty());
        assert!(catalog.known_cves(&v("2.1.2")).is_empty());

        let status = old[0].to_known_cve();
        assert_eq!(
            (status.id.as_str(), status.severity.as_str(), status.fixed_in.as_str()),
            ("CVE-2024-10525", "critical", "2.0.19")
        );
    }

    #[test]
    fn introduced_in_and_backports_limit_what_is_reported() {
        let catalog = Catalog::builtin();
        // CVE-2021-28166 exists only since 2.0.0.
        assert!(catalog.known_cves(&v("1.6.6")).iter().all(|c| c.id != "CVE-2021-28166"));
        assert!(catalog.known_cves(&v("2.0.9")).iter().any(|c| c.id == "CVE-2021-28166"));
        // CVE-2019-11779 was fixed in 1.6.6 and backported to 1.5.9.
        assert!(catalog.known_cves(&v("1.5.8")).iter().any(|c| c.id == "CVE-2019-11779"));
        assert!(catalog.known_cves(&v("1.5.9")).iter().all(|c| c.id != "CVE-2019-11779"));
        assert!(catalog.known_cves(&v("1.6.5")).iter().any(|c| c.id == "CVE-2019-11779"));
        // An unlisted version is judged by its number.
        assert!(catalog.known_cves(&v("2.0.23")).is_empty());
    }

    #[test]
    fn autopatch_stays_in_its_minor_line_and_never_downgrades() {
        let catalog = Catalog::builtin();
        let cases: &[(&str, Option<&str>)] = &[
            ("2.0.0", Some("2.0.22")),
            ("2.0.15", Some("2.0.22")),
            ("2.0.18", Some("2.0.22")),
            ("2.0.20", Some("2.0.22")),
            ("2.0.21", None), // nothing known to fix
            ("2.0.22", None),
            ("2.0.23", None), // newer than the catalog: never a downgrade to 2.0.22
            ("2.1.0", None),  // no known CVEs in 2.1
            ("2.1.2", None),
            ("1.5.7", Some("1.5.9")), // backport of CVE-2019-11779 in its own line
            ("1.6.5", Some("1.6.6")),
            ("1.6.6", None), // vulnerable, but no newer 1.6 release in the catalog: not 2.0
            ("1.4.11", Some("1.4.15")),
            ("3.0.0", None),
        ];
        for (current, want) in cases {
            let got = catalog.patch_target(&v(current));
            assert_eq!(got, want.map(v), "patch_target({current})");
        }
        // Property over every catalogued version: same line, strictly newer, fixes something.
        for current in catalog.versions() {
            if let Some(target) = catalog.patch_target(current) {
                assert!(target.same_line(current), "{current} -> {target}");
                assert!(target > *current, "{current} -> {target}");
                assert!(catalog.known_cves(current).iter().any(|c| c.is_fixed_in(&target)));
            } else {
                let newest_in_line = catalog.versions().iter().rev().find(|n| n.same_line(current)).unwrap();
                let known = catalog.known_cves(current);
                assert!(
                    known.is_empty()
                        || newest_in_line == current
                        || known.iter().all(|c| !c.is_fixed_in(newest_in_line)),
                    "{current}: no target although {newest_in_line} fixes a known CVE"
                );
            }
        }
    }

    #[test]
    fn override_adds_and_replaces_entries() {
        let base = Catalog::builtin();
        let overlay = r#"
versions: [2.1.3]
cves:
  - id: CVE-2026-0001
    severity: high
    fixedIn: 2.1.3
    introducedIn: 2.1.0
    summary: Something bad in 2.1
  - id: CVE-2024-8376
    severity: critical
    fixedIn: 2.0.19
    summary: Re-rated by the operator
"#;
        let merged = base.merge_yaml(overlay).expect("overlay referring to built-in versions is valid");
        assert!(merged.contains(&v("2.1.3")));
        assert_eq!(ids(&merged.known_cves(&v("2.1.2"))), ["CVE-2026-0001"]);
        assert_eq!(merged.patch_target(&v("2.1.2")), Some(v("2.1.3")));
        let replaced = merged.cve("CVE-2024-8376").unwrap();
        assert_eq!((replaced.severity, replaced.summary.as_str()), (CveSeverity::Critical, "Re-rated by the operator"));
        assert_eq!(merged.cves().len(), base.cves().len() + 1);
        // The built-in catalog is untouched.
        assert_eq!(base.cve("CVE-2024-8376").unwrap().severity, CveSeverity::High);
        assert!(base.known_cves(&v("2.1.2")).is_empty());

        // `merge` with a self-contained parsed overlay gives the same result.
        let standalone = Catalog::parse(
            "versions: [2.0.19, 2.1.3]\ncves:\n  - {id: CVE-2026-0001, severity: high, fixedIn: 2.1.3, introducedIn: 2.1.0, summary: Something bad in 2.1}\n  - {id: CVE-2024-8376, severity: critical, fixedIn: 2.0.19, summary: Re-rated by the operator}\n",
        )
        .unwrap();
        assert_eq!(base.merge(&standalone), merged);
        // An empty override changes nothing.
        assert_eq!(&base.merge_yaml("# nothing yet\n").unwrap(), base);
    }

    #[test]
    fn broken_override_is_a_descriptive_error() {
        let base = Catalog::builtin();
        let cases: &[(&str, &[&str])] = &[
            ("versions: [2.1.3\n", &["catalog format", "line 2 column 1"]),
            ("- 2.1.3\n", &["catalog format", "expected a catalog: a mapping with `versions` and `cves`"]),
            ("version: [2.1.3]\n", &["unknown field `version`"]),
            (
                "cves:\n  - id: CVE-1\n    severity: high\n    fixedin: 2.0.1\n    summary: x\n",
                &["unknown field `fixedin`"],
            ),
            ("cves:\n  - id: CVE-1\n    severity: high\n    fixedIn: 2.0.1\n", &["missing field `summary`"]),
            ("versions: [2.1]\n", &["versions[0]", "\"2.1\"", "MAJOR.MINOR.PATCH"]),
            ("versions: [2.1.3, 2.1.3]\n", &["versions[1]: 2.1.3 is listed twice"]),
            (
                "cves:\n  - {id: CVE-2026-1, severity: severe, fixedIn: 2.0.1, summary: x}\n",
                &["cves[0] (CVE-2026-1)", "invalid severity \"severe\"", "critical, high, medium, low, unknown"],
            ),
            (
                "cves:\n  - {id: CVE-2026-1, severity: high, fixedIn: 9.9.9, summary: x}\n",
                &["cves[0] (CVE-2026-1): fixedIn 9.9.9 is not listed under versions"],
            ),
            (
                "cves:\n  - {id: CVE-2026-1, severity: high, fixedIn: 2.0.5, introducedIn: 2.0.9, summary: x}\n",
                &["introducedIn 2.0.9 must be before fixedIn 2.0.5"],
            ),
            (
                "cves:\n  - {id: CVE-2026-1, severity: high, fixedIn: 2.0.5, summary: x}\n  - {id: CVE-2026-1, severity: low, fixedIn: 2.0.6, summary: y}\n",
                &["cves[1] (CVE-2026-1): id CVE-2026-1 is used by more than one entry"],
            ),
        ];
        for (yaml, needles) in cases {
            let err = base.merge_yaml(yaml).expect_err(yaml).to_string();
            for needle in *needles {
                assert!(err.contains(needle), "error for {yaml:?} should contain {needle:?}: {err}");
            }
        }
        // Several problems are reported together.
        let err =
            Catalog::parse("versions: [2.0.1, x]\ncves:\n  - {id: A, severity: bad, fixedIn: 2.0.2, summary: ''}\n")
                .unwrap_err();
        let CatalogError::Invalid(problems) = &err else { panic!("{err}") };
        assert_eq!(problems.len(), 4, "{err}");
        assert!(err.to_string().starts_with("invalid catalog (4 problems): "), "{err}");
        // Without the base catalog, a CVE must list its fixing version itself.
        assert!(Catalog::parse("cves:\n  - {id: A, severity: low, fixedIn: 2.0.2, summary: s}\n").is_err());
    }
}

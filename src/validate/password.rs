//! Password strength of brought passwords, and what Mosquitto can take at all.

use crate::crd::broker::PasswordPolicy;

/// Mosquitto (and `mosquitto_passwd`) take passwords shorter than this many bytes.
pub const MAX_PASSWORD_BYTES: usize = 65536;

/// Usernames shorter than this are only compared for equality, not searched for inside the
/// password (a one- or two-letter username would otherwise forbid most passwords).
const MIN_USERNAME_FOR_CONTAINS: usize = 3;

/// Well-known passwords (lower case, one per line, sorted), from the usual breach top lists.
const COMMON_PASSWORDS: &str = include_str!("common_passwords.txt");

/// Why a password is refused. The texts are user-facing reasons (they go into status
/// conditions); they never include the password, nor its length or other properties.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum WeakPassword {
    /// Contains NUL, a line break or another control character, which Mosquitto cannot take.
    #[error("the password contains a NUL, line break or other control character, which Mosquitto cannot take")]
    ControlCharacter,
    /// Is 65536 bytes or longer.
    #[error("the password is too long: Mosquitto takes passwords shorter than 65536 bytes")]
    TooLong,
    /// Shorter than `minLength` characters.
    #[error("the password is shorter than the required {min} characters")]
    TooShort {
        /// The policy's `minLength`.
        min: u32,
    },
    /// Equals the username (ignoring case).
    #[error("the password is the username")]
    EqualsUsername,
    /// Contains the username (ignoring case).
    #[error("the password contains the username")]
    ContainsUsername,
    /// Is a well-known common password, possibly with digits or symbols appended.
    #[error("the password is a well-known common password (appending digits or symbols does not help)")]
    Common,
    /// Uses fewer character classes than `minCharacterClasses`.
    #[error(
        "the password uses fewer than the required {min} character classes (lower case, upper case, digits, symbols)"
    )]
    TooFewClasses {
        /// The policy's `minCharacterClasses`.
        min: u32,
    },
    /// Estimated entropy below `minEntropyBits`.
    #[error("the password's estimated strength is below the required {min} bits (make it longer or more varied)")]
    LowEntropy {
        /// The policy's `minEntropyBits`.
        min: u32,
    },
}

/// Checks that Mosquitto can take `password` unchanged: no NUL or other control character
/// (Unicode category Cc, which includes `\n` and `\r`) and fewer than [`MAX_PASSWORD_BYTES`] bytes.
pub fn mosquitto_password(password: &str) -> Result<(), WeakPassword> {
    if password.chars().any(char::is_control) {
        return Err(WeakPassword::ControlCharacter);
    }
    if password.len() >= MAX_PASSWORD_BYTES {
        return Err(WeakPassword::TooLong);
    }
    Ok(())
}

/// Checks a brought password against the broker's `passwords` policy, in this order: characters
/// Mosquitto cannot take, length ([`PasswordPolicy::min_length`], in characters), the username
/// (equal, or contained when the username has 3 or more characters; ignoring case), the built-in
/// list of common passwords, character classes, and the entropy estimate ([`entropy_bits`]).
pub fn password_strength(password: &str, username: &str, policy: &PasswordPolicy) -> Result<(), WeakPassword> {
    mosquitto_password(password)?;
    if password.chars().count() < policy.min_length as usize {
        return Err(WeakPassword::TooShort { min: policy.min_length });
    }
    let lower = password.to_lowercase();
    let user = username.to_lowercase();
    if !user.is_empty() {
        if lower == user {
            return Err(WeakPassword::EqualsUsername);
        }
        if user.chars().count() >= MIN_USERNAME_FOR_CONTAINS && lower.contains(&user) {
            return Err(WeakPassword::ContainsUsername);
        }
    }
    if is_common_password(password) {
        return Err(WeakPassword::Common);
    }
    if character_classes(password) < policy.min_character_classes {
        return Err(WeakPassword::TooFewClasses { min: policy.min_character_classes });
    }
    if entropy_bits(password) < f64::from(policy.min_entropy_bits) {
        return Err(WeakPassword::LowEntropy { min: policy.min_entropy_bits });
    }
    Ok(())
}

/// True when `password`, lower-cased, is in the built-in list of common passwords, either as is
/// or after stripping trailing digits and symbols (`Password123!` → `password`).
pub fn is_common_password(password: &str) -> bool {
    let lower = password.to_lowercase();
    let stripped = lower.trim_end_matches(|c: char| !c.is_alphabetic());
    let listed = |candidate: &str| COMMON_PASSWORDS.lines().any(|w| w == candidate);
    listed(&lower) || (!stripped.is_empty() && listed(stripped))
}

/// The character classes used: ASCII lower case, ASCII upper case, digits, and symbols
/// (everything else, including non-ASCII characters). From 0 to 4.
pub fn character_classes(password: &str) -> u32 {
    let (lower, upper, digit, symbol) = classes(password);
    [lower, upper, digit, symbol].into_iter().filter(|c| *c).count() as u32
}

/// Estimated entropy in bits: characters × log2(size of the alphabets used), where the alphabets
/// are 26 lower-case letters, 26 upper-case letters, 10 digits and 33 symbols (the printable
/// ASCII punctuation and space; non-ASCII characters count as symbols). An upper bound for
/// human-chosen passwords, which is why the common-password and username checks come first.
pub fn entropy_bits(password: &str) -> f64 {
    let (lower, upper, digit, symbol) = classes(password);
    let alphabet = 26 * u32::from(lower) + 26 * u32::from(upper) + 10 * u32::from(digit) + 33 * u32::from(symbol);
    if alphabet == 0 {
        return 0.0;
    }
    password.chars().count() as f64 * f64::from(alphabet).log2()
}

fn classes(password: &str) -> (bool, bool, bool, bool) {
    let mut c = (false, false, false, false);
    for ch in password.chars() {
        match ch {
            'a'..='z' => c.0 = true,
            'A'..='Z' => c.1 = true,
            '0'..='9' => c.2 = true,
            _ => c.3 = true,
        }
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> PasswordPolicy {
        PasswordPolicy::default() // min 16 characters, 3 classes, 64 bits
    }

    const STRONG: &str = "Tq7#vLm2&xRp9!wZ";

    #[test]
    fn accepts_a_strong_password() {
        assert_eq!(password_strength(STRONG, "alice", &policy()), Ok(()));
        assert_eq!(password_strength("correct-Horse-battery-staple-42", "alice", &policy()), Ok(()));
    }

    #[test]
    fn refuses_what_mosquitto_cannot_take() {
        for bad in [
            "Tq7#vLm2&xRp9!wZ\0",
            "Tq7#vLm2\n&xRp9!wZ",
            "Tq7#vLm2&xRp9!wZ\r",
            "Tq7#\tvLm2&xRp9!wZ",
            "Tq7#\u{85}vLm2&xRp9",
        ] {
            assert_eq!(password_strength(bad, "alice", &policy()), Err(WeakPassword::ControlCharacter), "{bad:?}");
        }
        let long = format!("{STRONG}{}", "x".repeat(MAX_PASSWORD_BYTES - STRONG.len()));
        assert_eq!(long.len(), MAX_PASSWORD_BYTES);
        assert_eq!(password_strength(&long, "alice", &policy()), Err(WeakPassword::TooLong));
        assert_eq!(mosquitto_password(&long[1..]), Ok(()), "65535 bytes is still fine");
    }

    #[test]
    fn refuses_short_passwords() {
        assert_eq!(password_strength("Tq7#vLm2&xRp9!w", "alice", &policy()), Err(WeakPassword::TooShort { min: 16 }));
        assert_eq!(password_strength("", "alice", &policy()), Err(WeakPassword::TooShort { min: 16 }));
        // length counts characters, not bytes
        assert_eq!(password_strength("Ää1#Ää1#Ää1#Ää1", "alice", &policy()), Err(WeakPassword::TooShort { min: 16 }));
    }

    #[test]
    fn refuses_the_username_ignoring_case() {
        let user = "Sensor-Gateway-01";
        assert_eq!(password_strength("sensor-gateway-01", user, &policy()), Err(WeakPassword::EqualsUsername));
        assert_eq!(password_strength("X9#SENSOR-GATEWAY-01!", user, &policy()), Err(WeakPassword::ContainsUsername));
        // short usernames only count when equal
        let mut p = policy();
        p.min_length = 8;
        assert_eq!(password_strength("Tq7#vLm2&xRp9!wZ", "Tq", &p), Ok(()));
        p.min_length = 2;
        p.min_character_classes = 0;
        p.min_entropy_bits = 0;
        assert_eq!(password_strength("tQ", "Tq", &p), Err(WeakPassword::EqualsUsername));
    }

    #[test]
    fn refuses_common_passwords_with_suffixes() {
        let mut p = policy();
        p.min_length = 8;
        p.min_character_classes = 0;
        p.min_entropy_bits = 0;
        for bad in
            ["password", "Password123!", "PASSWORD2024", "qwertyuiop!!", "letmein1", "12345678", "Mosquitto1883#"]
        {
            assert_eq!(password_strength(bad, "alice", &p), Err(WeakPassword::Common), "{bad}");
        }
        assert!(is_common_password("iloveyou"));
        assert!(!is_common_password("password-manager-generated"));
        assert!(!is_common_password("!!!123"), "nothing left after stripping is not a match");
    }

    #[test]
    fn refuses_too_few_character_classes() {
        // 20 lower-case letters: 94 bits, but one class
        assert_eq!(
            password_strength("kqzvtrwplmnbxhgfdsay", "alice", &policy()),
            Err(WeakPassword::TooFewClasses { min: 3 })
        );
        assert_eq!(character_classes("aA1!"), 4);
        assert_eq!(character_classes("aé"), 2, "non-ASCII counts as a symbol");
        assert_eq!(character_classes(""), 0);
    }

    #[test]
    fn refuses_low_entropy() {
        let mut p = policy();
        p.min_entropy_bits = 128;
        // 16 chars from lower+upper+digits+symbols: 16 × log2(95) ≈ 105 bits
        assert_eq!(password_strength(STRONG, "alice", &p), Err(WeakPassword::LowEntropy { min: 128 }));
        assert!((entropy_bits(STRONG) - 16.0 * 95f64.log2()).abs() < 1e-9);
        assert!((entropy_bits("abc") - 3.0 * 26f64.log2()).abs() < 1e-9);
        assert!((entropy_bits("aB3") - 3.0 * 62f64.log2()).abs() < 1e-9);
        assert_eq!(entropy_bits(""), 0.0);
    }

    #[test]
    fn messages_never_contain_the_password() {
        let secret = "Hunter2Hunter2Hunter2";
        let mut p = policy();
        p.min_length = 64;
        let errors = [
            WeakPassword::ControlCharacter,
            WeakPassword::TooLong,
            WeakPassword::TooShort { min: 64 },
            WeakPassword::EqualsUsername,
            WeakPassword::ContainsUsername,
            WeakPassword::Common,
            WeakPassword::TooFewClasses { min: 3 },
            WeakPassword::LowEntropy { min: 64 },
        ];
        let actual = password_strength(secret, "x", &p).unwrap_err();
        for e in errors.iter().chain([&actual]) {
            let text = e.to_string();
            assert!(!text.to_lowercase().contains("hunter"), "{text}");
            assert!(!text.contains("21"), "must not leak the length: {text}");
        }
    }

    #[test]
    fn built_in_list_is_large_sorted_lower_case_and_unique() {
        let words: Vec<&str> = COMMON_PASSWORDS.lines().collect();
        assert!(words.len() >= 300, "{}", words.len());
        assert!(words.windows(2).all(|w| w[0] < w[1]), "sorted and unique");
        assert!(words.iter().all(|w| !w.is_empty() && *w == w.to_lowercase() && !w.contains(' ')));
    }
}

//! ACL topic filters.

use crate::crd::acl::AclAccess;

use super::describe_char;

/// Longest topic filter (characters) an `MqttAcl` rule may hold.
pub const MAX_TOPIC_CHARS: usize = 1024;

/// Checks an ACL topic filter exactly as the apiserver does for an `MqttAcl` rule:
///
/// * 1 to [`MAX_TOPIC_CHARS`] characters and [`crate::crd::acl::TOPIC_FILTER_PATTERN`]: levels
///   separated by `/`, none empty; `+` alone in its level; `#` alone in the last level; no
///   whitespace, control characters (C0, DEL, C1);
/// * `%u` / `%c` only in rules of an ACL with `allUsers: true` (`all_users`), and there `%` only as
///   a whole level `%u` or `%c`;
/// * topics starting with `$` only as `$SYS/...` with access `Read` or `Deny`.
///
/// A topic that passes can never change the structure of a Mosquitto ACL line: it has no
/// whitespace to split on, no line break, and passes Mosquitto's `mosquitto_sub_topic_check`.
pub fn topic_filter(topic: &str, all_users: bool, access: AclAccess) -> Result<(), String> {
    if topic.is_empty() {
        return Err("topic must not be empty".into());
    }
    if topic.chars().count() > MAX_TOPIC_CHARS {
        return Err(format!("topic is longer than {MAX_TOPIC_CHARS} characters"));
    }
    if let Some(c) = topic.chars().find(|c| (*c as u32) <= 0x20 || (0x7f..=0x9f).contains(&(*c as u32))) {
        return Err(format!("topic must not contain {} (no whitespace or control characters)", describe_char(c)));
    }
    pattern_levels(topic)?;
    percent_rules(topic, all_users)?;
    if topic.starts_with('$') && !(topic.starts_with("$SYS/") && matches!(access, AclAccess::Read | AclAccess::Deny)) {
        return Err("topics starting with $ are only allowed as $SYS/... with access Read or Deny".into());
    }
    Ok(())
}

/// The level structure of `TOPIC_FILTER_PATTERN` (characters are checked by the caller):
/// `^(#|(\+|L+)(/(\+|L+))*(/#)?)$` where `L` is any character but `+`, `#`, `/`.
fn pattern_levels(topic: &str) -> Result<(), String> {
    if topic.starts_with('/') {
        return Err("topic must not start with '/' (that would be an empty first level)".into());
    }
    if topic.ends_with('/') {
        return Err("topic must not end with '/' (that would be an empty last level)".into());
    }
    if topic.contains("//") {
        return Err("topic must not contain '//' (an empty level)".into());
    }
    let levels: Vec<&str> = topic.split('/').collect();
    let last = levels.len() - 1;
    for (i, level) in levels.iter().enumerate() {
        match *level {
            "+" => {}
            "#" if i == last => {}
            "#" => return Err("'#' must be the last level (e.g. a/#, not a/#/b)".into()),
            l if l.contains('#') => return Err("'#' must be alone in its level (e.g. a/#, not a#)".into()),
            l if l.contains('+') => return Err("'+' must be alone in its level (e.g. a/+/b, not a+)".into()),
            _ => {}
        }
    }
    Ok(())
}

/// The MqttAcl CEL rules on `%`: without `allUsers`, no `%u` or `%c` anywhere (they would be
/// literal text in a `topic` line); with `allUsers`, every `%` is a whole level `%u` or `%c`
/// (CEL `!topic.matches('[^/]%|%([^uc]|$)|%[uc][^/]')`).
fn percent_rules(topic: &str, all_users: bool) -> Result<(), String> {
    if !all_users {
        if topic.contains("%u") || topic.contains("%c") {
            return Err("%u and %c are only allowed in rules of an ACL with allUsers: true".into());
        }
        return Ok(());
    }
    let b = topic.as_bytes();
    for (i, _) in topic.match_indices('%') {
        let after_slash_or_start = i == 0 || b[i - 1] == b'/';
        let u_or_c = matches!(b.get(i + 1), Some(b'u' | b'c'));
        let level_ends = matches!(b.get(i + 2), None | Some(b'/'));
        if !(after_slash_or_start && u_or_c && level_ends) {
            return Err("in allUsers rules, % may only appear as a whole topic level %u or %c".into());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use AclAccess::*;

    #[test]
    fn accepts_valid_filters() {
        for ok in [
            "#",
            "+",
            "a",
            "a/b/c",
            "a/+/c",
            "a/#",
            "+/+/#",
            "sensors/ünïcödé/€",
            "a%b",
            "x/y.z-1_2@3",
            &"a".repeat(1024),
        ] {
            assert_eq!(topic_filter(ok, false, ReadWrite), Ok(()), "{ok}");
        }
        assert_eq!(topic_filter(&"é".repeat(1024), false, Read), Ok(()), "the limit counts characters, not bytes");
    }

    #[test]
    fn rejects_hostile_filters_with_clear_messages() {
        let cases = [
            ("", "empty"),
            ("a\nb", "line break"),
            ("a\rb", "line break"),
            ("a\n", "line break"),
            ("a\0b", "NUL"),
            ("a b", "space"),
            (" a", "space"),
            ("a\tb", "tab"),
            ("a\x7fb", "U+007F"),
            ("a\u{85}b", "U+0085"),
            ("a\x1bb", "U+001B"),
            ("a/#/b", "last level"),
            ("#/a", "last level"),
            ("a+", "'+' must be alone"),
            ("+a/b", "'+' must be alone"),
            ("a/b+/c", "'+' must be alone"),
            ("#x", "'#' must be alone"),
            ("a#", "'#' must be alone"),
            ("a/b#", "'#' must be alone"),
            ("a//b", "'//'"),
            ("/a", "start with '/'"),
            ("a/", "end with '/'"),
            ("/", "start with '/'"),
            ("//", "start with '/'"),
        ];
        for (bad, needle) in cases {
            let err = topic_filter(bad, false, ReadWrite).expect_err(bad);
            assert!(err.contains(needle), "{bad:?}: {err}");
        }
        assert!(topic_filter(&"a".repeat(1025), false, Read).unwrap_err().contains("1024"));
    }

    #[test]
    fn percent_u_and_c_only_in_all_users_acls() {
        for t in ["devices/%u", "devices/%c/#", "x%uy", "%c"] {
            assert!(topic_filter(t, false, Read).unwrap_err().contains("allUsers"), "{t}");
        }
        assert_eq!(topic_filter("a%b", false, Read), Ok(()), "a literal % is fine in a topic line");
        assert_eq!(topic_filter("a/50%", false, Read), Ok(()));
    }

    #[test]
    fn percent_must_be_a_whole_level_in_all_users_acls() {
        for ok in ["%u", "%c", "devices/%u", "devices/%u/#", "%u/%c", "a/%c/b", "a/+/%u"] {
            assert_eq!(topic_filter(ok, true, ReadWrite), Ok(()), "{ok}");
        }
        for bad in ["x%u", "%ux", "%u%c", "a/%x", "a/%", "%", "%%u", "a/50%", "a%b", "%U", "dev/%uc"] {
            let err = topic_filter(bad, true, ReadWrite).expect_err(bad);
            assert!(err.contains("whole topic level"), "{bad}: {err}");
        }
    }

    #[test]
    fn dollar_topics_only_sys_with_read_or_deny() {
        assert_eq!(topic_filter("$SYS/broker/uptime", false, Read), Ok(()));
        assert_eq!(topic_filter("$SYS/#", false, Deny), Ok(()));
        assert_eq!(topic_filter("$SYS/#", true, Read), Ok(()));
        for (t, access) in [
            ("$SYS/#", Write),
            ("$SYS/#", ReadWrite),
            ("$SYS", Read),
            ("$share/g/a", Read),
            ("$CONTROL/dynamic-security/v1", Read),
            ("$sys/x", Read),
        ] {
            assert!(topic_filter(t, false, access).unwrap_err().contains("$SYS"), "{t} {access:?}");
        }
        // a $ elsewhere than at the start is an ordinary character
        assert_eq!(topic_filter("a/$b", false, Write), Ok(()));
    }

    /// An independent matcher for `TOPIC_FILTER_PATTERN`, written as the character-by-character
    /// automaton of the regex, to cross-check the level-based implementation.
    fn regex_automaton(s: &str) -> bool {
        #[derive(Clone, Copy, PartialEq)]
        enum St {
            Start, // at the start of a level
            Plus,  // a level that is exactly '+'
            Word,  // inside a level of ordinary characters
            Hash,  // read '#' as a whole level: must be the end
        }
        let mut st = St::Start;
        let mut at_begin = true;
        for c in s.chars() {
            let ordinary = !matches!(c, '+' | '#' | '/') && c as u32 > 0x20 && !(0x7f..=0x9f).contains(&(c as u32));
            st = match (st, c) {
                (St::Start, '+') => St::Plus,
                (St::Start, '#') => St::Hash,
                (St::Start, _) if ordinary => St::Word,
                (St::Word, _) if ordinary => St::Word,
                (St::Plus | St::Word, '/') => St::Start,
                _ => return false,
            };
            at_begin = false;
        }
        !at_begin && st != St::Start
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2000))]
        #[test]
        fn level_checker_agrees_with_the_pattern_automaton(s in "[a+#/ \n\0%é$]{0,8}") {
            // the character rule and the level structure are TOPIC_FILTER_PATTERN; % and $ are CEL
            let chars_ok = !s.is_empty() && !s.chars().any(|c| (c as u32) <= 0x20 || (0x7f..=0x9f).contains(&(c as u32)));
            let ours = chars_ok && pattern_levels(&s).is_ok();
            proptest::prop_assert_eq!(ours, regex_automaton(&s), "{:?}", s);
            if topic_filter(&s, true, AclAccess::Deny).is_ok() {
                proptest::prop_assert!(ours);
            }
        }
    }
}

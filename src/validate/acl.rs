//! `MqttAcl` specs.

use crate::crd::acl::MqttAclSpec;

use super::{FieldError, broker_ref, topic_filter, username};

/// Most users an `MqttAcl` may list.
const MAX_USERS: usize = 256;
/// Most rules an `MqttAcl` may hold.
const MAX_RULES: usize = 256;

/// Validates an `MqttAcl` spec as the apiserver does: list sizes, every username, the
/// `users` xor `allUsers` rule, and every rule's topic (see [`topic_filter`]).
pub fn acl_spec(spec: &MqttAclSpec) -> Result<(), FieldError> {
    broker_ref(&spec.broker_ref.name)?;
    if spec.users.len() > MAX_USERS {
        return Err(FieldError::new("spec.users", format!("at most {MAX_USERS} users")));
    }
    for (i, user) in spec.users.iter().enumerate() {
        username(user).map_err(|m| FieldError::new(format!("spec.users[{i}]"), m))?;
    }
    if spec.rules.is_empty() || spec.rules.len() > MAX_RULES {
        return Err(FieldError::new("spec.rules", format!("must hold 1 to {MAX_RULES} rules")));
    }
    // CEL: allUsers != (users non-empty); it fails when both or neither are set
    let has_users = !spec.users.is_empty();
    if spec.all_users == has_users {
        return Err(FieldError::new("spec", "set either users (non-empty) or allUsers: true"));
    }
    for (i, rule) in spec.rules.iter().enumerate() {
        topic_filter(&rule.topic, spec.all_users, rule.access)
            .map_err(|m| FieldError::new(format!("spec.rules[{i}].topic"), m))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::acl::{AclAccess, AclRule};
    use crate::crd::common::BrokerRef;

    fn rule(topic: &str, access: AclAccess) -> AclRule {
        AclRule { topic: topic.into(), access }
    }

    fn spec(users: &[&str], all_users: bool, rules: Vec<AclRule>) -> MqttAclSpec {
        MqttAclSpec {
            broker_ref: BrokerRef { name: "prod".into() },
            users: users.iter().map(|u| u.to_string()).collect(),
            all_users,
            rules,
        }
    }

    #[test]
    fn accepts_user_and_all_users_acls() {
        assert_eq!(acl_spec(&spec(&["alice", "bob"], false, vec![rule("a/#", AclAccess::Read)])), Ok(()));
        assert_eq!(acl_spec(&spec(&[], true, vec![rule("devices/%u/#", AclAccess::ReadWrite)])), Ok(()));
    }

    #[test]
    fn users_xor_all_users() {
        let e = acl_spec(&spec(&[], false, vec![rule("a", AclAccess::Read)])).unwrap_err();
        assert_eq!(e.field, "spec");
        assert!(e.message.contains("either users"));
        let e = acl_spec(&spec(&["alice"], true, vec![rule("a", AclAccess::Read)])).unwrap_err();
        assert_eq!(e.field, "spec");
    }

    #[test]
    fn names_the_offending_rule_and_user() {
        let rules = vec![rule("a", AclAccess::Read), rule("b", AclAccess::Read), rule("a/#/b", AclAccess::Read)];
        let e = acl_spec(&spec(&["alice"], false, rules)).unwrap_err();
        assert_eq!(e.field, "spec.rules[2].topic");
        assert!(e.to_string().starts_with("spec.rules[2].topic: '#' must be the last level"), "{e}");

        let e = acl_spec(&spec(&["alice", "mallory\ntopic readwrite #"], false, vec![rule("a", AclAccess::Read)]))
            .unwrap_err();
        assert_eq!(e.field, "spec.users[1]");
        assert!(!e.to_string().contains('\n'));

        let e = acl_spec(&spec(&["alice"], false, vec![rule("devices/%u", AclAccess::Read)])).unwrap_err();
        assert_eq!(e.field, "spec.rules[0].topic");
        assert!(e.message.contains("allUsers"));

        let e = acl_spec(&spec(&["alice"], false, vec![rule("$SYS/#", AclAccess::Write)])).unwrap_err();
        assert_eq!(e.field, "spec.rules[0].topic");
    }

    #[test]
    fn list_sizes() {
        assert_eq!(acl_spec(&spec(&["alice"], false, vec![])).unwrap_err().field, "spec.rules");
        let many: Vec<AclRule> = (0..257).map(|i| rule(&format!("t/{i}"), AclAccess::Read)).collect();
        assert_eq!(acl_spec(&spec(&["alice"], false, many)).unwrap_err().field, "spec.rules");
        let users: Vec<String> = (0..257).map(|i| format!("u{i}")).collect();
        let users: Vec<&str> = users.iter().map(String::as_str).collect();
        assert_eq!(acl_spec(&spec(&users, false, vec![rule("a", AclAccess::Read)])).unwrap_err().field, "spec.users");
    }
}

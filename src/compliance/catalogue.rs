//! The check catalogue: stable ids, measure, severity and remediation of every check.

use crate::crd::{Measure, Severity};

/// Definition of one check.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CheckDef {
    /// Stable identifier (never reused for another meaning).
    pub id: &'static str,
    /// Security measure.
    pub measure: Measure,
    /// Severity when failing.
    pub severity: Severity,
    /// What the check verifies.
    pub title: &'static str,
    /// How to fix a failure.
    pub remediation: &'static str,
}

use Measure::*;
use Severity::*;

macro_rules! checks {
    ($( $id:literal, $m:expr, $s:expr, $title:literal, $fix:literal; )*) => {
        /// Every check moat evaluates.
        pub const CATALOGUE: &[CheckDef] = &[ $( CheckDef { id: $id, measure: $m, severity: $s, title: $title, remediation: $fix } ),* ];
    };
}

checks! {
    // broker: authentication
    "MOAT-AUTH-001", Authentication, Critical, "Anonymous access is disabled",
        "moat always renders allow_anonymous false; if this fails the applied config Secret was changed outside moat — let moat repair it and find who changed it.";
    "MOAT-AUTH-002", Authentication, Critical, "Every listener requires a password or a client certificate",
        "Keep authentication on every listener (Password or Certificate); never add listeners outside moat.";
    "MOAT-AUTH-003", Authentication, Critical, "An anonymous MQTT CONNECT is refused (active probe)",
        "The live broker accepted a client without credentials: check that its pods run moat's config and restart them.";
    "MOAT-AUTH-004", Authentication, Medium, "Client ids are bound to usernames",
        "Set spec.security.useUsernameAsClientId: true so one user cannot take over another user's session.";
    "MOAT-AUTH-005", Authentication, High, "Revocations reach every broker pod within spec.security.revocationDeadline (attested by the pods' agents)",
        "A removed user, changed password or revoked certificate was still accepted by a broker pod past the deadline: check the pods' agents (kubectl logs <pod> -c moat-agent), that the kubelet refreshes Secret volumes, and that the operator reaches the agents (NetworkPolicy <broker>-moat-probe).";
    "MOAT-AUTH-006", Authentication, Critical, "A client certificate from a foreign CA claiming a user's name is refused on every certificate listener (active probe)",
        "The live broker accepted a certificate moat did not issue: its cafile trusts another CA. Let moat repair the config and TLS Secrets, check that the pods run them (status.files), and revoke whatever that CA issued.";
    "MOAT-AUTH-007", Authentication, High, "One user cannot take over another user's session by its client id (active probe, moat's canary logins)",
        "The live broker ended a user's session when another user connected with its client id: set spec.security.useUsernameAsClientId: true (MOAT-AUTH-004) and check that the pods run the files moat wrote (status.files).";
    // broker: encryption
    "MOAT-TLS-001", Encryption, High, "Every listener uses TLS",
        "Remove insecurePlaintext listeners; use TLS listeners (the default) and moat-issued certificates.";
    "MOAT-TLS-002", Encryption, High, "Every TLS listener requires TLS 1.2 or newer",
        "Set listeners[].tls.minVersion to 1.2 or 1.3; moat renders tls_version explicitly.";
    "MOAT-TLS-003", Encryption, High, "The server certificate is valid, covers the Service names and is not overdue for renewal",
        "moat renews it automatically; if it stays failing, look at the broker's Events and the operator's logs for issuance errors.";
    "MOAT-TLS-004", Encryption, High, "The CA is valid and rolled over before it expires",
        "moat rolls the CA over with trust overlap automatically; make sure spec.tls.ca.renewBefore leaves time for clients to pick up the new bundle.";
    "MOAT-TLS-005", Encryption, High, "The live broker refuses TLS 1.0/1.1 and plaintext MQTT on every TLS port, and serves a certificate its published trust bundle verifies (active probe)",
        "The running broker does not serve what moat rendered: check that the agent installed the files (its logs) and that the pods are up to date.";
    "MOAT-TLS-006", Encryption, Medium, "Certificate listeners check revocations (CRL)",
        "Certificate listeners must be MQTT listeners with a crlfile so deleted users' certificates are refused (Mosquitto loads no CRL on WebSockets listeners); let moat render the listener.";
    "MOAT-TLS-008", Encryption, Critical, "A revoked certificate (moat's canary) is refused on every certificate listener (active probe)",
        "The live broker accepted a certificate moat revoked: revocation is not enforced there. Check that the listener is an MQTT listener with a crlfile (MOAT-TLS-006), that the pods run the files moat wrote (MOAT-AUD-003, status.files), and that the CRL is current (MOAT-TLS-007).";
    "MOAT-TLS-007", Encryption, High, "The CRL is current (not within a day of its nextUpdate)",
        "moat re-signs the CRL two days before it expires; if this fails the operator is not running or cannot write the broker's TLS Secret: restore it before the CRL expires, or every client certificate is refused.";
    // broker: acl
    "MOAT-ACL-001", Acl, Critical, "An ACL file is configured and valid (default deny)",
        "moat always configures acl_file; Mosquitto without one allows every topic. Let moat repair the config and ACL Secrets.";
    "MOAT-ACL-002", Acl, High, "No rule grants write access to '#'",
        "Replace write/readwrite on '#' with the narrowest topic prefix each user needs.";
    "MOAT-ACL-003", Acl, Medium, "$SYS is not granted broadly",
        "Grant only the $SYS topics a monitor needs (e.g. $SYS/broker/uptime), never $SYS/#.";
    "MOAT-ACL-004", Acl, Low, "Every MqttAcl of the broker is valid and in effect",
        "Fix the ACLs listed (kubectl get mqacl, status.conditions) or create the users they name.";
    "MOAT-ACL-005", Acl, High, "A login in no ACL can publish and read only what the rules for all users grant it (active probe, moat's canary login)",
        "The live broker let an identity without grants publish or receive messages beyond the allUsers rules: it does not enforce moat's ACL file. Check that the pods run the files moat wrote (status.files, MOAT-AUD-003) and that mosquitto.conf sets acl_file (MOAT-ACL-001); restart a pod that does not.";
    // broker: configuration
    "MOAT-CFG-001", Configuration, High, "Broker containers run as non-root uid/gid 1883",
        "Do not edit the broker StatefulSet: moat repairs it. Remove admission mutations that change runAsUser/runAsNonRoot.";
    "MOAT-CFG-002", Configuration, High, "Read-only root filesystem, no privilege escalation",
        "Do not edit the broker StatefulSet: moat repairs it. Remove mutations that set readOnlyRootFilesystem false or allowPrivilegeEscalation true.";
    "MOAT-CFG-003", Configuration, High, "All capabilities dropped, seccomp RuntimeDefault",
        "Do not edit the broker StatefulSet: moat repairs it. Remove mutations that add capabilities or change the seccomp profile.";
    "MOAT-CFG-004", Configuration, Medium, "No service account token in broker pods",
        "Keep automountServiceAccountToken false on the broker pods; the broker needs no API access.";
    "MOAT-CFG-005", Configuration, Medium, "Protocol limits are set",
        "Keep spec.limits (max packet size, message size, connections, queues, keepalive) set; moat renders them.";
    "MOAT-CFG-006", Configuration, Low, "Resource requests and a memory limit are set",
        "Set spec.resources requests and a memory limit so one broker cannot starve its node.";
    "MOAT-CFG-008", Configuration, Medium, "The live broker drops a client whose packet exceeds spec.limits.maxPacketSize, before and after login (active probe)",
        "The running broker does not enforce the packet limit moat rendered: check that the pods run the files moat wrote (MOAT-AUD-003, status.files) and restart a pod that does not.";
    "MOAT-CFG-007", Configuration, Medium, "The Service exposes only the broker's listeners",
        "Do not add ports to the broker Service; add listeners to spec.listeners instead.";
    // broker: firewall
    "MOAT-FW-001", Firewall, High, "A default-deny NetworkPolicy isolates the broker pods",
        "moat recreates <broker>-default-deny; delete (or narrow the podSelector of) other NetworkPolicies that select the broker pods and admit ingress — use an MqttFirewall instead; make sure your CNI enforces NetworkPolicies.";
    "MOAT-FW-002", Firewall, High, "No firewall opens the broker to the public internet",
        "Replace public CIDRs with the networks that need access and drop allowPublicInternet.";
    "MOAT-FW-003", Firewall, High, "A LoadBalancer Service only admits the firewall's CIDRs",
        "Create an MqttFirewall with CIDR peers for the broker; moat copies them into loadBalancerSourceRanges and only then exposes the LoadBalancer.";
    "MOAT-FW-004", Firewall, High, "The network refuses a TCP connection to every listener from a namespace no MqttFirewall admits (active probe, moat's outsider)",
        "If the outsider got in: delete the NetworkPolicy that admits it (MOAT-FW-001 names policies not made by moat) and make sure the nodes' CNI enforces NetworkPolicies. If Unknown: install the chart with outsider.enabled (a Ready outsider pod) and keep its namespace out of every MqttFirewall.";
    // broker: monitoring
    "MOAT-MON-001", Monitoring, Medium, "Connections are logged",
        "Set spec.logging.connectionMessages: true (the default).";
    "MOAT-MON-002", Monitoring, Low, "Refused logins are logged",
        "Include notice (or information) in spec.logging.types.";
    // broker: passwords (aggregated from users)
    "MOAT-PWD-001", Passwords, High, "Every password is generated or satisfies the policy",
        "Fix or replace the listed users' passwords (or drop secretRef to let moat generate one).";
    "MOAT-PWD-002", Passwords, High, "No password is shared between users",
        "Give every user its own password (generated passwords never collide).";
    "MOAT-PWD-003", Passwords, Medium, "Passwords are rotated within rotateAfter",
        "Rotate the listed brought passwords in their Secrets (generated ones rotate automatically).";
    // broker: audit
    "MOAT-AUD-001", Audit, Low, "Audits run on schedule",
        "The operator was not running or not leading for more than two audit intervals; check its Deployment and Lease.";
    "MOAT-AUD-002", Audit, Medium, "Managed objects match what moat applied (no drift)",
        "Someone changed objects moat manages; moat repaired them — find the actor in the audit log and stop the change at its source.";
    "MOAT-AUD-003", Audit, High, "Every broker pod runs the files moat wrote, within spec.security.revocationDeadline (attested by the pods' agents)",
        "A pod refuses the files (its agent logs why; the previous files stay in force) or still runs older ones: read kubectl logs <pod> -c moat-agent, and check that the operator reaches the agent's status port (NetworkPolicy <broker>-moat-probe).";
    // broker: updates
    "MOAT-UPD-001", Updates, High, "The running Mosquitto version has no known CVEs",
        "Upgrade spec.version to the patched version, or set spec.upgrade.policy: AutoPatch with a maintenance window.";
    "MOAT-UPD-002", Updates, Medium, "No failed or stuck upgrade",
        "Read status.upgrade.message and the broker Events, fix the cause, then set spec.version again.";
    // broker: awareness
    "MOAT-AWR-001", Awareness, Low, "Every failed check carries remediation and a guide link",
        "Report this as a moat bug: every check must explain how to fix it.";
    // user
    "MOAT-USR-001", Passwords, High, "The password is generated or satisfies the broker's policy",
        "Put a stronger password in the referenced Secret (longer, more character classes, not common, not containing the username) or drop secretRef.";
    "MOAT-USR-002", Passwords, Medium, "The password is within rotateAfter",
        "Rotate the password in the referenced Secret (or annotate the user with mqtt.moat.dev/rotate-password for a generated one).";
    "MOAT-USR-003", Passwords, High, "No other user of the broker has the same password",
        "Give this user its own password.";
    "MOAT-USR-004", Encryption, High, "The client certificate is valid and not overdue for renewal",
        "moat renews client certificates automatically; check the user's Events if this stays failing.";
    "MOAT-USR-005", Authentication, Medium, "The broker has a listener for the user's authentication method",
        "Add a listener with the matching authentication (Password or Certificate) to the broker, or change the user's authentication.";
    // acl
    "MOAT-ACL-101", Acl, High, "No rule grants write access to '#'",
        "Narrow the topic to the prefix the users need.";
    "MOAT-ACL-102", Acl, Medium, "No broad $SYS access",
        "Grant only specific $SYS topics.";
    "MOAT-ACL-103", Acl, Low, "Every listed user exists and is Ready",
        "Create the missing MqttUsers or remove them from spec.users.";
    // firewall
    "MOAT-FW-101", Firewall, High, "No peer covers the public internet",
        "Replace the public CIDR with the client networks that need access.";
    "MOAT-FW-102", Firewall, Medium, "The allow NetworkPolicy is applied as generated",
        "Do not edit <broker>-fw-* NetworkPolicies; change the MqttFirewall instead.";
}

/// The definition of a check id (panics on an unknown id: a programming error caught by tests).
pub fn def(id: &str) -> &'static CheckDef {
    CATALOGUE.iter().find(|d| d.id == id).unwrap_or_else(|| panic!("unknown compliance check {id}"))
}

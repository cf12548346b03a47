//! `kubectl moat`: the kubectl plugin (binary `kubectl-moat`). `status` prints every broker's
//! compliance by measure, `explain` a check, `creds` a ready-to-paste client command for a user.
//! The output is built by pure functions from the objects read; only `run` talks to the cluster.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::IsTerminal;

use anyhow::Context as _;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ListParams};
use kube::{Client, ResourceExt};
use serde::Serialize;

use crate::compliance::guide_link;
use crate::crd::{CheckResult, Measure, MqttBroker, MqttUser};

/// `kubectl moat`: moat's brokers and users from the command line.
#[derive(clap::Parser, Debug)]
#[command(name = "kubectl moat", version, about)]
pub struct PluginArgs {
    /// Kubeconfig file (default: $KUBECONFIG, ~/.kube/config).
    #[arg(long, global = true)]
    pub kubeconfig: Option<std::path::PathBuf>,
    /// Kubeconfig context (default: the current one).
    #[arg(long, global = true)]
    pub context: Option<String>,
    /// Namespace (default: the context's).
    #[arg(short, long, global = true)]
    pub namespace: Option<String>,
    /// Every namespace.
    #[arg(short = 'A', long, global = true)]
    pub all_namespaces: bool,
    #[command(subcommand)]
    pub command: PluginCommand,
}

/// What to print.
#[derive(clap::Subcommand, Debug)]
pub enum PluginCommand {
    /// Every broker's compliance by measure, and its failing checks.
    Status {
        /// Output format.
        #[arg(short, long, value_enum, default_value_t = Output::Table)]
        output: Output,
        /// Colour: auto (on a terminal), always or never.
        #[arg(long, value_enum, default_value_t = Colour::Auto)]
        color: Colour,
    },
    /// What a check verifies, why it matters and how to fix it (no cluster needed).
    Explain {
        /// The check id, e.g. MOAT-TLS-002.
        id: String,
    },
    /// A ready-to-paste mosquitto_sub command for an MqttUser (the password redacted).
    Creds {
        /// The MqttUser.
        user: String,
        /// Print the password instead of a placeholder.
        #[arg(long)]
        show_password: bool,
    },
}

/// `status` output format.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Output {
    /// A table.
    Table,
    /// JSON.
    Json,
}

/// When to colour the table.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Colour {
    /// On a terminal.
    Auto,
    /// Always.
    Always,
    /// Never.
    Never,
}

/// Pass/fail/unknown counts of one measure.
#[derive(Serialize, Default, Clone, Copy, Debug, PartialEq, Eq)]
pub struct Counts {
    /// Checks that passed.
    pub pass: u32,
    /// Checks that failed.
    pub fail: u32,
    /// Checks that could not be evaluated.
    pub unknown: u32,
}

/// A failing (or not evaluated) check.
#[derive(Serialize, Clone, Debug, PartialEq, Eq)]
pub struct Finding {
    /// Check id.
    pub id: String,
    /// Fail or Unknown.
    pub result: String,
    /// What was found.
    pub message: String,
    /// How to fix it.
    pub remediation: String,
}

/// One broker's compliance.
#[derive(Serialize, Clone, Debug, PartialEq, Eq)]
pub struct BrokerRow {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// The Compliant condition (True, False, Unknown; empty before the first audit).
    pub compliant: String,
    /// `passed/total`.
    pub summary: String,
    /// Counts by measure, in guide order.
    pub measures: BTreeMap<String, Counts>,
    /// Checks that did not pass, failures first.
    pub findings: Vec<Finding>,
}

/// A broker's row (pure).
pub fn row(b: &MqttBroker) -> BrokerRow {
    let status = b.status.clone().unwrap_or_default();
    let compliant =
        status.conditions.iter().find(|c| c.type_ == "Compliant").map(|c| c.status.clone()).unwrap_or_default();
    let compliance = status.compliance.unwrap_or_default();
    let mut measures: BTreeMap<String, Counts> = BTreeMap::new();
    let mut findings = vec![];
    for c in &compliance.checks {
        let counts = measures.entry(c.measure.as_str().to_string()).or_default();
        match c.result {
            CheckResult::Pass => counts.pass += 1,
            CheckResult::Fail => counts.fail += 1,
            CheckResult::Unknown => counts.unknown += 1,
        }
        if c.result != CheckResult::Pass {
            findings.push(Finding {
                id: c.id.clone(),
                result: format!("{:?}", c.result),
                message: c.message.clone(),
                remediation: c.remediation.clone(),
            });
        }
    }
    // failures first, then what could not be evaluated
    findings.sort_by_key(|f| f.result != "Fail");
    BrokerRow {
        namespace: b.namespace().unwrap_or_default(),
        name: b.name_any(),
        compliant,
        summary: compliance.summary,
        measures,
        findings,
    }
}

/// Short column headings of the measures.
fn heading(m: Measure) -> &'static str {
    match m {
        Measure::Authentication => "AUTH",
        Measure::Encryption => "TLS",
        Measure::Acl => "ACL",
        Measure::Configuration => "CFG",
        Measure::Firewall => "FW",
        Measure::Monitoring => "MON",
        Measure::Passwords => "PWD",
        Measure::Audit => "AUD",
        Measure::Updates => "UPD",
        Measure::Awareness => "AWR",
    }
}

/// The `status` table (pure): one line per broker, a `passed/total` cell per measure (green when
/// all passed, red with a failure, yellow when only Unknown is missing), then the checks that did
/// not pass with their first remediation sentence.
pub fn table(rows: &[BrokerRow], colour: bool) -> String {
    let paint = |text: String, code: &str| if colour { format!("\x1b[{code}m{text}\x1b[0m") } else { text };
    let mut out = String::new();
    let mut header = format!("{:<20} {:<20} {:<10} {:<8}", "NAMESPACE", "NAME", "COMPLIANT", "CHECKS");
    for m in Measure::ALL {
        let _ = write!(header, " {:<6}", heading(m));
    }
    let _ = writeln!(out, "{}", header.trim_end());
    for r in rows {
        let mut line = format!(
            "{:<20} {:<20} {:<10} {:<8}",
            r.namespace,
            r.name,
            if r.compliant.is_empty() { "-" } else { &r.compliant },
            if r.summary.is_empty() { "-" } else { &r.summary }
        );
        for m in Measure::ALL {
            let c = r.measures.get(m.as_str()).copied().unwrap_or_default();
            let total = c.pass + c.fail + c.unknown;
            let cell = format!("{:<6}", format!("{}/{total}", c.pass));
            let code = if c.fail > 0 {
                "31"
            } else if c.unknown > 0 {
                "33"
            } else {
                "32"
            };
            let _ = write!(line, " {}", paint(cell, code));
        }
        let _ = writeln!(out, "{}", line.trim_end());
    }
    for r in rows.iter().filter(|r| !r.findings.is_empty()) {
        let _ = writeln!(out, "\n{}/{}:", r.namespace, r.name);
        for f in &r.findings {
            let label = paint(f.result.to_uppercase(), if f.result == "Fail" { "31" } else { "33" });
            let _ = writeln!(out, "  {label} {}: {}", f.id, shorten(&f.message, MESSAGE_WIDTH));
            if let Some(first) = f.remediation.split(". ").next().filter(|s| !s.is_empty()) {
                let _ = writeln!(out, "    fix: {}", first.trim_end_matches('.'));
            }
        }
    }
    out
}

/// How much of a check's message the table shows (`-o json` has all of it).
const MESSAGE_WIDTH: usize = 200;

fn shorten(text: &str, width: usize) -> String {
    match text.char_indices().nth(width) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_string(),
    }
}

/// `explain ID` (pure).
pub fn explain(id: &str) -> Option<String> {
    let d = crate::compliance::CATALOGUE.iter().find(|d| d.id.eq_ignore_ascii_case(id))?;
    Some(format!(
        "{}: {}\n  measure:  {}\n  severity: {}\n  fix:      {}\n  guide:    {}\n",
        d.id,
        d.title,
        d.measure.as_str(),
        d.severity.as_str(),
        d.remediation,
        guide_link(d.measure)
    ))
}

/// What `creds` prints for a user (pure): where to get the CA, and a mosquitto_sub command.
pub fn creds(user: &MqttUser, password: Option<&Secret>, certificate: Option<&Secret>, show_password: bool) -> String {
    let ns = user.namespace().unwrap_or_default();
    let text = |s: Option<&Secret>, k: &str| {
        s.and_then(|s| s.data.as_ref()?.get(k)).map(|b| String::from_utf8_lossy(&b.0).into_owned())
    };
    let mut out = format!("# MqttUser {ns}/{} on broker {}\n", user.name_any(), user.spec.broker_ref.name);
    let any = password.or(certificate);
    let (host, ca_map) = (text(any, "host").unwrap_or_default(), text(any, "caConfigMap").unwrap_or_default());
    let _ = writeln!(out, "kubectl -n {ns} get configmap {ca_map} -o jsonpath='{{.data.ca\\.crt}}' > ca.crt");
    if let Some(p) = password {
        let secret = p.name_any();
        let shown = match (show_password, text(password, "password")) {
            (true, Some(pw)) => format!("'{}'", pw.replace('\'', "'\\''")),
            _ => format!("\"$(kubectl -n {ns} get secret {secret} -o jsonpath='{{.data.password}}' | base64 -d)\""),
        };
        let _ = writeln!(
            out,
            "mosquitto_sub -h {host} -p {} --cafile ca.crt -u {} -P {shown} -t '#' -v",
            text(password, "port").unwrap_or_default(),
            text(password, "username").unwrap_or_default()
        );
    }
    if let Some(c) = certificate {
        let secret = c.name_any();
        let _ = writeln!(
            out,
            "kubectl -n {ns} get secret {secret} -o jsonpath='{{.data.tls\\.crt}}' | base64 -d > tls.crt"
        );
        let _ = writeln!(
            out,
            "kubectl -n {ns} get secret {secret} -o jsonpath='{{.data.tls\\.key}}' | base64 -d > tls.key"
        );
        let _ = writeln!(
            out,
            "mosquitto_sub -h {host} -p {} --cafile ca.crt --cert tls.crt --key tls.key -t '#' -v",
            text(certificate, "port").unwrap_or_default()
        );
    }
    if password.is_none() && certificate.is_none() {
        out.push_str("# no credentials yet (see kubectl describe mqttuser)\n");
    }
    out
}

async fn client(args: &PluginArgs) -> anyhow::Result<(Client, String)> {
    let options = kube::config::KubeConfigOptions { context: args.context.clone(), ..Default::default() };
    let config = match &args.kubeconfig {
        Some(path) => {
            let kc =
                kube::config::Kubeconfig::read_from(path).with_context(|| format!("reading {}", path.display()))?;
            kube::Config::from_custom_kubeconfig(kc, &options).await?
        }
        None => kube::Config::from_kubeconfig(&options).await?,
    };
    let namespace = args.namespace.clone().unwrap_or_else(|| config.default_namespace.clone());
    Ok((Client::try_from(config)?, namespace))
}

/// Runs the plugin.
pub async fn run(args: PluginArgs) -> anyhow::Result<()> {
    if let PluginCommand::Explain { id } = &args.command {
        let text = explain(id).with_context(|| format!("no check {id} (kubectl moat explain MOAT-TLS-002)"))?;
        print!("{text}");
        return Ok(());
    }
    let (client, ns) = client(&args).await?;
    match &args.command {
        PluginCommand::Explain { .. } => unreachable!("handled above"),
        PluginCommand::Status { output, color } => {
            let brokers: Api<MqttBroker> =
                if args.all_namespaces { Api::all(client) } else { Api::namespaced(client, &ns) };
            let mut rows: Vec<BrokerRow> = brokers.list(&ListParams::default()).await?.items.iter().map(row).collect();
            rows.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
            match output {
                Output::Json => println!("{}", serde_json::to_string_pretty(&rows)?),
                Output::Table => {
                    let colour = match color {
                        Colour::Always => true,
                        Colour::Never => false,
                        Colour::Auto => std::io::stdout().is_terminal(),
                    };
                    print!("{}", table(&rows, colour));
                }
            }
        }
        PluginCommand::Creds { user, show_password } => {
            let users: Api<MqttUser> = Api::namespaced(client.clone(), &ns);
            let u = users.get(user).await.with_context(|| format!("MqttUser {ns}/{user}"))?;
            let secrets: Api<Secret> = Api::namespaced(client, &ns);
            let status = u.status.clone().unwrap_or_default();
            let password = match &status.credentials_secret {
                Some(n) => secrets.get_opt(n).await?,
                None => None,
            };
            let certificate = match &status.certificate_secret {
                Some(n) => secrets.get_opt(n).await?,
                None => None,
            };
            print!("{}", creds(&u, password.as_ref(), certificate.as_ref(), *show_password));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{ComplianceCheck, Severity};

    fn broker(checks: Vec<(&str, Measure, CheckResult)>) -> MqttBroker {
        let mut b: MqttBroker = serde_json::from_value(serde_json::json!({
            "apiVersion": "mqtt.moat.dev/v1alpha1", "kind": "MqttBroker",
            "metadata": {"name": "plant-a", "namespace": "iot"}, "spec": {"version": "2.0.22"}
        }))
        .unwrap();
        let checks = checks
            .into_iter()
            .map(|(id, measure, result)| ComplianceCheck {
                id: id.into(),
                measure,
                severity: Severity::High,
                passed: result == CheckResult::Pass,
                result,
                message: format!("{id} said so"),
                remediation: "Do this. Then that.".into(),
            })
            .collect();
        b.status = Some(crate::crd::MqttBrokerStatus {
            compliance: Some(crate::compliance::summarize(checks, None)),
            ..Default::default()
        });
        b
    }

    #[test]
    fn status_counts_by_measure_and_lists_what_did_not_pass() {
        let b = broker(vec![
            ("MOAT-TLS-001", Measure::Encryption, CheckResult::Pass),
            ("MOAT-TLS-002", Measure::Encryption, CheckResult::Fail),
            ("MOAT-FW-004", Measure::Firewall, CheckResult::Unknown),
        ]);
        let r = row(&b);
        assert_eq!(r.measures["encryption"], Counts { pass: 1, fail: 1, unknown: 0 });
        assert_eq!(r.measures["firewall"], Counts { pass: 0, fail: 0, unknown: 1 });
        assert_eq!(r.findings.iter().map(|f| f.id.as_str()).collect::<Vec<_>>(), ["MOAT-TLS-002", "MOAT-FW-004"]);
        let plain = table(std::slice::from_ref(&r), false);
        assert!(!plain.contains('\x1b'), "no colour when piped");
        assert!(plain.contains("AUTH") && plain.contains("1/2") && plain.contains("0/1"), "{plain}");
        assert!(plain.contains("FAIL MOAT-TLS-002: MOAT-TLS-002 said so\n    fix: Do this"), "{plain}");
        assert!(table(&[r], true).contains("\x1b[31m1/2"), "a failing measure is red");
        assert_eq!(shorten("ab€d", 3), "ab€…");
        assert_eq!(shorten("abc", 3), "abc");
    }

    #[test]
    fn explain_prints_the_catalogue_entry_and_the_guide_link() {
        let text = explain("moat-tls-002").unwrap();
        assert!(text.starts_with("MOAT-TLS-002: "), "{text}");
        assert!(text.contains("security-guide.md#encryption"), "{text}");
        assert!(text.contains(crate::compliance::def("MOAT-TLS-002").remediation));
        assert!(explain("MOAT-NOPE-1").is_none());
    }

    #[test]
    fn creds_redact_the_password_unless_asked() {
        let user: MqttUser = serde_json::from_value(serde_json::json!({
            "apiVersion": "mqtt.moat.dev/v1alpha1", "kind": "MqttUser",
            "metadata": {"name": "sensor-1", "namespace": "iot"}, "spec": {"brokerRef": {"name": "plant-a"}}
        }))
        .unwrap();
        let secret: Secret = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "sensor-1-mqtt-credentials"},
            "stringData": {},
            "data": {
                "username": "c2Vuc29yLTE=", "password": "czNjcjN0J3g=", "host": "cGxhbnQtYS5pb3Quc3Zj",
                "port": "ODg4Mw==", "caConfigMap": "cGxhbnQtYS1jYS1idW5kbGU="
            }
        }))
        .unwrap();
        let hidden = creds(&user, Some(&secret), None, false);
        assert!(!hidden.contains("s3cr3t"), "{hidden}");
        assert!(hidden.contains("-h plant-a.iot.svc -p 8883 --cafile ca.crt -u sensor-1 -P \"$(kubectl"), "{hidden}");
        assert!(hidden.contains("get configmap plant-a-ca-bundle"), "{hidden}");
        let shown = creds(&user, Some(&secret), None, true);
        assert!(shown.contains(r"-P 's3cr3t'\''x'"), "quoted for the shell: {shown}");
    }
}

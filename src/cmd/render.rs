//! `moat render`: what a first reconcile would produce, offline.
//!
//! Reads MqttBroker/MqttUser/MqttAcl/MqttFirewall (and bring-your-own password Secret) YAML,
//! runs the same pure pipeline as the controllers (validate → model → plan), and writes
//! `objects.yaml` (every Kubernetes object moat would apply) and `bundle/` (a runnable Mosquitto
//! directory: `mosquitto.conf` with paths relative to it, `passwd`, `acl`, `tls/`, and the
//! generated client credentials under `clients/<username>/`).

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;
use serde::Serialize;

use crate::crd::{MqttAcl, MqttBroker, MqttFirewall, MqttUser};
use crate::model::BrokerModel;
use crate::names;
use crate::plan::broker::{Existing, PasswordLookup, PlanInput, UserView, plan};
use crate::plan::user::{StoredCredentials, credentials_data, generated_password};
use crate::plan::{Password, objects};
use crate::render::config::{ConfigPaths, ListenerOverrides};
use crate::render::network;

/// Command-line options of `moat render`.
#[derive(clap::Args, Clone, Debug)]
pub struct RenderArgs {
    /// YAML files with the broker and its users, ACLs, firewalls and referenced Secrets.
    #[arg(short = 'f', long = "file", required = true)]
    pub files: Vec<PathBuf>,
    /// Output directory (created): objects.yaml and bundle/.
    #[arg(long)]
    pub out: PathBuf,
    /// Namespace for objects without one.
    #[arg(long, short = 'n', default_value = "default")]
    pub namespace: String,
    /// The broker to render when the files hold several.
    #[arg(long)]
    pub broker: Option<String>,
    /// Bind the bundle's listeners to this address (and add it to the server certificate).
    #[arg(long)]
    pub bind_address: Option<String>,
    /// Add this to every listener port of the bundle.
    #[arg(long, default_value_t = 0)]
    pub port_offset: u16,
    /// Image of `moat agent` in the rendered StatefulSet.
    #[arg(long, default_value_t = crate::controller::Config::default().agent_image)]
    pub agent_image: String,
}

#[derive(Default)]
struct Inputs {
    brokers: Vec<MqttBroker>,
    users: Vec<MqttUser>,
    acls: Vec<MqttAcl>,
    firewalls: Vec<MqttFirewall>,
    secrets: Vec<Secret>,
}

fn read_inputs(files: &[PathBuf], namespace: &str) -> anyhow::Result<Inputs> {
    let mut inputs = Inputs::default();
    for file in files {
        let text = fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
        for doc in serde_norway::Deserializer::from_str(&text) {
            let mut value: serde_json::Value =
                serde::Deserialize::deserialize(doc).with_context(|| format!("parsing {}", file.display()))?;
            if value.is_null() {
                continue;
            }
            if !value.is_object() || !value["metadata"].is_object() {
                bail!("{}: every document must be a Kubernetes object with metadata", file.display());
            }
            if value["metadata"]["namespace"].is_null() {
                value["metadata"]["namespace"] = namespace.into();
            }
            if value["metadata"]["creationTimestamp"].is_null() {
                value["metadata"]["creationTimestamp"] = "1970-01-01T00:00:00Z".into();
            }
            let kind = value["kind"].as_str().unwrap_or_default().to_string();
            let ctx = || format!("{kind} in {}", file.display());
            match kind.as_str() {
                "MqttBroker" => inputs.brokers.push(serde_json::from_value(value).with_context(ctx)?),
                "MqttUser" => inputs.users.push(serde_json::from_value(value).with_context(ctx)?),
                "MqttAcl" => inputs.acls.push(serde_json::from_value(value).with_context(ctx)?),
                "MqttFirewall" => inputs.firewalls.push(serde_json::from_value(value).with_context(ctx)?),
                "Secret" => {
                    let mut s: Secret = serde_json::from_value(value).with_context(ctx)?;
                    // stringData is merged into data by the apiserver; do the same here
                    for (k, v) in s.string_data.take().unwrap_or_default() {
                        s.data.get_or_insert_with(Default::default).insert(k, k8s_openapi::ByteString(v.into_bytes()));
                    }
                    inputs.secrets.push(s);
                }
                other => bail!("{}: unsupported kind {other:?}", file.display()),
            }
        }
    }
    Ok(inputs)
}

/// A `secretRef` password: only from a Secret that opted in for `user` (label and annotation, as
/// the operator requires).
fn secret_value(secrets: &[Secret], ns: &str, user: &str, name: &str, key: &str) -> Option<String> {
    let s = secrets.iter().find(|s| {
        s.name_any() == name
            && s.namespace().as_deref() == Some(ns)
            && s.labels().get(names::WATCH_LABEL).map(String::as_str) == Some("true")
            && names::password_for(s.annotations(), user)
    })?;
    let bytes = s.data.as_ref()?.get(key)?;
    String::from_utf8(bytes.0.clone()).ok()
}

fn write(path: &Path, content: &str, private: bool) -> anyhow::Result<()> {
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent)?;
    }
    fs::write(path, content).with_context(|| format!("writing {}", path.display()))?;
    fs::set_permissions(path, fs::Permissions::from_mode(if private { 0o600 } else { 0o644 }))?;
    Ok(())
}

/// Runs `moat render`.
pub fn run(args: RenderArgs) -> anyhow::Result<()> {
    let inputs = read_inputs(&args.files, &args.namespace)?;
    let broker = match (&args.broker, inputs.brokers.len()) {
        (Some(name), _) => {
            inputs.brokers.iter().find(|b| &b.name_any() == name).with_context(|| format!("no MqttBroker {name}"))?
        }
        (None, 1) => &inputs.brokers[0],
        (None, 0) => bail!("the files hold no MqttBroker"),
        (None, _) => bail!("the files hold several MqttBrokers: choose one with --broker"),
    };
    let model =
        BrokerModel::new(broker).map_err(|e| anyhow::anyhow!("MqttBroker {}: invalid spec: {e}", broker.name_any()))?;
    let ns = model.namespace.clone();
    let of_broker = |r: &str, o_ns: Option<String>| r == model.name && o_ns.as_deref() == Some(ns.as_str());
    let users: Vec<&MqttUser> =
        inputs.users.iter().filter(|u| of_broker(&u.spec.broker_ref.name, u.namespace())).collect();
    let acls: Vec<&MqttAcl> =
        inputs.acls.iter().filter(|a| of_broker(&a.spec.broker_ref.name, a.namespace())).collect();
    let firewalls: Vec<&MqttFirewall> =
        inputs.firewalls.iter().filter(|f| of_broker(&f.spec.broker_ref.name, f.namespace())).collect();
    let now = jiff::Timestamp::now();

    // Generated passwords (what the user controller would create).
    let mut generated: BTreeMap<String, Password> = BTreeMap::new();
    for u in &users {
        if let Some(p) = &u.spec.authentication.password
            && p.secret_ref.is_none()
        {
            let rotate = p.rotate_after.as_ref().and_then(|d| d.parse().ok());
            let g = generated_password(u, &model, &StoredCredentials::default(), rotate, now);
            generated.insert(u.name_any(), g.password);
        }
    }
    let lookup = |u: &MqttUser| match &u.spec.authentication.password {
        None => PasswordLookup::NotUsed,
        Some(p) => match &p.secret_ref {
            None => PasswordLookup::Found { password: generated[&u.name_any()].clone(), generated: true },
            Some(r) => match secret_value(&inputs.secrets, &ns, &u.name_any(), &r.name, &r.key) {
                Some(v) => PasswordLookup::Found { password: Password(v), generated: false },
                None => PasswordLookup::Missing(format!(
                    "{} (key {}; in the input files)",
                    crate::controller::broker::observe::byo_unavailable(&u.name_any(), &r.name),
                    r.key
                )),
            },
        },
    };

    let overrides = ListenerOverrides { bind_address: args.bind_address.clone(), port_offset: args.port_offset };
    let extra_ips: Vec<std::net::IpAddr> = args.bind_address.iter().filter_map(|a| a.parse().ok()).collect();
    let in_pod = ConfigPaths::in_pod();
    let no_overrides = ListenerOverrides::default();

    // One plan, as a first reconcile makes it: the CA, the server certificate, every client
    // certificate (the plan is their only issuer), the password and ACL files.
    let views: Vec<UserView> = users
        .iter()
        .map(|u| UserView { user: u, password: lookup(u), certificate: None, certificate_blocked: None })
        .collect();
    let plan = plan(PlanInput {
        model: &model,
        users: &views,
        acls: &acls,
        existing: Existing::default(),
        paths: &in_pod,
        overrides: &no_overrides,
        extra_ips: &extra_ips,
        requests: &Default::default(),
        // what an operator with its default `--active-probe` would plan
        attestation: model.spec.security.active_probe,
        now,
    })?;

    // Everything moat would apply.
    let valid_firewalls: Vec<&crate::crd::MqttFirewallSpec> = firewalls
        .iter()
        .map(|f| {
            crate::validate::firewall_spec(&f.spec)
                .map_err(|e| anyhow::anyhow!("MqttFirewall {}: {e}", f.name_any()))?;
            Ok(&f.spec)
        })
        .collect::<anyhow::Result<_>>()?;
    let defaults = crate::controller::Config::default();
    let operator = defaults.operator;
    let objs = objects::broker_objects(
        &model,
        &plan,
        &objects::ObjectInputs {
            agent_image: &args.agent_image,
            version: &model.spec.version,
            partition: 0,
            firewalls: &valid_firewalls,
            operator: &operator,
            metrics_namespaces: &defaults.agent_metrics_namespaces,
        },
    )?;
    let mut docs: Vec<serde_json::Value> = vec![];
    let mut push = |v: &dyn erased::Json| docs.push(v.json());
    for s in &objs.secrets {
        push(s);
    }
    push(&objs.ca_bundle);
    push(&objs.service_account);
    push(&objs.statefulset);
    if let Some(pdb) = &objs.pdb {
        push(pdb);
    }
    push(&objs.service);
    push(&objs.headless);
    push(&objs.default_deny);
    for p in objs.probe_policy.iter().chain(&objs.metrics_policy) {
        push(p);
    }
    for f in &firewalls {
        push(
            &network::firewall_policy(&model, &f.name_any(), &f.spec)
                .map_err(|e| anyhow::anyhow!("MqttFirewall {}: {e}", f.name_any()))?,
        );
    }
    for (_, s) in objects::user_secrets(&model, &plan) {
        push(&s);
    }
    if let Some(c) = &objs.server_certificate {
        push(c);
    }

    let bundle = args.out.join("bundle");
    fs::create_dir_all(&bundle)?;
    for u in &users {
        let name = u.name_any();
        let Ok(username) = crate::validate::user_spec(&name, &u.spec) else { continue };
        let dir = bundle.join("clients").join(&username);
        if let Some(p) = generated.get(&name) {
            push(&objects::user_secret(
                &model,
                &name,
                names::credentials_secret(&name),
                "credentials",
                credentials_data(&model, &username, p),
                BTreeMap::new(),
            ));
            write(&dir.join("password"), &p.0, true)?;
        }
        if let Some(c) = plan.client_certs.get(&name) {
            write(&dir.join("tls.crt"), &c.issued.cert_pem, false)?;
            write(&dir.join("tls.key"), &c.issued.key_pem, true)?;
            write(&dir.join("ca.crt"), &plan.ca.trust_bundle(), false)?;
        }
        if dir.exists() {
            write(&dir.join("username"), &username, false)?;
        }
    }
    for (name, outcome) in plan.verdicts.iter() {
        if outcome.verdict.in_effect().is_none() {
            eprintln!("warning: MqttUser {name} is not in effect: {}", outcome.verdict);
        }
    }
    for a in plan.acls.iter().filter(|a| a.invalid.is_some() || !a.pending_users.is_empty()) {
        eprintln!("warning: MqttAcl {}: invalid {:?}, pending users {:?}", a.name, a.invalid, a.pending_users);
    }

    // The runnable bundle: the same files, paths relative to the bundle directory.
    let conf = crate::render::config::render(&model, &ConfigPaths::bundle(), &overrides);
    write(&bundle.join("mosquitto.conf"), &conf.text, false)?;
    let passwd: String = plan.shards.iter().map(|s| s.passwd.as_str()).collect();
    write(&bundle.join("passwd"), &passwd, true)?;
    write(&bundle.join("acl"), &plan.acl_text(), true)?;
    write(&bundle.join("tls/tls.crt"), &plan.server.cert_pem, false)?;
    write(&bundle.join("tls/tls.key"), &plan.server.key_pem, true)?;
    write(&bundle.join("tls/ca.crt"), &plan.ca.trust_bundle(), false)?;
    write(&bundle.join("tls/crl.pem"), &plan.crl_pem, false)?;
    if model.spec.persistence.enabled {
        fs::create_dir_all(bundle.join("data"))?;
    }

    let mut yaml = String::new();
    for d in &docs {
        yaml.push_str("---\n");
        yaml.push_str(&serde_norway::to_string(d)?);
    }
    write(&args.out.join("objects.yaml"), &yaml, true)?;
    println!(
        "rendered {} objects into {} and a broker bundle into {} (run: cd {} && mosquitto -c mosquitto.conf)",
        docs.len(),
        args.out.join("objects.yaml").display(),
        bundle.display(),
        bundle.display()
    );
    Ok(())
}

mod erased {
    /// Serializes any rendered object (object-safe).
    pub trait Json {
        fn json(&self) -> serde_json::Value;
    }
    impl<T: super::Serialize> Json for T {
        fn json(&self) -> serde_json::Value {
            serde_json::to_value(self).expect("rendered objects serialize")
        }
    }
}

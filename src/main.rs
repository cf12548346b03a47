use clap::{Parser, Subcommand};

use moat::telemetry::{self, LogFormat};

/// moat: hardened Eclipse Mosquitto brokers on Kubernetes.
#[derive(Parser)]
#[command(name = "moat", version, about, long_about = None)]
struct Cli {
    /// Log format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "MOAT_LOG_FORMAT")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the operator.
    Run(Box<moat::cmd::run::RunArgs>),
    /// Print the CustomResourceDefinitions as YAML (or write one file per CRD with --out-dir).
    Crds {
        /// Write `<plural>.<group>.yaml` files into this directory instead of printing.
        #[arg(long)]
        out_dir: Option<std::path::PathBuf>,
    },
    /// Render everything a first reconcile would produce, offline: Kubernetes objects and a
    /// runnable Mosquitto bundle.
    Render(moat::cmd::render::RenderArgs),
    /// The in-pod helper: validate and install broker files from mounted Secrets, then SIGHUP Mosquitto.
    Agent(moat::agent::AgentArgs),
    /// Probe a broker endpoint: TLS versions, served certificate, anonymous refusal.
    Probe(moat::probe::ProbeArgs),
    /// The vantage point outside every firewall: dials the addresses the operator names and
    /// says whether the network let it in.
    Outsider(moat::probe::outsider::OutsiderArgs),
}

fn main() {
    let cli = Cli::parse();
    telemetry::init(cli.log_format);
    let code = match cli.command {
        Command::Crds { out_dir } => crds(out_dir),
        Command::Render(args) => report(moat::cmd::render::run(args)),
        Command::Run(args) => report(runtime().block_on(moat::cmd::run::run(*args))),
        Command::Agent(args) => runtime().block_on(moat::agent::run(args)),
        Command::Probe(args) => runtime().block_on(moat::probe::run(args)),
        Command::Outsider(args) => runtime().block_on(moat::probe::outsider::run(args)),
    };
    std::process::exit(code);
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime")
}

fn report(result: anyhow::Result<()>) -> i32 {
    match result {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("error: {e:#}");
            1
        }
    }
}

fn crds(out_dir: Option<std::path::PathBuf>) -> i32 {
    match out_dir {
        None => {
            for crd in moat::crd::all() {
                print!("---\n{}", moat::crd::to_yaml(&crd));
            }
            0
        }
        Some(dir) => {
            if let Err(e) = std::fs::create_dir_all(&dir) {
                eprintln!("error: {}: {e}", dir.display());
                return 1;
            }
            for crd in moat::crd::all() {
                let name = crd.metadata.name.clone().unwrap_or_default();
                if let Err(e) = std::fs::write(dir.join(format!("{name}.yaml")), moat::crd::to_yaml(&crd)) {
                    eprintln!("error: {e}");
                    return 1;
                }
            }
            0
        }
    }
}

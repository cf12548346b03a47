use clap::{Parser, Subcommand};

/// moat: hardened Eclipse Mosquitto brokers on Kubernetes.
#[derive(Parser)]
#[command(name = "moat", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print the CustomResourceDefinitions as YAML (or write one file per CRD with --out-dir).
    Crds {
        /// Write `<plural>.<group>.yaml` files into this directory instead of printing.
        #[arg(long)]
        out_dir: Option<std::path::PathBuf>,
    },
}

fn main() {
    let cli = Cli::parse();
    match cli.command {
        Command::Crds { out_dir: None } => {
            for crd in moat::crd::all() {
                print!("---\n{}", moat::crd::to_yaml(&crd));
            }
        }
        Command::Crds { out_dir: Some(dir) } => {
            std::fs::create_dir_all(&dir).expect("create the output directory");
            for crd in moat::crd::all() {
                let name = crd.metadata.name.clone().unwrap_or_default();
                std::fs::write(dir.join(format!("{name}.yaml")), moat::crd::to_yaml(&crd)).expect("write a CRD file");
            }
        }
    }
}

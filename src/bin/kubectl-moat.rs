//! `kubectl-moat`: the kubectl plugin (`kubectl moat status|explain|creds`), on PATH beside kubectl.

use clap::Parser;

fn main() {
    let args = moat::cmd::plugin::PluginArgs::parse();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio runtime");
    if let Err(e) = runtime.block_on(moat::cmd::plugin::run(args)) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

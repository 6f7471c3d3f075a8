//! `flowmark graph`: placeholder replaced below.
pub fn run(_args: &Args) -> anyhow::Result<std::process::ExitCode> {
    anyhow::bail!("not built yet")
}
#[derive(clap::Args)]
pub struct Args {}

pub fn run(_a: BusArgs) -> anyhow::Result<std::process::ExitCode> {
    todo!()
}
#[derive(clap::Args)]
pub struct BusArgs {}

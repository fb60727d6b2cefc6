fn main() -> anyhow::Result<()> {
    anyhow::bail!("the ingest server is not built yet: see the ingest server issue")
}

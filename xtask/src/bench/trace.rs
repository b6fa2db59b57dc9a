//! The `trace` bench (placeholder: its owner replaces this file).

use anyhow::{Result, bail};

use super::Ctx;

pub fn run(_ctx: &Ctx) -> Result<()> {
    bail!("the trace bench is not written yet")
}

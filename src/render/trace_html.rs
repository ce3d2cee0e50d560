use crate::stages::trace::TraceReport;
use anyhow::Result;
/// placeholder until the page lands
pub fn trace_html(_r: &TraceReport) -> Result<String> {
    anyhow::bail!("--html is not ready")
}
